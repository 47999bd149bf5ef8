"""Reproductions of review findings (gateway).  Each xfail(strict=True) test
documents a bug in a file under active work by another engineer; remove the
marker when fixed."""

from __future__ import annotations

import asyncio

import asyncpg

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, backends, errors, eventually, rows


async def _raw_login(app) -> RawClient:
    c = await RawClient.connect(app.pg_port)
    msgs = await c.login("alice", ALICE_PASSWORD, "app")
    assert not errors(msgs), errors(msgs)
    return c


async def test_query_after_extended_error_releases_server(gateway_app, pg_db):
    """Parse fails, then a simple Query arrives before Sync: Postgres discards
    the Query (skip-till-Sync) so only ONE ReadyForQuery comes back, yet the
    session counted two outstanding replies -> the server stays linked to this
    idle client forever and a second client with pool_size=1 starves."""
    app = await gateway_app(query_wait_timeout=3.0, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _raw_login(app)
    try:
        await a.send(m.parse("", "SELEC broken", []) + m.query("SELECT 1") + m.sync())
        msgs = await a.until(m.ReadyForQuery)
        assert [e.sqlstate for e in errors(msgs)] == ["42601"]
        assert msgs[-1].status == "I"
        # a is idle outside any transaction: another client must get the server.
        b = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
        try:
            assert await asyncio.wait_for(b.fetchval("SELECT 42"), 10) == 42
        finally:
            await b.close()
    finally:
        await a.close()


async def _http(port: int, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None
                ) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    h = {"host": "127.0.0.1", "content-length": str(len(body)), "connection": "close", **(headers or {})}
    w.write(f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in h.items())
            + b"\r\n" + body)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


async def test_idle_server_killed_is_not_reused(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _raw_login(app)
    pid = int(rows(await a.query("SELECT pg_backend_pid()"))[0][0])
    adm = await admin(pg, pg_db)
    try:
        assert await adm.fetchval("SELECT pg_terminate_backend($1)", pid)
        await eventually(lambda: app.gateway.pools["app"].stats()["sv_idle"] == 0, what="dead idle server dropped")
        msgs = await a.query("SELECT pg_backend_pid()")
        assert not errors(msgs), errors(msgs)
        assert int(rows(msgs)[0][0]) != pid
    finally:
        await adm.close()
        await a.close()


async def test_notification_not_delivered_to_other_client(gateway_app, pg, pg_db):
    """LISTEN in transaction mode leaves the registration on the pooled server;
    a NOTIFY then reaches whichever client is linked to that server."""
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _raw_login(app)
    b = await _raw_login(app)
    adm = await admin(pg, pg_db)
    try:
        assert not errors(await a.query("LISTEN review_chan"))
        assert not errors(await b.query("BEGIN"))
        await adm.execute("NOTIFY review_chan, 'secret'")
        msgs = await b.query("SELECT 1")
        msgs += await b.query("COMMIT")
        assert not [x for x in msgs if isinstance(x, m.NotificationResponse)], msgs
    finally:
        await adm.close()
        await a.close()
        await b.close()


async def test_healthz_when_postgres_down(gateway_app, pg):
    """/healthz must not answer 200 while no database can be reached, even
    before any client has tried (it used to, until a client failed)."""
    from tests.pgcluster import free_port
    down = await gateway_app(databases={"app": {"port": free_port()}})
    status, _ = await _http(down.http_port, "GET", "/healthz")
    assert status == 503
    up = await gateway_app()
    status, _ = await _http(up.http_port, "GET", "/healthz")
    assert status == 200
    assert up.gateway.pools["app"].stats()["sv_idle"] == 1  # the probe's login stays in the pool


async def test_max_client_conn_counts_http(gateway_app, pg_db):
    app = await gateway_app(max_client_conn=1, databases={"app": {"dbname": pg_db}})
    a = await _raw_login(app)
    try:
        body = b'{"query": "select 1", "params": []}'
        status, resp = await _http(app.http_port, "POST", "/sql", body, {
            "Neon-Connection-String": f"postgresql://alice:{ALICE_PASSWORD}@x/app"})
        assert status == 400 and b"53300" in resp, (status, resp)
    finally:
        await a.close()


async def test_metrics_has_pool_gauges(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    a = await _raw_login(app)
    try:
        await a.query("SELECT 1")
        status, body = await _http(app.http_port, "GET", "/metrics")
        assert status == 200
        text = body.decode()
        print(text)
        assert 'wirepool_pools_sv_idle{database="app"' in text, text
        assert "wirepool_clients 1.0" in text
    finally:
        await a.close()


async def test_server_check_before_reusing_a_hung_idle_server(gateway_app, pg, pg_db):
    """server_check_delay / server_check_query: an idle server that no longer
    answers (its backend frozen: a half-open connection) must not be handed
    to the next client -- it used to hang that client forever."""
    import os
    import signal
    import time
    app = await gateway_app(server_check_delay=0.2, server_connect_timeout=1.0,
                            databases={"app": {"dbname": pg_db, "pool_size": 2}})
    a = await _raw_login(app)
    pid = int(rows(await a.query("SELECT pg_backend_pid()"))[0][0])
    t_release = time.monotonic()
    os.kill(pid, signal.SIGSTOP)
    try:
        # let the idle time pass the check delay (a timeout, not synchronisation)
        await asyncio.sleep(max(0.0, 0.3 - (time.monotonic() - t_release)))
        msgs = await asyncio.wait_for(a.query("SELECT pg_backend_pid()"), 8)
        assert not errors(msgs), errors(msgs)
        assert int(rows(msgs)[0][0]) != pid
    finally:
        os.kill(pid, signal.SIGCONT)
        await a.close()


async def test_server_check_passes_healthy_server(gateway_app, pg_db):
    app = await gateway_app(server_check_delay=0.0, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _raw_login(app)
    try:
        pid = rows(await a.query("SELECT pg_backend_pid()"))[0][0]
        for _ in range(3):
            msgs = await a.query("SELECT pg_backend_pid()")
            assert rows(msgs)[0][0] == pid  # same server, checked each time, kept
        assert app.gateway.pools["app"].stats()["xact_count"] >= 4
    finally:
        await a.close()


async def test_client_vanishes_mid_copy_in(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    adm = await admin(pg, pg_db)
    await adm.execute("CREATE TABLE t_copy (x int); GRANT ALL ON t_copy TO PUBLIC")
    a = await _raw_login(app)
    try:
        await a.send(m.query("COPY t_copy FROM STDIN"))
        msgs = await a.until(m.CopyInResponse)
        assert isinstance(msgs[-1], m.CopyInResponse), msgs
        await a.send(m.copy_data(b"1\n2\n"))
        a.abort()
        b = await _raw_login(app)
        try:
            msgs = await asyncio.wait_for(b.query("SELECT count(*) FROM t_copy"), 10)
            assert not errors(msgs) and rows(msgs) == [("0",)]
        finally:
            await b.close()
        await eventually(lambda: _no_copy(adm, pg_db), what="COPY backend gone")
    finally:
        await adm.close()


async def _no_copy(adm, db) -> bool:
    return not [r for r in await backends(adm, db) if (r["query"] or "").startswith("COPY")]


async def test_shutdown_timeout_rolls_back_running_transaction(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    adm = await admin(pg, pg_db)
    await adm.execute("CREATE TABLE t_sd (x int); GRANT ALL ON t_sd TO PUBLIC")
    a = await _raw_login(app)
    try:
        assert not errors(await a.query("BEGIN; INSERT INTO t_sd VALUES (1)"))
        await asyncio.wait_for(app.gateway.shutdown(0.3), 10)
        msgs = await a.read_to_eof(timeout=5)
        assert "57P01" in [e.sqlstate for e in errors(msgs)], msgs
        await eventually(lambda: _no_backends(adm, pg_db), what="all gateway backends closed")
        assert await adm.fetchval("SELECT count(*) FROM t_sd") == 0
    finally:
        await adm.close()
        await a.close()


async def _no_backends(adm, db) -> bool:
    return not await backends(adm, db)


async def test_address_parameter_never_dialled_by_a_real_session(gateway_app, pg_db):
    """The existing test uses the echo gateway; here a real session logs in
    and queries with ?address= pointing at a trap listener."""
    import websockets
    from driver.protocol.framing import MessageReader
    app = await gateway_app(auth_type="password", databases={"app": {"dbname": pg_db}})
    hits: list[int] = []
    trap = await asyncio.start_server(lambda r, w: hits.append(1), "127.0.0.1", 0)
    port = trap.sockets[0].getsockname()[1]
    try:
        async with websockets.connect(f"{app.ws_url}?address=127.0.0.1:{port}") as ws:
            await ws.send(m.startup_message({"user": "alice", "database": "app"})
                          + m.password_message(ALICE_PASSWORD) + m.query("SELECT 7"))
            mr, got = MessageReader(), []
            while not [x for x in got if isinstance(x, m.ReadyForQuery)][1:]:
                mr.feed(await asyncio.wait_for(ws.recv(), 10))
                got.extend(m.decode_backend(t, b) for t, b in mr.read())
            assert not errors(got) and rows(got) == [("7",)]
    finally:
        trap.close()
    assert hits == []
