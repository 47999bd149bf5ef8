"""The ``listen`` port (HTTP/1.1 + WebSocket) and the ``pg_listen`` TCP listener,
exercised at the transport level with the EchoGateway test helper (conftest)."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from gateway.app import GatewayApp
from gateway.http import HttpRequest, HttpResponse
from gateway.metrics import stats_to_metrics
from gateway.tcp import READ_HIGH_WATER
from tests.gateway.conftest import EchoGateway, build_config

EchoApp = tuple[GatewayApp, EchoGateway]


async def read_response(r: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status_line = await asyncio.wait_for(r.readline(), 10)
    assert status_line.startswith(b"HTTP/1.1 "), status_line
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while True:
        line = await r.readline()
        if line in (b"\r\n", b""):
            break
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await r.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def http(port: int, raw: bytes, n: int = 1) -> tuple[list[tuple[int, dict[str, str], bytes]], bytes]:
    """Send ``raw``; read ``n`` responses, then whatever follows until EOF (or 2 s)."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(raw)
        await w.drain()
        out = [await read_response(r) for _ in range(n)]
        return out, b""
    finally:
        w.close()


async def test_healthz_ready_and_not(echo_app: EchoApp) -> None:
    app, fake = echo_app
    [(st, hd, body)], _ = await http(app.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert (st, body) == (200, b"ok\n")
    fake.ready = False
    [(st, _, _)], _ = await http(app.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert st == 503


async def test_keepalive_pipelining_404_405(echo_app: EchoApp) -> None:
    app, _ = echo_app
    raw = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
           b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
           b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        w.write(raw)
        st1 = await read_response(r)
        st2 = await read_response(r)
        st3 = await read_response(r)
        # HEAD: headers only (content-length describes the GET body)
        line = await r.readline()
        assert line.startswith(b"HTTP/1.1 200")
        head_headers = []
        while (h := await r.readline()) != b"\r\n":
            head_headers.append(h.lower())
        assert b"content-length: 3\r\n" in head_headers
        st5 = await read_response(r)
        # the same connection is still usable afterwards
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        st6 = await read_response(r)
    finally:
        w.close()
    assert st1[0] == 200 and st2[0] == 404 and st3[0] == 405
    assert st3[1]["allow"] == "GET"
    assert st5[0] == 200 and b"wirepool_pools_cl_active" in st5[2]
    assert st6[0] == 200
    assert len(app.http.accepted_total.__class__.__mro__) > 0  # listener alive
    assert app.http is not None and app.http.accepted_total == 1


async def test_metrics_from_stats(echo_app: EchoApp) -> None:
    app, _ = echo_app
    [(st, hd, body)], _ = await http(app.http_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert st == 200 and hd["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    assert 'wirepool_pools_sv_idle{database="app",user="app"} 3.0' in text
    assert "wirepool_http_connections 1.0" in text
    assert "wirepool_ready 1.0" in text


def test_stats_shapes() -> None:
    ms = {m.name: m for m in stats_to_metrics({
        "pools": {("app", "alice"): {"cl_waiting": 2, "maxwait": 0.5}},
        "clients": [1, 2], "uptime": 3.5, "version": "x"})}
    assert ms["wirepool_pools_cl_waiting"].samples[0].labels == {"name": "app/alice"}
    assert ms["wirepool_pools_cl_waiting"].samples[0].value == 2
    assert ms["wirepool_clients"].samples[0].value == 2
    assert "wirepool_version" not in ms


async def test_bad_request_400(echo_app: EchoApp) -> None:
    app, _ = echo_app
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(b"THIS IS NOT HTTP\r\n\r\n")
    st, hd, _ = await read_response(r)
    assert st == 400 and hd.get("connection") == "close"
    assert await asyncio.wait_for(r.read(), 10) == b""
    w.close()


async def test_post_route_body_and_limit(echo_app: EchoApp) -> None:
    app, _ = echo_app
    assert app.http is not None
    seen: list[HttpRequest] = []

    async def echo(req: HttpRequest) -> HttpResponse:
        seen.append(req)
        return HttpResponse(200, req.body[::-1], "application/octet-stream")

    app.http.add_route("POST", "/sql", echo)
    app.http.max_body_size = 1000
    body = os.urandom(600)
    raw = (b"POST /sql?x=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 600\r\n\r\n" + body +
           b"POST /sql HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    (a, b), _ = await http(app.http_port, raw, 2)
    assert a[0] == 200 and a[2] == body[::-1]
    assert b[0] == 200 and b[2] == b"edcba"
    assert seen[0].query == {"x": "1"} and seen[0].header("host") == "x"
    # Content-Length over the limit: 413 and close, without reading the body
    [(st, hd, _)], _ = await http(app.http_port,
                                  b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n")
    assert st == 413 and hd["connection"] == "close"
    # chunked body growing over the limit
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(b"POST /sql HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    for _ in range(3):
        w.write(b"200\r\n" + b"x" * 512 + b"\r\n")
    st, _, _ = await read_response(r)
    assert st == 413
    w.close()


async def test_ws_echo_split_and_merged(echo_app: EchoApp) -> None:
    app, fake = echo_app
    payload = os.urandom(200_000)
    async with websockets.connect(app.ws_url + "?address=evil.example:5432", max_size=None) as ws:
        # one logical byte stream, sent as arbitrary pieces
        pieces = [payload[:1], payload[1:7], payload[7:50_000], payload[50_000:]]
        for p in pieces:
            await ws.send(p)
        got = b""
        while len(got) < len(payload):
            m = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(m, bytes)
            got += m
        assert got == payload
        # a fragmented message is the same byte stream
        await ws.send([b"ab", b"cd", b"ef"])
        got = b""
        while len(got) < 6:
            got += await asyncio.wait_for(ws.recv(), 10)
        assert got == b"abcdef"
    stream = fake.streams[0]
    assert stream.kind == "ws"
    assert stream.query["address"] == "evil.example:5432"
    assert stream.extensions == ["permessage-deflate"]


async def test_ws_text_frame_is_transport_error(echo_app: EchoApp) -> None:
    app, _ = echo_app
    async with websockets.connect(app.ws_url) as ws:
        await ws.send(b"ok")
        assert await ws.recv() == b"ok"
        await ws.send("select 1")
        msg = await asyncio.wait_for(ws.recv(), 10)
        assert msg.startswith(b"ERR:text WebSocket frame")
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1003


async def test_ws_error_response_from_real_encoder(echo_app: EchoApp) -> None:
    """What a session does on TransportError: ErrorResponse 08P01, then close."""
    from driver.protocol import messages
    from gateway.streams import TransportError
    app, fake = echo_app

    async def session(stream: Any) -> None:
        try:
            await stream.recv()
        except TransportError as e:
            await stream.send(messages.error("08P01", str(e)))
        await stream.close()

    fake.handle_client = session  # type: ignore[method-assign]
    assert app.http is not None
    app.http.add_websocket("/v2", session)
    async with websockets.connect(app.ws_url) as ws:
        await ws.send("text")
        msg = await asyncio.wait_for(ws.recv(), 10)
        assert msg[:1] == b"E" and b"08P01" in msg
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)


async def test_ws_ping_close_and_token(echo_app: EchoApp) -> None:
    app, fake = echo_app
    async with websockets.connect(app.ws_url + "?token=tok123",
                                  additional_headers={"Authorization": "Bearer other"}) as ws:
        pong = await ws.ping(b"hi")
        await asyncio.wait_for(pong, 10)
        await ws.send(b"x")
        assert await ws.recv() == b"x"
    stream = fake.streams[0]
    assert stream.token == "tok123" and stream.authorization == "Bearer other"
    async with websockets.connect(app.ws_url, additional_headers={"Authorization": "Bearer abc"}) as ws:
        await ws.send(b"y")
        assert await ws.recv() == b"y"
    assert fake.streams[1].token == "abc"
    # client close -> the session's recv() returned b"" and the session ended
    for s in fake.streams:
        assert s.at_eof


async def test_ws_server_close(echo_app: EchoApp) -> None:
    app, fake = echo_app
    async with websockets.connect(app.ws_url) as ws:
        stream = await asyncio.wait_for(fake.new_stream.get(), 10)
        await stream.close()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1000
    with pytest.raises(ConnectionResetError):
        await stream.send(b"late")


async def test_ws_any_path_upgrades_and_v2_requires_upgrade(echo_app: EchoApp) -> None:
    app, fake = echo_app
    async with websockets.connect(f"ws://127.0.0.1:{app.http_port}/app") as ws:
        await ws.send(b"z")
        assert await ws.recv() == b"z"
    assert fake.streams[0].path == "/app"
    [(st, hd, _)], _ = await http(app.http_port, b"GET /v2 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert st == 426 and hd["upgrade"] == "websocket"
    # a broken handshake (bad key) is refused by websockets with 400
    [(st, _, _)], _ = await http(app.http_port, b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
                                 b"Connection: Upgrade\r\nSec-WebSocket-Key: bad\r\n"
                                 b"Sec-WebSocket-Version: 13\r\n\r\n")
    assert st == 400


async def test_ws_first_frame_in_handshake_packet(echo_app: EchoApp) -> None:
    """Bytes after the handshake in the same TCP segment are not lost."""
    app, _ = echo_app
    key = base64.b64encode(os.urandom(16))
    payload = b"pipelined!"
    mask = os.urandom(4)
    frame = bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    w.write(b"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: " + key + b"\r\nSec-WebSocket-Version: 13\r\n\r\n" + frame)
    head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 101")
    hdr = await asyncio.wait_for(r.readexactly(2), 10)
    assert hdr == bytes([0x82, len(payload)])
    assert await r.readexactly(len(payload)) == payload
    w.close()


async def test_address_parameter_never_dialled(echo_app: EchoApp) -> None:
    app, _ = echo_app
    hits: list[int] = []
    trap = await asyncio.start_server(lambda r, w: hits.append(1), "127.0.0.1", 0)
    port = trap.sockets[0].getsockname()[1]
    try:
        async with websockets.connect(f"{app.ws_url}?address=127.0.0.1:{port}") as ws:
            await ws.send(b"q")
            assert await ws.recv() == b"q"
    finally:
        trap.close()
    assert hits == []


async def test_ws_backpressure_pauses_reading(echo_app: EchoApp) -> None:
    app, fake = echo_app
    fake.hold = asyncio.Event()
    total = 24 << 20
    chunk = os.urandom(64 << 10)
    async with websockets.connect(app.ws_url, max_size=None, write_limit=1 << 16, compression=None) as ws:
        stream = await asyncio.wait_for(fake.new_stream.get(), 10)

        async def sender() -> None:
            for _ in range(total // len(chunk)):
                await ws.send(chunk)

        send_task = asyncio.create_task(sender())
        # wait (bounded) until the gateway stops reading from this client
        for _ in range(1000):
            if stream._reading_paused or send_task.done():
                break
            await asyncio.sleep(0.01)
        assert stream._reading_paused, "reading was never paused"
        assert not send_task.done(), "client could push everything although nobody consumed"
        assert stream._buffered <= READ_HIGH_WATER + (1 << 18) + len(chunk)  # + one socket read
        fake.hold.set()

        async def reader() -> int:
            n = 0
            while n < total:
                n += len(await ws.recv())
            return n

        n = await asyncio.wait_for(reader(), 60)
        await asyncio.wait_for(send_task, 60)
        assert n == total


async def test_tcp_echo_eof_and_backpressure(echo_app: EchoApp) -> None:
    app, fake = echo_app
    assert app.pg_port
    r, w = await asyncio.open_connection("127.0.0.1", app.pg_port)
    sock = w.get_extra_info("socket")
    w.write(b"hello")
    assert await r.readexactly(5) == b"hello"
    stream = fake.streams[0]
    assert stream.kind == "tcp" and stream.peer.startswith("127.0.0.1:")
    assert stream.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    assert not stream.tls_available
    w.write_eof()
    assert await asyncio.wait_for(r.read(), 10) == b""   # session saw EOF and closed
    w.close()
    assert sock is not None

    fake.hold = asyncio.Event()
    r, w = await asyncio.open_connection("127.0.0.1", app.pg_port)
    stream = await asyncio.wait_for(fake.new_stream.get(), 10)
    stream = fake.streams[-1]
    block = b"x" * (1 << 20)

    async def pump() -> None:
        for _ in range(16):
            w.write(block)
            await w.drain()

    t = asyncio.create_task(pump())
    for _ in range(1000):
        if stream._reading_paused or t.done():
            break
        await asyncio.sleep(0.01)
    assert stream._reading_paused and not t.done()
    assert stream._buffered <= READ_HIGH_WATER + (1 << 18)
    fake.hold.set()
    got = 0
    while got < 16 << 20:
        got += len(await asyncio.wait_for(r.read(1 << 20), 20))
    await asyncio.wait_for(t, 20)
    w.close()


async def test_shutdown_stops_accepting(echo_app: EchoApp) -> None:
    app, fake = echo_app
    port, pg_port = app.http_port, app.pg_port
    async with websockets.connect(app.ws_url) as ws:
        await ws.send(b"a")
        assert await ws.recv() == b"a"
        await app.shutdown(timeout=1.5)
        assert fake.shutdown_called_with == 1.5
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
    for p in (port, pg_port):
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", p)


async def test_healthz_503_while_shutting_down() -> None:
    fake = EchoGateway()
    app = GatewayApp(build_config(None, pg_listen=None), gateway=fake)
    await app.start()
    assert app.pg_port is None
    assert app.is_ready()
    app._shutting_down = True
    try:
        [(st, _, _)], _ = await http(app.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert st == 503
    finally:
        await app.shutdown(0.5)


# --------------------------------------------------------------------------- with the real Gateway

async def test_real_gateway_ws_pipelined_and_metrics(gateway_app: Any) -> None:
    """StartupMessage + PasswordMessage + Query in ONE WebSocket message (Neon's
    pipelineConnect), the reply split arbitrarily; then /healthz and /metrics."""
    from driver.protocol import messages
    from tests.gateway.conftest import ALICE_PASSWORD
    app = await gateway_app(auth_type="password")
    blob = (messages.startup_message({"user": "alice", "database": "app"}) +
            messages.password_message(ALICE_PASSWORD) + messages.query("select 6 * 7 as answer"))
    async with websockets.connect(app.ws_url + "?address=127.0.0.1:1") as ws:
        await ws.send(blob)
        got = b""
        while True:
            got += await asyncio.wait_for(ws.recv(), 20)
            # parse only message headers: stop after the ReadyForQuery following the query
            pos, kinds = 0, []
            while pos + 5 <= len(got):
                n = int.from_bytes(got[pos + 1:pos + 5], "big")
                if pos + 1 + n > len(got):
                    break
                kinds.append(got[pos:pos + 1])
                pos += 1 + n
            if kinds.count(b"Z") >= 2 or b"E" in kinds:
                break
        assert b"E" not in kinds, got
        assert kinds[0] == b"R" and b"T" in kinds and b"D" in kinds
        assert b"42" in got
        await ws.send(messages.terminate())
    [(st, _, _)], _ = await http(app.http_port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert st == 200
    [(st, _, body)], _ = await http(app.http_port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert st == 200 and b"wirepool_pools_" in body and b"wirepool_clients" in body


async def test_real_gateway_pg_listen_asyncpg(gateway_app: Any) -> None:
    import asyncpg
    from tests.gateway.conftest import ALICE_PASSWORD
    app = await gateway_app()
    conn = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    try:
        assert await conn.fetchval("select 1 + 1") == 2
    finally:
        await conn.close()


@pytest.mark.parametrize("head", [
    b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n",        # 413 at once
    b"POST /sql HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",     # 413 mid-body
])
async def test_reply_survives_a_client_still_sending(echo_app: EchoApp, head: bytes) -> None:
    """A client still sending its body when the gateway answers and closes
    (413 here; 408 and 400 take the same path) reads the whole reply, then EOF:
    closing with unread input would send RST, which destroys the reply."""
    app, _ = echo_app
    assert app.http is not None
    app.http.max_body_size = 1000
    chunk = b"8000\r\n" + b"x" * 0x8000 + b"\r\n" if b"chunked" in head else b"x" * 0x8000
    for _ in range(5):
        r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
        w.write(head)
        sent = 0
        try:
            # keep the input flowing past the reply: the gateway sees unread bytes
            # whenever it closes (up to 4 MiB, which the kernel buffers cannot hold)
            while sent < 4 << 20:
                w.write(chunk)
                sent += len(chunk)
                await asyncio.wait_for(w.drain(), 10)
        except ConnectionError:
            pass
        st, hd, body = await read_response(r)
        assert st == 413 and hd["connection"] == "close" and body
        assert await asyncio.wait_for(r.read(), 10) == b""
        w.close()
