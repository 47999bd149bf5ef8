"""The shared statement cache across schema changes (issue 10, item 1).

Transaction mode with named prepared statements: a type dropped and
recreated -- through the gateway or directly on Postgres -- must not leave
servers handing out stale statements (``XX000 cache lookup failed``,
``0A000 cached plan must not change result type``) to new clients.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from tests.gateway.conftest import ALICE_PASSWORD
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(120)

QUERY = "select $1::text::my_enum"
RECREATE = "drop type if exists my_enum; create type my_enum as enum ('a', 'b', 'c')"


async def _new_clients(app: Any, n: int) -> list[BaseException | str]:
    """``n`` new asyncpg clients at once (default statement cache), each
    preparing QUERY; their results (or errors)."""

    async def one() -> str:
        conn = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
        try:
            return str(await asyncio.wait_for(conn.fetchval(QUERY, "b"), 10))
        finally:
            await conn.close()

    return list(await asyncio.gather(*(one() for _ in range(n)), return_exceptions=True))


async def _server_pids(app: Any, n: int) -> set[int]:
    """Hold ``n`` clients in transactions at once so every pooled server is used."""
    conns = [await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app")) for _ in range(n)]
    try:
        trs = [c.transaction() for c in conns]
        for t in trs:
            await t.start()
        pids = set()
        for c in conns:
            assert await c.fetchval(QUERY, "a") == "a"
            pids.add(await c.fetchval("select pg_backend_pid()"))
        for t in trs:
            await t.rollback()
        return pids
    finally:
        for c in conns:
            await c.close()


async def test_enum_recreated_through_gateway_then_new_clients(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 2, "dbname": pg_db}})
    admin = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    try:
        await admin.execute(RECREATE)
        assert len(await _server_pids(app, 2)) == 2  # both servers hold the statement
        for _cycle in range(3):
            await admin.execute(RECREATE)  # through the gateway: the schema epoch is bumped
            results = await _new_clients(app, 5)
            assert results == ["b"] * 5, results
            await _server_pids(app, 2)
    finally:
        await admin.close()


async def test_enum_recreated_directly_costs_at_most_one_error_per_server(
        gateway_app: Any, pg: PgCluster, pg_db: str) -> None:
    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 2, "dbname": pg_db}})
    admin = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    try:
        await admin.execute(RECREATE)
    finally:
        await admin.close()
    pids = await _server_pids(app, 2)
    assert len(pids) == 2
    for _cycle in range(3):
        # behind the gateway's back
        await asyncio.to_thread(pg.psql, f"{RECREATE}; alter type my_enum owner to {PgCluster.SCRAM_USER}",
                                db=pg_db)
        errors: list[BaseException] = []
        for _round in range(3):
            results = await _new_clients(app, 5)
            errors += [r for r in results if isinstance(r, BaseException)]
            assert all(r == "b" for r in results if not isinstance(r, BaseException)), results
        # at most one error per server (never a persistent one): the last round is clean
        assert len(errors) <= len(pids), errors
        assert all(isinstance(e, asyncpg.PostgresError) for e in errors), errors
        assert results == ["b"] * 5, results


async def _run_on_server_other_than(app: Any, busy_pid: int | None, conn: Any, query: str
                                    ) -> tuple[Any, int]:
    """Run ``query`` on ``conn`` (pool of 2, transaction mode) while the server
    ``busy_pid`` (any one if None) is held in a transaction by another client:
    it lands on the other server.  Returns the result (or the error) and the
    pid of the server it ran on."""
    holders = [await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app")) for _ in range(2)]
    try:
        trs = [h.transaction() for h in holders]
        for t in trs:
            await t.start()
        pids = [await h.fetchval("select pg_backend_pid()") for h in holders]
        assert busy_pid is None or busy_pid in pids, (busy_pid, pids)
        free = pids.index(busy_pid) ^ 1 if busy_pid is not None else 0
        await trs[free].rollback()  # only busy_pid stays held
        try:
            return await asyncio.wait_for(conn.fetchval(query, "b"), 10), pids[free]
        except asyncpg.PostgresError as exc:
            return exc, pids[free]
        finally:
            await trs[free ^ 1].rollback()
    finally:
        for h in holders:
            await h.close()


async def test_long_lived_statement_after_migration_fails_only_at_first_use(
        gateway_app: Any, pg_db: str) -> None:
    """A client's statement held on server A only; a migration through the
    gateway; its first use lands on server B (parsed afresh, no error), its next
    one on A, which still has the old plan: that must not fail either -- an
    error long after the migration is what made the WebSocket cycles flaky."""
    query = "select $1::my_enum::text"  # parameter of the dropped type: XX000, no driver retries
    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 2, "dbname": pg_db}})
    admin = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    client = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    try:
        await admin.execute(RECREATE)
        r, pa = await _run_on_server_other_than(app, None, client, query)  # prepared on pa only
        assert r == "b", r
        await admin.execute(RECREATE)  # through the gateway: the schema epoch is bumped
        r, pb = await _run_on_server_other_than(app, pa, client, query)  # first use: elsewhere
        assert r == "b" and pb != pa, (r, pa, pb)
        r, pc = await _run_on_server_other_than(app, pb, client, query)  # next: the old plan's server
        assert r == "b" and pc == pa, (r, pa, pc)
    finally:
        await client.close()
        await admin.close()


# --------------------------------------------------------------------------- migration cycles

CYCLES = 5


def _metadata() -> Any:
    import sqlalchemy as sa

    md = sa.MetaData()
    sa.Table("person", md,
             sa.Column("id", sa.Integer, primary_key=True),
             sa.Column("name", sa.Text, nullable=False),
             sa.Column("mood", sa.Enum("sad", "ok", "happy", name="mood"), nullable=False))
    return md


async def test_sqlalchemy_migration_cycles_asyncpg_pg_listen(gateway_app: Any, pg_db: str) -> None:
    """5 x drop_all/create_all (enum column) + queries on several pooled
    connections, SQLAlchemy over asyncpg (default statement cache) through
    pg_listen: not a single error."""
    import sqlalchemy as sa
    from sqlalchemy.ext.asyncio import create_async_engine

    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 3, "dbname": pg_db}})
    md = _metadata()
    person = md.tables["person"]
    engine = create_async_engine(f"postgresql+asyncpg://alice:{ALICE_PASSWORD}@127.0.0.1:{app.pg_port}/app",
                                 pool_size=4, max_overflow=0)
    errors: list[tuple[int, BaseException]] = []

    async def work(cycle: int, i: int) -> None:
        try:
            async with engine.begin() as conn:
                await conn.execute(person.insert(), [{"name": f"p{cycle}-{i}", "mood": "happy"}])
            async with engine.connect() as conn:
                n = (await conn.execute(sa.select(sa.func.count()).select_from(person)
                                        .where(person.c.mood == "happy"))).scalar_one()
                assert n >= 1
                moods = (await conn.execute(sa.select(person.c.mood).where(person.c.name == f"p{cycle}-{i}"))).all()
                assert moods == [("happy",)]
        except Exception as exc:
            errors.append((cycle, exc))

    try:
        for cycle in range(CYCLES):
            async with engine.begin() as conn:
                await conn.run_sync(md.drop_all)
                await conn.run_sync(md.create_all)
            await asyncio.gather(*(work(cycle, i) for i in range(8)))
            await asyncio.gather(*(work(cycle, i + 100) for i in range(8)))
        assert errors == []
    finally:
        await engine.dispose()


async def test_migration_cycles_driver_over_websocket(gateway_app: Any, pg_db: str) -> None:
    """The same cycles (SQLAlchemy's DDL, compiled) run by our driver over the
    gateway's WebSocket, with queries from long-lived connections whose
    statement caches predate each migration: at most one error per statement
    and server after each migration (the first use), never a persistent one."""
    from sqlalchemy.dialects import postgresql
    from sqlalchemy.schema import CreateTable, DropTable

    import driver

    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 3, "dbname": pg_db}})
    md = _metadata()
    person = md.tables["person"]
    dialect = postgresql.dialect()
    ddl = [str(DropTable(person, if_exists=True).compile(dialect=dialect)), "DROP TYPE IF EXISTS mood",
           "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy')",
           str(CreateTable(person).compile(dialect=dialect))]
    dsn = f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app"
    migrator = await driver.connect(dsn)
    workers = [await driver.connect(dsn) for _ in range(4)]
    statements = ("insert into person(name, mood) values ($1, $2)",
                  "select count(*) from person where mood = $1",
                  "select mood from person where name = $1")

    async def work(conn: Any, name: str) -> list[BaseException]:
        errs: list[BaseException] = []
        for sql, args in zip(statements, ((name, "happy"), ("happy",), (name,))):
            try:
                await conn.fetch(sql, *args)
            except driver.PostgresError as exc:
                errs.append(exc)
        return errs

    try:
        for cycle in range(CYCLES):
            async with migrator.transaction():
                for stmt in ddl:
                    await migrator.execute(stmt)
            first = await asyncio.gather(*(work(c, f"a{cycle}-{i}") for i, c in enumerate(workers)))
            again = await asyncio.gather(*(work(c, f"b{cycle}-{i}") for i, c in enumerate(workers)))
            errs = [e for es in first for e in es]
            # at most the first use of each stale statement on each server, and only
            # Postgres' own stale-statement errors (what a direct connection gets forever)
            assert len(errs) <= len(statements) * 3, errs
            assert all(e.sqlstate in ("XX000", "0A000") for e in errs), errs
            assert [e for es in again for e in es] == []
            assert await migrator.fetchval("select count(*) from person where name like 'b%'") == len(workers)
    finally:
        for c in [migrator, *workers]:
            await c.close()
