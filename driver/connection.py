"""asyncpg-compatible connection over any :mod:`driver.transport`.

``Connection`` drives a sans-I/O :class:`~driver.protocol.client.ClientProtocol`:
a background reader task feeds it received bytes and dispatches its events
(request completions, notifications, notices); operations submit requests
and await their completion.  Its other concerns live in their own modules:
prepared statements, the statement cache and stale-statement retries in
:mod:`driver.statements`; listeners and query loggers in
:mod:`driver.listeners`; logging in (``connect()``'s transport, startup and
multiple hosts) in :mod:`driver.login`.
"""

from __future__ import annotations

import asyncio
import collections
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, Sequence

from . import exceptions as exc
from .listeners import ListenersMixin
from .protocol import client as pc
from .record import Record
from .statements import StatementsMixin, _Statement
from .requesting import RequestsMixin
from .transport import Connector, Endpoint, Transport

if TYPE_CHECKING:
    from . import codecs
    from .dsn import ConnectParams
    from .login import connect as connect
else:
    class _LazyCodecs:
        """``driver.codecs``, imported when a first statement needs it."""

        def __getattr__(self, name: str) -> Any:
            from . import codecs as module

            globals()["codecs"] = module
            return getattr(module, name)

    codecs = _LazyCodecs()

__all__ = ["Connection", "connect", "ServerVersion", "ConnectionSettings"]


class ServerVersion(NamedTuple):
    major: int
    minor: int
    micro: int
    releaselevel: str
    serial: int


def _parse_server_version(text: str) -> ServerVersion:
    m = re.match(r"\s*(\d+)(?:\.(\d+))?(?:\.(\d+))?\s*(?:(devel|beta|alpha|rc)(\d+)?)?", text)
    if m is None:
        return ServerVersion(0, 0, 0, "final", 0)
    major = int(m.group(1))
    minor = int(m.group(2) or 0)
    micro = int(m.group(3) or 0)
    level = m.group(4) or "final"
    serial = int(m.group(5) or 0)
    if major >= 10 and m.group(3) is None:
        # Since PostgreSQL 10 "X.Y" is major X, patch Y: asyncpg reports (X, 0, Y).
        minor, micro = 0, minor
    return ServerVersion(major, minor, micro, level, serial)


class ConnectionSettings:
    """Server parameters (ParameterStatus) with attribute access, like asyncpg."""

    __slots__ = ("_params",)

    def __init__(self, params: dict[str, str]) -> None:
        self._params = params

    def __getattr__(self, name: str) -> str:
        try:
            return self._params[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        return f"<ConnectionSettings {self._params!r}>"


def _check_record_class(record_class: Any) -> Any:
    """Validate a ``record_class=`` argument as asyncpg does (None stays None)."""
    if record_class is None or record_class is Record:
        return record_class
    if not (isinstance(record_class, type) and issubclass(record_class, Record)):
        raise exc.InterfaceError(
            f"record_class is expected to be a subclass of driver.Record, got {record_class!r}")
    if record_class.__new__ is not Record.__new__ or record_class.__init__ is not Record.__init__:
        raise exc.InterfaceError("record_class must not redefine __new__ or __init__")
    return record_class


# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


class Connection(RequestsMixin, StatementsMixin, ListenersMixin):
    """A connection to PostgreSQL (asyncpg-compatible subset)."""

    def __init__(self, transport: Transport, protocol: pc.ClientProtocol, connector: Connector,
                 endpoint: Endpoint, *, statement_cache_size: int = 100,
                 command_timeout: float | None = None, params: ConnectParams | None = None) -> None:
        self._transport = transport
        self._protocol = protocol
        self._connector = connector
        self._endpoint = endpoint
        self._params = params
        self._cache_size = max(0, int(statement_cache_size))
        self._command_timeout = command_timeout
        self._stmt_cache: collections.OrderedDict[str, _Statement] = collections.OrderedDict()
        self._pending_closes: list[str] = []
        self._stmt_counter = 0
        self._portal_counter = 0
        self._savepoint_counter = 0
        self._record_cls: Any = None
        self._init_listeners()
        self._busy = False
        self._closed = False
        self._send_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._reader_task: asyncio.Task[None] | None = None
        self._top_xact: Any = None
        self._background: set[asyncio.Task[Any]] = set()
        self._last_server_error: dict[str, str] | None = None
        self._cancelling: asyncio.Task[None] | None = None
        #: lazy_connect: the login not answered yet (see ``_finish_login``).
        self._login: tuple[pc.StartupRequest, asyncio.Future[None], float | None, bool] | None = None
        #: The running COPY TO STDOUT's buffer (see driver.copy).
        self._copy_sink: Any = None
        #: False: one-shot queries skip the Describe round trip (see ``_one_shot``).
        self._describe_first = True
        #: this connection's codecs (a private copy once a type is introspected or a
        #: custom codec set: see driver.introspection and driver.typecodecs)
        self._types: codecs.TypeRegistry = codecs.DEFAULT_REGISTRY
        self._type_rows: dict[int, Any] = {}
        self._type_overrides: dict[int, Any] = {}
        protocol.on_notice = None

    # -- lifecycle -----------------------------------------------------------
    def _start_reader(self) -> None:
        self._reader_task = self._loop.create_task(self._read_loop())

    async def _read_loop(self) -> None:
        proto = self._protocol
        transport = self._transport
        error: BaseException | None = None
        try:
            while True:
                data = await transport.recv()
                if not data:
                    break
                proto.receive_data(data)
                events = proto.next_events()
                if proto.has_data_to_send:
                    await self._flush()
                if events:
                    self._dispatch(events)
                if self._copy_sink is not None:
                    # COPY TO STDOUT: wake the writer; stop reading while it lags.
                    await self._copy_sink.received()
                if proto.state is pc.ProtocolState.FAILED:
                    break
        except asyncio.CancelledError:
            error = ConnectionAbortedError("reader cancelled")
        except Exception as e:  # transport failure
            error = e
        finally:
            proto.connection_lost(error)
            self._dispatch(proto.next_events())
            self._mark_closed()

    def _mark_closed(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._transport.abort()
        except Exception:
            pass
        self._terminated()

    def _dispatch(self, events: list[pc.Event]) -> None:
        for ev in events:
            t = type(ev)
            if t is pc.RequestDone:
                assert isinstance(ev, pc.RequestDone)
                fut = ev.request.tag
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif t is pc.Notification:
                assert isinstance(ev, pc.Notification)
                self._notification(ev)
            elif t is pc.Notice:
                assert isinstance(ev, pc.Notice)
                self._notice(ev)
            elif t is pc.CopyInStarted:
                # A COPY FROM STDIN outside copy_to_table() & co (driver.copy):
                # refuse it.  The COPY may already be over (its ErrorResponse/
                # ReadyForQuery arrived in the same chunk): nothing to fail then.
                assert isinstance(ev, pc.CopyInStarted)
                req = ev.request
                if isinstance(req, pc.CopyQuery) and req.on_copy_in is not None:
                    continue
                if req.copy_in_active:
                    self._protocol.copy_fail("COPY FROM STDIN is not supported by this client")
                    self._spawn(self._flush())
            elif t is pc.ServerError:
                assert isinstance(ev, pc.ServerError)
                self._last_server_error = ev.fields

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._protocol.data_to_send()
            if data:
                await self._transport.send(data)

    # -- public API: queries ---------------------------------------------------

    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        """Run ``query``; return the command tag of the (last) statement."""
        await self._acquire()
        try:
            with self._logged(query, args, timeout):
                deadline = self._deadline(timeout)
                if not args:
                    req = pc.SimpleQuery(query)
                    await self._request(req, deadline, query)
                    return req.status or ""
                _, result = await self._bind_execute(query, args, deadline)
                return result.status or ""
        finally:
            self._release()

    async def executemany(self, command: str, args: Iterable[Sequence[Any]], *,
                          timeout: float | None = None) -> None:
        """Run ``command`` for every argument tuple: one pipelined batch, one Sync."""
        await self._acquire()
        try:
            with self._logged(command, args, timeout):
                await self._executemany(command, args, self._deadline(timeout))
        finally:
            self._release()

    async def fetchmany(self, query: str, args: Iterable[Sequence[Any]], *,
                        timeout: float | None = None, record_class: Any = None) -> list[Any]:
        """Run ``query`` for every argument tuple (one batch); return all the rows."""
        record_class = _check_record_class(record_class)
        await self._acquire()
        try:
            with self._logged(query, args, timeout):
                return await self._executemany(query, args, self._deadline(timeout),
                                               rows=True, record_cls=record_class)
        finally:
            self._release()

    async def fetch(self, query: str, *args: Any, timeout: float | None = None,
                    record_class: Any = None) -> list[Any]:
        record_class = _check_record_class(record_class)
        await self._acquire()
        try:
            with self._logged(query, args, timeout):
                _, result = await self._bind_execute(query, args, self._deadline(timeout),
                                                     record_cls=record_class)
            return result.rows
        finally:
            self._release()

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None,
                       record_class: Any = None) -> Any:
        record_class = _check_record_class(record_class)
        await self._acquire()
        try:
            with self._logged(query, args, timeout):
                _, result = await self._bind_execute(query, args, self._deadline(timeout),
                                                     limit=1, record_cls=record_class)
            return result.rows[0] if result.rows else None
        finally:
            self._release()

    async def fetchval(self, query: str, *args: Any, column: int = 0,
                       timeout: float | None = None) -> Any:
        await self._acquire()
        try:
            with self._logged(query, args, timeout):
                _, result = await self._bind_execute(query, args, self._deadline(timeout),
                                                     limit=1)
            if not result.rows:
                return None
            return result.rows[0][column]
        finally:
            self._release()

    async def prepare(self, query: str, *, name: str | None = None, timeout: float | None = None,
                      record_class: Any = None) -> Any:
        from .prepared import PreparedStatement

        record_class = _check_record_class(record_class)
        await self._acquire()
        try:
            st = await self._prepare_statement(query, self._deadline(timeout), named=True)
        finally:
            self._release()
        return PreparedStatement(self, st, record_class)

    def cursor(self, query: str, *args: Any, prefetch: int | None = None,
               timeout: float | None = None, record_class: Any = None) -> Any:
        from .cursor import CursorFactory

        record_class = _check_record_class(record_class)
        self._check_open()
        return CursorFactory(self, query, None, args, prefetch, timeout, record_class)

    def transaction(self, *, isolation: str | None = None, readonly: bool = False,
                    deferrable: bool = False) -> Any:
        from .transaction import Transaction

        self._check_open()
        return Transaction(self, isolation, readonly, deferrable)

    # -- COPY (driver.copy) ----------------------------------------------------
    async def copy_from_table(self, table_name: str, *, output: Any, **kwargs: Any) -> str:
        """Copy a table to ``output`` (path, file-like or coroutine function);
        asyncpg's signature, see :func:`driver.copy.copy_from_table`."""
        from .copy import copy_from_table

        return await copy_from_table(self, table_name, output=output, **kwargs)

    async def copy_from_query(self, query: str, *args: Any, output: Any, **kwargs: Any) -> str:
        """Copy a query's result to ``output``; see :func:`driver.copy.copy_from_query`."""
        from .copy import copy_from_query

        return await copy_from_query(self, query, *args, output=output, **kwargs)

    async def copy_to_table(self, table_name: str, *, source: Any, **kwargs: Any) -> str:
        """Copy ``source`` (path, file-like, async iterable of bytes, bytes)
        into a table; see :func:`driver.copy.copy_to_table`."""
        from .copy import copy_to_table

        return await copy_to_table(self, table_name, source=source, **kwargs)

    async def copy_records_to_table(self, table_name: str, *, records: Any,
                                    **kwargs: Any) -> str:
        """Binary COPY of ``records`` (iterable or async iterable of sequences);
        see :func:`driver.copy.copy_records_to_table`."""
        from .copy import copy_records_to_table

        return await copy_records_to_table(self, table_name, records=records, **kwargs)

    # -- type codecs (driver.typecodecs, loaded on first use) ----------------------
    async def set_type_codec(self, typename: str, *, schema: str = "public",
                             encoder: Callable[[Any], Any], decoder: Callable[[Any], Any],
                             format: str = "text") -> None:
        """Use ``encoder``/``decoder`` for ``schema.typename`` on this connection
        (and for arrays of it and composite fields), like asyncpg."""
        from . import typecodecs

        self._check_open()
        await typecodecs.set_type_codec(self, typename, schema=schema, encoder=encoder,
                                        decoder=decoder, format=format)

    async def reset_type_codec(self, typename: str, *, schema: str = "public") -> None:
        """Back to the default codec of ``schema.typename``."""
        from . import typecodecs

        self._check_open()
        await typecodecs.reset_type_codec(self, typename, schema=schema)

    async def set_builtin_type_codec(self, typename: str, *, schema: str = "public",
                                     codec_name: str, format: str | None = None) -> None:
        """Exchange ``schema.typename`` with the builtin codec ``codec_name``
        (a core type name, or ``"pg_contrib.hstore"``)."""
        from . import typecodecs

        self._check_open()
        await typecodecs.set_builtin_type_codec(self, typename, schema=schema,
                                                codec_name=codec_name, format=format)

    async def reload_schema_state(self) -> None:
        """Forget introspected types and cached statements (after DDL changed types)."""
        from . import typecodecs

        await typecodecs.reload_schema_state(self)

    # -- state -------------------------------------------------------------------
    def is_closed(self) -> bool:
        return self._closed

    def is_in_transaction(self) -> bool:
        return self._protocol.transaction_status != "I"

    def get_server_pid(self) -> int:
        return self._protocol.backend_pid or 0

    def get_server_version(self) -> ServerVersion:
        return _parse_server_version(self._protocol.parameters.get("server_version", ""))

    def get_settings(self) -> ConnectionSettings:
        return ConnectionSettings(self._protocol.parameters)

    @property
    def transport(self) -> Transport:
        return self._transport

    @property
    def protocol(self) -> pc.ClientProtocol:
        return self._protocol

    async def reset(self, *, timeout: float | None = None) -> None:
        """Return the session to a clean state (as a pool does on release)."""
        self._check_open()
        parts = []
        if self.is_in_transaction():
            parts.append("ROLLBACK;")
        self._top_xact = None
        parts.append("SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL;")
        self._listeners.clear()
        await self.execute("".join(parts), timeout=timeout)

    async def close(self, *, timeout: float | None = None) -> None:
        """Close gracefully: send Terminate and close the transport."""
        if self._closed:
            return
        try:
            self._protocol.terminate()
            self._dispatch(self._protocol.next_events())
            await asyncio.wait_for(self._flush(), timeout)
        except Exception:
            pass
        self._closed = True
        try:
            self._transport.close()
            await asyncio.wait_for(self._transport.wait_closed(), timeout or 5)
        except Exception:
            self._transport.abort()
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except BaseException:
                pass
        self._terminated()

    def terminate(self) -> None:
        """Close the connection immediately."""
        if not self._closed:
            self._protocol.connection_lost(ConnectionAbortedError("terminated"))
            self._dispatch(self._protocol.next_events())
        self._mark_closed()
        if self._reader_task is not None:
            self._reader_task.cancel()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<driver.Connection {state} pid={self._protocol.backend_pid}>"


def __getattr__(name: str) -> Any:
    # connect() lives in driver.login (it imports this module): loaded on first use
    if name == "connect":
        from .login import connect

        globals()["connect"] = connect
        return connect
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
