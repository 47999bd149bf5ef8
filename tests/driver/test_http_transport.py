"""The driver over http:// (driver/transport/http.py + driver/protocol/http_envelope.py).

The sans-I/O client envelope is checked byte for byte; everything else runs
the driver against a real gateway (``gateway_app``) and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import secrets
from typing import Any, AsyncIterator

import asyncpg
import pytest

import driver
from driver import exceptions as exc
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from driver.protocol.http_envelope import HttpSessionClient
from driver.transport.http import HttpTransport, http_target
from driver.transport.base import Endpoint
from driver.dsn import parse_dsn
from gateway.http_exec import get_executor
from gateway.tokens import hash_token
from tests.driver.test_differential import SCENARIOS
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD, gateway_app  # noqa: F401 (fixture)
from tests.pgcluster import PgCluster
from tests.gateway.pool_helpers import eventually, pool_stats

TOKEN = "wp_driver_http_token"


def http_dsn(app: Any, user: str = "alice", password: str | None = ALICE_PASSWORD, db: str = "app",
             query: str = "") -> str:
    auth = user + (f":{password}" if password is not None else "")
    return f"http://{auth}@127.0.0.1:{app.http_port}/{db}{query}"


def transport(conn: Any) -> HttpTransport:
    t = conn.transport
    assert isinstance(t, HttpTransport)
    return t


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    await eventually(cond, timeout=timeout)


@pytest.fixture
async def table(pg: PgCluster) -> AsyncIterator[str]:
    name = "http_d_" + secrets.token_hex(4)
    c = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE))
    await c.execute(f"create table {name} (x int); grant all on {name} to scram_user")
    try:
        yield name
    finally:
        await c.execute(f"drop table {name}")
        await c.close()


async def count_rows(pg: PgCluster, table: str) -> int:
    c = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE))
    try:
        return int(await c.fetchval(f"select count(*) from {table}"))
    finally:
        await c.close()


# --------------------------------------------------------------------------- sans-I/O envelope

def test_envelope_hello_batches_and_boundaries() -> None:
    c = HttpSessionClient(user="alice", password="pw", database="app")
    c.send(m.startup_message({"user": "alice", "database": "app", "application_name": "x"}))
    hello = c.next_request()
    assert hello is not None and hello.hello and hello.body == b""
    h = dict(hello.headers)
    assert h["Wirepool-Session"] == "new" and h["Wirepool-Database"] == "app"
    assert h["Authorization"].startswith("Basic ") and h["Wirepool-Params"] == "application_name=x"
    assert c.next_request() is None  # strictly one request at a time
    # the driver pipelines two requests meanwhile, plus half of a third one
    q1 = m.query("select 1")
    ext = m.parse("", "select $1") + m.bind("", "", [], [b"1"], []) + m.execute() + m.sync()
    c.send(q1 + ext + m.parse("", "select 2"))
    reply = m.authentication_ok() + m.parameter_status("server_version", "15") + m.backend_key_data(1, 2) + \
        m.ready_for_query("I")
    c.receive_response(200, [("wirepool-session", "t1"), ("wirepool-status", "I")], reply)
    assert c.data_received() == reply
    req = c.next_request()
    assert req is not None and req.body == q1 + ext and req.expected == 2
    assert dict(req.headers)["Wirepool-Session"] == "t1" and "Authorization" not in dict(req.headers)
    c.receive_response(200, [("wirepool-session", "t2"), ("wirepool-status", "I")],
                       m.ready_for_query("I") * 2)
    assert c.next_request() is None  # the Parse waits for its Sync
    c.send(m.sync())
    req = c.next_request()
    assert req is not None and req.body == m.parse("", "select 2") + m.sync()
    assert c.requests == 3


def test_envelope_deferred_begin_listen_and_errors() -> None:
    c = HttpSessionClient(user="u", password="p", database="d")
    c.send(m.startup_message({"user": "u", "database": "d"}) + m.password_message("p"))
    hello = c.next_request()
    assert hello is not None
    c.receive_response(200, [("wirepool-session", "t1")], m.authentication_ok() + m.ready_for_query("I"))
    # a pipelined password is acknowledged with a synthesized cleartext request
    assert c.data_received() == m.AUTHENTICATION_CLEARTEXT_PASSWORD + m.authentication_ok() + m.ready_for_query("I")
    c.send(m.query("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY;"))
    assert c.next_request() is None  # answered locally
    assert c.data_received() == m.command_complete("BEGIN") + m.ready_for_query("T")
    c.send(m.query("LISTEN chan"))
    assert c.next_request() is None
    out = c.data_received()
    r = MessageReader()
    r.feed(out)
    (et, eb), (zt, zb) = r.read()
    assert chr(et) == "E" and m.decode_fields(eb)["C"] == "0A000" and zb == b"T"
    c.send(m.query("insert into t values (1)"))
    req = c.next_request()
    assert req is not None and req.body == m.query("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY;") + \
        m.query("insert into t values (1)")
    assert req.expected == 2
    # the BEGIN's own reply is stripped from the response
    c.receive_response(200, [("wirepool-session", "t2"), ("wirepool-status", "T")],
                       m.command_complete("BEGIN") + m.ready_for_query("T")
                       + m.command_complete("INSERT 0 1") + m.ready_for_query("T"))
    assert c.data_received() == m.command_complete("INSERT 0 1") + m.ready_for_query("T")
    # a refused batch (413 from the listener, plain text): each request gets an error, the session lives
    c.send(m.query("select 1") + m.query("select 2"))
    req = c.next_request()
    assert req is not None
    c.receive_response(413, [("content-type", "text/plain")], b"request body too large\n")
    r = MessageReader()
    r.feed(c.data_received())
    got = r.read()
    assert [chr(t) for t, _ in got] == ["E", "Z", "E", "Z"]
    assert m.decode_fields(got[0][1])["C"] == "54000" and not c.eof
    # a lost session (410): FATAL and end of stream
    c.send(m.query("select 3"))
    req = c.next_request()
    assert req is not None and dict(req.headers)["Wirepool-Session"] == "t2"
    c.receive_response(410, [("wirepool-error", "08003")], m.error("08003", "HTTP session is gone: expired",
                                                                   severity="FATAL"))
    r = MessageReader()
    r.feed(c.data_received())
    (t, b), = r.read()
    assert m.decode_fields(b)["S"] == "FATAL" and c.eof


def test_http_target_from_dsn() -> None:
    def target(dsn: str) -> tuple[str, str]:
        p = parse_dsn(dsn)
        ep = Endpoint(scheme=p.scheme, host=p.host, port=p.port,
                      options={"path": p.path, "query": dict(p.query), "params": p})
        path, db, _q = http_target(ep)
        return path, db

    assert target("http://alice:pw@h:8432/app") == ("/pg", "app")
    assert target("http://alice:pw@h:8432/?dbname=app") == ("/pg", "app")
    assert target("http://alice:pw@h:8432/app?endpoint=/custom") == ("/custom", "app")
    assert target("http://alice:pw@h:8432") == ("/pg", "alice")
    assert target("https://alice@h/other?dbname=x") == ("/other", "x")
    assert target("http://alice@h/pg?dbname=x") == ("/pg", "x")
    assert target("http://alice@h/gw/pg?dbname=x") == ("/gw/pg", "x")


# --------------------------------------------------------------------------- against a gateway

async def test_connect_query_round_trips_and_keepalive(gateway_app: Any) -> None:  # noqa: F811
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    conn = await driver.connect(http_dsn(app), statement_cache_size=0)
    try:
        t = transport(conn)
        assert t.requests == 1  # the hello
        assert conn.get_server_version().major >= 10 and conn.get_settings().client_encoding == "UTF8"
        assert await conn.execute("select 1; select 2") == "SELECT 1"
        assert t.requests == 2  # one-shot query: one round trip
        # With arguments the driver first describes the statement (Parse/Describe/Sync),
        # then binds it: two round trips, as over TCP (the cache avoids the first one).
        assert await conn.fetchval("select $1::int + 1", 41) == 42
        assert t.requests == 4
        await conn.executemany("select $1::int", [(i,) for i in range(50)])
        assert t.requests == 6  # describe + a pipeline of 50 executions in ONE round trip
        for _ in range(5):
            await conn.execute("select 1")
        assert t.requests == 11 and t.client.connections_opened == 1  # type: ignore[attr-defined]
        # big parameter (sent after Expect: 100-continue)
        big = "y" * (3 << 20)
        assert await conn.fetchval("select length($1::text)", big) == len(big)
    finally:
        await conn.close()
    await wait_for(lambda: pool_stats(app)["cl_active"] == 0 and pool_stats(app)["sv_active"] == 0)


async def test_interactive_transaction_k_plus_one(gateway_app: Any, pg: PgCluster, table: str) -> None:  # noqa: F811
    app = await gateway_app(databases={"app": {"pool_size": 3}})
    conn = await driver.connect(http_dsn(app, "bob", BOB_PASSWORD), statement_cache_size=0)
    try:
        t = transport(conn)
        k = 4
        before = t.requests
        async with conn.transaction():
            for i in range(k):
                await conn.execute(f"insert into {table} values ({i})")
            assert conn.is_in_transaction()
        assert t.requests - before == k + 1  # k statements + COMMIT (BEGIN travels with the first)
        assert await count_rows(pg, table) == k
        # rollback: nothing committed, the server released
        before = t.requests
        with pytest.raises(exc.DivisionByZeroError):
            async with conn.transaction():
                await conn.execute(f"insert into {table} values (100)")
                await conn.execute("select 1/0")
        assert t.requests - before == 3
        assert await count_rows(pg, table) == k
        # savepoints and a cursor inside a transaction
        async with conn.transaction():
            async with conn.transaction():
                await conn.execute(f"insert into {table} values (7)")
            cur = await conn.cursor("select g from generate_series(1, 10) g")
            assert [r[0] for r in await cur.fetch(3)] == [1, 2, 3]
            assert [r[0] async for r in conn.cursor("select generate_series(1, 5)", prefetch=2)] == [1, 2, 3, 4, 5]
            st = await conn.prepare("select $1::int * 2")
            assert await st.fetchval(21) == 42
        assert await count_rows(pg, table) == k + 1
        assert not conn.is_in_transaction()
    finally:
        await conn.close()
    await wait_for(lambda: pool_stats(app)["sv_active"] == 0)


async def test_timeout_cancels_and_connection_survives(gateway_app: Any) -> None:  # noqa: F811
    app = await gateway_app()
    conn = await driver.connect(http_dsn(app), statement_cache_size=0)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("select pg_sleep(30)", timeout=0.5)
        assert loop.time() - t0 < 10
        assert await conn.fetchval("select 7") == 7
        # command timeout inside a transaction: the transaction is aborted, not lost
        async with conn.transaction():
            with pytest.raises(asyncio.TimeoutError):
                await conn.execute("select pg_sleep(30)", timeout=0.3)
            with pytest.raises(exc.InFailedSQLTransactionError):
                await conn.execute("select 1")
    finally:
        await conn.close()


async def test_listen_copy_unsupported(gateway_app: Any, table: str) -> None:  # noqa: F811
    app = await gateway_app()
    conn = await driver.connect(http_dsn(app), statement_cache_size=0)
    try:
        # a LISTEN statement cannot work over POST /pg (add_listener uses GET /listen instead)
        with pytest.raises(exc.FeatureNotSupportedError, match="LISTEN is not supported over the HTTP transport"):
            await conn.execute("LISTEN chan")
        with pytest.raises(exc.QueryCanceledError, match="COPY FROM STDIN is not supported over HTTP"):
            await conn.execute(f"copy {table} from stdin")
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


async def test_session_expiry_closes_connection(gateway_app: Any, pg: PgCluster, table: str) -> None:  # noqa: F811
    app = await gateway_app(http_session_timeout=0.3)
    conn = await driver.connect(http_dsn(app), statement_cache_size=0)
    ex = get_executor(app.gateway)
    try:
        tr = conn.transaction()
        await tr.start()
        await conn.execute(f"insert into {table} values (1)")
        await wait_for(lambda: ex.sessions_expired == 1, timeout=15)
        with pytest.raises(exc.ConnectionDoesNotExistError, match="expired"):
            await conn.execute("select 1")
        assert conn.is_closed()
        assert await count_rows(pg, table) == 0
        await wait_for(lambda: pool_stats(app)["sv_active"] == 0)
    finally:
        conn.terminate()


async def test_auth_errors_and_token(gateway_app: Any) -> None:  # noqa: F811
    users = {"alice": {"password": ALICE_PASSWORD, "tokens": [hash_token(TOKEN)]},
             "bob": {"password": BOB_PASSWORD}}
    app = await gateway_app(users=users)
    with pytest.raises(exc.InvalidPasswordError):
        await driver.connect(http_dsn(app, password="wrong"), statement_cache_size=0)
    with pytest.raises(exc.InvalidPasswordError):
        await driver.connect(http_dsn(app, user="nobody"), statement_cache_size=0)
    with pytest.raises(exc.InvalidCatalogNameError):
        await driver.connect(http_dsn(app, db="nosuchdb"), statement_cache_size=0)
    conn = await driver.connect(f"http://127.0.0.1:{app.http_port}/app?token={TOKEN}", user="alice",
                                statement_cache_size=0)
    try:
        assert await conn.fetchval("select current_user") == "scram_user"
    finally:
        await conn.close()
    with pytest.raises(exc.InvalidPasswordError):
        await driver.connect(f"http://127.0.0.1:{app.http_port}/app?token=nope", user="alice",
                             statement_cache_size=0)


async def test_idle_keepalive_closed_by_server_is_retried(gateway_app: Any) -> None:  # noqa: F811
    app = await gateway_app()
    app.http.keepalive_timeout = 0.2
    conn = await driver.connect(http_dsn(app), statement_cache_size=0)
    try:
        client = transport(conn).client
        assert await conn.fetchval("select 1") == 1
        await wait_for(lambda: len(app.http.connections) == 0)  # the gateway closed the idle connection
        assert await conn.fetchval("select 2") == 2
        assert client.connections_opened == 2  # type: ignore[attr-defined]
    finally:
        await conn.close()


# --------------------------------------------------------------------------- same results as asyncpg

@pytest.mark.parametrize("name", sorted(set(SCENARIOS) - {"session_state"}))
async def test_differential_over_http(name: str, gateway_app: Any, pg: PgCluster, pg_db: str) -> None:  # noqa: F811
    """The driver over http:// (session pooling: one server per connection, so
    temp tables and named statements live as on a direct connection) returns
    exactly what asyncpg returns on a direct connection."""
    app = await gateway_app(databases={"diff": {"dbname": pg_db, "pool_mode": "session", "pool_size": 2}})
    fn = SCENARIOS[name]
    ref = await asyncpg.connect(pg.dsn(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD, pg_db))
    try:
        expected = await fn(ref)
    finally:
        await ref.close()
    conn = await driver.connect(http_dsn(app, db="diff"))
    try:
        got = await fn(conn)
    finally:
        await conn.close()
    if got != expected and isinstance(got, list) and isinstance(expected, list):
        diffs = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        assert not diffs, "\n".join(f"#{i}\n http:    {g!r}\n asyncpg: {e!r}" for i, g, e in diffs)
    assert got == expected


async def test_lazy_connect_login_and_first_query_in_one_request(gateway_app: Any) -> None:  # noqa: F811
    app = await gateway_app()  # scram-sha-256: over HTTP the password travels in the request anyway
    conn = await driver.connect(http_dsn(app), statement_cache_size=0, pipeline_connect="password",
                                lazy_connect=True, describe_first=False)
    try:
        t = transport(conn)
        assert t.requests == 0
        assert await conn.fetchval("select $1::int * 2", 21) == 42
        assert t.requests == 1  # hello + the query
        assert conn.get_server_version().major >= 10 and conn.get_server_pid() != 0
        assert await conn.fetchval("select $1::text", "x") == "x"
        assert t.requests == 2
    finally:
        await conn.close()
    with pytest.raises(exc.InvalidPasswordError):
        bad = await driver.connect(http_dsn(app, password="nope"), statement_cache_size=0,
                                   pipeline_connect="password", lazy_connect=True)
        await bad.fetchval("select 1")


async def test_statement_cache_and_prepare_across_pooled_servers(gateway_app: Any) -> None:  # noqa: F811
    """Transaction pooling, default statement cache: the driver's named statements
    live in its (kept) gateway session, whatever server runs each request."""
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    conn = await driver.connect(http_dsn(app))
    other = await driver.connect(http_dsn(app, "bob", BOB_PASSWORD))
    try:
        t = transport(conn)
        st = await conn.prepare("select $1::int + 1")
        for i in range(5):
            async with other.transaction():  # keeps one server busy meanwhile
                assert await other.fetchval("select $1::int", i) == i
                assert await st.fetchval(i) == i + 1
            assert await conn.fetchval("select $1::text || 'y'", "x") == "xy"
        before = t.requests
        assert await conn.fetchval("select $1::text || 'y'", "z") == "zy"
        assert t.requests - before == 1  # cached statement: one round trip
    finally:
        await conn.close()
        await other.close()
