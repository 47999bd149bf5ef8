"""The Gateway: pools, sessions, cancel keys, the janitor, shutdown.

Listeners (gateway/tcp.py, gateway/http.py) call :meth:`Gateway.handle_client`
with a :class:`~gateway.streams.ClientStream`; everything else happens here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Coroutine

from .auth import Authenticator
from .auth_query import AuthQuery
from .cancel import send_cancel
from .limits import Limits
from .observe import GatewayObs
from .pool import Pool
from .prepared import StatementRegistry
from .session import Session
from .stats_period import PeriodStats

log = logging.getLogger("wirepool.gateway")


class Gateway:
    def __init__(self, config: Any) -> None:
        self.config = config
        self.settings = config.gateway
        self.authenticator = Authenticator(self.settings.auth_type, config.users, self.settings)
        self.auth_query = AuthQuery(self)  # users looked up in PostgreSQL (gateway/auth_query.py)
        self.authenticator.lookup = self.auth_query
        self.pools: dict[str, Pool] = {name: Pool(self, db, self.settings)
                                       for name, db in config.databases.items()}
        #: gateway-issued process id -> session (for CancelRequest)
        self.sessions: dict[int, Session] = {}
        #: the issued pids' fixed bits and random bits (gateway/peers.py: the key names its owner)
        self.pid_prefix, self.pid_mask = 0, 0x7FFFFFFF
        #: the same for secret keys (a peer_id in their top bits: gateway/peers.py)
        self.key_prefix, self.key_mask = 0, 0xFFFFFFFF
        self._all_sessions: set[Session] = set()
        self.n_clients = 0
        self.limits = Limits(self.settings)  # login-phase and HTTP connection caps
        self.statements = StatementRegistry()  # named prepared statements, gateway-wide
        self.obs = GatewayObs()  # logins, HTTP latency, /status history (gateway/observe.py)
        self.period_stats = PeriodStats()  # SHOW STATS avg_* over stats_period (gateway/stats_period.py)
        self.accepting = True
        self._loop: asyncio.AbstractEventLoop | None = None
        self._janitor: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.interval = _janitor_interval(self.settings)
        #: the TOML file RELOAD re-reads, and what the admin SHUTDOWN calls (set by gateway/app.run)
        self.config_path: str | None = None
        self.shutdown_hook: Any = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the janitor (timeouts, reserve pool, idle servers) and warm
        up ``min_pool_size`` connections."""
        self._loop = asyncio.get_running_loop()
        if self._janitor is None:
            self._janitor = self.loop.create_task(self._janitor_loop())
            for pool in self.pools.values():
                pool.tick(self.loop.time())

    def _ensure_started(self) -> None:
        if self._janitor is None and not self._closed:
            self._janitor = self.loop.create_task(self._janitor_loop())

    async def _janitor_loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            now = self.loop.time()
            for pool in self.pools.values():
                try:
                    pool.tick(now)
                except Exception:  # pragma: no cover - a bug; keep the janitor alive
                    log.exception("janitor failed for pool %s", pool.name)
            self.auth_query.tick(now)
            self.obs.sample(now, time.time(), self.pools)
            self.period_stats.tick(now, self.pools, self.settings.stats_period)
            if self.settings.client_idle_timeout > 0 or self.settings.client_message_timeout > 0:
                for session in list(self._all_sessions):
                    session.check_idle(now)

    def is_ready(self) -> bool:
        """True when new clients can be served (for /healthz)."""
        if self._closed or not self.accepting:
            return False
        if not self.pools:
            return True
        now = self.loop.time() if self._loop is not None else 0.0
        retry = self.settings.server_login_retry
        for pool in self.pools.values():
            if pool.last_login_error is None or pool.total_servers() or \
                    now - pool.last_login_failure >= retry:
                return True
        return False

    async def check_ready(self) -> bool:
        """:meth:`is_ready`, and at least one pool can actually reach its
        upstream (a live server, or a fresh login: see :meth:`Pool.probe`)."""
        if not self.is_ready():
            return False
        if not self.pools:
            return True
        results = await asyncio.gather(*(p.probe() for p in self.pools.values()), return_exceptions=True)
        return any(r is True for r in results)

    def stats(self) -> dict[str, Any]:
        """``{"clients": n, "pools": {database: {cl_active, cl_waiting, sv_active,
        sv_idle, sv_used, sv_login, maxwait, xact_count, query_count, ...}}}``."""
        return {
            "clients": self.n_clients,
            "pools": {name: pool.stats() for name, pool in self.pools.items()},
        }

    async def shutdown(self, timeout: float) -> None:
        """Stop taking new sessions; let linked (in-transaction) clients finish
        for up to ``timeout`` seconds; then close everything."""
        self.accepting = False
        # Clients outside a transaction go now; the others when their
        # transaction ends (Session._release checks ``accepting``).
        for session in list(self._all_sessions):
            if not session.in_transaction():
                session.terminate("57P01", "terminating connection due to administrator command")
        loop = self.loop
        deadline = loop.time() + max(timeout, 0.0)
        while loop.time() < deadline and any(s.in_transaction() for s in self._all_sessions):
            await asyncio.sleep(0.05)
        await self.close()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.accepting = False
        if self._janitor is not None:
            self._janitor.cancel()
        for session in list(self._all_sessions):
            session.terminate("57P01", "terminating connection due to administrator command")
        # Give the sessions a moment to flush their FATAL and return servers.
        pending = [s._main for s in self._all_sessions if s._main is not None and not s._main.done()]
        if pending:
            await asyncio.wait(pending, timeout=2.0)
        for pool in self.pools.values():
            await pool.close()
        await self.auth_query.close()
        for task in list(self._tasks):
            task.cancel()
        self.authenticator.close()

    # ------------------------------------------------------------- clients
    async def handle_client(self, stream: Any) -> None:
        """Run one client session to completion.  Never raises (except
        CancelledError when the caller cancels it)."""
        self._ensure_started()
        session = Session(self, stream)
        self._all_sessions.add(session)
        try:
            await session.run()
        except asyncio.CancelledError:
            raise
        except Exception:  # pragma: no cover - Session.run handles everything
            log.exception("unexpected error in session")
        finally:
            self._all_sessions.discard(session)

    def register_session(self, session: Session, pid: int = 0) -> None:
        """Issue a unique BackendKeyData for ``session``: the secret is always
        random; the pid is ``pid`` (session mode: the linked server's real
        backend pid) when given and free, else random in 2**22..2**31-1 --
        above Linux's pid_max, so it never shadows a real backend's pid."""
        sessions = self.sessions
        raw = os.urandom(8)
        if not (0 < pid < 1 << 22 and pid not in sessions):
            while True:
                # one urandom call for both: pid in 2**22..2**31-1, key a signed int32
                pid = (int.from_bytes(raw[:4], "big") & self.pid_mask) | self.pid_prefix
                if pid >= 1 << 22 and pid not in sessions:
                    break
                raw = os.urandom(8)
        session.process_id = pid
        key = (int.from_bytes(raw[4:], "big") & self.key_mask) | self.key_prefix
        session.secret_key = key - (1 << 32) if key >= 1 << 31 else key
        self.sessions[pid] = session

    def unregister_session(self, session: Session) -> None:
        if session.process_id and self.sessions.get(session.process_id) is session:
            del self.sessions[session.process_id]

    async def handle_cancel(self, process_id: int, secret_key: int) -> None:
        """Forward a CancelRequest to the backend serving that client, if any."""
        session = self.sessions.get(process_id)
        if session is None or session.secret_key != secret_key:
            return
        server = session.server
        if server is None or server.closed:
            return
        await send_cancel(server.host, server.port, server.backend_pid, server.backend_key)

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a fire-and-forget background coroutine."""
        task = self.loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _janitor_interval(s: Any) -> float:
    candidates = [v for v in (s.query_wait_timeout, s.idle_transaction_timeout, s.query_timeout,
                              s.reserve_pool_timeout if s.reserve_pool_size else 0.0,
                              s.client_idle_timeout, s.client_message_timeout,
                              s.server_idle_timeout) if v and v > 0]
    if not candidates:
        return 1.0
    return min(1.0, max(0.02, min(candidates) / 4))
