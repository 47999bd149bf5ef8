"""asyncpg-compatible connection over any :mod:`driver.transport`.

``Connection`` drives a sans-I/O :class:`~driver.protocol.client.ClientProtocol`:
a background reader task feeds it received bytes and dispatches its events
(request completions, notifications, notices); operations submit requests
and await their completion.
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import re
import sys
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, NamedTuple, Sequence

from . import exceptions as exc
from .protocol import client as pc
from .protocol.framing import AuthenticationError
from .protocol.framing import ProtocolError as FramingError
from .protocol.messages import FieldDescription, RowDescription, decode_backend
from .record import Record, make_mapping
from .transport import Connector, Endpoint, Transport, TransportError, get_connector

if TYPE_CHECKING:
    from . import codecs
    from .dsn import ConnectParams
else:
    class _LazyCodecs:
        """``driver.codecs``, imported when a first statement needs it."""

        def __getattr__(self, name: str) -> Any:
            from . import codecs as module

            globals()["codecs"] = module
            return getattr(module, name)

    codecs = _LazyCodecs()

__all__ = ["Connection", "connect", "ServerVersion", "ConnectionSettings"]

_BUSY_MSG = "cannot perform operation: another operation is in progress"


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


# ---------------------------------------------------------------------------
# Statements
# ---------------------------------------------------------------------------


class _Statement:
    """A server-side prepared statement (or the unnamed one) and its codecs."""

    __slots__ = ("name", "query", "param_oids", "fields", "result_formats", "row_decoder",
                 "mapping", "closed", "last_status", "_values_decoder", "_decoders")

    def __init__(self, name: str, query: str, param_oids: Sequence[int],
                 fields: Sequence[FieldDescription], record_cls: Any,
                 types: codecs.TypeRegistry | None = None) -> None:
        if types is None:
            types = codecs.DEFAULT_REGISTRY
        self.name = name
        self.query = query
        self.param_oids = tuple(param_oids)
        self.fields = tuple(fields)
        self.result_formats = [types.result_format_for(f.type_oid) for f in self.fields]
        dec = types.build_row_decoder([(f.type_oid, fmt) for f, fmt in
                                       zip(self.fields, self.result_formats)])
        self.mapping = make_mapping([f.name for f in self.fields])
        self._values_decoder = dec
        self._decoders: dict[Any, pc.RowDecoder] = {}
        self.row_decoder: pc.RowDecoder = self.decoder_for(record_cls)
        self.closed = False
        self.last_status: str | None = None

    def decoder_for(self, record_cls: Any) -> pc.RowDecoder:
        """DataRow body -> an instance of ``record_cls`` (``Record`` if None)."""
        rec = Record if record_cls is None else record_cls
        decode = self._decoders.get(rec)
        if decode is None:
            def decode(body: bytes, _rec: Any = rec, _m: dict[str, int] = self.mapping,
                       _d: Any = self._values_decoder) -> Any:
                return _rec(_m, _d(body))
            self._decoders[rec] = decode
        return decode


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


def _text_row_factory(columns: Sequence[tuple[int, int]]) -> pc.RowDecoder:
    return codecs.build_row_decoder(columns)


class _OneShotQuery(pc.ExtendedQuery):
    """An ExtendedQuery whose rows (text format) become Records as they arrive."""

    __slots__ = ("record_cls", "types", "raw_rows")

    def __init__(self, record_cls: Any, types: codecs.TypeRegistry) -> None:
        super().__init__()
        self.record_cls = record_cls
        self.types = types
        #: the rows are kept raw: some column types must be introspected first
        self.raw_rows = False

    def _row_description(self, body: bytes, factory: pc.RowDecoderFactory) -> None:
        msg = decode_backend(ord("T"), body)
        assert isinstance(msg, RowDescription)
        fields = msg.fields
        self.fields = fields
        if any(f.type_oid not in self.types for f in fields):
            self.raw_rows = True
            for res in self.results:
                if res.decoder is None:
                    res.fields = fields
                    res.decoder = bytes
            return
        self._set_decoders(fields)

    def _set_decoders(self, fields: tuple[FieldDescription, ...]) -> Any:
        dec = self.types.build_row_decoder([(f.type_oid, 0) for f in fields])
        mapping = make_mapping([f.name for f in fields])
        rec = Record if self.record_cls is None else self.record_cls

        def decode(row: bytes, _rec: Any = rec, _m: dict[str, int] = mapping, _d: Any = dec) -> Any:
            return _rec(_m, _d(row))
        for res in self.results:
            if res.decoder is None:
                res.fields = fields
                res.decoder = decode
        return decode


class _NotLogged:
    """The query-logging context when no logger is installed: does nothing."""

    __slots__ = ()

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: Any) -> None:
        return None


_NOT_LOGGED = _NotLogged()


_IP_TYPES = frozenset({"IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network",
                       "IPv4Interface", "IPv6Interface"})


class _NoText(Exception):
    pass


def _text_value(v: Any, in_array: bool = False) -> str:
    """PostgreSQL text input for a Python value (types the server will infer)."""
    t = type(v)
    if t is str:
        return str(v)
    if t is bool:
        return "t" if v else "f"
    if t is int:
        return str(v)
    if t is float:
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if t in (bytes, bytearray, memoryview):
        return "\\x" + bytes(v).hex()
    # by module and name: the modules need not be imported to check
    mod, name = t.__module__, t.__name__
    if mod == "decimal" and name == "Decimal":
        return str(v)
    if mod == "datetime":
        if name in ("datetime", "date", "time"):
            return str(v.isoformat())
        if name == "timedelta":
            return f"{v.days} days {v.seconds} seconds {v.microseconds} microseconds"
    if (mod == "uuid" and name == "UUID") or (mod == "ipaddress" and name in _IP_TYPES):
        return str(v)
    if t is list:
        # tuples are not arrays here: nested in a list they are elements (records,
        # points...) for asyncpg; their type must come from a Describe
        parts = []
        for x in v:
            if x is None:
                parts.append("NULL")
            elif type(x) is list:
                parts.append(_text_value(x, True))
            else:
                s = _text_value(x, True)
                parts.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
        return "{" + ",".join(parts) + "}"
    raise _NoText


def _text_params(args: Sequence[Any]) -> list[bytes | None] | None:
    """Arguments as text-format parameters, or None when one of them has a
    type this path does not handle (the caller then Describes first)."""
    out: list[bytes | None] = []
    try:
        for a in args:
            out.append(None if a is None else _text_value(a).encode("utf-8"))
    except _NoText:
        return None
    return out


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _status_rowcount(status: str | None) -> int:
    if not status:
        return 0
    parts = status.split()
    try:
        return int(parts[-1])
    except (ValueError, IndexError):
        return 0


# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


class Connection:
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
        self._listeners: dict[str, list[Callable[..., Any]]] = {}
        self._log_listeners: list[Callable[..., Any]] = []
        self._termination_listeners: list[Callable[..., Any]] = []
        self._query_loggers: list[Callable[..., Any]] = []
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
        for cb in list(self._termination_listeners):
            self._call_soon(cb, self)

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
                for cb in list(self._listeners.get(ev.channel, ())):
                    self._call_soon(cb, self, ev.process_id, ev.channel, ev.payload)
            elif t is pc.Notice:
                assert isinstance(ev, pc.Notice)
                if self._log_listeners:
                    msg = exc.PostgresLogMessage.new(ev.fields)
                    for cb in list(self._log_listeners):
                        self._call_soon(cb, self, msg)
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

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._protocol.data_to_send()
            if data:
                await self._transport.send(data)

    # -- request plumbing ----------------------------------------------------
    def _check_open(self) -> None:
        if self._closed:
            raise exc.InterfaceError("connection is closed")

    async def _acquire(self) -> None:
        if self._cancelling is not None:
            # A cancelled operation is still being cancelled on the server: wait for it.
            await asyncio.shield(self._cancelling)
        self._check_open()
        if self._busy:
            raise exc.InterfaceError(_BUSY_MSG)
        self._busy = True

    def _release(self) -> None:
        self._busy = False

    def _deadline(self, timeout: float | None) -> float | None:
        if timeout is None:
            timeout = self._command_timeout
        if timeout is None:
            return None
        if timeout <= 0:
            raise ValueError("timeout must be a positive number")
        return self._loop.time() + timeout

    async def _request(self, req: pc.Request, deadline: float | None,
                       query: str | None = None) -> pc.Request:
        """Submit ``req``, wait for it (cancelling on the server at the deadline)."""
        fut = await self._submit(req, deadline)
        await self._wait(req, fut, deadline, query)
        return req

    async def _submit(self, req: pc.Request, deadline: float | None) -> asyncio.Future[None]:
        """Send ``req``; return the future done at its end (see :meth:`_wait`)."""
        self._check_open()
        fut: asyncio.Future[None] = self._loop.create_future()
        req.tag = fut
        try:
            self._protocol.submit(req)
            await self._flush()
        except pc.ConnectionLost as e:
            raise exc.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation") from e
        except (OSError, TransportError) as e:
            self._lost(e)
            raise exc.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation") from e
        if self._login is not None:
            # lazy_connect: this request went out right behind the login.
            await self._finish_login(deadline)
        return fut

    def _lost(self, e: BaseException) -> None:
        """The transport failed while sending."""
        self._protocol.connection_lost(e)
        self._dispatch(self._protocol.next_events())
        self._mark_closed()

    async def _wait(self, req: pc.Request, fut: asyncio.Future[None], deadline: float | None,
                    query: str | None = None) -> None:
        """Wait for a submitted request; raise its error (cancel it at the deadline)."""
        if not fut.done():
            if deadline is None:
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    self._cancel_in_background(fut)
                    raise
            else:
                remaining = deadline - self._loop.time()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError()
                    await asyncio.wait_for(asyncio.shield(fut), remaining)
                except asyncio.TimeoutError:
                    await self._cancel_and_wait(fut)
                    raise asyncio.TimeoutError() from None
                except asyncio.CancelledError:
                    self._cancel_in_background(fut)
                    raise
        self._raise_for(req, query)

    async def _finish_login(self, deadline: float | None) -> None:
        """lazy_connect: wait for the login sent with the first request; raise
        what ``connect()`` would have raised if it failed."""
        assert self._login is not None
        startup, fut, login_timeout, pipelined = self._login
        timeout = login_timeout if deadline is None else max(0.0, deadline - self._loop.time())
        try:
            if not fut.done():
                await asyncio.wait_for(asyncio.shield(fut), timeout)
        except BaseException:
            self._login = None
            self.terminate()
            raise
        self._login = None
        if startup.error is not None or startup.exception is not None:
            self.terminate()
            raise _login_error(startup, self._last_server_error, pipelined)

    def _raise_for(self, req: pc.Request, query: str | None) -> None:
        if req.error is not None and isinstance(req.exception, pc.ConnectionLost):
            # A FATAL error, then the server closed the connection (as asyncpg reports it).
            raise exc.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation: "
                + req.error.get("M", "")) from exc.PostgresError.new(req.error, query)
        if req.error is not None:
            raise exc.PostgresError.new(req.error, query)
        if req.exception is not None:
            e = req.exception
            if isinstance(e, pc.RowDecodeError):
                if isinstance(e.original, exc.OutdatedSchemaCacheError):
                    # a type changed (ALTER TYPE): forget the types, as asyncpg does
                    from .typecodecs import forget_types

                    forget_types(self)
                raise e.original  # a decoder raised: its exception, as asyncpg does
            if isinstance(e, pc.ConnectionLost):
                raise exc.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation") from e
            if isinstance(e, (FramingError, pc.ClientProtocolError)):
                raise exc.InterfaceError(f"protocol error: {e}") from e
            raise exc.InterfaceError(str(e)) from e

    async def _send_cancel(self) -> None:
        pid = self._protocol.backend_pid
        key = self._protocol.backend_secret
        if pid is None or key is None:
            raise exc.InterfaceError("cannot cancel: no BackendKeyData received")
        await self._connector.cancel(self._endpoint, pid, key)

    async def _cancel_and_wait(self, fut: asyncio.Future[None]) -> None:
        """Cancel the running query on the server and wait for its request to end."""
        try:
            await asyncio.wait_for(self._send_cancel(), 30)
            await asyncio.wait_for(asyncio.shield(fut), 30)
        except BaseException:
            self.terminate()
            raise

    def _cancel_in_background(self, fut: asyncio.Future[None]) -> None:
        """The awaiting task was cancelled: cancel on the server, keep the
        connection busy until the request has ended."""
        self._busy = True

        async def run() -> None:
            try:
                await self._cancel_and_wait(fut)
            except BaseException:
                pass
            finally:
                self._busy = False
                self._cancelling = None

        self._cancelling = self._loop.create_task(run())

    # -- statements ------------------------------------------------------------
    def _next_stmt_name(self) -> str:
        self._stmt_counter += 1
        return f"__wp_stmt_{self._stmt_counter}__"

    def _queue_closes(self, req: pc.ExtendedQuery) -> None:
        if self._pending_closes:
            for name in self._pending_closes:
                req.close_statement(name)
            self._pending_closes.clear()

    async def _prepare_statement(self, query: str, deadline: float | None, *,
                                 named: bool = False, use_cache: bool = True) -> _Statement:
        cacheable = use_cache and not named and self._cache_size > 0
        if cacheable:
            st = self._stmt_cache.get(query)
            if st is not None:
                self._stmt_cache.move_to_end(query)
                return st
        name = self._next_stmt_name() if (named or cacheable) else ""
        req = pc.ExtendedQuery()
        self._queue_closes(req)
        req.parse(name, query).describe_statement(name)
        await self._request(req, deadline, query)
        await self._ensure_types(req.param_oids or (), req.fields or (), deadline)
        st = _Statement(name, query, req.param_oids or (), req.fields or (), self._record_cls,
                        self._types)
        if cacheable:
            self._stmt_cache[query] = st
            while len(self._stmt_cache) > self._cache_size:
                _, old = self._stmt_cache.popitem(last=False)
                old.closed = True
                self._pending_closes.append(old.name)
        return st

    async def _ensure_types(self, param_oids: Sequence[int],
                            fields: Sequence[FieldDescription], deadline: float | None) -> None:
        """Introspect the types of a statement the codecs don't know (one query)."""
        types = self._types
        unknown = [o for o in param_oids if o not in types]
        unknown += [f.type_oid for f in fields if f.type_oid not in types]
        if unknown:
            from .introspection import introspect

            await introspect(self, unknown, deadline)

    def _own_types(self) -> codecs.TypeRegistry:
        """This connection's private registry (copied from the builtin one on first use)."""
        if self._types is codecs.DEFAULT_REGISTRY:
            self._types = codecs.DEFAULT_REGISTRY.copy()
        return self._types

    def _invalidate(self, st: _Statement) -> None:
        cached = self._stmt_cache.get(st.query)
        if cached is st:
            del self._stmt_cache[st.query]
            self._pending_closes.append(st.name)
            st.closed = True

    def _encode(self, st: _Statement, args: Sequence[Any],
                element: int | None = None) -> tuple[list[int], list[bytes | None]]:
        try:
            return self._types.encode_params(st.param_oids, args)
        except codecs.EncodeError as e:
            if e.position is None:
                raise exc.InterfaceError(
                    str(e), hint="Check the query against the passed list of arguments.") from None
            msg = str(e)
            if element is not None:  # as asyncpg words it for executemany()
                prefix = f"invalid input for query argument ${e.position}"
                if msg.startswith(prefix):
                    msg = (f"{prefix} in element #{element} of executemany() sequence"
                           + msg[len(prefix):])
            raise exc.DataError(msg) from None

    def _add_bind_execute(self, req: pc.ExtendedQuery, st: _Statement, args: Sequence[Any], *,
                          portal: str = "", max_rows: int = 0,
                          record_cls: Any = None, element: int | None = None) -> pc.QueryResult:
        formats, values = self._encode(st, args, element)
        req.bind(portal, st.name, formats, values, st.result_formats)
        decoder = st.row_decoder if record_cls is None else st.decoder_for(record_cls)
        return req.execute(portal, max_rows, decoder)

    def _stale_statement(self, e: exc.PostgresError, stmt: _Statement) -> bool:
        """Forget what ``e`` says is stale; True if the statement may be
        prepared again and retried (outside a transaction, as asyncpg)."""
        if isinstance(e, exc.InvalidCachedStatementError):
            # A cached plan's result type changed (ALTER TABLE, search_path...):
            # asyncpg drops the whole statement cache.
            self._drop_statement_cache()
        elif getattr(e, "sqlstate", None) == "26000":  # the server lost the statement
            self._invalidate(stmt)
        else:
            return False
        return self._protocol.transaction_status == "I"

    def _drop_statement_cache(self) -> None:
        for st in self._stmt_cache.values():
            st.closed = True
            self._pending_closes.append(st.name)
        self._stmt_cache.clear()

    async def _bind_execute(self, query: str, args: Sequence[Any], deadline: float | None, *,
                            st: _Statement | None = None, limit: int = 0,
                            record_cls: Any = None) -> tuple[_Statement, pc.QueryResult]:
        retry = st is None
        if st is None and not self._describe_first and not self._type_overrides and not (
                self._cache_size > 0 and query in self._stmt_cache):
            values = _text_params(args)
            if values is not None:
                return await self._one_shot(query, values, deadline, limit, record_cls)
        while True:
            stmt = st if st is not None else await self._prepare_statement(query, deadline)
            req = pc.ExtendedQuery()
            self._queue_closes(req)
            if stmt.name == "":
                req.parse("", stmt.query, stmt.param_oids)
            result = self._add_bind_execute(req, stmt, args, max_rows=limit,
                                            record_cls=record_cls)
            try:
                await self._request(req, deadline, query)
            except exc.PostgresError as e:
                if self._stale_statement(e, stmt) and retry:
                    retry = False
                    continue
                raise
            stmt.last_status = result.status
            return stmt, result

    async def _one_shot(self, query: str, values: list[bytes | None], deadline: float | None,
                        limit: int, record_cls: Any = None) -> tuple[_Statement, pc.QueryResult]:
        """ONE round trip for a statement not prepared yet (``describe_first=False``):

        Parse + Describe(statement) + Bind (parameters in TEXT format, their
        types inferred by the server as for a Describe) + Execute + Sync in
        one batch.  Result columns come back in text format and are decoded
        by the text codecs into the same Python types as the binary ones.
        With a statement cache the statement is named and cached (later
        calls use the binary, typed path); otherwise it is the unnamed one.
        """
        name = self._next_stmt_name() if self._cache_size > 0 else ""
        req = _OneShotQuery(record_cls if record_cls is not None else self._record_cls,
                            self._types)
        self._queue_closes(req)
        req.parse(name, query).describe_statement(name)
        req.bind("", name, (), values, ())
        result = req.execute("", limit)
        try:
            await self._request(req, deadline, query)
        except BaseException:
            if name:
                self._pending_closes.append(name)  # it may exist on the server
            raise
        if req.raw_rows:  # non-builtin column types: introspect, then decode
            await self._ensure_types((), req.fields or (), deadline)
            req.types = self._types
            decode = req._set_decoders(req.fields or ())
            result.rows = [decode(b) for b in result.rows]
        st = _Statement(name, query, req.param_oids or (), req.fields or (), self._record_cls,
                        self._types)
        st.last_status = result.status
        if name:
            self._stmt_cache[query] = st
            while len(self._stmt_cache) > self._cache_size:
                _, old = self._stmt_cache.popitem(last=False)
                old.closed = True
                self._pending_closes.append(old.name)
        return st, result

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

    async def _executemany(self, command: str, args: Iterable[Sequence[Any]],
                           deadline: float | None, st: _Statement | None = None, *,
                           rows: bool = False, record_cls: Any = None) -> list[Any]:
        args = args if isinstance(args, (list, tuple)) else list(args)
        retry = st is None
        while True:
            stmt = st if st is not None else await self._prepare_statement(command, deadline)
            if not args:
                return []
            req = pc.ExtendedQuery()
            if stmt.name == "":
                req.parse("", stmt.query, stmt.param_oids)
            results = [self._add_bind_execute(req, stmt, a, element=n, record_cls=record_cls)
                       for n, a in enumerate(args)]
            self._queue_closes(req)
            try:
                await self._request(req, deadline, command)
            except exc.PostgresError as e:
                if self._stale_statement(e, stmt) and retry:
                    retry = False
                    continue
                raise
            stmt.last_status = results[-1].status
            if not rows:
                return []
            return [r for res in results for r in res.rows]

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

    # -- LISTEN / NOTIFY, notices ----------------------------------------------
    async def add_listener(self, channel: str, callback: Callable[..., Any]) -> None:
        self._check_open()
        cbs = self._listeners.get(channel)
        if cbs is None:
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
        from .listeners import QueryLoggerContext

        return QueryLoggerContext(self, callback)

    def _logged(self, query: str, args: Any, timeout: float | None) -> Any:
        if not self._query_loggers:
            return _NOT_LOGGED
        from .listeners import QueryTimer

        return QueryTimer(self, query, args, timeout)

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
        for cb in list(self._termination_listeners):
            self._call_soon(cb, self)

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


# ---------------------------------------------------------------------------
# connect()
# ---------------------------------------------------------------------------


async def connect(dsn: str | None = None, *, host: str | None = None, port: int | None = None,
                  user: str | None = None, password: str | None = None,
                  database: str | None = None, ssl: Any = None, timeout: float = 60,
                  command_timeout: float | None = None, statement_cache_size: int = 100,
                  server_settings: dict[str, str] | None = None,
                  pipeline_password: bool = False, connection_class: type[Connection] = Connection,
                  pipeline_connect: str | bool | None = None,
                  lazy_connect: bool | None = None, describe_first: bool | None = None,
                  record_class: Any = None, **extra: Any) -> Connection:
    """Open a connection (asyncpg-compatible signature).

    ``pipeline_connect="password"`` (or the DSN parameter
    ``?pipeline_connect=password`` on ws/wss URLs; ``pipeline_password=True``
    is the same): send the cleartext password in the same write as the
    StartupMessage -- one round trip to log in -- for servers known to ask
    for a cleartext password (a wirepool gateway with ``auth_type =
    "password"``).  Off by default: it hands the password in clear to the
    server.  If the server asks for another method (SCRAM, MD5) the attempt
    is abandoned and the driver reconnects once without pipelining.

    Fewer round trips (for edge runtimes; both off by default, also settable
    as ``?lazy_connect=true`` / ``?describe_first=false`` on ws/http DSNs):

    * ``lazy_connect=True`` with a pipelined login (``pipeline_connect=
      "password"``, or an API ``token`` in the DSN: no password exchange):
      ``connect()`` returns as soon as the transport is open, WITHOUT waiting
      for the server; the login bytes are sent together with the first
      operation's batch, in the same write, so connect + first query cost ONE
      round trip after the WebSocket handshake.  A failed login surfaces at
      that first operation with the exception ``connect()`` would have raised
      (``InvalidPasswordError``, ...).  Server parameters, the backend pid and
      the server version are known only after the first operation.  Without
      a pipelined login, ``lazy_connect`` is ignored (the login needs the
      server's answers anyway).  There is no automatic fallback in this mode:
      if the server asks for another authentication method the first
      operation fails (the pipelined request was already sent).
    * ``describe_first=False``: a query with arguments whose statement is not
      prepared yet runs in ONE round trip instead of two (Parse + Describe +
      Bind + Execute + Sync; arguments sent as text with types inferred by
      the server; results in text format, decoded to the same Python types
      as asyncpg's binary codecs).  See :meth:`Connection._one_shot` and
      docs/round-trips.md for the differences from asyncpg's checks.
    """
    if pipeline_connect is None:
        dsn_mode = _dsn_pipeline_mode(dsn)
        pipeline_connect = dsn_mode
    if lazy_connect is None:
        lazy_connect = _dsn_flag(dsn, "lazy_connect", False)
    if describe_first is None:
        describe_first = _dsn_flag(dsn, "describe_first", True)
    if pipeline_connect not in (None, False, True, "password", "false", ""):
        raise exc.ClientConfigurationError(
            f"invalid pipeline_connect {pipeline_connect!r}: expected \"password\" or False")
    if pipeline_connect in (True, "password"):
        pipeline_password = True
    record_class = _check_record_class(record_class)
    from .dsn import _timeout as _check_timeout
    from .dsn import parse_dsn

    try:
        # timeout=None: params.connect_timeout is then the DSN's connect_timeout
        # (or PGCONNECT_TIMEOUT), which caps the timeout argument below.
        params = parse_dsn(dsn, host=host, port=port, user=user, password=password,
                           database=database, ssl=ssl, timeout=None,
                           server_settings=server_settings, **extra)
        if timeout is not None:
            _check_timeout(timeout, "the timeout argument")
    except exc.InterfaceError:
        raise
    except ValueError as e:
        raise exc.ClientConfigurationError(str(e)) from e
    try:
        connector = get_connector(params.scheme)
    except ValueError as e:
        raise exc.ClientConfigurationError(str(e)) from e
    if params.connect_timeout and (timeout is None or params.connect_timeout < timeout):
        timeout = params.connect_timeout
    ssl_mod = sys.modules.get("ssl")  # an SSLContext argument implies ssl is imported
    ssl_context = (params.ssl if ssl_mod is not None and isinstance(params.ssl, ssl_mod.SSLContext)
                   else None)
    endpoint = Endpoint(scheme=params.scheme, host=params.host, port=params.port,
                        sslmode=params.sslmode, ssl_context=ssl_context,
                        connect_timeout=timeout,
                        options={"path": params.path, "query": dict(params.query),
                                 "params": params})
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - loop.time())

    transport = await asyncio.wait_for(connector.connect(endpoint), remaining())
    protocol = pc.ClientProtocol(params.user, params.database, password=params.password,
                                 server_settings=params.server_settings,
                                 row_decoder_factory=_text_row_factory)
    conn = connection_class(transport, protocol, connector, endpoint,
                            statement_cache_size=statement_cache_size,
                            command_timeout=command_timeout, params=params)
    conn._describe_first = bool(describe_first)
    conn._record_cls = record_class
    pipelined = pipeline_password and params.password is not None
    token_login = bool(params.query.get("token")) and params.scheme in ("ws", "wss")
    lazy = bool(lazy_connect) and (pipelined or token_login)
    startup = protocol.start(pipeline_password=pipelined, pipeline_requests=lazy and token_login)
    fut: asyncio.Future[None] = loop.create_future()
    startup.tag = fut
    conn._start_reader()
    if lazy:
        # The login goes out with the first operation (see Connection._finish_login).
        conn._login = (startup, fut, remaining() if deadline is not None else None, pipelined)
        return conn
    try:
        await conn._flush()
        await asyncio.wait_for(asyncio.shield(fut), remaining())
    except BaseException:
        conn.terminate()
        raise
    if startup.error is not None or startup.exception is not None:
        conn.terminate()
        failure = startup.exception
        if (startup.error is None and pipelined
                and isinstance(failure, pc.UnsupportedAuthentication)):
            # not a cleartext-password server: log in the normal way
            return await connect(dsn, host=host, port=port, user=user, password=password,
                                 database=database, ssl=ssl, timeout=max(remaining() or 0.0, 0.001) if deadline is not None else timeout,
                                 command_timeout=command_timeout,
                                 statement_cache_size=statement_cache_size,
                                 server_settings=server_settings, pipeline_password=False,
                                 connection_class=connection_class,
                                 pipeline_connect=False, lazy_connect=False,
                                 describe_first=describe_first, record_class=record_class,
                                 **extra)
        raise _login_error(startup, conn._last_server_error, pipelined)
    return conn


def _login_error(startup: pc.StartupRequest, last_server_error: dict[str, str] | None,
                 pipelined: bool) -> BaseException:
    """The exception for a failed login (what ``connect()`` raises)."""
    if startup.error is not None:
        return exc.PostgresError.new(startup.error)
    failure = startup.exception
    err: BaseException
    if isinstance(failure, AuthenticationError):
        if failure.sqlstate == "28P01":
            err = exc.InvalidPasswordError(str(failure))
        else:
            err = exc.InterfaceError(f"authentication failed: {failure}")
    elif isinstance(failure, pc.UnsupportedAuthentication):
        err = exc.InterfaceError(str(failure))
    elif isinstance(failure, pc.ConnectionLost):
        if last_server_error is not None:
            return exc.PostgresError.new(last_server_error)
        err = exc.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    else:
        err = exc.InterfaceError(str(failure))
    err.__cause__ = failure
    return err


def _dsn_flag(dsn: str | None, name: str, default: bool) -> bool:
    """A boolean query parameter (``true/false/1/0/on/off``) of a ws/http DSN."""
    if not dsn or f"{name}=" not in dsn or not dsn.lower().startswith(("ws:", "wss:", "http:", "https:")):
        return default
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(dsn).query).get(name)
    if not values:
        return default
    v = values[-1].strip().lower()
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise exc.ClientConfigurationError(f"invalid {name} {values[-1]!r}: expected true or false")


def _dsn_pipeline_mode(dsn: str | None) -> str | None:
    """The ``pipeline_connect`` query parameter of a ws/wss DSN, if any."""
    if not dsn or "pipeline_connect=" not in dsn or not dsn.lower().startswith(("ws:", "wss:")):
        return None
    from urllib.parse import parse_qs, urlsplit

    values = parse_qs(urlsplit(dsn).query).get("pipeline_connect")
    return values[-1] if values else None
