"""``python -m bench listen``: LISTEN/NOTIFY fan-out through the gateway (issue 13).

Listeners are minimal protocol clients (login, ``LISTEN fan``, then only
read), so the client side costs little next to the gateway:

- ``direct``: ``--direct`` listeners connected straight to Postgres (the
  baseline: Postgres' own fan-out, one backend per listener);
- ``gw-<n>``: n listeners over the gateway's WebSocket (transaction mode,
  pool_size 2: the listeners hold no server; the gateway's one listener
  connection fans out), n = ``--direct`` and ``--listeners`` (default 1,000).

Per round and configuration:

- **latency**: ``--latency`` NOTIFYs, one every 10 ms, each payload carrying
  ``time.time()`` at send; every listener notes the receipt time: p50/p99 of
  (receipt - send) over all (listener, notification) pairs;
- **throughput**: ``--burst`` NOTIFYs in one statement; deliveries per second
  from the statement's start until every listener has all of them, and the
  gateway process's CPU time per delivery over that burst (the bench client
  shares the machine; this figure does not depend on it).

Prints median and spread (min..max) over ``--rounds`` rounds, and the ratio of
each gateway configuration's median to the direct one measured in the same run.
Sender: a direct connection to Postgres (the NOTIFY path is not what is measured).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from typing import Any

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader


class Listener:
    """Login + LISTEN over TCP (direct) or WebSocket (gateway); then counts notifications."""

    def __init__(self) -> None:
        self.lat: list[float] = []
        self.count = 0
        self.mr = MessageReader()
        self._send: Any = None
        self._recv: Any = None
        self._close: Any = None
        self.task: asyncio.Task[None] | None = None

    async def open_tcp(self, host: str, port: int) -> None:
        r, w = await asyncio.open_connection(host, port)

        async def send(b: bytes) -> None:
            w.write(b)
            await w.drain()

        self._send, self._recv, self._close = send, lambda: r.read(65536), w.close

    async def open_ws(self, url: str) -> None:
        import websockets

        # no client pings: a busy bench process would miss its own pong deadline and close listeners
        ws = await websockets.connect(url, max_size=None, compression=None, open_timeout=60, ping_interval=None)

        async def recv() -> bytes:
            try:
                data = await ws.recv()
            except websockets.ConnectionClosed:
                return b""
            return data if isinstance(data, bytes) else data.encode()

        self._send, self._recv = ws.send, recv
        self._close = lambda: asyncio.ensure_future(ws.close())

    async def _messages(self) -> list[tuple[int, bytes]]:
        while True:
            msgs = self.mr.read()
            if msgs:
                return msgs
            data = await self._recv()
            if not data:
                raise ConnectionError("closed")
            self.mr.feed(data)

    async def login(self, user: str, password: str, database: str, channel: str) -> None:
        await self._send(m.startup_message({"user": user, "database": database}))
        scram = None
        while True:
            for t, body in await self._messages():
                msg = m.decode_backend(t, body)
                if isinstance(msg, m.AuthenticationRequest):
                    if msg.code == m.AUTH_CLEARTEXT_PASSWORD:
                        await self._send(m.password_message(password))
                    elif msg.code == m.AUTH_SASL:
                        scram = pg_auth.ScramClient(user, password)
                        await self._send(m.sasl_initial_response(scram.mechanism, scram.client_first()))
                    elif msg.code == m.AUTH_SASL_CONTINUE and scram is not None:
                        await self._send(m.sasl_response(scram.handle_server_first(msg.data)))
                elif isinstance(msg, m.ErrorResponse):
                    raise RuntimeError(msg.message)
                elif isinstance(msg, m.ReadyForQuery):
                    if channel:
                        await self._send(m.query(f"LISTEN {channel}"))
                        channel = ""
                    else:
                        self.task = asyncio.ensure_future(self._read())
                        return

    async def _read(self) -> None:
        lat, mr = self.lat, self.mr
        try:
            while True:
                for t, body in mr.read():
                    if t == 65:  # NotificationResponse
                        now = time.time()
                        self.count += 1
                        payload = body[4:].split(b"\x00", 2)[1]
                        if payload[:1] == b"L":
                            lat.append(now - float(payload[1:]))
                data = await self._recv()
                if not data:
                    return
                mr.feed(data)
        except (ConnectionError, asyncio.CancelledError):
            return

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        try:
            self._close()
        except Exception:
            pass


async def _open_many(n: int, opener: Any, concurrency: int = 50) -> list[Listener]:
    sem = asyncio.Semaphore(concurrency)

    async def one() -> Listener:
        async with sem:
            ls = Listener()
            await opener(ls)
            return ls

    return list(await asyncio.gather(*(one() for _ in range(n))))


def _cpu(pid: int | None) -> float:
    """CPU seconds (user + system) of process ``pid`` so far (0 without one)."""
    if not pid:
        return 0.0
    import os

    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(listeners: list[Listener], sender: Any, latency_n: int, burst: int,
                  pid: int | None = None) -> dict[str, float]:
    for ls in listeners:
        ls.lat.clear()
        ls.count = 0
    for _ in range(latency_n):
        await sender.execute("select pg_notify('fan', 'L' || $1)", repr(time.time()))
        await asyncio.sleep(0.01)
    deadline = time.monotonic() + 60
    while any(ls.count < latency_n for ls in listeners):
        if any(ls.task is not None and ls.task.done() for ls in listeners):
            raise RuntimeError("a listener's connection closed")
        if time.monotonic() > deadline:
            raise RuntimeError("latency notifications not all received")
        await asyncio.sleep(0.005)
    lat = sorted(x for ls in listeners for x in ls.lat)
    for ls in listeners:
        ls.count = 0
    t0 = time.perf_counter()
    c0 = _cpu(pid)
    await sender.execute(f"select pg_notify('fan', 'B' || i) from generate_series(1, {burst}) i")
    while any(ls.count < burst for ls in listeners):
        if any(ls.task is not None and ls.task.done() for ls in listeners):
            raise RuntimeError("a listener's connection closed")
        if time.monotonic() > deadline + 120:
            raise RuntimeError("burst not all received")
        await asyncio.sleep(0.002)
    dt = time.perf_counter() - t0
    out = {"p50_ms": lat[len(lat) // 2] * 1000, "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000,
           "deliveries_per_s": burst * len(listeners) / dt}
    if pid:  # the gateway's own CPU per delivery, whatever the bench client costs
        out["gw_cpu_us_per_delivery"] = (_cpu(pid) - c0) * 1e6 / (burst * len(listeners))
    return out


async def run(args: argparse.Namespace) -> dict[str, dict[str, list[float]]]:
    import asyncpg

    from .env import BENCH_DB, BENCH_PASSWORD, BENCH_USER, BenchCluster, Gateway

    cluster = BenchCluster(max_connections=max(100, args.direct + 20))
    gw = Gateway(cluster, auth_type="password", pool_size=2,
                 max_client_conn=args.listeners + 100, extra={"listen_queue_bytes": 16 << 20})
    results: dict[str, dict[str, list[float]]] = {}
    try:
        Gateway._probed = True  # (its probe runs asyncio.run: not from inside this loop)
        gw.start()
        sender = await asyncpg.connect(**cluster.conn_kwargs())
        ws = f"ws://127.0.0.1:{gw.port}/v2"
        gpid = gw.proc.pid if gw.proc is not None else None
        configs: list[tuple[str, Any, int, int | None]] = [
            ("direct", lambda ls: _tcp(ls, cluster.host, cluster.port), args.direct, None),
            (f"gw-{args.direct}", lambda ls: _ws(ls, ws), args.direct, gpid),
            (f"gw-{args.listeners}", lambda ls: _ws(ls, ws), args.listeners, gpid),
        ]

        async def _tcp(ls: Listener, host: str, port: int) -> None:
            await ls.open_tcp(host, port)
            await ls.login(BENCH_USER, BENCH_PASSWORD, BENCH_DB, "fan")

        async def _ws(ls: Listener, url: str) -> None:
            await ls.open_ws(url)
            await ls.login(BENCH_USER, BENCH_PASSWORD, BENCH_DB, "fan")

        for name, opener, n, pid in configs:
            t0 = time.perf_counter()
            listeners = await _open_many(n, opener)
            print(f"{name}: {n} listeners ready in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
            try:
                for r in range(args.rounds):
                    res = await measure(listeners, sender, args.latency, args.burst, pid)
                    for k, v in res.items():
                        results.setdefault(name, {}).setdefault(k, []).append(v)
                    print(f"  round {r + 1}: " + ", ".join(f"{k} {v:,.1f}" for k, v in res.items()),
                          file=sys.stderr)
            finally:
                for ls in listeners:
                    ls.close()
        await sender.close()
    finally:
        gw.stop()
        cluster.close()
    return results


def report(results: dict[str, dict[str, list[float]]]) -> None:
    base = results.get("direct", {})
    print(f"{'config':<10} {'metric':<18} {'median':>12} {'min..max':>24} {'vs direct':>10}")
    for name, metrics in results.items():
        for k, vals in metrics.items():
            med = statistics.median(vals)
            ref = statistics.median(base[k]) if k in base else None
            ratio = f"{med / ref:.2f}x" if ref else ""
            print(f"{name:<10} {k:<18} {med:>12,.2f} {f'{min(vals):,.2f}..{max(vals):,.2f}':>24} {ratio:>10}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench listen", description=__doc__.split("\n\n")[0])
    ap.add_argument("--listeners", type=int, default=1000)
    ap.add_argument("--direct", type=int, default=50, help="listeners of the direct baseline (and gw-<n>)")
    ap.add_argument("--latency", type=int, default=100, help="NOTIFYs for the latency measurement")
    ap.add_argument("--burst", type=int, default=1000, help="NOTIFYs in the throughput burst")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    report(asyncio.run(run(args)))
    return 0
