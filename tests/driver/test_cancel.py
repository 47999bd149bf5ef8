"""Timeouts cancel the query on the server (CancelRequest) and keep the connection usable."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

import pytest

import driver
from driver import exceptions as exc

Connect = Callable[..., Awaitable[driver.Connection]]


async def backend_state(other: driver.Connection, pid: int) -> tuple[str, str]:
    row = await other.fetchrow("SELECT state, query FROM pg_stat_activity WHERE pid = $1", pid)
    assert row is not None
    return row["state"], row["query"]


async def test_timeout_cancels_on_server(conn: driver.Connection, connect: Connect) -> None:
    other = await connect()
    t0 = time.monotonic()
    with pytest.raises(asyncio.TimeoutError):
        await conn.fetchval("SELECT pg_sleep(30)", timeout=0.3)
    assert time.monotonic() - t0 < 10
    # The server is no longer running the query, and the connection works.
    state, query = await backend_state(other, conn.get_server_pid())
    assert state == "idle" and "pg_sleep(30)" in query
    assert await conn.fetchval("SELECT 1") == 1
    assert not conn.is_closed()


async def test_timeout_on_simple_execute(conn: driver.Connection) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await conn.execute("SELECT pg_sleep(30)", timeout=0.2)
    assert await conn.execute("SELECT 1") == "SELECT 1"


async def test_command_timeout(connect: Connect) -> None:
    c = await connect(command_timeout=0.3)
    with pytest.raises(asyncio.TimeoutError):
        await c.execute("SELECT pg_sleep(30)")
    # an explicit per-call timeout wins over command_timeout
    assert await c.fetchval("SELECT pg_sleep(0.5)::text", timeout=20) == ""


async def test_cancel_does_not_hit_the_next_query(conn: driver.Connection) -> None:
    for _ in range(3):
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("SELECT pg_sleep(30)", timeout=0.1)
        # The next query runs long enough for a late cancel to hit it.
        assert await conn.fetchval("SELECT pg_sleep(0.3)::text || 'done'") == "done"


async def test_timeout_inside_transaction(conn: driver.Connection) -> None:
    async with conn.transaction():
        await conn.execute("CREATE TABLE c1 (a int)")
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("INSERT INTO c1 SELECT 1 FROM pg_sleep(30)", timeout=0.2)
        assert conn.is_in_transaction()
        with pytest.raises(exc.InFailedSQLTransactionError):
            await conn.execute("SELECT 1")
        with pytest.raises(exc.InFailedSQLTransactionError):
            await conn.fetchval("SELECT $1::int", 1)
    # rolled back by the context manager
    assert await conn.fetchval("SELECT to_regclass('c1') IS NULL") is True


async def test_timeout_executemany_and_prepared(conn: driver.Connection) -> None:
    ps = await conn.prepare("SELECT pg_sleep($1)")
    with pytest.raises(asyncio.TimeoutError):
        await ps.fetchval(30.0, timeout=0.2)
    with pytest.raises(asyncio.TimeoutError):
        await conn.executemany("SELECT pg_sleep($1)", [(0.0,), (30.0,)], timeout=0.2)
    assert await ps.fetchval(0.0) is None  # void


async def test_task_cancellation_cancels_query(conn: driver.Connection, connect: Connect) -> None:
    other = await connect()
    task = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(30)"))
    pid = conn.get_server_pid()
    for _ in range(1000):
        state, query = await backend_state(other, pid)
        if state == "active" and "pg_sleep(30)" in query:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    t0 = time.monotonic()
    # The next operation waits for the server-side cancel to finish, then runs.
    assert await conn.fetchval("SELECT 7") == 7
    assert time.monotonic() - t0 < 10
    state, _ = await backend_state(other, pid)
    assert state == "idle"


async def test_wait_for_wrapper(conn: driver.Connection) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(conn.fetchval("SELECT pg_sleep(30)"), 0.2)
    assert await conn.fetchval("SELECT 8") == 8


async def test_statement_timeout_error_is_query_canceled(conn: driver.Connection) -> None:
    await conn.execute("SET statement_timeout = 100")
    with pytest.raises(exc.QueryCanceledError) as ei:
        await conn.execute("SELECT pg_sleep(30)")
    assert ei.value.sqlstate == "57014"
    await conn.execute("RESET statement_timeout")
    assert await conn.fetchval("SELECT 9") == 9
