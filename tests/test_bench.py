"""The benchmark harness (``python -m bench``) must not rot.

Runs every scenario in ``--quick`` mode with tiny sizes against a private
cluster the harness starts itself, and checks the *structure* of what it
writes (rows per scenario and target, completed > 0 for the targets that
exist, charts that are real PNG files). Timings are never asserted.
"""

from __future__ import annotations

import json
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


@pytest.mark.timeout(110)
def test_quick_run_structure(tmp_path: Path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "bench", "burst", "steady", "latency", "hold", "micro", "driver",
           "--quick", "--out", str(out), "--sessions", "20", "--procs", "1", "--clients", "4",
           "--duration", "0.5", "--pgbench-duration", "1", "--pgbench-clients", "4", "--pgbench-scale", "1",
           "--samples", "2", "--delay", "2", "--hold", "10", "--timeout", "20"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=100)
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
