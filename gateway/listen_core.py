"""LISTEN fan-out, sans-I/O: who listens to which channel, per-channel backlog.

One :class:`Registry` per database pool (owned by :class:`gateway.listen.ListenHub`).
A subscriber is anything with ``deliver(n) -> bool`` and ``gap(message)``:
a client session (NotificationResponse), an SSE stream (``text/event-stream``)
or an internal callback (e.g. the result cache's invalidation channel).

``deliver`` must not block: it writes or queues and returns False when the
subscriber's own bounded queue is past its limit; the registry then drops it
(``overflow()``) and counts the notification as dropped.  One slow subscriber
never holds up the others nor the upstream listener connection.

Every notification gets a sequence number (``seq``, per registry) used as
the SSE event id.  A bounded backlog per channel (``backlog`` entries per
channel, ``backlog_bytes`` over all channels, oldest evicted first) lets an
SSE client resume with ``Last-Event-ID``; :meth:`Registry.since` says when
the backlog no longer covers what it missed (a *gap*), and so does an upstream
reconnect (:meth:`Registry.mark_gap`): Postgres cannot replay.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

log = logging.getLogger("wirepool.gateway.listen")

#: Postgres' identifier limit (NAMEDATALEN - 1): longer channel names are truncated by it
MAX_CHANNEL = 63


class ListenLimit(Exception):
    """A limit (channels per client, clients per channel) refused a LISTEN."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


@dataclass(slots=True)
class Notification:
    seq: int
    channel: str
    payload: str
    pid: int
    size: int = 0  # bytes counted against backlog_bytes
    wire: bytes = b""  # NotificationResponse, encoded once for all sessions


class Subscriber(Protocol):
    def deliver(self, n: Notification) -> bool:
        """Write or queue ``n``; False when this subscriber's queue is over its limit."""
        ...

    def gap(self, message: str) -> None:
        """Notifications may have been lost (upstream reconnect)."""
        ...

    def overflow(self) -> None:
        """Dropped by the registry for being too slow: disconnect it, saying why."""
        ...


class InternalSubscription:
    """A gateway-internal subscriber: ``callback(payload, pid)`` runs for each
    notification on ``channel``, synchronously, in order; ``on_gap()`` (if
    given) when notifications may have been lost.  Never dropped for being
    slow (the callback must not block).  ``close()`` unsubscribes."""

    def __init__(self, hub: Any, channel: str, callback: Callable[[str, int], None],
                 on_gap: Callable[[], None] | None = None) -> None:
        self.hub = hub
        self.channel = channel
        self.callback = callback
        self.on_gap = on_gap
        self.closed = False

    def deliver(self, n: Notification) -> bool:
        try:
            self.callback(n.payload, n.pid)
        except Exception:  # a bug in the callback must not stop the fan-out
            log.exception("internal LISTEN callback on %r failed", self.channel)
        return True

    def gap(self, message: str) -> None:
        if self.on_gap is not None:
            try:
                self.on_gap()
            except Exception:
                log.exception("internal LISTEN gap callback on %r failed", self.channel)

    def overflow(self) -> None:  # pragma: no cover - deliver never refuses
        pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.hub.unsubscribe(self, self.channel)


@dataclass
class _Channel:
    subs: dict[Any, None] = field(default_factory=dict)
    backlog: deque[Notification] = field(default_factory=deque)
    evicted: int = 0  # highest seq evicted from this channel's backlog


class Registry:
    """Channels, their subscribers and backlogs.  Limits (0 = none):
    ``max_channels`` per subscriber, ``max_subscribers`` per channel."""

    def __init__(self, *, max_channels: int = 0, max_subscribers: int = 0, backlog: int = 16,
                 backlog_bytes: int = 1 << 20, epoch: str = "0") -> None:
        self.max_channels = max_channels
        self.max_subscribers = max_subscribers
        self.backlog = backlog
        self.backlog_bytes = backlog_bytes
        self.epoch = epoch  # SSE ids are "<epoch>-<seq>": ids of an earlier process are a gap
        self.channels: dict[str, _Channel] = {}
        self.by_sub: dict[Any, set[str]] = {}
        self.seq = 0
        self.gaps: list[int] = []  # seqs at which upstream delivery had a gap (last few)
        self._bytes = 0
        self._order: deque[Notification] = deque()  # all backlog entries, oldest first
        # counters
        self.delivered = 0
        self.dropped = 0
        self.received = 0
        self.overflows = 0

    # ------------------------------------------------------------ subscriptions
    def add(self, sub: Any, channel: str) -> bool:
        """Subscribe; True when ``channel`` had no subscriber before (the
        upstream connection must LISTEN).  Raises :class:`ListenLimit`."""
        mine = self.by_sub.get(sub)
        if mine is not None and channel in mine:
            return False
        ch = self.channels.get(channel)
        if self.max_channels and mine is not None and len(mine) >= self.max_channels:
            raise ListenLimit("53400", f"too many LISTEN channels for this client "
                                       f"(listen_max_channels_per_client = {self.max_channels})")
        if self.max_subscribers and ch is not None and len(ch.subs) >= self.max_subscribers:
            raise ListenLimit("53400", f"too many listeners on channel \"{channel}\" "
                                       f"(listen_max_clients_per_channel = {self.max_subscribers})")
        new = ch is None or not ch.subs
        if ch is None:  # nothing before now is known for it
            ch = self.channels[channel] = _Channel(evicted=self.seq)
        ch.subs[sub] = None
        if mine is None:
            mine = self.by_sub[sub] = set()
        mine.add(channel)
        return new

    def remove(self, sub: Any, channel: str) -> bool:
        """Unsubscribe; True when ``channel`` has no subscriber left."""
        mine = self.by_sub.get(sub)
        if mine is None or channel not in mine:
            return False
        mine.discard(channel)
        if not mine:
            del self.by_sub[sub]
        ch = self.channels[channel]
        ch.subs.pop(sub, None)
        return not ch.subs

    def remove_all(self, sub: Any) -> list[str]:
        """Unsubscribe from everything; the channels left without subscribers."""
        return [c for c in sorted(self.by_sub.get(sub, ())) if self.remove(sub, c)]

    def wanted(self) -> list[str]:
        """Channels kept (subscribed, or lingering for SSE resumes): what upstream LISTENs to."""
        return list(self.channels)

    def subscribers(self, channel: str) -> int:
        ch = self.channels.get(channel)
        return len(ch.subs) if ch is not None else 0

    def channels_of(self, sub: Any) -> set[str]:
        return self.by_sub.get(sub, set())

    # ----------------------------------------------------------------- delivery
    def dispatch(self, channel: str, payload: str, pid: int) -> Notification:
        """One notification from upstream: to every subscriber of ``channel``,
        in order; the slow ones are dropped (``overflow``)."""
        self.seq += 1
        n = Notification(self.seq, channel, payload, pid)
        self.received += 1
        ch = self.channels.get(channel)
        if ch is None:
            return n
        self._keep(ch, n)
        slow: list[Any] = []
        for sub in list(ch.subs):
            if sub.deliver(n):
                self.delivered += 1
            else:
                slow.append(sub)
        for sub in slow:
            self.dropped += 1
            self.overflows += 1
            self.remove_all(sub)
            sub.overflow()
        return n

    def _keep(self, ch: _Channel, n: Notification) -> None:
        if self.backlog <= 0 or self.backlog_bytes <= 0:
            ch.evicted = n.seq
            return
        n.size = len(n.payload) + len(n.channel) + 64
        ch.backlog.append(n)
        self._order.append(n)
        self._bytes += n.size
        if len(ch.backlog) > self.backlog:
            self._evict(ch.backlog.popleft(), ch)
        while self._bytes > self.backlog_bytes and self._order:
            old = self._order[0]
            och = self.channels.get(old.channel)
            if och is not None and och.backlog and och.backlog[0] is old:
                och.backlog.popleft()
            self._evict(old, och)

    def _evict(self, n: Notification, ch: _Channel | None) -> None:
        if n.size < 0:  # already evicted
            return
        self._bytes -= n.size
        n.size = -1
        if ch is not None and n.seq > ch.evicted:
            ch.evicted = n.seq
        order = self._order
        while order and order[0].size < 0:
            order.popleft()

    def backlog_used(self) -> int:
        return self._bytes

    def forget_channel(self, channel: str) -> bool:
        """Drop a channel without subscribers and its backlog (the hub then
        UNLISTENs it upstream).  False when it has subscribers again."""
        ch = self.channels.get(channel)
        if ch is None or ch.subs:
            return False
        for n in ch.backlog:
            self._evict(n, None)
        del self.channels[channel]
        return True

    def mark_gap(self) -> None:
        """Upstream delivery stopped for a while (listener reconnected)."""
        self.gaps.append(self.seq)
        del self.gaps[:-8]

    def since(self, channels: Iterable[str], last: int) -> tuple[list[Notification], bool]:
        """Backlog entries after ``last`` on ``channels`` (in seq order), and
        whether something after ``last`` may be missing."""
        out: list[Notification] = []
        gap = any(g >= last for g in self.gaps) or last > self.seq
        for c in channels:
            ch = self.channels.get(c)
            if ch is None:  # not kept: whatever came after ``last`` is unknown
                gap = gap or last < self.seq
                continue
            if ch.evicted > last:
                gap = True
            out.extend(n for n in ch.backlog if n.seq > last)
        out.sort(key=lambda n: n.seq)
        return out, gap

    def stats(self) -> dict[str, int]:
        return {"channels": sum(1 for ch in self.channels.values() if ch.subs),
                "subscribers": len(self.by_sub), "received": self.received,
                "delivered": self.delivered, "dropped": self.dropped,
                "backlog_bytes": self._bytes}


# ------------------------------------------------------------ statement parsing

_WS = rb"(?:\s|/\*(?:[^*]|\*(?!/))*\*/|--[^\n]*(?:\n|\Z))"
_IDENT = rb"(?:\"(?:[^\"]|\"\")+\"|[A-Za-z_\x80-\xff][A-Za-z0-9_$\x80-\xff]*)"
_HEAD = re.compile(rb"(?is)(?:\s|;|/\*|--)*(?:un)?listen\b")
_STMT = re.compile(rb"(?is)" + _WS + rb"*(?:(listen)" + _WS + rb"+(" + _IDENT + rb")|(unlisten)"
                   + _WS + rb"+(?:(\*)|(" + _IDENT + rb"))|(;))")
_END = re.compile(rb"(?s)" + _WS + rb"*\Z")


#: ``listen_head(text, start, end)``: :func:`maybe_listen` as a bound method (hot path: one call less)
listen_head = _HEAD.match


def maybe_listen(text: bytes, start: int = 0, end: int | None = None) -> bool:
    """Cheap first look (hot path): does the text start with LISTEN/UNLISTEN?"""
    return _HEAD.match(text, start, len(text) if end is None else end) is not None


def ident(raw: bytes) -> str | None:
    """An identifier as Postgres reads it (quoted: as is; else lower case), truncated to 63 bytes."""
    s = raw.decode("utf-8", "replace")
    if s.startswith('"'):
        s = s[1:-1].replace('""', '"')
    else:
        s = s.lower()
    if not s:
        return None
    return s.encode("utf-8")[:MAX_CHANNEL].decode("utf-8", "ignore")


def parse_listen(text: bytes) -> list[tuple[str, str | None]] | None:
    """A query text made only of LISTEN/UNLISTEN statements -> its actions
    ``[("LISTEN", ch) | ("UNLISTEN", ch) | ("UNLISTEN", None)]`` in order
    (None: ``UNLISTEN *``); None when the text holds anything else (the
    statement then goes to the server unchanged)."""
    pos, n = 0, len(text)
    out: list[tuple[str, str | None]] = []
    while pos < n:
        if _END.match(text, pos):
            break
        mt = _STMT.match(text, pos)
        if mt is None:
            return None
        pos = mt.end()
        if mt.group(6):  # empty statement
            continue
        if mt.group(1):
            ch = ident(mt.group(2))
            if ch is None:
                return None
            out.append(("LISTEN", ch))
        elif mt.group(4):
            out.append(("UNLISTEN", None))
        else:
            ch = ident(mt.group(5))
            if ch is None:
                return None
            out.append(("UNLISTEN", ch))
        # a statement must end here: ';' or the end of the text
        rest = _END.match(text, pos)
        if rest is None:
            semi = re.compile(rb"(?s)" + _WS + rb"*;").match(text, pos)
            if semi is None:
                return None
            pos = semi.end()
    return out or None


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def apply_actions(current: set[str], actions: Iterable[tuple[str, str | None]]) -> tuple[set[str], set[str]]:
    """The channel set after ``actions`` (Postgres applies them in order at
    commit): (to subscribe, to unsubscribe) relative to ``current``."""
    now = set(current)
    for verb, ch in actions:
        if verb == "LISTEN":
            assert ch is not None
            now.add(ch)
        elif ch is None:
            now.clear()
        else:
            now.discard(ch)
    return now - current, current - now
