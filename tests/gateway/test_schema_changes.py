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
