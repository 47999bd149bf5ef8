"""``Connection.prepare()`` statements are closed on the server once dropped, as in asyncpg."""

from __future__ import annotations

import gc
from typing import Any, Awaitable, Callable

import asyncpg

import driver


async def _server_statements(conn: Any) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM pg_prepared_statements"))


async def _drop_prepared(conn: Any) -> tuple[int, int]:
    """(new server statements while 30 are held, after 29 of them are dropped)."""
    base = await _server_statements(conn)
    held = [await conn.prepare(f"SELECT {i}::int") for i in range(30)]
    while_held = await _server_statements(conn) - base
    keep = held[7]
    del held
    gc.collect()
    await conn.fetchval("SELECT 1")  # the Closes go out with the next request
    after = await _server_statements(conn) - base
    assert await keep.fetchval() == 7  # a statement still referenced keeps working
    return while_held, after


async def test_dropped_prepared_statements_are_closed_like_asyncpg(
        admin_dsn: str, connect: Callable[..., Awaitable[driver.Connection]]) -> None:
    ours = await connect()
    theirs = await asyncpg.connect(admin_dsn)
    try:
        want = await _drop_prepared(theirs)
        got = await _drop_prepared(ours)
    finally:
        await theirs.close()
    assert want == (30, 2)  # asyncpg: the referenced one and the cached "SELECT 1" are left
    assert got == want


async def test_cursor_keeps_its_statement_alive(conn: driver.Connection) -> None:
    async with conn.transaction():
        cur = await (await conn.prepare("SELECT g FROM generate_series(1, 10) g")).cursor()
        gc.collect()
        await conn.fetchval("SELECT 1")
        assert [r[0] for r in await cur.fetch(3)] == [1, 2, 3]
        it = (await conn.prepare("SELECT g FROM generate_series(1, 5) g")).cursor(prefetch=2)
        gc.collect()
        await conn.fetchval("SELECT 1")
        assert [r[0] async for r in it] == [1, 2, 3, 4, 5]
