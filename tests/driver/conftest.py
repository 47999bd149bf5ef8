"""Fixtures for driver tests: connections to the shared test cluster (tests/conftest.py)."""

from __future__ import annotations

from typing import AsyncIterator, Awaitable, Callable

import pytest

import driver
from tests.pgcluster import PgCluster

ADMIN = PgCluster.SUPERUSER
ADMIN_PW = PgCluster.SUPERUSER_PASSWORD


@pytest.fixture
def admin_dsn(pg: PgCluster, pg_db: str) -> str:
    """DSN of a fresh database, as the superuser (SCRAM)."""
    return pg.dsn(ADMIN, ADMIN_PW, pg_db)


@pytest.fixture
async def conn(admin_dsn: str) -> AsyncIterator[driver.Connection]:
    """A driver connection to a fresh database."""
    c = await driver.connect(admin_dsn)
    try:
        yield c
    finally:
        if not c.is_closed():
            await c.close()


@pytest.fixture
async def connect(admin_dsn: str) -> AsyncIterator[Callable[..., Awaitable[driver.Connection]]]:
    """``await connect(**kwargs)``: more driver connections (closed at the end)."""
    opened: list[driver.Connection] = []

    async def make(dsn: str | None = None, **kwargs: object) -> driver.Connection:
        c = await driver.connect(dsn or admin_dsn, **kwargs)  # type: ignore[arg-type]
        opened.append(c)
        return c

    try:
        yield make
    finally:
        for c in opened:
            if not c.is_closed():
                await c.close()
