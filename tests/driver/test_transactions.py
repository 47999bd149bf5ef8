"""Transactions and savepoints (Connection.transaction) against a real PostgreSQL."""

from __future__ import annotations

from typing import Awaitable, Callable

import pytest

import driver
from driver import exceptions as exc

Connect = Callable[..., Awaitable[driver.Connection]]


async def count(conn: driver.Connection) -> int:
    n = await conn.fetchval("SELECT count(*) FROM tx")
    assert isinstance(n, int)
    return n


@pytest.fixture
async def tconn(conn: driver.Connection) -> driver.Connection:
    await conn.execute("CREATE TABLE tx (a int PRIMARY KEY)")
    return conn


async def test_commit(tconn: driver.Connection, connect: Connect) -> None:
    other = await connect()
    async with tconn.transaction():
        assert tconn.is_in_transaction()
        await tconn.execute("INSERT INTO tx VALUES (1)")
        assert await count(other) == 0  # not visible before COMMIT
    assert not tconn.is_in_transaction()
    assert await count(other) == 1


async def test_rollback_on_exception(tconn: driver.Connection) -> None:
    with pytest.raises(ZeroDivisionError):
        async with tconn.transaction():
            await tconn.execute("INSERT INTO tx VALUES (1)")
            1 / 0
    assert not tconn.is_in_transaction()
    assert await count(tconn) == 0


async def test_rollback_after_server_error(tconn: driver.Connection) -> None:
    with pytest.raises(exc.UniqueViolationError):
        async with tconn.transaction():
            await tconn.execute("INSERT INTO tx VALUES (1)")
            await tconn.execute("INSERT INTO tx VALUES (1)")
    assert not tconn.is_in_transaction()
    assert await count(tconn) == 0


async def test_failed_transaction_state(tconn: driver.Connection) -> None:
    tr = tconn.transaction()
    await tr.start()
    with pytest.raises(exc.DivisionByZeroError):
        await tconn.execute("SELECT 1/0")
    with pytest.raises(exc.InFailedSQLTransactionError):
        await tconn.execute("SELECT 1")
    assert tconn.is_in_transaction()
    await tr.rollback()
    assert not tconn.is_in_transaction()


async def test_manual_start_commit_rollback(tconn: driver.Connection) -> None:
    tr = tconn.transaction()
    await tr.start()
    await tconn.execute("INSERT INTO tx VALUES (1)")
    await tr.commit()
    tr2 = tconn.transaction()
    await tr2.start()
    await tconn.execute("INSERT INTO tx VALUES (2)")
    await tr2.rollback()
    assert await count(tconn) == 1
    with pytest.raises(exc.InterfaceError, match="already committed"):
        await tr.commit()
    with pytest.raises(exc.InterfaceError, match="already rolled back"):
        await tr2.rollback()
    with pytest.raises(exc.InterfaceError, match="not yet started"):
        await tconn.transaction().commit()


async def test_savepoints(tconn: driver.Connection) -> None:
    async with tconn.transaction():
        await tconn.execute("INSERT INTO tx VALUES (1)")
        with pytest.raises(exc.UniqueViolationError):
            async with tconn.transaction():  # SAVEPOINT
                await tconn.execute("INSERT INTO tx VALUES (2)")
                await tconn.execute("INSERT INTO tx VALUES (1)")
        # Rolled back to the savepoint: the outer transaction is usable.
        assert await count(tconn) == 1
        async with tconn.transaction():
            await tconn.execute("INSERT INTO tx VALUES (3)")
            async with tconn.transaction():
                await tconn.execute("INSERT INTO tx VALUES (4)")
    assert [r[0] for r in await tconn.fetch("SELECT a FROM tx ORDER BY a")] == [1, 3, 4]


async def test_nested_manual_rollback(tconn: driver.Connection) -> None:
    outer = tconn.transaction()
    await outer.start()
    await tconn.execute("INSERT INTO tx VALUES (1)")
    inner = tconn.transaction()
    await inner.start()
    await tconn.execute("INSERT INTO tx VALUES (2)")
    await inner.rollback()
    await outer.commit()
    assert await count(tconn) == 1


@pytest.mark.parametrize("isolation,expected", [
    (None, "read committed"),
    ("read_committed", "read committed"),
    ("repeatable_read", "repeatable read"),
    ("serializable", "serializable"),
    ("read_uncommitted", "read uncommitted"),
])
async def test_isolation_levels(conn: driver.Connection, isolation: str | None, expected: str) -> None:
    async with conn.transaction(isolation=isolation):
        assert await conn.fetchval("SHOW transaction_isolation") == expected


async def test_readonly_and_deferrable(tconn: driver.Connection) -> None:
    async with tconn.transaction(readonly=True):
        assert await tconn.fetchval("SHOW transaction_read_only") == "on"
        with pytest.raises(exc.ReadOnlySQLTransactionError):
            await tconn.execute("INSERT INTO tx VALUES (1)")
        # the error aborted the transaction; the context manager rolls back
        with pytest.raises(exc.InFailedSQLTransactionError):
            await tconn.execute("SELECT 1")
    async with tconn.transaction(isolation="serializable", readonly=True, deferrable=True):
        assert await tconn.fetchval("SHOW transaction_deferrable") == "on"


async def test_repeatable_read_snapshot(tconn: driver.Connection, connect: Connect) -> None:
    other = await connect()
    async with tconn.transaction(isolation="repeatable_read"):
        assert await count(tconn) == 0
        await other.execute("INSERT INTO tx VALUES (1)")
        assert await count(tconn) == 0  # same snapshot
    assert await count(tconn) == 1


async def test_nested_isolation_mismatch(conn: driver.Connection) -> None:
    async with conn.transaction(isolation="serializable"):
        with pytest.raises(exc.InterfaceError, match="isolation"):
            async with conn.transaction(isolation="read_committed"):
                pass


async def test_transaction_in_manual_transaction_refused(conn: driver.Connection) -> None:
    await conn.execute("BEGIN")
    with pytest.raises(exc.InterfaceError, match="manually started"):
        async with conn.transaction():
            pass
    await conn.execute("ROLLBACK")


async def test_invalid_isolation(conn: driver.Connection) -> None:
    with pytest.raises(ValueError):
        conn.transaction(isolation="chaotic")


async def test_manual_commit_inside_context_refused(conn: driver.Connection) -> None:
    async with conn.transaction() as tr:
        with pytest.raises(exc.InterfaceError):
            await tr.commit()
