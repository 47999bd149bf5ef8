"""Ranges, multiranges, bit strings and geometry: the driver decodes and encodes
them like asyncpg, value for value (binary format, and text format through
``describe_first=False``), and exports asyncpg's value types."""

from __future__ import annotations

import datetime
import decimal
from typing import Any

import pytest

import driver
from tests.driver._diff import assert_same, outcome, run_both
from tests.pgcluster import PgCluster

DECODE_SQL = [
    # ranges
    "'[1,5)'::int4range", "'empty'::int4range", "'(,5]'::int4range", "'[3,)'::int4range",
    "'(,)'::int8range", "'[1.5,2.5]'::numrange", "'(-1e30,)'::numrange",
    "'[2020-01-01,2021-01-01)'::daterange", "'[2020-01-01 10:00,2020-01-02)'::tsrange",
    "'[2020-01-01 10:00+02,infinity)'::tstzrange", "'[-infinity,2020-01-01)'::daterange",
    "ARRAY['[1,2)'::int4range, NULL, 'empty']", "ARRAY['[1.5,3)'::numrange]",
    # multiranges
    "'{[1,3),[5,8)}'::int4multirange", "'{}'::int4multirange", "'{[1,2]}'::int8multirange",
    "'{[1.5,2),(3,)}'::nummultirange", "'{[2020-01-01,2020-02-01)}'::datemultirange",
    "'{[2020-01-01 10:00,2020-01-02)}'::tsmultirange",
    "'{[2020-01-01 10:00+02,)}'::tstzmultirange",
    "ARRAY['{[1,3),[5,8)}'::int4multirange, '{}']",
    # bit strings
    "B'101'::bit(3)", "B''::varbit", "B'1'::varbit", "B'101011110000'::varbit",
    "B'1010111100001'::bit(13)", "ARRAY[B'10'::varbit, NULL, B'1111111111']",
    # geometry
    "point(1.5, -2)", "'(1e+300,-0.125)'::point", "'(Infinity,NaN)'::point",
    "'((0,0),(1,1))'::box", "ARRAY['((0,0),(1,1))'::box, '((2,3),(-1,4))'::box]",
    "'{1,2,3}'::line", "'[(0,0),(1,1.5)]'::lseg", "'((0,0),(1,1))'::path",
    "'[(0,0),(1,1),(2,0.5)]'::path", "'((0,0),(1,1),(1,0))'::polygon", "'<(1,2),3>'::circle",
    "ARRAY[point(1,2), NULL, point(3,4)]", "ARRAY['<(1,2),3>'::circle]",
    "ARRAY['[(0,0),(1,1)]'::path, '((0,0),(1,1))'::path]",
]


async def decode_all(conn: Any, mod: Any) -> Any:
    out = []
    for sql in DECODE_SQL:
        out.append((sql, await outcome(conn.fetchval(f"SELECT {sql}"))))
    return out


def encode_cases(mod: Any) -> list[tuple[str, Any]]:
    tz = datetime.timezone(datetime.timedelta(hours=2))
    R = mod.Range
    return [
        ("int4range", R(1, 5)), ("int4range", R(empty=True)), ("int4range", R(None, 5, upper_inc=True)),
        ("int4range", R(1, None)), ("int4range", (1, 5)), ("int4range", [7]), ("int4range", ()),
        ("int4range", (None, None)), ("int8range", R(-(2**40), 2**40, lower_inc=False)),
        ("numrange", R(decimal.Decimal("1.5"), decimal.Decimal("2.25"), upper_inc=True)),
        ("daterange", R(datetime.date(2020, 1, 1), datetime.date(2020, 2, 1))),
        ("tsrange", R(datetime.datetime(2020, 1, 1, 10), None)),
        ("tstzrange", R(datetime.datetime(2020, 1, 1, 10, tzinfo=tz),
                        datetime.datetime(2020, 1, 2, tzinfo=tz))),
        ("int4range[]", [R(1, 2), None, R(empty=True), (3, 4)]),
        ("int4multirange", [R(1, 3), R(5, 8)]), ("int4multirange", []),
        ("int4multirange", ((1, 3), (5, 8))),
        ("datemultirange", [R(datetime.date(2020, 1, 1), datetime.date(2020, 2, 1))]),
        ("int4multirange[]", [[R(1, 3)], []]),
        ("bit(3)", mod.BitString("101")), ("varbit", mod.BitString("")),
        ("varbit", mod.BitString.from_int(37, 9)), ("varbit", b"\xf0\x01"),
        ("varbit[]", [mod.BitString("1 0"), None]),
        ("point", mod.Point(1, 2.5)), ("point", (3, 4)), ("point", [5.5, -6]),
        ("box", mod.Box((1, 1), (0, 0))), ("box", ((0, 0), (2, 3))),
        ("box[]", [mod.Box((1, 1), (0, 0)), mod.Box((5, 6), (3, 4))]),
        ("lseg", mod.LineSegment((0, 0), (1, 1))), ("lseg", [(1, 2), (3, 4)]),
        ("line", mod.Line(1, 2, 3)), ("line", (1.5, -1, 0)),
        ("path", mod.Path((0, 0), (1, 1), is_closed=True)), ("path", mod.Path((0, 0), (1, 1))),
        ("path", [(0, 0), (1, 1), (2, 2)]), ("path", ((0, 0), (1, 1))),
        ("polygon", mod.Polygon((0, 0), (1, 1), (1, 0))), ("polygon", [(0, 0), (2, 2), (2, 0)]),
        ("circle", mod.Circle((1, 2), 3)), ("circle", ((0.5, 0.5), 1)),
        ("point[]", [mod.Point(1, 2), None, (3, 4)]),
    ]


BAD_CASES: list[tuple[str, Any]] = [
    ("int4range", "[1,5)"), ("int4range", (1, 2, 3)), ("int4range", (1, "x")),
    ("int4multirange", 5), ("varbit", "101"), ("point", "abc"), ("point", 5),
    ("circle", (1, 2)), ("line", (1, 2)),
]


async def encode_all(conn: Any, mod: Any) -> Any:
    out = []
    for typ, value in encode_cases(mod):
        out.append((typ, repr(value)[:60] if typ.startswith("bit") else None,
                    await outcome(conn.fetchrow(f"SELECT $1::{typ} AS v, $1::{typ}::text AS t",
                                                value))))
    for typ, value in BAD_CASES:
        out.append((typ, repr(value), await outcome(conn.fetchval(f"SELECT $1::{typ}", value))))
    return out


@pytest.fixture
def dsn(pg: PgCluster, pg_db: str) -> str:
    return pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD, pg_db)


async def test_decode_same_as_asyncpg(dsn: str) -> None:
    assert_same(*run_both_sync(await run_both(dsn, decode_all)))


async def test_decode_text_format_same_as_asyncpg(dsn: str) -> None:
    # describe_first=False: no Describe round trip, results in text format
    assert_same(*run_both_sync(await run_both(dsn, decode_all, describe_first=False)))


async def test_encode_same_as_asyncpg(dsn: str) -> None:
    assert_same(*run_both_sync(await run_both(dsn, encode_all)))


def run_both_sync(pair: tuple[Any, Any]) -> tuple[Any, Any]:
    return pair


def test_top_level_exports_are_the_types_module() -> None:
    import driver.types as t

    for name in ("Range", "BitString", "Point", "Box", "Line", "LineSegment", "Path",
                 "Polygon", "Circle"):
        assert getattr(driver, name) is getattr(t, name)
    assert driver.types is t
    assert t.Type(1, "a", "scalar", "s").kind == "scalar"


def test_value_types_behave_like_asyncpgs() -> None:
    import asyncpg

    for mod in (asyncpg, driver):
        R = mod.Range
    pairs = []
    for mod in (asyncpg, driver):
        R, B = mod.Range, mod.BitString
        r = R(1, 5)
        pairs.append((
            repr(r), repr(R(empty=True)), repr(R(None, 3, upper_inc=True)), str(R(1, None)),
            r == R(1, 5), hash(r) == hash(R(1, 5)), bool(R(empty=True)), r.lower_inf,
            R(None, 2).lower_inf, R(2, 3).issubset(r), r.issuperset(R(1, 5)),
            R(1, 5, lower_inc=False).issubset(r), R(empty=True).issubset(r),
            r.issubset(R(empty=True)), R(None, 4, lower_inc=True).lower_inc,
            repr(B("1010 11")), B("101").to_int(), B("101").to_int("little"),
            B("111").to_int(signed=True), repr(B.from_int(-3, 5, signed=True)),
            repr(B.from_int(6, 4, "little")), len(B("10101")), B("101")[2], B("101") == B("101"),
            B.frombytes(b"\xa0", 3).as_string(),
            tuple(mod.Point("1.5", 2)), mod.Box((1, 2), (0, 0)).high.y,
            mod.LineSegment((0, 1), (2, 3)).p2.x, mod.Line(1, 2, 3).C,
            mod.Path((0, 0), (1, 1)).is_closed, mod.Polygon((0, 0), (1, 1)).is_closed,
            len(mod.Path((0, 0), (1, 1))), tuple(mod.Circle((1, 2), 3).center),
            mod.Path((0, 0)) == mod.Path((0, 0)), (0.0, 0.0) in mod.Path((0, 0)),
        ))
    assert pairs[0] == pairs[1]
    for bad in (lambda: driver.BitString("102"), lambda: driver.BitString.frombytes(b"\x00", 12)):
        with pytest.raises(ValueError):
            bad()
