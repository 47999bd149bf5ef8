"""driver.pool against the shared test cluster."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any, AsyncIterator

import pytest

import driver
from driver import exceptions as exc
from driver.pool import Pool, PoolConnectionProxy, create_pool
from driver.record import Record
from tests.pgcluster import PgCluster

_app_names = itertools.count(1)


@pytest.fixture
def app_name() -> str:
    """A unique application_name, to find a pool's connections in pg_stat_activity."""
    return f"wp_pool_{next(_app_names)}"


@pytest.fixture
def dsn(pg: PgCluster, pg_db: str, app_name: str) -> str:
    return pg.dsn(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD, pg_db) + f"?application_name={app_name}"


@pytest.fixture
async def admin(pg: PgCluster, pg_db: str) -> AsyncIterator[driver.Connection]:
    c = await driver.connect(pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD, pg_db))
    try:
        yield c
    finally:
        await c.close()


async def server_pids(admin: driver.Connection, app_name: str) -> set[int]:
    rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE application_name = $1", app_name)
    return {r[0] for r in rows}


async def wait_until(cond: Any, timeout: float = 10.0) -> None:
    """Poll an (async) condition that a timer or the server makes true."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


async def test_basic_lifecycle(dsn: str, admin: driver.Connection, app_name: str) -> None:
    async with create_pool(dsn, min_size=2, max_size=4) as pool:
        assert isinstance(pool, Pool)
        assert (pool.get_size(), pool.get_idle_size(), pool.get_min_size(), pool.get_max_size()) == (2, 2, 2, 4)
        assert len(await server_pids(admin, app_name)) == 2
        assert await pool.fetchval("SELECT 40 + $1::int", 2) == 42
        assert await pool.execute("SELECT 1") == "SELECT 1"
        row = await pool.fetchrow("SELECT 1 AS a, 'x' AS b")
        assert isinstance(row, Record) and row["b"] == "x"
        assert [r["n"] for r in await pool.fetch("SELECT generate_series(1, 3) AS n")] == [1, 2, 3]
        await pool.execute("CREATE TEMP TABLE t(x int)")  # vanishes: RESET/DISCARD is not needed for this
        await pool.executemany("SELECT $1::int", [(1,), (2,)])
        assert await pool.fetchval("SELECT 1, 2", column=1) == 2

        a = await pool.acquire()
        b = await pool.acquire()
        c = await pool.acquire()
        assert isinstance(a, PoolConnectionProxy)
        pids = {await x.fetchval("SELECT pg_backend_pid()") for x in (a, b, c)}
        assert len(pids) == 3 and pool.get_size() == 3 and pool.get_idle_size() == 0
        assert await server_pids(admin, app_name) >= pids
        for x in (a, b, c):
            await pool.release(x)
        assert pool.get_idle_size() == 3
    assert pool.is_closing()
    await wait_until(lambda: _empty(admin, app_name))


async def _empty(admin: driver.Connection, app_name: str) -> bool:
    return not await server_pids(admin, app_name)


async def test_await_form_and_proxy_after_release(dsn: str) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    try:
        con = await pool.acquire()
        assert await con.fetchval("SELECT 1") == 1
        await pool.release(con)
        with pytest.raises(exc.InterfaceError, match="released back to the pool"):
            await con.fetchval("SELECT 1")
        assert "released" in repr(con)
        await pool.release(con)  # a second release is a no-op
        async with pool.acquire() as con2:
            assert await con2.fetchval("SELECT 2") == 2
        with pytest.raises(exc.InterfaceError):
            con2.execute
        with pytest.raises(exc.InterfaceError, match="invalid connection"):
            await pool.release(object())
        other = await create_pool(dsn, min_size=0, max_size=1)
        try:
            foreign = await other.acquire()
            with pytest.raises(exc.InterfaceError, match="invalid connection"):
                await pool.release(foreign)
            await other.release(foreign)
        finally:
            await other.close()
    finally:
        await pool.close()


async def test_not_initialized_and_bad_arguments(dsn: str) -> None:
    pool = create_pool(dsn, min_size=0, max_size=1)
    with pytest.raises(exc.InterfaceError, match="not initialized"):
        await pool.acquire()
    await pool
    assert await pool.fetchval("SELECT 1") == 1
    await pool.close()
    with pytest.raises(exc.InterfaceError, match="closed"):
        await pool.acquire()
    for kwargs in ({"max_size": 0}, {"min_size": -1}, {"min_size": 3, "max_size": 2}, {"max_queries": 0},
                   {"max_inactive_connection_lifetime": -1}):
        with pytest.raises(ValueError):
            create_pool(dsn, **kwargs)  # type: ignore[arg-type]


async def test_bad_password_fails_creation(pg: PgCluster, pg_db: str, admin: driver.Connection,
                                           app_name: str) -> None:
    dsn = pg.dsn(PgCluster.SCRAM_USER, "wrong", pg_db) + f"?application_name={app_name}"
    with pytest.raises(exc.InvalidPasswordError):
        await create_pool(dsn, min_size=3, max_size=3)
    assert not await server_pids(admin, app_name)


async def test_acquire_timeout_and_fifo_waiters(dsn: str) -> None:
    async with create_pool(dsn, min_size=1, max_size=1) as pool:
        held = await pool.acquire()
        with pytest.raises(asyncio.TimeoutError):
            await pool.acquire(timeout=0.05)
        order: list[int] = []

        async def worker(i: int) -> None:
            async with pool.acquire() as con:
                order.append(i)
                await con.fetchval("SELECT $1::int", i)

        tasks = [asyncio.create_task(worker(i)) for i in range(4)]
        await wait_until(lambda: pool._waiting == 4)
        await pool.release(held)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3]
        assert (pool.get_size(), pool.get_idle_size()) == (1, 1)
        # The timed-out acquire did not leak the slot.
        async with pool.acquire(timeout=5) as con:
            assert await con.fetchval("SELECT 1") == 1


async def test_cancelled_acquire_does_not_leak(dsn: str) -> None:
    async with create_pool(dsn, min_size=1, max_size=1) as pool:
        held = await pool.acquire()
        t = asyncio.create_task(pool._acquire(None))
        await wait_until(lambda: pool._waiting == 1)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await pool.release(held)
        async with pool.acquire(timeout=5) as con:
            assert await con.fetchval("SELECT 1") == 1


async def test_release_resets_session(dsn: str, admin: driver.Connection) -> None:
    await admin.execute("CREATE TABLE items(x int); GRANT ALL ON items TO scram_user")
    async with create_pool(dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as con:
            pid = await con.fetchval("SELECT pg_backend_pid()")
            await con.execute("SET search_path = nowhere, public")
            await con.execute("LISTEN chan")
            await con.execute("SELECT pg_advisory_lock(4242)")
            await con.execute("BEGIN")
            await con.execute("INSERT INTO public.items VALUES (1)")
            assert con.is_in_transaction()
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT pg_backend_pid()") == pid  # same connection
            assert not con.is_in_transaction()
            assert await con.fetchval("SHOW search_path") == '"$user", public'
            assert await con.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
        assert await admin.fetchval("SELECT count(*) FROM items") == 0
        assert await admin.fetchval("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'") == 0

        # A failed transaction is rolled back too.
        async with pool.acquire() as con:
            await con.execute("BEGIN")
            with pytest.raises(exc.DivisionByZeroError):
                await con.execute("SELECT 1/0")
        async with pool.acquire() as con:
            assert not con.is_in_transaction()
            assert await con.fetchval("SELECT 1") == 1


async def test_broken_connection_is_replaced(dsn: str, admin: driver.Connection) -> None:
    async with create_pool(dsn, min_size=1, max_size=1) as pool:
        async with pool.acquire() as con:
            pid = await con.fetchval("SELECT pg_backend_pid()")
            assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            with pytest.raises((exc.PostgresError, exc.InterfaceError, ConnectionError)):
                await con.fetchval("SELECT 1")
        assert pool.get_size() == 0
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT pg_backend_pid()") != pid
        # A connection terminated by its user is replaced as well.
        async with pool.acquire() as con:
            pid = await con.fetchval("SELECT pg_backend_pid()")
            con.terminate()
        assert await pool.fetchval("SELECT pg_backend_pid()") != pid


async def test_reset_failure_discards_connection(dsn: str) -> None:
    calls: list[Any] = []

    async def bad_reset(con: Any) -> None:
        calls.append(con)
        raise RuntimeError("reset failed")

    async with create_pool(dsn, min_size=1, max_size=1, reset=bad_reset) as pool:
        con = await pool.acquire()
        pid = await con.fetchval("SELECT pg_backend_pid()")
        with pytest.raises(RuntimeError):
            await pool.release(con)
        assert len(calls) == 1 and isinstance(calls[0], driver.Connection)
        assert pool.get_size() == 0
        con = await pool.acquire(timeout=5)  # the slot came back; a new connection
        assert await con.fetchval("SELECT pg_backend_pid()") != pid
        with pytest.raises(RuntimeError):
            await pool.release(con)


async def test_init_setup_and_custom_reset(dsn: str) -> None:
    inits: list[Any] = []
    setups: list[Any] = []
    resets: list[Any] = []

    async def init(con: Any) -> None:
        inits.append(con)
        await con.execute("SET application_name = 'from_init'")

    async def setup(proxy: Any) -> None:
        setups.append(proxy)
        assert isinstance(proxy, PoolConnectionProxy)

    async def reset(con: Any) -> None:
        resets.append(con)
        await con.execute("RESET search_path")

    async with create_pool(dsn, min_size=1, max_size=2, init=init, setup=setup, reset=reset) as pool:
        assert len(inits) == 1
        for _ in range(3):
            async with pool.acquire() as con:
                await con.execute("SET search_path = nowhere")
                # Custom reset replaces RESET ALL: init's setting survives.
                assert await con.fetchval("SHOW application_name") == "from_init"
        assert len(inits) == 1 and len(setups) == 3 and len(resets) == 3
        assert await pool.fetchval("SHOW search_path") == '"$user", public'


async def test_init_and_setup_failures_return_the_slot(dsn: str) -> None:
    fail_init = [True]

    async def init(con: Any) -> None:
        if fail_init[0]:
            raise ValueError("init failed")

    async with create_pool(dsn, min_size=0, max_size=1, init=init) as pool:
        with pytest.raises(ValueError):
            await pool.acquire()
        assert pool.get_size() == 0
        fail_init[0] = False
        assert await pool.fetchval("SELECT 1") == 1

    fail_setup = [True]

    async def setup(proxy: Any) -> None:
        if fail_setup[0]:
            raise KeyError("setup failed")

    async with create_pool(dsn, min_size=1, max_size=1, setup=setup) as pool:
        with pytest.raises(KeyError):
            await pool.acquire(timeout=5)
        assert pool.get_idle_size() == 1
        fail_setup[0] = False
        assert await pool.fetchval("SELECT 1") == 1


async def test_max_queries(dsn: str) -> None:
    async with create_pool(dsn, min_size=1, max_size=1, max_queries=2) as pool:
        p1 = await pool.fetchval("SELECT pg_backend_pid()")
        p2 = await pool.fetchval("SELECT pg_backend_pid()")
        p3 = await pool.fetchval("SELECT pg_backend_pid()")
        assert p1 == p2 != p3


async def test_expire_connections(dsn: str) -> None:
    async with create_pool(dsn, min_size=2, max_size=2) as pool:
        busy = await pool.acquire()
        busy_pid = await busy.fetchval("SELECT pg_backend_pid()")
        idle_pid = await pool.fetchval("SELECT pg_backend_pid()")
        pool.expire_connections()
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT pg_backend_pid()") not in (idle_pid, busy_pid)
        await pool.release(busy)
        pids = set()
        a, b = await pool.acquire(), await pool.acquire()
        for x in (a, b):
            pids.add(await x.fetchval("SELECT pg_backend_pid()"))
            await pool.release(x)
        assert not pids & {idle_pid, busy_pid}


async def test_inactive_connections_are_closed(dsn: str, admin: driver.Connection, app_name: str) -> None:
    async with create_pool(dsn, min_size=2, max_size=2, max_inactive_connection_lifetime=0.2) as pool:
        async with pool.acquire() as con:
            pid = await con.fetchval("SELECT pg_backend_pid()")
        await wait_until(lambda: pool.get_size() == 0)
        await wait_until(lambda: _empty(admin, app_name))
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT pg_backend_pid()") != pid
        # An acquired connection is never closed by the idle timer.
        async with pool.acquire() as con:
            t0 = time.monotonic()
            while time.monotonic() - t0 < 0.4:
                await con.fetchval("SELECT pg_sleep(0.05)")
            assert not con.is_closed()


async def test_close_waits_for_release(dsn: str, admin: driver.Connection, app_name: str) -> None:
    pool = await create_pool(dsn, min_size=1, max_size=1)
    held = await pool.acquire()
    waiter = asyncio.create_task(pool._acquire(None))
    await wait_until(lambda: pool._waiting == 1)
    closing = asyncio.create_task(pool.close())
    with pytest.raises(exc.InterfaceError, match="closing"):
        await waiter
    with pytest.raises(exc.InterfaceError, match="clos"):
        await pool.acquire()
    assert not closing.done()
    assert await held.fetchval("SELECT 1") == 1  # still usable while the pool waits
    await pool.release(held)
    await closing
    assert pool.get_size() == 0
    await wait_until(lambda: _empty(admin, app_name))


async def test_terminate(dsn: str, admin: driver.Connection, app_name: str) -> None:
    pool = await create_pool(dsn, min_size=2, max_size=2)
    held = await pool.acquire()
    raw = held._con
    pool.terminate()
    assert raw.is_closed() and pool.get_size() == 0 and pool.is_closing()
    with pytest.raises(exc.InterfaceError):
        await held.fetchval("SELECT 1")
    with pytest.raises(exc.InterfaceError):
        await pool.acquire()
    await wait_until(lambda: _empty(admin, app_name))
    await pool.close()  # no-op


async def test_concurrency_bounded_by_max_size(dsn: str, admin: driver.Connection, app_name: str) -> None:
    async with create_pool(dsn, min_size=0, max_size=3) as pool:
        seen: set[int] = set()

        async def work(i: int) -> int:
            async with pool.acquire() as con:
                seen.add(await con.fetchval("SELECT pg_backend_pid()"))
                assert pool.get_size() <= 3
                return int(await con.fetchval("SELECT $1::int * 2", i))

        results = await asyncio.gather(*(work(i) for i in range(30)))
        assert results == [i * 2 for i in range(30)]
        assert 1 <= len(seen) <= 3
        assert len(await server_pids(admin, app_name)) <= 3


async def test_connection_class_record_class_and_connect_callback(dsn: str) -> None:
    class MyConnection(driver.Connection):
        pass

    class MyRecord(Record):
        __slots__ = ()

    async with create_pool(dsn, min_size=1, max_size=1, connection_class=MyConnection,
                           record_class=MyRecord) as pool:
        async with pool.acquire() as con:
            assert isinstance(con._con, MyConnection)
        row = await pool.fetchrow("SELECT 1 AS a")
        assert type(row) is MyRecord and repr(row) == "<MyRecord a=1>"

    calls: list[dict[str, Any]] = []

    async def my_connect(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return await driver.connect(*args, **{k: v for k, v in kwargs.items()
                                              if k not in ("connection_class", "record_class")})

    async with create_pool(dsn, min_size=1, max_size=1, connect=my_connect, command_timeout=30) as pool:
        assert await pool.fetchval("SELECT 7") == 7
    assert len(calls) == 1 and calls[0]["command_timeout"] == 30

    async def wrong_type(*args: Any, **kwargs: Any) -> Any:
        return await driver.connect(*args)

    with pytest.raises(exc.InterfaceError, match="expected pool connect callback"):
        await create_pool(dsn, min_size=1, max_size=1, connect=wrong_type, connection_class=MyConnection)


async def test_driver_exports_create_pool() -> None:
    assert driver.create_pool is create_pool
    assert driver.Pool is Pool
