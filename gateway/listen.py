"""LISTEN fan-out hub: one upstream listener connection per database pool.

In transaction mode a pooled server cannot hold a client's LISTEN (it serves
someone else a moment later and gets ``UNLISTEN *``).  Instead, per pool, a
:class:`ListenHub` keeps ONE dedicated upstream connection -- opened on the
first LISTEN, **not counted in pool_size** -- that LISTENs to the union of
the channels its subscribers want, and fans every NotificationResponse out
to them in order (:class:`gateway.listen_core.Registry`):

* client sessions on ``pg_listen`` / WebSocket (:mod:`gateway.listen_session`),
* SSE streams ``GET /listen`` (:mod:`gateway.listen_sse`),
* internal subscribers (:meth:`ListenHub.subscribe_internal`, e.g. the cache).

When the listener connection drops it is re-established at once (then with
a back-off of up to 1 s) and its channels re-LISTENed; every subscriber is told
of the gap (``gap(message)``: a NoticeResponse for sessions, an ``event: gap``
for SSE, ``on_gap()`` for internal ones) when it is lost and again when it is
back, since Postgres cannot replay.  A channel whose last subscriber left stays
LISTENed for ``listen_linger`` seconds, keeping its backlog for SSE resumes.

Public API (kept stable for other modules)::

    hub = hub_for(pool)                                # created on first use
    sub = await hub.subscribe_internal("ch", lambda payload, pid: ...,
                                       on_gap=lambda: ...)
    sub.close()
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import time
from typing import TYPE_CHECKING, Any, Callable

from driver.protocol import messages as m
from driver.protocol.framing import ProtocolError

from .listen_core import InternalSubscription, ListenLimit, Registry, quote_ident
from .server import ServerConnection, ServerError, open_server

if TYPE_CHECKING:  # pragma: no cover
    from .pool import Pool

__all__ = ["ListenHub", "ListenLimit", "InternalSubscription", "hub_for"]

log = logging.getLogger("wirepool.gateway.listen")

_A, _Z, _E = 65, 90, 69
_I32 = struct.Struct("!i")
_EPOCH = f"{os.getpid():x}{int(time.time()):x}"


def hub_for(pool: "Pool") -> "ListenHub":
    """The pool's hub (created on first use; closed by ``Pool.close``)."""
    hub: ListenHub | None = getattr(pool, "listen_hub", None)
    if hub is None or hub.closed:
        hub = ListenHub(pool)
        pool.listen_hub = hub  # type: ignore[attr-defined]
    return hub


class ListenHub:
    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        s = pool.settings
        self.settings = s
        self.name = pool.name
        self.registry = Registry(max_channels=s.listen_max_channels_per_client,
                                 max_subscribers=s.listen_max_clients_per_channel,
                                 backlog=s.listen_backlog, backlog_bytes=s.listen_backlog_bytes,
                                 epoch=_EPOCH)
        self.loop = asyncio.get_running_loop()
        self.conn: ServerConnection | None = None
        self.closed = False
        #: channels the upstream connection LISTENs to (confirmed by ReadyForQuery)
        self.listening: set[str] = set()
        #: commands in flight, in order: (channels now listened, channels now unlistened, waiters)
        self._cmds: list[tuple[set[str], set[str], list[asyncio.Future[None]]]] = []
        #: futures waiting for the connection (resolved once it is up and LISTENs to everything)
        self._waiters: list[asyncio.Future[None]] = []
        self._task: asyncio.Task[None] | None = None
        self._linger: dict[str, asyncio.TimerHandle] = {}
        self.down_since = 0.0
        self.reconnects = 0
        self.last_error = ""
        #: subscribers with notifications batched during the current upstream chunk (``flush()`` after it)
        self.touched: list[Any] = []

    def __repr__(self) -> str:
        return f"<ListenHub {self.name} channels={len(self.listening)}>"

    # ------------------------------------------------------------ subscribing
    def subscribe(self, sub: Any, channel: str) -> asyncio.Future[None] | None:
        """Subscribe ``sub`` (raises :class:`ListenLimit`).  Returns a future
        done when upstream LISTENs to ``channel`` (None: it already does)."""
        if self.closed:
            raise ListenLimit("57P01", "the LISTEN hub is closed (gateway shutting down)")
        self.registry.add(sub, channel)
        t = self._linger.pop(channel, None)
        if t is not None:
            t.cancel()
        return self._want(channel)

    def unsubscribe(self, sub: Any, channel: str) -> None:
        if self.registry.remove(sub, channel):
            self._later(channel)

    def unsubscribe_all(self, sub: Any) -> None:
        for channel in self.registry.remove_all(sub):
            self._later(channel)

    async def subscribe_internal(self, channel: str, callback: Callable[[str, int], None],
                                 on_gap: Callable[[], None] | None = None) -> InternalSubscription:
        """A gateway-internal subscriber; returns once upstream LISTENs to
        ``channel`` (or raises ServerError after ``server_connect_timeout``)."""
        sub = InternalSubscription(self, channel, callback, on_gap)
        fut = self.subscribe(sub, channel)
        if fut is not None:
            try:
                await asyncio.wait_for(asyncio.shield(fut), self.settings.server_connect_timeout)
            except asyncio.TimeoutError:
                sub.close()
                raise ServerError("08006", f"LISTEN {channel}: upstream listener connection not "
                                  f"available ({self.last_error or 'timeout'})") from None
        return sub

    def _later(self, channel: str) -> None:
        """The channel lost its last subscriber: keep it (and its backlog) for
        ``listen_linger`` seconds, then UNLISTEN."""
        linger = self.settings.listen_linger
        if linger <= 0:
            self._forget(channel)
        elif channel not in self._linger:
            self._linger[channel] = self.loop.call_later(linger, self._forget, channel)

    def _forget(self, channel: str) -> None:
        self._linger.pop(channel, None)
        if self.registry.forget_channel(channel) and channel in self.listening and self.conn is not None:
            self._command(set(), {channel}, None)

    def _want(self, channel: str) -> asyncio.Future[None] | None:
        if channel in self.listening:
            return None
        for added, _removed, waiters in self._cmds:
            if channel in added:
                fut = self.loop.create_future()
                waiters.append(fut)
                return fut
        fut = self.loop.create_future()
        if self.conn is None:
            self._waiters.append(fut)
            self._start()
        else:
            self._command({channel}, set(), fut)
        return fut

    # ----------------------------------------------------------- upstream side
    def _command(self, add: set[str], remove: set[str], fut: asyncio.Future[None] | None) -> None:
        conn = self.conn
        assert conn is not None
        sql = [f"LISTEN {quote_ident(c)}" for c in sorted(add)]
        sql += [f"UNLISTEN {quote_ident(c)}" for c in sorted(remove)]
        self._cmds.append((add, remove, [fut] if fut is not None else []))
        conn.write(m.query(";".join(sql)))

    def _start(self) -> None:
        if self._task is None and not self.closed:
            self._task = self.loop.create_task(self._run())

    async def _run(self) -> None:
        """Connect, LISTEN to everything wanted; retry with back-off."""
        delay = 0.0
        db = self.pool.db
        try:
            while not self.closed:
                if delay:
                    await asyncio.sleep(delay)
                try:
                    conn = await asyncio.wait_for(
                        open_server(self, db.host, db.port, db.user, db.password, db.dbname,  # type: ignore[arg-type]
                                    db.sslmode, db.sslrootcert),
                        timeout=self.settings.server_connect_timeout)
                except (ServerError, asyncio.TimeoutError, OSError) as exc:
                    self.last_error = getattr(exc, "message", None) or str(exc) or "timeout"
                    log.warning("listen hub %s: connect failed: %s", self.name, self.last_error)
                    delay = min(1.0, max(0.05, delay * 2))
                    continue
                if self.closed:
                    conn.close()
                    return
                self.conn = conn
                conn.client = self
                wanted = set(self.registry.wanted())
                waiters, self._waiters = self._waiters, []
                if wanted:
                    self._command(wanted, set(), None)
                    self._cmds[-1][2].extend(waiters)
                else:
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
                if self.down_since:
                    down = self.loop.time() - self.down_since
                    self.down_since = 0.0
                    self.reconnects += 1
                    self._gap(f"wirepool: the LISTEN connection to database \"{self.name}\" is back after "
                              f"{down:.2f}s; notifications sent meanwhile were lost")
                return
        finally:
            self._task = None

    # called by ServerConnection (we are its "client" and its "pool")
    def on_server_data(self, server: ServerConnection, data: bytes) -> None:
        try:
            chunk, idx = server.reader.feed_read_raw(data)
        except ProtocolError:
            log.warning("listen hub %s: malformed data from the server; reconnecting", self.name)
            server.close()
            return
        reg = self.registry
        for t, s, e in idx:
            if t == _A:
                pid = _I32.unpack_from(chunk, s)[0]
                i = chunk.find(b"\x00", s + 4, e)
                j = chunk.find(b"\x00", i + 1, e)
                if i < 0 or j < 0:
                    continue
                reg.dispatch(chunk[s + 4:i].decode("utf-8", "replace"),
                             chunk[i + 1:j].decode("utf-8", "replace"), pid)
            elif t == _Z:
                if self._cmds:
                    add, remove, waiters = self._cmds.pop(0)
                    self.listening |= add
                    self.listening -= remove
                    for w in waiters:
                        if not w.done():
                            w.set_result(None)
            elif t == _E:
                f = m.decode_fields(chunk[s:e])
                log.warning("listen hub %s: %s %s", self.name, f.get("C"), f.get("M"))
        touched = self.touched
        if touched:
            self.touched = []
            for sub in touched:
                sub.flush()

    def server_lost(self, server: ServerConnection) -> None:
        if server is not self.conn:
            return
        self.conn = None
        self.listening.clear()
        for _add, _rm, waiters in self._cmds:
            self._waiters.extend(w for w in waiters if not w.done())
        self._cmds.clear()
        if self.closed:
            for w in self._waiters:
                if not w.done():
                    w.cancel()
            return
        self.down_since = self.loop.time()
        self.registry.mark_gap()
        log.warning("listen hub %s: listener connection lost; reconnecting", self.name)
        self._gap(f"wirepool: the LISTEN connection to database \"{self.name}\" was lost; "
                  "notifications may be missed until it is re-established")
        self._start()

    def _gap(self, message: str) -> None:
        for sub in list(self.registry.by_sub):
            sub.gap(message)

    # ----------------------------------------------------------------- admin
    def rows(self) -> list[tuple[str, str, int, int]]:
        """(channel, state, subscribers, backlog entries) for SHOW LISTENERS."""
        out = []
        for c, ch in sorted(self.registry.channels.items()):
            state = "listening" if c in self.listening else "pending"
            if not ch.subs:
                state += " (linger)"
            out.append((c, state, len(ch.subs), len(ch.backlog)))
        return out

    @property
    def backend_pid(self) -> int:
        return self.conn.backend_pid if self.conn is not None else 0

    def close(self) -> None:
        """Pool closing: drop the upstream connection (subscribers end with their sessions)."""
        if self.closed:
            return
        self.closed = True
        for t in self._linger.values():
            t.cancel()
        self._linger.clear()
        if self._task is not None:
            self._task.cancel()
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.close()
        for w in self._waiters:
            if not w.done():
                w.cancel()
