"""The client's output side of a :class:`gateway.session.Session`.

Server replies normally go straight to the client's transport from the
server's ``data_received`` (``Session.on_server_data``, through
``_direct``: no task switch).  What cannot -- a stream without a synchronous
write, a slow client, a final FATAL -- is queued in ``_out`` and sent by a
writer task started on demand (:meth:`ClientOutput._write_loop`).  A slow
client pauses its server's reading (``_paused``): resumed when the client's
transport drains (direct path) or the queue falls below ``OUT_LOW`` (writer).

A mixin rather than a separate object: the hot path (``on_server_data``,
``gateway.listen_deliver``, ``gateway.cache_hook``) reads ``_direct`` and
``_out`` as plain attributes of the session, which holds them in its
``__slots__``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from .streams import direct_writer

if TYPE_CHECKING:  # pragma: no cover
    from .server import ServerConnection

#: pause the server when this much is queued for a slow client; resume below OUT_LOW
OUT_HIGH = 1 << 20
OUT_LOW = 1 << 18


class ClientOutput:
    """Mixin of :class:`gateway.session.Session`: owns the attributes in ``SLOTS``, reads the session's."""

    if not TYPE_CHECKING:  # (mypy would check assignments against an empty __slots__)
        __slots__ = ()  # two bases with slots cannot be combined: the session's __slots__ adds SLOTS
    SLOTS: tuple[str, ...] = ('_direct', '_direct_drain', '_out', '_out_bytes', '_paused', '_wake', '_writer',
                              '_writer_stop')

    _direct: Callable[[bytes], bool] | None  # the stream's synchronous write (False: slow, drain)
    _direct_drain: Callable[[], Awaitable[None]] | None
    _out: list[bytes]  # queued for the writer task
    _out_bytes: int
    _paused: ServerConnection | None  # the server whose reading is paused for a slow client
    _wake: asyncio.Future[None] | None  # the idle writer's
    _writer: asyncio.Task[None] | None
    _writer_stop: bool  # set by gateway.session_close: flush, then end
    # the session's (read here)
    stream: Any
    loop: asyncio.AbstractEventLoop
    _finished: bool
    _serving: bool

    if TYPE_CHECKING:  # pragma: no cover
        def _abort(self, sqlstate: str | None, message: str | None) -> None: ...  # the session's

    def _init_output(self, stream: Any) -> None:
        self._out = []
        self._out_bytes = 0
        self._wake = None
        self._writer = None
        self._writer_stop = False
        self._paused = None
        self._direct, self._direct_drain = direct_writer(stream)

    def _send_or_queue(self, data: bytes) -> None:
        """Queue a final message; sent by the writer (or directly in cleanup)."""
        self._out.append(data)
        self._out_bytes += len(data)
        w = self._wake
        if w is not None:
            self._wake = None
            if not w.done():
                w.set_result(None)
        elif self._writer is None and self._serving:
            self._ensure_writer()

    def _ensure_writer(self) -> None:
        """The writer task is started on demand: with a direct (synchronous)
        write path most sessions never need it."""
        if self._writer is None and not self._finished:
            self._writer = self.loop.create_task(self._write_loop())

    async def _write_loop(self) -> None:
        out = self._out
        send = self.stream.send
        try:
            while True:
                if not out:
                    p = self._paused
                    if p is not None and self._direct_drain is not None:
                        await self._direct_drain()
                        if self._paused is p:
                            self._paused = None
                            if p.transport is not None and not p.closed:
                                p.transport.resume_reading()
                        continue
                    if self._writer_stop:
                        return
                    w = self._wake = self.loop.create_future()
                    await w
                    continue
                data = out[0] if len(out) == 1 else b"".join(out)
                out.clear()
                self._out_bytes = 0
                await send(data)
                p = self._paused
                if p is not None and self._out_bytes < OUT_LOW:
                    self._paused = None
                    if p.transport is not None:
                        p.transport.resume_reading()
        except asyncio.CancelledError:
            raise
        except Exception:
            # Client gone: stop the session (its recv will end too).
            out.clear()
            self._out_bytes = 0
            self._abort(None, None)
