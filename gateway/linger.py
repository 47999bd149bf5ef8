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

TLS: the TLS layer is closed properly -- close_notify after the queued
output -- and the client's records arriving after it are discarded unread,
for the same bounded time: the client reads the reply, close_notify, then
EOF.  uvloop's TLS transport does exactly this by itself (it skips
application data until the client's close_notify, for at most its
``ssl_shutdown_timeout``; gateway/tcp.py sets that to :data:`LINGER_SECONDS`).
asyncio's (Python 3.11) fails its shutdown on application data arriving after
its close_notify and resets the connection, so under asyncio the lingering is
done on the TCP transport beneath it: after close_notify, the client's
records go to a :class:`Linger`, never to OpenSSL.  Used by gateway/tcp.py
(``pg_listen``) and gateway/http.py (``listen``).
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
        raw = _tcp_beneath_asyncio_tls(transport)
        if raw is not None:
            # records already received are decrypted (and dropped by the owner)
            # before close_notify, not met by OpenSSL's shutdown
            transport.resume_reading()
        transport.close()  # TLS: close_notify after the queued output
        if raw is None or raw.is_closing():
            return None  # uvloop's TLS lingers by itself (see the module's doc)
        transport, inner = raw, None
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


def _tcp_beneath_asyncio_tls(transport: Any) -> Any:
    """The TCP transport under an asyncio TLS transport, or None (uvloop's,
    or not TLS): asyncio's sslproto keeps it as ``_ssl_protocol._transport``."""
    proto = getattr(transport, "_ssl_protocol", None)
    raw = getattr(proto, "_transport", None)
    if raw is None or not hasattr(raw, "can_write_eof") or not raw.can_write_eof():
        return None
    return raw


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
