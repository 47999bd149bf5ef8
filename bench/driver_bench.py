"""Driver benchmark (issue 2): our ``driver`` against ``pg8000`` and ``asyncpg``.

Two workloads, run with each library one after the other in the same process
(one library at a time, nothing else running):

- ``decode``: fetch a 10,000-row result of six mixed columns (int4, int8,
  text, float8, timestamptz, numeric); ops/s = rows decoded per second.
- ``fetchval``: 10,000 sequential ``fetchval("SELECT $1::int4", i)`` round
  trips; ops/s = round trips per second.

Libraries are used through their ordinary API: ``driver.connect`` and
``asyncpg.connect`` (statement cache on, default asyncio loop for both, or
uvloop for both with ``--uvloop``), ``pg8000.native.Connection.run``.

Standalone: ``python -m bench.driver_bench --dsn postgresql://u:p@127.0.0.1:5432/db``;
as part of the harness: ``python -m bench driver`` (starts a private cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable
from urllib.parse import unquote, urlparse

REPO = Path(__file__).resolve().parent.parent

ROWS = 10_000
ROUND_TRIPS = 10_000
DECODE_SQL = (
    "SELECT i::int4 AS a, (i::int8 * 1000000007) AS b, 'row number ' || i AS c, i * 1.5::float8 AS d, "
    "timestamptz '2024-01-01 00:00:00+00' + i * interval '1 second' AS e, (i * 1.25)::numeric(14,2) AS f "
    "FROM generate_series(1, {n}) AS s(i)"
)
FETCHVAL_SQL = "SELECT $1::int4"
PG8000_FETCHVAL_SQL = "SELECT :v::int4"


def _parse_dsn(dsn: str) -> dict[str, Any]:
    u = urlparse(dsn)
    return {"host": u.hostname or "127.0.0.1", "port": u.port or 5432, "user": unquote(u.username or ""),
            "password": unquote(u.password) if u.password is not None else None,
            "database": unquote(u.path.lstrip("/")) or None}


def _timed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


async def _atimed(fn: Callable[[], Any], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        await fn()
        best = min(best, time.perf_counter() - t0)
    return best


async def bench_async(lib: str, dsn: str, rows: int, trips: int, repeat: int) -> dict[str, float]:
    if lib == "asyncpg":
        import asyncpg
        conn = await asyncpg.connect(dsn)
    else:
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import driver
        conn = await driver.connect(dsn)
    try:
        sql = DECODE_SQL.format(n=rows)
        res = await conn.fetch(sql)  # warm-up (and statement cache)
        assert len(res) == rows and res[-1][0] == rows, "wrong decode result"
        t_decode = await _atimed(lambda: conn.fetch(sql), repeat)

        for i in range(200):  # warm-up
            await conn.fetchval(FETCHVAL_SQL, i)

        async def trips_loop() -> None:
            fv = conn.fetchval
            for i in range(trips):
                await fv(FETCHVAL_SQL, i)
        t_trips = await _atimed(trips_loop, 1)
        v = await conn.fetchval(FETCHVAL_SQL, 42)
        assert v == 42, "wrong fetchval result"
    finally:
        await conn.close()
    return {"decode": rows / t_decode, "fetchval": trips / t_trips}


def bench_pg8000(dsn: str, rows: int, trips: int, repeat: int) -> dict[str, float]:
    import pg8000.native
    kw = _parse_dsn(dsn)
    conn = pg8000.native.Connection(kw["user"], host=kw["host"], port=kw["port"], database=kw["database"],
                                    password=kw["password"])
    try:
        sql = DECODE_SQL.format(n=rows)
        res = conn.run(sql)
        assert len(res) == rows and res[-1][0] == rows, "wrong decode result"
        t_decode = _timed(lambda: conn.run(sql), repeat)
        for i in range(200):
            conn.run(PG8000_FETCHVAL_SQL, v=i)

        def trips_loop() -> None:
            run = conn.run
            for i in range(trips):
                run(PG8000_FETCHVAL_SQL, v=i)
        t_trips = _timed(trips_loop, 1)
    finally:
        conn.close()
    return {"decode": rows / t_decode, "fetchval": trips / t_trips}


def driver_absent_reason() -> str | None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        import driver
    except ImportError as e:
        return f"driver not importable: {e}"
    if not hasattr(driver, "connect"):
        return "driver.connect not in this checkout yet"
    return None


def measure(dsn: str, *, quick: bool = False, use_uvloop: bool = False) -> list[dict[str, Any]]:
    rows = ROWS
    trips = 1_000 if quick else ROUND_TRIPS
    repeat = 1 if quick else 5
    if use_uvloop:
        import uvloop
        uvloop.install()
    results: dict[str, dict[str, float] | str] = {}
    why = driver_absent_reason()
    for lib in ("driver", "pg8000", "asyncpg"):
        if lib == "driver" and why:
            results[lib] = why
            continue
        try:
            if lib == "pg8000":
                results[lib] = bench_pg8000(dsn, rows, trips, repeat)
            else:
                results[lib] = asyncio.run(bench_async(lib, dsn, rows, trips, repeat))
        except Exception as e:  # noqa: BLE001 - a broken library is reported, not fatal
            results[lib] = f"error: {type(e).__name__}: {e}"[:300]
    out: list[dict[str, Any]] = []
    units = {"decode": f"rows/s decoded ({rows:,}-row result, 6 columns, best of {repeat})",
             "fetchval": f"sequential fetchval round trips/s ({trips:,})"}
    for work in ("decode", "fetchval"):
        for lib in ("driver", "pg8000", "asyncpg"):
            r = results[lib]
            scen = f"driver-{work}"
            if isinstance(r, str):
                out.append({"scenario": scen, "target": lib, "absent": True, "absent_reason": r,
                            "completed": 0, "failed": 0})
                continue
            row: dict[str, Any] = {"scenario": scen, "target": lib, "ops_per_s": round(r[work], 1),
                                   "unit": units[work], "completed": rows if work == "decode" else trips,
                                   "failed": 0, "loop": "uvloop" if use_uvloop else "asyncio"}
            if lib == "driver":
                ratios = []
                for peer in ("pg8000", "asyncpg"):
                    pr = results[peer]
                    if isinstance(pr, dict):
                        row[f"ratio_vs_{peer}"] = round(r[work] / pr[work], 3)
                        ratios.append(f"{r[work] / pr[work]:.2f}x {peer}")
                row["ratio"] = ", ".join(ratios)
            out.append(row)
    return out


def run_subprocess(dsn: str, *, quick: bool = False, use_uvloop: bool = False) -> list[dict[str, Any]]:
    """Run :func:`measure` in a fresh interpreter (nothing else in the measured process)."""
    cmd = [sys.executable, "-m", "bench.driver_bench", "--dsn", dsn, "--json"]
    if quick:
        cmd.append("--quick")
    if use_uvloop:
        cmd.append("--uvloop")
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO), timeout=1200)
    if r.returncode != 0:
        return [{"scenario": "driver-decode", "target": "driver", "absent": True, "completed": 0, "failed": 0,
                 "absent_reason": f"driver_bench failed: {r.stderr.strip()[-300:]}"}]
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.driver_bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--uvloop", action="store_true", help="run driver and asyncpg on uvloop")
    ap.add_argument("--json", action="store_true", help="print the rows as one JSON line")
    a = ap.parse_args(argv)
    rows = measure(a.dsn, quick=a.quick, use_uvloop=a.uvloop)
    if a.json:
        print(json.dumps(rows))
    else:
        from .report import table
        print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
