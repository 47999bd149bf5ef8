"""Latency histograms and event counters for ``/metrics`` and ``/status``.

Cost on the hot path: a :class:`Hist` observation is one ``bisect`` and three
additions, made at hand-over (client wait), at release (transaction), at
ReadyForQuery (query), after a server login (connect) and per HTTP request --
never per message.  Counters are plain dict/int increments.  Everything is
turned into Prometheus families at scrape time (:func:`collect`); names and
labels are documented in docs/metrics.md (a test keeps the two in step).
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from typing import Any, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

#: upper bounds in seconds (``le``); the last bucket is +Inf
BUCKETS: tuple[float, ...] = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                              1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: /status history: one sample per SAMPLE_EVERY seconds, HISTORY samples kept
SAMPLE_EVERY = 5.0
HISTORY = 120


class Hist:
    """A fixed-bucket histogram (cumulative only at export)."""

    __slots__ = ("counts", "sum", "count")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, v: float) -> None:
        self.counts[bisect_left(BUCKETS, v)] += 1
        self.sum += v
        self.count += 1

    def buckets(self) -> list[tuple[str, float]]:
        out, acc = [], 0
        for bound, n in zip(BUCKETS, self.counts):
            acc += n
            out.append((repr(bound), float(acc)))
        out.append(("+Inf", float(self.count)))
        return out

    def quantile(self, q: float) -> float | None:
        """Estimate (linear within a bucket, as Prometheus' histogram_quantile); None if empty."""
        if not self.count:
            return None
        rank = q * self.count
        acc = 0
        lo = 0.0
        for i, n in enumerate(self.counts):
            hi = BUCKETS[i] if i < len(BUCKETS) else BUCKETS[-1]
            if acc + n >= rank and n:
                return lo + (hi - lo) * ((rank - acc) / n)
            acc += n
            lo = hi
        return BUCKETS[-1]


class PoolObs:
    """Per pool (database, user): four histograms and the SQLSTATE classes of errors."""

    __slots__ = ("wait", "xact", "query", "connect", "errors", "bytes_in", "bytes_out")

    def __init__(self) -> None:
        self.wait = Hist()     # client wait for a server (hand-over)
        self.xact = Hist()     # server linked to a client (link -> release)
        self.query = Hist()    # first message of a query -> its ReadyForQuery
        self.connect = Hist()  # server TCP connect + login
        #: ErrorResponses seen from the server, by SQLSTATE class (2 chars)
        self.errors: dict[str, int] = {}
        self.bytes_in = 0   # client -> server bytes forwarded
        self.bytes_out = 0  # server -> client bytes forwarded


class GatewayObs:
    """Gateway-wide: logins, login failures, HTTP latency, the /status history."""

    def __init__(self) -> None:
        self.logins: dict[tuple[str, str], int] = {}
        self.login_failures: dict[tuple[str, str], int] = {}
        self.http: dict[str, Hist] = {}
        #: (unix time, {pool name: (cl_active, sv_idle, cl_waiting, sv_active)})
        self.history: deque[tuple[float, dict[str, tuple[int, int, int, int]]]] = deque(maxlen=HISTORY)
        self._next_sample = 0.0

    def logged_in(self, transport: str, method: str) -> None:
        k = (transport, method)
        self.logins[k] = self.logins.get(k, 0) + 1

    def login_failed(self, transport: str, sqlstate: str) -> None:
        k = (transport, sqlstate)
        self.login_failures[k] = self.login_failures.get(k, 0) + 1

    def http_done(self, endpoint: str, seconds: float) -> None:
        h = self.http.get(endpoint)
        if h is None:
            h = self.http[endpoint] = Hist()
        h.observe(seconds)

    def sample(self, now: float, wall: float, pools: dict[str, Any]) -> None:
        """Called by the janitor each tick; keeps one sample per SAMPLE_EVERY seconds."""
        if now < self._next_sample:
            return
        self._next_sample = now + SAMPLE_EVERY
        self.history.append((wall, {name: (len(p.cl_active), len(p.sv_idle), len(p.cl_waiting),
                                           len(p.sv_active)) for name, p in pools.items()}))


def error_class(body: bytes) -> str:
    """The SQLSTATE class (first two characters) of an ErrorResponse body; "??" if absent."""
    i = 0
    n = len(body)
    while i < n and body[i]:
        end = body.find(b"\x00", i + 1)
        if end < 0:
            break
        if body[i] == 67:  # 'C'
            return body[i + 1:i + 3].decode("ascii", "replace") or "??"
        i = end + 1
    return "??"


def limit_name(reason: str) -> str:
    """``"max_client_conn (100) ..."`` -> ``"max_client_conn"``; a reason without a setting name
    (the slow-HTTP-request shed) -> ``"http_request_timeout"``."""
    first = reason.split(" ", 1)[0].rstrip(":")
    return first if "_" in first else "http_request_timeout"


def _hist(name: str, doc: str, labels: list[str], rows: Iterable[tuple[list[str], Hist]]) -> Metric:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for lv, h in rows:
        fam.add_metric(lv, h.buckets(), h.sum)
    return fam


def collect(gateway: Any, shed_totals: dict[str, int] | None = None) -> list[Metric]:
    """The histogram/counter families (the SHOW POOLS gauges come from gateway.metrics)."""
    obs: GatewayObs | None = getattr(gateway, "obs", None)
    pools = getattr(gateway, "pools", {}) or {}
    out: list[Metric] = []
    lab = ["database", "user"]
    pl = [([p.name, p.user], p) for p in pools.values() if getattr(p, "obs", None) is not None]
    out.append(_hist("wirepool_client_wait_seconds", "Time a client waited for a server (per hand-over)",
                     lab, ((lv, p.obs.wait) for lv, p in pl)))
    out.append(_hist("wirepool_transaction_duration_seconds",
                     "Time a server stayed linked to a client (per transaction in transaction mode)",
                     lab, ((lv, p.obs.xact) for lv, p in pl)))
    out.append(_hist("wirepool_query_duration_seconds", "From a query's first message to its ReadyForQuery",
                     lab, ((lv, p.obs.query) for lv, p in pl)))
    out.append(_hist("wirepool_server_connect_seconds", "Server TCP connect + login time",
                     lab, ((lv, p.obs.connect) for lv, p in pl)))
    c = CounterMetricFamily("wirepool_transactions", "Transactions (server releases)", labels=lab)
    q = CounterMetricFamily("wirepool_queries", "Queries (ReadyForQuery owed)", labels=lab)
    bi = CounterMetricFamily("wirepool_client_bytes_received", "Bytes from clients forwarded to servers", labels=lab)
    bo = CounterMetricFamily("wirepool_client_bytes_sent", "Bytes from servers forwarded to clients", labels=lab)
    er = CounterMetricFamily("wirepool_server_errors", "Server ErrorResponses by SQLSTATE class",
                             labels=lab + ["class"])
    for lv, p in pl:
        c.add_metric(lv, p.xact_count)
        q.add_metric(lv, p.query_count)
        bi.add_metric(lv, p.obs.bytes_in)
        bo.add_metric(lv, p.obs.bytes_out)
        for cls, n in sorted(p.obs.errors.items()):
            er.add_metric(lv + [cls], n)
    out += [c, q, bi, bo, er]
    li = CounterMetricFamily("wirepool_logins", "Successful client logins", labels=["transport", "method"])
    lf = CounterMetricFamily("wirepool_login_failures",
                             "Refused logins by SQLSTATE (28xxx: authentication failures)",
                             labels=["transport", "sqlstate"])
    hh = None
    if obs is not None:
        for (t, meth), n in sorted(obs.logins.items()):
            li.add_metric([t, meth], n)
        for (t, st), n in sorted(obs.login_failures.items()):
            lf.add_metric([t, st], n)
        hh = _hist("wirepool_http_request_duration_seconds", "HTTP request duration by endpoint",
                   ["endpoint"], (([ep], h) for ep, h in sorted(obs.http.items())))
    out += [li, lf]
    if hh is not None:
        out.append(hh)
    sh = CounterMetricFamily("wirepool_clients_shed", "Clients shed by a limit (gateway/limits.py)",
                             labels=["reason"])
    by_limit: dict[str, int] = {}
    for reason, n in (shed_totals or {}).items():
        k = limit_name(reason)
        by_limit[k] = by_limit.get(k, 0) + n
    for k, n in sorted(by_limit.items()):
        sh.add_metric([k], n)
    out.append(sh)
    wq = GaugeMetricFamily("wirepool_client_wait_p99_seconds",
                           "Estimated 99th percentile client wait since start", labels=lab)
    for lv, p in pl:
        v = p.obs.wait.quantile(0.99)
        wq.add_metric(lv, 0.0 if v is None else v)
    out.append(wq)
    from .cache_admin import collect as cache_families  # (cache_admin imports http, which imports this)
    out += cache_families(gateway)
    from .listen_admin import collect as listen_families
    out += listen_families(gateway)
    return out
