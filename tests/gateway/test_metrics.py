"""``GET /metrics`` after a real workload, parsed with prometheus_client's parser.

Every metric documented in docs/metrics.md (the tables are parsed, so the doc
and the code cannot drift) is scraped with the documented labels, and the
workload moved it (except the gauges that may legitimately read 0 when idle).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from prometheus_client.parser import text_string_to_metric_families

import driver
from gateway.observe import Hist, error_class, limit_name
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import eventually

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
#: gauges that read 0 at the scrape (the only server is linked, nothing logs in, no PAUSE, no WebSocket open)
MAY_BE_ZERO = {"wirepool_pools_sv_idle", "wirepool_pools_sv_used", "wirepool_pools_sv_login", "wirepool_pools_paused",
               "wirepool_ws_open",
               "wirepool_lingering_connections",  # (moved by tests/gateway/test_linger.py)
               "wirepool_http_forwarded"}  # a lone process never forwards (tests/gateway/test_forwarding.py)
#: the result cache's families (cache off in this workload; tests/gateway/test_cache_e2e.py moves them)
MAY_BE_ZERO |= {
    "wirepool_cache_hits_total", "wirepool_cache_misses_total", "wirepool_cache_stale_total",
    "wirepool_cache_evictions_total", "wirepool_cache_invalidations_total", "wirepool_cache_bytes",
    "wirepool_cache_entries", "wirepool_cache_shared_total", "wirepool_cache_refreshes_total",
    "wirepool_cache_too_large_total"}
#: LISTEN fan-out (no LISTEN in this workload; tests/gateway/test_listen_e2e.py moves them)
MAY_BE_ZERO |= {
    "wirepool_listen_channels", "wirepool_listen_subscribers", "wirepool_listen_backlog_bytes",
    "wirepool_listen_notifications_received_total", "wirepool_listen_notifications_delivered_total",
    "wirepool_listen_notifications_dropped_total", "wirepool_listen_reconnects_total"}


def documented() -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (type, labels) from the tables of docs/metrics.md."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for line in DOC.read_text().splitlines():
        mm = re.match(r"\|\s*`(wirepool_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", line)
        if mm:
            labels = frozenset(x.strip() for x in mm.group(3).split(",") if x.strip())
            out[mm.group(1)] = (mm.group(2), labels)
    return out


async def _http(port: int, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    h = {"host": "127.0.0.1", "content-length": str(len(body)), "connection": "close", **(headers or {})}
    w.write(f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode() for k, v in h.items())
            + b"\r\n" + body)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest


def scrape_samples(text: str) -> dict[str, list[Any]]:
    """sample name -> samples (histograms: _bucket/_count/_sum; counters: _total)."""
    out: dict[str, list[Any]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append(s)
    return out


def test_doc_lists_metrics() -> None:
    docs = documented()
    assert len(docs) >= 25, docs
    assert "wirepool_client_wait_seconds" in docs
    assert docs["wirepool_logins_total"] == ("counter", frozenset({"transport", "method"}))


async def test_metrics_after_workload(gateway_app: Any, pg_db: str, tmp_path: Path) -> None:
    app = await gateway_app(client_login_timeout=2.0,
                            databases={"app": {"dbname": pg_db, "pool_size": 1}})
    # asyncpg over pg_listen: queries, a transaction, an error, a client that waits (pool_size 1)
    c1 = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    c2 = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    try:
        async with c1.transaction():
            await c1.execute("select 1")
        with pytest.raises(asyncpg.DivisionByZeroError):
            await c1.fetchval("select 1/0")
        await asyncio.gather(c1.fetchval("select pg_sleep(0.2)"), c2.fetchval("select pg_sleep(0.2)"))
    finally:
        await c1.close()
        await c2.close()
    # our driver over WebSocket
    wc = await driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app",
                              statement_cache_size=0)
    try:
        assert await wc.fetchval("select 41 + 1") == 42
    finally:
        await wc.close()
    # POST /sql
    status, body = await _http(app.http_port, "POST", "/sql", json.dumps({"query": "select 1 as x", "params": []}).encode(),
                               {"Neon-Connection-String": f"postgresql://alice:{ALICE_PASSWORD}@x/app"})
    assert status == 200, body
    # a failed login
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(app.pg_dsn("alice", "wrong", "app"))
    # a client shed by client_login_timeout (connects, never sends a startup packet)
    r, w = await asyncio.open_connection(app.pg_host, app.pg_port)
    try:
        await eventually(lambda: any(k.startswith("client_login_timeout")
                                     for k in app.gateway.limits.shed_log.totals), timeout=10,
                         what="client_login_timeout shed")
    finally:
        w.close()

    # scrape while one client holds the only server in a transaction and another waits for it
    holder = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    waiter = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("select 1")
        waiting = asyncio.ensure_future(waiter.fetchval("select 2"))
        pool = app.gateway.pools["app"]
        await eventually(lambda: len(pool.cl_waiting) == 1, what="a waiting client")
        status, body = await _http(app.http_port, "GET", "/metrics")
        at_scrape = pool.xact_count, pool.query_count
        await tx.commit()
        assert await waiting == 2
    finally:
        await holder.close()
        await waiter.close()
    assert status == 200
    text = body.decode()
    (tmp_path / "metrics.txt").write_text(text)
    samples = scrape_samples(text)
    docs = documented()
    problems = []
    for name, (kind, labels) in docs.items():
        key = name + "_count" if kind == "histogram" else name
        got = samples.get(key)
        if not got:
            problems.append(f"{name}: not scraped")
            continue
        for s in got:
            if frozenset(s.labels) - {"le"} != labels:
                problems.append(f"{name}: labels {sorted(s.labels)} != documented {sorted(labels)}")
                break
        if name not in MAY_BE_ZERO and not any(s.value > 0 for s in got):
            problems.append(f"{name}: the workload did not move it ({[s.value for s in got]})")
    assert not problems, "\n".join(problems)

    def value(name: str, **labels: str) -> float:
        return sum(s.value for s in samples.get(name, []) if all(s.labels.get(k) == v for k, v in labels.items()))

    # each transport and the failed login show up under their own labels
    for transport in ("tcp", "ws", "http"):
        assert value("wirepool_logins_total", transport=transport) >= 1, transport
    assert value("wirepool_login_failures_total", transport="tcp", sqlstate="28P01") == 1
    assert value("wirepool_server_errors_total", database="app", **{"class": "22"}) == 1
    assert value("wirepool_clients_shed_total", reason="client_login_timeout") >= 1
    assert value("wirepool_http_request_duration_seconds_count", endpoint="/sql") == 1
    assert value("wirepool_client_wait_seconds_count", database="app") >= 1
    # one of the two sleeps waited for the other: at least ~0.2 s in the wait sum
    assert value("wirepool_client_wait_seconds_sum", database="app") >= 0.1
    # the counters are the pool's own (SHOW STATS), not a second count
    assert (value("wirepool_transactions_total", database="app"),
            value("wirepool_queries_total", database="app")) == at_scrape


def test_hist_and_helpers() -> None:
    h = Hist()
    assert h.quantile(0.5) is None
    for v in (0.001, 0.002, 0.003, 2.0):
        h.observe(v)
    assert h.count == 4 and abs(h.sum - 2.006) < 1e-9
    assert h.buckets()[-1] == ("+Inf", 4.0)
    q = h.quantile(0.5)
    assert q is not None and 0.001 <= q <= 0.0025
    assert error_class(b"SERROR\x00VERROR\x00C22012\x00Mdivision by zero\x00\x00") == "22"
    assert error_class(b"SERROR\x00\x00") == "??"
    assert limit_name("max_client_conn (5) HTTP connections open") == "max_client_conn"
    assert limit_name("client_login_timeout: login not completed in time") == "client_login_timeout"
    assert limit_name("request not received in time (slow client)") == "http_request_timeout"
