"""The WebSocket opening handshake on the ``listen`` port (RFC 6455 section 4.2).

gateway/http.py parses the HTTP request (h11) and, for an upgrade on a
WebSocket route, calls :func:`plain_handshake` (the common case, answered
here without websockets' HTTP layer) or :func:`negotiated_handshake`
(extensions, subprotocols: websockets' own), then wraps the connection in a
:class:`gateway.websocket.WebSocketStream`.  Sans-I/O: request in, bytes to
write out.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import h11
from websockets.http11 import Request as WsRequest
from websockets.server import ServerProtocol

if TYPE_CHECKING:  # pragma: no cover
    from gateway.http_messages import HttpRequest

__all__ = ["negotiated_handshake", "plain_handshake", "ws_log"]

# websockets logs every open/close at INFO; keep that out of the gateway's logs by default.
ws_log = logging.getLogger("wirepool.websockets")
ws_log.setLevel(logging.WARNING)

_OWS = " \t"  # what bytes.strip() strips from an h11-checked value (str.strip() would also take \xa0)
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 section 1.3


def plain_handshake(req: "HttpRequest") -> bytes | None:
    """The common handshake without websockets' HTTP layer: a valid RFC 6455
    request with no extension or subprotocol offered is answered here (the
    same 101 websockets would send: returned, to write; the stream then makes
    its websockets protocol only if it ever needs one).  Anything else -> None
    (websockets handles it).  ``req``: the request as h11 parsed it (header
    names lower-cased, values latin-1 decoded)."""
    if req.http_version != "1.1":
        return None
    key = version = None
    upgrade_ok = conn_ok = False
    for name, value in req.headers:
        if name == "sec-websocket-key":
            if key is not None:
                return None
            key = value
        elif name == "sec-websocket-version":
            if version is not None:
                return None
            version = value
        elif name == "upgrade":
            if upgrade_ok or value.strip(_OWS).lower() != "websocket":
                return None
            upgrade_ok = True
        elif name == "connection":
            if any(tok.strip(_OWS).lower() == "upgrade" for tok in value.split(",")):
                conn_ok = True
        elif name in ("sec-websocket-extensions", "sec-websocket-protocol"):
            return None
    if key is None or version != "13" or not upgrade_ok or not conn_ok:
        return None
    bkey = key.encode("latin-1")
    try:
        if len(base64.b64decode(bkey, validate=True)) != 16:
            return None
    except binascii.Error:
        return None
    accept = base64.b64encode(hashlib.sha1(bkey + _WS_GUID).digest())
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def negotiated_handshake(ev: h11.Request, extensions: list[Any],
                         max_size: int | None) -> tuple[bytes, ServerProtocol | None, bool]:
    """Any other upgrade request, through websockets' HTTP layer (the request
    as received: method, target, header lines).  Returns (bytes to write, the
    OPEN protocol or None when refused, True when the request was not a
    WebSocket handshake at all -- answer 400)."""
    ws = ServerProtocol(extensions=extensions, max_size=max_size, logger=ws_log)
    raw = [b"GET ", ev.target, b" HTTP/1.1\r\n"]
    for name, value in ev.headers.raw_items():
        raw += [name, b": ", value, b"\r\n"]
    raw.append(b"\r\n")
    ws.receive_data(b"".join(raw))
    events = ws.events_received()
    wreq = events[0] if events and isinstance(events[0], WsRequest) else None
    if wreq is None:
        return b"".join(ws.data_to_send()), None, True
    response = ws.accept(wreq)
    ws.send_response(response)
    out = b"".join(ws.data_to_send())
    return out, (ws if response.status_code == 101 else None), False
