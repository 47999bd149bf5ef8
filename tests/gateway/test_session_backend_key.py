"""Session mode: the client's server is linked at login and BackendKeyData
carries that server's real backend pid (with a gateway-issued secret), so a
client that kills ``conn.pgconn.backend_pid`` kills its own server, as psycopg's
own tests do (docs/pooling-semantics.md, "Session mode: the real backend pid")."""

from __future__ import annotations

import asyncio

import driver
import psycopg
import psycopg.errors as e
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, errors, eventually, pool_stats

pytestmark = pytest.mark.timeout(60)


async def _key(app, user: str = "alice") -> tuple[RawClient, m.BackendKeyData]:
    c = await RawClient.connect(app.pg_port)
    msgs = await c.login(user, ALICE_PASSWORD, "app")
    keys = [x for x in msgs if isinstance(x, m.BackendKeyData)]
    assert keys, msgs
    return c, keys[0]


async def _cancel(app, pid: int, secret: int) -> None:
    c = await RawClient.connect(app.pg_port)
    await c.send(m.cancel_request(pid, secret))
    assert await c.read_to_eof() == []
    await c.close()


async def test_psycopg_kills_its_own_backend_pid(gateway_app):
    """psycopg's test_broken / test_context_inerror_rollback_no_clobber, as a gateway test."""
    app = await gateway_app(databases={"app": {"pool_mode": "session"}})
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        real = (await (await conn.execute("select pg_backend_pid()")).fetchone())[0]
        assert conn.pgconn.backend_pid == real
        with pytest.raises(e.AdminShutdown):
            await conn.execute("select pg_terminate_backend(%s)", [conn.pgconn.backend_pid])
        assert conn.closed and conn.broken
    async with await psycopg.AsyncConnection.connect(dsn) as killer:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute("select 1")
            row = await (await killer.execute("select pg_terminate_backend(%s)",
                                              [conn.pgconn.backend_pid])).fetchone()
            assert row == (True,)
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("select 1")
            assert conn.broken
        assert (await (await killer.execute("select 1")).fetchone()) == (1,)


async def test_psycopg_cancel_with_real_pid(gateway_app):
    app = await gateway_app(databases={"app": {"pool_mode": "session"}})
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as watcher, \
            await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        task = asyncio.ensure_future(conn.execute("select pg_sleep(30)"))

        async def sleeping() -> bool:
            cur = await watcher.execute("select count(*) from pg_stat_activity where pid = %s "
                                        "and state = 'active' and query like '%%pg_sleep%%'",
                                        [conn.pgconn.backend_pid])
            return (await cur.fetchone())[0] == 1
        await eventually(sleeping, what="pg_sleep running on the client's own backend pid")
        await conn.cancel_safe()
        with pytest.raises(e.QueryCanceled):
            await asyncio.wait_for(task, 15)
        assert (await (await conn.execute("select 2")).fetchone()) == (2,)


async def test_new_secret_per_client_on_a_reused_server(gateway_app, pg):
    """Same server, same pid, for the next client: the previous client's key
    cancels nothing; only the current client's key cancels."""
    app = await gateway_app(databases={"app": {"pool_mode": "session", "pool_size": 1}})
    a, key_a = await _key(app)
    await a.close()
    await eventually(lambda: pool_stats(app)["sv_idle"] == 1, what="server back in the pool")
    b, key_b = await _key(app)
    try:
        assert key_b.process_id == key_a.process_id  # the one server
        assert key_b.secret_key != key_a.secret_key
        await b.send(m.query("SELECT pg_sleep(0.5)"))
        await _cancel(app, key_a.process_id, key_a.secret_key)  # the old key: nothing
        assert not errors(await b.until(m.ReadyForQuery))
        await b.send(m.query("SELECT pg_sleep(30)"))
        adm = await admin(pg)
        try:  # (a cancel that reaches the server before the query cancels nothing)
            await eventually(lambda: adm.fetchval(
                "SELECT count(*) = 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active' "
                "AND query LIKE '%pg_sleep(30)%'", key_b.process_id), timeout=15, what="the query to run")
        finally:
            await adm.close()
        await _cancel(app, key_b.process_id, key_b.secret_key)
        msgs = await b.until(m.ReadyForQuery, timeout=15)
        assert [x.sqlstate for x in errors(msgs)] == ["57014"]
    finally:
        await b.close()
    # once b is gone its key is forgotten
    await eventually(lambda: key_b.process_id not in app.gateway.sessions, what="key removed")


async def test_login_waits_for_a_server_within_query_wait_timeout(gateway_app):
    app = await gateway_app(query_wait_timeout=0.5,
                            databases={"app": {"pool_mode": "session", "pool_size": 1}})
    a, key_a = await _key(app)
    try:
        c = await RawClient.connect(app.pg_port)
        msgs = await c.login("alice", ALICE_PASSWORD, "app")
        errs = errors(msgs)
        assert [x.sqlstate for x in errs] == ["57014"], msgs
        assert "query_wait_timeout" in errs[0].message
        assert not any(isinstance(x, m.BackendKeyData) for x in msgs)
        assert await c.read_to_eof() == []
        await c.close()
    finally:
        await a.close()
    b, key_b = await _key(app)  # the server is free again
    assert key_b.process_id == key_a.process_id
    await b.close()


async def test_websocket_driver_sees_real_pid(gateway_app):
    app = await gateway_app(databases={"app": {"pool_mode": "session"}})
    conn = await driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app")
    try:
        assert conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()


async def test_transaction_mode_pid_is_never_a_real_one(gateway_app):
    app = await gateway_app(databases={"app": {"pool_mode": "transaction"}})
    c, key = await _key(app)
    try:
        assert key.process_id >= 1 << 22  # above Linux's pid_max: names no backend
        assert pool_stats(app)["sv_active"] == 0  # no server held at login
    finally:
        await c.close()


async def test_http_pg_driver_sees_real_pid(gateway_app):
    """/pg (the driver over http://): the session's hello carries the real pid too."""
    app = await gateway_app(databases={"app": {"pool_mode": "session"}})
    conn = await driver.connect(f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app")
    try:
        assert conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")
    finally:
        await conn.close()
