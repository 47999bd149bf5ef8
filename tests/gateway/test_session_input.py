"""gateway/session_input.py: the pooling loop's reading of the client in
callback mode -- flow-control holds (waiting for a server, a server that does
not read), an error raised in ``data_received``, the client's end."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from driver.protocol import messages as m
from gateway.session_input import HOLD_ASSIGN
from gateway.session_output import OUT_HIGH
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, errors, eventually, rows

pytestmark = pytest.mark.timeout(90)


def _session(app: Any, user: str = "alice") -> Any:
    (s,) = [s for s in app.gateway._all_sessions if s.user == user and s.stream.kind == "tcp"]
    return s


async def _only_session(app: Any) -> Any:
    await eventually(lambda: len(app.gateway._all_sessions) == 1, what="one session")
    return next(iter(app.gateway._all_sessions))


async def test_waiting_for_a_server_with_too_much_queued_stops_reading_the_client(gateway_app: Any) -> None:
    """More than OUT_HIGH bytes queued while no server is free: the client's
    reading is paused (HOLD_ASSIGN) until one is assigned; then every query is answered."""
    app = await gateway_app(databases={"app": {"pool_size": 1}})
    a, b = await RawClient.connect(app.pg_port), await RawClient.connect(app.pg_port)
    try:
        await a.login("alice", ALICE_PASSWORD, "app")
        await a.send(m.query("BEGIN"))
        await a.until(m.ReadyForQuery)  # a holds the only server
        await b.login("alice", ALICE_PASSWORD, "app")
        sb = [s for s in app.gateway._all_sessions if s.server is None]
        assert len(sb) == 1
        s = sb[0]
        n = 12
        queries = [m.query(f"SELECT {i} -- " + "x" * 100_000) for i in range(n)]
        assert len(b"".join(queries)) > OUT_HIGH
        sending = asyncio.ensure_future(b.send(b"".join(queries)))
        await eventually(lambda: s._holding and s.stream._reading_paused, what="b's reading to be held")
        assert s._pending_bytes > OUT_HIGH and s.server is None and s._cb_hold is None  # (taken by the task)
        await a.send(m.query("COMMIT"))
        await a.until(m.ReadyForQuery)
        await asyncio.wait_for(sending, 30)
        got: list[Any] = []
        for _ in range(n):
            got += await b.until(m.ReadyForQuery, timeout=30)
        assert not errors(got)
        assert rows(got) == [(str(i),) for i in range(n)]
        assert not s._holding and not s.stream._reading_paused and s._cb_hold is None
    finally:
        await a.close()
        await b.close()


async def test_a_server_that_does_not_read_stops_reading_the_client(gateway_app: Any, pg: Any) -> None:
    """COPY data pipelined to a server blocked on a lock: its socket fills, the
    gateway holds the client's reading (the server's drain), then all of it
    arrives once the lock is gone."""
    app = await gateway_app(databases={"app": {"pool_size": 1}})
    adm = await admin(pg)
    c = await RawClient.connect(app.pg_port)
    try:
        await adm.execute("DROP TABLE IF EXISTS session_input_copy; CREATE TABLE session_input_copy (t text); "
                          f"GRANT ALL ON session_input_copy TO {pg.SCRAM_USER}")
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        tx = adm.transaction()
        await tx.start()
        await adm.execute("LOCK TABLE session_input_copy")
        line = b"y" * 999 + b"\n"
        n = 24_000  # 24 MB: more than the kernel buffers on the way hold
        data = m.copy_data(line * 1000)
        sending = asyncio.ensure_future(c.send(m.query("COPY session_input_copy FROM STDIN")
                                               + data * (n // 1000) + m.copy_done()))
        await eventually(lambda: s._holding and s.server is not None and s.server.write_paused
                         and s.stream._reading_paused, timeout=30, what="the client's reading to be held")
        await tx.commit()
        await asyncio.wait_for(sending, 60)
        got = await c.until(m.ReadyForQuery, timeout=60)
        assert not errors(got), errors(got)
        assert any(isinstance(x, m.CommandComplete) and x.tag == f"COPY {n}" for x in got), got
        assert not s._holding and not s.stream._reading_paused
    finally:
        await c.close()
        await adm.execute("DROP TABLE IF EXISTS session_input_copy")
        await adm.close()


async def test_an_error_in_data_received_ends_the_session_with_its_fatal(gateway_app: Any) -> None:
    app = await gateway_app()
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        await c.send(m.query("SELECT 1"))
        assert rows(await c.until(m.ReadyForQuery)) == [("1",)]
        await c.send(b"Q\x00\x00\x00\x02")  # a length below 4: raised in data_received
        (err,) = errors(await c.read_to_eof())
        assert err.severity == "FATAL" and err.sqlstate == "08P01", err
        assert s._cb_done and s._cb_exc is None  # re-raised (and consumed) by the session task
        await eventually(lambda: s not in app.gateway._all_sessions, what="the session to end")
    finally:
        await c.close()


async def test_the_clients_end_ends_the_session_and_frees_its_server(gateway_app: Any) -> None:
    app = await gateway_app(databases={"app": {"pool_mode": "session", "pool_size": 1}})
    c = await RawClient.connect(app.pg_port)
    await c.login("alice", ALICE_PASSWORD, "app")
    s = await _only_session(app)
    server = s.server
    assert server is not None and s._cb_wait is not None  # the task waits; bytes come by callback
    await c.close()
    await eventually(lambda: s not in app.gateway._all_sessions, what="the session to end")
    assert s._cb_done and s._cb_wait is None and s.server is None and server.client is None
    assert s._cb_hold is not HOLD_ASSIGN
