"""gateway/websocket.py: frames pipelined behind the upgrade request, and the
websockets protocol an idle plain session does without."""

from __future__ import annotations

import asyncio
import base64
import os
import struct
from typing import Any

from driver.protocol import messages as m
from gateway.app import GatewayApp
from tests.gateway.conftest import ALICE_PASSWORD, EchoGateway
from tests.gateway.pool_helpers import eventually
from tests.gateway.test_fast_paths import _client_frame, _server_frame

_UPGRADE = (b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\n\r\n")


async def _messages_until_idle(r: asyncio.StreamReader) -> list[tuple[int, bytes]]:
    """Backend messages from binary frames, up to the second ReadyForQuery."""
    buf = b""
    out: list[tuple[int, bytes]] = []
    rfq = 0
    while rfq < 2:
        b0, data = await _server_frame(r)
        assert b0 == 0x82, b0
        buf += data
        while len(buf) >= 5 and len(buf) >= 1 + struct.unpack("!I", buf[1:5])[0]:
            n = 1 + struct.unpack("!I", buf[1:5])[0]
            out.append((buf[0], buf[5:n]))
            rfq += buf[0] == ord("Z")
            buf = buf[n:]
    return out


async def test_login_and_query_pipelined_with_the_upgrade_request(gateway_app: Any) -> None:
    """Upgrade request, StartupMessage, password and a query in ONE write (what the
    driver's pipelined connect sends): the gateway answers 101, then the login and
    the query's result, with no further client write."""
    app = await gateway_app(auth_type="password")
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    login = (m.startup_message({"user": "alice", "database": "app"}) + m.password_message(ALICE_PASSWORD)
             + m.query("select 40 + 2"))
    w.write(_UPGRADE + _client_frame(login))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    msgs = await _messages_until_idle(r)
    types = [chr(t) for t, _ in msgs]
    assert types[0] == "R" and "E" not in types, types   # AuthenticationCleartextPassword, then Ok...
    rows = [body for t, body in msgs if t == ord("D")]
    assert len(rows) == 1 and rows[0].endswith(b"42")
    w.write(_client_frame(m.terminate()))
    w.close()


async def test_idle_plain_session_carries_no_websockets_protocol(
        echo_app: tuple[GatewayApp, EchoGateway]) -> None:
    app, fake = echo_app
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(_UPGRADE + _client_frame(b"hello"))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert await _server_frame(r) == (0x82, b"hello")
    stream = fake.streams[0]
    assert stream.ws is None  # made only when needed
    w.write(_client_frame(b"p", opcode=9))  # a ping: websockets takes over from here
    assert await _server_frame(r) == (0x8A, b"p")
    assert stream.ws is not None
    w.write(_client_frame(b"more"))
    assert await _server_frame(r) == (0x82, b"more")
    w.write(_client_frame(struct.pack("!H", 1000), opcode=8))
    b0, data = await _server_frame(r)
    assert b0 == 0x88 and data[:2] == struct.pack("!H", 1000)
    w.close()


async def _eof(r: asyncio.StreamReader) -> bytes:
    """What the server still sends before closing TCP (b"" for a clean close)."""
    return await asyncio.wait_for(r.read(), 30)


async def test_client_close_is_echoed_without_a_websockets_protocol(
        echo_app: tuple[GatewayApp, EchoGateway]) -> None:
    """The client's close frame (behind a data frame, in one write) is echoed as
    websockets would (same payload), then TCP is closed -- on the fast path."""
    app, fake = echo_app
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(_UPGRADE + _client_frame(b"hello"))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    assert await _server_frame(r) == (0x82, b"hello")
    close = struct.pack("!H", 1001) + "bye ✓".encode()
    w.write(_client_frame(b"last") + _client_frame(close, opcode=8))
    # (answered at once, as websockets does: the session sees "last", then EOF)
    assert await _server_frame(r) == (0x88, close)
    assert await _eof(r) == b""
    stream = fake.streams[0]
    assert stream.ws is None
    await eventually(lambda: fake.closed_sessions == 1, what="the session read to its EOF")
    assert fake.received[id(stream)] == len(b"hellolast")
    w.close()


async def test_invalid_client_close_still_gets_websockets_answer(
        echo_app: tuple[GatewayApp, EchoGateway]) -> None:
    """A close frame with an invalid code is left to websockets: close 1002."""
    app, fake = echo_app
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(_UPGRADE + _client_frame(struct.pack("!H", 999), opcode=8))
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    b0, data = await _server_frame(r)
    assert b0 == 0x88 and data[:2] == struct.pack("!H", 1002), (b0, data)
    assert await _eof(r) == b""
    assert fake.streams[0].ws is not None
    w.close()


async def test_server_close_on_the_fast_path_ends_at_the_clients_close_frame(
        gateway_app: Any, monkeypatch: Any) -> None:
    """Session over (Terminate): the gateway's close frame is 1000; frames the
    client still sends are skipped (one of 70,000 bytes, split over writes) and
    its close frame ends the TCP connection at once (the close timeout is made
    far longer than the test's wait, so only the close frame can end it)."""
    import gateway.websocket as gws
    monkeypatch.setattr(gws, "WS_CLOSE_TIMEOUT", 600.0)
    app = await gateway_app(auth_type="password")
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    login = (m.startup_message({"user": "alice", "database": "app"}) + m.password_message(ALICE_PASSWORD)
             + m.query("select 1"))
    w.write(_UPGRADE + _client_frame(login))
    await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    await _messages_until_idle(r)
    w.write(_client_frame(m.terminate()))
    assert await _server_frame(r) == (0x88, struct.pack("!H", 1000))
    big = _client_frame(b"x" * 70_000)
    w.write(big[:1000])
    await w.drain()
    w.write(big[1000:] + _client_frame(b"", opcode=8)[:3])
    await w.drain()
    w.write(_client_frame(b"", opcode=8)[3:])
    assert await _eof(r) == b""
    w.close()
