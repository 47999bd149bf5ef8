"""What a pooled server must run before and after a client's transaction.

The half of :class:`gateway.session.Session` that keeps a shared server in the
state its client expects (docs/pooling-semantics.md):

* linking (:meth:`ServerStateSync.assign`, :meth:`_send_pending`): a server
  handed to the client gets what the client queued, after what it needs first;
  a malformed queued message leaves it unlinked (or discarded, when its state
  had already been updated for this client);
* on link (:meth:`ServerStateSync._link`): DISCARD ALL when the server last
  served another ``[users]`` identity, another client's pending clean-up, and
  one batch that re-applies the client's tracked parameters and session
  settings (:mod:`gateway.tracking`);
* after a transaction that may have left state (:meth:`_probe`): one probe
  query, whose answer decides the clean-up;
* on release (:meth:`_reset_parts`): what the server needs before another
  client may use it;
* the replies to these gateway-owned queries are swallowed
  (:class:`gateway.accounting.Accounting` calls :meth:`swallowed_row`,
  :meth:`swallowed_error`, :meth:`swallow_done`, :meth:`parameter_status`).

A mixin rather than a separate object: the hot path (``_link`` runs at every
transaction in transaction mode) keeps plain attribute access on the session,
which holds the state in its ``__slots__``.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from driver.protocol import messages as m
from driver.protocol.framing import ProtocolError

from .prepared import server_statements
from .server import ServerConnection, parse_parameter_status, tracked_signature
from .login import TRACKED_NAMES
from .tracking import Tracker, apply_sql, cleanup, parse_probe, quote_literal

if TYPE_CHECKING:  # pragma: no cover
    from .accounting import Accounting
    from .cache_hook import SessionCache
    from .prepared import Rewriter
    from .config import GatewaySettings
    from .pool import Pool, PoolError

log = logging.getLogger("wirepool.gateway.session")

_IDLE = 73  # 'I'

DEALLOCATE_ALL = m.query("DEALLOCATE ALL")
DISCARD_ALL = m.query("DISCARD ALL")
UNLISTEN_ALL = m.query("UNLISTEN *")
_SET, _PROBE = "set", "probe"  # kinds of the gateway's own queries (Session._kinds)


class ServerStateSync:
    """Mixin of :class:`gateway.session.Session`: owns the slots below, reads the session's."""

    __slots__ = ('_assigned', '_gucs_before', '_kinds', '_pending', '_pending_bytes', '_probe_rows', '_reset_later',
                 '_reset_next', '_swallow_err', '_swallow_keys', 'link_time', 'params', 'server', 'sig')

    _gucs_before: dict[str, str]
    _kinds: list[str | None]  # one per gateway-owned query in flight: _SET, _PROBE or None
    _probe_rows: list[bytes]
    _reset_later: list[bytes] | None
    _reset_next: list[bytes]
    _swallow_err: bool
    _swallow_keys: tuple[str, ...]
    params: dict[str, str]  # the client's tracked parameters
    sig: Any  # tracked_signature(params)
    server: ServerConnection | None  # the linked server
    link_time: float
    _assigned: "asyncio.Future[None] | None"  # a waiting client's, set when a server is linked
    _pending: list[tuple[bytes, list[tuple[int, int, int]]]]  # framed client chunks waiting for a server
    _pending_bytes: int
    # the session's (read here)
    user: str
    track: Tracker | None
    acc: "Accounting"
    prepared: "Rewriter | None"
    cache: "SessionCache | None"
    settings: "GatewaySettings"
    transaction_mode: bool

    _aborted: bool
    _finished: bool
    loop: asyncio.AbstractEventLoop
    pool: "Pool | None"

    def _release(self) -> None:  # the session's
        raise NotImplementedError

    def _abort(self, sqlstate: str | None, message: str | None) -> None:  # the session's
        raise NotImplementedError

    def _send_or_queue(self, data: bytes) -> None:  # the session's
        raise NotImplementedError

    # ------------------------------------------------------------ linking
    def assign(self, server: ServerConnection) -> bool:
        """Link ``server`` and send what the client queued.  Called directly or
        by the pool when it hands a released server to this waiting client.
        Returns False (server not taken) when the session is ending."""
        if self._aborted or self._finished:
            return False
        try:
            self._send_pending(server)
        except ProtocolError as exc:
            self._abort(exc.sqlstate, str(exc))
            return False
        fut = self._assigned
        if fut is not None:
            self._assigned = None
            if not fut.done():
                fut.set_result(None)
        return True

    def _send_pending(self, server: ServerConnection, now: float | None = None) -> None:
        """Link ``server`` and write what the client queued.  A malformed
        message (ProtocolError): nothing is written and the server is not
        linked -- it goes on untouched, to another client.  ``now``: the
        loop's time, when the caller has it."""
        self.server = server
        server.client = self
        self.link_time = self.loop.time() if now is None else now
        head = self._link(server)
        pending = self._pending
        self._pending = []
        self._pending_bytes = 0
        if not head and len(pending) == 1:  # the common case: one chunk, nothing ahead of it
            chunk, idx = pending[0]
            if self.prepared is not None:
                try:
                    chunk = self._rewrite(chunk, idx)
                except ProtocolError:
                    self._unlink_unused(server, head)
                    raise
            if chunk:
                server.write(chunk)
            return
        parts = [head] if head else []
        rewrite = self._rewrite if self.prepared is not None else None
        for chunk, idx in pending:
            if rewrite is not None:
                try:
                    chunk = rewrite(chunk, idx)
                except ProtocolError:
                    self._unlink_unused(server, head)
                    raise
            if chunk:
                parts.append(chunk)
        if parts:
            server.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def _unlink_unused(self, server: ServerConnection, head: bytes) -> None:
        """Undo :meth:`_link` of a server nothing was written to.  ``head``: what
        :meth:`_link` meant to send first (a reset for another identity, another
        client's clean-ups, SETs); it already updated what the gateway believes
        of the server, so that server is discarded, not handed to another client."""
        self.server = None
        server.client = None
        self.acc.swallow = 0
        if self.prepared is not None:
            self.prepared.abandon()  # statements noted for it become uncertain: closed before reuse
            self.prepared.unlink()
        pool = self.pool
        if head and pool is not None:
            log.info("%r: closed; its reset for %r was not sent (malformed message)", server, self)
            pool.discard(server)

    def _rewrite(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bytes:
        """Named prepared statements: rewrite for the linked server (raises
        ProtocolError on a malformed message; nothing of ``chunk`` was sent)."""
        rw = self.prepared
        assert rw is not None
        chunk, local = rw.rewrite_frontend(chunk, idx)
        if rw.dropped_rfq:  # Query messages skipped after a refused message: no ReadyForQuery
            self.acc.outstanding -= rw.dropped_rfq
        if local:
            self._send_or_queue(local)
        return chunk

    def wait_failed(self, err: PoolError) -> None:
        """The pool cannot give this waiting client a server."""
        self._abort(err.sqlstate, err.message)

    # ------------------------------------------------------------ state sync

    def _link(self, server: ServerConnection) -> bytes:
        """``server`` was just linked; returns what must be sent to it before the
        client's bytes (b"" mostly): DISCARD ALL when the server last served
        another ``[users]`` identity, and one batch that sets the tracked
        parameters and the client's session settings (:mod:`gateway.tracking`)."""
        head = []
        if server.owner != self.user or server.pending:
            head = self._link_reset(server)
        if self.prepared is not None:
            st = server.statements
            if st is None:
                st = server.statements = server_statements(server, self.settings.max_prepared_statements)
            self.prepared.link(st)
        tk = self.track
        if not head and server.sig == self.sig and not server.gucs and (tk is None or not tk.settings):
            self._swallow_keys = ()
            return b""  # the common case: nothing to set
        sql = []
        if head or server.sig != self.sig:
            sp = server.params
            diffs = [(k, v) for k, v in self.params.items() if head or sp.get(k) != v]
            sql = [f"SET {k} TO {quote_literal(v)}" for k, v in diffs]
            self._swallow_keys = tuple(k for k, _ in diffs)
        else:
            self._swallow_keys = ()
        if tk is not None and (tk.settings or server.gucs):
            more = apply_sql(tk.settings, server.gucs)
            if more:
                sql += more
                self._gucs_before = server.gucs
                server.gucs = dict(tk.settings)
        if sql:
            head.append(m.query(";".join(sql)))
            self._kinds.append(_SET)
        self.acc.swallow += len(head)
        return b"".join(head)

    def _link_reset(self, server: ServerConnection) -> list[bytes]:
        """What a server needs before this client: DISCARD ALL after another
        ``[users]`` identity, or another client's left-over temp objects, SQL
        statements and held cursors (the replies are swallowed)."""
        head: list[bytes] = []
        if server.owner != self.user:
            if server.owner is not None:
                head.append(DISCARD_ALL)
                self._kinds.append(None)
                server.reset_state()
            server.owner = self.user
        if server.pending and server.pending_owner is not self:
            head += server.pending
            self._kinds += [None] * len(server.pending)
            server.pending = []
            server.pending_owner = None
        return head

    def _probe(self, server: ServerConnection) -> None:
        """The transaction that just ended may have left state on the server:
        ask what is there before releasing it (see gateway.tracking)."""
        tk = self.track
        assert tk is not None
        tk.marked = False
        self._probe_rows = []
        self._kinds.append(_PROBE)
        self.acc.swallow += 1
        server.write(m.query(tk.probe()))

    def parameter_status(self, body: bytes) -> None:
        server = self.server
        if server is not None:
            self._param_status(server, body)

    def swallowed_row(self, body: bytes) -> None:
        if self._kinds and self._kinds[0] is _PROBE:
            self._probe_rows.append(body)

    def swallowed_error(self, body: bytes) -> None:
        fields = m.decode_fields(body)
        log.warning("%r: gateway query (%s) failed: %s", self, self._kinds[0] if self._kinds else "?",
                    fields.get("M"))
        self._swallow_err = True

    def swallow_done(self) -> None:
        """One of our own queries is answered."""
        kind = self._kinds.pop(0) if self._kinds else None
        failed, self._swallow_err = self._swallow_err, False
        server = self.server
        if server is None:
            return
        if self.acc.status >= 0:
            server.status = self.acc.status
        if kind is _SET:
            # Adopt the server's resulting values (canonical spelling, or its
            # unchanged value if our SET failed): no SET loop.
            for k in self._swallow_keys:
                if k in server.params:
                    self.params[k] = server.params[k]
            self.sig = tracked_signature(self.params)
            if failed:  # the batch ran as one implicit transaction: nothing changed
                server.gucs = self._gucs_before
        elif kind is _PROBE:
            tk = self.track
            assert tk is not None
            rows, self._probe_rows = self._probe_rows, []
            if failed:  # cannot tell what is there: the server gets DISCARD ALL
                self._reset_next = [DISCARD_ALL]
            else:
                res = parse_probe(rows)
                tk.probed(res)
                if res.temp and self.cache is not None:
                    self.cache.disabled = True  # names may resolve to its temp objects
                server.gucs = dict(res.settings)
                now, later = cleanup(res)
                self._reset_next = [m.query(q) for q in now]
                self._reset_later = [m.query(q) for q in later]
            acc = self.acc
            if (not acc.swallow and acc.settled() and server.status == _IDLE and self.transaction_mode):
                self._release()

    def _param_status(self, server: ServerConnection, body: bytes) -> None:
        name, value = parse_parameter_status(body)
        server.params[name] = value
        if name in TRACKED_NAMES:
            self.params[name] = value
            server.sig = tracked_signature(server.params)
            self.sig = tracked_signature(self.params)
        elif self.track is not None and not self.acc.swallow:
            self.track.reported(name)  # e.g. default_transaction_read_only: probe at the end

    def _reset_parts(self, server: ServerConnection) -> list[bytes]:
        """What a transaction-mode server needs before another client may use
        it: what the state probe found (temp objects, advisory locks, SQL
        prepared statements, held cursors, LISTEN), no named statements (when
        they are not tracked), or server_reset_query when it runs always."""
        parts = self._reset_next
        self._reset_next = []
        if self._reset_later is not None:
            server.pending = self._reset_later
            server.pending_owner = self if self._reset_later else None
            self._reset_later = None
        acc = self.acc
        if acc.named:
            acc.named = False
            parts.append(DEALLOCATE_ALL)
        if acc.listened:
            acc.listened = False
            parts.append(UNLISTEN_ALL)
        s = self.settings
        if s.server_reset_query_always and s.server_reset_query:
            parts = [m.query(s.server_reset_query)]
            server.reset_state()
        elif DISCARD_ALL in parts:
            server.reset_state()
        return parts
