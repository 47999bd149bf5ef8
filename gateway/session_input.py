"""The client's input side of a :class:`gateway.session.Session` after login.

Client bytes are framed and handed to ``Session._from_client`` (forwarded to
the linked server, or queued until one is assigned) by one of two loops:

* callback mode (:meth:`ClientInput._serve_callbacks`), for streams with
  ``set_data_callback`` (TCP, WebSocket): framing and forwarding run inside
  the transport's ``data_received`` (:meth:`ClientInput._on_client_data`); the
  session task only waits for the end, an error, or a flow-control hold;
* recv mode (:meth:`ClientInput._serve_recv`): ``await stream.recv()``.

Flow control: the client's reading stops while its server's write buffer is
full (until it drains) or, waiting for a server, once more than ``OUT_HIGH``
bytes are queued for it (until one is assigned).  The partial-message clock
(``client_message_timeout``, :func:`gateway.session_timeouts.note_partial`)
runs only while the client is read.

A mixin rather than a separate object: ``_on_client_data`` is the hot path
of every client chunk and reads the session's attributes directly.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Callable

from driver.protocol.framing import FrontendReader, MessageReader

from .session_output import OUT_HIGH

if TYPE_CHECKING:  # pragma: no cover
    from .server import ServerConnection

#: ``_cb_hold`` while waiting for a server with too much queued: paused until one is assigned
HOLD_ASSIGN = object()

#: after login a FrontendReader frames like a MessageReader: its method, one call less (hot path)
_feed_read_raw = MessageReader.feed_read_raw


class ClientInput:
    """Mixin of :class:`gateway.session.Session`: owns the attributes in ``SLOTS``, reads the session's."""

    if not TYPE_CHECKING:  # (mypy would check assignments against an empty __slots__)
        __slots__ = ()  # two bases with slots cannot be combined: the session's __slots__ adds SLOTS
    SLOTS: tuple[str, ...] = ('_cb_done', '_cb_exc', '_cb_hold', '_cb_wait', '_holding')

    _cb_wait: asyncio.Future[None] | None  # the session task's, while it waits (callback mode)
    _cb_done: bool  # the client ended, or _from_client said stop, or raised
    _cb_exc: BaseException | None  # raised in data_received: re-raised by the session task
    _cb_hold: Any  # a flow-control hold for the session task: a server (drain) or HOLD_ASSIGN
    _holding: bool  # the client's reading is paused by flow control
    # the session's (read here)
    stream: Any
    loop: asyncio.AbstractEventLoop
    reader: FrontendReader
    server: ServerConnection | None
    _aborted: bool
    _assigned: asyncio.Future[None] | None
    _pending_bytes: int
    _partial_since: float
    _track_partial: bool

    if TYPE_CHECKING:  # pragma: no cover
        def _from_client(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool: ...  # the session's

        def _note_partial(self, progress: bool) -> None: ...  # the session's (gateway.session_timeouts)

    def _init_input(self) -> None:
        self._holding = False
        self._cb_wait = None
        self._cb_done = False
        self._cb_exc = None
        self._cb_hold = None

    async def _serve_recv(self) -> None:
        """The pooling loop for a stream without callback mode."""
        recv = self.stream.recv
        reader = self.reader
        from_client = self._from_client
        while True:
            data = await recv()
            if not data:
                return
            reader.feed(data)
            chunk, idx = reader.read_raw()
            if self._track_partial:
                self._note_partial(bool(chunk))
            if not chunk:
                continue
            if not from_client(chunk, idx):
                self.stream.terminated = True
                return
            if reader._buf:  # a bad header behind the forwarded messages: 08P01 now, not at the next read
                reader.check_buffered()
            server = self.server
            if server is not None:
                if server.write_paused:
                    await server.drain()
            elif self._pending_bytes > OUT_HIGH:
                # Waiting for a server while the client keeps sending: stop reading it.
                fut = self._assigned = self.loop.create_future()
                await fut

    async def _serve_callbacks(self, set_cb: Callable[..., None]) -> None:
        """The pooling loop in callback mode: client bytes are framed and
        forwarded inside the transport's data_received (:meth:`_on_client_data`);
        this task only waits for the end, an error, or a flow-control hold."""
        if self.server is not None and self.server.write_paused:
            self._cb_hold = self.server
        elif self.server is None and self._pending_bytes > OUT_HIGH:
            self._cb_hold = HOLD_ASSIGN
        stream = self.stream
        loop = self.loop
        set_cb(self._on_client_data, self._on_client_end)
        try:
            while True:
                if self._cb_done:
                    exc = self._cb_exc
                    if exc is not None:
                        self._cb_exc = None
                        raise exc
                    return
                hold = self._cb_hold
                if hold is not None:
                    # flow control: the client's reading is paused (see _on_client_data)
                    self._cb_hold = None
                    self._holding = True
                    if hold is HOLD_ASSIGN:
                        if self.server is None and self._pending_bytes > OUT_HIGH:
                            fut = self._assigned = loop.create_future()
                            await fut
                    elif hold is self.server and hold is not None and not hold.closed:
                        await hold.drain()
                    self._holding = False
                    if self._partial_since:  # its clock ran only while we read
                        self._partial_since = loop.time()
                    stream.resume_reading()
                    continue
                w = self._cb_wait = loop.create_future()
                await w
        finally:
            self._cb_wait = None
            self._cb_done = True
            set_cb(None)

    def _cb_wake(self) -> None:
        w = self._cb_wait
        if w is not None:
            self._cb_wait = None
            if not w.done():
                w.set_result(None)

    def _on_client_data(self, data: bytes) -> None:
        """Client bytes, straight from the transport (callback mode)."""
        if self._cb_done or self._aborted:
            return
        try:
            reader = self.reader
            if reader.in_startup:  # (never after login; FrontendReader's override only checks this)
                chunk, idx = reader.feed_read_raw(data)
            else:
                chunk, idx = _feed_read_raw(reader, data)
            # the partial-message clock: nothing to do with nothing buffered and no clock running
            if self._track_partial and (reader._buf or self._partial_since):
                self._note_partial(bool(chunk))
            if not chunk:
                return
            if not self._from_client(chunk, idx):
                self.stream.terminated = True
                self._cb_done = True
                self._cb_wake()
                return
            if reader._buf:  # a bad header behind the forwarded messages: 08P01 now, not at the next read
                reader.check_buffered()
        except BaseException as exc:  # handled by the session task, as in _serve
            self._cb_done = True
            self._cb_exc = exc
            self._cb_wake()
            return
        server = self.server
        if server is not None:
            if server.write_paused and self._cb_hold is None:
                self._cb_hold = server
                self.stream.pause_reading()
                self._cb_wake()
        elif self._pending_bytes > OUT_HIGH and self._cb_hold is None:
            # Waiting for a server while the client keeps sending: stop reading it.
            self._cb_hold = HOLD_ASSIGN
            self.stream.pause_reading()
            self._cb_wake()

    def _on_client_end(self, exc: Exception | None) -> None:
        if not self._cb_done:
            self._cb_done = True
            self._cb_exc = exc
        self._cb_wake()
