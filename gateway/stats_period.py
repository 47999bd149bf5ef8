"""The ``avg_*`` columns of the admin ``SHOW STATS`` / ``SHOW STATS_AVERAGES``:
averages over the last complete ``stats_period`` (PgBouncer's meaning), not
over the process's lifetime.

The janitor calls :meth:`PeriodStats.tick` every tick (at most a second
apart); when a period is over, the deltas of each pool's counters give:

* ``avg_xact_count``, ``avg_query_count``: per second;
* ``avg_recv``, ``avg_sent``: bytes per second (the per-read byte counters of
  gateway/observe.py);
* ``avg_xact_time``, ``avg_query_time``: microseconds per transaction / query;
* ``avg_wait_time``: microseconds per client that waited for a server.

Until the first period is over they are 0, as in PgBouncer.
"""

from __future__ import annotations

from typing import Any

#: (xact_count, query_count, received, sent, xact_time µs, query_time µs, wait_time µs, wait_count)
Counters = tuple[int, int, int, int, int, int, int, int]
ZERO_AVG = (0, 0, 0, 0, 0, 0, 0)


def _own(p: Any) -> Counters:
    xt = int(p.xact_time * 1e6)
    # query_time: the time servers were linked, counted per transaction (docs/admin.md)
    return (p.xact_count, p.query_count, p.obs.bytes_in, p.obs.bytes_out, xt, xt, int(p.wait_time * 1e6),
            p.wait_count)


def counters(p: Any) -> Counters:
    """A database pool's counters; for a database without ``user``, with those of its
    per-user pools (gateway/auth_query.py; a dropped one's were folded into ``p``)."""
    c = _own(p)
    if not p.db.user:
        for (name, _user), q in p.gateway.auth_query.user_pools.items():
            if name == p.name:
                c = tuple(a + b for a, b in zip(c, _own(q)))  # type: ignore[assignment]
    return c


def fold_counters(into: Any, p: Any) -> None:
    """A per-user pool goes away: its counters stay in its database's (monotonic totals)."""
    into.xact_count += p.xact_count
    into.query_count += p.query_count
    into.xact_time += p.xact_time
    into.wait_time += p.wait_time
    into.wait_count += p.wait_count
    into.obs.bytes_in += p.obs.bytes_in
    into.obs.bytes_out += p.obs.bytes_out


class PeriodStats:
    def __init__(self) -> None:
        self.start: float | None = None
        self.base: dict[str, Counters] = {}
        self.avg: dict[str, tuple[int, ...]] = {}

    def tick(self, now: float, pools: dict[str, Any], period: float) -> None:
        if self.start is None:
            self.start = now
            self.base = {name: counters(p) for name, p in pools.items()}
            return
        d = now - self.start
        if d < period:
            return
        base: dict[str, Counters] = {}
        avg: dict[str, tuple[int, ...]] = {}
        for name, p in pools.items():
            c = counters(p)
            b = self.base.get(name, (0,) * 8)
            x = [c[i] - b[i] for i in range(8)]
            avg[name] = (int(x[0] / d), int(x[1] / d), int(x[2] / d), int(x[3] / d),
                         x[4] // x[0] if x[0] > 0 else 0, x[5] // x[1] if x[1] > 0 else 0,
                         x[6] // x[7] if x[7] > 0 else 0)
            base[name] = c
        self.avg, self.base, self.start = avg, base, now

    def averages(self, name: str) -> tuple[int, ...]:
        return self.avg.get(name, ZERO_AVG)
