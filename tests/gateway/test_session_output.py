"""gateway/session_output.py: the client's output side of a session -- the
writer task started on demand, messages queued in order with the direct
path's, a slow client's server paused and resumed, the final FATAL flushed."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, eventually, rows

pytestmark = pytest.mark.timeout(90)


async def _only_session(app: Any) -> Any:
    await eventually(lambda: len(app.gateway._all_sessions) == 1, what="one session")
    return next(iter(app.gateway._all_sessions))


async def test_a_queued_message_starts_the_writer_and_comes_first(gateway_app: Any) -> None:
    app = await gateway_app()
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        assert s._direct is not None and s._writer is None  # TCP: replies go straight to the transport
        s._send_or_queue(m.notice_response({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "queued"}))
        assert s._writer is not None  # started on demand
        await c.send(m.query("SELECT 2"))
        got = await c.until(m.ReadyForQuery)
        assert isinstance(got[0], m.NoticeResponse) and got[0].message == "queued", got
        assert rows(got) == [("2",)]
        assert not s._out and s._out_bytes == 0
    finally:
        await c.close()


async def test_a_slow_client_pauses_its_server_until_it_drains(gateway_app: Any) -> None:
    """The client reads nothing (a small receive buffer): the gateway stops
    reading the server and the writer task waits for the client's transport
    to drain; then the server is read again and every row arrives."""
    app = await gateway_app(tcp_socket_buffer=65536)  # the gateway's socket buffers fixed (no autotuning)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", app.pg_port))
    r, w = await asyncio.open_connection(sock=sock, limit=8192)
    c = RawClient(r, w)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        n = 400_000
        await c.send(m.query(f"COPY (SELECT generate_series(1, {n})) TO STDOUT"))
        await eventually(lambda: s.server is not None and s._paused is s.server and s._writer is not None
                         and not s.server.transport.is_reading(), timeout=30, what="the server to be paused")
        server = s.server
        expect = sum(5 + len(str(i)) + 1 for i in range(1, n + 1))  # the CopyData messages
        expect += 10 + 5 + 5 + len(f"COPY {n}") + 1 + 6  # CopyOutResponse, CopyDone, CommandComplete, Z
        got, tail = 0, b""
        while not tail.endswith(b"Z\x00\x00\x00\x05I"):
            data = await asyncio.wait_for(r.read(1 << 16), 30)
            assert data, f"closed after {got} bytes"
            got += len(data)
            tail = (tail + data)[-6:]
        assert got == expect
        await eventually(lambda: s._paused is None, what="the pause to end")
        assert server.transport.is_reading()  # back in the pool, read again
        assert not s._writer.done()  # idle, waiting for more
    finally:
        await c.close()


async def test_terminate_flushes_the_fatal_through_the_writer(gateway_app: Any) -> None:
    app = await gateway_app()
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        s.terminate("57P01", "terminating connection due to administrator command")
        got = await c.read_to_eof()
        (err,) = errors(got)
        assert err.severity == "FATAL" and err.sqlstate == "57P01", got
        await eventually(lambda: s not in app.gateway._all_sessions, what="the session to end")
        assert s._writer is not None and s._writer.done() and s._writer_stop
        assert not s._out
    finally:
        await c.close()
