"""Python steps per ``pgbench -S`` transaction in the gateway (issue 14): deterministic.

``python -m bench.tx_steps [--baseline REV] [--clients 4] [--mode simple|extended|prepared] [--connect]
[--ws scram|token]``

CPU seconds per transaction on a shared 2-core machine move by 10-30 % from
one run to the next (``bench.cpu_units`` gives them, side by side with
PgBouncer); this counts what the gateway's *Python* code does instead, which
machine load does not change: the gateway (``wirepool serve``, uvloop, as in
``bench.cpu_units``) runs under ``sys.settrace`` with opcode events on, and
its counters are read (SIGUSR1) around two ``pgbench -n -S -t`` runs of
different lengths; the difference over the extra transactions is the
bytecodes and Python function calls of one transaction -- logins, warm-up
and the janitor cancel out.  C code (uvloop, the kernel, ``bytes`` methods)
is not counted: CPU time per transaction is that, plus ~50 ns per bytecode.

``--connect`` runs ``pgbench -C`` instead: the figures are per connection
(SCRAM login, one transaction, close); minus the plain figure, per login.
``--ws scram`` counts per WebSocket session of the driver instead
(``driver.connect("ws://user:pw@.../db", statement_cache_size=0)``: the
upgrade request, SCRAM login, one ``fetchval``, close -- what
``bench.cpu_units``' ws-login does), ``--clients`` sessions at a time from a
child process (this tree's driver, whatever the gateway's revision);
``--ws token`` the same with the API token and
``lazy_connect=true&describe_first=false`` (login and query in one flight:
``bench.cold_start``'s gateway-ws-token case).
``--baseline REV`` also measures a git revision of this repository (exported
with ``git archive`` to a temporary directory) in the same run, and prints
the ratio.  ``--functions N`` lists the N functions with most bytecodes.
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import env as E

_CHILD = r'''
import collections, signal, sys
N = [0, 0]
PER = collections.Counter()
def local(frame, event, arg):
    if event == "opcode":
        N[0] += 1
        PER[frame.f_code] += 1
    return local
def glob(frame, event, arg):
    if frame.f_code.co_filename == "<string>":
        return None  # this harness
    N[1] += 1
    frame.f_trace_opcodes = True
    return local
def dump(*a):
    items = list(PER.items())
    per = {"/".join(c.co_filename.rsplit("/", 2)[-2:]) + f":{c.co_firstlineno}:{c.co_name}": v for c, v in items}
    with open(OUT, "a") as f:
        f.write(repr((N[0], N[1], per)) + "\n")
signal.signal(signal.SIGUSR1, dump)
sys.settrace(glob)
from gateway.cli import main
sys.argv = ["wirepool", "serve", "--config", CFG]
main()
'''


def _snap(out: Path, pid: int) -> tuple[int, int, dict[str, int]]:
    n0 = len(out.read_text().splitlines()) if out.exists() else 0
    os.kill(pid, signal.SIGUSR1)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if out.exists():
            lines = out.read_text().splitlines()
            if len(lines) > n0:
                try:
                    return ast.literal_eval(lines[-1])  # type: ignore[no-any-return]
                except SyntaxError:  # still being written
                    continue
    raise RuntimeError("the traced gateway did not report its counters")


def _pgbench(kw: dict[str, Any], clients: int, tx: int, mode: str, connect: bool = False) -> None:
    subprocess.run(["pgbench", "-n", "-S", *(["-C"] if connect else []), "-M", mode, "-c", str(clients), "-j", "1", "-t", str(tx), "-h", kw["host"],
                    "-p", str(kw["port"]), "-U", kw["user"], kw["database"]],
                   env=dict(os.environ, PGPASSWORD=kw["password"]), check=True, capture_output=True)


_WS_CHILD = r"""
import asyncio, sys
import driver

async def main(url, n, clients):
    sem = asyncio.Semaphore(clients)
    async def one(i):
        async with sem:
            c = await driver.connect(url, statement_cache_size=0, timeout=60)
            try:
                assert await c.fetchval("SELECT val FROM items WHERE id = $1", i % 1000 + 1) == f"item-{i % 1000 + 1}"
            finally:
                await c.close()
    await asyncio.gather(*(one(i) for i in range(n)))

asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
"""


def _ws_sessions(url: str, clients: int, n: int) -> None:
    """``n`` driver sessions over the WebSocket, ``clients`` at a time (this tree's driver)."""
    env = dict(os.environ, PYTHONPATH=str(E.REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-c", _WS_CHILD, url, str(n), str(clients)], env=env,
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"WebSocket sessions failed: {p.stderr[-500:]}")


def ws_url(gw: E.Gateway, ws: str) -> str:
    if ws == "token":
        return (f"ws://127.0.0.1:{gw.port}/{E.BENCH_DB}?token={E.BENCH_TOKEN}"
                "&lazy_connect=true&describe_first=false")
    return gw.ws_url()


def measure(cluster: E.BenchCluster, repo: Path, clients: int, short: int, long: int, mode: str = "simple",
            connect: bool = False, ws: str | None = None) -> tuple[float, float, dict[str, float]]:
    """(bytecodes, calls, bytecodes by function) per transaction of the gateway in ``repo``
    (``connect``: per ``pgbench -C`` transaction, i.e. a login, one transaction and a close;
    ``ws``: per driver WebSocket session, ``"scram"`` or ``"token"``)."""
    work = Path(tempfile.mkdtemp(prefix="wirepool-tx-steps-"))
    out = work / "counters"
    saved = E.REPO, E.gateway_command, E.wait_port
    here = E.REPO
    E.REPO = repo
    E.gateway_command = lambda cfg, uvloop=True: [sys.executable, "-c", f"OUT={str(out)!r}; CFG={cfg!r}\n" + _CHILD]
    E.wait_port = lambda host, port, proc=None, timeout=30.0: saved[2](host, port, proc=proc, timeout=180.0)
    probed, E.Gateway._probed = E.Gateway._probed, True  # (no asyncpg probe: nothing to fall back to)
    gw = E.Gateway(cluster)
    try:
        gw.start()
        kw = gw.tcp_kwargs()
        _pgbench(kw, clients, 20, mode)  # warm: the pool's servers, the statement caches
        if ws is None:
            def load(n: int) -> None:
                _pgbench(kw, clients, n, mode, connect)
        else:
            url = ws_url(gw, ws)

            def load(n: int) -> None:
                E.REPO = here  # the driver of this tree drives every revision's gateway
                try:
                    _ws_sessions(url, clients, n * clients)
                finally:
                    E.REPO = repo
            load(5)  # warm the WebSocket path too
        s0 = _snap(out, gw.pid)
        load(short)
        s1 = _snap(out, gw.pid)
        load(long)
        s2 = _snap(out, gw.pid)
    finally:
        gw.stop()
        cluster.wait_backends_gone()
        E.REPO, E.gateway_command, E.wait_port = saved
        E.Gateway._probed = probed
        shutil.rmtree(work, ignore_errors=True)
    tx = (long - short) * clients

    def diff(i: int) -> float:
        return ((s2[i] - s1[i]) - (s1[i] - s0[i])) / tx  # type: ignore[operator]

    per = {k: ((s2[2].get(k, 0) - s1[2].get(k, 0)) - (s1[2].get(k, 0) - s0[2].get(k, 0))) / tx for k in s2[2]}
    return diff(0), diff(1), per


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.tx_steps", description=__doc__.split("\n")[0])
    ap.add_argument("--baseline", help="a git revision to measure in the same run (e.g. a commit before a change)")
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--transactions", type=int, default=300, help="extra transactions per client (-t difference)")
    ap.add_argument("--functions", type=int, default=0, help="list the N functions with most bytecodes")
    ap.add_argument("--mode", choices=("simple", "extended", "prepared"), default="simple", help="pgbench -M")
    ap.add_argument("--connect", action="store_true",
                    help="pgbench -C: per connection (SCRAM login, one transaction, close)")
    ap.add_argument("--ws", choices=("scram", "token"),
                    help="per driver WebSocket session (upgrade, login, one fetchval, close): SCRAM, "
                         "or an API token with lazy_connect=true&describe_first=false")
    a = ap.parse_args(argv)
    if a.ws and (a.connect or a.mode != "simple"):
        ap.error("--ws measures driver sessions: not with --connect or --mode")
    targets: list[tuple[str, Path]] = []
    tmp: Path | None = None
    if a.baseline:
        tmp = Path(tempfile.mkdtemp(prefix="wirepool-tx-steps-base-"))
        archive = subprocess.run(["git", "-C", str(E.REPO), "archive", a.baseline], check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive.stdout, check=True)
        targets.append((a.baseline, tmp))
    targets.append(("this tree", E.REPO))
    cluster = E.BenchCluster(scram_iterations=16)
    rows: list[tuple[str, float, float]] = []
    try:
        cluster.pgbench_init(1)
        for name, repo in targets:
            short, long = (10, 10 + a.transactions // 4) if a.ws else (100, 100 + a.transactions)
            ops, calls, per = measure(cluster, repo, a.clients, short, long, a.mode, a.connect, a.ws)
            rows.append((name, ops, calls))
            what = (f"WebSocket session ({a.ws})" if a.ws else
                    f"pgbench -S{' -C' if a.connect else ''} -M {a.mode} transaction")
            print(f"{name:12s} {ops:7.0f} bytecodes {calls:6.1f} Python calls per {what}", flush=True)
            for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:a.functions]:
                print(f"    {v:7.1f}  {k}")
    finally:
        cluster.close()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if len(rows) == 2:
        print(f"this tree / {rows[0][0]}: bytecodes {rows[1][1] / rows[0][1]:.2f}x, calls {rows[1][2] / rows[0][2]:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
