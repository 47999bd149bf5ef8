"""Fast recovery after the upstream fails (one :class:`Recovery` per pool).

PgBouncer's ``server_login_retry``: after a failed server login, while no
server is alive, new clients fail at once instead of queueing behind logins
that will fail too.  Alone, that makes clients fail for the whole window
even when Postgres is back after a fraction of it.  So while the window is
in force a background *probe* retries one login about every
:data:`PROBE_INTERVAL` seconds; the first one that succeeds ends the window
(the server joins the pool) and new clients are served again within about a
second of Postgres accepting logins.

The error clients get meanwhile says the upstream is unavailable and since
when -- never its host or port (internal details stay in the gateway log).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .pool import Pool

log = logging.getLogger("wirepool.gateway.recovery")

__all__ = ["PROBE_INTERVAL", "Recovery"]

#: seconds between two probe logins while the upstream fails
PROBE_INTERVAL = 1.0


class Recovery:
    """The failure window of one pool and its background probe."""

    def __init__(self, pool: "Pool") -> None:
        self.pool = pool
        #: wall-clock time of the first failure of the current window (None: healthy)
        self.since: float | None = None
        self.attempts = 0
        self._task: asyncio.Task[None] | None = None

    def failed(self, sqlstate: str) -> None:
        """A server login failed: open (or extend) the window, start the probe."""
        if self.since is None:
            self.since = time.time()
        self.attempts += 1
        self._sqlstate = sqlstate
        t = self._task
        if (t is None or t.done()) and not self.pool.closed:
            self._task = self.pool.gateway.loop.create_task(self._probe())

    def succeeded(self) -> None:
        if self.since is not None:
            log.info("pool %s: upstream reachable again after %.1fs (%d failed logins)",
                     self.pool.name, time.time() - self.since, self.attempts)
        self.since = None
        self.attempts = 0

    def message(self) -> str:
        """What clients are told during the window."""
        since = time.strftime("%H:%M:%S", time.gmtime(self.since or time.time()))
        what = "unreachable" if getattr(self, "_sqlstate", "08006").startswith("08") else "refusing logins"
        return (f"the upstream database server is {what} since {since} UTC; "
                f"the gateway retries every {PROBE_INTERVAL:g}s")

    async def _probe(self) -> None:
        pool = self.pool
        try:
            while True:
                await asyncio.sleep(PROBE_INTERVAL)
                if pool.closed or pool.last_login_error is None:
                    return
                if pool.sv_login:
                    continue  # a login is already under way: it decides
                if pool.total_servers():
                    return  # servers alive: no fail-fast window, clients' own logins retry
                await pool.login_once()
        except asyncio.CancelledError:
            pass
        except Exception:  # pragma: no cover - a bug; the next failure restarts the probe
            log.exception("pool %s: upstream probe failed", pool.name)

    def cancel(self) -> Any:
        t = self._task
        self._task = None
        if t is not None and not t.done():
            t.cancel()
        return t
