"""Logging in: what :func:`driver.connection.connect` does after reading its arguments.

Opens the transport, sends the StartupMessage (the password pipelined with it
when asked, the whole login deferred to the first operation with
``lazy_connect``) and waits for the server's answers.  With several hosts
(``host=a,b``, ``postgresql://u@a:5432,b:5433/db``, a list of hosts) they are
tried in order, as asyncpg does: a host that cannot be reached (``OSError``,
timeout, connection closed during the login) is skipped, any other error is
raised; ``target_session_attrs`` (``any``, ``primary``, ``standby``,
``read-write``, ``read-only``, ``prefer-standby``; keyword argument, DSN
parameter or ``PGTARGETSESSIONATTRS``) picks a server by role.  The one
deadline (``timeout``) covers all the attempts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import TYPE_CHECKING, Any

from . import exceptions as exc
from .protocol import client as pc
from .protocol.framing import AuthenticationError
from .transport import Endpoint, TransportError, get_connector
from .transport.base import HandshakeError

from .connection import Connection, _check_record_class

if TYPE_CHECKING:
    from .dsn import ConnectParams
    from .transport import Connector

__all__ = ["connect", "open_connection", "TARGET_SESSION_ATTRS"]

TARGET_SESSION_ATTRS = ("any", "primary", "standby", "read-write", "read-only", "prefer-standby")


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

    Several hosts (``host=a,b``, a list, ``postgresql://u@a:1,b:2/db``) are
    tried in order, and ``target_session_attrs`` picks one by role, as asyncpg
    does: see :mod:`driver.login`.
    """
    from .dsn import _timeout as _check_timeout
    from .dsn import parse_dsn

    if pipeline_connect is None:
        pipeline_connect = dsn_pipeline_mode(dsn)
    if lazy_connect is None:
        lazy_connect = dsn_flag(dsn, "lazy_connect", False)
    if describe_first is None:
        describe_first = dsn_flag(dsn, "describe_first", True)
    if pipeline_connect not in (None, False, True, "password", "false", ""):
        raise exc.ClientConfigurationError(
            f"invalid pipeline_connect {pipeline_connect!r}: expected \"password\" or False")
    if pipeline_connect in (True, "password"):
        pipeline_password = True
    record_class = _check_record_class(record_class)
    target_attrs = extra.pop("target_session_attrs", None)
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
    if params.connect_timeout and (timeout is None or params.connect_timeout < timeout):
        timeout = params.connect_timeout
    return await open_connection(
        connection_class, params, timeout=timeout, command_timeout=command_timeout,
        statement_cache_size=statement_cache_size, pipeline_password=pipeline_password,
        lazy_connect=bool(lazy_connect), describe_first=bool(describe_first),
        record_class=record_class,
        target_attrs=target_session_attrs(target_attrs, params))


def target_session_attrs(value: str | None, params: ConnectParams) -> str:
    """The ``target_session_attrs`` to use: argument, DSN, environment, default ``any``."""
    if value is None:
        value = params.query.get("target_session_attrs")
    if value is None and params.scheme == "postgresql":
        value = os.environ.get("PGTARGETSESSIONATTRS")
    value = (value or "any").strip().lower()
    if value not in TARGET_SESSION_ATTRS:
        raise exc.ClientConfigurationError(
            f"invalid target_session_attrs {value!r}: expected one of {', '.join(TARGET_SESSION_ATTRS)}")
    return value


async def open_connection(connection_class: type[Connection], params: ConnectParams, *,
                          timeout: float | None, command_timeout: float | None,
                          statement_cache_size: int, pipeline_password: bool,
                          lazy_connect: bool, describe_first: bool, record_class: Any,
                          target_attrs: str = "any") -> Connection:
    """Log in to the first suitable host of ``params``."""
    try:
        connector = get_connector(params.scheme)
    except ValueError as e:
        raise exc.ClientConfigurationError(str(e)) from e
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout if timeout else None
    addrs = params.addresses()
    if len(addrs) == 1 and target_attrs == "any":
        return await _connect_addr(connection_class, connector, addrs[0], deadline,
                                   command_timeout, statement_cache_size, pipeline_password,
                                   lazy_connect, describe_first, record_class)
    # a host that fails this way is skipped (the exception classes load on first use:
    # not at import, which is cold-start time)
    unreachable = (OSError, asyncio.TimeoutError, TransportError, exc.ConnectionDoesNotExistError)
    candidates: list[Connection] = []
    chosen: Connection | None = None
    last_error: BaseException | None = None
    for addr in addrs:
        try:
            conn = await _connect_addr(connection_class, connector, addr, deadline,
                                       command_timeout, statement_cache_size, pipeline_password,
                                       False, describe_first, record_class)
        except unreachable as e:
            last_error = e
            continue
        candidates.append(conn)
        if await _can_use(conn, target_attrs):
            chosen = conn
            break
    else:
        if target_attrs == "prefer-standby" and candidates:
            chosen = candidates[0]  # no standby: a primary will do
    for other in candidates:
        if other is not chosen:
            other.terminate()
    if chosen is not None:
        return chosen
    if last_error is not None:
        raise last_error
    raise exc.TargetServerAttributeNotMatched(
        f"None of the hosts match the target attribute requirement {target_attrs!r}")


async def _can_use(conn: Connection, attrs: str) -> bool:
    """Does the server of ``conn`` have the role ``attrs`` asks for?"""
    if attrs == "any":
        return True
    if attrs in ("read-write", "read-only"):
        read_only: bool = await conn.fetchval("SHOW transaction_read_only") == "on"
        return read_only == (attrs == "read-only")
    in_recovery = bool(await conn.fetchval("SELECT pg_catalog.pg_is_in_recovery()"))
    return in_recovery == (attrs in ("standby", "prefer-standby"))


async def _connect_addr(connection_class: type[Connection], connector: Connector,
                        params: ConnectParams, deadline: float | None,
                        command_timeout: float | None, statement_cache_size: int,
                        pipeline_password: bool, lazy_connect: bool, describe_first: bool,
                        record_class: Any) -> Connection:
    """Log in to one host; once more without pipelining if the server wants no cleartext."""
    loop = asyncio.get_running_loop()

    def remaining() -> float | None:
        return None if deadline is None else max(0.0, deadline - loop.time())

    ssl_mod = sys.modules.get("ssl")  # an SSLContext argument implies ssl is imported
    ssl_context = (params.ssl if ssl_mod is not None and isinstance(params.ssl, ssl_mod.SSLContext)
                   else None)
    endpoint = Endpoint(scheme=params.scheme, host=params.host, port=params.port,
                        sslmode=params.sslmode, ssl_context=ssl_context,
                        connect_timeout=remaining(),
                        options={"path": params.path, "query": dict(params.query),
                                 "params": params})
    transport = await asyncio.wait_for(connector.connect(endpoint), remaining())
    from .statements import _text_row_factory

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
            if deadline is not None and remaining() == 0:
                deadline = loop.time() + 0.001
            return await _connect_addr(connection_class, connector, params, deadline,
                                       command_timeout, statement_cache_size, False, False,
                                       describe_first, record_class)
        raise login_error(startup, conn._last_server_error, pipelined)
    return conn


def login_error(startup: pc.StartupRequest, last_server_error: dict[str, str] | None,
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
        if isinstance(failure.__cause__, HandshakeError):
            # e.g. a refused WebSocket handshake (read with the first reply: the
            # upgrade is pipelined) -- what connect() raised before pipelining
            return failure.__cause__
        err = exc.ConnectionDoesNotExistError("connection was closed in the middle of operation")
    else:
        err = exc.InterfaceError(str(failure))
    err.__cause__ = failure
    return err


def _query_values(dsn: str, name: str) -> list[str]:
    """The values of query parameter ``name`` of a URL, as ``urllib.parse.parse_qs``."""
    from .urls import parse_qsl, urlsplit

    return [v for k, v in parse_qsl(urlsplit(dsn)[3]) if k == name]


def dsn_flag(dsn: str | None, name: str, default: bool) -> bool:
    """A boolean query parameter (``true/false/1/0/on/off``) of a ws/http DSN."""
    if not dsn or f"{name}=" not in dsn or not dsn.lower().startswith(("ws:", "wss:", "http:", "https:")):
        return default
    values = _query_values(dsn, name)
    if not values:
        return default
    v = values[-1].strip().lower()
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise exc.ClientConfigurationError(f"invalid {name} {values[-1]!r}: expected true or false")


def dsn_pipeline_mode(dsn: str | None) -> str | None:
    """The ``pipeline_connect`` query parameter of a ws/wss DSN, if any."""
    if not dsn or "pipeline_connect=" not in dsn or not dsn.lower().startswith(("ws:", "wss:")):
        return None
    values = _query_values(dsn, "pipeline_connect")
    return values[-1] if values else None
