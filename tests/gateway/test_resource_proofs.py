"""Resource proofs of issue 11 against a real gateway process and real PostgreSQL.

* memory: 200 unauthenticated connections each trying to send 15 MiB (half
  pg_listen, half WebSocket; bench/preauth_memory.py's attackers) keep the
  gateway's RSS growth under 50 MB while a normal client keeps being served
  (its latency figures are bench/preauth_memory.py's business);
* fds: 2,000 slow HTTP connections against a gateway whose RLIMIT_NOFILE is
  1,024 do not stop new pg_listen, WebSocket and /healthz clients.

The gateway runs in a child process (tests/gatewayproc.py) so that its RSS and
its file-descriptor limit are its own.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import asyncpg
import pytest

import driver
from bench.preauth_memory import AttackStats, attack, rss_peak
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gatewayproc import GatewayProcess
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(240)

MB = 1 << 20


async def _eventually(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def _served(what: str, fn: Callable[[], Awaitable[Any]], failures: list[str], timeout: float = 5.0) -> None:
    try:
        await asyncio.wait_for(fn(), timeout)
    except Exception as e:  # noqa: BLE001 - every way of not being served is a failure
        failures.append(f"{what}: {e!r}")


async def _pg_client(gw: GatewayProcess) -> None:
    conn = await asyncpg.connect(gw.pg_dsn("alice", ALICE_PASSWORD), statement_cache_size=0)
    try:
        assert await conn.fetchval("select 40 + 2") == 42
    finally:
        await conn.close()


async def _ws_client(gw: GatewayProcess) -> None:
    conn = await driver.connect(gw.ws_dsn("alice", ALICE_PASSWORD))
    try:
        assert await conn.fetchval("select 40 + 2") == 42
    finally:
        await conn.close()


async def _healthz(gw: GatewayProcess) -> None:
    r, w = await asyncio.open_connection(gw.host, gw.http_port)
    try:
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = await r.read()
        assert data.startswith(b"HTTP/1.1 200"), data[:100]
    finally:
        w.close()


async def test_unauthenticated_clients_sending_15mib_keep_rss_bounded(pg: PgCluster) -> None:
    with GatewayProcess(pg) as gw:
        assert gw.pg_port is not None
        conn = await asyncpg.connect(gw.pg_dsn("alice", ALICE_PASSWORD), statement_cache_size=0)
        assert await conn.fetchval("select 1") == 1  # a pooled server and a logged-in client: the steady state
        before = gw.rss()
        stop = asyncio.Event()
        peak_task = asyncio.create_task(rss_peak(gw.proc.pid, stop))
        atk = asyncio.create_task(attack(gw.host, gw.pg_port, gw.http_port, clients=200, user="alice",
                                         database="app", stop=stop))
        failures: list[str] = []
        queries = logins = 0
        try:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                await _served("select 1 on a logged-in connection", lambda: conn.fetchval("select 1"), failures)
                queries += 1
                if queries % 20 == 0:
                    await _served("new pg_listen client", lambda: _pg_client(gw), failures)
                    logins += 1
        finally:
            stop.set()
            peak = await peak_task
            st: AttackStats = await atk
            await conn.close()
        assert gw.alive(), gw.log_tail()
        print(f"RSS before {before / MB:.1f} MB, peak {peak / MB:.1f} MB; attackers: {st.connections} connections, "
              f"{st.bytes_sent / MB:.1f} MB accepted, {st.closed_by_gateway} closed by the gateway; "
              f"normal client: {queries} queries, {logins} logins")
        assert st.connections >= 200, "the attack did not run"
        assert not failures, failures[:5]
        assert queries >= 20 and logins >= 1
        assert peak - before < 50 * MB, f"RSS grew by {(peak - before) / MB:.1f} MB (limit 50 MB)"
        assert not gw.tracebacks(), gw.tracebacks()[0]


async def _slow_http(host: str, port: int, stop: asyncio.Event, st: dict[str, int]) -> None:
    """One slow HTTP client: a request head, one header line every second, never finished."""
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    except (OSError, asyncio.TimeoutError):
        st["connect_failed"] += 1
        return
    st["opened"] += 1
    try:
        w.write(b"POST /sql HTTP/1.1\r\nHost: x\r\n")
        i = 0
        while not stop.is_set():
            await asyncio.sleep(1.0)  # the slowness itself (this client's pace), not synchronisation
            if r.at_eof():
                st["closed_by_gateway"] += 1
                return
            w.write(f"x-slow-{i}: y\r\n".encode())
            await w.drain()
            i += 1
    except (OSError, ConnectionError):
        st["closed_by_gateway"] += 1
    finally:
        w.close()


async def test_slow_http_connections_under_fd_limit_do_not_stop_new_clients(pg: PgCluster) -> None:
    with GatewayProcess(pg, nofile=1024) as gw:
        assert gw.pg_port is not None
        stop = asyncio.Event()
        st = {"opened": 0, "connect_failed": 0, "closed_by_gateway": 0}
        sem = asyncio.Semaphore(200)

        async def one() -> None:
            async with sem:  # open them 200 at a time; each stays open (and slow) afterwards
                pass
            await _slow_http(gw.host, gw.http_port, stop, st)

        slow = [asyncio.create_task(one()) for _ in range(2000)]
        failures: list[str] = []
        rounds = 0
        try:
            await _eventually(lambda: st["opened"] + st["connect_failed"] >= 2000, 60, "2,000 slow connections")
            for _ in range(5):
                await _served("new pg_listen client", lambda: _pg_client(gw), failures)
                await _served("new WebSocket client", lambda: _ws_client(gw), failures)
                await _served("GET /healthz", lambda: _healthz(gw), failures)
                rounds += 1
            still_open = st["opened"] - st["closed_by_gateway"]
        finally:
            stop.set()
            await asyncio.gather(*slow, return_exceptions=True)
        print(f"slow HTTP clients: {st}; still open during the checks: ~{still_open}; gateway fds now {gw.num_fds()}")
        assert gw.alive(), gw.log_tail()
        assert st["opened"] >= 1024, f"the attack did not exceed the fd limit: {st}"
        assert not failures, failures[:6]
        assert rounds == 5


async def test_websocket_session_ending_inside_a_large_frame_disconnects_at_once(gateway_app: Any) -> None:
    """Found by the memory proof: a session that ended (here: FATAL on an
    oversized auth message) while its client was inside a 15 MiB frame used to
    keep reading that frame for WS_CLOSE_TIMEOUT, waiting for a close frame
    that cannot come before the frame's end."""
    import base64
    import os

    from bench.preauth_memory import BIG, _ws_frame_header
    from driver.protocol import messages as m
    from gateway.http import WS_CLOSE_TIMEOUT

    app = await gateway_app()
    r, w = await asyncio.open_connection(app.http_host, app.http_port)
    key = base64.b64encode(os.urandom(16)).decode()
    w.write(f"GET /v2 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    startup = m.startup_message({"user": "alice", "database": "app"})
    w.write(_ws_frame_header(len(startup) + 5 + BIG) + startup + b"p" + (BIG + 4).to_bytes(4, "big")
            + b"\x00" * 65536)
    t0 = time.monotonic()
    reply = await asyncio.wait_for(r.read(), WS_CLOSE_TIMEOUT + 5)  # until the gateway closes TCP
    elapsed = time.monotonic() - t0
    w.close()
    assert b"C08P01" in reply and b"exceeds the limit" in reply
    assert reply.endswith(b"\x88\x02\x03\xe8")  # close frame 1000 after the FATAL
    assert elapsed < WS_CLOSE_TIMEOUT, f"disconnected after {elapsed:.1f} s (the close timeout is {WS_CLOSE_TIMEOUT} s)"
