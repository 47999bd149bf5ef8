"""driver.record.Record: behaviour compared side by side with real asyncpg Records."""

from __future__ import annotations

from typing import Any, Callable

import asyncpg
import pytest

import driver
from driver import exceptions as exc
from driver.record import Record, RecordMapping, make_mapping
from tests.pgcluster import PgCluster

QUERIES = [
    "SELECT 1 AS a, 'x' AS b, 2 AS a, NULL AS c",
    "SELECT",
    "SELECT 'it''s' AS x, 1.5::float8 AS y, '{1,2}'::int[] AS arr, true AS flag",
    "SELECT 1 AS a, 2 AS b",
    "SELECT 1 AS a, 3 AS b",
    "SELECT NULL AS \"weird name\", 7 AS \"Ünïcode\"",
]


@pytest.fixture(scope="module")
async def pairs(pg: PgCluster) -> list[tuple[Any, Record]]:
    """(asyncpg Record, our Record built from the same columns and values)."""
    conn = await asyncpg.connect(pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD))
    out = []
    try:
        for q in QUERIES:
            stmt = await conn.prepare(q)
            names = [a.name for a in stmt.get_attributes()]
            theirs = await stmt.fetchrow()
            out.append((theirs, Record(make_mapping(names), tuple(theirs.values()))))
    finally:
        await conn.close()
    return out


def outcome(fn: Callable[[], Any], message: bool = True) -> tuple[str, Any]:
    """Result or (exception type, message) of fn()."""
    try:
        value = fn()
    except Exception as exc:  # noqa: BLE001
        return ("raise", (type(exc).__name__, str(exc) if message else None))
    if hasattr(value, "__next__"):
        value = list(value)
    return ("ok", value)


KEYS: list[Any] = ["a", "b", "c", "x", "zz", "weird name", "Ünïcode", "", 0, 1, 2, 3, 4, 5, -1, -4, -5, -10,
                   slice(None), slice(1, 3), slice(None, None, -1), slice(10, 20), 1.5, b"a", True]


def test_item_access_parity(pairs: list[tuple[Any, Record]]) -> None:
    for theirs, ours in pairs:
        for key in KEYS:
            assert outcome(lambda: ours[key]) == outcome(lambda: theirs[key]), (theirs, key)


def test_get_and_contains_parity(pairs: list[tuple[Any, Record]]) -> None:
    for theirs, ours in pairs:
        for key in KEYS + [None, [1], {}]:
            if isinstance(key, slice):
                continue
            assert outcome(lambda: ours.get(key)) == outcome(lambda: theirs.get(key)), (theirs, key)
            assert outcome(lambda: ours.get(key, "dflt")) == outcome(lambda: theirs.get(key, "dflt")), key
            assert outcome(lambda: key in ours) == outcome(lambda: key in theirs), (theirs, key)
        for value in theirs.values():
            assert outcome(lambda: value in ours) == outcome(lambda: value in theirs)


def test_views_parity(pairs: list[tuple[Any, Record]]) -> None:
    for theirs, ours in pairs:
        assert list(ours.keys()) == list(theirs.keys())
        assert list(ours.values()) == list(theirs.values())
        assert list(ours.items()) == list(theirs.items())
        assert dict(ours) == dict(theirs)
        assert list(ours) == list(theirs)
        assert tuple(ours) == tuple(theirs)
        assert len(ours) == len(theirs)
        assert bool(ours) == bool(theirs)
        assert repr(ours) == repr(theirs)
        assert str(ours) == str(theirs)
        assert outcome(lambda: hash(ours)) == outcome(lambda: hash(theirs))
        assert type(ours.keys()) is not list and hasattr(ours.values(), "__next__")


def test_comparisons_parity(pairs: list[tuple[Any, Record]]) -> None:
    ops: list[Callable[[Any, Any], Any]] = [
        lambda x, y: x == y, lambda x, y: x != y, lambda x, y: x < y, lambda x, y: x <= y,
        lambda x, y: x > y, lambda x, y: x >= y,
    ]
    for t1, o1 in pairs:
        others: list[tuple[Any, Any]] = [(t2, o2) for t2, o2 in pairs]
        others += [(tuple(t1), tuple(t1)), (list(t1), list(t1)), ((1, 3), (1, 3)), ((), ()), (None, None)]
        for t2, o2 in others:
            for op in ops:
                # TypeError messages name the class ('Record' vs asyncpg's qualified name).
                assert outcome(lambda: op(o1, o2), False) == outcome(lambda: op(t1, t2), False), (t1, t2)
                assert outcome(lambda: op(o2, o1), False) == outcome(lambda: op(t2, t1), False), (t2, t1)


def test_immutable_like_asyncpg(pairs: list[tuple[Any, Record]]) -> None:
    theirs, ours = pairs[0]

    def setitem(r: Any) -> None:
        r["a"] = 5

    def setattr_(r: Any) -> None:
        r.foo = 5

    assert outcome(lambda: setitem(ours))[1][0] == outcome(lambda: setitem(theirs))[1][0] == "TypeError"
    assert outcome(lambda: setattr_(ours))[1][0] == outcome(lambda: setattr_(theirs))[1][0] == "AttributeError"
    assert outcome(lambda: ours.foo)[1][0] == "AttributeError"
    assert not hasattr(ours, "__dict__")


def test_subclass_repr() -> None:
    class MyRecord(Record):
        __slots__ = ()

    r = MyRecord(make_mapping(["a", "b"]), (1, "x"))
    assert repr(r) == "<MyRecord a=1 b='x'>"
    assert r == Record(make_mapping(["q", "w"]), (1, "x"))


def test_duplicate_names_last_wins_like_asyncpg(pairs: list[tuple[Any, Record]]) -> None:
    theirs, ours = pairs[0]
    assert theirs["a"] == ours["a"] == 2
    m = make_mapping(["a", "b", "a"])
    assert isinstance(m, RecordMapping) and m == {"a": 2, "b": 1} and m.names == ("a", "b", "a")


def test_plain_dict_mapping() -> None:
    r = Record({"a": 0, "b": 1}, (1, 2))
    assert (r["a"], r["b"], r[1], r.get("b")) == (1, 2, 2, 2)
    assert list(r.keys()) == ["a", "b"] and dict(r) == {"a": 1, "b": 2}
    assert repr(r) == "<Record a=1 b=2>"


def test_shared_mapping_and_slots() -> None:
    m = make_mapping(["id", "name"])
    rows = [Record(m, (i, f"n{i}")) for i in range(3)]
    assert all(r._mapping is m for r in rows)
    assert [r["name"] for r in rows] == ["n0", "n1", "n2"]
    assert Record.__slots__ == ("_mapping", "_values")


def test_pickle_roundtrip() -> None:
    import pickle

    r = Record(make_mapping(["a", "b"]), (1, "x"))
    r2 = pickle.loads(pickle.dumps(r))
    assert r2 == r and r2["b"] == "x" and list(r2.keys()) == ["a", "b"]


# --- record_class= (asyncpg: per call, per prepared statement, per connection) ---

class _MyRecord(driver.Record):
    def total(self) -> int:
        return sum(self.values())


async def test_record_class_everywhere(connect: Any) -> None:
    for describe_first in (True, False):
        c = await connect(describe_first=describe_first)
        q = "SELECT $1::int AS a, 2 AS b"
        assert type(await c.fetchrow(q, 1, record_class=_MyRecord)) is _MyRecord
        rows = await c.fetch(q, 1, record_class=_MyRecord)
        assert type(rows[0]) is _MyRecord and rows[0].total() == 3
        assert type(await c.fetchrow(q, 1)) is driver.Record  # the cached statement is shared
        ps = await c.prepare(q, record_class=_MyRecord)
        assert type(await ps.fetchrow(1)) is _MyRecord
        assert type((await ps.fetch(1))[0]) is _MyRecord
        async with c.transaction():
            assert [type(r) for r in [r async for r in c.cursor(q, 1, record_class=_MyRecord)]] \
                == [_MyRecord]
            cur = await c.cursor(q, 1, record_class=_MyRecord)
            assert type(await cur.fetchrow()) is _MyRecord
            assert [type(r) for r in [r async for r in ps.cursor(1)]] == [_MyRecord]


async def test_record_class_connection_default(connect: Any) -> None:
    c = await connect(record_class=_MyRecord)
    r = await c.fetchrow("SELECT 1 AS a")
    assert type(r) is _MyRecord and r.total() == 1 and dict(r) == {"a": 1}
    assert type((await c.fetch("SELECT $1::int AS a", 5))[0]) is _MyRecord
    assert type(await (await c.prepare("SELECT 1 AS a")).fetchrow()) is _MyRecord
    assert type(await c.fetchrow("SELECT 1 AS a", record_class=driver.Record)) is driver.Record


async def test_record_class_is_checked(conn: Any, admin_dsn: str) -> None:
    class WithInit(driver.Record):
        def __init__(self, *a: Any) -> None:
            super().__init__(*a)

    for bad, msg in ((dict, "subclass of driver.Record"), (WithInit, "__new__ or __init__")):
        with pytest.raises(exc.InterfaceError, match=msg):
            await conn.fetch("SELECT 1", record_class=bad)
        with pytest.raises(exc.InterfaceError, match=msg):
            await conn.fetchrow("SELECT 1", record_class=bad)
        with pytest.raises(exc.InterfaceError, match=msg):
            await conn.prepare("SELECT 1", record_class=bad)
        with pytest.raises(exc.InterfaceError, match=msg):
            conn.cursor("SELECT 1", record_class=bad)
        with pytest.raises(exc.InterfaceError, match=msg):
            await driver.connect(admin_dsn, record_class=bad)
    assert await conn.fetchval("SELECT 1") == 1
