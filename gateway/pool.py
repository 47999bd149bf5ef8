"""Server-connection pools, pgbouncer style.

One :class:`Pool` per (database, upstream user).  Clients and servers sit on
explicit lists -- dicts used as ordered sets -- and move between them through
ONE function, :meth:`Pool._move`, so every statistic is a list length:

* clients: ``cl_active`` (logged in, not waiting), ``cl_waiting`` (FIFO: dict
  insertion order, oldest first);
* servers: ``sv_login`` (connecting / logging in), ``sv_active`` (linked to a
  client, or handed to one that is resuming), ``sv_idle`` (LIFO: the most
  recently released is reused first, the oldest is the first to time out),
  ``sv_used`` (running an internal reset/rollback before becoming idle).

Servers open on demand up to ``pool_size`` (plus ``reserve_pool_size`` once
the oldest waiter has waited ``reserve_pool_timeout``).  The janitor
(:meth:`tick`, called periodically by the Gateway) enforces the timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from driver.protocol import messages as m

from .observe import PoolObs
from .recovery import Recovery
from .server import ServerConnection, ServerError, open_server

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway

log = logging.getLogger("wirepool.gateway.pool")


class PoolError(Exception):
    """A client cannot be given a server: ``sqlstate`` + message go to the client
    (as FATAL: the client is disconnected)."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class Pool:
    def __init__(self, gateway: "Gateway", db: Any, settings: Any) -> None:
        self.gateway = gateway
        self.db = db
        self.name: str = db.name
        self.user: str = db.user
        self.settings = settings
        self.size: int = _eff(db, "pool_size", settings.default_pool_size)
        self.mode: str = _eff(db, "pool_mode", settings.pool_mode)
        self.min_size: int = _eff(db, "min_pool_size", settings.min_pool_size)
        self.reserve: int = _eff(db, "reserve_pool_size", settings.reserve_pool_size)
        self.transaction_mode = self.mode == "transaction"
        #: a per-user pool of a database without ``user`` (gateway/auth_query.py)
        self.per_user = False
        # lists (ordered sets)
        self.cl_active: dict[Any, None] = {}
        self.cl_waiting: dict[Any, None] = {}
        self.sv_login: dict[ServerConnection, None] = {}
        self.sv_active: dict[ServerConnection, None] = {}
        self.sv_idle: dict[ServerConnection, None] = {}
        self.sv_used: dict[ServerConnection, None] = {}
        #: ParameterStatus values of the first successful server login.
        self.server_params: dict[str, str] | None = None
        self._params_waiters: list[asyncio.Future[None]] = []
        self.last_login_error: ServerError | None = None
        self.last_login_failure = 0.0
        self.closed = False
        # counters (cheap integer increments on the hot path)
        self.xact_count = 0
        self.query_count = 0
        self.wait_count = 0
        self.wait_time = 0.0  # seconds clients spent waiting for a server (counted at hand-over)
        self.xact_time = 0.0  # seconds servers spent linked (counted at release)
        #: admin console (gateway/admin.py): PAUSE holds new transactions, DISABLE refuses logins
        self.paused = False
        self.disabled = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._probe: asyncio.Task[None] | None = None
        #: the upstream failure window and its background login probe
        self.recovery = Recovery(self)
        #: latency histograms, byte and error counters (gateway/observe.py)
        self.obs = PoolObs()
        self._check_sql = m.query(settings.server_check_query) if settings.server_check_query else b""

    # ------------------------------------------------------------------ lists
    @staticmethod
    def _move(obj: Any, new: dict[Any, None] | None) -> None:
        """THE state change: take ``obj`` off its current list, put it on ``new``."""
        old = obj.pool_list
        if old is not None:
            del old[obj]
        obj.pool_list = new
        if new is not None:
            new[obj] = None

    def total_servers(self) -> int:
        return len(self.sv_login) + len(self.sv_active) + len(self.sv_idle) + len(self.sv_used)

    # ---------------------------------------------------------------- clients
    def add_client(self, client: Any) -> None:
        self._move(client, self.cl_active)

    def remove_client(self, client: Any) -> None:
        if client.pool_list is not None:
            fut = client.wait_future
            if fut is not None and not fut.done():
                fut.cancel()
            self._move(client, None)

    def try_acquire(self, now: float | None = None) -> ServerConnection | None:
        """An idle server (LIFO), or None.  Synchronous: the hot path.

        A server idle for ``server_check_delay`` or longer is first checked
        with ``server_check_query`` (PgBouncer's sanity check; "" disables it):
        None is returned, the caller queues, and the server is handed over by
        :meth:`release` once the check succeeded -- or discarded (timeout:
        ``server_connect_timeout``) and a fresh one opened.  ``now``: the
        loop's time, when the caller has it."""
        idle = self.sv_idle
        if self.paused or not idle:
            return None
        s = self.settings
        while idle:
            server = idle.popitem()[0]  # LIFO; off sv_idle (this is _move, inlined: the hot path)
            server.pool_list = None
            if server.closed:
                continue
            if s.server_check_query:
                if now is None:
                    now = self.gateway.loop.time()
                if now - server.last_used >= s.server_check_delay:
                    self.reset_and_release(server, self._check_sql, 1)
                    return None
            active = self.sv_active
            server.pool_list = active
            active[server] = None
            return server
        return None


    def enqueue(self, client: Any) -> None:
        """Queue ``client`` (FIFO); the pool later calls ``client.assign(server)``
        -- or ``client.wait_failed(PoolError)``.  No future, no task switch:
        the hot path under load.  Raises PoolError when failing fast."""
        self._check_fail_fast()
        client.wait_future = None
        client.wait_start = self.gateway.loop.time()
        self.wait_count += 1
        self._move(client, self.cl_waiting)
        self._launch_if_needed()

    async def wait_for_server(self, client: Any) -> ServerConnection:
        """Queue ``client`` (FIFO) until a server is handed to it.

        Raises PoolError on query_wait_timeout, on upstream failure, or when
        new connections fail fast during ``server_login_retry``."""
        self._check_fail_fast()
        loop = self.gateway.loop
        fut: asyncio.Future[ServerConnection] = loop.create_future()
        client.wait_future = fut
        client.wait_start = loop.time()
        self.wait_count += 1
        self._move(client, self.cl_waiting)
        self._launch_if_needed()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # handed over while we were being cancelled
            raise
        finally:
            client.wait_future = None
            if client.pool_list is self.cl_waiting:
                self._move(client, self.cl_active)

    def _check_fail_fast(self) -> None:
        """During server_login_retry after a failed login, with no server
        alive, new clients fail at once instead of queueing."""
        err = self.last_login_error
        if err is None or self.total_servers():
            return
        if self.gateway.loop.time() - self.last_login_failure < self.settings.server_login_retry:
            raise self._public_error(err)

    async def ensure_params(self, client: Any) -> dict[str, str]:
        """The upstream's ParameterStatus values; logs a server in if the pool
        never has."""
        while self.server_params is None:
            server = self.try_acquire()
            if server is None:
                server = await self.wait_for_server(client)
            self.release(server)
        return self.server_params

    def release(self, server: ServerConnection, now: float | None = None) -> None:
        """A server comes back clean (idle, nothing outstanding).  ``now``: the
        loop's time, when the caller has it."""
        server.client = None
        if server.closed:
            self._move(server, None)
            self._launch_if_needed()
            return
        if now is None:
            now = self.gateway.loop.time()
        if now - server.created >= self.settings.server_lifetime or self.closed or \
                len(self.sv_login) + len(self.sv_active) + len(self.sv_idle) + len(self.sv_used) \
                > self.size + self.reserve:  # expired, RECONNECT, or shrunk by a reload (total_servers)
            self._move(server, None)
            server.close()
            self._launch_if_needed()
            return
        server.last_used = now
        waiting = self.cl_waiting
        while waiting and not self.paused:
            client = next(iter(waiting))
            self._move(client, self.cl_active)
            waited = now - client.wait_start
            self.wait_time += waited
            self.obs.wait.observe(waited)
            fut = client.wait_future
            if fut is None:
                self._move(server, self.sv_active)
                if client.assign(server):
                    return
                if server.pool_list is None:  # discarded by the client (gateway/session.py: _unlink_unused)
                    return
                continue
            if fut.done():
                continue
            self._move(server, self.sv_active)
            fut.set_result(server)
            return
        old = server.pool_list  # _move(server, self.sv_idle), inlined (the hot path)
        if old is not None:
            del old[server]
        idle = server.pool_list = self.sv_idle
        idle[server] = None

    def reset_and_release(self, server: ServerConnection, sql: bytes, replies: int) -> None:
        """Run an internal query (already encoded; ``replies`` ReadyForQuery
        expected) on an unlinked server, then release it -- or close it if
        anything goes wrong."""
        server.client = None
        if server.closed:
            self._move(server, None)
            self._launch_if_needed()
            return
        self._move(server, self.sv_used)

        def done(ok: bool) -> None:
            if ok and not server.closed:
                self.release(server)
            else:
                self.discard(server)

        server.run_internal(sql, replies, done, timeout=max(self.settings.server_connect_timeout, 1.0))

    def discard(self, server: ServerConnection) -> None:
        """Close a server that cannot be reused."""
        server.client = None
        self._move(server, None)
        server.close()
        self._launch_if_needed()

    def server_lost(self, server: ServerConnection) -> None:
        """connection_lost of any pooled server (called by the server)."""
        was_login = server.pool_list is self.sv_login
        client = server.client
        server.client = None
        self._move(server, None)
        if client is not None:
            client.on_server_lost(server)
        if not was_login:
            self._launch_if_needed()

    async def probe(self) -> bool:
        """Can this pool serve a client now?  True at once when it holds a
        logged-in server; otherwise one server login is attempted (bounded by
        ``server_connect_timeout``; the server then stays in the pool) unless
        logins are failing fast (``server_login_retry``).  For /healthz."""
        if self.closed:
            return False
        if self.sv_idle or self.sv_active or self.sv_used:
            return True
        if not self.db.user:  # a database without `user`: its pools are per user (gateway/auth_query.py)
            return bool(await self.gateway.auth_query.probe(self.name))
        err = self.last_login_error
        if err is not None and \
                self.gateway.loop.time() - self.last_login_failure < self.settings.server_login_retry:
            return False
        if self._probe is None or self._probe.done():
            if self.total_servers() >= max(self.size, 1):
                return True  # all slots busy logging in: clients queue, as usual
            slot = _LoginSlot()
            self._move(slot, self.sv_login)
            self._probe = self.gateway.loop.create_task(self._connect(slot))
            self._tasks.add(self._probe)
            self._probe.add_done_callback(self._tasks.discard)
        await asyncio.shield(self._probe)
        return self.last_login_error is None

    # ------------------------------------------------------------ connecting
    async def login_once(self) -> None:
        """One server login now (the recovery probe); the server joins the pool."""
        slot = _LoginSlot()
        self._move(slot, self.sv_login)
        await self._connect(slot)

    def _launch_if_needed(self) -> None:
        if self.closed or self.paused:
            return
        waiting = len(self.cl_waiting)
        if not waiting:
            return
        total = self.total_servers()
        if waiting <= len(self.sv_login):
            return
        limit = self.size
        if self.reserve and total >= limit:
            oldest = next(iter(self.cl_waiting))
            if self.gateway.loop.time() - oldest.wait_start >= self.settings.reserve_pool_timeout:
                limit += self.reserve
        if total >= limit:
            return
        if self.last_login_error is not None and total == 0 and \
                self.gateway.loop.time() - self.last_login_failure < self.settings.server_login_retry:
            # Fail the waiters rather than hammering a failing server.
            self._fail_waiters(self.last_login_error)
            return
        for _ in range(min(waiting - len(self.sv_login), limit - total)):
            self.launch()

    def launch(self) -> None:
        """Open one more server connection in the background."""
        placeholder = _LoginSlot()
        self._move(placeholder, self.sv_login)
        task = self.gateway.loop.create_task(self._connect(placeholder))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, slot: "_LoginSlot") -> None:
        db = self.db
        if not db.user:  # a database without `user`: only its per-user pools log in (gateway/auth_query.py)
            self._move(slot, None)
            for client in list(self.cl_waiting):
                self._fail(client, PoolError("28000", f'database "{self.name}" logs in as each client\'s own '
                                                      "user, which this connection cannot (docs/auth-query.md)"))
            return
        t0 = self.gateway.loop.time()
        try:
            server = await asyncio.wait_for(
                open_server(self, db.host, db.port, db.user, db.password, db.dbname,
                            db.sslmode, db.sslrootcert),
                timeout=self.settings.server_connect_timeout)
        except asyncio.TimeoutError:
            err = ServerError("08006", f"could not connect to server {db.host}:{db.port}: "
                              f"timeout after {self.settings.server_connect_timeout:g}s")
        except ServerError as exc:
            err = exc
        except asyncio.CancelledError:
            self._move(slot, None)
            raise
        except Exception as exc:  # pragma: no cover - defensive
            err = ServerError("08006", f"server login failed: {exc}")
        else:
            self._move(slot, None)
            self.obs.connect.observe(self.gateway.loop.time() - t0)
            if self.closed:
                server.close()
                return
            self.last_login_error = None
            self.recovery.succeeded()
            if self.server_params is None:
                self.server_params = dict(server.params)
            server.pool_list = None
            self.release(server)
            return
        self._move(slot, None)
        log.warning("pool %s: server login failed: %s %s", self.name, err.sqlstate, err.message)
        self.last_login_error = err
        self.last_login_failure = self.gateway.loop.time()
        self.recovery.failed(err.sqlstate)
        if self.total_servers() == 0:
            self._fail_waiters(err)

    def _fail_waiters(self, err: ServerError) -> None:
        public = self._public_error(err)
        for client in list(self.cl_waiting):
            self._fail(client, public)

    def _public_error(self, err: ServerError) -> PoolError:
        """What a client may learn of a failed upstream login: no host, port,
        role or upstream message (those are logged by :meth:`_connect`)."""
        code = err.sqlstate if err.sqlstate[:2] == "08" or err.sqlstate in ("53300", "57P03") else "08006"
        return PoolError(code, f'could not connect to the server for database "{self.name}": '
                               f"{self.recovery.message()} (the gateway's log has the details)")

    def _fail(self, client: Any, err: PoolError) -> None:
        self._move(client, self.cl_active)
        fut = client.wait_future
        if fut is None:
            client.wait_failed(err)
        elif not fut.done():
            fut.set_exception(err)

    # ---------------------------------------------------------------- janitor
    def tick(self, now: float) -> None:
        """Periodic maintenance: timeouts, reserve pool, min_pool_size, idle servers."""
        s = self.settings
        # query_wait_timeout (FIFO: stop at the first one still in time)
        if s.query_wait_timeout > 0:
            while self.cl_waiting:
                client = next(iter(self.cl_waiting))
                if now - client.wait_start < s.query_wait_timeout:
                    break
                self._fail(client, PoolError(
                    "57014", f"query_wait_timeout: no server connection available within "
                             f"{s.query_wait_timeout:g}s"))
        self._launch_if_needed()  # covers reserve_pool_timeout
        # min_pool_size, as PgBouncer: a pool without a forced user only while a client is
        # connected (a database without `user`: its own pool never logs in, per-user pools
        # keep no servers for nobody)
        min_size = self.min_size if self.db.user and (not self.per_user or self.cl_active) else 0
        # idle servers: oldest first (LIFO reuse leaves the oldest at the front)
        total = self.total_servers()
        for server in list(self.sv_idle):
            if total <= min_size and now - server.created < s.server_lifetime:
                break
            if now - server.last_used >= s.server_idle_timeout or now - server.created >= s.server_lifetime:
                self._move(server, None)
                server.close()
                total -= 1
        if min_size and not self.closed:
            missing = min_size - self.total_servers()
            if missing > 0 and not (self.last_login_error is not None and
                                    now - self.last_login_failure < s.server_login_retry):
                for _ in range(missing):
                    self.launch()
        # linked clients: idle_transaction_timeout / query_timeout
        if s.idle_transaction_timeout > 0 or s.query_timeout > 0:
            for server in list(self.sv_active):
                client = server.client
                if client is not None:
                    client.check_timeouts(now)

    def stats(self) -> dict[str, Any]:
        now = self.gateway.loop.time()
        maxwait = 0.0
        if self.cl_waiting:
            maxwait = now - next(iter(self.cl_waiting)).wait_start
        return {
            "database": self.name,
            "user": self.user,
            "pool_mode": self.mode,
            "pool_size": self.size,
            "cl_active": len(self.cl_active),
            "cl_waiting": len(self.cl_waiting),
            "sv_active": len(self.sv_active),
            "sv_idle": len(self.sv_idle),
            "sv_used": len(self.sv_used),
            "sv_login": len(self.sv_login),
            "maxwait": maxwait,
            "xact_count": self.xact_count,
            "query_count": self.query_count,
            "wait_count": self.wait_count,
            "paused": self.paused,
        }

    # ------------------------------------------------- admin console / reload
    def resume(self) -> None:
        """End a PAUSE: idle servers go to the waiting clients, more open as needed."""
        self.paused = False
        while self.cl_waiting and self.sv_idle:
            server = next(reversed(self.sv_idle))
            self._move(server, None)
            self.release(server)
        self._launch_if_needed()

    def expire_servers(self) -> None:
        """RECONNECT / upstream changed: close idle servers now; linked ones
        are closed when released (never in the middle of a transaction)."""
        for server in list(self.sv_idle):
            self._move(server, None)
            server.close()
        for lst in (self.sv_active, self.sv_used):
            for server in lst:
                server.created = float("-inf")
        self._launch_if_needed()

    def resize(self) -> None:
        """After ``size`` changed: close idle servers above it (oldest first;
        linked ones close on release), or open servers for waiting clients."""
        over = self.total_servers() - self.size
        for server in list(self.sv_idle):
            if over <= 0:
                break
            self._move(server, None)
            server.close()
            over -= 1
        self._launch_if_needed()

    async def close(self) -> None:
        self.closed = True
        hub = getattr(self, "listen_hub", None)  # gateway/listen.py
        if hub is not None:
            hub.close()
        probe = self.recovery.cancel()
        if probe is not None:
            self._tasks.add(probe)
        for task in list(self._tasks):
            task.cancel()
        self._fail_waiters(ServerError("57P01", "terminating connection due to administrator command"))
        for lst in (self.sv_idle, self.sv_used, self.sv_active):
            for server in list(lst):
                self._move(server, None)
                server.close()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class _LoginSlot:
    """Stands on ``sv_login`` while a connection is being opened."""

    __slots__ = ("pool_list",)

    def __init__(self) -> None:
        self.pool_list: dict[Any, None] | None = None


def _eff(db: Any, attr: str, default: Any) -> Any:
    value = getattr(db, attr, None)
    return default if value is None else value
