"""Type introspection (enums, domains, composites, ranges, multiranges, arrays of
them) and per-connection custom codecs, compared with asyncpg on the same server."""

from __future__ import annotations

import datetime
import json
import struct
from typing import Any

import asyncpg
import pytest

import driver
from tests.driver._diff import assert_same, outcome, run_both
from tests.pgcluster import PgCluster

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int CHECK (VALUE > 0);
CREATE DOMAIN moods AS mood[];
CREATE TYPE inner_t AS (a int, b text);
CREATE TYPE comp AS (x int, y text, m mood, d posint, i inner_t, r int4range, tags text[]);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE TYPE moodrange AS RANGE (subtype = mood);
CREATE TYPE withmoney AS (m money, n int);
CREATE TABLE tbl (id int, c comp, ms mood[]);
"""


@pytest.fixture
async def dsn(pg: PgCluster, pg_db: str) -> str:
    d = pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD, pg_db)
    c = await asyncpg.connect(d)
    try:
        await c.execute(SCHEMA)
    finally:
        await c.close()
    return d


DECODE_SQL = [
    "'ok'::mood", "ARRAY['sad','happy']::mood[]", "ARRAY[['sad'],[NULL]]::mood[]",
    "5::posint", "ARRAY[1,2]::posint[]", "ARRAY['ok']::moods",
    "ROW(1,'a')::inner_t", "ROW(NULL,NULL)::inner_t", "ROW(1, 'q\"x,y)', 'ok', 3, ROW(2,'b'), '[1,3)', ARRAY['t',NULL])::comp",
    "ARRAY[ROW(1,'a')::inner_t, NULL, ROW(2,NULL)::inner_t]",
    "'[1.5,2.5)'::floatrange", "ARRAY['(,3]'::floatrange, 'empty']",
    "'{[1.5,2),[3,4)}'::floatmultirange", "ARRAY['{[1,2)}'::floatmultirange]",
    "'[sad,happy]'::moodrange", "'{[sad,ok)}'::moodmultirange",
]
# anonymous records: a tuple of values decoded by the OIDs sent in binary format
RECORD_SQL = ["ROW(1,'a')", "(SELECT t FROM (SELECT 1 AS a, 'x'::text AS b) t)",
              "ROW(NULL::int, 2.5::numeric, point(1,2), 'x'::bytea)"]


async def decode_all(conn: Any, mod: Any) -> Any:
    out = []
    for sql in DECODE_SQL:
        out.append((sql, await outcome(conn.fetchval(f"SELECT {sql}"))))
    out.append(await outcome(conn.fetch("SELECT 'ok'::mood AS a, ROW(1,'b')::inner_t AS b, "
                                        "'[1,2)'::floatrange AS c")))
    return out


async def decode_records(conn: Any, mod: Any) -> Any:
    return [await outcome(conn.fetchval(f"SELECT {sql}")) for sql in RECORD_SQL]


def encode_cases(mod: Any) -> list[tuple[str, Any]]:
    return [
        ("mood", "happy"), ("mood[]", ["sad", None, "ok"]), ("mood[]", [["sad"], ["ok"]]),
        ("mood", "nope"), ("mood", 5), ("posint", 7), ("posint", -1), ("posint[]", [1, 2]),
        ("moods", ["ok"]), ("inner_t", (1, "a")), ("inner_t", [2, None]),
        ("inner_t", {"b": "only-b"}), ("inner_t", (1,)), ("inner_t", 5),
        ("inner_t[]", [(1, "a"), None, (2, "b")]),
        ("comp", (1, 'q"x', "ok", 3, (2, "b"), mod.Range(1, 3), ["t", None])),
        ("comp[]", [(1, "y", "sad", 1, None, (1, 2), [])]),
        ("floatrange", mod.Range(1.5, 2.5)), ("floatrange", (None, 3.0)),
        ("floatrange[]", [mod.Range(1.0, 2.0), mod.Range(empty=True)]),
        ("floatmultirange", [mod.Range(1.0, 2.0), (3.0, 4.0)]),
        ("moodrange", mod.Range("sad", "happy")), ("moodmultirange", [("sad", "ok")]),
    ]


async def encode_all(conn: Any, mod: Any) -> Any:
    await conn.execute("DELETE FROM tbl")
    out = []
    for typ, value in encode_cases(mod):
        out.append((typ, await outcome(conn.fetchrow(
            f"SELECT $1::{typ} AS v, $1::{typ}::text AS t", value))))
    out.append(await outcome(conn.execute(
        "INSERT INTO tbl VALUES ($1, $2, $3)", 1, (1, "x", "ok", 2, (3, "c"), None, None),
        ["sad", "happy"])))
    out.append(await outcome(conn.fetch("SELECT * FROM tbl")))
    out.append(await outcome(conn.fetch("SELECT * FROM tbl WHERE ms = $1", ["sad", "happy"])))
    return out


async def test_introspected_types_decode_like_asyncpg(dsn: str) -> None:
    assert_same(*await run_both(dsn, decode_all))


async def test_anonymous_records_decode_like_asyncpg(dsn: str) -> None:
    expected, got = await run_both(dsn, decode_records)
    assert_same(expected, got)
    assert got[0] == ("tuple", [1, "a"])


async def test_introspected_types_decode_like_asyncpg_in_text_format(dsn: str) -> None:
    # describe_first=False: rows arrive (text format) before the types are known
    assert_same(*await run_both(dsn, decode_all, describe_first=False))


async def test_introspected_types_encode_like_asyncpg(dsn: str) -> None:
    assert_same(*await run_both(dsn, encode_all))


async def test_composite_with_text_only_field(dsn: str) -> None:
    """asyncpg refuses composites with a text-only field (money); the driver
    exchanges them in text format."""
    ref = await asyncpg.connect(dsn)
    try:
        with pytest.raises(asyncpg.UnsupportedClientFeatureError):
            await ref.fetchval("SELECT ROW('1.50'::money, 2)::withmoney")
    finally:
        await ref.close()
    c = await driver.connect(dsn)
    try:
        v = await c.fetchval("SELECT ROW('1.50'::money, 2)::withmoney")
        assert (v["m"], v["n"]) == ("$1.50", 2)
        arr = await c.fetchval("SELECT $1::withmoney[]", [("2", None), None])
        assert [tuple(x) if x else x for x in arr] == [("$2.00", None), None]
    finally:
        await c.close()


async def test_one_introspection_query_per_batch_cached_per_connection(
        dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import driver.introspection as intro

    calls: list[str] = []
    real = intro.system_query

    async def counting(conn: Any, sql: str, deadline: Any) -> Any:
        calls.append(sql)
        return await real(conn, sql, deadline)

    monkeypatch.setattr(intro, "system_query", counting)
    c1 = await driver.connect(dsn)
    c2 = await driver.connect(dsn)
    try:
        assert await c1.fetchval("SELECT 1") == 1
        assert calls == []  # builtin types: no introspection
        row = await c1.fetchrow("SELECT 'ok'::mood, ARRAY['ok']::mood[], ROW(1,'a')::inner_t, "
                                "'[1,2)'::floatrange, ARRAY[ROW(1,'b')::inner_t]")
        assert row[0] == "ok" and row[2]["b"] == "a" and row[4][0]["b"] == "b"
        assert len(calls) == 1  # one query for all the unknown types and their dependencies
        await c1.fetchrow("SELECT $1::mood, ROW(2,'b')::inner_t", "sad")
        assert len(calls) == 1  # cached on the connection
        assert await c2.fetchval("SELECT 'ok'::mood") == "ok"
        assert len(calls) == 2  # ... and per connection
    finally:
        await c1.close()
        await c2.close()


async def test_reload_schema_state_after_enum_recreated(dsn: str) -> None:
    async def scenario(conn: Any, mod: Any) -> Any:
        await conn.execute("CREATE TYPE color AS ENUM ('red', 'green')")
        out = [await outcome(conn.fetchval("SELECT $1::color[]", ["red"]))]
        await conn.execute("DROP TYPE color; CREATE TYPE color AS (r int, g int)")
        await conn.reload_schema_state()
        out.append(await outcome(conn.fetchval("SELECT $1::color", (1, 2))))
        out.append(await outcome(conn.fetchval("SELECT ARRAY[ROW(3,4)::color]")))
        await conn.execute("DROP TYPE color; CREATE TYPE color AS ENUM ('blue')")
        await conn.reload_schema_state()
        out.append(await outcome(conn.fetchval("SELECT $1::color[]", ["blue"])))
        out.append(await outcome(conn.fetchval("SELECT 'blue'::color")))
        await conn.execute("DROP TYPE color")
        return out

    expected, got = await run_both(dsn, scenario)
    assert_same(expected, got)
    assert got[0] == ("list", ["red"]) and got[-1] == "blue"


async def test_reload_schema_state_clears_the_statement_cache(dsn: str) -> None:
    c = await driver.connect(dsn)
    try:
        await c.execute("CREATE TYPE e1 AS ENUM ('a')")
        assert await c.fetchval("SELECT 'a'::e1") == "a"
        assert c._stmt_cache and c._type_rows
        await c.reload_schema_state()
        assert not c._stmt_cache and not c._type_rows
        assert await c.fetchval("SELECT 'a'::e1") == "a"
    finally:
        await c.close()


# ---------------------------------------------------------------------------
# custom codecs
# ---------------------------------------------------------------------------


def _jsonb_encode(v: Any) -> bytes:
    return b"\x01" + json.dumps(v).encode()


def _jsonb_decode(b: bytes) -> Any:
    return json.loads(b[1:].decode())


async def custom_codecs(conn: Any, mod: Any) -> Any:
    out: list[Any] = []
    # SQLAlchemy's asyncpg dialect installs exactly these
    await conn.set_type_codec("json", schema="pg_catalog", encoder=str.encode,
                              decoder=json.loads, format="binary")
    await conn.set_type_codec("jsonb", schema="pg_catalog", encoder=_jsonb_encode,
                              decoder=_jsonb_decode, format="binary")
    out.append(await outcome(conn.fetchrow(
        "SELECT $1::json, $2::jsonb, ARRAY[$2::jsonb], '{\"x\": [1]}'::jsonb",
        '{"a": 1}', {"b": [1, None]})))
    # text format, applied to arrays and composite fields
    await conn.set_type_codec("mood", encoder=lambda s: s.lower(), decoder=str.upper)
    out.append(await outcome(conn.fetchrow("SELECT $1::mood, $2::mood[]", "HAPPY", ["SAD", None])))
    await conn.set_type_codec("int8", schema="pg_catalog", encoder=str,
                              decoder=lambda s: ("int8", s), format="text")
    out.append(await outcome(conn.fetchrow("SELECT $1::int8, ARRAY[2::int8, NULL]", 7)))
    # binary format: applies to arrays, composite fields and ranges
    await conn.set_type_codec("int4", schema="pg_catalog",
                              encoder=lambda v: struct.pack("!i", v * 10),
                              decoder=lambda b: ("i4", struct.unpack("!i", b)[0]), format="binary")
    out.append(await outcome(conn.fetchrow(
        "SELECT $1::int4, ARRAY[2, NULL], ROW(3, 'a')::inner_t, $2::inner_t, '[1,5)'::int4range",
        1, (4, "b"))))
    await conn.reset_type_codec("int4", schema="pg_catalog")
    # tuple format
    for t in ("date", "time", "timetz", "timestamp", "timestamptz", "interval"):
        await conn.set_type_codec(t, schema="pg_catalog", encoder=lambda v: v,
                                  decoder=lambda v: ("tuple", v), format="tuple")
    out.append(await outcome(conn.fetchrow(
        "SELECT '2020-01-02'::date, '10:00:01.5'::time, '10:00+05:30'::timetz, "
        "'2000-01-01 00:00:01'::timestamp, 'epoch'::timestamptz, "
        "'1 year 2 mons 3 days 4 seconds'::interval, ARRAY['1999-12-31'::date]")))
    out.append(await outcome(conn.fetchrow("SELECT $1::date, $2::interval, $3::timetz::text",
                                           (5,), (1, 2, 3), (100, -3600))))
    await conn.set_type_codec("inner_t", encoder=lambda v: (v["a"], v["b"]),
                              decoder=lambda t: {"a": t[0], "b": t[1]}, format="tuple")
    out.append(await outcome(conn.fetchrow(
        "SELECT $1::inner_t, ARRAY[ROW(1,'z')::inner_t]", {"a": 5, "b": "q"})))
    # binary format on a builtin the driver exchanges in text (money_send: int64 cents)
    await conn.set_type_codec("money", schema="pg_catalog", encoder=lambda v: v,
                              decoder=lambda b: ("money", b), format="binary")
    out.append(await outcome(conn.fetchrow("SELECT '1.5'::money, ARRAY['2'::money], $1::money",
                                           struct.pack("!q", 250))))
    # bad requests
    for kwargs in ({"typename": "nosuch"}, {"typename": "comp"}, {"typename": "posint"},
                   {"typename": "int4range", "schema": "pg_catalog"},
                   {"typename": "int4", "schema": "pg_catalog", "format": "tuple"},
                   {"typename": "numeric", "schema": "pg_catalog", "format": "tuple"}):
        kw: dict[str, Any] = {"encoder": str, "decoder": str, **kwargs}
        out.append((kwargs, await outcome(conn.set_type_codec(**kw))))
    # reset
    await conn.reset_type_codec("mood")
    await conn.reset_type_codec("int8", schema="pg_catalog")
    out.append(await outcome(conn.fetchrow("SELECT 'ok'::mood, ARRAY['sad']::mood[], 3::int8")))
    # an alias of a builtin codec
    await conn.set_builtin_type_codec("mood", codec_name="text")
    out.append(await outcome(conn.fetchrow("SELECT 'ok'::mood, $1::mood", "sad")))
    out.append(await outcome(conn.set_builtin_type_codec("comp", codec_name="text")))
    return out


async def test_custom_codecs_like_asyncpg(dsn: str) -> None:
    assert_same(*await run_both(dsn, custom_codecs))


async def test_text_codecs_apply_to_composite_fields_and_ranges(dsn: str) -> None:
    """asyncpg refuses text-format codecs inside composites and ranges; the driver
    exchanges those composites/ranges in text format."""
    c = await driver.connect(dsn)
    try:
        await c.set_type_codec("mood", encoder=lambda s: s.lower(), decoder=str.upper)
        v = await c.fetchval("SELECT ROW(1,'y','sad',1,NULL,'[1,2)',NULL)::comp")
        assert v["m"] == "SAD" and v["r"] == driver.Range(1, 2)
        v = await c.fetchval("SELECT $1::comp", (1, "y", "OK", 1, None, None, ["a"]))
        assert (v["m"], v["tags"]) == ("OK", ["a"])
        assert await c.fetchval("SELECT $1::moodrange", ("SAD", "HAPPY")) == driver.Range(
            "SAD", "HAPPY", upper_inc=True)
        await c.set_type_codec("int8", schema="pg_catalog", encoder=str,
                               decoder=lambda s: int(s) * 2)
        assert await c.fetchval("SELECT '[1,5)'::int8range") == driver.Range(2, 10)
    finally:
        await c.close()


async def test_raising_decoder_fails_the_query_and_keeps_the_connection(dsn: str) -> None:
    class Boom(Exception):
        pass

    def bad(s: str) -> Any:
        raise Boom(f"cannot decode {s}")

    async def scenario(conn: Any, mod: Any) -> Any:
        await conn.set_type_codec("mood", encoder=str, decoder=bad)
        out = []
        queries = ["SELECT 'ok'::mood FROM generate_series(1, 3)",
                   "SELECT 1, ARRAY['ok', 'sad']::mood[]"]
        if mod is driver:  # asyncpg refuses text codecs inside composites
            queries.append("SELECT ROW(1,'a','ok',1,NULL,NULL,NULL)::comp")
        for q in queries:
            try:
                await conn.fetch(q)
                out.append("no error")
            except Boom as e:
                out.append(("Boom", str(e)))
            out.append(await conn.fetchval("SELECT 41 + 1"))
        async with conn.transaction():
            try:
                await conn.fetchval("SELECT 'sad'::mood")
            except Boom:
                out.append("boom in transaction")
            out.append(await conn.fetchval("SELECT 'still usable'"))
        out.append(conn.is_in_transaction())
        return out

    expected, got = await run_both(dsn, scenario)
    assert got[:4] + got[6:] == expected
    assert got[0] == ("Boom", "cannot decode ok") and got[1] == 42
    assert got[4:6] == [("Boom", "cannot decode ok"), 42]


async def test_codecs_never_leak_to_other_connections(dsn: str) -> None:
    a = await driver.connect(dsn)
    b = await driver.connect(dsn)
    try:
        await a.set_type_codec("int4", schema="pg_catalog", encoder=str,
                               decoder=lambda s: f"int:{s}")
        await a.set_type_codec("mood", encoder=str, decoder=lambda s: s * 2)
        assert await a.fetchval("SELECT 1") == "int:1"
        assert await a.fetchval("SELECT 'ok'::mood") == "okok"
        assert await b.fetchval("SELECT 1") == 1
        assert await b.fetchval("SELECT 'ok'::mood") == "ok"
        c = await driver.connect(dsn)
        try:
            assert await c.fetchval("SELECT 1::int4, 'sad'::mood") == 1
            assert await c.fetchval("SELECT ARRAY['sad']::mood[]") == ["sad"]
        finally:
            await c.close()
        assert driver.codecs.DEFAULT_REGISTRY.get(23).decode_binary is not None  # type: ignore[union-attr]
        await a.reset_type_codec("int4", schema="pg_catalog")
        assert await a.fetchval("SELECT 1") == 1
        assert await a.fetchval("SELECT 'ok'::mood") == "okok"
    finally:
        await a.close()
        await b.close()


async def test_pool_connections_get_their_codecs_from_init(dsn: str) -> None:
    async def init(conn: Any) -> None:
        await conn.set_type_codec("json", schema="pg_catalog", encoder=json.dumps,
                                  decoder=json.loads)

    pool = await driver.create_pool(dsn, min_size=1, max_size=2, init=init)
    try:
        assert await pool.fetchval("SELECT $1::json", {"a": 1}) == {"a": 1}
    finally:
        await pool.close()
    today = datetime.date.today()
    c = await driver.connect(dsn)
    try:
        assert await c.fetchval("SELECT $1::date", today) == today
        assert await c.fetchval("SELECT '{}'::json") == "{}"
    finally:
        await c.close()


async def test_prepared_statement_types_like_asyncpg(dsn: str) -> None:
    async def scenario(conn: Any, mod: Any) -> Any:
        out = []
        for sql in ("'ok'::mood", "ROW(1,'a')::inner_t", "'[1,2)'::floatrange",
                    "ARRAY['ok']::mood[]", "1::posint", "'[1,2)'::int4range",
                    "'{[1,2)}'::int4multirange", "$1::mood", "ARRAY[ROW(1,'a')::inner_t]",
                    "point(1,2)", "'{[1,2)}'::floatmultirange", "ARRAY[1]", "ROW(1)"):
            ps = await conn.prepare(f"SELECT {sql}")
            out.append((sql, [tuple(a.type) for a in ps.get_attributes()],
                        [tuple(p) for p in ps.get_parameters()]))
        return out

    expected, got = await run_both(dsn, scenario)
    assert_same(expected, got)
    assert got[0][1] == [(got[0][1][0][0], "mood", "scalar", "public")]


async def test_altered_composite_raises_outdated_schema_cache_then_recovers(dsn: str) -> None:
    async def scenario(conn: Any, mod: Any) -> Any:
        await conn.execute("DROP TABLE IF EXISTS ct; DROP TYPE IF EXISTS cty; "
                           "CREATE TYPE cty AS (a int, b int); CREATE TABLE ct (id int, v cty); "
                           "INSERT INTO ct VALUES (1, ROW(1, 2))")
        out = [await outcome(conn.fetchval("SELECT v FROM ct"))]
        await conn.execute("ALTER TYPE cty ADD ATTRIBUTE c text")
        try:
            await conn.fetchval("SELECT v FROM ct")
            out.append("no error")
        except mod.exceptions.OutdatedSchemaCacheError as e:
            out.append(("OutdatedSchemaCacheError", str(e)))
        out.append(await outcome(conn.fetchval("SELECT v FROM ct")))  # types reloaded
        out.append(await outcome(conn.fetchval("SELECT $1::cty", (1, 2, "x"))))
        return out

    expected, got = await run_both(dsn, scenario)
    assert_same(expected, got)
    assert got[1][0] == "OutdatedSchemaCacheError"


async def test_hstore_builtin_codec_like_asyncpg(dsn: str) -> None:
    async def scenario(conn: Any, mod: Any) -> Any:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS hstore")
        out = [await outcome(conn.fetchval("SELECT 'a=>1, b=>NULL'::hstore"))]  # default: str
        await conn.set_builtin_type_codec("hstore", codec_name="pg_contrib.hstore")
        out.append(await outcome(conn.fetchrow(
            "SELECT 'a=>1, \"b c\"=>NULL'::hstore, $1::hstore, ARRAY[$1::hstore], $2::hstore[]",
            {"k": "v", "n": None}, [{"x": "1"}, None])))
        out.append(await outcome(conn.fetchval("SELECT $1::hstore", {"k": 1})))
        return out

    expected, got = await run_both(dsn, scenario)
    assert_same(expected, got)
    assert got[1][1][0] == ("hstore", ("dict", {"a": "1", "b c": None}))


async def test_copy_records_with_introspected_types_like_asyncpg(dsn: str) -> None:
    async def scenario(conn: Any, mod: Any) -> Any:
        await conn.execute("DROP TABLE IF EXISTS cp; CREATE TABLE cp (m mood, ms mood[], "
                           "i inner_t, r floatrange, d posint, g point, b varbit)")
        records = [("ok", ["sad", None], (1, "a"), mod.Range(1.0, 2.0), 3, mod.Point(1, 2),
                    mod.BitString("101")),
                   (None, [], None, mod.Range(empty=True), None, None, None)]
        out = [await outcome(conn.copy_records_to_table("cp", records=records))]
        out.append(await outcome(conn.fetch("SELECT * FROM cp")))
        return out

    expected, got = await run_both(dsn, scenario)
    assert_same(expected, got)
    assert got[0] == "COPY 2"


def test_introspection_and_custom_codecs_load_on_first_use(pg: PgCluster, pg_db: str) -> None:
    import subprocess
    import sys

    dsn = pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD, pg_db)
    code = (
        "import asyncio, sys, driver\n"
        "async def main():\n"
        f"    c = await driver.connect({dsn!r})\n"
        "    assert await c.fetchval('SELECT $1::int4range', driver.Range(1, 2)) == driver.Range(1, 2)\n"
        "    before = sorted(m for m in sys.modules if m.startswith('driver.'))\n"
        "    await c.execute(\"CREATE TYPE lazy_e AS ENUM ('x')\")\n"
        "    assert await c.fetchval(\"SELECT 'x'::lazy_e\") == 'x'\n"
        "    after = sorted(m for m in sys.modules if m.startswith('driver.'))\n"
        "    await c.close()\n"
        "    print(before, after)\n"
        "asyncio.run(main())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    before, after = out.split("] [")
    assert "driver.introspection" not in before and "driver.typecodecs" not in before
    assert "driver.introspection" in after
