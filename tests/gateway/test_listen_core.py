"""gateway/listen_core.py: registry, limits, backlog, LISTEN statement parsing (sans-I/O)."""

from __future__ import annotations

import pytest

from gateway.listen_core import ListenLimit, Notification, Registry, apply_actions, maybe_listen, parse_listen


class Sub:
    def __init__(self, limit: int = 1 << 30) -> None:
        self.got: list[tuple[int, str, str, int]] = []
        self.limit = limit
        self.gaps: list[str] = []
        self.overflowed = False

    def deliver(self, n: Notification) -> bool:
        self.got.append((n.seq, n.channel, n.payload, n.pid))
        return len(self.got) <= self.limit

    def gap(self, message: str) -> None:
        self.gaps.append(message)

    def overflow(self) -> None:
        self.overflowed = True


def test_fan_out_in_order_and_unsubscribe() -> None:
    r = Registry()
    a, b = Sub(), Sub()
    assert r.add(a, "x") is True
    assert r.add(b, "x") is False and r.add(a, "x") is False
    assert r.add(a, "y") is True
    for i in range(5):
        r.dispatch("x", f"p{i}", 42)
    r.dispatch("y", "only-a", 7)
    assert [g[2] for g in a.got] == ["p0", "p1", "p2", "p3", "p4", "only-a"]
    assert [g[2] for g in b.got] == ["p0", "p1", "p2", "p3", "p4"]
    assert a.got[-1] == (6, "y", "only-a", 7)
    assert r.remove(b, "x") is False  # a still listens
    assert r.remove_all(a) == ["x", "y"]
    r.dispatch("x", "nobody", 1)
    assert len(a.got) == 6 and len(b.got) == 5
    assert r.delivered == 11 and r.received == 7


def test_slow_subscriber_dropped_others_continue() -> None:
    r = Registry()
    slow, ok = Sub(limit=3), Sub()
    r.add(slow, "c")
    r.add(ok, "c")
    for i in range(10):
        r.dispatch("c", str(i), 1)
    assert slow.overflowed and len(slow.got) == 4
    assert [g[2] for g in ok.got] == [str(i) for i in range(10)]
    assert r.dropped == 1 and r.overflows == 1 and slow not in r.by_sub


def test_limits() -> None:
    r = Registry(max_channels=2, max_subscribers=1)
    a, b = Sub(), Sub()
    r.add(a, "1")
    r.add(a, "2")
    with pytest.raises(ListenLimit, match="listen_max_channels_per_client") as e:
        r.add(a, "3")
    assert e.value.sqlstate == "53400"
    with pytest.raises(ListenLimit, match="listen_max_clients_per_channel"):
        r.add(b, "1")
    r.add(b, "3")  # others unaffected


def test_backlog_resume_and_gap() -> None:
    r = Registry(backlog=3, backlog_bytes=1 << 20)
    s = Sub()
    r.add(s, "a")
    r.add(s, "b")
    for i in range(1, 6):
        r.dispatch("a" if i % 2 else "b", f"v{i}", 9)
    # a kept: 1,3,5 (3 entries); b: 2,4
    got, gap = r.since(["a", "b"], 2)
    assert [n.seq for n in got] == [3, 4, 5] and not gap
    for i in range(6, 12):
        r.dispatch("a", f"v{i}", 9)
    got, gap = r.since(["a"], 5)  # a now keeps 9,10,11: 6..8 are gone
    assert [n.seq for n in got] == [9, 10, 11] and gap
    got, gap = r.since(["a"], 9)
    assert [n.seq for n in got] == [10, 11] and not gap
    r.mark_gap()
    assert r.since(["a"], 9)[1]  # an upstream reconnect after the id: gap
    assert r.since(["a"], 999)[1]  # an id from the future (another process): gap


def test_backlog_bytes_bounded() -> None:
    r = Registry(backlog=1000, backlog_bytes=10_000)
    s = Sub()
    r.add(s, "a")
    r.add(s, "b")
    for i in range(500):
        r.dispatch("a" if i % 3 else "b", "x" * 100, 1)
    assert r.backlog_used() <= 10_000
    got, gap = r.since(["a", "b"], 0)
    assert gap and 0 < len(got) < 100
    assert [n.seq for n in got] == sorted(n.seq for n in got)
    r.remove_all(s)
    assert r.forget_channel("a") and r.forget_channel("b")
    assert r.backlog_used() == 0


@pytest.mark.parametrize("sql,want", [
    (b"LISTEN foo", [("LISTEN", "foo")]),
    (b"listen Foo;", [("LISTEN", "foo")]),
    (b'LISTEN "Mixed Case"', [("LISTEN", "Mixed Case")]),
    (b'LISTEN "a""b"', [("LISTEN", 'a"b')]),
    (b"  /* c */ UNLISTEN  x ; UNLISTEN *;", [("UNLISTEN", "x"), ("UNLISTEN", None)]),
    (b"LISTEN a; -- note\n LISTEN b", [("LISTEN", "a"), ("LISTEN", "b")]),
    (b"LISTEN a; SELECT 1", None),
    (b"LISTEN", None),
    (b"LISTEN a b", None),
    (b"LISTEN 1a", None),
    (b"UNLISTEN", None),
    (b"SELECT 'LISTEN x'", None),
    (b"", None),
])
def test_parse_listen(sql: bytes, want: object) -> None:
    assert parse_listen(sql) == want


def test_parse_listen_truncates_like_postgres() -> None:
    assert parse_listen(b"LISTEN " + b"a" * 80) == [("LISTEN", "a" * 63)]


def test_maybe_listen() -> None:
    assert maybe_listen(b"LISTEN x") and maybe_listen(b"  unlisten *") and maybe_listen(b"Q\x00\x00\x00\x0eLISTEN x", 5)
    assert not maybe_listen(b"select 1") and not maybe_listen(b"NOTIFY x")


def test_apply_actions_in_order() -> None:
    assert apply_actions({"a"}, [("LISTEN", "b"), ("UNLISTEN", "a")]) == ({"b"}, {"a"})
    assert apply_actions({"a"}, [("UNLISTEN", None), ("LISTEN", "a")]) == (set(), set())
    assert apply_actions(set(), [("LISTEN", "a"), ("UNLISTEN", "a")]) == (set(), set())
