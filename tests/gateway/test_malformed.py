"""Malformed protocol messages from clients (issue 11 F2, F3): the client that
sent them gets 08P01 and is ended; servers and other clients are untouched."""

from __future__ import annotations

import asyncio

import asyncpg

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, eventually, pool_stats, rows

#: Bind whose statement name has no terminating NUL, then Sync (the finding's bytes)
BAD_BIND = b"B\x00\x00\x00\x07\x00s1" + b"S\x00\x00\x00\x04"


async def _login(app) -> RawClient:
    c = await RawClient.connect(app.pg_port)
    msgs = await c.login("alice", ALICE_PASSWORD, "app")
    assert not errors(msgs), errors(msgs)
    return c


async def _ends_with_08p01(c: RawClient) -> None:
    msgs = await c.read_to_eof(timeout=10)
    errs = errors(msgs)
    assert [e.sqlstate for e in errs] == ["08P01"], msgs
    assert not any(isinstance(x, m.DataRow) for x in msgs), "no result may pass for 'first'"


async def test_malformed_message_while_waiting_for_a_fresh_server(gateway_app, pg_db):
    """The server is logged in for the waiting client (first use of the pool)."""
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _login(app)
    try:
        await a.send(m.query("select 'first'") + BAD_BIND)
        await _ends_with_08p01(a)
    finally:
        await a.close()
    # the server went back to the pool clean and serves the next client
    await eventually(lambda: pool_stats(app)["sv_idle"] == 1, what="server back in the pool")
    b = await _login(app)
    try:
        assert rows(await b.query("select 'second'")) == [("second",)]
    finally:
        await b.close()


async def test_malformed_message_while_waiting_for_a_released_server(gateway_app, pg_db):
    """The server comes from another client's transaction: that client and
    that server connection carry on; the bad client alone gets 08P01."""
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    b = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    a = await _login(app)
    try:
        tx = b.transaction()
        await tx.start()
        pid = await b.fetchval("select pg_backend_pid()")
        await a.send(m.query("select 'first'") + BAD_BIND)
        await eventually(lambda: pool_stats(app)["cl_waiting"] == 1, what="a waits for the server")
        await tx.commit()
        await _ends_with_08p01(a)
        # same backend: the healthy server connection was not closed
        assert await asyncio.wait_for(b.fetchval("select pg_backend_pid()"), 10) == pid
    finally:
        await a.close()
        await b.close()


async def test_malformed_message_on_a_linked_server_keeps_it(gateway_app, pg_db):
    """Inside a transaction (server linked): the client gets 08P01; its open
    transaction is rolled back and the server is reused, not closed."""
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _login(app)
    try:
        msgs = await a.query("begin; select pg_backend_pid()")
        pid = rows(msgs)[0][0]
        await a.send(BAD_BIND)
        await _ends_with_08p01(a)
    finally:
        await a.close()
    b = await _login(app)
    try:
        assert rows(await b.query("select pg_backend_pid()")) == [(pid,)]
        # the old transaction was rolled back: b's SET is not in it
        assert rows(await b.query("show transaction_read_only")) == [("off",)]
    finally:
        await b.close()
