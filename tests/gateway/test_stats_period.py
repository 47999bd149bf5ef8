"""SHOW STATS: bytes counted, avg_* over stats_period (gateway/stats_period.py)."""

from __future__ import annotations

import asyncio

import asyncpg
import psycopg

from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import eventually


async def show_stats(port: int) -> dict[str, object]:
    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, dbname="pgbouncer",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as conn:
        cur = await conn.execute("SHOW STATS")
        assert cur.description is not None
        names = [d.name for d in cur.description]
        rows = await cur.fetchall()
    return next(dict(zip(names, r)) for r in rows if r[0] == "app")


async def test_stats_bytes_and_period_averages(gateway_app):
    app = await gateway_app(admin_users=["alice"], stats_period=1.0)
    port = app.pg_port
    conn = await asyncpg.connect(host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD,
                                 database="app", ssl=False, statement_cache_size=0)
    payload = "x" * 5000
    stop = asyncio.Event()

    async def load() -> int:
        n = 0
        while not stop.is_set():
            async with conn.transaction():
                assert await conn.fetchval("SELECT length($1::text)", payload) == 5000
            n += 1
            await asyncio.sleep(0.005)
        return n
    task = asyncio.ensure_future(load())
    busy: dict[str, object] = {}

    async def averaged() -> bool:
        busy.update(await show_stats(port))
        return int(busy["avg_query_count"]) > 0 and int(busy["avg_recv"]) > 0  # type: ignore[call-overload]
    await eventually(averaged, timeout=15, what="a stats period with traffic")
    stop.set()
    n = await task
    # bytes: every transaction carries the 5000-byte parameter to the server
    assert int(busy["total_received"]) >= 5000 * int(busy["total_xact_count"])  # type: ignore[call-overload]
    assert int(busy["total_sent"]) > 0  # type: ignore[call-overload]
    # per second over the last period: bounded by what was sent in all
    assert int(busy["avg_recv"]) >= 5000 and int(busy["avg_xact_count"]) >= 1  # type: ignore[call-overload]
    assert int(busy["avg_xact_time"]) > 0  # type: ignore[call-overload]
    totals = await show_stats(port)
    assert int(totals["total_xact_count"]) >= n  # type: ignore[call-overload]

    # an idle period: the averages drop to 0 (a lifetime average would not)
    async def idle() -> bool:
        s = await show_stats(port)
        return int(s["avg_query_count"]) == 0 and int(s["avg_recv"]) == 0  # type: ignore[call-overload]
    await eventually(idle, timeout=15, what="a stats period without traffic")
    await conn.close()
