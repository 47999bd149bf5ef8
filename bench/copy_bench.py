"""``python -m bench copy``: COPY of 100,000 records, the driver vs asyncpg.

Workloads (each library through its ordinary API, one after the other in the
same process, alternating per round so machine load hits both alike):

- ``records_in``: ``copy_records_to_table`` of 100,000 records of five columns
  (int4, text, float8, timestamptz, numeric) into an UNLOGGED table
  (truncated before each round);
- ``table_out``: ``copy_from_table`` of those 100,000 rows (binary format)
  to a coroutine function collecting the bytes.

Prints the median, min and max of ``--rounds`` rounds in ms and the ratio of
the medians (driver / asyncpg); the target for ``records_in`` is <= 1.5x.

``--dsn`` uses that server; without it a private cluster is started (bench/env.py).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import decimal
import statistics
import sys
import time
from typing import Any

N = 100_000
T0 = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
COLS = "id int4, name text, score float8, at timestamptz, amount numeric"
#: ``--simple``: no numeric/timestamptz (their pure-Python encoders dominate the driver's time)
SIMPLE_COLS = "id int4, name text, score float8"


def make_records(n: int, simple: bool = False) -> list[tuple[Any, ...]]:
    if simple:
        return [(i, f"name-{i}", i * 0.5) for i in range(n)]
    return [(i, f"name-{i}", i * 0.5, T0 + datetime.timedelta(seconds=i),
             decimal.Decimal(i) / 100) for i in range(n)]


async def one_round(lib: Any, dsn: str, records: list[tuple[Any, ...]],
                    table: str) -> dict[str, float]:
    conn = await lib.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {table}")
        t = time.perf_counter()
        status = await conn.copy_records_to_table(table, records=records)
        t_in = time.perf_counter() - t
        assert status == f"COPY {len(records)}", status
        size = 0

        async def sink(data: bytes) -> None:
            nonlocal size
            size += len(data)

        t = time.perf_counter()
        await conn.copy_from_table(table, output=sink, format="binary")
        t_out = time.perf_counter() - t
        assert size > len(records) * 20
        return {"records_in": t_in * 1000, "table_out": t_out * 1000}
    finally:
        await conn.close()


async def run(dsn: str, rounds: int, n: int,
              simple: bool = False) -> dict[str, dict[str, list[float]]]:
    import asyncpg

    import driver

    libs = {"driver": driver, "asyncpg": asyncpg}
    setup = await asyncpg.connect(dsn)
    for name in libs:
        await setup.execute(f"DROP TABLE IF EXISTS bench_copy_{name}; "
                            f"CREATE UNLOGGED TABLE bench_copy_{name} "
                            f"({SIMPLE_COLS if simple else COLS})")
    records = make_records(n, simple)
    times: dict[str, dict[str, list[float]]] = {
        name: {"records_in": [], "table_out": []} for name in libs}
    try:
        for name, lib in libs.items():  # warm-up round (caches, .pyc, server buffers)
            await one_round(lib, dsn, records, f"bench_copy_{name}")
        for r in range(rounds):
            order = list(libs.items()) if r % 2 == 0 else list(libs.items())[::-1]
            for name, lib in order:
                res = await one_round(lib, dsn, records, f"bench_copy_{name}")
                for k, v in res.items():
                    times[name][k].append(v)
    finally:
        for name in libs:
            await setup.execute(f"DROP TABLE IF EXISTS bench_copy_{name}")
        await setup.close()
    return times


def report(times: dict[str, dict[str, list[float]]], rounds: int, n: int, simple: bool) -> None:
    cols = SIMPLE_COLS if simple else COLS
    print(f"COPY of {n:,} records ({cols}), {rounds} rounds (ms): median [min - max]")
    print(f"{'workload':12} {'driver':>26} {'asyncpg':>26} {'driver/asyncpg':>15}")
    for work in ("records_in", "table_out"):
        cells = []
        for name in ("driver", "asyncpg"):
            v = times[name][work]
            cells.append(f"{statistics.median(v):8.1f} [{min(v):6.1f} - {max(v):6.1f}]")
        ratio = statistics.median(times["driver"][work]) / statistics.median(times["asyncpg"][work])
        print(f"{work:12} {cells[0]:>26} {cells[1]:>26} {ratio:14.2f}x")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench copy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsn", help="server to use (default: a private cluster)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--records", type=int, default=N)
    ap.add_argument("--simple", action="store_true", help=f"columns {SIMPLE_COLS} only")
    a = ap.parse_args(argv)
    cluster = None
    dsn = a.dsn
    if dsn is None:
        from . import env as E

        cluster = E.BenchCluster()
        dsn = cluster.pg.dsn(E.BENCH_USER, E.BENCH_PASSWORD, E.BENCH_DB)
    try:
        times = asyncio.run(run(dsn, a.rounds, a.records, a.simple))
    finally:
        if cluster is not None:
            cluster.close()
    report(times, a.rounds, a.records, a.simple)
    return 0


if __name__ == "__main__":
    sys.exit(main())
