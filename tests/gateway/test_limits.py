"""Pre-login limits, per-message and HTTP read deadlines, connection caps
(issue 11 F1/F4; gateway/limits.py).  Real gateway, real PostgreSQL, raw
clients sending exactly the hostile bytes."""

from __future__ import annotations

import asyncio
import logging
import struct
import time

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, eventually, rows

BIG = 15 << 20  # a 15 MiB message, as in the finding


async def _expect_fatal_then_eof(c: RawClient, sqlstate: str, timeout: float = 3.0) -> m.ErrorResponse:
    """The next messages end with an ErrorResponse ``sqlstate`` and EOF, within ``timeout``."""
    msgs = await c.read_to_eof(timeout=timeout)
    errs = errors(msgs)
    assert errs and errs[-1].sqlstate == sqlstate, msgs
    return errs[-1]


async def _password_prompt(app) -> RawClient:
    c = await RawClient.connect(app.pg_port)
    await c.send(m.startup_message({"user": "alice", "database": "app"}))
    msg = await c.recv_message()
    assert isinstance(msg, m.AuthenticationRequest) and msg.code == m.AUTH_CLEARTEXT_PASSWORD, msg
    return c


# ------------------------------------------------------------------ F1: before login

async def test_oversized_auth_message_closes_at_once(gateway_app):
    """A 15 MiB PasswordMessage header before login: FATAL 08P01 at the
    header (Postgres caps auth messages at 65,535), nothing of it buffered."""
    app = await gateway_app(auth_type="password")
    c = await _password_prompt(app)
    try:
        await c.send(b"p" + struct.pack("!i", BIG) + b"x" * 1000)
        err = await _expect_fatal_then_eof(c, "08P01")
        assert "65535" in err.message
    finally:
        await c.close()


async def test_impossible_type_before_login_closes_at_once(gateway_app):
    """Only a PasswordMessage may follow the startup packet: another type
    byte closes the connection before its (incomplete) body arrives."""
    app = await gateway_app(auth_type="password")
    c = await _password_prompt(app)
    try:
        await c.send(b"\xff" + struct.pack("!i", 1000) + b"x" * 10)  # 990 bytes still "to come"
        await _expect_fatal_then_eof(c, "08P01")
    finally:
        await c.close()


async def test_oversized_startup_packet_closes_at_once(gateway_app):
    app = await gateway_app()
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(struct.pack("!ii", 10001, 196608) + b"u" * 100)
        await _expect_fatal_then_eof(c, "08P01")
    finally:
        await c.close()


async def test_websocket_large_frame_before_login_closes_at_once(gateway_app):
    """WebSocket /v2: a 15 MiB frame carrying a 15 MiB password message is not
    buffered whole -- the message header inside it ends the session at once."""
    app = await gateway_app(auth_type="password")
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        w.write(b"GET /v2 HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n")
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert b" 101 " in head

        def frame(payload: bytes, length: int | None = None) -> bytes:
            n = len(payload) if length is None else length
            hdr = bytes([0x82, 0x80 | 127]) + n.to_bytes(8, "big") if n > 65535 else (
                bytes([0x82, 0x80 | 126]) + n.to_bytes(2, "big") if n > 125 else bytes([0x82, 0x80 | n]))
            return hdr + b"\x00\x00\x00\x00" + payload  # zero mask: payload as is

        w.write(frame(m.startup_message({"user": "alice", "database": "app"})))
        body = b"p" + struct.pack("!i", BIG) + b"x" * ((1 << 20) - 5)
        w.write(frame(body, length=BIG + 5))  # the frame announces 15 MiB; 1 MiB is sent
        await w.drain()
        data = b""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            chunk = await asyncio.wait_for(r.read(65536), deadline - time.monotonic())
            if not chunk:
                break
            data += chunk
            if b"08P01" in data:
                break
        assert b"08P01" in data, data[:200]
    finally:
        w.close()


async def test_websocket_deflate_frame_before_login_is_capped(gateway_app):
    """permessage-deflate frames are parsed whole by websockets: before login
    they are capped at login_buffer_size (close 1009), after login they may be
    up to max_message_size."""
    app = await gateway_app(auth_type="password", login_buffer_size=65536)
    async with websockets.connect(app.ws_url, compression="deflate", max_size=None) as ws:
        assert ws.protocol.extensions, "the test needs permessage-deflate negotiated"
        await ws.send(m.startup_message({"user": "alice", "database": "app"}))
        await ws.recv()  # AuthenticationCleartextPassword
        import os
        await ws.send(os.urandom(200_000))  # incompressible: a 200 kB frame
        with pytest.raises(ConnectionClosed) as info:
            await asyncio.wait_for(ws.recv(), 5)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


async def test_logged_in_websocket_accepts_large_deflate_frames(gateway_app):
    import driver
    app = await gateway_app(auth_type="password", login_buffer_size=65536)
    conn = await driver.connect(app.ws_dsn("alice", ALICE_PASSWORD, "app"))
    try:
        text = "y" * 300_000
        assert await conn.fetchval("select length($1::text)", text) == len(text)
    finally:
        await conn.close()


async def test_max_login_clients(gateway_app, caplog):
    """Connections still logging in are capped: the next one gets 53300 at
    once (and a log line); logged-in clients do not count."""
    app = await gateway_app(auth_type="password", max_login_clients=2)
    caplog.set_level(logging.WARNING, logger="wirepool.limits")
    ok = await RawClient.connect(app.pg_port)
    assert not errors(await ok.login("alice", ALICE_PASSWORD, "app"))
    idle = [await RawClient.connect(app.pg_port) for _ in range(2)]  # say nothing
    try:
        await eventually(lambda: app.gateway.limits.logging_in == 2, what="two logins pending")
        third = await RawClient.connect(app.pg_port)
        await _expect_fatal_then_eof(third, "53300")
        assert any("max_login_clients" in r.getMessage() for r in caplog.records)
        assert rows(await ok.query("select 7")) == [("7",)]  # a logged-in client is unaffected
        idle[0].abort()
        await eventually(lambda: app.gateway.limits.logging_in == 1, what="a login slot freed")
        fourth = await RawClient.connect(app.pg_port)
        assert not errors(await fourth.login("alice", ALICE_PASSWORD, "app"))
        await fourth.close()
    finally:
        for c in idle[1:]:
            await c.close()
        await ok.close()


def test_shed_log_is_rate_limited(caplog):
    from gateway.limits import ShedLog
    now = [0.0]
    sl = ShedLog(interval=10.0, clock=lambda: now[0])
    caplog.set_level(logging.WARNING, logger="wirepool.limits")
    logged = [sl.shed("cap", "p") for _ in range(100)]
    now[0] = 11.0
    logged.append(sl.shed("cap", "p"))
    assert logged.count(True) == 2 and logged[0] and logged[-1]
    assert "100 since the last report" in caplog.records[-1].getMessage()  # 99 folded + this one
    assert sl.totals["cap"] == 101


# ------------------------------------------------------------------ F1: after login

async def test_partial_message_is_not_held_forever(gateway_app):
    app = await gateway_app(auth_type="password", client_message_timeout=0.5)
    c = await RawClient.connect(app.pg_port)
    try:
        assert not errors(await c.login("alice", ALICE_PASSWORD, "app"))
        await c.send(b"Q" + struct.pack("!i", 1 << 20) + b"select ")  # then silence
        err = await _expect_fatal_then_eof(c, "08P01", timeout=5.0)
        assert "client_message_timeout" in err.message
    finally:
        await c.close()


async def test_steady_messages_are_not_cut_by_the_message_timeout(gateway_app):
    """Each message gets its own deadline: a client whose chunks always end
    mid-message but keep completing messages stays."""
    app = await gateway_app(auth_type="password", client_message_timeout=0.6)
    c = await RawClient.connect(app.pg_port)
    try:
        assert not errors(await c.login("alice", ALICE_PASSWORD, "app"))
        q = m.query("select 1")
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:  # 0.3 s per half message, 1.5 s in all
            await c.send(q[:5])
            await asyncio.sleep(0.3)
            await c.send(q[5:])
            assert rows(await c.until(m.ReadyForQuery)) == [("1",)]
    finally:
        await c.close()


def test_reader_releases_a_large_message_buffer():
    """After a large message the reader's buffer shrinks even when a partial
    next message is buffered (it used to stay at the large size)."""
    import sys
    from driver.protocol.framing import MessageReader
    r = MessageReader()
    big = m.query("x" * (8 << 20))
    r.feed(big[: 1 << 20])
    r.feed(big[1 << 20 :] + b"Q\x00\x00")  # the start of the next message
    chunk, idx = r.read_raw()
    assert len(idx) == 1 and len(chunk) == len(big)
    assert r.buffered == 3
    assert sys.getsizeof(r._buf) < 1 << 16


# ------------------------------------------------------------------ F4: HTTP read deadlines and caps

async def _trickle(port: int, head: bytes, drip: bytes, interval: float, limit: float) -> tuple[float, bytes]:
    """Send ``head``, then ``drip`` one byte per ``interval``; returns (seconds
    until the gateway closed, what it answered).  Fails after ``limit``."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t0 = time.monotonic()
    w.write(head)
    got = b""

    async def reader() -> None:
        nonlocal got
        while True:
            chunk = await r.read(4096)
            if not chunk:
                return
            got += chunk

    rt = asyncio.create_task(reader())
    try:
        for b in drip:
            if rt.done():
                break
            try:
                w.write(bytes([b]))
                await w.drain()
            except ConnectionError:
                break
            try:
                await asyncio.wait_for(asyncio.shield(rt), interval)
            except asyncio.TimeoutError:
                pass
            assert time.monotonic() - t0 < limit, "the slow client was never cut off"
        await asyncio.wait_for(rt, limit)
        return time.monotonic() - t0, got
    finally:
        rt.cancel()
        w.close()


async def test_slow_headers_cut_at_client_login_timeout(gateway_app, caplog):
    app = await gateway_app(client_login_timeout=1.0)
    caplog.set_level(logging.WARNING, logger="wirepool.limits")
    took, got = await _trickle(app.http_port, b"GET /healthz HTTP/1.1\r\n",
                               b"x-slow: " + b"a" * 400, interval=0.1, limit=10)
    assert took < 4, took
    assert got.startswith(b"HTTP/1.1 408"), got
    assert any("slow client" in r.getMessage() for r in caplog.records)


async def test_slow_body_cut_at_minimum_rate(gateway_app):
    app = await gateway_app(client_login_timeout=0.5, http_min_body_rate=1000)
    head = b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    took, got = await _trickle(app.http_port, head, b"{" * 1000, interval=0.05, limit=10)
    assert took < 4, took
    assert got.startswith(b"HTTP/1.1 408"), got


async def test_body_at_a_normal_rate_is_accepted(gateway_app):
    """A body sent in pieces within the rate is read whole (the deadline grows with it)."""
    app = await gateway_app(client_login_timeout=0.3, http_min_body_rate=100_000)
    import json
    body = json.dumps({"query": "select $1::int as n", "params": [5]}).encode() + b" " * 200_000
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        w.write(b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                + f"neon-connection-string: postgresql://alice:{ALICE_PASSWORD}@x/app\r\n".encode()
                + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode())
        for i in range(0, len(body), 50_000):  # 4 pieces, 0.2 s apart: ~250 kB/s
            w.write(body[i : i + 50_000])
            await w.drain()
            await asyncio.sleep(0.2)
        data = await asyncio.wait_for(r.read(), 10)
        assert data.startswith(b"HTTP/1.1 200"), data[:300]
    finally:
        w.close()


async def _idle_http(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _get(port: int, path: str = "/healthz") -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
        return await asyncio.wait_for(r.read(), 5)
    finally:
        w.close()


async def test_max_http_conn_evicts_the_longest_waiting_connection(gateway_app, caplog):
    """At max_http_conn a new client is still served: the connection that has
    waited longest for a request (a slowloris) is closed to make room, and the
    shed is logged; pg_listen is not affected."""
    app = await gateway_app(max_http_conn=2)
    caplog.set_level(logging.WARNING, logger="wirepool.limits")
    first = await _idle_http(app.http_port)
    await eventually(lambda: app.gateway.limits.http_open == 1, what="one HTTP connection open")
    second = await _idle_http(app.http_port)
    await eventually(lambda: app.gateway.limits.http_open == 2, what="two HTTP connections open")
    try:
        got = await _get(app.http_port)
        assert got.startswith(b"HTTP/1.1 200"), got
        assert any("max_http_conn" in r.getMessage() and "longest-waiting" in r.getMessage()
                   for r in caplog.records)
        # the oldest idle connection was the one closed; the other is still open
        assert await asyncio.wait_for(first[0].read(), 5) == b""
        assert not second[0].at_eof()
        c = await RawClient.connect(app.pg_port)
        assert not errors(await c.login("alice", ALICE_PASSWORD, "app"))
        await c.close()
    finally:
        for _, w in (first, second):
            w.close()
    await eventually(lambda: app.gateway.limits.http_open == 0, what="HTTP slots freed")


async def test_http_connections_count_toward_max_client_conn(gateway_app):
    """Open HTTP connections count toward max_client_conn: a pg_listen login
    past it gets 53300, and no more HTTP connections than max_client_conn
    are held open (the next one evicts the longest-waiting idle connection)."""
    app = await gateway_app(max_client_conn=3)
    c = await RawClient.connect(app.pg_port)
    assert not errors(await c.login("alice", ALICE_PASSWORD, "app"))
    conns = [await _idle_http(app.http_port) for _ in range(2)]
    try:
        await eventually(lambda: app.gateway.limits.http_open == 2, what="two HTTP connections open")
        d = await RawClient.connect(app.pg_port)
        msgs = await d.login("alice", ALICE_PASSWORD, "app")
        assert [e.sqlstate for e in errors(msgs)] == ["53300"], msgs
        await d.close()
        await c.close()
        conns.append(await _idle_http(app.http_port))
        await eventually(lambda: app.gateway.limits.http_open == 3, what="three HTTP connections open")
        got = await _get(app.http_port)
        assert got.startswith(b"HTTP/1.1 200"), got
        assert app.gateway.limits.http_open <= 3
        assert await asyncio.wait_for(conns[0][0].read(), 5) == b""
    finally:
        for _, w in conns:
            w.close()


async def test_socket_receive_buffer_is_small_until_login(gateway_app):
    """Before login the kernel buffers little for the connection and no read
    returns more than that (200 x 15 MiB senders then cost the gateway ~10 MB
    of RSS, not ~160 MB); after login the buffer is large again."""
    import socket as so
    app = await gateway_app(auth_type="password")

    def rcvbuf() -> int:
        (s,) = [x for x in app.gateway._all_sessions]
        return s.stream.transport.get_extra_info("socket").getsockopt(so.SOL_SOCKET, so.SO_RCVBUF)

    c = await _password_prompt(app)
    try:
        assert rcvbuf() <= 4 * 16384
        await c.send(m.password_message(ALICE_PASSWORD))
        assert isinstance((await c.until(m.ReadyForQuery))[-1], m.ReadyForQuery)
        assert rcvbuf() > 4 * 16384
    finally:
        await c.close()
