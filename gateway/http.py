"""The ``listen`` port: HTTP/1.1 (h11) and WebSocket (websockets' sans-I/O protocol).

One asyncio Protocol per connection (:class:`HttpConnection`).  HTTP/1.1 is
parsed by ``h11`` (keep-alive, pipelined requests answered in order, request
bodies read with a size limit), then routed through the listener's small table
(gateway/http_listener.py: the listening socket, routes, connection caps)::

    listener.add_route("GET", "/healthz", handler)        # async def handler(req) -> HttpResponse
    listener.add_websocket("/v2", on_stream)              # async def on_stream(stream) -> None

A ``GET`` with ``Upgrade: websocket`` on a WebSocket route is answered by
gateway/websocket.py (plainly, or through ``websockets.server.ServerProtocol``
when permessage-deflate or a subprotocol is offered) and the connection
becomes a :class:`WebSocketStream` -- a ``ClientStream`` whose ``recv()``
returns the payload bytes of binary messages, coalesced, with message
boundaries carrying no meaning.  The ``address`` query parameter is captured
(``stream.query``) but never used to open anything.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import h11
from websockets.server import ServerProtocol

from gateway import http_fast
from gateway.http_listener import (HEADER_TIMEOUT, KEEPALIVE_TIMEOUT, MAX_BODY_SIZE, MIN_BODY_RATE,
                                   HttpListener, StreamHandler)
from gateway.http_messages import HttpHandler, HttpRequest, HttpResponse, _reason, request_from, send_streamed
from gateway.linger import LINGER_BYTES, LINGER_SECONDS, Linger, linger_close
from gateway.tcp import WRITE_HIGH_WATER
from gateway.websocket import WS_CLOSE_TIMEOUT, WebSocketStream, _apply_mask, ws_log
from gateway.ws_handshake import negotiated_handshake, plain_handshake

__all__ = ["HttpListener", "HttpConnection", "HttpRequest", "HttpResponse", "HttpHandler", "StreamHandler",
           "WebSocketStream", "WS_CLOSE_TIMEOUT", "MAX_BODY_SIZE", "MAX_HEADER_SIZE", "KEEPALIVE_TIMEOUT",
           "HEADER_TIMEOUT", "MIN_BODY_RATE", "_apply_mask", "_reason", "ws_log", "LINGER_SECONDS", "LINGER_BYTES"]

log = logging.getLogger("wirepool.http")
MAX_HEADER_SIZE = 16 << 10
# A reply sent while the client may still be sending (408, 413, 400) is followed
# by a lingering close (gateway/linger.py), so that no RST destroys it.
_SHED_BODY = b"too many connections; retry later\n"
_SHED_503 = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
             b"content-length: %d\r\nconnection: close\r\nretry-after: 1\r\n\r\n%s" % (len(_SHED_BODY), _SHED_BODY))


class _ReadDeadline(Exception):
    """A read phase (headers, body) did not complete by its deadline."""


# Requests/responses and the streamed-body writer: gateway/http_messages.py; the
# WebSocket handshake and stream: gateway/websocket.py; the listening socket, its
# route table and connection caps: gateway/http_listener.py (names re-exported here).


# --------------------------------------------------------------------------- connection protocol

class _NoH11:
    """Stands in for the h11 connection of an upgraded (WebSocket) connection."""

    their_state = our_state = h11.SWITCHED_PROTOCOL
    trailing_data = (b"", False)

    def receive_data(self, data: bytes) -> None:
        raise RuntimeError("the connection is a WebSocket")


_NO_H11: Any = _NoH11()


class HttpConnection(asyncio.Protocol):
    """One client connection on ``listen``: HTTP/1.1 until (maybe) a WebSocket upgrade."""

    # one per idle WebSocket session too: no per-instance __dict__ (a new attribute goes here)
    __slots__ = ("listener", "transport", "peer", "h11", "ws", "_ws_run", "task", "_waiter", "_paused", "_lost",
                 "_write_paused", "_drain_waiter", "_counted", "_req_start", "_in_handler", "_since", "_linger",
                 "_head", "_scan", "__weakref__")

    def __init__(self, listener: "HttpListener") -> None:
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_SIZE)
        self.ws: WebSocketStream | None = None
        self._ws_run: tuple[ServerProtocol | None, HttpRequest, StreamHandler] | None = None
        self.task: asyncio.Task[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False
        self._lost = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._counted = False               # holds a slot of Limits.http_open
        self._req_start: float | None = None  # first byte of the request being read
        self._in_handler = False            # a route handler is running (cancelled if the client leaves)
        self._since = 0.0                   # accepted, or last reply sent (idle since)
        self._linger: Linger | None = None  # set while lingering (gateway/linger.py)
        # the first request's bytes, also given to h11, while it may be a plain WebSocket
        # upgrade that gateway/http_fast.py parses in C (None: h11 alone from here)
        self._head: bytearray | None = bytearray() if http_fast.available() else None
        self._scan = 0                      # _head searched for its end up to here

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not asyncio.Transport subclasses
        self.transport = transport
        # TCP_NODELAY: asyncio and uvloop both set it on accepted TCP sockets.
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        from gateway.tcp import _peer_of
        self.peer = _peer_of(transport)
        listener = self.listener
        listener.accepted_total += 1
        limits = listener.limits
        self._since = asyncio.get_running_loop().time()
        if limits is not None:
            full = limits.http_full()
            if full is not None:
                # Slowloris defence: at the cap, the connection that has waited
                # longest for a request (idle, or still sending its head or body;
                # never one whose request is being served) makes room.
                listener.evict_oldest_waiting(full)
            if not limits.try_open_http(self.peer):
                # Shed at once: the file descriptor is what a flood exhausts.
                self._lost = True
                transport.write(_SHED_503)
                transport.close()
                return
            self._counted = True
        listener.connections.add(self)
        self.task = asyncio.get_running_loop().create_task(self._serve())

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            limits = self.listener.limits
            if limits is not None:
                limits.close_http()

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        if ws is not None:
            ws._ws_data(data)
            return
        if self._req_start is None:
            self._req_start = asyncio.get_running_loop().time()
        try:
            self.h11.receive_data(data)
        except RuntimeError:  # h11 already closed/errored: ignore trailing bytes
            return
        if self._head is not None:
            self._head += data
        w = self._waiter
        if w is not None:
            if not w.done():
                w.set_result(None)
        elif not self._paused and self.transport is not None:
            # The request loop is busy; don't buffer further pipelined requests.
            self._paused = True
            self.transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self.ws is not None:
            self.ws._ws_eof()
            return False
        self._head = None  # h11 answers a request ended by EOF
        try:
            self.h11.receive_data(b"")
        except RuntimeError:
            pass
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self._in_handler and self.task is not None:
            # The client is gone before its reply: abandon the work (the /sql and
            # /pg executor cancels the running query and returns its server).
            self._in_handler = False
            self.task.cancel()
        self._uncount()
        self.listener.connections.discard(self)
        if self.listener._gone is not None:
            self.listener._gone.set()
        if self.ws is not None:
            self.ws._connection_lost(exc)
        self._wake()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self.ws is not None:
            self.ws._pause_writing()
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        if self.ws is not None:
            self.ws._resume_writing()
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- HTTP request loop
    async def _wait_data(self, deadline: float | None = None) -> None:
        """Wait for more bytes: until ``deadline`` (loop time; then
        :class:`_ReadDeadline`), else up to the keep-alive timeout (then the
        connection is closed).  Every read phase has a deadline: a byte at a
        time does not extend it."""
        if self._lost:
            raise ConnectionResetError
        assert self.transport is not None
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        loop = asyncio.get_running_loop()
        if deadline is not None and deadline <= loop.time():
            raise _ReadDeadline
        fut = loop.create_future()
        self._waiter = fut
        if deadline is None:
            timer = loop.call_later(self.listener.keepalive_timeout, self._timeout)
        else:
            timer = loop.call_at(deadline, self._wake)
        try:
            await fut
        finally:
            timer.cancel()
            self._waiter = None
        if self._lost:
            raise ConnectionResetError
        if deadline is not None and deadline <= loop.time():
            raise _ReadDeadline

    def _header_deadline(self) -> float | None:
        """Request line + headers are due ``header_timeout`` after their first byte."""
        start = self._req_start
        t = self.listener.read_deadlines()[0]
        return None if start is None or t <= 0 else start + t

    def _timeout(self) -> None:
        if self.transport is not None and not self._lost:
            self.transport.close()
        self._wake()

    def _next_event(self) -> Any:
        return self.h11.next_event()

    async def _serve(self) -> None:
        try:
            while True:
                if self._head is not None:
                    rest = self._fast_upgrade()
                    if rest is not None:
                        self._start_ws(*self._take_ws_run(), rest)
                        return
                    if self._head is not None:
                        await self._wait_data(self._header_deadline())
                        continue
                ev = self._next_event()
                if ev is h11.NEED_DATA:
                    await self._wait_data(self._header_deadline())
                    continue
                if isinstance(ev, h11.Request):
                    if await self._handle(ev):
                        if self._ws_run is not None:
                            # the WebSocket session runs in its own task, with the request's
                            # h11 objects and this loop's frames gone (idle-session memory)
                            ev = None
                            self._start_ws(*self._take_ws_run())
                        return  # connection taken over (WebSocket) or closed
                    # the next request's clock starts at its first byte
                    now = asyncio.get_running_loop().time()
                    self._since = now
                    self._req_start = now if self.h11.trailing_data[0] else None
                    continue
                if isinstance(ev, h11.ConnectionClosed) or ev is h11.PAUSED:
                    break
                # Data/EndOfMessage of a request we already answered: ignore.
        except h11.RemoteProtocolError as e:
            status = e.error_status_hint if isinstance(e.error_status_hint, int) else 400
            self._send_error_and_close(status, f"bad request: {e}\n")
        except _ReadDeadline:
            self.listener.shed("request not received in time (slow client)", self.peer)
            self._send_error_and_close(408, "request timeout\n")
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("HTTP connection %s failed", self.peer)
            self._send_error_and_close(500, "internal error\n")
        finally:
            if (self.ws is None and self._linger is None and self.transport is not None
                    and not self.transport.is_closing()):
                self.transport.close()

    def _close_after_reply(self) -> None:
        """Close once the reply is out; linger (gateway/linger.py) when the
        client may still be sending its request."""
        tr = self.transport
        if tr is None or self._lost or tr.is_closing() or self._linger is not None:
            return
        if self.h11.their_state is h11.DONE:
            tr.close()
            return
        self._paused = False
        self._linger = linger_close(tr, self)

    def _send_error_and_close(self, status: int, text: str) -> None:
        if self._lost or self.transport is None:
            return
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            body = text.encode()
            try:
                data = self.h11.send(h11.Response(status_code=status, headers=[
                    ("content-type", "text/plain; charset=utf-8"), ("content-length", str(len(body))),
                    ("connection", "close")]))
                data += self.h11.send(h11.Data(data=body)) or b""
                data += self.h11.send(h11.EndOfMessage()) or b""
                self.transport.write(data)
            except h11.LocalProtocolError:
                self.transport.write(
                    f"HTTP/1.1 {status} Bad Request\r\nconnection: close\r\ncontent-length: {len(body)}\r\n"
                    f"content-type: text/plain; charset=utf-8\r\n\r\n".encode() + body)
        self._close_after_reply()

    async def _read_body(self, limit: int) -> bytes | None:
        """The request body, or None if it exceeds ``limit`` (not fully read then)."""
        parts: list[bytes] = []
        size = 0
        listener = self.listener
        start = asyncio.get_running_loop().time()
        while True:
            ev = self._next_event()
            if ev is h11.NEED_DATA:
                if self.h11.they_are_waiting_for_100_continue:
                    assert self.transport is not None
                    self.transport.write(self.h11.send(h11.InformationalResponse(
                        status_code=100, headers=[])) or b"")
                # the body must keep up min_body_rate after header_timeout of grace
                deadline = None
                header_timeout, min_body_rate = listener.read_deadlines()
                if header_timeout > 0 and min_body_rate > 0:
                    deadline = start + header_timeout + size / min_body_rate
                await self._wait_data(deadline)
                continue
            if isinstance(ev, h11.Data):
                size += len(ev.data)
                if size > limit:
                    return None
                parts.append(bytes(ev.data))
                continue
            if isinstance(ev, h11.EndOfMessage):
                return b"".join(parts)
            if ev is h11.PAUSED:
                # Upgrade/CONNECT request: h11 stops at EndOfMessage + PAUSED.
                return b"".join(parts)
            if isinstance(ev, h11.ConnectionClosed):
                raise ConnectionResetError
            raise h11.RemoteProtocolError(f"unexpected {type(ev).__name__}")  # pragma: no cover

    def _fast_upgrade(self) -> bytes | None:
        """The first request, while it may be a plain WebSocket upgrade
        (gateway/http_fast.py): the bytes after it if answered here (101
        written, ``_ws_run`` set); else None, with ``_head`` kept while the
        head is not complete, or set to None: h11 parses it (and all after
        it), as it would have anyway."""
        head = self._head
        assert head is not None
        end = http_fast.head_end(head, self._scan, http_fast.HEAD_LIMIT)
        if end < 0:
            self._scan = max(0, len(head) - 2)
            return None
        self._head = None
        up = http_fast.plain_upgrade(bytes(head), self.listener, self.peer) if end else None
        if up is None:
            return None
        req, on_stream, answer, rest = up
        assert self.transport is not None
        self.transport.write(answer)
        self._ws_run = (None, req, on_stream)
        return rest

    async def _handle(self, ev: h11.Request) -> bool:
        """Serve one request; True if the connection is no longer in HTTP mode."""
        listener = self.listener
        # (raw_items, a list, costs less than iterating h11's Headers, a Sequence)
        req, first = request_from(ev.method, ev.target, ev.headers.raw_items(), ev.http_version, self.peer)
        method, path = req.method, req.path

        on_stream = listener.stream_for(method, path, first.get("upgrade"))
        if on_stream is not None:
            if "content-length" not in first and "transfer-encoding" not in first:
                # No body by the request's framing (h11's next events would be EndOfMessage,
                # PAUSED): the common handshake is answered without stepping h11 through them.
                answer = plain_handshake(req)
                if answer is not None:
                    assert self.transport is not None
                    self.transport.write(answer)
                    self._ws_run = (None, req, on_stream)  # run by _serve (after this frame is gone)
                    return True
            body = await self._read_body(0)
            if body is None:
                self._send_error_and_close(400, "a WebSocket handshake has no body\n")
                return True
            return await self._upgrade(ev, req, on_stream)

        clen = first.get("content-length")
        if clen is not None and clen.strip().isdigit() and int(clen) > listener.max_body_size:
            await self._respond(HttpResponse(413, b"request body too large\n"), close=True)
            return True
        body = await self._read_body(listener.max_body_size)
        if body is None:
            await self._respond(HttpResponse(413, b"request body too large\n"), close=True)
            return True
        req.body = body

        handler = listener.handler_for(method, path)
        if handler is None:
            resp = listener.no_route(method, path)
        else:
            self._in_handler = True
            try:
                resp = await handler(req)
            except Exception:
                log.exception("handler for %s %s failed", method, path)
                resp = HttpResponse(500, b"internal error\n")
            finally:
                self._in_handler = False
        if method == "HEAD":
            resp = HttpResponse(resp.status, b"", resp.content_type,
                                resp.headers + [("content-length", str(len(resp.body)))])
        await self._respond(resp)
        return self._lost or self.transport is None or self.transport.is_closing()

    async def _respond(self, resp: HttpResponse, *, close: bool = False) -> None:
        """Send ``resp``; keep the connection for the next request unless ``close``."""
        if self._lost or self.transport is None:
            return
        h = self.h11
        if resp.stream is not None:
            await self._stream(resp)
            return
        hdrs: list[tuple[str, str]] = []
        if resp.content_type is not None:
            hdrs.append(("content-type", resp.content_type))
        if not any(k.lower() == "content-length" for k, _ in resp.headers):
            hdrs.append(("content-length", str(len(resp.body))))
        hdrs.extend(resp.headers)
        close = close or self.listener.draining
        if close:
            hdrs.append(("connection", "close"))
        data = h.send(h11.Response(status_code=resp.status, headers=hdrs, reason=_reason(resp.status))) or b""
        if resp.body:
            data += h.send(h11.Data(data=resp.body)) or b""
        data += h.send(h11.EndOfMessage()) or b""
        self.transport.write(data)
        if close or h.our_state is h11.MUST_CLOSE or h.their_state is not h11.DONE:
            self._close_after_reply()
            return
        h.start_next_cycle()
        if self._write_paused:
            fut = asyncio.get_running_loop().create_future()
            self._drain_waiter = fut
            try:
                await fut
            finally:
                self._drain_waiter = None

    async def _stream(self, resp: HttpResponse) -> None:
        """A streamed body (gateway/http_messages.send_streamed); the client
        leaving cancels it (``_in_handler``).  The connection is closed after."""
        tr = self.transport
        assert tr is not None
        self._in_handler = True
        try:
            await send_streamed(self.h11, tr, resp, lambda: self._lost)
        finally:
            self._in_handler = False

    async def _upgrade(self, ev: h11.Request, req: HttpRequest, on_stream: StreamHandler) -> bool:
        assert self.transport is not None
        listener = self.listener
        answer = plain_handshake(req)
        if answer is not None:
            self.transport.write(answer)
            self._ws_run = (None, req, on_stream)  # run by _serve (after this frame is gone)
            return True
        out, negotiated, invalid = negotiated_handshake(ev, listener.ws_extensions, listener.ws_max_message_size)
        if out:
            self.transport.write(out)
        if invalid:
            self._send_error_and_close(400, "invalid WebSocket handshake\n")
            return True
        if negotiated is None:
            self.transport.close()
            return True
        self._ws_run = (negotiated, req, on_stream)  # run by _serve (after this frame is gone)
        return True

    def _take_ws_run(self) -> tuple[ServerProtocol | None, HttpRequest, StreamHandler]:
        run = self._ws_run
        assert run is not None
        self._ws_run = None
        return run

    def _start_ws(self, ws: ServerProtocol | None, req: HttpRequest, on_stream: StreamHandler,
                  rest: bytes | None = None) -> None:
        """The connection becomes a WebSocketStream; ``on_stream`` runs in a
        task of its own (the HTTP request loop's task and frames are gone: an
        idle session holds one task and the session's own frames).  ``rest``:
        the bytes after the request when h11 did not parse it."""
        assert self.transport is not None
        listener = self.listener
        trailing, closed = self.h11.trailing_data if rest is None else (rest, False)
        stream = WebSocketStream(self.transport, ws, req, listener.ws_max_message_size)
        del req
        self.ws = stream
        self.h11 = _NO_H11  # WebSocket from here: the HTTP state machine is not needed any more
        if self._write_paused:
            stream._pause_writing()
        if self._paused:
            self._paused = False
            self.transport.resume_reading()
        if trailing:
            stream._ws_data(bytes(trailing))
        if closed:
            stream._ws_eof()
        listener.ws_opened_total += 1
        self._uncount()  # a WebSocket session: counted by the gateway from here
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(on_stream(stream))
        self.task = task
        task.add_done_callback(stream.session_done)  # a bound method: no closure per session
