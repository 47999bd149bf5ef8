"""A cached statement whose type was dropped and recreated: the server answers
``XX000 cache lookup failed for type N`` at every Bind of it.  The driver drops
its statement cache and, outside a transaction, prepares again and retries once
(asyncpg keeps the statement and fails until the cache is reset)."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

import driver
from driver import exceptions as exc

RECREATE = "DROP TYPE mood CASCADE; CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')"
QUERY = "SELECT $1::mood::text AS m, $2::int AS n"


@pytest.fixture
async def conns(admin_dsn: str) -> AsyncIterator[tuple[Any, Any]]:
    """(the connection under test with a cached statement naming ``mood``,
    another connection that drops and recreates the type)."""
    c = await driver.connect(admin_dsn)
    other = await driver.connect(admin_dsn)
    try:
        await c.execute("CREATE TYPE mood AS ENUM ('sad', 'ok')")
        assert tuple(await c.fetchrow(QUERY, "ok", 1)) == ("ok", 1)
        await other.execute(RECREATE)
        yield c, other
    finally:
        await c.close()
        await other.close()


async def test_retried_outside_a_transaction(conns: tuple[Any, Any]) -> None:
    c, _ = conns
    # 'happy' exists only in the new type: this ran against its new OID
    assert tuple(await c.fetchrow(QUERY, "happy", 2)) == ("happy", 2)
    assert await c.fetchval(QUERY, "sad", 3) == "sad"
    assert not c.is_in_transaction()


async def test_executemany_retried(conns: tuple[Any, Any]) -> None:
    c, _ = conns
    await c.executemany(QUERY, [("happy", 1), ("ok", 2)])
    assert await c.fetchval(QUERY, "happy", 3) == "happy"


async def test_in_a_transaction_raised_then_prepared_again(conns: tuple[Any, Any]) -> None:
    c, _ = conns
    tr = c.transaction()
    await tr.start()
    with pytest.raises(exc.InternalServerError) as info:
        await c.fetchrow(QUERY, "happy", 2)
    assert info.value.sqlstate == "XX000"
    assert info.value.message.startswith("cache lookup failed for type ")
    await tr.rollback()
    # the statement was dropped with the error: prepared against the new type now
    assert await c.fetchval(QUERY, "happy", 3) == "happy"
