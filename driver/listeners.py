"""Listeners of a :class:`~driver.connection.Connection`, as asyncpg has them.

:class:`ListenersMixin` (mixed into Connection): LISTEN/NOTIFY callbacks
(``add_listener``), server notices (``add_log_listener``), the end of the
connection (``add_termination_listener``) and query loggers
(``add_query_logger`` / ``query_logger``, records are :class:`LoggedQuery`).
Every callback runs soon on the event loop (a coroutine function's result is
awaited in a background task); an exception in one never breaks the connection.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, NamedTuple, cast

if TYPE_CHECKING:
    from .connection import Connection
    from .protocol import client as pc

__all__ = ["ListenersMixin", "LoggedQuery", "QueryTimer", "QueryLoggerContext"]


class _NotLogged:
    """The query-logging context when no logger is installed: does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: Any) -> None:
        return None


_NOT_LOGGED = _NotLogged()


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class ListenersMixin:
    """Listener registries and the callbacks' dispatch (mixed into Connection)."""

    if TYPE_CHECKING:
        _loop: asyncio.AbstractEventLoop
        _background: set[asyncio.Task[Any]]

        def _check_open(self) -> None: ...
        def is_closed(self) -> bool: ...
        async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str: ...

    def _init_listeners(self) -> None:
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._log_listeners: list[Callable[..., Any]] = []
        self._termination_listeners: list[Callable[..., Any]] = []
        self._query_loggers: list[Callable[..., Any]] = []

    # -- dispatch (from the reader task) ----------------------------------------
    def _notification(self, ev: pc.Notification) -> None:
        for cb in list(self._listeners.get(ev.channel, ())):
            self._call_soon(cb, self, ev.process_id, ev.channel, ev.payload)

    def _notice(self, ev: pc.Notice) -> None:
        if self._log_listeners:
            from . import exceptions as exc

            msg = exc.PostgresLogMessage.new(ev.fields)
            for cb in list(self._log_listeners):
                self._call_soon(cb, self, msg)

    def _terminated(self) -> None:
        sse = getattr(self, "_sse", None)
        if sse is not None:
            sse.close()
        for cb in list(self._termination_listeners):
            self._call_soon(cb, self)

    def _call_soon(self, cb: Callable[..., Any], *args: Any) -> None:
        def run() -> None:
            try:
                res = cb(*args)
                if inspect.isawaitable(res):
                    self._spawn(res)
            except Exception as e:  # a listener must not break the connection
                self._loop.call_exception_handler({
                    "message": "unhandled exception in a connection callback",
                    "exception": e})
        self._loop.call_soon(run)

    def _spawn(self, aw: Awaitable[Any]) -> None:
        async def wrap() -> None:
            await aw
        task = self._loop.create_task(wrap())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- public API ------------------------------------------------------------
    async def add_listener(self, channel: str, callback: Callable[..., Any]) -> None:
        self._check_open()
        cbs = self._listeners.get(channel)
        if cbs is None:
            from .sse import sse_for  # http(s):// connections: GET /listen (Server-Sent Events)

            sse = sse_for(self)
            if sse is not None:  # registered first: a resumed stream replays missed events at once
                self._listeners[channel] = [callback]
                try:
                    await sse.listen(channel)
                except BaseException:
                    self._listeners.pop(channel, None)
                    raise
                return
            await self.execute(f"LISTEN {_quote_ident(channel)}")
            cbs = self._listeners.setdefault(channel, [])
        cbs.append(callback)

    async def remove_listener(self, channel: str, callback: Callable[..., Any]) -> None:
        if self.is_closed():
            return
        cbs = self._listeners.get(channel)
        if not cbs:
            return
        try:
            cbs.remove(callback)
        except ValueError:
            return
        if not cbs:
            del self._listeners[channel]
            sse = getattr(self, "_sse", None)
            if sse is not None:
                await sse.unlisten(channel)
            else:
                await self.execute(f"UNLISTEN {_quote_ident(channel)}")

    def add_log_listener(self, callback: Callable[..., Any]) -> None:
        """``callback(connection, message)`` (or a coroutine function) for each
        NOTICE/WARNING the server sends (a ``PostgresLogMessage``)."""
        if callback not in self._log_listeners:
            self._log_listeners.append(callback)

    def remove_log_listener(self, callback: Callable[..., Any]) -> None:
        try:
            self._log_listeners.remove(callback)
        except ValueError:
            pass

    def add_termination_listener(self, callback: Callable[..., Any]) -> None:
        """``callback(connection)`` (or a coroutine function) once the connection is closed."""
        if callback not in self._termination_listeners:
            self._termination_listeners.append(callback)

    def remove_termination_listener(self, callback: Callable[..., Any]) -> None:
        try:
            self._termination_listeners.remove(callback)
        except ValueError:
            pass

    def add_query_logger(self, callback: Callable[..., Any]) -> None:
        """``callback(record)`` (or a coroutine function) after each query of
        ``execute``/``fetch*``/``executemany``/``fetchmany``; ``record`` is a
        :class:`driver.listeners.LoggedQuery` (as asyncpg's)."""
        if callback not in self._query_loggers:
            self._query_loggers.append(callback)

    def remove_query_logger(self, callback: Callable[..., Any]) -> None:
        try:
            self._query_loggers.remove(callback)
        except ValueError:
            pass

    def query_logger(self, callback: Callable[..., Any]) -> Any:
        """Context manager: ``callback`` is a query logger inside the block."""
        return QueryLoggerContext(cast("Connection", self), callback)

    def _logged(self, query: str, args: Any, timeout: float | None) -> Any:
        if not self._query_loggers:
            return _NOT_LOGGED
        return QueryTimer(cast("Connection", self), query, args, timeout)



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
