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
from tests.gateway.conftest import ALICE_PASSWORD, gateway_app  # noqa: F401 (fixture)
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


# ------------------------------------------------------------------ real engines
@pytest.fixture
async def gateway(gateway_app: Any, pg_db: str) -> Any:
    """A gateway in transaction mode whose database ``app`` is ``pg_db`` (as the superuser)."""
    return await gateway_app(auth_type="password", databases={"app": {
        "dbname": pg_db, "user": PgCluster.SUPERUSER, "password": PgCluster.SUPERUSER_PASSWORD}})


def engine_urls(pg: PgCluster, pg_db: str, gateway: Any) -> dict[str, str]:
    admin = f"{PgCluster.SUPERUSER}:{PgCluster.SUPERUSER_PASSWORD}"
    gw = f"alice:{ALICE_PASSWORD}@127.0.0.1:{gateway.http_port}/app"
    return {"asyncpg": f"postgresql+asyncpg://{admin}@{pg.host}:{pg.port}/{pg_db}",
            "tcp": f"postgresql+wirepool://{admin}@{pg.host}:{pg.port}/{pg_db}",
            "ws": f"postgresql+wirepool://{gw}?transport=ws",
            "http": f"postgresql+wirepool://{gw}?transport=http"}


async def _exercise(url: str, table: str) -> dict[str, Any]:
    """The same statements through one engine; what SQLAlchemy reports back."""
    engine = create_async_engine(url)
    out: dict[str, Any] = {}
    try:
        async with engine.begin() as c:
            await c.execute(text(f"CREATE TABLE {table} (id int PRIMARY KEY, doc jsonb, "
                                 f"n numeric CHECK (n > 0))"))
            await c.execute(text(f"INSERT INTO {table} VALUES (:i, :d, :n)"),
                            [{"i": i, "d": '{"k": %d}' % i, "n": i} for i in (1, 2, 3)])
        for name, sql in [("unique", f"INSERT INTO {table} VALUES (1, NULL, 1)"),
                          ("check", f"INSERT INTO {table} VALUES (9, NULL, -1)"),
                          ("syntax", f"SELEC 1 FROM {table}")]:
            with pytest.raises(sa_exc.DBAPIError) as ei:
                async with engine.begin() as c:
                    await c.execute(text(sql))
            e = ei.value
            out[name] = (type(e).__name__, type(e.orig).__name__, type(e.orig.__cause__).__name__,
                         getattr(e.orig, "sqlstate", None))
        async with engine.connect() as c:
            rows = (await c.execute(text(f"SELECT id, doc, n FROM {table} ORDER BY id"))).all()
            out["rows"] = [tuple(r) for r in rows]
            out["stream"] = [r[0] async for r in await c.stream(
                text(f"SELECT id FROM {table} ORDER BY id"))]
        async with engine.begin() as c:
            await c.execute(text(f"DROP TABLE {table}"))
    finally:
        await engine.dispose()
    return out


async def test_engines_behave_like_sqlalchemy_with_asyncpg(pg: PgCluster, pg_db: str,
                                                           gateway: Any) -> None:
    urls = engine_urls(pg, pg_db, gateway)
    want = await _exercise(urls["asyncpg"], "t_asyncpg")
    assert want["unique"] == ("IntegrityError", "UniqueViolationError", "UniqueViolationError",
                              "23505")
    assert want["check"][:2] == ("IntegrityError", "CheckViolationError")
    assert want["syntax"][:2] == ("ProgrammingError", "ProgrammingError")
    assert want["rows"][0][1] == {"k": 1}
    for transport in ("tcp", "ws", "http"):
        got = await _exercise(urls[transport], f"t_{transport}")
        assert got == want, transport
