"""Query loggers (asyncpg's ``add_query_logger`` / ``query_logger``)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["LoggedQuery", "QueryTimer", "QueryLoggerContext"]


class LoggedQuery(NamedTuple):
    """Log record of an executed query (asyncpg's ``LoggedQuery``)."""

    query: str
    args: Any
    timeout: float | None
    elapsed: float
    exception: BaseException | None
    conn_addr: tuple[str, int]
    conn_params: Any


class QueryTimer:
    """Times one query and hands its record to the connection's query loggers."""

    __slots__ = ("conn", "query", "args", "timeout", "start")

    def __init__(self, conn: Connection, query: str, args: Any, timeout: float | None) -> None:
        self.conn = conn
        self.query = query
        self.args = args
        self.timeout = timeout
        self.start = 0.0

    def __enter__(self) -> None:
        self.start = time.monotonic()

    def __exit__(self, etype: Any, exc: BaseException | None, tb: Any) -> None:
        conn = self.conn
        ep = conn._endpoint
        record = LoggedQuery(self.query, self.args,
                             self.timeout if self.timeout is not None else conn._command_timeout,
                             time.monotonic() - self.start, exc, (ep.host, ep.port),
                             conn._params)
        for cb in list(conn._query_loggers):
            conn._call_soon(cb, record)


class QueryLoggerContext:
    """``with conn.query_logger(cb):`` -- ``cb`` logs the queries of the block."""

    __slots__ = ("conn", "callback")

    def __init__(self, conn: Connection, callback: Callable[..., Any]) -> None:
        self.conn = conn
        self.callback = callback

    def __enter__(self) -> None:
        self.conn.add_query_logger(self.callback)

    def __exit__(self, *exc_info: Any) -> None:
        self.conn.remove_query_logger(self.callback)
