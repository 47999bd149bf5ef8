"""The common WebSocket upgrade request parsed in C: ``httptools`` (llhttp,
Node's HTTP parser; what uvicorn uses, with h11 as its fallback too).

h11 (gateway/http.py) parses every other request, and this one too when
``httptools`` is not installed.  Parsing an edge function's upgrade request
with h11 was ~2,700 of the ~16,000 Python bytecodes of a WebSocket session
(``python -m bench.tx_steps --ws scram``); through llhttp it is ~200.

Only what h11 would parse *the same way* is taken here: a complete
``GET <target> HTTP/1.1`` head in canonical form (CRLF line ends, one
``Name: value`` per line, no obs-fold, no whitespace around values), every
byte of which matches h11's own grammar (h11/_abnf.py, RFC 7230), that llhttp
reports as an upgrade.  Anything else -- incomplete after the first blank
line, another method or version, a malformed or unusual line, whatever llhttp
refuses -- returns None, and h11, which has been fed the same bytes all
along, parses the request as before: its answers to bad input are unchanged.
:func:`plain_upgrade` adds the route's and the handshake's checks (a
WebSocket route, a plain handshake: gateway/ws_handshake.py); gateway/http.py
feeds it the first request's bytes of a connection.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from gateway.http_messages import HttpRequest, request_from
from gateway.ws_handshake import plain_handshake

if TYPE_CHECKING:
    from gateway.http_listener import HttpListener, StreamHandler

try:
    import httptools
except ImportError:  # pragma: no cover - the gateway extra installs it
    httptools = None  # type: ignore[assignment]

__all__ = ["HEAD_LIMIT", "available", "head_end", "parse_upgrade", "plain_upgrade"]

#: a longer head is left to h11 (an upgrade request is ~250-1,000 bytes): while the
#: first request's head is read it is buffered twice (here and in h11), this much at most
HEAD_LIMIT = 8192
_GET = b"GET "
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 ends a head (h11/_receivebuffer.py)
# h11's grammar (h11/_abnf.py: request_line, header_field with field_name/field_value) in canonical form
_TOKEN = rb"[-!#$%&'*+.^_`|~0-9a-zA-Z]+"
_VALUE = rb"(?:[^\x00\s]+(?:[ \t]+[^\x00\s]+)*)?"
_HOST = re.compile(rb"\r\nhost:", re.IGNORECASE)
_BODY = re.compile(rb"\r\n(?:content-length|transfer-encoding):", re.IGNORECASE)
_CANONICAL = re.compile(rb"GET [\x21-\x7e]+ HTTP/1\.1\r\n(?:" + _TOKEN + rb": " + _VALUE + rb"\r\n)*\r\n")


def available() -> bool:
    """Is the C parser installed (else every request goes to h11)?"""
    return httptools is not None


def head_end(head: bytes | bytearray, start: int, limit: int) -> int:
    """End of the head (after its blank line, searched from ``start``); -1:
    not there yet; 0: not for this parser -- over ``limit`` bytes, or not
    starting as a ``GET`` (h11 answers an invalid request line at once,
    before the head is complete: so must we)."""
    if len(head) > limit or not (head.startswith(_GET) if len(head) >= 4 else _GET.startswith(head)):
        return 0
    m = _HEAD_END.search(head, start)
    return -1 if m is None else m.end()


class _Head:
    __slots__ = ("url", "headers")

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))


def parse_upgrade(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]], bytes] | None:
    """(target, headers as sent, the bytes after the head) of a complete
    upgrade request without a body that h11 would parse into the same, or
    None (h11's turn)."""
    if httptools is None:
        return None
    h = _Head()
    try:
        httptools.HttpRequestParser(h).feed_data(head)
    except httptools.HttpParserUpgrade as e:
        end = e.args[0]
    except httptools.HttpParserError:
        return None
    else:
        return None  # not an upgrade, or more than the head
    m = _CANONICAL.match(head)
    if m is None or m.end() != end:
        return None
    # llhttp's view of the head must be the bytes as they are (h11's view)
    raw = b"".join([b"GET ", h.url, b" HTTP/1.1\r\n", *[b"%s: %s\r\n" % nv for nv in h.headers], b"\r\n"])
    if len(raw) != end or not head.startswith(raw):
        return None
    # h11's checks of a request (one Host), and no body (h11 would read one); in a
    # canonical head, CRLF + name + ":" is where a header starts, and only there
    if len(_HOST.findall(head, 0, end)) != 1 or _BODY.search(head, 0, end) is not None:
        return None
    return h.url, h.headers, head[end:]


def plain_upgrade(head: bytes, listener: "HttpListener",
                  peer: str) -> tuple[HttpRequest, "StreamHandler", bytes, bytes] | None:
    """(the request, its WebSocket handler, the 101 to write, the bytes after
    the head) when ``head`` is a plain upgrade on a WebSocket route; else None
    (h11's turn: another route, a body, a negotiated or invalid handshake...)."""
    parsed = parse_upgrade(head)
    if parsed is None:
        return None
    target, raw_headers, rest = parsed
    req, first = request_from(b"GET", target, raw_headers, b"1.1", peer)
    on_stream = listener.stream_for("GET", req.path, first.get("upgrade"))
    if on_stream is None:
        return None
    answer = plain_handshake(req)
    if answer is None:
        return None
    return req, on_stream, answer, rest
