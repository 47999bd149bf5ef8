"""LISTEN for ``http://`` / ``https://`` connections: the gateway's ``GET /listen`` (Server-Sent Events).

Protocol-over-HTTP (``POST /pg``) is request/response: nothing can arrive
between requests.  So ``add_listener`` on an http(s) connection opens one
streaming ``GET /listen?database=..&channel=a&channel=b`` per connection
(credentials as for ``/pg``: Basic user:password, or ``Bearer`` with the DSN's
``?token=``) and hands each ``notification`` event to the connection's
listeners exactly like a NotificationResponse; ``gap`` and ``error`` events
reach the log listeners as a WARNING (``PostgresLogMessage``, SQLSTATE 01000).
When the channel set changes or the stream ends, it reconnects with
``Last-Event-ID`` so the gateway's backlog fills what was missed (a ``gap``
event says when it cannot).  ``add_listener`` returns once the gateway says
the stream is LISTENing (the ``: listening`` comment).

Standard library only.  Under Pyodide the stream is the JS ``fetch`` with a
``ReadableStream`` reader; elsewhere a minimal HTTP/1.1 GET on asyncio streams
(chunked transfer decoded here).
"""

from __future__ import annotations

import asyncio
import base64
import json
import ssl as ssl_module
import sys
from typing import Any, AsyncIterator
from urllib.parse import quote

from .transport.base import Endpoint, TransportError

__all__ = ["SseParser", "SseListener", "sse_for"]

PATH = "/listen"
RECONNECT_DELAY = 0.5


class SseParser:
    """``text/event-stream`` bytes -> events ``{"id", "event", "data"}`` and comments."""

    def __init__(self) -> None:
        self._buf = b""
        self._ev: dict[str, str] = {}

    def feed(self, data: bytes) -> list[tuple[str, Any]]:
        """-> [("event", {...}) | ("comment", text)]"""
        self._buf += data
        out: list[tuple[str, Any]] = []
        while True:
            i = self._buf.find(b"\n")
            if i < 0:
                return out
            line = self._buf[:i].rstrip(b"\r").decode("utf-8", "replace")
            self._buf = self._buf[i + 1:]
            if not line:
                if "data" in self._ev or "event" in self._ev:
                    out.append(("event", self._ev))
                self._ev = {}
            elif line.startswith(":"):
                out.append(("comment", line[1:].strip()))
            else:
                k, _, v = line.partition(":")
                v = v[1:] if v.startswith(" ") else v
                if k == "data" and "data" in self._ev:
                    v = self._ev["data"] + "\n" + v
                self._ev[k] = v


def sse_for(conn: Any) -> "SseListener | None":
    """The connection's SSE listener (http/https connections only; created on first use)."""
    ep: Endpoint | None = getattr(conn, "_endpoint", None)
    if ep is None or ep.scheme not in ("http", "https"):
        return None
    sse: SseListener | None = getattr(conn, "_sse", None)
    if sse is None:
        sse = SseListener(conn, ep)
        conn._sse = sse
    return sse


class SseListener:
    def __init__(self, conn: Any, endpoint: Endpoint) -> None:
        self.conn = conn
        self.endpoint = endpoint
        self.channels: list[str] = []
        self.last_id: str | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready: asyncio.Future[None] | None = None
        self._closed = False

    async def listen(self, channel: str) -> None:
        if channel not in self.channels:
            self.channels.append(channel)
            await self._restart()

    async def unlisten(self, channel: str) -> None:
        if channel in self.channels:
            self.channels.remove(channel)
            await self._restart()

    def close(self) -> None:
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _restart(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:
                pass
            self._task = None
        if not self.channels or self._closed:
            return
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._task = loop.create_task(self._run(self._ready))
        await asyncio.shield(self._ready)

    # ------------------------------------------------------------ the stream
    def _target(self) -> tuple[str, list[tuple[str, str]]]:
        from .transport.http import http_target

        _path, database, query = http_target(self.endpoint)
        params = self.endpoint.options.get("params")
        user = getattr(params, "user", "") or ""
        password = getattr(params, "password", None)
        token = query.get("token")
        qs = "&".join([f"database={quote(database, safe='')}"] +
                      [f"channel={quote(c, safe='')}" for c in self.channels])
        headers = [("accept", "text/event-stream"), ("cache-control", "no-store")]
        if token:
            headers.append(("authorization", f"Bearer {token}"))
            if user:
                headers.append(("wirepool-user", user))
        else:
            cred = base64.b64encode(f"{user}:{password or ''}".encode()).decode()
            headers.append(("authorization", f"Basic {cred}"))
        if self.last_id:
            headers.append(("last-event-id", self.last_id))
        return f"{PATH}?{qs}", headers

    async def _run(self, ready: "asyncio.Future[None]") -> None:
        while not self._closed:
            try:
                target, headers = self._target()
                opener = _fetch_stream if sys.platform == "emscripten" else _socket_stream
                parser = SseParser()
                async for chunk in opener(self.endpoint, target, headers):
                    for kind, val in parser.feed(chunk):
                        self._handle(kind, val, ready)
            except asyncio.CancelledError:
                raise
            except _HttpError as exc:
                if not ready.done():  # refused at once: add_listener raises
                    ready.set_exception(exc.to_exception())
                    return
                self._warn(f"LISTEN stream refused: {exc.message}")
            except Exception as exc:
                if not ready.done():
                    ready.set_exception(TransportError(f"GET {PATH} failed: {exc}"))
                    return
                self._warn(f"LISTEN stream broken ({exc}); reconnecting")
            await asyncio.sleep(RECONNECT_DELAY)

    def _handle(self, kind: str, val: Any, ready: "asyncio.Future[None]") -> None:
        if kind == "comment":
            if val == "listening" and not ready.done():
                ready.set_result(None)
            return
        event = val.get("event", "message")
        try:
            data = json.loads(val.get("data", "null"))
        except ValueError:
            data = None
        if event == "notification" and isinstance(data, dict):
            if "id" in val:
                self.last_id = val["id"]
            from .protocol.client import Notification

            self.conn._notification(Notification(int(data.get("pid", 0)), str(data.get("channel", "")),
                                                 str(data.get("payload", ""))))
        elif event in ("gap", "error") and isinstance(data, dict):
            self._warn(str(data.get("reason") or data.get("message") or event), data.get("code") or "01000")

    def _warn(self, message: str, code: str = "01000") -> None:
        from .protocol.client import Notice

        self.conn._notice(Notice({"S": "WARNING", "V": "WARNING", "C": code, "M": message}))


class _HttpError(Exception):
    def __init__(self, status: int, body: bytes) -> None:
        try:
            obj = json.loads(body)
        except ValueError:
            obj = {}
        self.status = status
        self.code = str(obj.get("code") or "08000")
        self.message = str(obj.get("message") or body[:200].decode("utf-8", "replace") or f"HTTP {status}")
        super().__init__(self.message)

    def to_exception(self) -> Exception:
        from .exceptions._base import PostgresError

        return PostgresError.new({"S": "ERROR", "V": "ERROR", "C": self.code, "M": self.message})


# ------------------------------------------------------------------ openers

async def _socket_stream(ep: Endpoint, target: str, headers: list[tuple[str, str]]) -> AsyncIterator[bytes]:
    """HTTP/1.1 GET on asyncio streams; yields body bytes (chunked decoded)."""
    ctx = None
    if ep.scheme == "https":
        from .transport.http import _ssl_context

        ctx = _ssl_context(ep)
    host_hdr = f"[{ep.host}]" if ":" in ep.host else ep.host
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(ep.host, ep.port, ssl=ctx,
                                server_hostname=ep.host if isinstance(ctx, ssl_module.SSLContext) else None),
        ep.connect_timeout or 30)
    try:
        req = f"GET {target} HTTP/1.1\r\nhost: {host_hdr}:{ep.port}\r\nconnection: close\r\n"
        req += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        writer.write(req.encode("latin-1"))
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        chunked = "chunked" in hdrs.get("transfer-encoding", "").lower()
        if status != 200:
            if "content-length" in hdrs:
                body = await reader.readexactly(int(hdrs["content-length"]))
            else:
                body = await reader.read(65536)
            raise _HttpError(status, body)
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    return
                data = await reader.readexactly(size + 2)
                yield data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    return
                yield data
    finally:
        writer.close()


async def _fetch_stream(ep: Endpoint, target: str, headers: list[tuple[str, str]]) -> AsyncIterator[bytes]:
    """The JS fetch with a streaming body reader (Pyodide)."""
    import js  # type: ignore[import-not-found,unused-ignore]

    host = f"[{ep.host}]" if ":" in ep.host else ep.host
    default = 443 if ep.scheme == "https" else 80
    url = f"{ep.scheme}://{host}{'' if ep.port == default else f':{ep.port}'}{target}"
    hdrs = js.Headers.new()
    for k, v in headers:
        hdrs.append(k, v)
    init = js.Object.new()
    init.method = "GET"
    init.headers = hdrs
    controller = js.AbortController.new()
    init.signal = controller.signal
    try:
        resp = await js.fetch(url, init)
        if int(resp.status) != 200:
            buf = await resp.arrayBuffer()
            raise _HttpError(int(resp.status), bytes(buf.to_bytes()))
        reader = resp.body.getReader()
        while True:
            r = await reader.read()
            if r.done:
                return
            yield bytes(r.value.to_bytes())
    finally:
        try:
            controller.abort()
        except Exception:
            pass
