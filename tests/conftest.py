"""Shared fixtures: private throwaway PostgreSQL clusters (see tests/pgcluster.py).

Sub-directory conftest files (tests/driver, tests/gateway) build on these.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Iterator, Mapping

import pytest
from hypothesis import HealthCheck, settings

from tests.pgcluster import PgCluster

# Property tests check results, never speed: on a shared 2-core machine one
# example can take longer than hypothesis' default 200 ms deadline, which made
# test_framing flaky under load (DeadlineExceeded), so the deadline is off.
settings.register_profile("wirepool", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("wirepool")

_db_counter = itertools.count(1)


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """One cluster shared by the whole run. Do not stop/restart/kill it: use pg_factory."""
    cluster = PgCluster({"max_prepared_transactions": 4})  # PREPARE TRANSACTION tests (test_listen_tx)
    try:
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def pg_factory() -> Iterator[Callable[..., PgCluster]]:
    """``pg_factory(settings=None) -> PgCluster``: extra private, started clusters
    (free to restart/kill/limit); all are removed at the end of the test."""
    clusters: list[PgCluster] = []

    def make(settings: Mapping[str, Any] | None = None) -> PgCluster:
        c = PgCluster(settings)
        clusters.append(c)
        return c

    try:
        yield make
    finally:
        for c in clusters:
            c.cleanup()


@pytest.fixture
def pg_db(pg: PgCluster) -> Iterator[str]:
    """Name of a fresh empty database on ``pg`` (owner wp_admin, usable by the
    test roles), dropped WITH (FORCE) after the test."""
    name = f"wp_t{os.getpid()}_{next(_db_counter)}"
    pg.create_database(name)
    try:
        yield name
    finally:
        pg.drop_database(name)
