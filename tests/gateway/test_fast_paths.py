"""The gateway's fast paths: the plain WebSocket handshake/frames (no
extension negotiated) and the callback-driven session loop with flow control."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import struct
from typing import Any

import asyncpg
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from gateway.app import GatewayApp
from tests.gateway.conftest import ALICE_PASSWORD, EchoGateway

EchoApp = tuple[GatewayApp, EchoGateway]


def _client_frame(payload: bytes, opcode: int = 2) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 65536:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


async def _server_frame(r: asyncio.StreamReader) -> tuple[int, bytes]:
    b0, b1 = await asyncio.wait_for(r.readexactly(2), 10)
    assert not b1 & 0x80  # server frames are never masked
    n = b1 & 0x7F
    if n == 126:
        n = struct.unpack("!H", await r.readexactly(2))[0]
    elif n == 127:
        n = struct.unpack("!Q", await r.readexactly(8))[0]
    return b0, await asyncio.wait_for(r.readexactly(n), 10)


async def test_plain_handshake_rfc6455_example_and_frame_sizes(echo_app: EchoApp) -> None:
    app, fake = echo_app
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(b"GET /v2?address=x HTTP/1.1\r\nHost: x\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    lines = {k.strip().lower(): v.strip() for k, _, v in
             (ln.partition(b":") for ln in head.split(b"\r\n")[1:] if ln)}
    assert lines[b"sec-websocket-accept"] == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 1.3
    assert lines[b"upgrade"].lower() == b"websocket" and b"sec-websocket-extensions" not in lines
    for size in (0, 1, 125, 126, 65535, 65536, 200_000):
        payload = os.urandom(size)
        w.write(_client_frame(payload))
        got = b""
        while len(got) < size:
            b0, data = await _server_frame(r)
            assert b0 == 0x82
            got += data
        assert got == payload
    stream = fake.streams[0]
    assert stream.extensions == [] and stream.query == {"address": "x"}
    w.write(_client_frame(struct.pack("!H", 1000), opcode=8))
    b0, data = await _server_frame(r)
    assert b0 == 0x88 and data[:2] == struct.pack("!H", 1000)
    w.close()


async def test_plain_handshake_falls_back_to_websockets(echo_app: EchoApp) -> None:
    """Extensions offered -> websockets negotiates; a bad key -> websockets' 400."""
    app, fake = echo_app
    async with websockets.connect(app.ws_url) as ws:  # offers permessage-deflate
        await ws.send(b"a")
        assert await ws.recv() == b"a"
    assert fake.streams[0].extensions == ["permessage-deflate"]
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(15)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    status = await asyncio.wait_for(r.readline(), 10)
    assert status.split()[1] == b"400"
    w.close()


async def test_plain_ws_ping_text_and_close(echo_app: EchoApp) -> None:
    app, fake = echo_app
    async with websockets.connect(app.ws_url, compression=None) as ws:
        await asyncio.wait_for(await ws.ping(b"p"), 10)
        await ws.send([b"ab", b"cd"])  # fragmented
        got = b""
        while len(got) < 4:
            got += await asyncio.wait_for(ws.recv(), 10)
        assert got == b"abcd"
        await ws.send("text")
        msg = await asyncio.wait_for(ws.recv(), 10)
        assert msg.startswith(b"ERR:text WebSocket frame")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1003
    assert fake.streams[0].extensions == []


async def test_session_flow_control_large_copy(gateway_app: Any) -> None:
    """Megabytes from the client while the server is slower: the callback-driven
    session pauses reading the client until the server drains (nothing lost)."""
    app = await gateway_app(databases={"app": {"pool_size": 1}})
    conn = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    try:
        await conn.execute("CREATE TEMP TABLE fp_copy (n int, t text)")
        rows = 120_000
        data = "".join(f"{i}\t{'x' * 60}\n" for i in range(rows)).encode()
        await asyncio.wait_for(conn.copy_to_table("fp_copy", source=io.BytesIO(data)), 60)
        assert await conn.fetchval("SELECT count(*) FROM fp_copy") == rows
        assert await conn.fetchval("SELECT sum(n) FROM fp_copy") == rows * (rows - 1) // 2
    finally:
        await conn.close()


async def _plain_ws(app: GatewayApp) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + base64.b64encode(os.urandom(16)) + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101 ")
    return r, w


async def _read_payload(r: asyncio.StreamReader, size: int) -> bytes:
    got = b""
    while len(got) < size:
        b0, data = await _server_frame(r)
        assert b0 == 0x82
        got += data
    return got


async def test_plain_frames_any_split_then_handoff(echo_app: EchoApp) -> None:
    """Client frames split at every byte, or several in one segment, make one
    byte stream; a ping mid-stream hands the rest to websockets (pong, then
    binary frames still work); a fragmented message too."""
    app, fake = echo_app
    r, w = await _plain_ws(app)
    payloads = [os.urandom(n) for n in (5, 0, 300, 70_000, 1)]
    frames = b"".join(_client_frame(p) for p in payloads)
    for i in range(0, 400):  # the first 400 bytes one at a time
        w.write(frames[i:i + 1])
        await w.drain()
    w.write(frames[400:])
    total = b"".join(payloads)
    assert await _read_payload(r, len(total)) == total
    # several whole frames in one write
    w.write(_client_frame(b"one") + _client_frame(b"two") + _client_frame(b"three"))
    assert await _read_payload(r, 11) == b"onetwothree"
    assert fake.streams[0]._fast_rx  # still on the fast path
    # ping (control frame) with a binary frame behind it in the same segment
    w.write(_client_frame(b"hi", opcode=9) + _client_frame(b"after"))
    b0, data = await _server_frame(r)
    assert (b0, data) == (0x8A, b"hi")  # pong
    assert await _read_payload(r, 5) == b"after"
    assert not fake.streams[0]._fast_rx  # websockets has the stream now
    # a fragmented message (FIN=0 binary + FIN=1 continuation), now via websockets
    first = bytearray(_client_frame(b"fr"))
    first[0] = 0x02
    w.write(bytes(first) + _client_frame(b"ag", opcode=0))
    assert await _read_payload(r, 4) == b"frag"
    w.close()


async def test_plain_frame_over_max_size_closes_1009(echo_app: EchoApp) -> None:
    app, _ = echo_app
    app.http.ws_max_message_size = 1000
    r, w = await _plain_ws(app)
    w.write(_client_frame(b"ok"))
    assert await _read_payload(r, 2) == b"ok"
    w.write(_client_frame(b"x" * 1001))
    b0, data = await _server_frame(r)
    assert b0 == 0x88 and struct.unpack("!H", data[:2])[0] == 1009
    w.close()
