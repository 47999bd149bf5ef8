"""Malformed protocol messages from clients (issue 11 F2, F3): the client that
sent them gets 08P01 and is ended; servers and other clients are untouched."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

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


# ------------------------------------------------------------------ F3: /pg skip-till-Sync

async def _pg(app, body: bytes) -> tuple[int, dict[str, str], bytes]:
    import base64
    auth = base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        w.write(b"POST /pg HTTP/1.1\r\nhost: x\r\nconnection: close\r\nwirepool-database: app\r\n"
                + f"authorization: Basic {auth}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body)
        data = await asyncio.wait_for(r.read(), 10)  # the finding: 65 s
    finally:
        w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    return int(lines[0].split()[1]), {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}, rest


def _backend(data: bytes) -> list[Any]:
    from driver.protocol.framing import MessageReader
    r = MessageReader()
    r.feed(data)
    return [m.decode_backend(t, b) for t, b in r.read()]


_DESCRIBE_MISSING_PORTAL = b"D\x00\x00\x00\x06P\x00"


@pytest.mark.parametrize("describes", [1, 2])  # 2: found by the fuzz campaign (the second is skipped too)
@pytest.mark.parametrize("max_prepared_statements", [200, 0])  # with and without the rewriter
async def test_pg_query_skipped_after_extended_error_does_not_hang(gateway_app, pg_db, max_prepared_statements,
                                                                   describes):
    """Describe of a missing portal fails; Postgres skips the Query after it
    (skip-till-Sync): the response ends with the error, the server is synced
    and goes back to the pool clean."""
    app = await gateway_app(max_prepared_statements=max_prepared_statements,
                            databases={"app": {"dbname": pg_db, "pool_size": 1}})
    body = _DESCRIBE_MISSING_PORTAL * describes + b"Q\x00\x00\x00\x0dselect 1\x00"
    status, hdrs, data = await _pg(app, body)
    assert status == 200, data
    msgs = _backend(data)
    assert [e.sqlstate for e in errors(msgs)] == ["34000"], msgs  # portal "" does not exist
    assert not any(isinstance(x, m.DataRow) for x in msgs)
    assert isinstance(msgs[-1], m.ReadyForQuery) and hdrs["wirepool-status"] == "I", (hdrs, msgs)
    await eventually(lambda: pool_stats(app)["sv_idle"] == 1, what="server back in the pool")
    # the same server serves a normal client at once (it is not skipping any more)
    c = await _login(app)
    try:
        assert rows(await asyncio.wait_for(c.query("select 42"), 5)) == [("42",)]
    finally:
        await c.close()
    for _ in range(3):  # and repeated requests never pile up
        status, hdrs, data = await _pg(app, body)
        assert status == 200 and hdrs["wirepool-status"] == "I"


# ------------------------------------------------------------------ Flush with a body

#: Flush ('H') must be empty; Postgres fails this one as an extended-protocol
#: message ("invalid message format") and then skips everything until a Sync
FLUSH_WITH_BODY = b"H\x00\x00\x00\x0dselect 1\x00"


@pytest.mark.parametrize("when", ["same_chunk", "after_reply"])
async def test_flush_with_a_body_does_not_leave_the_server_skipping(gateway_app, pg_db, when):
    """Found by the fuzz campaign: a Flush with a body after a completed Query
    reached Postgres once the server was back in the pool (transaction mode:
    released at the Query's ReadyForQuery), so the server went on skipping
    till Sync and the next client's simple Query on it was never answered.
    The client that sent it gets 08P01 and is ended; the next client is served."""
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _login(app)
    try:
        if when == "same_chunk":
            await a.send(m.query("select 'first'") + FLUSH_WITH_BODY)
        else:
            assert rows(await a.query("select 'first'")) == [("first",)]
            await a.send(FLUSH_WITH_BODY)
        try:
            msgs: Any = await a.read_to_eof(timeout=5)
        except asyncio.TimeoutError:
            msgs = "not ended"
    finally:
        await a.close()
    await eventually(lambda: pool_stats(app)["sv_idle"] + pool_stats(app)["sv_login"] <= 1
                     and not pool_stats(app)["sv_active"], what="a's server released or closed")
    b = await _login(app)
    try:
        assert rows(await asyncio.wait_for(b.query("select 'second'"), 5)) == [("second",)]
    finally:
        await b.close()
    assert isinstance(msgs, list) and [e.sqlstate for e in errors(msgs)] == ["08P01"], msgs


# ------------------------------------------------------------------ unknown message types

@pytest.mark.parametrize("in_tx", [True, False])
async def test_unknown_message_type_ends_the_client_not_the_server(gateway_app, pg, pg_db, in_tx):
    """A message type Postgres does not read ('Z', a backend type): Postgres ends the
    session with a FATAL 08P01, which would take the pooled server with it (the fuzz
    campaign churned backends this way).  The gateway answers the same FATAL itself; an
    open transaction is rolled back and the same server serves the next client."""
    from tests.pgcluster import PgCluster
    bad = b"Z\x00\x00\x00\x04"
    direct = await RawClient.connect(pg.port, pg.host)
    try:
        await direct.send(m.startup_message({"user": PgCluster.TRUST_USER, "database": PgCluster.DATABASE}))
        assert not errors(await direct.until(m.ReadyForQuery))
        await direct.send(bad)
        want = [(e.sqlstate, e.message) for e in errors(await direct.read_to_eof(timeout=10))]
    finally:
        await direct.close()
    assert want and want[0][0] == "08P01", want

    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _login(app)
    try:
        pid = rows(await a.query("begin; select pg_backend_pid()" if in_tx else "select pg_backend_pid()"))[0][0]
        await a.send(bad)
        got = [(e.sqlstate, e.message) for e in errors(await a.read_to_eof(timeout=10))]
    finally:
        await a.close()
    assert got == want
    b = await _login(app)
    try:
        assert rows(await b.query("select pg_backend_pid()")) == [(pid,)]  # the server was kept
        # not inside a's transaction: there now() would be its start, not this statement's
        assert rows(await b.query("select now() = statement_timestamp()")) == [("t",)]
    finally:
        await b.close()
    assert pool_stats(app)["sv_idle"] + pool_stats(app)["sv_active"] == 1


async def test_malformed_message_from_another_user_leaves_no_state_behind(gateway_app, pg_db):
    """bob's malformed message waits for a server alice used.  Linking it for bob
    meant a DISCARD ALL (another identity), so the gateway reset what it knew of
    the server; the malformed message stopped anything being sent.  The server
    must not go on as 'reset for bob' with alice's settings still on it."""
    from tests.gateway.conftest import BOB_PASSWORD
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    alice = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    bob = await RawClient.connect(app.pg_port)
    try:
        await alice.execute("SET statement_timeout = '4321s'")
        tx = alice.transaction()
        await tx.start()
        assert not errors(await bob.login("bob", BOB_PASSWORD, "app"))
        await bob.send(m.query("select 'first'") + BAD_BIND)
        await eventually(lambda: pool_stats(app)["cl_waiting"] == 1, what="bob waits for the server")
        await tx.commit()
        await _ends_with_08p01(bob)
    finally:
        await bob.close()
        await alice.close()
    bob2 = await RawClient.connect(app.pg_port)
    try:
        assert not errors(await bob2.login("bob", BOB_PASSWORD, "app"))
        assert rows(await bob2.query("show statement_timeout")) != [("4321s",)]
    finally:
        await bob2.close()


@pytest.mark.parametrize("in_tx", [False, True])
async def test_bad_header_behind_a_good_message_is_answered_at_once(gateway_app, pg_db, in_tx):
    """A good message and a bad header in one piece: the framing hands out the
    good one first; the bad one must still get its 08P01 without the client
    sending anything more (it waited for more input: with
    client_message_timeout = 0 the client hung).  The server goes back clean."""
    app = await gateway_app(client_message_timeout=0, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _login(app)
    try:
        if in_tx:
            await a.query("begin; create temp table t(x int)")
        await a.send(m.query("select 1") + b"Q\x00\x00\x00\x02")  # length 2 < 4: invalid
        msgs = await a.read_to_eof(timeout=10)
        errs = errors(msgs)
        assert [e.sqlstate for e in errs] == ["08P01"] and "invalid message length" in errs[0].message, msgs
    finally:
        await a.close()
    b = await _login(app)
    try:
        assert rows(await b.query("select 2")) == [("2",)]
        assert rows(await b.query("select count(*) from pg_class where relname = 't' and relpersistence = 't'")) \
            == [("0",)]  # the open transaction (and its temp table) did not survive
    finally:
        await b.close()
