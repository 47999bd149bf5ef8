"""WebSocket transport (CPython): the PostgreSQL protocol through a wirepool gateway.

``driver.connect("ws://alice:secret@127.0.0.1:8432/app")`` opens a WebSocket
to ``ws://127.0.0.1:8432/v2`` (the endpoint path can be changed with
``?endpoint=/path``) and speaks the v3 protocol inside binary messages to
database ``app``; ``wss://`` adds TLS (verify-full by default, the DSN's
``sslmode`` / ``ssl=`` relax it like for TCP).

* Every :meth:`WebSocketTransport.send` call is ONE binary WebSocket message:
  the connection hands the transport one batch per flush (everything the
  protocol queued), so a pipelined batch -- StartupMessage + PasswordMessage,
  or Parse/Bind/Execute/Sync -- travels as a single message.
* :meth:`WebSocketTransport.recv` returns each received message's bytes
  (message boundaries carry no meaning; the protocol core reframes).  A text
  message is a protocol violation (:class:`TransportError`).
* Compression (permessage-deflate) is off by default: protocol traffic is
  latency-bound and deflate costs CPU on both ends.  Measured through a local
  gateway (loopback, one process): ``select 1`` 302 us vs 327 us, a 20k-row
  fetch 184 ms vs 249 ms, a 100 kB parameter round trip 1.45 ms vs 5.6 ms
  (off vs on).  ``?compression=deflate`` in the DSN enables it (worth it only
  on slow links with compressible results).
* Keepalive pings are off (like TCP without keepalives): a busy event loop
  must not close healthy connections by missing a pong deadline.
* The handshake is pipelined: ``connect`` returns once TCP (and TLS) is up
  and the upgrade request written, and the first message (the StartupMessage,
  with the password when ``pipeline_connect=password``, or with the first
  query under ``lazy_connect``) follows it at once; the ``101`` comes back
  with the server's first answer.  Connect + login + first query through a
  token or a cleartext-password gateway is one flight after TCP's handshake.
* CancelRequest: a fresh WebSocket carrying only the CancelRequest (the
  gateway forwards it to the backend serving the session), see
  :meth:`driver.transport.base.Connector.cancel`.

The ``websockets`` package is imported only when a ws/wss connection is
opened, so :mod:`driver` itself keeps importing with the standard library
alone (Pyodide).
"""

from __future__ import annotations

import asyncio
import collections
import ssl as ssl_module
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from .base import Connector, Endpoint, HandshakeError, Transport, TransportError

if TYPE_CHECKING:  # pragma: no cover
    from websockets.client import ClientProtocol

__all__ = ["WebSocketConnector", "WebSocketTransport", "DEFAULT_MAX_SIZE"]

#: Largest WebSocket message accepted from the gateway (it sends protocol
#: bytes in chunks of at most its read size; this only bounds a rogue server).
DEFAULT_MAX_SIZE = 64 * 1024 * 1024
_TLS_MODES = ("require", "verify-ca", "verify-full")
_READ_HIGH_WATER = 1 << 20   # stop reading the socket while this much is received and unread
_CLOSE_TIMEOUT = 5.0


class WebSocketTransport(asyncio.Protocol, Transport):
    """One WebSocket carrying protocol bytes in binary messages: websockets'
    sans-I/O ``ClientProtocol`` over an asyncio transport.

    Pipelined handshake: the connector returns as soon as TCP (and TLS) is up
    and the upgrade request is written; :meth:`send` before the server's
    ``101`` writes the (masked, uncompressed) frame right behind the request,
    so the StartupMessage travels with the upgrade.  A refused handshake is
    raised by :meth:`recv` (and :meth:`send`) as :class:`TransportError`
    (``handshake_error``).
    """

    def __init__(self, ws: "ClientProtocol", url: str, secure: bool = False) -> None:
        self._ws = ws
        self._url = url
        self._tr: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._eof = False
        self._error: BaseException | None = None
        #: the refused/failed WebSocket handshake, if it was
        self.handshake_error: HandshakeError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        self._lost: asyncio.Future[None] = self._loop.create_future()
        self._text = False
        self.secure = secure
        #: client->server / server->client WebSocket messages so far (cheap counters).
        self.sent_messages = 0
        self.received_messages = 0

    @property
    def websocket(self) -> "ClientProtocol":
        """The underlying ``websockets`` sans-I/O protocol."""
        return self._ws

    # -- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._tr = transport  # type: ignore[assignment]
        ws = self._ws
        ws.send_request(ws.connect())
        self._write_out()

    def data_received(self, data: bytes) -> None:
        self._ws.receive_data(data)
        self._process()

    def eof_received(self) -> bool:
        self._ws.receive_eof()
        self._process()
        self._end(None)
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end(TransportError(f"the WebSocket connection was lost: {exc}") if exc is not None else None)
        if not self._lost.done():
            self._lost.set_result(None)
        self.resume_writing()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        w = self._drain_waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- internals
    def _end(self, error: BaseException | None) -> None:
        if error is not None and self._error is None and not self._eof:
            self._error = error
        self._eof = True
        self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def _write_out(self) -> None:
        tr = self._tr
        for chunk in self._ws.data_to_send():
            if tr is None:
                break
            if chunk:
                tr.write(chunk)
            else:  # the protocol says: close the TCP connection
                tr.close()

    def _process(self) -> None:
        from websockets.frames import Frame, Opcode

        ws = self._ws
        for ev in ws.events_received():
            if not isinstance(ev, Frame):  # the handshake response
                if ws.handshake_exc is not None:
                    self.handshake_error = HandshakeError(
                        f"WebSocket handshake with {self._url} failed: {ws.handshake_exc!r}")
                    self._end(self.handshake_error)
                continue
            op = ev.opcode
            if op is Opcode.BINARY or (op is Opcode.CONT and not self._text):
                self._text = False
                if ev.data:
                    data = bytes(ev.data)
                    self._chunks.append(data)
                    self._buffered += len(data)
                    if ev.fin:
                        self.received_messages += 1
            elif op is Opcode.TEXT:
                self._text = True
                self._end(TransportError("the server sent a text WebSocket message (expected binary)"))
            elif op is Opcode.CLOSE:
                self._end(None)
        if ws.parser_exc is not None and self.handshake_error is None:
            self._end(TransportError(f"WebSocket protocol error: {ws.parser_exc}"))
        self._write_out()
        if self._buffered > _READ_HIGH_WATER and not self._reading_paused and self._tr is not None:
            self._reading_paused = True
            self._tr.pause_reading()
        if self._chunks or self._eof:
            self._wake()

    # -- Transport API
    async def send(self, data: bytes) -> None:
        from websockets.protocol import State

        ws = self._ws
        if self._closing or self._tr is None:
            raise TransportError("the connection is closed")
        if self.handshake_error is not None:
            raise self.handshake_error
        if ws.state is State.OPEN:
            ws.send_binary(data)
            self._write_out()
        elif ws.state is State.CONNECTING and not self._eof:
            # pipelined behind the upgrade request: plain (uncompressed) masked frame
            from websockets.frames import Frame, Opcode

            self._tr.write(Frame(Opcode.BINARY, data).serialize(mask=True))
        else:
            raise TransportError(f"the WebSocket is closed ({self._error or 'closed by the server'})")
        self.sent_messages += 1
        if self._write_paused:
            fut = self._loop.create_future()
            self._drain_waiter = fut
            try:
                await fut
            finally:
                self._drain_waiter = None

    async def recv(self) -> bytes:
        while not self._chunks:
            if self._error is not None:
                self.abort()
                raise self._error
            if self._eof:
                return b""
            fut = self._loop.create_future()
            self._waiter = fut
            try:
                await fut
            finally:
                self._waiter = None
        chunks = self._chunks
        data = chunks.popleft() if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._reading_paused and self._tr is not None:
            self._reading_paused = False
            self._tr.resume_reading()
        return data

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._close_task = self._loop.create_task(self._close())

    async def _close(self) -> None:
        from websockets.protocol import State

        try:
            deadline = self._loop.time() + _CLOSE_TIMEOUT
            ws = self._ws
            # a handshake still under way: let it finish, then close properly
            while ws.state is State.CONNECTING and not self._eof:
                fut = self._loop.create_future()
                self._waiter = fut
                try:
                    await asyncio.wait_for(fut, max(0.0, deadline - self._loop.time()))
                finally:
                    self._waiter = None
            if ws.state is State.OPEN:
                ws.send_close()
                self._write_out()
            elif self._tr is not None:
                self._tr.close()
            await asyncio.wait_for(asyncio.shield(self._lost), max(0.0, deadline - self._loop.time()))
        except Exception:  # timeout, already gone: nothing to flush
            self.abort()

    def abort(self) -> None:
        self._closing = True
        if self._tr is not None:
            self._tr.abort()

    async def wait_closed(self) -> None:
        if self._close_task is not None:
            try:
                await self._close_task
            except Exception:
                pass
        try:
            await asyncio.shield(self._lost)
        except Exception:
            pass

    @property
    def is_closing(self) -> bool:
        from websockets.protocol import State

        return self._closing or self._eof or self._ws.state not in (State.OPEN, State.CONNECTING)


def _ssl_context(endpoint: Endpoint) -> ssl_module.SSLContext:
    if isinstance(endpoint.ssl_context, ssl_module.SSLContext):
        return endpoint.ssl_context
    from .tcp import make_ssl_context, sslrootcert

    mode = endpoint.sslmode if endpoint.sslmode in _TLS_MODES else "verify-full"
    return make_ssl_context(mode, sslrootcert(endpoint))


class WebSocketConnector(Connector):
    """Opens :class:`WebSocketTransport` objects for ws:// and wss:// endpoints.

    ``endpoint.options``: ``params`` (the :class:`~driver.dsn.ConnectParams`,
    for the URL), or ``url``; ``query`` may hold ``compression=deflate`` and
    ``max_size`` (bytes).
    """

    async def connect(self, endpoint: Endpoint) -> Transport:
        """TCP (and TLS) up and the upgrade request written: the first
        :meth:`WebSocketTransport.send` travels right behind it (the handshake
        answer is read with the first reply)."""
        try:
            from websockets.client import ClientProtocol
            from websockets.exceptions import InvalidURI
            from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
            from websockets.uri import parse_uri
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise TransportError("the ws:// transport needs the 'websockets' package") from exc
        url = self._url(endpoint)
        query = endpoint.options.get("query") or {}
        try:
            max_size = int(query.get("max_size", DEFAULT_MAX_SIZE))
        except ValueError:
            raise TransportError(f"invalid max_size {query.get('max_size')!r}") from None
        try:
            wsuri = parse_uri(url)
        except InvalidURI as exc:
            raise HandshakeError(f"WebSocket handshake with {url} failed: {exc!r}") from exc
        extensions = ([ClientPerMessageDeflateFactory(client_max_window_bits=True)]
                      if query.get("compression") == "deflate" else None)
        secure = endpoint.scheme == "wss"
        ws = ClientProtocol(wsuri, extensions=extensions, max_size=max_size)
        loop = asyncio.get_running_loop()
        kwargs: dict[str, Any] = {}
        if secure:
            kwargs["ssl"] = _ssl_context(endpoint)
            kwargs["server_hostname"] = wsuri.host
        try:
            _, proto = await loop.create_connection(lambda: WebSocketTransport(ws, url, secure=secure),
                                                    wsuri.host, wsuri.port, **kwargs)
        except (OSError, ssl_module.SSLError) as exc:
            raise TransportError(f"cannot open WebSocket {url}: {exc}") from exc
        return proto

    @staticmethod
    def _url(endpoint: Endpoint) -> str:
        url = endpoint.options.get("url")
        if isinstance(url, str):
            return url
        params = endpoint.options.get("params")
        if params is not None:
            token = params.query.get("token")
            # An API token travels as ?token= (browsers cannot set headers on a WebSocket).
            url = str(params.url())
            return f"{url}?{urlencode({'token': token})}" if token else url
        from ..dsn import DEFAULT_WS_PATH

        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        path = endpoint.options.get("path") or DEFAULT_WS_PATH
        return f"{endpoint.scheme}://{host}:{endpoint.port}{path}"
