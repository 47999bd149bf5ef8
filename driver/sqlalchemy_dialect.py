"""SQLAlchemy dialect ``postgresql+wirepool://``: SQLAlchemy's asyncpg dialect with this driver.

Optional: importing this module needs SQLAlchemy (``pip install 'wirepool[sqlalchemy]'``);
nothing else in the driver imports it.  It is registered through the
``sqlalchemy.dialects`` entry point, so after installation::

    from sqlalchemy.ext.asyncio import create_async_engine
    engine = create_async_engine("postgresql+wirepool://user:pw@db:5432/app")
    engine = create_async_engine("postgresql+wirepool://alice:secret@gateway:8432/app?transport=ws")

The dialect *is* SQLAlchemy's ``PGDialect_asyncpg`` (types, compiler, error
translation to ``IntegrityError`` & co, server-side cursors, prepared statement
cache) with ``driver`` as the DBAPI module in place of ``asyncpg``.  The only
addition is the ``transport`` URL query parameter, which picks how the driver
reaches Postgres:

* ``tcp`` (default): directly, like asyncpg;
* ``ws`` / ``wss``: the gateway's WebSocket (``GET /v2``);
* ``http`` / ``https``: the gateway's HTTP endpoint (``POST /pg``).

Other query parameters are passed on as for asyncpg (``prepared_statement_cache_size``,
``command_timeout``...); with a gateway transport, those that are not keyword
arguments of :func:`driver.connect` (``token``, ``pipeline_connect``,
``lazy_connect``, ``describe_first``, ``endpoint``, ``sslmode``...) go into the
driver's DSN.  See docs/sqlalchemy.md.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi, PGDialect_asyncpg
from sqlalchemy.engine.url import URL

__all__ = ["PGDialect_wirepool", "AsyncAdapt_wirepool_dbapi", "dialect", "TRANSPORTS"]

#: ``?transport=`` values -> the driver's DSN scheme
TRANSPORTS = {"tcp": "postgresql", "ws": "ws", "wss": "wss", "http": "http", "https": "https"}

#: URL query parameters kept as keyword arguments (of the dialect's DBAPI ``connect``
#: or of :func:`driver.connect`) rather than put into a gateway DSN.
_KWARGS = frozenset({
    "prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn",
    "statement_cache_size", "command_timeout", "timeout", "server_settings", "ssl",
    "record_class", "connection_class",
})
_NUMERIC_KWARGS = {"statement_cache_size": int, "command_timeout": float, "timeout": float}


class AsyncAdapt_wirepool_dbapi(AsyncAdapt_asyncpg_dbapi):
    """SQLAlchemy's asyncpg DBAPI adapter around :mod:`driver`.

    The one change: the exception translation table.  SQLAlchemy's builds it
    from ``import asyncpg`` (the real module) rather than from the module it
    wraps, so the driver's exceptions (same names, same hierarchy) would not be
    found in it; here it is the same table over ``driver.exceptions``.
    """

    @cached_property
    def _asyncpg_error_translate(self) -> dict[type[BaseException], type[BaseException]]:
        e = self.asyncpg.exceptions
        return {
            e.IntegrityConstraintViolationError: self.IntegrityError,
            e.PostgresError: self.Error,
            e.SyntaxOrAccessError: self.ProgrammingError,
            e.InterfaceError: self.InterfaceError,
            e.InvalidCachedStatementError: self.InvalidCachedStatementError,
            e.InternalServerError: self.InternalServerError,
            e.RestrictViolationError: self.RestrictViolationError,
            e.NotNullViolationError: self.NotNullViolationError,
            e.ForeignKeyViolationError: self.ForeignKeyViolationError,
            e.UniqueViolationError: self.UniqueViolationError,
            e.CheckViolationError: self.CheckViolationError,
            e.ExclusionViolationError: self.ExclusionViolationError,
            e.InternalClientError: self.InternalClientError,
        }


class PGDialect_wirepool(PGDialect_asyncpg):
    """``postgresql+wirepool://``: :class:`PGDialect_asyncpg` over :mod:`driver`."""

    #: ``engine.dialect.driver`` says "asyncpg" on purpose: this *is* SQLAlchemy's asyncpg
    #: dialect, so code (and SQLAlchemy's own test suite) that checks for asyncpg to enable
    #: asyncpg behaviour (ranges, BitString, codecs...) must take that path here too.
    #: ``engine.url.get_driver_name()`` is "wirepool".
    driver = "asyncpg"
    supports_statement_cache = True

    @classmethod
    def import_dbapi(cls) -> Any:  # an AsyncAdapt_wirepool_dbapi
        import driver

        return AsyncAdapt_wirepool_dbapi(driver)

    def create_connect_args(self, url: URL) -> tuple[list[Any], dict[str, Any]]:
        transport = url.query.get("transport", "tcp")
        if isinstance(transport, tuple):
            raise sa_exc.ArgumentError("the transport URL parameter is given more than once")
        scheme = TRANSPORTS.get(transport.lower())
        if scheme is None:
            raise sa_exc.ArgumentError(
                f"unknown transport {transport!r}: expected one of {', '.join(TRANSPORTS)}")
        url = url.difference_update_query(["transport"])
        args, opts = super().create_connect_args(url)
        for key, conv in _NUMERIC_KWARGS.items():
            if isinstance(opts.get(key), str):
                opts[key] = conv(opts[key])
        if scheme == "postgresql":
            return args, opts
        host = opts.pop("host", None)
        if isinstance(host, list):
            raise sa_exc.ArgumentError("a gateway transport takes a single host")
        port = opts.pop("port", None)
        database = opts.pop("database", None) or ""
        extra = {k: opts.pop(k) for k in list(opts)
                 if k not in _KWARGS and k not in ("user", "password")}
        netloc = host or "localhost"
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if port is not None:
            netloc += f":{int(port)}"
        dsn = f"{scheme}://{netloc}/{quote(database, safe='')}"
        if extra:
            dsn += "?" + urlencode({k: v if isinstance(v, str) else str(v) for k, v in extra.items()})
        opts["dsn"] = dsn
        return args, opts


dialect = PGDialect_wirepool
