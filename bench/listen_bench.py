"""``python -m bench listen``: LISTEN/NOTIFY fan-out latency and throughput (issue 13).

Two configurations with the same number of listeners (``--listeners``,
default 1,000), measured in the same run, one after the other:

- ``direct``: listeners connected straight to Postgres, each ``LISTEN fan``
  (the baseline: Postgres' own fan-out, one backend per listener);
- ``gw-ws``: listeners on the gateway's WebSocket (transaction mode,
  pool_size 2: they hold no server; the gateway's one listener connection
  LISTENs and fans out); ``--tcp`` adds ``gw-tcp`` (pg_listen).

So that the clients are not what is measured, the listeners live in
``--procs`` worker processes (default 4), each holding its share of the
connections as bare asyncio Protocols on uvloop (no task per connection;
login, WebSocket framing and the NotificationResponse are parsed by hand); each
worker reports the CPU it used, so the run shows how busy the clients were.

Per round and configuration:

- **latency**: ``--latency`` NOTIFYs, ``--interval`` seconds apart (default
  50 ms: the clients are not saturated), each payload carrying ``time.time()``
  taken just before the sender runs ``NOTIFY``; every listener notes the time
  of receipt: p50/p99 of (receipt - NOTIFY) over every (listener, notification);
- **throughput**: ``--burst`` NOTIFYs in one statement; deliveries per second
  from the statement's start until every listener has them all, the CPU the
  client workers used meanwhile (``client_cores``: cores busy on average), and
  for the gateway its own CPU time per delivery.

Prints the median and spread (min..max) over ``--rounds`` rounds, and the ratio
of each gateway figure to the direct one measured in the same run.
Sender: a direct asyncpg connection to Postgres (the NOTIFY path is not what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m

_A, _R, _E, _Z = 65, 82, 69, 90
_UPGRADE = (b"GET /v2 HTTP/1.1\r\nHost: bench\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: d2lyZXBvb2wtYmVuY2gxNg==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def _ws_frame(payload: bytes, opcode: int = 2) -> bytes:
    """A client frame (masked, as the protocol requires; a zero mask keeps the payload as is)."""
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 65536:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


class _Listener(asyncio.Protocol):
    """One listener: login (cleartext or SCRAM), ``LISTEN``, then count notifications."""

    def __init__(self, worker: "_Worker", ws: bool, login: tuple[str, str, str, str]) -> None:
        self.w = worker
        self.ws = ws
        self.user, self.password, self.database, self.channel = login
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.tr: Any = None
        self.hs: bytes | None = b"" if ws else None  # WebSocket handshake reply, until complete
        self.wbuf = b""
        self.buf = b""
        self.scram: Any = None
        self.listening = False
        self.count = 0
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.tr = transport
        if self.ws:
            transport.write(_UPGRADE)
        else:
            self.send(m.startup_message({"user": self.user, "database": self.database}))

    def send(self, data: bytes) -> None:
        self.tr.write(_ws_frame(data) if self.ws else data)

    def data_received(self, data: bytes) -> None:
        if not self.ws:
            self._pg(data)
            return
        if self.hs is not None:
            self.hs += data
            i = self.hs.find(b"\r\n\r\n")
            if i < 0:
                return
            if not self.hs.startswith(b"HTTP/1.1 101"):
                self._fail(f"WebSocket upgrade refused: {self.hs[:80]!r}")
                return
            data, self.hs = self.hs[i + 4:], None
            self.send(m.startup_message({"user": self.user, "database": self.database}))
        b = self.wbuf + data if self.wbuf else data
        pos, n = 0, len(b)
        out = []
        while n - pos >= 2:
            b1 = b[pos + 1]
            size, h = b1 & 127, 2
            if size == 126:
                if n - pos < 4:
                    break
                size, h = int.from_bytes(b[pos + 2:pos + 4], "big"), 4
            elif size == 127:
                if n - pos < 10:
                    break
                size, h = int.from_bytes(b[pos + 2:pos + 10], "big"), 10
            if n - pos < h + size:
                break
            op = b[pos] & 15
            payload = b[pos + h:pos + h + size]
            pos += h + size
            if op in (0, 1, 2):
                out.append(payload)
            elif op == 9:
                self.tr.write(_ws_frame(payload, 10))  # pong
            elif op == 8:
                self.tr.close()
        self.wbuf = b[pos:]
        if out:
            self._pg(b"".join(out))

    def _pg(self, data: bytes) -> None:
        b = self.buf + data if self.buf else data
        pos, n = 0, len(b)
        lat = self.w.lat
        while n - pos >= 5:
            size = int.from_bytes(b[pos + 1:pos + 5], "big")
            if n - pos < size + 1:
                break
            t = b[pos]
            if t == _A:
                now = time.time()
                self.count += 1
                body = b[pos + 9:pos + 1 + size]  # after the pid
                payload = body[body.index(b"\x00") + 1:-1]
                if payload[:1] == b"L":
                    lat.append(now - float(payload[1:]))
            elif not self.listening or not self.ready.done():
                self._login(t, b[pos + 5:pos + 1 + size])
            pos += size + 1
        self.buf = b[pos:]

    def _login(self, t: int, body: bytes) -> None:
        if t == _R:
            msg = m.decode_backend(t, body)
            assert isinstance(msg, m.AuthenticationRequest)
            if msg.code == m.AUTH_CLEARTEXT_PASSWORD:
                self.send(m.password_message(self.password))
            elif msg.code == m.AUTH_SASL:
                self.scram = pg_auth.ScramClient(self.user, self.password)
                self.send(m.sasl_initial_response(self.scram.mechanism, self.scram.client_first()))
            elif msg.code == m.AUTH_SASL_CONTINUE:
                self.send(m.sasl_response(self.scram.handle_server_first(msg.data)))
        elif t == _E:
            self._fail(str(m.decode_fields(body).get("M")))
        elif t == _Z:
            if not self.listening:
                self.listening = True
                self.send(m.query(f"LISTEN {self.channel}"))
            elif not self.ready.done():
                self.ready.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(RuntimeError(why))
        if self.tr is not None:
            self.tr.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail("connection closed")


class _Worker:
    """One client process: its listeners and the latencies they noted."""

    def __init__(self) -> None:
        self.conns: list[_Listener] = []
        self.lat: list[float] = []

    async def open(self, ws: bool, host: str, port: int, n: int, login: tuple[str, str, str, str]) -> float:
        loop = asyncio.get_running_loop()
        sem = asyncio.Semaphore(25)
        t0 = time.perf_counter()

        async def one() -> None:
            async with sem:
                c = _Listener(self, ws, login)
                await loop.create_connection(lambda: c, host, port)
                await asyncio.wait_for(c.ready, 120)
                self.conns.append(c)

        await asyncio.gather(*(one() for _ in range(n)))
        return time.perf_counter() - t0

    def stats(self) -> tuple[int, int, bool, float]:
        counts = [c.count for c in self.conns]
        return (min(counts) if counts else 0, sum(counts), any(c.lost for c in self.conns),
                time.process_time())

    def reset(self) -> None:
        for c in self.conns:
            c.count = 0
        self.lat.clear()

    def close(self) -> None:
        for c in self.conns:
            c.tr.close()
        self.conns.clear()


async def _serve(pipe: Any) -> None:
    loop = asyncio.get_running_loop()
    w = _Worker()
    while True:
        cmd, arg = await loop.run_in_executor(None, pipe.recv)
        try:
            if cmd == "open":
                res: Any = await w.open(*arg)
            elif cmd == "stats":
                res = w.stats()
            elif cmd == "reset":
                w.reset()
                res = None
            elif cmd == "lat":
                res, w.lat = w.lat, []
            elif cmd == "close":
                w.close()
                res = None
            else:
                pipe.send(("ok", None))
                return
        except Exception as exc:  # noqa: BLE001 - reported to the orchestrator
            pipe.send(("err", f"{type(exc).__name__}: {exc}"))
            continue
        pipe.send(("ok", res))


def _worker_main(pipe: Any) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - the gateway extra installs it
        pass
    asyncio.run(_serve(pipe))


class Clients:
    """``procs`` worker processes holding the listeners."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")
        self.pipes = []
        self.procs = []
        for _ in range(procs):
            a, b = ctx.Pipe()
            p = ctx.Process(target=_worker_main, args=(b,), daemon=True)
            p.start()
            self.pipes.append(a)
            self.procs.append(p)

    def _call(self, cmd: str, args: list[Any], timeout: float) -> list[Any]:
        for pipe, arg in zip(self.pipes, args):
            pipe.send((cmd, arg))
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout):
                raise RuntimeError(f"bench client worker: no answer to {cmd!r} in {timeout}s")
            status, res = pipe.recv()
            if status != "ok":
                raise RuntimeError(f"bench client worker: {cmd}: {res}")
            out.append(res)
        return out

    async def call(self, cmd: str, args: list[Any] | None = None, timeout: float = 600) -> list[Any]:
        args = args if args is not None else [None] * len(self.pipes)
        return await asyncio.get_running_loop().run_in_executor(None, self._call, cmd, args, timeout)

    async def open(self, ws: bool, host: str, port: int, n: int, login: tuple[str, str, str, str]) -> float:
        k = len(self.pipes)
        shares = [n // k + (1 if i < n % k else 0) for i in range(k)]
        return float(max(await self.call("open", [(ws, host, port, s, login) for s in shares])))

    async def wait_all(self, want: int, deadline: float) -> float:
        """Until every listener has ``want`` notifications; the workers' CPU seconds so far."""
        while True:
            st = await self.call("stats")
            if any(lost for _mn, _sum, lost, _cpu in st):
                raise RuntimeError("a listener's connection closed")
            if min(mn for mn, _s, _l, _c in st) >= want:
                return float(sum(cpu for *_x, cpu in st))
            if time.monotonic() > deadline:
                raise RuntimeError(f"not every listener received {want} notifications in time")
            await asyncio.sleep(0.005)

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("exit", None))
            except OSError:
                pass
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.kill()


def _cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (0 without one)."""
    if not pid:
        return 0.0
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(clients: Clients, sender: Any, n: int, args: argparse.Namespace,
                  pid: int | None = None) -> dict[str, float]:
    await clients.call("reset")
    for _ in range(args.latency):
        await sender.execute("select pg_notify('fan', 'L' || $1)", repr(time.time()))
        await asyncio.sleep(args.interval)  # load shape: one NOTIFY per interval
    await clients.wait_all(args.latency, time.monotonic() + 120)
    lat = sorted(x for part in await clients.call("lat") for x in part)
    assert len(lat) == args.latency * n, (len(lat), args.latency * n)
    await clients.call("reset")
    cpu0 = sum(s[3] for s in await clients.call("stats"))
    t0 = time.perf_counter()
    g0 = _cpu(pid)
    await sender.execute(f"select pg_notify('fan', 'B' || i) from generate_series(1, {args.burst}) i")
    cpu1 = await clients.wait_all(args.burst, time.monotonic() + 300)
    dt = time.perf_counter() - t0
    out = {"p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
           "deliveries_per_s": args.burst * n / dt, "client_cores": (cpu1 - cpu0) / dt}
    if pid:  # the gateway's own CPU per delivery, whatever the bench clients cost
        out["gw_cpu_us_per_delivery"] = (_cpu(pid) - g0) * 1e6 / (args.burst * n)
    return out


async def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    import asyncpg

    from .env import BENCH_DB, BENCH_PASSWORD, BENCH_USER, BenchCluster, Gateway

    n = args.listeners
    cluster = BenchCluster(max_connections=n + 50)
    gw = Gateway(cluster, auth_type="password", pool_size=2,
                 max_client_conn=n + 100, extra={"listen_queue_bytes": 16 << 20})
    clients = Clients(args.procs)
    results: dict[str, dict[str, list[float]]] = {}
    login = (BENCH_USER, BENCH_PASSWORD, BENCH_DB, "fan")
    try:
        Gateway._probed = True  # (its probe runs asyncio.run: not from inside this loop)
        gw.start()
        sender = await asyncpg.connect(**cluster.conn_kwargs())
        gpid = gw.proc.pid if gw.proc is not None else None
        configs: list[tuple[str, bool, int, int | None]] = [("direct", False, cluster.port, None),
                                                            ("gw-ws", True, gw.port, gpid)]
        if args.tcp:
            configs.append(("gw-tcp", False, gw.pg_port, gpid))
        for name, ws, port, pid in configs:
            secs = await clients.open(ws, "127.0.0.1", port, n, login)
            print(f"{name}: {n} listeners in {args.procs} processes ready in {secs:.1f}s", file=sys.stderr)
            try:
                for r in range(args.rounds):
                    res = await measure(clients, sender, n, args, pid)
                    for k, v in res.items():
                        results.setdefault(name, {}).setdefault(k, []).append(v)
                    print(f"  round {r + 1}: " + ", ".join(f"{k} {v:,.2f}" for k, v in res.items()),
                          file=sys.stderr)
            finally:
                await clients.call("close")
            if name == "direct":
                cluster.wait_backends_gone(60)
        await sender.close()
    finally:
        clients.stop()
        gw.stop()
        cluster.close()
    return results


def report(results: dict[str, dict[str, list[float]]], n: int) -> None:
    base = results.get("direct", {})
    print(f"{n} listeners on one channel; median of rounds, (min..max), ratio to direct in this run")
    print(f"{'config':<8} {'metric':<24} {'median':>12} {'min..max':>24} {'vs direct':>10}")
    for name, metrics in results.items():
        for k, vals in metrics.items():
            med = statistics.median(vals)
            ref = statistics.median(base[k]) if k in base and name != "direct" else None
            ratio = f"{med / ref:.2f}x" if ref else ""
            print(f"{name:<8} {k:<24} {med:>12,.2f} {f'{min(vals):,.2f}..{max(vals):,.2f}':>24} {ratio:>10}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench listen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listeners", type=int, default=1000, help="listeners of each configuration")
    ap.add_argument("--procs", type=int, default=4, help="client worker processes holding them")
    ap.add_argument("--latency", type=int, default=50, help="NOTIFYs for the latency measurement")
    ap.add_argument("--interval", type=float, default=0.05, help="seconds between those NOTIFYs")
    ap.add_argument("--burst", type=int, default=200, help="NOTIFYs in the throughput burst")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tcp", action="store_true", help="also the gateway's pg_listen (gw-tcp)")
    args = ap.parse_args(argv)
    report(asyncio.run(run(args)), args.listeners)
    return 0
