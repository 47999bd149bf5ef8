"""``pg_listen``: the Postgres protocol directly over TCP (psql, pgbench, asyncpg...).

Each accepted connection becomes a :class:`TcpStream` (a ``ClientStream``)
handed to ``gateway.handle_client``.  Built on asyncio Protocols/transports
(no StreamReader/Writer layer): received chunks are queued as they arrive and
handed out by ``recv()`` coalesced; reading pauses while more than
``read_high_water`` bytes sit unconsumed (the session is not keeping up), and
``send()`` waits while the kernel send buffer is full (the client is slow).

This module also holds :class:`ProtocolStream`, the buffering/backpressure
core shared with the WebSocket stream of :mod:`gateway.http`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from typing import Any, Awaitable, Callable, cast

from gateway import linger
from gateway.linger import Linger, linger_close
from gateway.streams import TransportError

log = logging.getLogger("wirepool.tcp")

READ_HIGH_WATER = 1 << 20      # pause reading above this many unconsumed bytes
WRITE_HIGH_WATER = 1 << 18     # send() waits while the transport buffer exceeds this
LOGIN_RCVBUF = 16384          # socket receive buffer before login (reads stay small)


def _peer_of(transport: asyncio.BaseTransport) -> str:
    p = transport.get_extra_info("peername")
    if isinstance(p, tuple) and len(p) >= 2:
        host = str(p[0])
        return f"[{host}]:{p[1]}" if ":" in host else f"{host}:{p[1]}"
    return str(p) if p else "?"


def set_nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):  # pragma: no cover - exotic transports
        pass


def set_socket_buffer(transport: Any, size: int) -> None:
    """``tcp_socket_buffer``: fixed SO_SNDBUF/SO_RCVBUF (no autotuning) on a
    TCP socket; 0 leaves the OS default."""
    if size <= 0 or transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    except (OSError, AttributeError):  # pragma: no cover - exotic transports
        pass


class ProtocolStream:
    """Receive queue + write flow control over an asyncio transport.

    Subclasses (or the owning asyncio.Protocol) call :meth:`_feed`,
    :meth:`_feed_eof`, :meth:`_feed_error`, :meth:`_pause_writing`,
    :meth:`_resume_writing` and :meth:`_connection_lost`.
    """

    kind = "?"
    __slots__ = ("transport", "peer", "_loop", "_chunks", "_buffered", "_eof", "_error", "_waiter",
                 "_reading_paused", "_high_water", "_write_paused", "_drain_waiter", "_lost", "_closed",
                 "bytes_received", "bytes_sent", "_rcv_small", "_sock", "_on_data", "_on_end", "terminated",
                 "__weakref__")

    def __init__(self, transport: asyncio.Transport, *, read_high_water: int = READ_HIGH_WATER,
                 peer: str | None = None) -> None:
        self.transport: asyncio.Transport = transport
        self.peer: str = _peer_of(transport) if peer is None else peer  # (given: known already)
        self._loop = asyncio.get_running_loop()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False
        #: the client sent Terminate (set by the session): it has nothing more to send, so close()
        #: needs no lingering
        self.terminated = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._high_water = read_high_water
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._lost = False          # the transport is gone (peer closed, reset, or we closed)
        self._closed = False        # close() was called
        self.bytes_received = 0
        self.bytes_sent = 0
        self._rcv_small = False  # the socket's receive buffer is shrunk (before login)
        self._sock: Any = None
        # callback mode (set_data_callback)
        self._on_data: Callable[[bytes], None] | None = None
        self._on_end: Callable[[Exception | None], None] | None = None

    # ------------------------------------------------------ protocol side
    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _feed(self, data: bytes) -> None:
        if not data or self._closed:  # closed: nobody reads it any more (WebSocket closing handshake)
            return
        on_data = self._on_data
        if on_data is not None:
            self.bytes_received += len(data)
            on_data(data)
            return
        self._chunks.append(data)
        self._buffered += len(data)
        self.bytes_received += len(data)
        if self._buffered > self._high_water and not self._reading_paused and not self._lost:
            self._reading_paused = True
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):  # pragma: no cover - closing transport
                pass
        self._wake()

    def _feed_eof(self) -> None:
        self._eof = True
        self._wake()
        self._end(None)

    def _feed_error(self, exc: Exception) -> None:
        if self._error is None:
            self._error = exc
        self._wake()
        self._end(self._error)

    def _end(self, exc: Exception | None) -> None:
        on_end = self._on_end
        if on_end is not None:
            self._on_data = self._on_end = None
            on_end(exc)

    def _pause_writing(self) -> None:
        self._write_paused = True

    def _resume_writing(self) -> None:
        self._write_paused = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        self._eof = True
        self._wake()
        self._resume_writing()
        self._end(None)

    # ------------------------------------------------------ ClientStream API
    async def recv(self) -> bytes:
        while True:
            chunks = self._chunks
            if chunks:
                data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                self._chunks = []
                self._buffered = 0
                if self._reading_paused and not self._lost and self._error is None:
                    self._reading_paused = False
                    try:
                        self.transport.resume_reading()
                    except (RuntimeError, AttributeError):  # pragma: no cover
                        pass
                return data
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            fut = self._loop.create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None

    def _write(self, data: bytes) -> None:
        self.transport.write(data)
        self.bytes_sent += len(data)

    # ------------------------------------------------ synchronous fast path
    def set_data_callback(self, on_data: Callable[[bytes], None] | None,
                          on_end: Callable[[Exception | None], None] | None = None) -> None:
        """Callback mode: received bytes go to ``on_data(data)`` straight from the
        transport's ``data_received`` (no ``recv()``, no task switch); ``on_end(exc)``
        is called once at end of stream (``None``) or on a transport error, after
        which both callbacks are dropped.  Bytes queued before the call are
        delivered at once; ``set_data_callback(None)`` returns to ``recv()``.
        Flow control in this mode is the caller's: :meth:`pause_reading`."""
        self._on_data = on_data
        self._on_end = on_end if on_data is not None else None
        if on_data is None:
            return
        if self._chunks:
            data = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            self._chunks = []
            self._buffered = 0
            if self._reading_paused and not self._lost and self._error is None:
                self.resume_reading()
            on_data(data)
        if self._on_end is not None and (self._error is not None or self._eof):
            self._end(self._error)

    def set_login_limit(self, limit: int | None) -> None:
        """Before login (``limit``): buffer at most about ``limit`` bytes of
        this peer's input -- in the queue and in the kernel: the socket's
        receive buffer shrinks too, so that no single read returns more;
        ``None`` restores both."""
        self._high_water = READ_HIGH_WATER if limit is None else limit
        if (limit is not None) == self._rcv_small:
            return
        sock = self._sock
        if sock is None:
            # (uvloop builds a new socket object per call: fetched once, used twice)
            sock = self._sock = self.transport.get_extra_info("socket")
            if sock is None:
                return
        try:
            # After login: as large as the system allows (net.core.rmem_max caps it).
            # A buffer once set is not auto-tuned by Linux any more: the price of
            # keeping unauthenticated reads small.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, LOGIN_RCVBUF if limit is not None else 4 << 20)
            self._rcv_small = limit is not None
        except (OSError, AttributeError, TypeError):  # pragma: no cover - exotic transports
            pass

    def pause_reading(self) -> None:
        """Stop reading from the peer (until :meth:`resume_reading`)."""
        if not self._reading_paused and not self._lost:
            self._reading_paused = True
            try:
                self.transport.pause_reading()
            except (RuntimeError, AttributeError):  # pragma: no cover - closing transport
                pass

    def resume_reading(self) -> None:
        if self._reading_paused and not self._lost and self._error is None:
            self._reading_paused = False
            try:
                self.transport.resume_reading()
            except (RuntimeError, AttributeError):  # pragma: no cover
                pass

    def send_nowait(self, data: bytes) -> bool:
        """Write without waiting; False when the caller should ``await drain()``
        before writing much more (the peer is slow).  Raises ConnectionResetError
        when the peer is gone."""
        if self._lost or self._closed:
            raise ConnectionResetError(f"{self.kind} client {self.peer} is gone")
        self.transport.write(data)
        self.bytes_sent += len(data)
        return not self._write_paused

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self._write_paused or self._lost:
            await self._drain()

    async def send(self, data: bytes) -> None:
        if self._lost or self._closed:
            raise ConnectionResetError(f"{self.kind} client {self.peer} is gone")
        if not data:
            return
        self._write(data)
        if self._write_paused:
            await self._drain()

    async def _drain(self) -> None:
        while self._write_paused and not self._lost:
            fut = self._loop.create_future()
            self._drain_waiter = fut
            try:
                await fut
            finally:
                self._drain_waiter = None
        if self._lost:
            raise ConnectionResetError(f"{self.kind} client {self.peer} is gone")

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._chunks

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.transport.close()
        except Exception:  # pragma: no cover - never raises
            pass

    def abort(self) -> None:
        self._closed = True
        try:
            self.transport.abort()
        except Exception:  # pragma: no cover
            pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.peer}>"


class TcpStream(ProtocolStream):
    """A ``ClientStream`` over a plain TCP connection (``kind == "tcp"``).

    TLS: ``tls_available`` is True when the listener has a certificate; the
    session answers an SSLRequest with ``S`` and then, without awaiting anything
    else in between, calls ``await stream.start_tls()``.
    """

    kind = "tcp"
    __slots__ = ("_protocol", "_ssl_context", "token", "headers", "tls", "linger", "closing")

    def __init__(self, transport: asyncio.Transport, protocol: "TcpProtocol",
                 ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(transport)
        self._protocol = protocol
        self._ssl_context = ssl_context
        self.token: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.tls = False
        #: set while the connection lingers after close() (gateway/linger.py)
        self.linger: Linger | None = None
        #: closed, not gone yet (lingering, or TLS shutting down): done when it is
        self.closing: asyncio.Future[None] | None = None

    async def close(self) -> None:
        """Close; the client may still be sending (a FATAL for a message too
        large, a login refused with pipelined input...): half-close and drop
        its input for a bounded time, so that no RST destroys the reply."""
        if self._closed:
            return
        self._closed = True
        if self._lost:
            return
        if self._eof or self.terminated:  # the client is done sending: nothing is left to reset the reply
            self.transport.close()
            return
        self._reading_paused = False
        self.closing = self._loop.create_future()
        self.linger = linger_close(self.transport, self._protocol)

    def _connection_lost(self, exc: Exception | None) -> None:
        super()._connection_lost(exc)
        if self.closing is not None and not self.closing.done():
            self.closing.set_result(None)

    @property
    def tls_available(self) -> bool:
        return self._ssl_context is not None and not self.tls

    async def start_tls(self) -> None:
        """Upgrade to TLS (server side).  Raises TransportError if impossible."""
        if self._ssl_context is None:
            raise TransportError("TLS is not configured")
        if self.tls:
            raise TransportError("TLS already active")
        if self._chunks:
            # Bytes that arrived in clear after the SSLRequest must not be
            # treated as if they came over TLS (CVE-2021-23214 class of bug).
            raise TransportError("unencrypted data received after SSLRequest")
        # ssl_shutdown_timeout: a TLS close waits this long for the client's close_notify (gateway/linger.py)
        new = await self._loop.start_tls(self.transport, self._protocol, self._ssl_context,
                                         server_side=True, ssl_shutdown_timeout=linger.LINGER_SECONDS)
        if new is None:  # pragma: no cover - transport closed during handshake
            raise TransportError("connection closed during the TLS handshake")
        self.transport = new
        self.tls = True


class TcpProtocol(asyncio.Protocol):
    __slots__ = ("listener", "stream", "task")

    def __init__(self, listener: "TcpListener") -> None:
        self.listener = listener
        self.stream: TcpStream | None = None
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport = cast(asyncio.Transport, transport)  # uvloop transports are not asyncio.Transport subclasses
        if self.stream is not None:  # start_tls re-calls connection_made on some loops
            return
        # TCP_NODELAY: asyncio and uvloop both set it on accepted TCP sockets.
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.stream = TcpStream(transport, self, self.listener.ssl_context)
        self.listener._started(self)

    def data_received(self, data: bytes) -> None:
        assert self.stream is not None
        self.stream._feed(data)

    def eof_received(self) -> bool | None:
        if self.stream is not None:
            self.stream._feed_eof()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream._connection_lost(exc)
        self.listener._lost(self)

    def pause_writing(self) -> None:
        if self.stream is not None:
            self.stream._pause_writing()

    def resume_writing(self) -> None:
        if self.stream is not None:
            self.stream._resume_writing()


Handler = Callable[[Any], Awaitable[None]]


class TcpListener:
    """Accepts TCP connections on ``(host, port)`` and runs ``handler(stream)`` for each."""

    def __init__(self, host: str, port: int, handler: Handler, *,
                 ssl_context: ssl.SSLContext | None = None, backlog: int = 2048) -> None:
        self.host = host
        self.port = port
        self.handler = handler
        self.ssl_context = ssl_context
        self.backlog = backlog
        self.server: asyncio.base_events.Server | None = None
        self.connections: set[TcpProtocol] = set()
        self.accepted_total = 0
        #: an already listening socket to serve instead of binding (takeover, gateway/takeover.py)
        self.sock: socket.socket | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.sock is not None:
            self.server = await loop.create_server(lambda: TcpProtocol(self), sock=self.sock, backlog=self.backlog)
        else:
            self.server = await loop.create_server(lambda: TcpProtocol(self), self.host, self.port,
                                                   backlog=self.backlog, reuse_address=True)
        self.port = self.bound_port

    @property
    def bound_port(self) -> int:
        assert self.server is not None and self.server.sockets
        return int(self.server.sockets[0].getsockname()[1])

    def _started(self, proto: TcpProtocol) -> None:
        self.connections.add(proto)
        self.accepted_total += 1
        assert proto.stream is not None
        proto.task = asyncio.get_running_loop().create_task(self._run(proto.stream))

    async def _run(self, stream: TcpStream) -> None:
        try:
            await self.handler(stream)
        except Exception:  # handle_client should never raise; be defensive
            log.exception("session for %s failed", stream.peer)
        finally:
            await stream.close()

    def _lost(self, proto: TcpProtocol) -> None:
        self.connections.discard(proto)

    def stop_accepting(self) -> None:
        if self.server is not None:
            self.server.close()

    async def close(self) -> None:
        """Stop accepting and abort connections still open (sessions are ended
        by the gateway); connections lingering after their last reply (a FATAL
        57P01...) get up to LINGER_SECONDS to finish first."""
        self.stop_accepting()
        closing: list[asyncio.Future[None]] = []
        for proto in list(self.connections):
            stream = proto.stream
            if stream is not None and stream.closing is not None:  # its last reply is on its way
                if stream.linger is not None:
                    stream.linger.hurry()  # (a client sending nothing more is done: closed soon)
                closing.append(stream.closing)
            elif stream is not None:
                stream.abort()
        tasks = [p.task for p in self.connections if p.task is not None and not p.task.done()]
        if tasks:
            await asyncio.wait(tasks, timeout=5)
        if closing:
            await asyncio.wait(closing, timeout=linger.LINGER_SECONDS)
        for proto in list(self.connections):
            if proto.stream is not None:
                proto.stream.abort()
