"""Query result cache benchmark (issue 15): the quotes workload.

    python -m bench.cache_bench                  # 200 sessions, 3 x 8 s per target
    python -m bench.cache_bench --sessions 50 --duration 3 --repeat 1   # quick

Workload per session, back to back: 95% reads -- half ``GET /quotes/:id``
(``SELECT id, text, author FROM quotes WHERE id = $1``, 1,000 ids) and half
``GET /quotes?limit=20`` (the 20 newest) -- and 5% ``POST`` (an INSERT, then
the tag ``quotes`` invalidated: ``NOTIFY wirepool_invalidate, 'quotes'`` in the
same transaction, so every gateway instance hears it).

Targets (a fresh PgBouncer / gateway per run; the same Postgres):

- ``gateway-off``: the gateway, ``cache = "off"``, our driver over WebSocket;
- ``gateway-hint``: ``cache = "hint"``, reads carry
  ``/* wirepool:cache ttl=60 swr=10 tags=quotes */``;
- ``gateway-auto``: ``cache = "auto"``, no hints (entries carry no tag: the
  POSTs' NOTIFY drops nothing, reads may lag by up to ``cache_ttl`` = 5 s);
- ``pgbouncer``: PgBouncer transaction mode, asyncpg (``statement_cache_size=0``)
  over TCP (PgBouncer has no WebSocket).

Reported per target: ops/s, read p50/p99 (ms), hit ratio (the gateway's
counters), Postgres CPU seconds per 1,000 ops; mean and min..max over the
repeats; ratios vs ``gateway-off`` of the same run.  Then the gateway-side cost
of a hit: an in-process gateway with one asyncpg client, the time from a
client chunk to its replayed reply inside ``SessionCache.intercept``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import random
import statistics
import sys
import time
from typing import Any

from . import env as E

HINT = "/* wirepool:cache ttl=60 swr=10 tags=quotes */ "
BY_ID = "SELECT id, text, author FROM quotes WHERE id = $1"
LATEST = "SELECT id, text, author FROM quotes ORDER BY id DESC LIMIT 20"
QUOTES = 1000


class CacheGateway(E.Gateway):
    def __init__(self, cluster: E.BenchCluster, mode: str) -> None:
        super().__init__(cluster, extra={"cache_max_bytes": 256 << 20})
        self.mode = mode

    def config_text(self) -> str:
        text = super().config_text()
        db = f"[databases.{E.BENCH_DB}]\n"
        return text.replace(db, db + f'cache = "{self.mode}"\ncache_ttl = 5\ncache_swr = 5\n', 1)


def _setup(cluster: E.BenchCluster) -> None:
    cluster.pg.psql(
        "CREATE TABLE IF NOT EXISTS quotes (id serial PRIMARY KEY, text text NOT NULL, author text);"
        "TRUNCATE quotes RESTART IDENTITY;"
        f"INSERT INTO quotes (text, author) SELECT 'quote ' || i || repeat(' words', 8), 'author ' || (i % 50)"
        f" FROM generate_series(1, {QUOTES}) i; ANALYZE quotes;", user=E.BENCH_USER, db=E.BENCH_DB)


# ------------------------------------------------------------------ load (worker processes)

def _worker(spec: dict[str, Any], q: Any) -> None:
    try:
        q.put(asyncio.run(_load(spec)))
    except BaseException as e:  # noqa: BLE001
        q.put({"error": repr(e)})


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    hint = HINT if spec["hint"] else ""
    by_id, latest = hint + BY_ID, hint + LATEST
    if spec["kind"] == "driver":
        import driver

        async def connect() -> Any:
            return await driver.connect(spec["dsn"])
    else:
        import asyncpg

        async def connect() -> Any:
            return await asyncpg.connect(**spec["kwargs"], statement_cache_size=0)
    conns = [await connect() for _ in range(spec["sessions"])]
    lat: list[float] = []
    ops = errors = 0
    # a common start instant; a worker whose connections took longer starts late (its own window)
    start = max(spec["start"], time.monotonic())
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    end = start + spec["duration"]
    rng = random.Random(spec["seed"])

    async def session(c: Any) -> None:
        nonlocal ops, errors
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            r = rng.random()
            try:
                if r < 0.05:
                    async with c.transaction():
                        await c.execute("INSERT INTO quotes (text, author) VALUES ($1, 'bench')", f"new {t0}")
                        await c.execute("NOTIFY wirepool_invalidate, 'quotes'")
                elif r < 0.525:
                    await c.fetch(by_id, rng.randint(1, QUOTES))
                    lat.append(time.monotonic() - t0)
                else:
                    await c.fetch(latest)
                    lat.append(time.monotonic() - t0)
                ops += 1
            except Exception:  # noqa: BLE001
                errors += 1

    await asyncio.gather(*(session(c) for c in conns))
    for c in conns:
        await c.close()
    return {"lat": lat, "ops": ops, "errors": errors, "late": start - spec["start"]}


def _run_load(specs: list[dict[str, Any]]) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(s, q)) for s in specs]
    for p in procs:
        p.start()
    res = [q.get() for _ in procs]
    for p in procs:
        p.join(30)
    errs = [r["error"] for r in res if "error" in r]
    if errs:
        raise RuntimeError(errs[0])
    lat = sorted(x for r in res for x in r["lat"])
    return {"ops": sum(r["ops"] for r in res), "errors": sum(r["errors"] for r in res), "lat": lat,
            "late": max(r["late"] for r in res)}


def _counters(g: CacheGateway) -> dict[str, int]:
    """SHOW CACHE through psql (the console speaks the simple query protocol)."""
    import os
    import subprocess
    r = subprocess.run([g.cluster.pg.psql_bin, "-X", "-A", "-t", "-F", " ", "-h", "127.0.0.1", "-p", str(g.pg_port),
                        "-U", E.BENCH_USER, "-d", "pgbouncer", "-c", "SHOW CACHE"],
                       capture_output=True, text=True, env=dict(os.environ, PGPASSWORD=E.BENCH_PASSWORD),
                       timeout=30)
    out = {}
    for line in r.stdout.splitlines():
        k, _, v = line.partition(" ")
        if v.strip().isdigit():
            out[k] = int(v)
    return out


def run_target(cluster: E.BenchCluster, target: str, sessions: int, duration: float, procs: int) -> dict[str, Any]:
    _setup(cluster)
    cluster.wait_backends_gone()
    svc: Any
    if target == "pgbouncer":
        svc = E.PgBouncer(cluster)
        svc.start()
        base = {"kind": "asyncpg", "kwargs": svc.conn_kwargs(), "hint": False}
    else:
        mode = target.split("-", 1)[1]
        svc = CacheGateway(cluster, mode)
        svc.extra["admin_users"] = E.BENCH_USER  # (a comma-separated string: bench/env.py writes scalars)
        svc.start()
        base = {"kind": "driver", "dsn": svc.ws_url(), "hint": mode == "hint"}
    try:
        start = time.monotonic() + 3.0 + sessions * 0.05
        per = [sessions // procs + (1 if i < sessions % procs else 0) for i in range(procs)]
        specs = [dict(base, sessions=n, duration=duration, start=start, seed=i) for i, n in enumerate(per)]
        cpu = E.PostgresCpu(cluster)
        before = _counters(svc) if target != "pgbouncer" else {}
        res = _run_load(specs)
        pg_cpu = cpu.seconds()
        after = _counters(svc) if target != "pgbouncer" else {}
    finally:
        svc.stop()
    lat = res["lat"]
    served = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "stale", "misses", "shared")}
    cacheable = served["hits"] + served["stale"] + served["misses"] + served["shared"]
    return {"target": target, "ops_s": res["ops"] / duration, "errors": res["errors"],
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
            "hit_ratio": (served["hits"] + served["stale"]) / cacheable if cacheable else None,
            "reads": len(lat), "pg_cpu_s_per_kop": 1000 * pg_cpu / max(1, res["ops"]),
            "late_start_s": round(res["late"], 2)}


# ------------------------------------------------------------------ the gateway's own cost of a hit

async def _hit_cost(n: int = 3000) -> dict[str, float]:
    """In-process gateway (same code), one asyncpg client over pg_listen: time
    spent inside SessionCache.intercept for each hit (chunk in -> reply written)."""
    import asyncpg

    from gateway import cache_hook
    from gateway.app import GatewayApp
    from gateway.config import parse_config
    cluster = E.BenchCluster()
    try:
        _setup(cluster)
        cfg = parse_config({"gateway": {"listen": "127.0.0.1:0", "pg_listen": "127.0.0.1:0", "auth_type": "trust"},
                            "databases": {"bench": {"host": cluster.host, "port": cluster.port, "dbname": "bench",
                                                    "user": E.BENCH_USER, "password": E.BENCH_PASSWORD,
                                                    "cache": "hint"}},
                            "users": {"bench": {}}})
        times: list[float] = []
        orig = cache_hook.SessionCache.intercept

        def timed(self: Any, chunk: bytes, idx: Any) -> bool:
            t0 = time.perf_counter()
            hits = self.rc.stats.hits
            r = orig(self, chunk, idx)
            if self.rc.stats.hits != hits:
                times.append(time.perf_counter() - t0)
            return r
        cache_hook.SessionCache.intercept = timed  # type: ignore[method-assign]
        try:
            async with GatewayApp(cfg) as app:
                c = await asyncpg.connect(host="127.0.0.1", port=app.pg_port, user="bench", database="bench")
                stmt = await c.prepare(HINT + BY_ID)
                for i in range(n):
                    await stmt.fetch(1 + i % 20)
                await c.close()
        finally:
            cache_hook.SessionCache.intercept = orig  # type: ignore[method-assign]
        times.sort()
        return {"hits": len(times), "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(len(times) * .99)]}
    finally:
        cluster.close()


def _spread(vals: list[float]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.3g} ({min(vals):.3g}..{max(vals):.3g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--procs", type=int, default=2)
    ap.add_argument("--targets", default="gateway-off,gateway-hint,gateway-auto,pgbouncer")
    ap.add_argument("--out", default=None, help="write the rows as JSON here")
    a = ap.parse_args(argv)
    targets = a.targets.split(",")
    rows: list[dict[str, Any]] = []
    cluster = E.BenchCluster(max_connections=100)
    try:
        for rep in range(a.repeat):
            for t in targets:
                if t == "pgbouncer" and not E.PgBouncer.available():
                    print(f"pgbouncer: absent ({E.PGBOUNCER_HINT})", flush=True)
                    continue
                row = run_target(cluster, t, a.sessions, a.duration, a.procs)
                row["repeat"] = rep
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        cluster.close()
    print(f"\nquotes workload: {a.sessions} sessions, {a.duration:g} s x {a.repeat}; mean (min..max)")
    print(f"{'target':14} {'ops/s':>22} {'x off':>18} {'read p50 ms':>20} {'read p99 ms':>20} "
          f"{'hit ratio':>20} {'pg cpu s/kop':>20}")
    base = {r["repeat"]: r["ops_s"] for r in rows if r["target"] == "gateway-off"}
    for t in targets:
        rs = [r for r in rows if r["target"] == t]
        if not rs:
            continue
        ratio = [r["ops_s"] / base[r["repeat"]] for r in rs if base.get(r["repeat"])]
        print(f"{t:14} {_spread([r['ops_s'] for r in rs]):>22} {_spread(ratio):>18} "
              f"{_spread([r['p50_ms'] for r in rs]):>20} {_spread([r['p99_ms'] for r in rs]):>20} "
              f"{_spread([r['hit_ratio'] for r in rs]):>20} {_spread([r['pg_cpu_s_per_kop'] for r in rs]):>20}")
    hc = asyncio.run(_hit_cost())
    print(f"\ngateway-side hit cost (in-process, SessionCache.intercept, {hc['hits']} hits): "
          f"p50 {hc['p50_ms']:.3f} ms, p99 {hc['p99_ms']:.3f} ms")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "hit_cost": hc}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
