"""Memory before login (issue 11 F1): unauthenticated clients each trying to send 15 MiB.

``python -m bench.preauth_memory [--clients 200] [--seconds 10] [--repeat 3]``

Starts a private PostgreSQL and ``wirepool serve``, then ``--repeat`` times:

* ``baseline`` -- a normal client alone;
* ``attack``   -- plus ``--clients`` unauthenticated connections (from a
  separate process, so they do not slow the measuring client's loop), half on
  pg_listen (StartupMessage, then a PasswordMessage announcing 15 MiB and its
  bytes as fast as the gateway takes them), half on WebSocket (upgrade, then one
  15 MiB binary frame carrying the same).  An attacker whose connection is
  closed connects again a second later, for the whole run.

The normal client runs ``select 1`` back to back on one pg_listen connection
and opens a fresh connection every 0.5 s.  Printed: its p50/p99/max (median
and spread over the repeats), the gateway's RSS before / peak / after each
run, the gateway's CPU use during the run (% of one core), the bytes the
attackers got in, and the load average.  Target: RSS growth < 50 MB and the
normal client's p99 < 50 ms.

The attackers (:func:`attack`) are shared with
tests/gateway/test_resource_proofs.py, which asserts service and RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from driver.protocol import messages as m

BIG = 15 << 20
CHUNK = 64 << 10
RETRY_SECONDS = 1.0


@dataclass
class AttackStats:
    connections: int = 0
    bytes_sent: int = 0
    closed_by_gateway: int = 0
    errors: list[str] = field(default_factory=list)


async def _drain(writer: asyncio.StreamWriter, data: bytes, stop: asyncio.Event) -> bool:
    """Write ``data``; False when the gateway closed.  While it does not read
    (paused, or just holding the connection) keep trying until ``stop``."""
    writer.write(data)
    while not stop.is_set():
        try:
            await asyncio.wait_for(writer.drain(), 0.5)
            return True
        except asyncio.TimeoutError:
            continue
        except (ConnectionError, OSError):
            return False
    return True


def _ws_frame_header(n: int) -> bytes:
    return bytes([0x82, 0xFF]) + n.to_bytes(8, "big") + b"\x00\x00\x00\x00"  # zero mask key: payload as is


async def _one_attacker(host: str, port: int, kind: str, user: str, database: str, stop: asyncio.Event,
                        st: AttackStats) -> None:
    startup = m.startup_message({"user": user, "database": database})
    big_header = b"p" + (BIG + 4).to_bytes(4, "big")
    zeros = b"\x00" * CHUNK
    while not stop.is_set():
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
        except (OSError, asyncio.TimeoutError) as e:
            st.errors.append(f"connect: {e!r}")
            await asyncio.sleep(0.1)  # back off a failed connect (the listen backlog is full)
            continue
        st.connections += 1
        try:
            if kind == "ws":
                key = base64.b64encode(os.urandom(16)).decode()
                writer.write(f"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                             f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
                if not head.startswith(b"HTTP/1.1 101"):
                    st.closed_by_gateway += 1
                    continue
                first = _ws_frame_header(len(startup) + 5 + BIG) + startup + big_header
            else:
                first = startup + big_header
            ok = await _drain(writer, first, stop)
            sent = 0
            while ok and sent < BIG and not stop.is_set():
                ok = await _drain(writer, zeros, stop)
                if ok:
                    sent += CHUNK
                    st.bytes_sent += CHUNK
            if not ok:
                st.closed_by_gateway += 1
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            st.closed_by_gateway += 1
        finally:
            writer.close()
        try:  # closed by the gateway: try again a little later (each attacker is one connection at a time)
            await asyncio.wait_for(stop.wait(), RETRY_SECONDS)
        except asyncio.TimeoutError:
            pass


async def attack(host: str, pg_port: int, http_port: int, *, clients: int, user: str, database: str,
                 stop: asyncio.Event) -> AttackStats:
    """Run ``clients`` attackers (half pg_listen, half WebSocket) until ``stop`` is set."""
    st = AttackStats()
    tasks = [asyncio.create_task(_one_attacker(host, pg_port if i % 2 == 0 else http_port,
                                               "pg" if i % 2 == 0 else "ws", user, database, stop, st))
             for i in range(clients)]
    await asyncio.gather(*tasks)
    return st


async def rss_peak(pid: int, stop: asyncio.Event, interval: float = 0.05) -> int:
    p = psutil.Process(pid)
    peak = 0
    while not stop.is_set():
        peak = max(peak, p.memory_info().rss)
        await asyncio.sleep(interval)
    return max(peak, p.memory_info().rss)


async def normal_client(kw: dict[str, Any], seconds: float) -> dict[str, float]:
    import asyncpg

    conn = await asyncpg.connect(**kw, statement_cache_size=0)
    lat: list[float] = []
    logins: list[float] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    next_login = loop.time()
    try:
        while loop.time() < end:
            t0 = time.perf_counter()
            assert await conn.fetchval("select 1") == 1
            lat.append(time.perf_counter() - t0)
            if loop.time() >= next_login:
                next_login = loop.time() + 0.5
                t0 = time.perf_counter()
                c2 = await asyncpg.connect(**kw, statement_cache_size=0)
                await c2.close()
                logins.append(time.perf_counter() - t0)
            await asyncio.sleep(0)
    finally:
        await conn.close()
    lat.sort()
    return {"n": len(lat), "p50_ms": 1000 * lat[len(lat) // 2], "p99_ms": 1000 * lat[int(len(lat) * 0.99)],
            "max_ms": 1000 * lat[-1], "login_p50_ms": 1000 * statistics.median(logins)}


async def one_run(gw: Any, clients: int, seconds: float) -> dict[str, float]:
    from .env import BENCH_DB, BENCH_USER

    assert gw.proc is not None
    pid = gw.proc.pid
    before = psutil.Process(pid).memory_info().rss
    stop = asyncio.Event()
    peak_task = asyncio.create_task(rss_peak(pid, stop))
    proc = None
    if clients:
        # The attackers run in their own process: in this one, 200 connections
        # writing 64 KiB chunks would delay the measuring client's own event loop
        # and be counted as the gateway's latency.
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.preauth_memory", "--attack-worker", gw.host, str(gw.pg_port),
            str(gw.port), str(clients), str(seconds + 1.0), BENCH_USER, BENCH_DB,
            stdout=asyncio.subprocess.PIPE)
        await asyncio.sleep(1.0)  # let the attackers connect before measuring (warm-up, not synchronisation)
    ps = psutil.Process(pid)
    cpu0 = ps.cpu_times()
    t0 = time.monotonic()
    try:
        res = await normal_client(gw.tcp_kwargs(), seconds)
    finally:
        stop.set()
    cpu1 = ps.cpu_times()
    peak = await peak_task
    sent_mb = conns = 0.0
    if proc is not None:
        out, _ = await proc.communicate()
        words = out.decode().split()
        sent_mb, conns = float(words[-2]), float(words[-1])
    res.update(rss_before_mb=before / 2**20, rss_peak_mb=peak / 2**20,
               rss_growth_mb=(peak - before) / 2**20, attack_mb=sent_mb, attack_conns=conns,
               gw_cpu_pct=100 * (cpu1.user + cpu1.system - cpu0.user - cpu0.system) / (time.monotonic() - t0))
    return res


async def _attack_for(host: str, pg_port: int, http_port: int, clients: int, seconds: float,
                      user: str, database: str) -> AttackStats:
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(seconds, stop.set)
    return await attack(host, pg_port, http_port, clients=clients, user=user, database=database, stop=stop)


def _spread(values: list[float]) -> str:
    med = statistics.median(values)
    return f"{med:7.2f} ({min(values):.2f}-{max(values):.2f})"


def main(argv: list[str] | None = None) -> int:
    from .env import BenchCluster, Gateway

    ap = argparse.ArgumentParser(prog="python -m bench.preauth_memory", description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=200, help="unauthenticated attackers (default 200)")
    ap.add_argument("--seconds", type=float, default=10.0, help="duration of each run (default 10)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per configuration (default 3)")
    ap.add_argument("--attack-worker", nargs=7, help=argparse.SUPPRESS,
                    metavar=("HOST", "PG_PORT", "HTTP_PORT", "CLIENTS", "SECONDS", "USER", "DATABASE"))
    a = ap.parse_args(argv)
    if a.attack_worker:
        host, pg_port, http_port, n, secs, user, db = a.attack_worker
        st = asyncio.run(_attack_for(host, int(pg_port), int(http_port), int(n), float(secs), user, db))
        print(f"attack {st.bytes_sent / 2**20:.1f} {st.connections}")
        return 0
    load0 = os.getloadavg()
    cluster = BenchCluster()
    rows: dict[str, list[dict[str, float]]] = {}
    try:
        gw = Gateway(cluster)
        gw.start()
        try:
            for _ in range(a.repeat):
                for name, n in (("baseline", 0), ("attack", a.clients)):
                    rows.setdefault(name, []).append(asyncio.run(one_run(gw, n, a.seconds)))
        finally:
            gw.stop()
    finally:
        cluster.close()
    load1 = os.getloadavg()
    print(f"normal client (select 1 on pg_listen) beside {a.clients} unauthenticated clients each sending "
          f"15 MiB (from another process); {a.repeat} runs of {a.seconds:g}s; median (min-max); "
          f"load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end ({os.cpu_count()} cores):")
    cols = ("p50_ms", "p99_ms", "max_ms", "login_p50_ms", "rss_before_mb", "rss_peak_mb", "rss_growth_mb",
            "attack_mb", "attack_conns", "gw_cpu_pct")
    print(f"{'config':10}" + "".join(f"{c:>22}" for c in cols))
    for name, rs in rows.items():
        print(f"{name:10}" + "".join(f"{_spread([r[c] for r in rs]):>22}" for c in cols))
    base = statistics.median(r["p99_ms"] for r in rows["baseline"])
    p99 = statistics.median(r["p99_ms"] for r in rows["attack"])
    growth = statistics.median(r["rss_growth_mb"] for r in rows["attack"])
    print(f"attack: p99 {p99:.2f} ms = {p99 / base:.2f}x baseline; target < 50 ms: {'met' if p99 < 50 else 'NOT met'}; "
          f"RSS growth {growth:.1f} MB, target < 50 MB: {'met' if growth < 50 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
