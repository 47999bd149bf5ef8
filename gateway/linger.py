"""Lingering close: a reply the client may not have read yet survives the close.

Closing a TCP socket with unread input makes the kernel send RST instead of
FIN, and a reset can destroy a reply still on its way (an HTTP 408/413, a
FATAL ErrorResponse): the client's next ``send`` fails, and most clients
then give up without reading what had arrived.  So, like nginx's
``lingering_close``, a connection closed while the client may still be
sending is half-closed once its buffered output is written (``write_eof``:
the client reads the reply, then EOF), and the client's input is read and
dropped until the client closes its side, :data:`LINGER_BYTES` have been
dropped or :data:`LINGER_SECONDS` have passed -- then it is closed.

:func:`linger_close` does this by switching the transport to a
:class:`Linger` protocol (``transport.set_protocol``; asyncio and uvloop
transports both support it): the owning protocol gets no more data, holds
no buffer, and is told ``connection_lost`` when the transport is finally
gone.  Nothing else is held meanwhile (no session, no pooled server).

A transport that cannot half-close (TLS: ``can_write_eof()`` is False) is
closed at once; closing a TLS transport sends close_notify after the queued
output and then reads (and discards) the peer's records until its
close_notify, EOF, or the transport's TLS shutdown timeout -- the TLS layer
lingers by itself.  Used by gateway/tcp.py (``pg_listen``), gateway/http.py
and gateway/websocket.py (``listen``).
"""

from __future__ import annotations

import asyncio
from typing import Any

__all__ = ["LINGER_SECONDS", "LINGER_BYTES", "Linger", "linger_close", "active"]

#: longest wait for the client to stop sending (read at each close: tests may change it)
LINGER_SECONDS = 2.0
#: most input dropped while lingering (above the default max_body_size and max_message_size:
#: a client sending an oversized body or message still gets its error)
LINGER_BYTES = 16 << 20

#: connections lingering now (this process)
_active: set["Linger"] = set()


def active() -> int:
    """How many connections are lingering now (closing: not clients any more)."""
    return len(_active)


class Linger(asyncio.Protocol):
    """The protocol of a half-closed transport: drops input (bounded), closes
    at the peer's EOF, and forwards ``connection_lost`` to the protocol it
    replaced (``inner``), so that its owner's bookkeeping runs as usual."""

    __slots__ = ("transport", "inner", "left", "dropped", "_timer", "_waiters")

    def __init__(self, transport: Any, inner: Any, nbytes: int) -> None:
        self.transport = transport
        self.inner = inner
        self.left = nbytes
        self.dropped = 0  # input dropped so far
        self._timer: asyncio.TimerHandle | None = None
        self._waiters: list[asyncio.Future[None]] = []

    def data_received(self, data: bytes) -> None:
        self.dropped += len(data)
        self.left -= len(data)
        if self.left < 0:
            self.close()

    def eof_received(self) -> bool:
        return False  # the client is done too: the transport closes itself

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def close(self) -> None:
        """Stop lingering now (time or byte budget spent, or the listener closes)."""
        self._cancel_timer()
        tr = self.transport
        if tr.get_write_buffer_size():
            tr.abort()  # the client does not even read: nothing more to wait for
        elif not tr.is_closing():
            tr.close()

    def abort(self) -> None:
        self._cancel_timer()
        self.transport.abort()

    def _cancel_timer(self) -> None:
        t = self._timer
        if t is not None:
            self._timer = None
            t.cancel()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        _active.discard(self)
        for w in self._waiters:
            if not w.done():
                w.set_result(None)
        self._waiters.clear()
        self.inner.connection_lost(exc)

    async def wait_closed(self) -> None:
        if self not in _active:
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        await fut


def linger_close(transport: Any, inner: Any | None = None) -> Linger | None:
    """Close ``transport`` lingering (see the module's doc).  ``inner``: the
    protocol to tell ``connection_lost`` (default: the transport's current
    one).  Returns the :class:`Linger` now in charge, or None when the
    transport was closed at once (already closing, or it cannot half-close)."""
    if transport.is_closing():
        return None
    if not transport.can_write_eof():
        transport.close()
        return None
    try:
        transport.write_eof()  # FIN once the queued output is written
    except (OSError, RuntimeError, NotImplementedError):
        transport.close()
        return None
    lg = Linger(transport, transport.get_protocol() if inner is None else inner, LINGER_BYTES)
    transport.set_protocol(lg)
    lg._timer = asyncio.get_running_loop().call_later(LINGER_SECONDS, lg.close)
    _active.add(lg)
    try:
        transport.resume_reading()  # (reading may have been paused by flow control)
    except (RuntimeError, AttributeError):  # pragma: no cover - closing transport
        pass
    return lg


async def wait_lingering(lingering: "list[Linger]", timeout: float | None = None) -> None:
    """A listener shutting down lets the replies it has sent (e.g. FATAL 57P01)
    reach their clients: connections whose client is still sending get up to
    ``timeout`` seconds (default :data:`LINGER_SECONDS`) to end, then are
    aborted; the quiet ones (nothing received since the half-close, so nothing
    unread: no RST) are closed now."""
    for lg in lingering:
        if lg in _active and not lg.dropped:
            lg.close()
    lingering = [lg for lg in lingering if lg in _active and lg.dropped]
    if not lingering:
        return
    tasks = [asyncio.ensure_future(lg.wait_closed()) for lg in lingering]
    _done, pending = await asyncio.wait(tasks, timeout=LINGER_SECONDS if timeout is None else timeout)
    for t in pending:
        t.cancel()
    for lg in lingering:
        if lg in _active:
            lg.abort()
