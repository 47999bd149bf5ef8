"""The benchmark harness (``python -m bench``) must not rot.

Runs every scenario in ``--quick`` mode with tiny sizes against a private
cluster the harness starts itself, and checks the *structure* of what it
writes (rows per scenario and target, completed > 0 for the targets that
exist, charts that are real PNG files). Timings are never asserted.
"""

from __future__ import annotations

import json
import os
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.report import cdf_points, markdown_table, pct_ms, percentile, table

REPO = Path(__file__).resolve().parent.parent
REQUIRED = ("target", "scenario", "completed", "failed")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_percentile_and_cdf() -> None:
    vals = [float(i) for i in range(1, 101)]
    assert percentile(vals, 50) == 50.0
    assert percentile(vals, 99) == 99.0
    assert percentile([], 50) is None
    p = pct_ms([0.001, 0.002, 0.003])
    assert p["p50_ms"] == 2.0 and p["max_ms"] == 3.0
    pts = cdf_points([i / 1000 for i in range(10_000)], max_points=100)
    assert len(pts) == 100 and pts[0] == 0.0 and pts[-1] == 9999.0 and pts == sorted(pts)


def test_table_shows_absent_rows() -> None:
    rows = [{"scenario": "burst", "target": "direct", "completed": 3, "failed": 1, "sessions_per_s": 10.0},
            {"scenario": "burst", "target": "gateway-http", "absent": True, "absent_reason": "not yet",
             "completed": 0, "failed": 0}]
    t = table(rows)
    assert "ABSENT: not yet" in t and "gateway-http" in t and "10.00" in t
    assert "absent: not yet" in markdown_table(rows)


def _run_group(cmd: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run ``cmd`` in its own process group; on timeout kill the whole group
    (the bench's gateway and PostgreSQL too), then fail."""
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"bench did not finish in {timeout} s:\n{out[-2000:]}\n{err[-2000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


# Usually ~40 s; the limit is generous because a loaded 2-core machine has run it for >100 s.
@pytest.mark.timeout(310)
def test_quick_run_structure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "burst", "steady", "latency", "hold", "micro", "driver",
           "--quick", "--out", str(out), "--sessions", "20", "--procs", "1", "--clients", "4",
           "--duration", "0.5", "--pgbench-duration", "1", "--pgbench-clients", "4", "--pgbench-scale", "1",
           "--samples", "2", "--delay", "2", "--hold", "10", "--timeout", "20"]
    t0 = time.monotonic()
    r = _run_group(cmd, 300)
    elapsed = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())
    assert isinstance(rows, list) and rows
    for row in rows:
        for k in REQUIRED:
            assert k in row, (k, row)
        if row.get("absent"):
            assert row.get("absent_reason"), row
    by = {(r["scenario"], r["target"]): r for r in rows}

    def present(scenario: str, target: str) -> dict:
        row = by[(scenario, target)]
        assert not row.get("absent"), row
        assert row["completed"] > 0, row
        return row

    pgbouncer = Path("/usr/sbin/pgbouncer").exists()
    poolers = ["direct"] + (["pgbouncer"] if pgbouncer else [])
    for target in ("direct", "pgbouncer", "gateway-tcp", "gateway-ws", "gateway-http", "gateway-sql"):
        for scen in ("burst", "steady"):
            assert (scen, target) in by, (scen, target)
    for target in poolers:
        b = present("burst", target)
        for k in ("sessions_per_s", "p50_ms", "p95_ms", "p99_ms", "peak_backends"):
            assert b[k] is not None, (k, b)
        assert b["completed"] + b["failed"] == 20
        assert b["peak_backends"] >= 1
        s = present("steady", target)
        assert s["tps"] > 0 and s["p99_ms"] is not None
        if shutil.which("pgbench"):
            present("pgbench-S", target)
            present("pgbench-S-C", target)
        else:
            assert by[("pgbench-S", target)]["absent"]
        present("latency", target)
    if shutil.which("pgbench"):
        # named prepared statements across the transaction pool (pgbench -M prepared)
        assert present("pgbench-S-prepared", "gateway-tcp")["failed"] == 0
        present("pgbench-S-extended", "gateway-tcp")
    if pgbouncer:
        assert by[("burst", "pgbouncer")]["pooler_peak_rss_mb"] > 0
        present("hold", "pgbouncer")
    else:
        assert "apt-get install pgbouncer" in by[("burst", "pgbouncer")]["absent_reason"]
    # a gateway target is either measured or absent with a reason; never an error in the harness itself
    for (scen, target), row in by.items():
        if row.get("absent"):
            assert "harness" not in row["absent_reason"], row
    # rows of targets that exist in this checkout carry real measurements
    for (scen, target), row in by.items():
        if not row.get("absent") and scen in ("burst", "steady", "latency", "hold"):
            assert row["completed"] > 0, row
    assert any(r["scenario"] == "micro" and not r.get("absent") for r in rows)
    libs = {r["target"] for r in rows if r["scenario"] == "driver-fetchval" and not r.get("absent")}
    assert {"pg8000", "asyncpg"} <= libs

    for name in ("latency_cdf_burst.png", "latency_cdf_steady.png", "sessions_per_s.png", "tps.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000, name
    assert json.loads((out / "machine.json").read_text())["cores"] >= 1
    assert (out / "results.md").read_text().startswith("| scenario")
    print(f"quick harness run took {elapsed:.1f}s")


def test_sweep_analysis() -> None:
    """bench/sweep.py: client wait from /metrics deltas, and the pool-size recommendation."""
    from bench.sweep import recommend, scrape_wait, wait_stats

    def metrics(counts: dict[str, int], total: float) -> str:
        lines = []
        for db in ("a", "b"):
            lines += [f'wirepool_client_wait_seconds_bucket{{database="{db}",user="u",le="{le}"}} {c}'
                      for le, c in counts.items()]
            lines += [f'wirepool_client_wait_seconds_sum{{database="{db}",user="u"}} {total}',
                      f'wirepool_client_wait_seconds_count{{database="{db}",user="u"}} {counts["+Inf"]}']
        return "# HELP x\n" + "\n".join(lines) + "\n"
    before = scrape_wait(metrics({"0.001": 0, "0.01": 0, "0.1": 0, "+Inf": 0}, 0.0))
    after = scrape_wait(metrics({"0.001": 10, "0.01": 15, "0.1": 20, "+Inf": 20}, 0.5))
    assert after["count"] == 40 and after["sum"] == 1.0 and after["buckets"][0.1] == 40
    # 1000 transactions, 40 waited (1 s in all): mean 1 ms; p99 = rank 990: 960 zeros + 30 within 10 ms
    assert wait_stats(before, after, 1000) == {"wait_mean_ms": 1.0, "wait_p99_ms": 10.0}
    # 10000 transactions: rank 9900 falls among the 9960 that did not wait
    assert wait_stats(before, after, 10000) == {"wait_mean_ms": 0.1, "wait_p99_ms": 0.0}
    # 40 transactions, all waited: p99 in the 0.1 s bucket
    assert wait_stats(before, after, 40) == {"wait_mean_ms": 25.0, "wait_p99_ms": 100.0}
    rows = [{"pool_size": 2, "tps": 500.0, "failed": 0}, {"pool_size": 5, "tps": 960.0, "failed": 0},
            {"pool_size": 10, "tps": 1000.0, "failed": 0}, {"pool_size": 20, "tps": 990.0, "failed": 0},
            {"pool_size": 40, "tps": 2000.0, "failed": 3}]  # a run with errors does not count
    pick, sentence = recommend(rows)
    assert pick == 5 and "default_pool_size = 5" in sentence and "1000 TPS at pool size 10" in sentence
    assert recommend([])[0] is None


def test_relay_floor_relays_a_postgres_session(pg) -> None:  # type: ignore[no-untyped-def]
    """``bench.relay_floor`` (the ``cpu_units --floor`` baseline) carries a real session, login
    included, and passes the client's close through to Postgres: its CPU figures are a relay's."""
    proc = subprocess.Popen([sys.executable, "-m", "bench.relay_floor", "--target", f"{pg.host}:{pg.port}"],
                            stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        kw = pg.connect_kwargs(pg.SCRAM_USER, pg.SCRAM_PASSWORD)  # a SCRAM login through the relay
        env = dict(os.environ, PGPASSWORD=kw["password"])
        sql = "SELECT pg_backend_pid(), current_user, repeat('x', 300000) = repeat('x', 300000)"
        out = subprocess.run(["psql", "-XAt", "-h", "127.0.0.1", "-p", str(port), "-U", kw["user"],
                              "-d", kw["database"], "-c", sql], env=env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        pid, user, big = out.stdout.strip().split("|")
        assert user == kw["user"] and big == "t"
        deadline = time.monotonic() + 20  # the relayed backend ends with the client
        while pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE pid = {int(pid)}") != "0":
            assert time.monotonic() < deadline, "the relayed backend outlived its client"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(10)
