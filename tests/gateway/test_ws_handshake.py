"""gateway/ws_handshake.py (sans-I/O): the opening handshake answered without
websockets' HTTP layer, and the negotiated one through it."""

from __future__ import annotations

import base64
import os

import h11
import pytest
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import State

from gateway.http_messages import HttpRequest
from gateway.ws_handshake import negotiated_handshake, plain_handshake

_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example
_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
_BASE = [(b"Host", b"x"), (b"Upgrade", b"websocket"), (b"Connection", b"keep-alive, Upgrade"),
         (b"Sec-WebSocket-Version", b"13"), (b"Sec-WebSocket-Key", _KEY)]


def _h11(*extra: tuple[bytes, bytes], drop: bytes = b"", version: bytes = b"1.1",
         replace: dict[bytes, bytes] | None = None) -> h11.Request:
    headers = [(k, (replace or {}).get(k, v)) for k, v in _BASE if k.lower() != drop] + list(extra)
    return h11.Request(method="GET", target="/v2", http_version=version, headers=headers)


def _req(ev: h11.Request) -> HttpRequest:
    """The request as gateway/http.py hands it over (names lower-cased, values latin-1)."""
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers.raw_items()]
    return HttpRequest("GET", "/v2", "/v2", {}, headers, b"", "test", ev.http_version.decode())


def test_plain_handshake_answers_as_rfc_6455_says() -> None:
    answer = plain_handshake(_req(_h11()))
    assert answer == (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      b"Sec-WebSocket-Accept: " + _ACCEPT + b"\r\n\r\n")


def test_plain_handshake_accept_matches_websockets() -> None:
    ev = _h11(replace={b"Sec-WebSocket-Key": base64.b64encode(os.urandom(16))})
    ours = plain_handshake(_req(ev))
    theirs, ws, invalid = negotiated_handshake(ev, [], None)
    assert ours is not None and ws is not None and not invalid
    accept = [ln for ln in theirs.split(b"\r\n") if ln.lower().startswith(b"sec-websocket-accept:")]
    assert accept and accept[0].split(b":", 1)[1].strip() in ours


@pytest.mark.parametrize("ev", [
    _h11(version=b"1.0"),
    _h11(drop=b"sec-websocket-key"),
    _h11((b"Sec-WebSocket-Key", _KEY)),
    _h11((b"Sec-WebSocket-Version", b"13")),
    _h11((b"Sec-WebSocket-Extensions", b"permessage-deflate")),
    _h11((b"Sec-WebSocket-Protocol", b"pg")),
    _h11(drop=b"upgrade"),
    _h11(replace={b"Upgrade": b"h2c"}),
    _h11(drop=b"connection"),
    _h11(replace={b"Sec-WebSocket-Version": b"12"}),
    _h11(replace={b"Sec-WebSocket-Key": b"!!"}),
    _h11(replace={b"Sec-WebSocket-Key": base64.b64encode(b"short")}),
], ids=["http/1.0", "no key", "two keys", "two versions", "extension offered", "subprotocol offered",
        "no upgrade", "upgrade to another protocol", "no connection upgrade", "version 12", "key not base64",
        "key not 16 bytes"])
def test_plain_handshake_leaves_anything_else_to_websockets(ev: h11.Request) -> None:
    assert plain_handshake(_req(ev)) is None


def test_negotiated_handshake_accepts_permessage_deflate() -> None:
    ev = _h11((b"Sec-WebSocket-Extensions", b"permessage-deflate; client_max_window_bits"))
    out, ws, invalid = negotiated_handshake(ev, [ServerPerMessageDeflateFactory()], 1 << 20)
    assert not invalid and ws is not None and ws.state is State.OPEN
    assert out.startswith(b"HTTP/1.1 101 ") and b"permessage-deflate" in out.lower()
    assert [e.name for e in ws.extensions] == ["permessage-deflate"]


def test_negotiated_handshake_refuses_a_bad_version() -> None:
    out, ws, invalid = negotiated_handshake(_h11(replace={b"Sec-WebSocket-Version": b"12"}), [], None)
    assert ws is None and not invalid
    assert out.startswith(b"HTTP/1.1 400 ") and b"Sec-WebSocket-Version" in out
