"""Large results through the poolers (issue 14): ``python -m bench large``.

Every transaction is one simple Query returning ``--rows`` rows (5,000 and
50,000 by default: ``SELECT id, val FROM big WHERE id <= N`` on a 50,000-row
table of int + short text, ~50 bytes a row on the wire), run back to back by
``--clients`` connections for ``--duration`` seconds.  Loads, all in the same
run, each target started fresh:

* ``pgbench -n -f <script> -c C -j 2`` (a C client) through PgBouncer and the
  gateway's ``pg_listen`` (both transaction mode, SCRAM);
* a raw-protocol Python client (:func:`raw_session`: startup + SCRAM from
  ``driver.protocol``, then Query and read until ReadyForQuery without
  decoding a row) through PgBouncer over TCP and the gateway over WebSocket
  (``/v2``) -- the same client code on both, so the WebSocket row differs
  from the PgBouncer row only by the path.

Per row: TPS, the pooler's CPU seconds (psutil, children included) and CPU
per transaction; ratios are against PgBouncer *in the same repeat*.  With
``--repeat N`` the summary gives the median and [min-max] of each ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

BIG_ROWS = 50_000
GOAL_TPS = 0.95   # >= 0.95x PgBouncer's tps
GOAL_CPU = 1.5    # <= 1.5x PgBouncer's CPU per transaction


def query_for(rows: int) -> str:
    return f"SELECT id, val FROM big WHERE id <= {rows}"


def ensure_big_table(cluster: Any) -> None:
    from . import env as E
    cluster.pg.psql(
        "CREATE TABLE IF NOT EXISTS big (id int PRIMARY KEY, val text NOT NULL);\n"
        f"INSERT INTO big SELECT i, 'item-' || i FROM generate_series(1, {BIG_ROWS}) i ON CONFLICT DO NOTHING;\n"
        "ANALYZE big;", user=E.BENCH_USER, db=E.BENCH_DB)


# ----------------------------------------------------------- raw client
async def raw_session(url: str | None, host: str, port: int, user: str, password: str, db: str) -> Any:
    """Log in (TCP when ``url`` is None, else a WebSocket to ``url``); returns
    ``(send, recv, close)`` at ReadyForQuery."""
    from driver.protocol import auth as pg_auth
    from driver.protocol import messages as m
    from driver.protocol.framing import MessageReader

    if url is None:
        reader, writer = await asyncio.open_connection(host, port)

        async def send(b: bytes) -> None:
            writer.write(b)

        async def recv() -> bytes:
            return await reader.read(262144)

        async def close() -> None:
            writer.write(m.TERMINATE)
            writer.close()
    else:
        from websockets.asyncio.client import connect
        ws = await connect(url, max_size=None, compression=None)

        async def send(b: bytes) -> None:
            await ws.send(b)

        async def recv() -> bytes:
            return await ws.recv(decode=False)  # type: ignore[return-value]

        async def close() -> None:
            await ws.send(m.TERMINATE)
            await ws.close()
    await send(m.startup_message({"user": user, "database": db}))
    fr = MessageReader()
    scram = None
    while True:
        data = await recv()
        if not data:
            raise ConnectionError("closed during login")
        fr.feed(data)
        for t, body in fr.read():
            if t == 82:  # 'R'
                req = m.decode_backend(t, body)
                code = req.code  # type: ignore[attr-defined]
                if code == m.AUTH_SASL:
                    scram = pg_auth.ScramClient(user, password)
                    await send(m.sasl_initial_response(scram.mechanism, scram.client_first()))
                elif code == m.AUTH_SASL_CONTINUE and scram is not None:
                    await send(m.sasl_response(scram.handle_server_first(req.data)))  # type: ignore[attr-defined]
                elif code == m.AUTH_SASL_FINAL and scram is not None:
                    scram.handle_server_final(req.data)  # type: ignore[attr-defined]
                elif code == m.AUTH_CLEARTEXT_PASSWORD:
                    await send(m.password_message(password))
                elif code != m.AUTH_OK:
                    raise RuntimeError(f"unsupported auth request {code}")
            elif t == 69:
                raise RuntimeError(f"login failed: {m.decode_backend(t, body)}")
            elif t == 90:
                return send, recv, close


async def _raw_load(spec: dict[str, Any]) -> dict[str, Any]:
    from driver.protocol import messages as m
    from driver.protocol.framing import MessageReader
    sessions = [await raw_session(spec["url"], spec["host"], spec["port"], spec["user"], spec["password"],
                                  spec["db"]) for _ in range(spec["clients"])]
    q = m.query(spec["sql"])
    deadline = spec["start"] + spec["duration"]
    done = [0]
    await asyncio.sleep(max(0.0, spec["start"] - time.monotonic()))
    cpu0 = time.process_time()

    async def one(send: Any, recv: Any) -> None:
        fr = MessageReader()
        while time.monotonic() < deadline:
            await send(q)
            z = False
            while not z:
                data = await recv()
                if not data:
                    raise ConnectionError("closed")
                chunk, idx = fr.feed_read_runs(data)
                for t, s, e in idx:
                    if t == 90:
                        z = True
                    elif t == 69:
                        raise RuntimeError(str(m.decode_backend(t, chunk[s:e])))
            done[0] += 1
    await asyncio.gather(*(one(s, r) for s, r, _c in sessions))
    elapsed = time.monotonic() - spec["start"]
    cpu = time.process_time() - cpu0
    for _s, _r, c in sessions:
        await c()
    return {"transactions": done[0], "elapsed": elapsed, "client_cpu_s": cpu}


def _raw_worker() -> None:
    spec = json.loads(sys.argv[1])
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    print(json.dumps(asyncio.run(_raw_load(spec))), flush=True)


def run_raw(spec: dict[str, Any], procs: int) -> dict[str, Any]:
    """The raw client in ``procs`` processes (``spec["clients"]`` split among them)."""
    from . import env as E
    start = time.monotonic() + 2.0 + 0.02 * spec["clients"]
    per = [spec["clients"] // procs + (1 if i < spec["clients"] % procs else 0) for i in range(procs)]
    ps = []
    for n in per:
        if n:
            s = dict(spec, clients=n, start=start)
            ps.append(subprocess.Popen([sys.executable, "-c", "from bench.large_results import _raw_worker; "
                                        "_raw_worker()", json.dumps(s)], cwd=str(E.REPO),
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    res = []
    for p in ps:
        out, err = p.communicate(timeout=spec["duration"] + 300)
        if p.returncode != 0:
            raise RuntimeError(f"raw client failed: {err.strip().splitlines()[-1:]}")
        res.append(json.loads(out))
    n = sum(r["transactions"] for r in res)
    el = max(r["elapsed"] for r in res)
    return {"transactions": n, "elapsed": el, "client_cpu_s": round(sum(r["client_cpu_s"] for r in res), 2)}


# ------------------------------------------------------------- runner
def run_pgbench(kw: dict[str, Any], sql: str, clients: int, duration: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(sql + ";\n")
        script = f.name
    try:
        cmd = ["pgbench", "-n", "-f", script, "-c", str(clients), "-j", "2", "-T", str(int(duration)),
               "-h", kw["host"], "-p", str(kw["port"]), "-U", kw["user"], kw["database"]]
        r = subprocess.run(cmd, env=dict(os.environ, PGPASSWORD=kw["password"]), capture_output=True,
                           text=True, timeout=duration + 300)
    finally:
        os.unlink(script)
    import re
    tx = re.search(r"^number of transactions actually processed: (\d+)", r.stdout, re.M)
    tps = re.search(r"^tps = ([\d.]+)", r.stdout, re.M)
    if r.returncode != 0 or not tx or not tps:
        raise RuntimeError(f"pgbench exited {r.returncode}: {(r.stderr or r.stdout)[-300:]}")
    return {"transactions": int(tx.group(1)), "tps": float(tps.group(1))}


def measure(cluster: Any, rows: int, load: str, target: str, clients: int, duration: float,
            procs: int = 2) -> dict[str, Any]:
    """One row: ``load`` is "pgbench" or "raw"; ``target`` "pgbouncer", "gateway-tcp" or "gateway-ws"."""
    from . import env as E
    sql = query_for(rows)
    svc: Any = E.PgBouncer(cluster) if target == "pgbouncer" else E.Gateway(cluster)
    with svc:
        kw = svc.conn_kwargs() if target == "pgbouncer" else svc.tcp_kwargs()
        watch = E.ProcWatch(svc.pid)
        if load == "pgbench":
            res = run_pgbench(kw, sql, clients, duration)
        else:
            url = None
            if target == "gateway-ws":
                url = f"ws://127.0.0.1:{svc.port}/v2"
            spec = {"url": url, "host": kw["host"], "port": kw["port"], "user": kw["user"],
                    "password": kw["password"], "db": kw["database"], "clients": clients, "sql": sql,
                    "duration": duration}
            watch = E.ProcWatch(svc.pid)  # logins happen inside run_raw before the start instant
            res = run_raw(spec, procs)
            res["tps"] = round(res["transactions"] / res["elapsed"], 1)
        cpu = watch.cpu_seconds()
        rss = watch.sample()
    cluster.wait_backends_gone()
    n = res["transactions"] or 1
    return {"scenario": f"large-{rows}", "load": load, "target": target, "rows": rows, "clients": clients,
            "completed": res["transactions"], "failed": 0, "tps": res["tps"],
            "pooler_cpu_s": round(cpu, 3), "cpu_per_tx_ms": round(cpu / n * 1000, 4),
            "pooler_rss_mb": round(rss / 2**20, 1), "client_cpu_s": res.get("client_cpu_s")}


CASES = (("pgbench", "pgbouncer"), ("pgbench", "gateway-tcp"), ("raw", "pgbouncer"), ("raw", "gateway-ws"))


def run_all(cluster: Any, rows_list: list[int], clients: int, duration: float, repeat: int,
            progress: Any = None, cases: tuple[tuple[str, str], ...] = CASES) -> list[dict[str, Any]]:
    ensure_big_table(cluster)
    out = []
    for rep in range(repeat):
        for rows in rows_list:
            base: dict[str, dict[str, Any]] = {}
            for load, target in cases:
                if progress is not None:
                    progress(f"large {rows} rows {load} {target} (repeat {rep + 1}/{repeat})")
                try:
                    row = measure(cluster, rows, load, target, clients, duration)
                except Exception as e:  # noqa: BLE001 - reported, the run goes on
                    row = {"scenario": f"large-{rows}", "load": load, "target": target, "rows": rows,
                           "absent": True, "absent_reason": f"{type(e).__name__}: {e}"[:300],
                           "completed": 0, "failed": 0}
                row["repeat"] = rep
                row["loadavg_1m"] = round(os.getloadavg()[0], 2)
                if target == "pgbouncer":
                    base[load] = row
                elif not row.get("absent") and load in base and not base[load].get("absent"):
                    b = base[load]
                    row["tps_ratio"] = round(row["tps"] / b["tps"], 3) if b["tps"] else None
                    row["cpu_ratio"] = round(row["cpu_per_tx_ms"] / b["cpu_per_tx_ms"], 3) \
                        if b["cpu_per_tx_ms"] else None
                out.append(row)
    return out


def summary(rows: list[dict[str, Any]]) -> str:
    lines = ["| rows | load | target | tps median [min-max] | CPU/tx ms median | tps vs PgBouncer | "
             "CPU/tx vs PgBouncer | goal met |", "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["rows"], r["load"], r["target"]) for r in rows},
                  key=lambda k: (k[0], k[1], [c[1] for c in CASES].index(k[2])))
    for rws, load, target in keys:
        rs = [r for r in rows if (r["rows"], r["load"], r["target"]) == (rws, load, target) and not r.get("absent")]
        if not rs:
            lines.append(f"| {rws} | {load} | {target} | absent | | | | |")
            continue
        tps = [r["tps"] for r in rs]
        cpu = [r["cpu_per_tx_ms"] for r in rs]

        def spread(v: list[float]) -> str:
            return f"{statistics.median(v):.2f}x [{min(v):.2f}-{max(v):.2f}]" if v else "-"
        tr = [r["tps_ratio"] for r in rs if r.get("tps_ratio") is not None]
        cr = [r["cpu_ratio"] for r in rs if r.get("cpu_ratio") is not None]
        met = "-" if not tr else ("yes" if statistics.median(tr) >= GOAL_TPS and statistics.median(cr) <= GOAL_CPU
                                   else "no")
        lines.append(f"| {rws} | {load} | {target} | {statistics.median(tps):,.1f} [{min(tps):,.1f}-{max(tps):,.1f}] "
                     f"| {statistics.median(cpu):.3f} | {spread(tr)} | {spread(cr)} | {met} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from . import env as E
    ap = argparse.ArgumentParser(prog="python -m bench large", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="5000,50000", help="comma-separated result sizes (default 5000,50000)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--loads", default="pgbench,raw", help="pgbench and/or raw (default both)")
    ap.add_argument("--out", help="write the rows as JSON here")
    a = ap.parse_args(argv)
    rows_list = [int(x) for x in a.rows.split(",") if x]
    if not E.PgBouncer.available():
        print(f"PgBouncer missing: {E.PGBOUNCER_HINT}", file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    cluster = E.BenchCluster()
    try:
        loads = a.loads.split(",")
        res = run_all(cluster, rows_list, a.clients, a.duration, a.repeat,
                      progress=lambda s: print(f"... {s}", file=sys.stderr, flush=True),
                      cases=tuple(c for c in CASES if c[0] in loads))
    finally:
        cluster.close()
    load1 = os.getloadavg()
    for r in res:
        if r.get("absent"):
            print(f"ABSENT {r['scenario']} {r['load']} {r['target']}: {r['absent_reason']}")
        else:
            print(f"{r['scenario']:>12} {r['load']:>7} {r['target']:>12} rep {r['repeat']}: {r['tps']:>9,.1f} tps "
                  f"cpu/tx {r['cpu_per_tx_ms']:.3f} ms  ratios tps {r.get('tps_ratio', '-')} "
                  f"cpu {r.get('cpu_ratio', '-')}  (load {r['loadavg_1m']})")
    print(f"\nclients={a.clients} duration={a.duration}s repeat={a.repeat} cores={os.cpu_count()} "
          f"loadavg start {load0[0]:.2f} end {load1[0]:.2f}")
    print(summary(res))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
