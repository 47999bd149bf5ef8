# Runs INSIDE Pyodide (see run_pyodide.cjs and test_pyodide.py): the driver
# against a live gateway over the JS WebSocket (and the JS fetch transport
# when ARGS["http_dsn"] is given).  Sets ``result`` (JSON-able) for the runner.
#
# ARGS: {"ws_dsn": ..., "ws_pipelined_dsn": ... | None, "http_dsn": ... | None,
#        "tcp_dsn": "postgresql://...", "table": "<unique table name>"}
import datetime
import decimal
import ipaddress
import socket
import sys
import time
import uuid

import driver
from driver import exceptions as exc

# Emscripten fakes socket.connect() as a WebSocket to ws://host:port/: record
# any attempt (the gateway side checks the same thing from the outside).
socket_connects = []
_orig_connect = socket.socket.connect


def _recording_connect(self, address):
    socket_connects.append(repr(address))
    return _orig_connect(self, address)


socket.socket.connect = _recording_connect
socket.socket.connect_ex = _recording_connect

UTC = datetime.timezone.utc
T = ARGS["table"]

# (family, sql, args, expected python value)
CODEC_CASES = [
    ("int2", "select $1::int2", [-32768], -32768),
    ("int4", "select $1::int4 + 1", [2147483646], 2147483647),
    ("int8", "select $1::int8", [-(2 ** 63)], -(2 ** 63)),
    ("float4", "select $1::float4", [1.5], 1.5),
    ("float8", "select $1::float8 * 2", [1.25e300], 2.5e300),
    ("numeric", "select $1::numeric * 2", [decimal.Decimal("12345678901234567890.123456789")],
     decimal.Decimal("24691357802469135780.246913578")),
    ("numeric_nan", "select 'NaN'::numeric", [], None),  # compared with is_nan below
    ("bool", "select $1::bool", [True], True),
    ("text", "select $1::text || '!'", ["héllo wörld ✓"], "héllo wörld ✓!"),
    ("varchar", "select $1::varchar(5)", ["abcde"], "abcde"),
    ("bytea", "select $1::bytea", [bytes(range(256))], bytes(range(256))),
    ("uuid", "select $1::uuid", [uuid.UUID("12345678-1234-5678-1234-567812345678")],
     uuid.UUID("12345678-1234-5678-1234-567812345678")),
    ("date", "select $1::date + 1", [datetime.date(2024, 2, 28)], datetime.date(2024, 2, 29)),
    ("time", "select $1::time", [datetime.time(13, 14, 15, 123456)], datetime.time(13, 14, 15, 123456)),
    ("timestamp", "select $1::timestamp", [datetime.datetime(2024, 1, 2, 3, 4, 5, 678000)],
     datetime.datetime(2024, 1, 2, 3, 4, 5, 678000)),
    ("timestamptz", "select $1::timestamptz", [datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)],
     datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)),
    ("interval", "select $1::interval", [datetime.timedelta(days=3, seconds=7, microseconds=5)],
     datetime.timedelta(days=3, seconds=7, microseconds=5)),
    ("json", "select $1::json", ['{"a": [1, 2, null]}'], '{"a": [1, 2, null]}'),
    ("jsonb", "select $1::jsonb", ['{"b": {"c": true}}'], '{"b": {"c": true}}'),
    ("inet", "select $1::inet", [ipaddress.ip_address("192.168.0.1")], ipaddress.ip_address("192.168.0.1")),
    ("cidr", "select $1::cidr", [ipaddress.ip_network("10.0.0.0/8")], ipaddress.ip_network("10.0.0.0/8")),
    ("int_array", "select $1::int[]", [[1, None, 3]], [1, None, 3]),
    ("text_array", "select $1::text[]", [["a", "b c", None, "ü"]], ["a", "b c", None, "ü"]),
    ("array_2d", "select '{{1,2},{3,4}}'::int8[]", [], [[1, 2], [3, 4]]),
    ("null", "select $1::int", [None], None),
    ("null_text", "select null::text", [], None),
    # asyncpg's value types
    ("range", "select $1::int4range", [driver.Range(1, 5)], driver.Range(1, 5)),
    ("multirange", "select '{[1,3),[5,8)}'::int4multirange", [],
     [driver.Range(1, 3), driver.Range(5, 8)]),
    ("bits", "select $1::varbit", [driver.BitString("1011")], driver.BitString("1011")),
    ("point", "select $1::point", [driver.Point(1.5, 2)], driver.Point(1.5, 2)),
    ("circle", "select '<(1,2),3>'::circle", [], driver.Circle((1.0, 2.0), 3.0)),
    ("record", "select row(1, 'a'::text)", [], (1, "a")),
]


async def codec_checks(conn):
    out = {}
    for family, sql, args, expected in CODEC_CASES:
        try:
            got = await conn.fetchval(sql, *args)
        except Exception as e:  # report, do not stop
            out[family] = {"ok": False, "got": f"{type(e).__name__}: {e}"}
            continue
        if family == "numeric_nan":
            ok = isinstance(got, decimal.Decimal) and got.is_nan()
        else:
            ok = type(got) is type(expected) and got == expected
        out[family] = {"ok": ok, "got": repr(got)}
    # non-builtin types: introspected (one query), arrays of them, custom codecs
    mood = f"{T}_mood"
    await conn.execute(f"DO $$ BEGIN CREATE TYPE {mood} AS ENUM ('ok', 'sad'); "
                       "EXCEPTION WHEN duplicate_object THEN NULL; END $$")
    got = await conn.fetchval(f"select $1::{mood}[], 'sad'::{mood}", ["ok", None])
    out["enum_array"] = {"ok": got == ["ok", None], "got": repr(got)}
    await conn.set_type_codec(mood, encoder=str.lower, decoder=str.upper)
    got = await conn.fetchval(f"select $1::{mood}[]", ["OK"])
    out["custom_codec"] = {"ok": got == ["OK"], "got": repr(got)}
    await conn.reset_type_codec(mood)
    # several columns and rows at once, records by name
    rows = await conn.fetch("select g as n, g::text as s from generate_series(1, 3) g")
    out["records"] = {"ok": [(r["n"], r["s"]) for r in rows] == [(1, "1"), (2, "2"), (3, "3")],
                      "got": repr([tuple(r) for r in rows])}
    return out


async def transactions(conn, tag):
    out = {}
    await conn.execute(f"insert into {T} (tag, n) values ($1, 0)", tag + "-base")
    async with conn.transaction():
        await conn.execute(f"insert into {T} (tag, n) values ($1, 1)", tag + "-commit")
        out["in_tx_during"] = conn.is_in_transaction()
    out["committed"] = await conn.fetchval(f"select count(*) from {T} where tag = $1", tag + "-commit")
    try:
        async with conn.transaction():
            await conn.execute(f"insert into {T} (tag, n) values ($1, 2)", tag + "-rollback")
            out["seen_inside"] = await conn.fetchval(
                f"select count(*) from {T} where tag = $1", tag + "-rollback")
            raise KeyError("roll me back")
    except KeyError:
        pass
    out["rolled_back"] = await conn.fetchval(f"select count(*) from {T} where tag = $1", tag + "-rollback")
    out["in_tx_after"] = conn.is_in_transaction()
    return out


async def error_checks(conn):
    out = {}
    try:
        await conn.fetch("select * from no_such_table_pyodide")
    except exc.PostgresError as e:
        out["undefined_table"] = {"class": type(e).__name__, "sqlstate": e.sqlstate}
    try:
        await conn.fetchval("select 1 / $1::int", 0)
    except exc.PostgresError as e:
        out["division"] = {"class": type(e).__name__, "sqlstate": e.sqlstate}
    try:
        await conn.execute(f"insert into {T} (id, tag, n) values (1, 'dup', 0), (1, 'dup', 0)")
    except exc.PostgresError as e:
        out["unique"] = {"class": type(e).__name__, "sqlstate": e.sqlstate,
                         "constraint": getattr(e, "constraint_name", None)}
    # the connection is still usable after errors
    out["usable_after"] = await conn.fetchval("select 41 + 1")
    return out


async def ws_suite(dsn, **kw):
    out = {}
    t0 = time.perf_counter()
    conn = await driver.connect(dsn, **kw)
    out["connect_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    try:
        out["transport"] = type(conn.transport).__name__
        out["server_version_major"] = conn.get_server_version().major
        t0 = time.perf_counter()
        out["first_query"] = await conn.fetchval("select current_user")
        out["first_query_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        # what the first connect + query loaded (the driver's modules; urllib.parse)
        out["modules"] = sorted(m for m in sys.modules
                                if m.startswith("driver.") or m == "urllib.parse")
        t0 = time.perf_counter()
        for _ in range(20):
            await conn.fetchval("select 1")
        out["select1_ms"] = round((time.perf_counter() - t0) * 1000 / 20, 2)
        out["codecs"] = await codec_checks(conn)
        out["tx"] = await transactions(conn, "ws")
        out["errors"] = await error_checks(conn)
        # a big result over many WebSocket messages
        out["big_len"] = len(await conn.fetchval("select repeat('x', 1000000)"))
        out["rows_5000"] = sum(r[0] for r in await conn.fetch("select g from generate_series(1, 5000) g"))
    finally:
        await conn.close()
    return out


async def http_suite(dsn):
    out = {}
    t0 = time.perf_counter()
    conn = await driver.connect(dsn, statement_cache_size=0)
    out["connect_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    try:
        out["transport"] = type(conn.transport).__name__
        out["client"] = type(conn.transport.client).__name__
        t0 = time.perf_counter()
        out["first_query"] = await conn.fetchval("select current_database()")
        out["first_query_ms"] = round((time.perf_counter() - t0) * 1000, 1)
        t0 = time.perf_counter()
        for _ in range(20):
            await conn.fetchval("select 1")
        out["select1_ms"] = round((time.perf_counter() - t0) * 1000 / 20, 2)
        out["codecs"] = await codec_checks(conn)
        out["tx"] = await transactions(conn, "http")
        out["errors"] = await error_checks(conn)
        # interactive transaction: several requests on one server connection
        # (session tokens), its own backend pid throughout, and rollback
        async with conn.transaction():
            pid1 = await conn.fetchval("select pg_backend_pid()")
            await conn.execute(f"insert into {T} (tag, n) values ('http-inter', 1)")
            n_inside = await conn.fetchval(f"select count(*) from {T} where tag = 'http-inter'")
            pid2 = await conn.fetchval("select pg_backend_pid()")
        out["interactive"] = {"same_backend": pid1 == pid2, "seen_inside": n_inside,
                              "after": await conn.fetchval(f"select count(*) from {T} where tag = 'http-inter'")}
        try:
            await conn.execute("listen some_channel")
            out["listen"] = None
        except Exception as e:
            out["listen"] = {"class": type(e).__name__, "sqlstate": getattr(e, "sqlstate", None)}
        out["requests"] = conn.transport.client.requests
    finally:
        await conn.close()
    return out


async def main():
    result = {"platform": sys.platform}
    if ARGS.get("control_port"):
        # Negative control for the "no raw TCP" check: a real socket.connect
        # (not recorded above) to a separate gateway, which must see it as
        # Emscripten's WebSocket bridge (path "/", subprotocol "binary").
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            _orig_connect(s, ("127.0.0.1", ARGS["control_port"]))
        except BlockingIOError:
            pass
        result["control_socket"] = s  # kept open until the end of the run
    t0 = time.perf_counter()
    result["ws"] = await ws_suite(ARGS["ws_dsn"], statement_cache_size=0)
    result["ws_ms"] = round((time.perf_counter() - t0) * 1000)
    if ARGS.get("ws_pipelined_dsn"):
        conn = await driver.connect(ARGS["ws_pipelined_dsn"], statement_cache_size=0,
                                    pipeline_connect="password")
        try:
            result["ws_pipelined"] = {"one": await conn.fetchval("select 1"),
                                      "messages_before_first_reply": None}
        finally:
            await conn.close()
    # bad password: the right exception class, raised over WebSocket
    bad = ARGS["ws_dsn"].replace(ARGS["password"], "wrong-password")
    try:
        c = await driver.connect(bad, statement_cache_size=0)
        await c.close()
        result["bad_password"] = None
    except Exception as e:
        result["bad_password"] = {"class": type(e).__name__, "sqlstate": getattr(e, "sqlstate", None)}
    # raw TCP: a clear error, no socket opened
    try:
        await driver.connect(ARGS["tcp_dsn"])
        result["tcp"] = None
    except Exception as e:
        result["tcp"] = {"class": type(e).__name__, "message": str(e)}
    if ARGS.get("http_dsn"):
        t0 = time.perf_counter()
        result["http"] = await http_suite(ARGS["http_dsn"])
        result["http_ms"] = round((time.perf_counter() - t0) * 1000)
    result["socket_connects"] = socket_connects
    if "control_socket" in result:
        result["control_socket"] = "opened"
    return result


result = await main()  # noqa: F704 (top-level await: runPythonAsync)
