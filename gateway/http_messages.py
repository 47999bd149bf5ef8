"""Requests and responses of the ``listen`` port (gateway/http.py), and the
writer of streamed (chunked) response bodies such as Server-Sent Events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl, urlsplit

import h11


@dataclass
class HttpRequest:
    method: str
    target: str
    path: str
    query: dict[str, str]
    headers: list[tuple[str, str]]      # names lower-cased, values latin-1 decoded
    body: bytes
    peer: str
    http_version: str = "1.1"

    def header(self, name: str, default: str | None = None) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k == name:
                return v
        return default


def request_from(method: bytes, target: bytes, raw_headers: list[tuple[bytes, bytes]], version: bytes,
                 peer: str) -> tuple[HttpRequest, dict[str, str]]:
    """The request as the handlers see it (from h11's or gateway/http_fast.py's parse),
    and its headers' first values by name (as ``header`` gives them)."""
    target_s = target.decode("latin-1")
    parts = urlsplit(target_s)
    # (h11 lower-cases names with bytes.lower: the same as str.lower here, names being ASCII tokens)
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in raw_headers]
    req = HttpRequest(method.decode("ascii", "replace"), target_s, parts.path or "/",
                      dict(parse_qsl(parts.query, keep_blank_values=True)), headers, b"", peer,
                      version.decode("ascii", "replace"))
    return req, dict(reversed(headers))


@dataclass
class HttpResponse:
    status: int = 200
    body: bytes = b""
    content_type: str | None = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: a streamed body (e.g. SSE, gateway/listen_sse.py): ``await stream(write, transport)``
    #: after the headers; the connection closes when it returns or the client leaves
    stream: Any = None

    @classmethod
    def text(cls, status: int, text: str) -> "HttpResponse":
        return cls(status, text.encode())

    @classmethod
    def json(cls, status: int, obj: Any) -> "HttpResponse":
        import json
        return cls(status, json.dumps(obj, separators=(",", ":")).encode(), "application/json")


def reason(status: int) -> bytes:
    try:
        return HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""



_reason = reason

HttpHandler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def send_streamed(h: h11.Connection, tr: asyncio.Transport, resp: HttpResponse,
                        gone: Callable[[], bool]) -> None:
    """Headers (chunked), then ``resp.stream`` writes the body; ``gone()`` says
    the client left (writes stop).  The connection is closed after."""
    hdrs = [("content-type", resp.content_type or "application/octet-stream"), *resp.headers]
    tr.write(h.send(h11.Response(status_code=resp.status, headers=hdrs, reason=reason(resp.status))) or b"")

    def write(data: bytes) -> None:
        if not gone() and not tr.is_closing():
            tr.write(h.send(h11.Data(data=data)) or b"")

    try:
        await resp.stream(write, tr)
        if not gone() and not tr.is_closing():
            tr.write(h.send(h11.EndOfMessage()) or b"")
    finally:
        tr.close()
