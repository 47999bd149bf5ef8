"""Fault handling: bad input, vanishing clients, dying/unreachable servers, timeouts."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD, CAROL_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, backends, errors, eventually, pool_stats, rows
from tests.pgcluster import free_port


async def _connect(app, user="alice", password=ALICE_PASSWORD, **kw):
    return await asyncpg.connect(app.pg_dsn(user, password, "app"), statement_cache_size=0, **kw)


async def _raw_login(app, user="alice", password=ALICE_PASSWORD) -> RawClient:
    c = await RawClient.connect(app.pg_port)
    msgs = await c.login(user, password, "app")
    assert not errors(msgs), errors(msgs)
    return c


# ----------------------------------------------------------------- bad input
async def test_unknown_database_no_upstream_attempt(gateway_app):
    app = await gateway_app()
    with pytest.raises(asyncpg.InvalidCatalogNameError) as ei:
        await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "nope"))
    assert ei.value.sqlstate == "3D000"
    st = pool_stats(app)
    assert st["sv_login"] + st["sv_idle"] + st["sv_active"] == 0
    assert app.gateway.pools["app"].last_login_error is None


async def test_max_client_conn(gateway_app):
    app = await gateway_app(max_client_conn=2)
    a = await _connect(app)
    b = await _connect(app)
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError) as ei:
            await _connect(app)
        assert ei.value.sqlstate == "53300"
        await b.close()
        c = await _connect(app)
        assert await c.fetchval("SELECT 1") == 1
        await c.close()
        assert await a.fetchval("SELECT 1") == 1
    finally:
        await a.close()


@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: example\r\n\r\n",
    b"\x7f\xff\xff\xff\x00\x03\x00\x00",                 # absurd startup length
    b"\x00\x00\x00\x08\x00\x05\x00\x00",                 # protocol 5.0
])
async def test_garbage_before_login(gateway_app, garbage):
    app = await gateway_app()
    good = await _connect(app)
    try:
        c = await RawClient.connect(app.pg_port)
        await c.send(garbage)
        msgs = await c.read_to_eof()
        errs = errors(msgs)
        assert len(errs) == 1 and errs[0].sqlstate in ("08P01", "0A000")
        assert errs[0].severity == "FATAL"
        await c.close()
        assert await good.fetchval("SELECT 1") == 1
    finally:
        await good.close()


async def test_protocol_3_1_gets_negotiate(gateway_app):
    app = await gateway_app(auth_type="password")
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"user": "alice", "database": "app", "_pq_.compression": "on"},
                                       version=(3 << 16) | 1))
        msg = await c.recv_message()
        assert isinstance(msg, m.NegotiateProtocolVersion)
        assert msg.newest_minor == 0 and msg.unrecognized == ("_pq_.compression",)
        msg = await c.recv_message()
        assert isinstance(msg, m.AuthenticationRequest) and msg.code == m.AUTH_CLEARTEXT_PASSWORD
    finally:
        await c.close()


@pytest.mark.parametrize("frame", [b"Q\x7f\xff\xff\xff", b"Q\x00\x00\x00\x02", b"Q\x00\x00\x10\x00" + b"x" * 4096])
async def test_absurd_length_after_login(gateway_app, frame):
    app = await gateway_app(max_message_size=1024)
    good = await _connect(app)
    c = await _raw_login(app)
    try:
        await c.send(frame)
        msgs = await c.read_to_eof()
        assert [e.sqlstate for e in errors(msgs)] == ["08P01"]
        assert await good.fetchval("SELECT 2") == 2
    finally:
        await c.close()
        await good.close()


# ------------------------------------------------------------ vanishing clients
async def test_client_dropped_mid_transaction(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    setup = await _connect(app)
    await setup.execute("CREATE TABLE t_drop (x int)")
    await setup.close()
    c = await _raw_login(app)
    msgs = await c.query("BEGIN; INSERT INTO t_drop VALUES (1); SELECT pg_backend_pid()")
    assert msgs[-1].status == "T"
    pid = int(rows(msgs)[0][0])
    c.abort()
    adm = await admin(pg, pg_db)
    try:
        await eventually(lambda: pool_stats(app)["sv_idle"] == 1, what="server back in the pool")
        assert await backends(adm, pg_db, "idle in transaction") == []
        nxt = await _connect(app)
        try:
            assert await nxt.fetchval("SELECT pg_backend_pid()") == pid  # same server, reused
            assert await nxt.fetchval("SELECT count(*) FROM t_drop") == 0  # rolled back
        finally:
            await nxt.close()
    finally:
        await adm.close()


async def test_client_dropped_mid_result(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    c = await _raw_login(app)
    await c.send(m.query("SELECT pg_sleep(60)"))
    adm = await admin(pg, pg_db)
    try:
        async def sleeping() -> bool:
            return any("pg_sleep" in (r["query"] or "") and r["state"] == "active"
                       for r in await backends(adm, pg_db))
        await eventually(sleeping, what="query to start")
        c.abort()
        # The gateway cancels the running query and closes that server.
        await eventually(lambda: _not(sleeping), what="pg_sleep to be cancelled")
        nxt = await _connect(app)
        try:
            assert await asyncio.wait_for(nxt.fetchval("SELECT 5"), 10) == 5
        finally:
            await nxt.close()
    finally:
        await adm.close()


async def _not(f):
    return not await f()


async def test_idle_transaction_timeout(gateway_app, pg, pg_db):
    app = await gateway_app(idle_transaction_timeout=0.3, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    c = await _raw_login(app)
    msgs = await c.query("BEGIN")
    assert msgs[-1].status == "T"
    t0 = time.monotonic()
    msgs = await c.read_to_eof(timeout=10)
    assert time.monotonic() - t0 >= 0.25
    assert [(e.sqlstate, e.severity) for e in errors(msgs)] == [("25P03", "FATAL")]
    adm = await admin(pg, pg_db)
    try:
        await eventually(lambda: pool_stats(app)["sv_idle"] == 1, what="server rolled back and pooled")
        assert await backends(adm, pg_db, "idle in transaction") == []
    finally:
        await adm.close()


async def test_query_wait_timeout(gateway_app, pg_db):
    app = await gateway_app(query_wait_timeout=0.3, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    try:
        tr = a.transaction()
        await tr.start()
        await a.execute("SELECT 1")
        b = await _raw_login(app, "carol", CAROL_PASSWORD)
        t0 = time.monotonic()
        await b.send(m.query("SELECT 1"))
        msgs = await b.read_to_eof(timeout=10)
        assert 0.25 <= time.monotonic() - t0 < 5
        assert [(e.sqlstate, e.severity) for e in errors(msgs)] == [("57014", "FATAL")]
        assert "query_wait_timeout" in errors(msgs)[0].message
        await tr.commit()
        assert await a.fetchval("SELECT 3") == 3
    finally:
        await a.close()


async def test_query_timeout_cancels(gateway_app, pg_db):
    app = await gateway_app(query_timeout=0.3, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    try:
        t0 = time.monotonic()
        with pytest.raises(asyncpg.QueryCanceledError):
            await a.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - t0 < 10
        assert await a.fetchval("SELECT 4") == 4
    finally:
        await a.close()


# ---------------------------------------------------------------- dying servers
async def test_server_terminated_while_linked(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _raw_login(app)
    msgs = await a.query("BEGIN; SELECT pg_backend_pid()")
    pid = int(rows(msgs)[0][0])
    adm = await admin(pg, pg_db)
    try:
        assert await adm.fetchval("SELECT pg_terminate_backend($1)", pid) is True
        msgs = await a.read_to_eof(timeout=10)
        codes = [e.sqlstate for e in errors(msgs)]
        assert codes == ["57P01"]  # Postgres' own FATAL, and no second one from the gateway
        b = await _connect(app)
        try:
            assert await b.fetchval("SELECT pg_backend_pid()") != pid
        finally:
            await b.close()
    finally:
        await adm.close()


async def test_upstream_refuses_connections(gateway_app):
    port = free_port()
    app = await gateway_app(server_login_retry=30.0, databases={"app": {"port": port}})
    t0 = time.monotonic()
    with pytest.raises(asyncpg.PostgresError) as ei:
        await _connect(app)
    assert ei.value.sqlstate == "08006"
    assert time.monotonic() - t0 < 5
    assert not app.gateway.is_ready()


async def test_upstream_unreachable_within_server_connect_timeout(gateway_app):
    # A listener that accepts and never answers: login can only time out.
    held: list[asyncio.StreamWriter] = []

    async def blackhole(r, w):
        held.append(w)

    srv = await asyncio.start_server(blackhole, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        app = await gateway_app(server_connect_timeout=0.5, server_login_retry=30.0,
                                databases={"app": {"port": port, "pool_size": 2}})
        t0 = time.monotonic()
        results = await asyncio.gather(*(_connect(app) for _ in range(3)), return_exceptions=True)
        elapsed = time.monotonic() - t0
        assert all(isinstance(r, asyncpg.PostgresError) and r.sqlstate == "08006" for r in results), results
        assert 0.4 <= elapsed < 5
        # during server_login_retry, new clients fail fast
        t0 = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as ei:
            await _connect(app)
        assert ei.value.sqlstate == "08006"
        assert time.monotonic() - t0 < 0.4
    finally:
        for w in held:
            w.close()
        srv.close()


async def test_postgres_killed_and_restarted_under_load(gateway_app, pg_factory):
    c = await asyncio.to_thread(pg_factory)
    app = await gateway_app(server_login_retry=0.2, server_connect_timeout=3.0,
                            databases={"app": {"host": c.host, "port": c.port, "pool_size": 3}})
    ok = 0
    stop = asyncio.Event()
    failures: list[BaseException] = []

    async def worker() -> None:
        nonlocal ok
        conn = await _connect(app)
        try:
            while not stop.is_set():
                async with conn.transaction():
                    await conn.fetchval("SELECT pg_sleep(0.002)")
                ok += 1
        except Exception as exc:  # any client-side error will do: the point is "no hang"
            failures.append(exc)
        finally:
            conn.terminate()

    tasks = [asyncio.ensure_future(worker()) for _ in range(8)]
    await eventually(lambda: ok >= 50, what="load to run")
    await asyncio.to_thread(c.kill)
    # Every in-flight client errors out (none hangs).
    done, pending = await asyncio.wait(tasks, timeout=15)
    stop.set()
    assert not pending, "clients hung after the server died"
    assert len(failures) == 8
    await asyncio.to_thread(c.start)

    async def works() -> bool:
        try:
            conn = await _connect(app)
        except (asyncpg.PostgresError, OSError):
            return False
        try:
            return await conn.fetchval("SELECT 1") == 1
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
            return False  # still inside server_login_retry
        finally:
            conn.terminate()

    await eventually(works, timeout=20, what="new clients to succeed after restart")
    assert app.gateway.is_ready()
