"""CPU per unit of work (issue 14): the gateway and PgBouncer side by side, repeated.

``python -m bench.cpu_units [--repeat 3] [--seconds 8] [--clients 20] [--ws-logins 500] [--compare PATH]``

One private PostgreSQL; in every repeat, PgBouncer and the gateway
(``wirepool serve``, uvloop, same pool size, SCRAM with the stored verifier) are
started fresh in turn and loaded by the same C client:

* ``pgbench-S``   -- ``pgbench -n -S -c C -j 2 -T S``: pooler CPU seconds
  (psutil, children included) / transactions = **CPU per transaction**;
* ``pgbench-S-C`` -- the same with ``-C`` (a new connection, SCRAM login, one
  transaction, close): pooler CPU / connections = **CPU per login** (+ its one
  transaction; the ``login`` column subtracts the same target's ``pgbench-S``
  figure);
* ``ws-login``    -- gateway only: ``--ws-logins`` fresh sessions of the driver
  over the WebSocket (SCRAM, one query, close; 50 at a time, from a child
  process): gateway CPU / sessions.

``--floor`` adds ``relay``: :mod:`bench.relay_floor`, a byte relay on uvloop
with one Postgres connection per client and no parsing (Postgres does the
login) -- the least CPU any pooler written on CPython + uvloop spends to move
the same messages, measured in the same repeats; its ratio to PgBouncer is the
platform's floor for the gateway's.

``--compare PATH`` (repeatable) adds the gateway of another checkout (e.g. a
``git worktree`` of an older commit) to every repeat, run right after this
one's, so before/after figures come from the same run: each is labelled
``gateway@<dir name>`` and its ratio to PgBouncer is printed alongside, with
its ratio to this checkout's gateway.

The role's SCRAM verifier uses ``--scram-iterations`` (default 16) PBKDF2
rounds so that the *clients'* key derivation does not eat the two cores the
poolers run on (the poolers check the stored verifier and never run PBKDF2 for
a client).  Printed: every repeat's figures and, per unit, the gateway/PgBouncer
ratio as median [min-max] over the repeats (the ratio is taken within a repeat,
so machine load shifts both sides alike), with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
from typing import Any

from . import env as E
from .env import BENCH_DB, BENCH_PASSWORD, BENCH_USER, BenchCluster, Gateway, PgBouncer, ProcWatch

_TX = re.compile(r"number of transactions actually processed: (\d+)")

_WS_CHILD = r"""
import asyncio, sys
import driver

async def main(url, n):
    sem = asyncio.Semaphore(50)
    bad = 0
    async def one(i):
        nonlocal bad
        async with sem:
            try:
                c = await driver.connect(url, statement_cache_size=0, timeout=60)
                try:
                    await c.fetchval("SELECT val FROM items WHERE id = $1", i % 1000 + 1)
                finally:
                    await c.close()
            except Exception:
                bad += 1
    await asyncio.gather(*(one(i) for i in range(n)))
    print(n - bad, flush=True)

asyncio.run(main(sys.argv[1], int(sys.argv[2])))
"""


def _pgbench(kw: dict[str, Any], pid: int | None, extra: list[str], clients: int, seconds: int) -> tuple[int, float]:
    cmd = ["pgbench", "-n", "-S", *extra, "-c", str(clients), "-j", "2", "-T", str(seconds),
           "-h", kw["host"], "-p", str(kw["port"]), "-U", kw["user"], kw["database"]]
    watch = ProcWatch(pid)
    p = subprocess.run(cmd, env=dict(os.environ, PGPASSWORD=kw["password"]), capture_output=True, text=True)
    cpu = watch.cpu_seconds()
    m = _TX.search(p.stdout)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"pgbench exited {p.returncode}: {(p.stderr or p.stdout)[-300:]}")
    return int(m.group(1)), cpu


def _ws_logins(gw: Gateway, n: int) -> tuple[int, float]:
    url = f"ws://{BENCH_USER}:{BENCH_PASSWORD}@127.0.0.1:{gw.port}/{BENCH_DB}"
    watch = ProcWatch(gw.pid)
    env = dict(os.environ)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = repo + os.pathsep + env.get("PYTHONPATH", "")
    p = subprocess.run([sys.executable, "-c", _WS_CHILD, url, str(n)], capture_output=True, text=True, env=env)
    cpu = watch.cpu_seconds()
    if p.returncode != 0:
        raise RuntimeError(f"ws login child failed: {p.stderr[-300:]}")
    return int(p.stdout.split()[-1]), cpu


class _Relay(E._Service):
    """``python -m bench.relay_floor`` in front of the cluster (``--floor``)."""

    name = "relay"

    def __init__(self, cluster: BenchCluster) -> None:
        self.cluster = cluster
        self.port = 0

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.relay_floor", "--target", f"{self.cluster.host}:{self.cluster.port}"],
            stdout=subprocess.PIPE, text=True, cwd=str(E.REPO))
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip().isdigit():
            raise RuntimeError(f"relay_floor did not start: {line!r}")
        self.port = int(line)

    def conn_kwargs(self) -> dict[str, Any]:
        return dict(self.cluster.conn_kwargs(), host="127.0.0.1", port=self.port)


def _spread(xs: list[float]) -> str:
    if not xs:
        return "-"
    return f"{statistics.median(xs):.2f}x [{min(xs):.2f}-{max(xs):.2f}]"


def _variants(compare: list[str]) -> list[tuple[str, Any]]:
    """(label, checkout) of the gateways to measure: this one, then ``--compare`` ones."""
    out: list[tuple[str, Any]] = [("gateway", E.REPO)]
    for path in compare:
        repo = E.Path(path).resolve()
        if not (repo / "gateway" / "__init__.py").exists():
            raise SystemExit(f"--compare {path}: not a wirepool checkout")
        out.append((f"gateway@{repo.name}", repo))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cpu_units", description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=8, help="pgbench -T")
    ap.add_argument("--clients", type=int, default=20, help="pgbench -c")
    ap.add_argument("--ws-logins", type=int, default=500, help="WebSocket logins per repeat (0: skip)")
    ap.add_argument("--scram-iterations", type=int, default=16)
    ap.add_argument("--compare", action="append", default=[], metavar="PATH",
                    help="also measure the gateway of this checkout (before/after in one run)")
    ap.add_argument("--floor", action="store_true",
                    help="also measure bench.relay_floor (a uvloop byte relay: the platform's floor)")
    ap.add_argument("--json", help="also write the rows to this file")
    a = ap.parse_args(argv)
    variants = _variants(a.compare)
    floor = [("relay", None)] if a.floor else []
    gateways = [label for label, _ in variants] + [label for label, _ in floor]
    print(f"load average at start: {os.getloadavg()}", flush=True)
    cluster = BenchCluster(scram_iterations=a.scram_iterations)
    rows: list[dict[str, Any]] = []
    units = ("pgbench-S", "pgbench-S-C", "login")
    ratios: dict[tuple[str, str], list[float]] = {(g, u): [] for g in gateways for u in units}
    vs_first: dict[tuple[str, str], list[float]] = {(g, u): [] for g in gateways[1:] for u in (*units, "ws-login")
                                                    if g != "relay"}
    this_repo = E.REPO
    try:
        cluster.pgbench_init(10)
        for r in range(a.repeat):
            got: dict[tuple[str, str], float] = {}
            for target, repo in [("pgbouncer", None), *variants, *floor]:
                E.REPO = repo if repo is not None else this_repo  # the checkout a Gateway runs from
                svc: Any = (PgBouncer(cluster) if target == "pgbouncer" else _Relay(cluster) if target == "relay"
                            else Gateway(cluster))
                try:
                    svc.start()
                    kw = svc.tcp_kwargs() if isinstance(svc, Gateway) else svc.conn_kwargs()
                    for unit, extra in (("pgbench-S", []), ("pgbench-S-C", ["-C"])):
                        n, cpu = _pgbench(kw, svc.pid, extra, a.clients, a.seconds)
                        got[(target, unit)] = us = cpu / max(1, n) * 1e6
                        rows.append({"repeat": r, "target": target, "unit": unit, "n": n, "cpu_s": cpu, "us": us})
                        print(f"repeat {r} {target:18s} {unit:12s} n={n:7d} cpu={cpu:6.2f}s {us:8.1f} us/unit "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
                    got[(target, "login")] = us = got[(target, "pgbench-S-C")] - got[(target, "pgbench-S")]
                    rows.append({"repeat": r, "target": target, "unit": "login", "n": None, "cpu_s": None, "us": us})
                    if isinstance(svc, Gateway) and a.ws_logins > 0:
                        n, cpu = _ws_logins(svc, a.ws_logins)
                        got[(target, "ws-login")] = us = cpu / max(1, n) * 1e6
                        rows.append({"repeat": r, "target": target, "unit": "ws-login", "n": n,
                                     "cpu_s": cpu, "us": us})
                        print(f"repeat {r} {target:18s} ws-login     n={n:7d} cpu={cpu:6.2f}s {us:8.1f} us/unit "
                              f"load {os.getloadavg()[0]:.1f}", flush=True)
                finally:
                    svc.stop()
                    cluster.wait_backends_gone()
                    E.REPO = this_repo
            for g in gateways:
                for unit in units:
                    ratios[(g, unit)].append(got[(g, unit)] / got[("pgbouncer", unit)])
                print(f"repeat {r} {g}/PgBouncer: " + ", ".join(f"{u} {ratios[(g, u)][-1]:.2f}x" for u in units),
                      flush=True)
            for g in gateways[1:]:
                for unit in (*units, "ws-login"):
                    if (g, unit) in vs_first and (g, unit) in got and (gateways[0], unit) in got:
                        vs_first[(g, unit)].append(got[(gateways[0], unit)] / got[(g, unit)])
    finally:
        E.REPO = this_repo
        cluster.close()

    def med(target: str, unit: str) -> str:
        xs = [row["us"] for row in rows if row["target"] == target and row["unit"] == unit]
        return f"{statistics.median(xs):.1f}" if xs else "-"

    print(f"\nCPU per unit, us: median over {a.repeat} repeats; ratio = gateway/PgBouncer within a repeat")
    for g in gateways:
        print(f"[{g}]")
        print(f"{'unit':14s} {'PgBouncer':>10s} {g.split('@')[0]:>10s}  ratio median [min-max]")
        for unit in ("pgbench-S", "pgbench-S-C"):
            print(f"{unit:14s} {med('pgbouncer', unit):>10s} {med(g, unit):>10s}  {_spread(ratios[(g, unit)])}")
        print(f"{'login (C - S)':14s} {med('pgbouncer', 'login'):>10s} {med(g, 'login'):>10s}  "
              f"{_spread(ratios[(g, 'login')])}")
        if a.ws_logins > 0 and g != "relay":
            print(f"{'ws-login':14s} {'-':>10s} {med(g, 'ws-login'):>10s}")
    for g in gateways[1:]:
        if g == "relay":
            continue
        print(f"{gateways[0]} CPU / {g} CPU (within a repeat; < 1: this checkout spends less): "
              + ", ".join(f"{u} {_spread(vs_first[(g, u)])}" for u in (*units, "ws-login") if vs_first[(g, u)]))
    print(f"load average at end: {os.getloadavg()}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"rows": rows, "ratios": {f"{g}/{u}": v for (g, u), v in ratios.items()}}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
