"""The SQLAlchemy dialect ``postgresql+wirepool://`` (driver/sqlalchemy_dialect.py).

URL handling is checked on its own; then real engines run against the test
cluster directly over TCP and through a real gateway over WebSocket and HTTP,
next to the same statements through SQLAlchemy's asyncpg dialect with real
asyncpg, so errors and values must match what SQLAlchemy gives for asyncpg.
"""

from __future__ import annotations

import importlib.metadata
import tomllib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.dialects import registry
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

import driver
from driver.sqlalchemy_dialect import PGDialect_wirepool
from tests.pgcluster import PgCluster

REPO = Path(__file__).resolve().parents[2]


def connect_args(url: str) -> dict[str, Any]:
    args, kw = PGDialect_wirepool().create_connect_args(make_url(url))
    assert args == []
    return kw


def test_entry_point_registers_the_dialect() -> None:
    declared = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["entry-points"]
    assert declared["sqlalchemy.dialects"]["postgresql.wirepool"] == \
        "driver.sqlalchemy_dialect:PGDialect_wirepool"
    eps = [ep for ep in importlib.metadata.entry_points(group="sqlalchemy.dialects")
           if ep.name == "postgresql.wirepool"]
    assert eps, "wirepool's sqlalchemy.dialects entry point is not installed (pip install -e .)"
    assert registry.load("postgresql.wirepool") is PGDialect_wirepool


def test_dialect_uses_the_driver_as_its_dbapi() -> None:
    dbapi = PGDialect_wirepool.import_dbapi()
    assert dbapi.asyncpg is driver
    # asyncpg's exception classes are translated by SQLAlchemy's asyncpg adapter
    translate = dbapi._asyncpg_error_translate
    assert translate[driver.exceptions.UniqueViolationError] is dbapi.UniqueViolationError
    assert translate[driver.exceptions.IntegrityConstraintViolationError] is dbapi.IntegrityError


def test_tcp_url_gives_asyncpg_keyword_arguments() -> None:
    kw = connect_args("postgresql+wirepool://u:p%40ss@db.example:6543/app?command_timeout=5")
    assert kw == {"host": "db.example", "port": 6543, "user": "u", "password": "p@ss",
                  "database": "app", "command_timeout": 5.0}
    assert connect_args("postgresql+wirepool://u@h/app?transport=tcp") == \
        {"host": "h", "user": "u", "database": "app"}


@pytest.mark.parametrize("transport", ["ws", "wss", "http", "https"])
def test_gateway_transports_build_a_driver_dsn(transport: str) -> None:
    kw = connect_args(f"postgresql+wirepool://alice:s%2Fcret@gw:8432/my%20db?transport={transport}"
                      "&token=t1&prepared_statement_cache_size=0&statement_cache_size=0")
    assert kw == {"dsn": f"{transport}://gw:8432/my%20db?token=t1", "user": "alice",
                  "password": "s/cret", "prepared_statement_cache_size": 0,
                  "statement_cache_size": 0}


@pytest.mark.parametrize("query", ["transport=smtp", "transport=ws&transport=http"])
def test_bad_transport_is_a_clear_error(query: str) -> None:
    with pytest.raises(sa_exc.ArgumentError, match="transport"):
        connect_args(f"postgresql+wirepool://u@h/app?{query}")
