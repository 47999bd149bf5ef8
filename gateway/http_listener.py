"""The ``listen`` port's listening socket: the route table, connection caps, shutdown.

:class:`HttpListener` owns what is shared by the connections of the port: the
routes (``add_route``, ``add_websocket``, a default WebSocket handler) and how a
request finds its handler, the accepted connections with the eviction of the
longest-waiting one at ``max_http_conn``, and closing them at shutdown.  One
connection's HTTP/1.1 protocol is :class:`gateway.http.HttpConnection`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any, Callable, Coroutine

import h11
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory

from gateway.http_messages import HttpHandler, HttpResponse
from gateway import linger
from gateway.websocket import WebSocketStream

if TYPE_CHECKING:
    from gateway.http import HttpConnection

__all__ = ["HttpListener", "StreamHandler", "MAX_BODY_SIZE", "KEEPALIVE_TIMEOUT", "HEADER_TIMEOUT",
           "MIN_BODY_RATE"]

log = logging.getLogger("wirepool.http")
MAX_BODY_SIZE = 10 << 20
KEEPALIVE_TIMEOUT = 75.0
HEADER_TIMEOUT = 15.0    # request line + headers, from their first byte (client_login_timeout)
MIN_BODY_RATE = 4096     # bytes/s a request body must keep up, after HEADER_TIMEOUT of grace

StreamHandler = Callable[[WebSocketStream], Coroutine[Any, Any, None]]


class HttpListener:
    def __init__(self, host: str, port: int, *, max_body_size: int = MAX_BODY_SIZE,
                 ws_max_message_size: int | None = None, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
                 permessage_deflate: bool = True, backlog: int = 2048,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.host = host
        #: TLS (https://, wss://) when set (gateway/tls.py owns it and reloads it).
        self.ssl_context = ssl_context
        self.port = port
        self.routes: dict[tuple[str, str], HttpHandler] = {}
        self.ws_routes: dict[str, StreamHandler] = {}
        #: WebSocket handler for upgrades on any path that is not an HTTP route (None: 404).
        self.ws_default: StreamHandler | None = None
        self.max_body_size = max_body_size
        self.ws_max_message_size = ws_max_message_size if ws_max_message_size is not None else (17 << 20)
        self.keepalive_timeout = keepalive_timeout
        self.ws_extensions = ([ServerPerMessageDeflateFactory(
            server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5})]
            if permessage_deflate else [])
        self.backlog = backlog
        #: read deadlines: request line + headers (s from the first byte), body rate (bytes/s)
        self.header_timeout = HEADER_TIMEOUT
        self.min_body_rate = MIN_BODY_RATE
        #: connection caps (gateway.limits.Limits); None: no caps
        self.limits: Any = None
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[HttpConnection] = set()
        #: set while close() waits for closing connections (HttpConnection.connection_lost sets it)
        self._gone: asyncio.Event | None = None
        self.accepted_total = 0
        self.ws_opened_total = 0
        #: an already listening socket to serve instead of binding (takeover, gateway/takeover.py)
        self.sock: socket.socket | None = None
        #: answers carry ``connection: close`` (a process handing over to its successor)
        self.draining = False

    def evict_oldest_waiting(self, reason: str) -> bool:
        """Close the counted HTTP connection that has waited longest for (the
        rest of) a request -- not one being served, not a WebSocket -- so that a
        new client can be admitted at the cap. False if there is none."""
        victim: HttpConnection | None = None
        oldest = float("inf")
        for c in self.connections:
            if not c._counted or c._in_handler or c.ws is not None or c._lost:
                continue
            t = c._req_start if c._req_start is not None else c._since
            if t < oldest:
                victim, oldest = c, t
        if victim is None:
            return False
        self.shed(f"{reason}: closing the longest-waiting request", victim.peer)
        victim._uncount()
        victim._lost = True
        if victim.transport is not None:
            victim.transport.abort()
        victim._wake()
        return True

    def shed(self, reason: str, peer: str) -> None:
        if self.limits is not None:
            self.limits.shed_log.shed(reason, peer)
        else:
            log.warning("dropping client %s: %s", peer, reason)

    # -- the route table
    def add_route(self, method: str, path: str, handler: HttpHandler) -> None:
        self.routes[(method.upper(), path)] = handler

    def add_websocket(self, path: str, on_stream: StreamHandler) -> None:
        self.ws_routes[path] = on_stream

    def stream_for(self, method: str, path: str, upgrade: str | None) -> StreamHandler | None:
        """The WebSocket handler of a request asking for an upgrade (``upgrade``: its
        Upgrade header), or None: not an upgrade request, or no WebSocket on ``path``."""
        if method != "GET" or "websocket" not in (upgrade or "").lower():
            return None
        on_stream = self.ws_routes.get(path)
        if on_stream is None and ("GET", path) not in self.routes:
            on_stream = self.ws_default
        return on_stream

    def handler_for(self, method: str, path: str) -> HttpHandler | None:
        """The route's handler (HEAD is served by GET's, without the body)."""
        handler = self.routes.get((method, path))
        if handler is None and method == "HEAD":
            handler = self.routes.get(("GET", path))
        return handler

    def no_route(self, method: str, path: str) -> HttpResponse:
        """The answer to a request no route serves: 426, 405 (with Allow) or 404."""
        has_ws = path in self.ws_routes
        if has_ws and method == "GET":
            return HttpResponse(426, b"WebSocket upgrade required\n",
                                headers=[("upgrade", "websocket"), ("connection", "upgrade")])
        allowed = sorted({m for (m, p) in self.routes if p == path} | ({"GET"} if has_ws else set()))
        if allowed:
            return HttpResponse(405, b"method not allowed\n", headers=[("allow", ", ".join(allowed))])
        return HttpResponse(404, b"not found\n")

    def read_deadlines(self) -> tuple[float, float]:
        """(header_timeout, min_body_rate) for a request starting now: the live
        ``[gateway]`` settings (``client_login_timeout``, ``http_min_body_rate``,
        changed by RELOAD, SIGHUP or the admin SET) when the listener has the
        gateway's limits, else its own attributes."""
        g = getattr(self.limits, "settings", None)
        if g is not None:
            return g.client_login_timeout, g.http_min_body_rate
        return self.header_timeout, self.min_body_rate

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        # The TLS handshake comes before connection_made (and the header deadline):
        # it gets the same time limit.
        hs = getattr(self, "header_timeout", 0) if self.ssl_context is not None else 0
        where: dict[str, Any] = ({"sock": self.sock} if self.sock is not None else
                                 {"host": self.host, "port": self.port, "reuse_address": True})
        from gateway.http import HttpConnection  # it imports this module
        self.server = await loop.create_server(lambda: HttpConnection(self), **where,
                                               backlog=self.backlog, ssl=self.ssl_context,
                                               ssl_handshake_timeout=hs if hs and hs > 0 else None,
                                               # a TLS close waits this long for the client's close_notify
                                               ssl_shutdown_timeout=(linger.LINGER_SECONDS if self.ssl_context
                                                                     is not None else None))
        self.port = self.bound_port

    @property
    def bound_port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    @property
    def ws_open(self) -> int:
        return sum(1 for c in self.connections if c.ws is not None)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def close(self) -> None:
        """Stop accepting; abort connections still open, except those whose last
        reply is on its way (lingering after an error, a WebSocket closing): they
        get up to LINGER_SECONDS to end (gateway/linger.py)."""
        self.stop_accepting()
        closing: list[HttpConnection] = []
        for c in list(self.connections):
            if c._linger is not None or (c.ws is not None and c.ws._closed and not c._lost):
                if c.transport is not None:
                    linger.hurry(c.transport)
                closing.append(c)
            elif c.transport is not None:
                c.transport.abort()
        tasks = [c.task for c in self.connections if c.task is not None and not c.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger.LINGER_SECONDS
        gone = self._gone = asyncio.Event()
        try:
            while any(not c._lost for c in closing) and loop.time() < deadline:
                try:
                    await asyncio.wait_for(gone.wait(), deadline - loop.time())
                except asyncio.TimeoutError:
                    break
                gone.clear()
        finally:
            self._gone = None
        for c in list(self.connections):
            if c.transport is not None:
                c.transport.abort()

    async def close_idle_http(self) -> None:
        """Close keep-alive HTTP connections that are between requests (used at shutdown)."""
        for c in list(self.connections):
            if c.ws is None and c._waiter is not None and c.h11.their_state is h11.IDLE and c.transport:
                c.transport.close()
