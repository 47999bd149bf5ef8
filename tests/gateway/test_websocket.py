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
