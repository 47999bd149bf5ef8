"""A client session as a LISTEN subscriber of its pool's hub (hub side).

:class:`Delivery` is the half of :class:`gateway.listen_session.SessionListen`
the hub calls (``deliver`` / ``flush`` / ``gap`` / ``overflow``, see
:class:`gateway.listen_core.Subscriber`):

* notifications of an upstream chunk are batched into one write per client;
* while the client is in a transaction (linked, or a query in flight) they are
  **held**, as Postgres only delivers between transactions; the session's
  reply hook sends them just before the ReadyForQuery ``I`` that ends it
  (``_unhold``), keeping only the channels listened to by then;
* unsent bytes (batch, held, the session's queue, the socket's buffer) past
  ``listen_queue_bytes`` end the client with FATAL 53400 (``overflow``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from driver.protocol import messages as m

from .listen_core import Notification

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

log = logging.getLogger("wirepool.gateway.listen")

_BATCH_MAX = 16384  # notification bytes per client write


class Delivery:
    """Notification delivery to one client session."""

    __slots__ = ("s", "hub", "channels", "tent", "notes", "notes_bytes", "limit", "dead", "delivered",
                 "batch", "batch_bytes", "tr")

    def __init__(self, session: "Session", hub: Any) -> None:
        self.s = session
        self.hub = hub
        self.channels: set[str] = set()
        #: channels LISTENed in the open transaction: subscribed (so that upstream LISTENs before
        #: COMMIT), not delivered unless the COMMIT makes them ``channels``
        self.tent: set[str] = set()
        #: notifications held while the client is in a transaction (Postgres delivers between transactions)
        self.notes: list[Notification | bytes] = []
        self.notes_bytes = 0
        self.limit = session.settings.listen_queue_bytes
        self.dead = False
        self.delivered = 0
        self.batch: list[bytes] = []  # notifications of the current upstream chunk (flush)
        self.batch_bytes = 0
        self.tr = getattr(session.stream, "transport", None)  # its write buffer counts against limit

    def deliver(self, n: Notification) -> bool:
        """Queued in ``batch``; the hub calls :meth:`flush` after the upstream
        chunk (one write -- one WebSocket message -- per chunk, not per notification)."""
        if self.dead:
            return True
        s = self.s
        if s.server is not None and s.in_transaction():  # Postgres delivers between transactions: held
            return self._hold(n)
        if self.tent and n.channel not in self.channels:
            return True  # a channel LISTENed in a transaction that is not committed (yet)
        wire = n.wire
        if not wire:
            wire = n.wire = m.notification_response(n.pid, n.channel, n.payload)
        batch = self.batch
        if not batch:
            self.hub.touched.append(self)
        if self.notes:  # held ones first (normally sent before the ReadyForQuery 'I')
            held = self._unhold()
            batch.append(held)
            self.batch_bytes += len(held)
        batch.append(wire)
        self.batch_bytes += len(wire)
        self.delivered += 1
        if self.batch_bytes >= _BATCH_MAX:
            self.flush()  # large chunk: write as we go, so the check below sees the socket's progress
        tr = self.tr
        unsent: int = self.batch_bytes + s._out_bytes + (tr.get_write_buffer_size() if tr is not None else 0)
        return bool(unsent <= self.limit)

    def _hold(self, n: Notification) -> bool:
        ch = n.channel
        if ch in self.channels or ch in self.tent:
            self.notes.append(n)
            self.notes_bytes += len(n.payload) + len(ch) + 11
            self.delivered += 1
        return self._room()

    def _room(self) -> bool:
        """Unsent notification bytes within ``listen_queue_bytes``."""
        tr = self.tr
        unsent: int = (self.batch_bytes + self.notes_bytes + self.s._out_bytes
                       + (tr.get_write_buffer_size() if tr is not None else 0))
        return bool(unsent <= self.limit)

    def _unhold(self) -> bytes:
        """The held notifications of channels still listened to (and held notices), encoded."""
        out = []
        chans = self.channels
        for n in self.notes:
            if isinstance(n, bytes):
                out.append(n)
            elif n.channel in chans:
                out.append(n.wire or m.notification_response(n.pid, n.channel, n.payload))
        self.notes = []
        self.notes_bytes = 0
        return b"".join(out)

    def flush(self) -> None:
        batch = self.batch
        if not batch or self.dead:
            batch.clear()
            self.batch_bytes = 0
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self.batch_bytes = 0
        s = self.s
        if s._direct is not None and not s._out:
            try:
                s._direct(data)
            except Exception:  # client gone: its session is ending
                pass
        else:
            s._send_or_queue(data)

    def gap(self, message: str) -> None:
        if not self.dead:
            self.flush()
            self._notice(message)

    def _notice(self, message: str) -> None:
        notice = m.notice_response({"S": "WARNING", "V": "WARNING", "C": "01000", "M": message})
        if self.notes:  # after the notifications held before it
            self.notes.append(notice)
            self.notes_bytes += len(notice)
        else:
            self.s._send_or_queue(notice)

    def overflow(self) -> None:
        """Too slow: FATAL 53400 after what it has been sent, then disconnect."""
        self.dead = True
        self.batch.clear()
        self.notes = []
        self.notes_bytes = 0
        s = self.s
        log.warning("%r: disconnected: more than listen_queue_bytes = %d bytes of notifications unsent",
                    s, self.limit)
        fatal = m.error("53400", f"terminating connection: the client did not read its notifications "
                                 f"(more than listen_queue_bytes = {self.limit} bytes unsent)", severity="FATAL")
        s._out.clear()
        s._out_bytes = 0
        send = getattr(s.stream, "send_nowait", None)
        try:
            if send is not None:
                send(fatal)
        except Exception:
            pass
        s._abort(None, None)
        abort = getattr(s.stream, "abort", None)
        if abort is not None:  # a peer that never reads would keep the socket open for ever
            s.loop.call_later(10.0, abort)
