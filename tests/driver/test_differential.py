"""Differential tests: the same scenarios run on asyncpg and on driver must agree.

Each scenario takes a connection (asyncpg's or ours) and returns plain data
(rows as tuples/dicts, status strings, error class names and fields); the two
outcomes are compared for equality.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import uuid
from typing import Any, Awaitable, Callable

import asyncpg
import pytest

import driver
from tests.pgcluster import PgCluster

Scenario = Callable[[Any], Awaitable[Any]]
SCENARIOS: dict[str, Scenario] = {}


def scenario(fn: Scenario) -> Scenario:
    SCENARIOS[fn.__name__] = fn
    return fn


def norm(v: Any) -> Any:
    """NaN != NaN: compare NaNs by their repr."""
    if isinstance(v, (decimal.Decimal, float)) and v != v:
        return ("NaN", type(v).__name__)
    return v


def rows(records: Any) -> list[tuple[tuple[str, Any], ...]]:
    return [tuple((k, norm(v)) for k, v in r.items()) for r in records]


def err(e: BaseException) -> tuple[Any, ...]:
    return (type(e).__name__, getattr(e, "sqlstate", None), getattr(e, "detail", None),
            getattr(e, "hint", None), getattr(e, "position", None),
            getattr(e, "constraint_name", None), getattr(e, "table_name", None),
            getattr(e, "column_name", None), getattr(e, "schema_name", None))


async def outcome(aw: Awaitable[Any]) -> Any:
    try:
        return ("ok", await aw)
    except Exception as e:  # noqa: BLE001 - compared, not swallowed
        return ("error",) + err(e)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

TYPED_SELECT = """
SELECT 1::int2 AS i2, 2::int4 AS i4, 3::int8 AS i8, 1.5::float4 AS f4, 2.25::float8 AS f8,
       12.50::numeric(10,2) AS num, 'NaN'::numeric AS nan, true AS b, 'txt'::text AS t,
       'vc'::varchar(5) AS vc, 'c'::char(3) AS ch, 'nm'::name AS nm, '\\x00ff'::bytea AS by,
       '2024-02-29'::date AS d, '12:34:56.789'::time AS tm, '2024-01-02 03:04:05.678'::timestamp AS ts,
       '2024-01-02 03:04:05+02'::timestamptz AS tstz, '1 day 02:03:04'::interval AS iv,
       '12345678-1234-5678-1234-567812345678'::uuid AS u, '{"a": [1, 2]}'::json AS js,
       '{"b": null}'::jsonb AS jb, ARRAY[1, NULL, 3]::int4[] AS ai, ARRAY['a', 'b c']::text[] AS at,
       '{{1,2},{3,4}}'::int8[] AS a2, '192.168.0.1/24'::inet AS ip, '10.0.0.0/8'::cidr AS cidr,
       NULL::int AS nul, 42::oid AS o, 'infinity'::date AS dinf, '-infinity'::timestamp AS tsninf,
       'x'::"char" AS qc, '1.5'::money AS money
"""


@scenario
async def typed_select(conn: Any) -> Any:
    await conn.execute("SET TimeZone = 'UTC'")
    return rows(await conn.fetch(TYPED_SELECT))


@scenario
async def typed_parameters(conn: Any) -> Any:
    await conn.execute("SET TimeZone = 'UTC'")
    values = [
        ("int2", 5), ("int4", -7), ("int8", 2**62), ("float8", -0.5), ("numeric", decimal.Decimal("-1.000")),
        ("bool", False), ("text", "ünïcode"), ("bytea", b"\x00\x01"), ("date", datetime.date(1999, 12, 31)),
        ("timestamp", datetime.datetime(2000, 1, 1, 0, 0, 1)),
        ("timestamptz", datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)),
        ("time", datetime.time(23, 59, 59)), ("interval", datetime.timedelta(days=-1, seconds=5)),
        ("uuid", uuid.UUID(int=12345)), ("int4[]", [[1, 2], [3, 4]]), ("text[]", ["x", None]),
        ("jsonb", '[1, "a"]'), ("inet", ipaddress.ip_address("10.1.2.3")),
        ("float4", 0.25), ("varchar", "v"),
    ]
    out = []
    for typ, v in values:
        out.append((typ, await outcome(conn.fetchval(f"SELECT $1::{typ}", v))))
    return out


@scenario
async def status_strings(conn: Any) -> Any:
    out = [await conn.execute("CREATE TEMP TABLE st (a int, b text)")]
    out.append(await conn.execute("INSERT INTO st VALUES (1, 'a'), (2, 'b')"))
    out.append(await conn.execute("INSERT INTO st VALUES ($1, $2)", 3, "c"))
    out.append(await conn.execute("UPDATE st SET b = 'z' WHERE a < $1", 3))
    out.append(await conn.execute("SELECT 1; SELECT * FROM st"))
    out.append(await conn.execute("DELETE FROM st"))
    out.append(await conn.execute("BEGIN; SAVEPOINT x; RELEASE x; COMMIT"))
    out.append(await conn.execute("DO $$BEGIN END$$"))
    return out


@scenario
async def server_errors(conn: Any) -> Any:
    await conn.execute("CREATE TEMP TABLE se (id int CONSTRAINT se_pk PRIMARY KEY, "
                       "v int CONSTRAINT se_v CHECK (v > 0), n text NOT NULL)")
    await conn.execute("INSERT INTO se VALUES (1, 1, 'a')")
    queries: list[tuple[str, tuple[Any, ...]]] = [
        ("INSERT INTO se VALUES (1, 1, 'a')", ()),
        ("INSERT INTO se VALUES ($1, $2, $3)", (1, 1, "a")),
        ("INSERT INTO se VALUES (2, -1, 'a')", ()),
        ("INSERT INTO se VALUES (3, 1, NULL)", ()),
        ("SELEC 1", ()),
        ("SELECT nosuch FROM se", ()),
        ("SELECT * FROM nosuch WHERE a = $1", (1,)),
        ("SELECT 1/0", ()),
        ("SELECT $1::int / 0", (1,)),
        ("SELECT 'abc'::int", ()),
        ("DO $$BEGIN RAISE EXCEPTION 'custom' USING ERRCODE = 'P0002', DETAIL = 'd', HINT = 'h'; END$$", ()),
        ("SELECT * FROM se WHERE id = $1", ("not an int",)),
        ("SELECT $1::int", (1, 2)),
        ("SELECT $1::int", ()),
    ]
    out = []
    for q, args in queries:
        out.append((q, await outcome(conn.execute(q, *args))))
        out.append((q, await outcome(conn.fetch(q, *args))))
    out.append(await conn.fetchval("SELECT count(*) FROM se"))
    return out


@scenario
async def fetch_variants(conn: Any) -> Any:
    return [
        await conn.fetchval("SELECT 1 WHERE false"),
        await conn.fetchrow("SELECT 1 WHERE false"),
        await conn.fetch("SELECT 1 WHERE false"),
        await conn.fetchval("SELECT 1, 2, 3", column=1),
        tuple((await conn.fetchrow("SELECT 1 AS a, 2 AS a, 3 AS b")).items()),
        rows(await conn.fetch("SELECT g, g * $1::int AS dbl FROM generate_series(1, 5) g", 2)),
        dict(await conn.fetchrow("SELECT $1::text AS x, $2::int AS y", None, None)),
        await conn.fetchval("SELECT $1::text IS NULL", None),
    ]


@scenario
async def executemany_batch(conn: Any) -> Any:
    await conn.execute("CREATE TEMP TABLE em (a int PRIMARY KEY, b text)")
    r1 = await conn.executemany("INSERT INTO em VALUES ($1, $2)", [(i, f"v{i}") for i in range(50)])
    r2 = await outcome(conn.executemany("INSERT INTO em VALUES ($1, $2)", [(100, "x"), (1, "dup")]))
    return [r1, r2, rows(await conn.fetch("SELECT count(*), max(a), min(b) FROM em"))]


class _Int(int):
    pass


@scenario
async def executemany_values(conn: Any) -> Any:
    """The compiled Bind builder (driver/batch.py): inlined values, NULLs, values its
    fast paths leave to the encoders, and errors (which go the general way)."""
    await conn.execute("CREATE TEMP TABLE emv (i2 int2, i4 int4, i8 int8, f float8, t text,"
                       " ts timestamptz, n numeric, b bool)")
    utc = datetime.timezone.utc
    good = [(1, 2, 3, 1.5, "a", datetime.datetime(2024, 1, 1, tzinfo=utc), decimal.Decimal("1.10"),
             True),
            (None, None, None, None, None, None, None, None),
            (-32768, -2**31, -2**63, float("inf"), "é" * 3, datetime.datetime.max,
             decimal.Decimal("NaN"), False),
            (True, _Int(9), 2**62, 7, "", datetime.datetime(2000, 1, 1,
             tzinfo=datetime.timezone(datetime.timedelta(hours=-3))), 5, None)]
    ins = "INSERT INTO emv VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    out: list[Any] = [await conn.executemany(ins, good)]
    for bad in [(32768,) + good[0][1:], good[0][:1] + (2**31,) + good[0][2:],
                good[0][:3] + ("x",) + good[0][4:], good[0][:7], good[0][:4] + (b"x",) + good[0][5:]]:
        out.append(await outcome(conn.executemany(ins, [good[0], bad])))
    out.append(rows(await conn.fetch("SELECT * FROM emv ORDER BY i4 NULLS FIRST, b")))
    return out


@scenario
async def transactions(conn: Any) -> Any:
    await conn.execute("CREATE TEMP TABLE tr (a int)")
    out: list[Any] = []
    async with conn.transaction():
        await conn.execute("INSERT INTO tr VALUES (1)")
        out.append(conn.is_in_transaction())
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO tr VALUES (2)")
                await conn.execute("SELECT 1/0")
        except Exception as e:  # noqa: BLE001
            out.append(err(e))
        async with conn.transaction():
            await conn.execute("INSERT INTO tr VALUES (3)")
    out.append(conn.is_in_transaction())
    tr = conn.transaction(isolation="serializable", readonly=True)
    await tr.start()
    out.append(await conn.fetchval("SHOW transaction_isolation"))
    out.append(await outcome(conn.execute("INSERT INTO tr VALUES (4)")))
    out.append(await outcome(conn.execute("SELECT 1")))
    await tr.rollback()
    out.append(await outcome(tr.commit()))
    for iso in ("read_committed", "repeatable_read", "serializable", "read_uncommitted"):
        async with conn.transaction(isolation=iso):
            out.append(await conn.fetchval("SHOW transaction_isolation"))
    out.append(rows(await conn.fetch("SELECT a FROM tr ORDER BY a")))
    return out


@scenario
async def prepared_statements(conn: Any) -> Any:
    await conn.execute("CREATE TEMP TABLE ps (id int, name text, tags text[], price numeric)")
    ins = await conn.prepare("INSERT INTO ps VALUES ($1, $2, $3, $4)")
    await ins.executemany([(1, "a", ["x"], decimal.Decimal("1.5")), (2, "b", [], None)])
    sel = await conn.prepare("SELECT id, name, tags, price FROM ps WHERE id >= $1 ORDER BY id")
    return [
        [tuple(t) for t in ins.get_parameters()],
        [tuple(t) for t in sel.get_parameters()],
        [(a.name, tuple(a.type)) for a in sel.get_attributes()],
        rows(await sel.fetch(1)),
        sel.get_statusmsg(),
        tuple((await sel.fetchrow(2)).items()),
        await sel.fetchval(1, column=1),
        ins.get_statusmsg(),
        await outcome(sel.fetch("x")),
    ]


@scenario
async def cursors(conn: Any) -> Any:
    out: list[Any] = []
    out.append(await outcome(conn.cursor("SELECT 1").__anext__() if False else _cursor_outside(conn)))
    async with conn.transaction():
        out.append([r[0] async for r in conn.cursor("SELECT generate_series(1, $1::int)", 7, prefetch=3)])
        cur = await conn.cursor("SELECT g, g::text FROM generate_series(1, 20) g")
        out.append(rows(await cur.fetch(3)))
        out.append(await cur.forward(5))
        out.append(tuple((await cur.fetchrow()).items()))
        out.append(rows(await cur.fetch(100)))
        out.append(await cur.fetch(5))
        out.append(await cur.fetchrow())
        ps = await conn.prepare("SELECT generate_series(1, $1::int)")
        out.append([r[0] async for r in ps.cursor(4)])
    return out


async def _cursor_outside(conn: Any) -> Any:
    return await conn.cursor("SELECT 1")


@scenario
async def session_state(conn: Any) -> Any:
    v = conn.get_server_version()
    await conn.execute("SET application_name = 'diff'")
    return [tuple(v), type(v).__name__, conn.get_settings().application_name,
            conn.get_settings().client_encoding, conn.is_in_transaction(),
            conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")]


# ---------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SCENARIOS))
async def test_same_as_asyncpg(name: str, pg: PgCluster, pg_db: str) -> None:
    dsn = pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD, pg_db)
    fn = SCENARIOS[name]
    ref_conn = await asyncpg.connect(dsn)
    try:
        expected = await fn(ref_conn)
    finally:
        await ref_conn.close()
    our_conn = await driver.connect(dsn)
    try:
        got = await fn(our_conn)
    finally:
        await our_conn.close()
    if got != expected and isinstance(got, list) and isinstance(expected, list):
        diffs = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        assert not diffs, "\n".join(f"#{i}\n ours:    {g!r}\n asyncpg: {e!r}" for i, g, e in diffs)
    assert got == expected
