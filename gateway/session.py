"""Client sessions: the transaction-pooling loop.

One :class:`Session` per :class:`~gateway.streams.ClientStream`.

Startup (:mod:`gateway.login`): SSLRequest (TLS when configured, else ``N``),
CancelRequest, startup parameters, authentication, admission, the database
lookup and the login reply -- without a server.  Bytes are processed strictly
in order, so StartupMessage + PasswordMessage + the first query in one chunk
work.

Pooling loop (the hot path): every client chunk is framed with
``FrontendReader.read_raw()`` (:mod:`gateway.session_input` reads the
client) and forwarded whole; only message types are inspected.  A server is linked at the first message of a transaction.  What
the server still owes the client (outstanding ReadyForQuery, skip-till-Sync,
swallowed replies) is counted by :class:`gateway.accounting.Accounting`; in
transaction mode the server is released when it says the transaction is over
(ReadyForQuery ``I`` with nothing owed).  In session mode it stays linked
until the client leaves.  Server -> client bytes are handled in the server's
``data_received`` callback (:meth:`Session.on_server_data`): written straight
to the client's transport, or queued for the session's writer task
(:mod:`gateway.session_output`).

Session state (transaction mode): SET/RESET/set_config, temp objects,
advisory locks, SQL PREPARE, WITH HOLD cursors and LISTEN are detected by
:mod:`gateway.tracking`; a transaction that may have left any is followed by
one probe query, the client's settings are re-applied wherever it lands
(:mod:`gateway.server_sync`), and the server is cleaned before another client uses
it.  A server never passes from one ``[users]`` identity to another without
DISCARD ALL.  Without the statement rewriter (``max_prepared_statements = 0``)
a server on which the client created a named protocol-level statement gets
``DEALLOCATE ALL`` before it goes back to the pool.  The rules:
docs/pooling-semantics.md.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, ProtocolError

from .accounting import Accounting
from .cache_hook import SessionCache, on_ddl
from .auth import AuthFailed
from . import login, session_close, session_timeouts
from .login import TRACKED, TRACKED_NAMES  # noqa: F401 (TRACKED: re-exported for http_exec)
from .limits import login_reader
from .pool import Pool, PoolError
from .prepared import Rewriter
from .schema import database_key
from .server import TRACKED_ORDER, ServerConnection
from .server_sync import ServerStateSync
from .session_input import ClientInput
from .session_output import OUT_HIGH, ClientOutput
from .streams import TransportError
from .listen_session import Lazy, SessionListen
from .tracking import Tracker

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway

log = logging.getLogger("wirepool.gateway.session")

assert TRACKED_NAMES == frozenset(TRACKED_ORDER)

_S = 83  # backend ParameterStatus
_Z = 90
_IDLE = 73  # 'I'


_RFQ_IDLE = m.ready_for_query("I")


def _fatal(sqlstate: str, message: str) -> bytes:
    return m.error(sqlstate, message, severity="FATAL")


class Session(ClientInput, ClientOutput, ServerStateSync):
    """One client connection: startup, then forwarding between the client
    and a linked server (the reading loops: :mod:`gateway.session_input`; the
    writer: :mod:`gateway.session_output`; linking and state sync:
    :mod:`gateway.server_sync`; timeouts: :mod:`gateway.session_timeouts`)."""

    # Thousands of idle sessions per process: no per-instance __dict__ (subclasses may have one).
    __slots__ = ('_aborted', '_cancel_sent', '_finished', '_main',
                 '_partial_since', '_pipelined', '_serving',
                 '_track_activity', '_track_partial', '_track_times',
                 'acc', 'connect_time', 'counted', 'database', 'gw',
                 'last_activity', 'last_z', 'loop', 'pool', 'pool_list', 'prepared',
                 'process_id', 'query_start', 'reader', 'secret_key', 'settings', 'stream',
                 'track', 'transaction_mode', 'user', 'wait_future', 'wait_start', 'listen', 'cache',
                 '__weakref__') + ClientInput.SLOTS + ClientOutput.SLOTS
    # (a new attribute must be added here, in a mixin's SLOTS or in ServerStateSync's slots: else AttributeError)

    def __init__(self, gateway: "Gateway", stream: Any) -> None:
        self.gw = gateway
        self.stream = stream
        self.loop = gateway.loop
        s = gateway.settings
        self.settings = s
        self.reader: FrontendReader = login_reader(s)  # Postgres' pre-login limits (gateway/limits.py)
        self._partial_since = 0.0  # first byte of a partially received message (client_message_timeout)
        self._track_partial = s.client_message_timeout > 0
        # pool bookkeeping (lists are maintained by Pool._move)
        self.pool: Pool | None = None
        self.pool_list: dict[Any, None] | None = None
        self.wait_future: asyncio.Future[ServerConnection] | None = None
        self.wait_start = 0.0
        self.transaction_mode = True
        # link state
        self.server: ServerConnection | None = None
        #: what the linked server still owes (ReadyForQuery, skip-till-Sync, swallowed replies)
        self.acc = Accounting(None, self)
        self.prepared: Rewriter | None = None  # named prepared statements (transaction mode)
        #: session state tracking (transaction mode, gateway.tracking)
        self.track: Tracker | None = None
        self.listen: SessionListen | Lazy | None = None  # LISTEN via the pool's hub (gateway.listen_session)
        self.cache: SessionCache | None = None  # query result cache (gateway.cache_hook), set at login
        self._kinds: list[str | None] = []  # the gateway's own queries awaiting their reply, in order
        self._swallow_err = False
        self._probe_rows: list[bytes] = []
        self._reset_next: list[bytes] = []  # what the last probe says the server needs before release
        self._reset_later: list[bytes] | None = None  # ... and before another client's use (None: no news)
        self._gucs_before: dict[str, str] = {}
        self._swallow_keys: tuple[str, ...] = ()
        self.last_z = 0.0
        self.link_time = self.connect_time = self.loop.time()
        self.query_start = 0.0
        self.last_activity = 0.0
        self._cancel_sent = False
        self._track_times = s.idle_transaction_timeout > 0 or s.query_timeout > 0
        self._track_activity = s.client_idle_timeout > 0
        # identity
        self.user = ""
        self.database = ""
        self.params: dict[str, str] = {}
        self.sig: tuple[str | None, ...] = ()
        self.process_id = 0
        self.secret_key = 0
        self.counted = False
        self._init_output(stream)
        self._init_input()
        #: framed client chunks (bytes, message index) waiting for a server
        self._pending: list[tuple[bytes, list[tuple[int, int, int]]]] = []
        self._pending_bytes = 0
        self._assigned: asyncio.Future[None] | None = None
        self._main: asyncio.Task[Any] | None = None
        self._aborted = False
        self._finished = False
        self._serving = False
        self._pipelined: login.Pipelined | None = None  # messages received together during login

    def __repr__(self) -> str:
        return f"<Session {getattr(self.stream, 'peer', '?')} {self.user}@{self.database}>"

    # ================================================================ run
    async def run(self) -> None:
        self._main = asyncio.current_task()
        try:
            try:
                ok = await self._startup()
                if ok:
                    await self._serve()
            except asyncio.CancelledError:
                if not self._aborted:
                    raise
                if self._main is not None:
                    self._main.uncancel()
            except ProtocolError as exc:
                self._send_or_queue(_fatal(exc.sqlstate, str(exc)))
            except (login.ClientGone, TransportError, ConnectionError, OSError):
                pass
            except AuthFailed as exc:
                self.gw.obs.login_failed(getattr(self.stream, "kind", "?"), exc.sqlstate)
                self._send_or_queue(_fatal(exc.sqlstate, exc.message))
            except PoolError as exc:
                self._send_or_queue(_fatal(exc.sqlstate, exc.message))
            except Exception:  # pragma: no cover - a bug; do not take the gateway down
                log.exception("session %r failed", self)
                self._send_or_queue(_fatal("XX000", "internal error in the gateway"))
        finally:
            await session_close.cleanup(self)

    # ======================================================== login (gateway/login.py)
    # (the functions themselves, not wrappers: one coroutine less per login step)
    _startup = login.startup
    _next_message = login.next_message  # (also the authenticator's and the admin console's reader)
    _take_pending = login.take_pipelined
    #: Startup packet(s) and authentication (overridden by /pg's pre-authenticated session).
    _handshake = login.handshake

    _admit = login.admit

    # ======================================================== pooling loop
    async def _serve(self) -> None:
        self._serving = True
        if self._direct is None or self._out:
            self._ensure_writer()
        chunk, idx = self._take_pending()
        if chunk and not self._from_client(chunk, idx):
            self.stream.terminated = True
            return
        reader = self.reader
        if reader.buffered:
            # Pipelined after a startup that needed no password message (token, trust).
            chunk, idx = reader.read_raw()
            if chunk and not self._from_client(chunk, idx):
                self.stream.terminated = True
                return
            reader.check_buffered()  # (a bad header behind them: 08P01 now)
        set_cb = getattr(self.stream, "set_data_callback", None)
        if set_cb is not None:
            await self._serve_callbacks(set_cb)
            return
        await self._serve_recv()

    def _from_client(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        """Forward one framed chunk (or queue it until a server is assigned);
        False when the client terminated.  Synchronous: no task switch."""
        lq = self.listen
        cache = self.cache  # (first when it holds the start of a unit: order is kept)
        if lq is not None and (cache is None or cache.held is None) and lq.take(self, chunk, idx):
            return True  # LISTEN/UNLISTEN answered by the gateway
        if cache is not None and (kept := cache.intercept(chunk, idx)) is not None:
            return kept  # answered from (or waiting for, or holding for) the result cache
        acc = self.acc
        before, d0 = acc.outstanding, acc.dirty
        chunk, idx, terminate = acc.client(chunk, idx)
        out = acc.outstanding
        tk = self.track
        if tk is not None and (acc.texts or tk.names or tk.all_binds):
            tk.look(chunk, idx, acc.texts, acc.text)  # SET, temp tables, locks... (gateway.tracking)
        now: float | None = None
        if before == 0 and out > 0:  # a query starts (its ReadyForQuery ends it: query duration)
            self.query_start = self.last_activity = now = self.loop.time()
            self._cancel_sent = False
        elif self._track_times or self._track_activity:
            self.last_activity = now = self.loop.time()
        if not chunk:
            return not terminate
        pool = self.pool
        assert pool is not None
        pool.query_count += out - before
        pool.obs.bytes_in += len(chunk)
        server = self.server
        if server is not None:
            if self.prepared is not None:
                try:
                    chunk = self._rewrite(chunk, idx)
                except ProtocolError:
                    # nothing of this chunk reached the server: it owes no replies for it
                    acc.outstanding, acc.dirty = before, d0
                    raise
                if not chunk:
                    return not terminate
            server.write(chunk)
            return not terminate
        # Not linked: queue the bytes; link now or when the pool assigns a server.
        self._pending.append((chunk, idx))
        self._pending_bytes += len(chunk)
        if self.pool_list is pool.cl_waiting:
            return not terminate
        server = pool.try_acquire(now)
        if server is None:
            pool.enqueue(self)  # may raise PoolError (fail fast)
        else:
            try:
                self._send_pending(server, now)
            except ProtocolError:
                if server.pool_list is not None:  # (not discarded by _unlink_unused)
                    pool.release(server)  # untouched: nothing was sent
                raise
        return not terminate

    # ------------------------------------------------ server -> client (hot)
    def on_server_data(self, server: ServerConnection, data: bytes) -> None:
        try:
            chunk, idx = server.reader.feed_read_runs(data)  # a run of DataRows: one entry
        except ProtocolError:
            log.warning("%r sent a malformed message; closing it", server)
            server.close()
            return
        if not chunk:
            return
        acc = self.acc
        if acc.swallow or acc.watch:  # replies to the gateway's own queries, skipped Queries
            chunk, idx = acc.from_server(chunk, idx)
            if not chunk:
                return
        rw = self.prepared
        if rw is not None:
            chunk, idx = rw.rewrite_backend(chunk, idx)
            if not chunk:
                return
        z = acc.replies(chunk, idx)
        cache = self.cache
        if cache is not None and cache.cap is not None:
            cache.captured(chunk, idx)
        lq = self.listen
        if lq is not None and lq.watch:  # LISTEN in a transaction, held notifications (gateway.listen_session)
            chunk = lq.replies(chunk, idx)
        pool = self.pool
        assert pool is not None
        pool.obs.bytes_out += len(chunk)
        direct = self._direct
        if direct is not None and not self._out:
            # Straight to the client's transport (no task switch).
            try:
                ok = direct(chunk)
            except Exception:
                self._abort(None, None)
                return
            if not ok and self._paused is None and server.transport is not None:
                # Slow client: stop reading this server until it drains.
                self._paused = server
                server.transport.pause_reading()
                w = self._wake
                if w is not None:
                    self._wake = None
                    w.set_result(None)
                elif self._writer is None:
                    self._ensure_writer()
        else:
            # queue for the writer task
            self._out.append(chunk)
            self._out_bytes += len(chunk)
            w = self._wake
            if w is not None:
                self._wake = None
                w.set_result(None)
            elif self._writer is None:
                self._ensure_writer()
            if z < 0 and self._out_bytes > OUT_HIGH and self._paused is None and server.transport is not None:
                self._paused = server
                server.transport.pause_reading()
        if z < 0:
            return
        server.status = z
        if acc.ddl:  # a DDL completed: bump the schema epoch, again when its transaction ends
            self.gw.statements.bump(dbk := database_key(pool.db))
            on_ddl(self.gw, dbk)  # the database's cached results go too
            if z == _IDLE:
                acc.ddl = False
        if acc.outstanding == 0:
            now = self.loop.time()
            pool.obs.query.observe(now - self.query_start)
            if z == _IDLE and not acc.dirty and self.transaction_mode:
                tk = self.track
                if tk is not None and tk.marked:
                    self._probe(server)
                else:
                    self._release(now)
            elif self._track_times:
                self.last_z = now

    def _release(self, now: float | None = None) -> None:
        server = self.server
        if server is None:
            return
        self.server = None
        server.client = None
        if self.prepared is not None:
            self.prepared.unlink()
        pool = self.pool
        assert pool is not None
        if now is None:
            now = self.loop.time()
        pool.xact_count += 1
        linked = now - self.link_time
        pool.xact_time += linked
        pool.obs.xact.observe(linked)
        if self._paused is server:
            self._paused = None
            if server.transport is not None:
                server.transport.resume_reading()
        reset = self._reset_parts(server)
        if reset:
            pool.reset_and_release(server, b"".join(reset), len(reset))
        else:
            pool.release(server, now)
        if not self.gw.accepting:
            self._abort("57P01", "terminating connection due to administrator command")

    def on_server_lost(self, server: ServerConnection) -> None:
        """The linked server died: the client gets an error and is disconnected."""
        if self.server is not server:
            return
        self.server = None
        fatal = self.acc.fatal  # the server said why (e.g. 57P01): exactly one error for the client
        self.acc.lost()
        self._kinds.clear()
        if self.prepared is not None:
            self.prepared.unlink()
        if fatal:
            self._abort(None, None)
        else:
            self._abort("08006", "server connection lost: the upstream server closed the connection unexpectedly")

    # ------------------------------------------------------------ timeouts (gateway.session_timeouts)
    check_timeouts = session_timeouts.check_timeouts  # called by the janitor for linked clients
    check_idle = session_timeouts.check_idle
    _note_partial = session_timeouts.note_partial

    # ------------------------------------------------------------- closing
    def _abort(self, sqlstate: str | None, message: str | None) -> None:
        """Stop the session from a callback: queue a FATAL, end the main task."""
        if self._aborted or self._finished:
            return
        self._aborted = True
        if sqlstate is not None and message is not None:
            self._send_or_queue(_fatal(sqlstate, message))
        t = self._main
        if t is not None and not t.done():
            t.cancel()

    def in_transaction(self) -> bool:
        """Linked with work in progress (what a graceful shutdown waits for)."""
        server = self.server
        return server is not None and (not self.acc.settled() or server.status != _IDLE)

    def terminate(self, sqlstate: str, message: str) -> None:
        """Used by the Gateway at shutdown."""
        self._abort(sqlstate, message)
