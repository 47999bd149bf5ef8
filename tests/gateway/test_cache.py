"""gateway.cache (sans-I/O store): freshness states, single flight, byte
budget (LRU by bytes), entry cap, tags, invalidation racing a fill."""

from __future__ import annotations

import random

from gateway.cache import FRESH, MISS, OVERHEAD, STALE, Entry, ResultCache


def _e(key: str, body: bytes = b"x" * 10, now: float = 0.0, ttl: float = 10.0, swr: float = 5.0,
       tags: tuple[str, ...] = (), db: str = "db") -> Entry:
    return Entry(key, db, b"T", body, now, ttl, swr, frozenset(tags))


def test_fresh_then_stale_once_then_miss() -> None:
    rc = ResultCache(1 << 20, 1 << 16)
    assert rc.lookup("k", 0.0) == (MISS, None, False)
    assert rc.begin_fill("k", "db", ())
    rc.finish_fill("k", _e("k"))
    st, e, refresh = rc.lookup("k", 9.9)
    assert (st, refresh) == (FRESH, False) and e is not None and e.body == b"x" * 10
    assert rc.lookup("k", 10.0)[0::2] == (STALE, True)   # the first stale reader refreshes
    assert rc.lookup("k", 11.0)[0::2] == (STALE, False)  # single flight: the others do not
    rc.refresh_failed("k")
    assert rc.lookup("k", 12.0)[0::2] == (STALE, True)
    assert rc.lookup("k", 15.0)[0] == MISS and len(rc) == 0 and rc.bytes == 0
    assert (rc.stats.hits, rc.stats.stale, rc.stats.refreshes) == (1, 3, 2)


def test_single_flight_fill_and_failed_fill() -> None:
    rc = ResultCache(1 << 20, 1 << 16)
    got: list[object] = []
    assert rc.begin_fill("k", "db", ())
    assert not rc.begin_fill("k", "db", ())
    rc.wait("k", got.append)
    rc.wait("k", got.append)
    rc.finish_fill("k", None)  # nothing cacheable: each waiter runs its own query
    assert got == [None, None] and len(rc) == 0
    assert rc.begin_fill("k", "db", ())
    rc.wait("k", got.append)
    e = _e("k")
    assert rc.finish_fill("k", e) is e and got[-1] is e


def test_invalidation_during_a_fill_is_not_stored() -> None:
    rc = ResultCache(1 << 20, 1 << 16)
    assert rc.begin_fill("k", "db", ("quotes",))
    rc.invalidate_tags(["quotes"], "db")
    assert rc.finish_fill("k", _e("k", tags=("quotes",))) is None and len(rc) == 0
    assert rc.begin_fill("k", "db", ("quotes",))
    rc.invalidate_tags(["authors"], "db")  # another tag: stored
    assert rc.finish_fill("k", _e("k", tags=("quotes",))) is not None
    gens = rc.begin_refresh_gens("db", ("quotes",))
    rc.invalidate_db("db")  # a DDL while a refresh runs
    assert rc.put(_e("k", tags=("quotes",)), gens) is None and len(rc) == 0
    assert rc.begin_fill("k2", "db", ("quotes",))
    rc.invalidate_tags(["quotes"])  # every database
    assert rc.finish_fill("k2", _e("k2", tags=("quotes",))) is None


def test_tags_are_per_database() -> None:
    rc = ResultCache(1 << 20, 1 << 16)
    rc.put(_e("a", tags=("quotes",), db="one"))
    rc.put(_e("b", tags=("quotes", "authors"), db="two"))
    rc.put(_e("c", db="two"))
    assert rc.invalidate_tags(["quotes"], "one") == 1
    assert set(rc.entries) == {"b", "c"}
    assert rc.invalidate_tags(["authors"]) == 1
    assert set(rc.entries) == {"c"}
    assert rc.invalidate_db("two") == 1 and len(rc) == 0 and rc.bytes == 0


def test_byte_budget_lru_and_entry_cap_randomized() -> None:
    rng = random.Random(1)
    budget, cap = 5000, 1200
    rc = ResultCache(budget, cap)
    for i in range(3000):
        key = f"k{rng.randrange(60)}"
        if rng.random() < 0.5:
            rc.lookup(key, 0.0)
        else:
            size = rng.choice([1, 50, 400, 900, 2000])
            stored = rc.put(_e(key, b"z" * size))
            assert (stored is None) == (size + 1 + len(key) + OVERHEAD > cap)
        if i % 500 == 0:
            rc.invalidate_tags(["t"], "db")
        assert rc.bytes <= budget
        assert rc.bytes == sum(e.size for e in rc.entries.values())
        assert all(e.size <= cap for e in rc.entries.values())
    assert rc.stats.evictions > 0 and rc.stats.too_large > 0


def test_lru_evicts_least_recently_used() -> None:
    rc = ResultCache(3 * (OVERHEAD + 12), 1 << 16)
    for k in ("a", "b", "c"):
        rc.put(_e(k))
    rc.lookup("a", 0.0)  # a is now the most recent
    rc.put(_e("d"))
    assert set(rc.entries) == {"a", "c", "d"}
    assert rc.snapshot()["evictions"] == 1


def test_resize_evicts_least_recently_used_and_over_the_entry_cap() -> None:
    rc = ResultCache(10_000, 5_000)
    for k, n in (("a", 100), ("b", 1000), ("c", 100)):
        rc.put(Entry(k, "db", b"", b"x" * n, 0.0, 60, 0))
    rc.lookup("a", 1.0)  # a is used again: b is the least recently used
    sa, sc = (rc.entries[k].size for k in "ac")
    assert rc.resize(sa + sc, 5_000) == 1 and list(rc.entries) == ["c", "a"] and rc.bytes == sa + sc
    assert rc.resize(10_000, sa - 1) == 2 and len(rc) == 0 and rc.bytes == 0  # both over the new entry cap
    assert rc.put(Entry("d", "db", b"", b"x" * 100, 0.0, 60, 0)) is None and rc.stats.too_large == 1
    assert rc.stats.evictions == 3
