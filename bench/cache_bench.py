"""Query result cache benchmark (issue 15): the quotes workload.

    python -m bench.cache_bench                  # 200 sessions, 3 rounds x 8 s per target
    python -m bench.cache_bench --sessions 50 --duration 3 --repeat 1   # quick

Workload per session, back to back (a closed loop): 95% reads --
``GET /quotes/:id`` (``SELECT id, text, author FROM quotes WHERE id = $1``,
1,000 ids) and ``GET /quotes?limit=20`` (the 20 newest; ``--list-share`` of the
reads, default 0.1) -- and 5% ``POST``: an INSERT and, in the same implicit
transaction, ``NOTIFY wirepool_invalidate, 'quotes:list'``: the tag of what an
insert changes (the list; no existing quote), delivered to every gateway
instance.  With ``"hint"`` the by-id reads carry
``/* wirepool:cache ttl=60 swr=10 tags=quotes:by-id */``, the list
``tags=quotes:list``.  With ``"auto"`` there are no hints: the entries' tags are
the tables read (``quotes``), which this POST does not notify, so reads may lag
by up to ``cache_ttl`` (60 s, the default; Hyperdrive's max_age is 60 s too). With
``NOTIFY ..., 'quotes'`` (a table trigger) every POST would drop every entry; with a
short ``cache_ttl`` each entry is refreshed in the background once per ttl, which
costs the gateway about 1 ms of CPU per refresh (an internal session per refresh).

Sessions are lean: raw Postgres protocol bytes (the extended-protocol messages
the Neon driver sends: Parse, Bind, Describe, Execute, Sync of the unnamed
statement) over one WebSocket each to the gateway (``/v2``), over TCP to
PgBouncer, built once, so that the load generator costs little next to what it
measures (a full Python driver per session costs more CPU per query than the
gateway: on a 2-core machine it, not the cache, set the throughput).  Logins
(SCRAM) happen before the window.

Targets, interleaved in each round (the same Postgres; a fresh gateway /
PgBouncer per run): ``gateway-off``, ``gateway-hint``, ``gateway-auto`` and
``pgbouncer`` (transaction mode, TCP).  Each run: ``--warmup`` seconds of load
(the cache fills), then ``--duration`` seconds measured.  Reported per target:
ops/s, read p50/p99 (ms), hit ratio ((hits + stale) / cacheable reads, from the
gateway's SHOW CACHE over the window), "no own query" (also counting the reads that
waited for another session's identical query: 1 - misses / cacheable), Postgres and gateway/PgBouncer CPU seconds
per 1,000 ops, the load average; mean and min..max over the rounds; ratio vs
``gateway-off`` of the same round.  Then the gateway-side cost of a hit
(in-process, time inside ``SessionCache.intercept``).  Target (issue 15): >= 3x
the ``gateway-off`` throughput at >= 90% hits, hit p50 <= 0.3 ms at the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import multiprocessing as mp
import os
import random
import statistics
import struct
import sys
import time
from typing import Any

import psutil  # type: ignore[import-untyped]

from driver.protocol import messages as m
from driver.protocol.auth import ScramClient

from . import env as E

BY_ID = "SELECT id, text, author FROM quotes WHERE id = $1"
LATEST = "SELECT id, text, author FROM quotes ORDER BY id DESC LIMIT 20"
HINT_ID = "/* wirepool:cache ttl=60 swr=10 tags=quotes:by-id */ "
HINT_LIST = "/* wirepool:cache ttl=60 swr=10 tags=quotes:list */ "
POST = ("INSERT INTO quotes (text, author) VALUES ('a new quote', 'bench');"
        " NOTIFY wirepool_invalidate, 'quotes:list'")
QUOTES = 1000


class CacheGateway(E.Gateway):
    def __init__(self, cluster: E.BenchCluster, mode: str) -> None:
        super().__init__(cluster, extra={"cache_max_bytes": 256 << 20, "admin_users": E.BENCH_USER})
        self.mode = mode

    def config_text(self) -> str:
        text = super().config_text()
        db = f"[databases.{E.BENCH_DB}]\n"
        return text.replace(db, db + f'cache = "{self.mode}"\ncache_ttl = 60\ncache_swr = 15\n', 1)


def _setup(cluster: E.BenchCluster) -> None:
    cluster.pg.psql(
        "CREATE TABLE IF NOT EXISTS quotes (id serial PRIMARY KEY, text text NOT NULL, author text);"
        "TRUNCATE quotes RESTART IDENTITY;"
        f"INSERT INTO quotes (text, author) SELECT 'quote ' || i || repeat(' words', 8), 'author ' || (i % 50)"
        f" FROM generate_series(1, {QUOTES}) i; ANALYZE quotes;", user=E.BENCH_USER, db=E.BENCH_DB)


# ------------------------------------------------------------------ lean sessions

def _extended(sql: str, params: list[bytes]) -> bytes:
    return (m.parse("", sql, []) + m.bind("", "", [], params, []) + m.describe("P") + m.execute("", 0)
            + m.sync())


def _ws_frame(payload: bytes) -> bytes:
    """A masked binary frame; the mask key is zero (payload bytes unchanged)."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x82, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x82, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x82, 0x80 | 127, n)
    return head + b"\x00\x00\x00\x00" + payload


class Lean(asyncio.Protocol):
    """One session: Postgres messages over TCP or a WebSocket; counts
    ReadyForQuery messages (one per request) and ErrorResponses."""

    def __init__(self, ws: bool) -> None:
        self.ws = ws
        self.raw = bytearray()   # WebSocket bytes not yet unframed
        self.buf = bytearray()   # Postgres bytes
        self.pos = 0             # parsed up to here (run phase)
        self.waiter: asyncio.Future[None] | None = None
        self.want = 0
        self.errors = 0
        self.transport: Any = None
        self.lost = False
        self.handshake: bytes | None = b"" if ws else None
        self.login = True

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        w = self.waiter
        if w is not None and not w.done():
            w.set_exception(ConnectionError("connection closed"))

    def data_received(self, data: bytes) -> None:
        if self.ws:
            if self.handshake is not None:
                self.handshake += data
                i = self.handshake.find(b"\r\n\r\n")
                if i < 0:
                    return
                head, rest = self.handshake[:i], self.handshake[i + 4:]
                self.handshake = None
                if b" 101 " not in head.split(b"\r\n", 1)[0]:
                    self.connection_lost(None)
                    return
                data = rest
            raw = self.raw
            raw += data
            p = 0
            n = len(raw)
            while n - p >= 2:
                b1 = raw[p + 1] & 0x7F
                h = 2
                if b1 == 126:
                    if n - p < 4:
                        break
                    b1, h = int.from_bytes(raw[p + 2:p + 4], "big"), 4
                elif b1 == 127:
                    if n - p < 10:
                        break
                    b1, h = int.from_bytes(raw[p + 2:p + 10], "big"), 10
                if n - p < h + b1:
                    break
                if raw[p] & 0x0F in (1, 2, 0):
                    self.buf += raw[p + h:p + h + b1]
                p += h + b1
            del raw[:p]
        else:
            self.buf += data
        w = self.waiter
        if w is None:
            return
        if self.login:
            self.waiter = None
            if not w.done():
                w.set_result(None)
        else:
            self._scan()

    def _scan(self) -> None:
        buf = self.buf
        pos = self.pos
        n = len(buf)
        while n - pos >= 5:
            end = pos + 1 + int.from_bytes(buf[pos + 1:pos + 5], "big")
            if end > n:
                break
            t = buf[pos]
            if t == 90:
                self.want -= 1
            elif t == 69:
                self.errors += 1
            pos = end
        if pos == n:
            buf.clear()
            pos = 0
        self.pos = pos
        w = self.waiter
        if self.want <= 0 and w is not None and not w.done():
            self.waiter = None
            w.set_result(None)

    def send(self, data: bytes) -> None:
        self.transport.write(_ws_frame(data) if self.ws else data)

    async def request(self, data: bytes, replies: int = 1) -> None:
        self.want = replies
        self.waiter = asyncio.get_running_loop().create_future()
        self.send(data)
        await self.waiter

    async def message(self) -> tuple[int, bytes]:
        """The next whole message (login phase)."""
        while True:
            buf = self.buf
            if len(buf) >= 5:
                end = 1 + int.from_bytes(buf[1:5], "big")
                if len(buf) >= end:
                    t, body = buf[0], bytes(buf[5:end])
                    del buf[:end]
                    return t, body
            if self.lost:
                raise ConnectionError("connection closed during login")
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter


async def lean_connect(host: str, port: int, ws: bool, database: str = E.BENCH_DB) -> Lean:
    loop = asyncio.get_running_loop()
    _t, proto = await loop.create_connection(lambda: Lean(ws), host, port)
    if ws:
        key = base64.b64encode(os.urandom(16)).decode()
        proto.transport.write(
            (f"GET /v2?address={host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
             f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    proto.send(m.startup_message({"user": E.BENCH_USER, "database": database}))
    scram: ScramClient | None = None
    while True:
        t, body = await proto.message()
        if t == 82:  # Authentication*
            code = int.from_bytes(body[:4], "big")
            if code == 10:
                scram = ScramClient(E.BENCH_USER, E.BENCH_PASSWORD)
                proto.send(m.sasl_initial_response(scram.mechanism, scram.client_first()))
            elif code == 11 and scram is not None:
                proto.send(m.sasl_response(scram.handle_server_first(body[4:])))
            elif code == 12 and scram is not None:
                scram.handle_server_final(body[4:])
            elif code == 3:
                proto.send(m.password_message(E.BENCH_PASSWORD))
            elif code != 0:
                raise RuntimeError(f"unsupported authentication request {code}")
        elif t == 69:
            raise RuntimeError(f"login failed: {m.decode_fields(body).get('M')}")
        elif t == 90:
            proto.login = False
            return proto


# ------------------------------------------------------------------ load (worker processes)

def _worker(spec: dict[str, Any], q: Any, go: Any, start: Any) -> None:
    try:
        try:
            import uvloop  # the gateway's own loop: a cheaper load generator
            run: Any = uvloop.run
        except ImportError:
            run = asyncio.run
        q.put(run(_load(spec, q, go, start)))
    except BaseException as e:  # noqa: BLE001
        q.put({"error": repr(e)})


async def _load(spec: dict[str, Any], q: Any, go: Any, start_at: Any) -> dict[str, Any]:
    hint = spec["hint"]
    by_id = [_extended((HINT_ID if hint else "") + BY_ID, [str(i).encode()]) for i in range(1, QUOTES + 1)]
    latest = _extended((HINT_LIST if hint else "") + LATEST, [])
    post = m.query(POST)
    sem = asyncio.Semaphore(50)

    async def connect() -> Lean:
        async with sem:
            return await lean_connect(spec["host"], spec["port"], spec["ws"])
    conns = await asyncio.gather(*(connect() for _ in range(spec["sessions"])))
    if spec["prewarm"]:  # steady state: every cacheable read once (twice: "auto" reads its catalog first)
        mine = [by_id[i] for i in range(spec["part"], QUOTES, spec["parts"])] + [latest]

        async def walk(k: int) -> None:
            for j in range(k, len(mine), len(conns)):
                await conns[k].request(mine[j])
        for _ in range(2):
            await asyncio.gather(*(walk(k) for k in range(len(conns))))
    lat: list[float] = []
    ops = errors = 0
    q.put({"ready": True})  # connected and prewarmed: the parent sets the common start instant
    await asyncio.get_running_loop().run_in_executor(None, go.wait)
    start = start_at.value
    late = max(0.0, time.monotonic() - start)
    await asyncio.sleep(max(0.0, start - time.monotonic()))
    t_on = start + spec["warmup"]
    end = t_on + spec["duration"]
    rng = random.Random(spec["seed"])
    list_share = 0.95 * spec["list_share"]

    cpu: list[float] = []

    async def clock() -> None:  # the load generator's own CPU over the window
        await asyncio.sleep(max(0.0, t_on - time.monotonic()))
        cpu.append(time.process_time())
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        cpu.append(time.process_time())

    async def session(c: Lean) -> None:
        nonlocal ops, errors
        while True:
            t0 = time.monotonic()
            if t0 >= end:
                return
            r = rng.random()
            try:
                if r < 0.05:
                    await c.request(post)
                elif r < 0.05 + list_share:
                    await c.request(latest)
                else:
                    await c.request(by_id[rng.randrange(QUOTES)])
            except ConnectionError:
                errors += 1
                return
            if t0 >= t_on:
                ops += 1
                if r >= 0.05:
                    lat.append(time.monotonic() - t0)

    await asyncio.gather(clock(), *(session(c) for c in conns))
    errors += sum(c.errors for c in conns)
    for c in conns:
        if c.transport is not None:
            c.transport.close()
    return {"lat": lat, "ops": ops, "errors": errors, "late": late, "cpu": cpu[-1] - cpu[0]}


class Console:
    """A lean session on the gateway's admin console, opened before the window:
    SHOW CACHE costs one round trip (a psql process would take a second at load)."""

    def __init__(self, g: CacheGateway) -> None:
        self.loop = asyncio.new_event_loop()
        self.c = self.loop.run_until_complete(lean_connect(g.host, g.pg_port, False, "pgbouncer"))

    def counters(self) -> dict[str, int]:
        return self.loop.run_until_complete(self._show())

    async def _show(self) -> dict[str, int]:
        c = self.c
        c.login = True  # (message by message)
        c.send(m.query("SHOW CACHE"))
        out: dict[str, int] = {}
        while True:
            t, body = await c.message()
            if t == 68:
                k, v = m.decode_data_row(body)
                if k is not None and v is not None:
                    out[k.decode()] = int(v)
            elif t == 90:
                return out

    def close(self) -> None:
        self.c.transport.close()
        self.loop.run_until_complete(asyncio.sleep(0))
        self.loop.close()


def _cpu(pid: int) -> float:
    try:
        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except psutil.NoSuchProcess:
        return 0.0


def run_target(cluster: E.BenchCluster, target: str, a: argparse.Namespace) -> dict[str, Any]:
    _setup(cluster)
    cluster.wait_backends_gone()
    svc: Any
    if target == "pgbouncer":
        svc = E.PgBouncer(cluster)
        svc.start()
        base = {"host": svc.host, "port": svc.port, "ws": False, "hint": False}
    else:
        mode = target.split("-", 1)[1]
        svc = CacheGateway(cluster, mode)
        svc.start()
        base = {"host": svc.host, "port": svc.port, "ws": True, "hint": mode == "hint"}
    procs: list[Any] = []
    go: Any = None
    try:
        per = [a.sessions // a.procs + (1 if i < a.sessions % a.procs else 0) for i in range(a.procs)]
        specs = [dict(base, sessions=n, duration=a.duration, warmup=a.warmup, seed=i,
                      list_share=a.list_share, prewarm=target != "pgbouncer" and not a.cold, part=i,
                      parts=a.procs) for i, n in enumerate(per)]
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        go, start_at = ctx.Event(), ctx.Value("d", 0.0)
        procs = [ctx.Process(target=_worker, args=(s, q, go, start_at)) for s in specs]
        for p in procs:
            p.start()
        for _ in procs:
            r = q.get()
            if "error" in r:
                raise RuntimeError(r["error"])
        start = start_at.value = time.monotonic() + 0.2
        go.set()
        console = Console(svc) if target != "pgbouncer" else None
        time.sleep(max(0.0, start + a.warmup - time.monotonic()))
        t0 = time.monotonic()
        before = console.counters() if console is not None else {}
        skew = time.monotonic() - t0
        pg_cpu = E.PostgresCpu(cluster)
        svc_cpu0 = _cpu(svc.proc.pid)
        load0 = os.getloadavg()[0]
        res = [q.get() for _ in procs]
        pg_s = pg_cpu.seconds()
        svc_s = _cpu(svc.proc.pid) - svc_cpu0
        after = console.counters() if console is not None else {}
        console.close() if console is not None else None
    finally:
        if go is not None:
            go.set()  # (a worker still waiting after a failure ends)
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        svc.stop()
    errs = [r["error"] for r in res if "error" in r]
    if errs:
        raise RuntimeError(errs[0])
    lat = sorted(x for r in res for x in r["lat"])
    ops = sum(r["ops"] for r in res)
    served = {k: after.get(k, 0) - before.get(k, 0) for k in ("hits", "stale", "misses", "shared")}
    cacheable = sum(served.values())
    return {"target": target, "ops_s": ops / a.duration, "errors": sum(r["errors"] for r in res),
            "p50_ms": 1000 * lat[len(lat) // 2] if lat else None,
            "p99_ms": 1000 * lat[int(len(lat) * 0.99)] if lat else None,
            "hit_ratio": (served["hits"] + served["stale"]) / cacheable if cacheable else None,
            "offload": (cacheable - served["misses"]) / cacheable if cacheable else None,
            "shared": served["shared"], "reads": len(lat),
            "pg_cpu_s_per_kop": 1000 * pg_s / max(1, ops), "svc_cpu_s_per_kop": 1000 * svc_s / max(1, ops),
            "client_cpu_s_per_kop": 1000 * sum(r["cpu"] for r in res) / max(1, ops),
            "load": round(load0, 1), "late_start_s": round(max(r["late"] for r in res), 2),
            "counter_skew_s": round(skew, 3)}


# ------------------------------------------------------------------ the gateway's own cost of a hit

async def _hit_cost(n: int = 3000) -> dict[str, float]:
    """In-process gateway (same code), one lean WebSocket session: time spent
    inside SessionCache.intercept for each hit (chunk in -> reply written)."""
    from gateway import cache_hook
    from gateway.app import GatewayApp
    from gateway.config import parse_config
    cluster = E.BenchCluster()
    try:
        _setup(cluster)
        cfg = parse_config({"gateway": {"listen": "127.0.0.1:0", "pg_listen": "127.0.0.1:0", "auth_type": "trust"},
                            "databases": {E.BENCH_DB: {"host": cluster.host, "port": cluster.port,
                                                       "dbname": E.BENCH_DB, "user": E.BENCH_USER,
                                                       "password": E.BENCH_PASSWORD, "cache": "hint"}},
                            "users": {E.BENCH_USER: {}}})
        times: list[float] = []
        orig = cache_hook.SessionCache.intercept

        def timed(self: Any, chunk: bytes, idx: Any) -> Any:
            t0 = time.perf_counter()
            hits = self.rc.stats.hits
            r = orig(self, chunk, idx)
            if self.rc.stats.hits != hits:
                times.append(time.perf_counter() - t0)
            return r
        cache_hook.SessionCache.intercept = timed  # type: ignore[method-assign]
        try:
            async with GatewayApp(cfg) as app:
                c = await lean_connect("127.0.0.1", app.http_port, True)
                reqs = [_extended(HINT_ID + BY_ID, [str(1 + i).encode()]) for i in range(20)]
                for i in range(n):
                    await c.request(reqs[i % 20])
                c.transport.close()
        finally:
            cache_hook.SessionCache.intercept = orig  # type: ignore[method-assign]
        times.sort()
        return {"hits": len(times), "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[int(len(times) * .99)]}
    finally:
        cluster.close()


def _spread(vals: list[Any]) -> str:
    vals = [v for v in vals if v is not None]
    if not vals:
        return "-"
    return f"{statistics.mean(vals):.3g} ({min(vals):.3g}..{max(vals):.3g})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=200)
    ap.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    ap.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the window")
    ap.add_argument("--repeat", type=int, default=3, help="rounds (each runs every target)")
    ap.add_argument("--procs", type=int, default=1, help="load-generating processes")
    ap.add_argument("--list-share", type=float, default=0.1, help="share of the reads that are the list")
    ap.add_argument("--targets", default="gateway-off,gateway-hint,gateway-auto,pgbouncer")
    ap.add_argument("--cold", action="store_true", help="no prewarm walk (every read once) before the warm-up")
    ap.add_argument("--no-hit-cost", action="store_true")
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
                row = run_target(cluster, t, a)
                row["repeat"] = rep
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        cluster.close()
    print(f"\nquotes workload: {a.sessions} sessions, {a.warmup:g} s warm-up + {a.duration:g} s x {a.repeat},"
          f" list share {a.list_share:g}; mean (min..max)")
    cols = ("ops/s", "x off", "read p50 ms", "read p99 ms", "hit ratio", "no own query", "pg cpu s/kop",
            "svc cpu s/kop",
            "client cpu s/kop", "load")
    print(f"{'target':14} " + " ".join(f"{c:>20}" for c in cols))
    base = {r["repeat"]: r["ops_s"] for r in rows if r["target"] == "gateway-off"}
    for t in targets:
        rs = [r for r in rows if r["target"] == t]
        if not rs:
            continue
        ratio = [r["ops_s"] / base[r["repeat"]] for r in rs if base.get(r["repeat"])]
        vals = ([r["ops_s"] for r in rs], ratio, [r["p50_ms"] for r in rs], [r["p99_ms"] for r in rs],
                [r["hit_ratio"] for r in rs], [r["offload"] for r in rs], [r["pg_cpu_s_per_kop"] for r in rs],
                [r["svc_cpu_s_per_kop"] for r in rs], [r["client_cpu_s_per_kop"] for r in rs],
                [r["load"] for r in rs])
        print(f"{t:14} " + " ".join(f"{_spread(v):>20}" for v in vals))
    hc = None
    if not a.no_hit_cost:
        hc = asyncio.run(_hit_cost())
        print(f"\ngateway-side hit cost (in-process, SessionCache.intercept, {hc['hits']} hits): "
              f"p50 {hc['p50_ms']:.3f} ms, p99 {hc['p99_ms']:.3f} ms")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"rows": rows, "hit_cost": hc, "args": vars(a)}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
