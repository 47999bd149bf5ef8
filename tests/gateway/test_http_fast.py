"""gateway/http_fast.py: the plain WebSocket upgrade parsed by httptools, h11 the fallback.

Every request is sent twice to the same gateway, with the C parser and
without it (h11 alone, as when httptools is not installed): the answers must
be the same, and the common upgrade must actually take the fast path."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from gateway import http_fast
from gateway.app import GatewayApp
from gateway.http import HttpConnection
from tests.gateway.conftest import EchoGateway

EchoApp = tuple[GatewayApp, EchoGateway]

KEY = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
WS = b"Upgrade: websocket\r\nConnection: Upgrade\r\n" + KEY + b"Sec-WebSocket-Version: 13\r\n"
CANONICAL = b"GET /v2 HTTP/1.1\r\nHost: x\r\n" + WS + b"User-Agent: t/1\r\n\r\n"


def _frame(payload: bytes) -> bytes:
    mask = os.urandom(4)
    return bytes([0x82, 0x80 | len(payload)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


#: (name, request bytes, sent in pieces of this size or 0: at once, taken by the C parser?)
CASES: list[tuple[str, bytes, int, bool]] = [
    ("canonical", CANONICAL, 0, True),
    ("token query", CANONICAL.replace(b"/v2", b"/v2?token=abc&lazy_connect=true&x=%41"), 0, True),
    ("byte by byte", CANONICAL, 1, True),
    ("frame pipelined", CANONICAL + _frame(b"early"), 0, True),
    ("two Host headers", CANONICAL.replace(b"Host: x\r\n", b"Host: x\r\nHost: y\r\n"), 0, False),
    ("no Host", CANONICAL.replace(b"Host: x\r\n", b""), 0, False),
    ("Content-Length 0", CANONICAL.replace(b"Host: x\r\n", b"Host: x\r\nContent-Length: 0\r\n"), 0, False),
    ("a body", CANONICAL.replace(b"Host: x\r\n", b"Host: x\r\nContent-Length: 3\r\n") + b"abc", 0, False),
    ("chunked body", CANONICAL.replace(b"Host: x\r\n", b"Host: x\r\nTransfer-Encoding: chunked\r\n")
     + b"3\r\nabc\r\n0\r\n\r\n", 0, False),
    ("no space after colon", CANONICAL.replace(b"Host: x", b"Host:x"), 0, False),
    ("space before colon", CANONICAL.replace(b"Host: x", b"Host : x"), 0, False),
    ("trailing whitespace", CANONICAL.replace(b"Host: x", b"Host: x \t"), 0, False),
    ("obs-fold", CANONICAL.replace(b"User-Agent: t/1\r\n", b"User-Agent: t/1\r\n more\r\n"), 0, False),
    ("bare LF", CANONICAL.replace(b"\r\n", b"\n"), 0, False),
    ("NUL in a value", CANONICAL.replace(b"t/1", b"t\x00/1"), 0, False),
    ("non-ASCII target", CANONICAL.replace(b"/v2", b"/v2?x=\xe9"), 0, False),
    ("HTTP/1.0", CANONICAL.replace(b"HTTP/1.1", b"HTTP/1.0"), 0, False),
    ("lower-case method", CANONICAL.replace(b"GET", b"get"), 0, False),
    ("POST", CANONICAL.replace(b"GET", b"POST"), 0, False),
    ("no Connection: upgrade", CANONICAL.replace(b"Connection: Upgrade", b"Connection: keep-alive"), 0, False),
    ("bad key", CANONICAL.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"abc"), 0, False),
    ("subprotocol offered", CANONICAL.replace(b"User-Agent", b"Sec-WebSocket-Protocol: x\r\nX"),
     0, False),
    ("no WebSocket route", CANONICAL.replace(b"/v2", b"/healthz"), 0, False),
    ("TLS hello", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40), 0, False),
    ("head over 16 KB", b"GET /v2 HTTP/1.1\r\nHost: x\r\nX: " + b"a" * (17 << 10), 4096, False),
    ("head over HEAD_LIMIT", CANONICAL.replace(b"User-Agent: t/1", b"X: " + b"a" * http_fast.HEAD_LIMIT), 0, False),
]


async def _exchange(app: GatewayApp, raw: bytes, piece: int) -> tuple[bytes, bytes]:
    """(status line, what followed: the echo of a frame after a 101, else the rest up to EOF)."""
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        if piece:
            for i in range(0, len(raw), piece):
                w.write(raw[i:i + piece])
                await w.drain()
        else:
            w.write(raw)
        status = await asyncio.wait_for(r.readline(), 20)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 20)
        if b" 101 " not in status:
            length = [ln.split(b":")[1] for ln in head.lower().split(b"\r\n") if ln.startswith(b"content-length:")]
            return status, await asyncio.wait_for(r.readexactly(int(length[0])), 20)
        w.write(_frame(b"ping"))
        got = b""
        while not got.endswith(b"ping"):
            b0, n = await asyncio.wait_for(r.readexactly(2), 20)
            assert b0 == 0x82 and n < 126
            got += await asyncio.wait_for(r.readexactly(n), 20)
        return status, got
    finally:
        w.close()


@pytest.mark.parametrize("name,raw,piece,fast", CASES, ids=[c[0] for c in CASES])
async def test_same_answer_with_and_without_the_c_parser(echo_app: EchoApp, monkeypatch: Any,
                                                         name: str, raw: bytes, piece: int, fast: bool) -> None:
    assert http_fast.available()  # the gateway extra installs httptools
    app, _ = echo_app
    taken: list[bool] = []
    fast_upgrade = HttpConnection._fast_upgrade

    def counted(self: HttpConnection) -> bytes | None:
        out = fast_upgrade(self)
        taken.append(out is not None)  # answered without h11
        return out

    monkeypatch.setattr(HttpConnection, "_fast_upgrade", counted)
    with_c = await _exchange(app, raw, piece)
    assert any(taken) == fast
    monkeypatch.setattr(http_fast, "httptools", None)  # h11 alone
    taken.clear()
    h11_only = await _exchange(app, raw, piece)
    assert not any(taken)
    assert with_c == h11_only
    if fast:
        assert with_c[0].startswith(b"HTTP/1.1 101 ") and with_c[1].endswith(b"ping")
        if name == "frame pipelined":
            assert with_c[1] == b"earlyping"


def test_parse_upgrade_only_canonical_heads() -> None:
    target, headers, rest = http_fast.parse_upgrade(CANONICAL + b"\x82") or (b"", [], b"")
    assert target == b"/v2" and rest == b"\x82"
    assert headers[0] == (b"Host", b"x") and len(headers) == 6
    for raw in (CANONICAL[:-2], CANONICAL.replace(b"Host: x", b"Host:  x"), CANONICAL.replace(b"\r\n", b"\n"),
                CANONICAL.replace(b"GET", b"PUT"), CANONICAL.replace(b"Connection: Upgrade", b"Connection: close"),
                CANONICAL.replace(b"Host: x\r\n", b""), CANONICAL.replace(b"Host: x", b"Host: x\r\nhost: y"),
                CANONICAL.replace(b"Host: x", b"Host: x\r\nContent-Length: 0")):
        assert http_fast.parse_upgrade(raw) is None, raw
    assert http_fast.head_end(b"GE", 0, 100) == -1 and http_fast.head_end(b"POST /", 0, 100) == 0
    assert http_fast.head_end(CANONICAL, 0, 1000) == len(CANONICAL) and http_fast.head_end(CANONICAL[:-1], 0, 1000) == -1
    assert http_fast.head_end(CANONICAL, 0, 10) == 0  # over the limit: h11's 431
