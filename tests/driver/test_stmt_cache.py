"""Statement-cache invalidation, fetchmany, explain, listeners, __version__:
each checked side by side with asyncpg on the same server."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import asyncpg
import pytest

import driver
from driver import exceptions as exc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def both(admin_dsn: str) -> AsyncIterator[tuple[Any, Any]]:
    """(driver connection, asyncpg connection) to the same fresh database."""
    d = await driver.connect(admin_dsn)
    a = await asyncpg.connect(admin_dsn)
    try:
        yield d, a
    finally:
        await d.close()
        await a.close()


async def eventually(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize("alter", ["ALTER TABLE {t} ADD COLUMN b int DEFAULT 7",
                                   "ALTER TABLE {t} ALTER COLUMN a TYPE bigint"])
async def test_retry_after_alter_outside_a_transaction(both: tuple[Any, Any], alter: str) -> None:
    results = []
    for c, t in zip(both, ("td", "ta")):
        await c.execute(f"CREATE TABLE {t} (a int); INSERT INTO {t} VALUES (1)")
        q = f"SELECT * FROM {t} WHERE a > $1"
        assert [tuple(r) for r in await c.fetch(q, 0)] == [(1,)]
        await c.execute(alter.format(t=t))
        results.append([tuple(r) for r in await c.fetch(q, 0)])  # re-prepared, retried
        results.append(await c.fetchval(q, 0))
    assert results[:2] == results[2:]
    assert results[0] in ([(1, 7)], [(1,)])


async def test_invalid_cached_statement_in_a_transaction(both: tuple[Any, Any]) -> None:
    errors = []
    for c, t in zip(both, ("td", "ta")):
        await c.execute(f"CREATE TABLE {t} (a int)")
        q = f"SELECT * FROM {t} WHERE a > $1"
        await c.fetch(q, 0)
        tr = c.transaction()
        await tr.start()
        await c.execute(f"ALTER TABLE {t} ADD COLUMN b int")
        with pytest.raises(Exception) as info:
            await c.fetch(q, 0)
        await tr.rollback()
        errors.append(info.value)
        assert await c.fetch(q, 0) == []  # the cache was dropped: prepared again
    mine, theirs = errors
    assert isinstance(mine, exc.InvalidCachedStatementError)
    assert isinstance(mine, exc.FeatureNotSupportedError)
    assert type(theirs).__name__ == type(mine).__name__
    assert str(mine) == str(theirs)
    assert (mine.sqlstate, mine.message) == (theirs.sqlstate, theirs.message)


async def test_prepared_statement_is_not_retried(both: tuple[Any, Any]) -> None:
    names = []
    for c, t in zip(both, ("td", "ta")):
        await c.execute(f"CREATE TABLE {t} (a int)")
        st = await c.prepare(f"SELECT * FROM {t}")
        await c.execute(f"ALTER TABLE {t} ADD COLUMN b int")
        with pytest.raises(Exception) as info:
            await st.fetch()
        names.append(type(info.value).__name__)
        assert await c.fetchval("SELECT 1") == 1
    assert names == ["InvalidCachedStatementError"] * 2


async def test_executemany_and_fetchmany_retry(both: tuple[Any, Any]) -> None:
    out = []
    for c, t in zip(both, ("td", "ta")):
        await c.execute(f"CREATE TABLE {t} (a int, b text)")
        q = f"INSERT INTO {t} (a) VALUES ($1) RETURNING *"
        out.append([tuple(r) for r in await c.fetchmany(q, [(1,), (2,)])])
        await c.execute(f"ALTER TABLE {t} ALTER COLUMN b TYPE varchar(5)")
        out.append([tuple(r) for r in await c.fetchmany(q, [(3,), (4,)])])
        await c.executemany(q, [(5,)])
        out.append(await c.fetchmany(q, []))
        st = await c.prepare(f"SELECT a * $2::int FROM {t} WHERE a = $1")
        out.append([tuple(r) for r in await st.fetchmany([(1, 10), (2, 20), (99, 1)])])
        out.append(await c.fetchval(f"SELECT count(*) FROM {t}"))
    n = len(out) // 2
    assert out[:n] == out[n:]
    assert out[0] == [(1, None), (2, None)] and out[3] == [(10,), (40,)]


async def test_fetchmany_record_class(conn: driver.Connection) -> None:
    class MyRecord(driver.Record):
        pass

    rows = await conn.fetchmany("SELECT $1::int", [(1,), (2,)], record_class=MyRecord)
    assert [type(r) for r in rows] == [MyRecord, MyRecord] and [r[0] for r in rows] == [1, 2]


async def test_explain_matches_asyncpg(both: tuple[Any, Any]) -> None:
    plans = []
    for c, t in zip(both, ("td", "ta")):
        await c.execute(f"CREATE TABLE {t} (a int)")
        st = await c.prepare(f"INSERT INTO {t} SELECT g FROM generate_series(1, $1::int) g")
        plain = await st.explain(10)
        analyzed = await st.explain(10, analyze=True)
        assert await c.fetchval(f"SELECT count(*) FROM {t}") == 0  # rolled back
        assert not c.is_in_transaction()
        plans.append((plain[0]["Plan"]["Node Type"], sorted(plain[0]["Plan"]),
                      "Actual Rows" in analyzed[0]["Plan"]["Plans"][0],
                      analyzed[0]["Plan"]["Plans"][0].get("Actual Rows")))
    assert plans[0] == plans[1]
    assert plans[0][0] == "ModifyTable" and plans[0][3] == 10


async def test_log_listeners_match_asyncpg(both: tuple[Any, Any]) -> None:
    got: list[list[Any]] = [[], []]
    for i, c in enumerate(both):
        def listener(con: Any, msg: Any, i: int = i, c: Any = c) -> None:
            assert con is c
            got[i].append(msg)

        async def alistener(con: Any, msg: Any, i: int = i) -> None:
            got[i].append(("async", msg.message))

        c.add_log_listener(listener)
        c.add_log_listener(alistener)
        await c.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 1; RAISE WARNING 'careful'; END $$")
        await eventually(lambda i=i: len(got[i]) == 4)
        c.remove_log_listener(listener)
        c.remove_log_listener(listener)  # twice is fine, as asyncpg
        await c.execute("DO $$ BEGIN RAISE NOTICE 'second'; END $$")
        await eventually(lambda i=i: len(got[i]) == 5)
        c.remove_log_listener(alistener)
    def shape(msgs: list[Any]) -> tuple[list[Any], list[Any]]:
        sync = [(type(m).__name__, m.message, m.sqlstate, m.severity)
                for m in msgs if not isinstance(m, tuple)]
        return sync, [m for m in msgs if isinstance(m, tuple)]

    assert shape(got[0]) == shape(got[1])
    assert [type(m) for m in got[0] if not isinstance(m, tuple)][1] is exc.PostgresWarning


async def test_termination_listeners(admin_dsn: str) -> None:
    calls: list[Any] = []
    for how in ("close", "terminate"):
        for lib in (driver, asyncpg):
            c: Any = await lib.connect(admin_dsn)

            async def acb(con: Any, how: str = how, lib: Any = lib) -> None:
                calls.append((lib.__name__, how, "async", con is c))

            def cb(con: Any, how: str = how, lib: Any = lib) -> None:
                calls.append((lib.__name__, how, "sync", con is c))

            c.add_termination_listener(cb)
            c.add_termination_listener(acb)
            c.add_termination_listener(cb)  # a set in asyncpg: once
            if how == "close":
                await c.close()
            else:
                c.terminate()
            await eventually(lambda n=len(calls): False if n < 0 else
                             len([x for x in calls if x[:2] == (lib.__name__, how)]) >= 2)
    await asyncio.sleep(0)
    mine = sorted(x[1:] for x in calls if x[0] == "driver")
    theirs = sorted(x[1:] for x in calls if x[0] == "asyncpg")
    assert mine == theirs
    assert all(x[3] for x in calls)


async def test_query_loggers_match_asyncpg(both: tuple[Any, Any]) -> None:
    logs: list[list[Any]] = [[], []]
    for i, c in enumerate(both):
        def logger(rec: Any, i: int = i) -> None:
            logs[i].append(rec)

        c.add_query_logger(logger)
        await c.execute("CREATE TEMP TABLE t (a int)")
        await c.execute("INSERT INTO t VALUES ($1)", 1)
        await c.fetch("SELECT * FROM t WHERE a = $1", 1, timeout=5)
        await c.fetchrow("SELECT 1")
        await c.fetchval("SELECT 2")
        await c.executemany("INSERT INTO t VALUES ($1)", [(2,), (3,)])
        with pytest.raises(Exception):
            await c.fetch("SELECT * FROM nosuch")
        await eventually(lambda i=i: len(logs[i]) == 7)
        c.remove_query_logger(logger)
        seen: list[Any] = []
        with c.query_logger(seen.append):
            await c.execute("SELECT 3")
        await c.execute("SELECT 4")
        await eventually(lambda: len(seen) == 1)
        assert seen[0].query == "SELECT 3"
    mine, theirs = logs
    assert [(r.query, tuple(r.args), r.timeout, type(r.exception).__name__) for r in mine] == \
        [(r.query, tuple(r.args), r.timeout, type(r.exception).__name__) for r in theirs]
    assert all(r.elapsed >= 0 for r in mine)
    assert tuple(mine[0].conn_addr) == tuple(theirs[0].conn_addr)
    assert type(mine[0]).__name__ == "LoggedQuery" and mine[0]._fields == theirs[0]._fields


def test_version() -> None:
    m = re.search(r'^version = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m is not None and driver.__version__ == m.group(1)
