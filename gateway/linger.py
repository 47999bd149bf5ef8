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

__all__ = ["LINGER_SECONDS", "LINGER_BYTES", "Linger", "linger_close", "lingering", "active"]

#: longest wait for the client to stop sending (read at each close: tests may change it)
LINGER_SECONDS = 2.0
#: most input dropped while lingering (above the default max_body_size and max_message_size:
#: a client sending an oversized body or message still gets its error)
LINGER_BYTES = 16 << 20
#: a listener shutting down: a lingering client silent this long is done sending
QUIET_SECONDS = 0.25

#: connections lingering now (this process)
_active: set["Linger"] = set()


def active() -> int:
    """How many connections are lingering now (closing: not clients any more)."""
    return len(_active)


class Linger(asyncio.Protocol):
    """The protocol of a half-closed transport: drops input (bounded), closes
    at the peer's EOF, and forwards ``connection_lost`` to the protocol it
    replaced (``inner``), so that its owner's bookkeeping runs as usual."""

    __slots__ = ("transport", "inner", "left", "deadline", "last", "grace", "_timer")

    def __init__(self, transport: Any, inner: Any, nbytes: int, deadline: float, now: float) -> None:
        self.transport = transport
        self.inner = inner
        self.left = nbytes           # input still to drop before closing
        self.deadline = deadline     # loop time: closed then at the latest
        self.last = now              # loop time of the last input (or of the half-close)
        self.grace: float | None = None  # set by hurry()
        self._timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        self.left -= len(data)
        if self.left < 0:
            self.close()
            return
        self.last = asyncio.get_running_loop().time()

    def eof_received(self) -> bool:
        return False  # the client is done too: the transport closes itself

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def hurry(self, grace: float = QUIET_SECONDS) -> None:
        """The listener closes: end as soon as the client has sent nothing
        for ``grace`` seconds (a client still sending keeps the rest of its
        time: its reply is what the lingering is for)."""
        if self.grace is None:
            self.grace = grace
            self._arm(min(self.deadline, self.last + grace))

    def _arm(self, when: float) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        if now >= self.deadline or self.grace is None or now >= self.last + self.grace:
            self.close()
        else:
            self._arm(min(self.deadline, self.last + self.grace))

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
        self.inner.connection_lost(exc)


def lingering(transport: Any) -> bool:
    """True once :func:`linger_close` has taken ``transport`` over."""
    return isinstance(transport.get_protocol(), Linger)


def hurry(transport: Any) -> None:
    """A listener closes: a lingering ``transport`` ends once its client is
    quiet (:meth:`Linger.hurry`); anything else is left alone."""
    lg = transport.get_protocol()
    if isinstance(lg, Linger):
        lg.hurry()


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
    current = transport.get_protocol()
    if isinstance(current, Linger):  # (closed twice: already lingering)
        return current
    try:
        transport.write_eof()  # FIN once the queued output is written
    except (OSError, RuntimeError, NotImplementedError):
        transport.close()
        return None
    now = asyncio.get_running_loop().time()
    lg = Linger(transport, current if inner is None else inner, LINGER_BYTES,
                now + LINGER_SECONDS, now)
    transport.set_protocol(lg)
    lg._arm(lg.deadline)
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
