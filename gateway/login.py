"""The login phase of a client session (pg_listen and WebSocket /v2):
startup packet(s), SSL/GSS negotiation, CancelRequest, startup parameters,
authentication, admission (``max_client_conn``), the database lookup, and the
login reply (AuthenticationOk, ParameterStatus, BackendKeyData,
ReadyForQuery) -- without a server in transaction mode; in session mode the
client's server is linked first and BackendKeyData carries its real pid
(:func:`link_session_server`).

Functions of the :class:`~gateway.session.Session` they serve (PgBouncer's
``client.c`` login half); the pooling loop stays in :mod:`gateway.session`.
Messages are read strictly in order (:func:`next_message`): what a client
sends together (StartupMessage + PasswordMessage + its first query) is handed
out one at a time by :class:`Pipelined`, and what login did not consume goes
to the pooling loop (:func:`take_pipelined`).
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from driver.protocol import messages as m
from driver.protocol.framing import ProtocolError

from .admin import ADMIN_DATABASES, serve_console
from .auth import AuthFailed
from .cache_hook import attach as cache_attach
from .limits import after_login, check_login_message
from .listen_session import LAZY as LISTEN_LAZY, enabled as listen_enabled
from .params import OptionsError, tracked_options
from .params import canonical as canonical_value
from .prepared import ClientStatements, Rewriter
from .schema import database_key
from .server import tracked_signature
from .tcp import set_socket_buffer
from .tracking import Tracker

#: lower-case name -> the canonical name PostgreSQL reports.
TRACKED: dict[str, str] = {
    "client_encoding": "client_encoding",
    "datestyle": "DateStyle",
    "intervalstyle": "IntervalStyle",
    "timezone": "TimeZone",
    "standard_conforming_strings": "standard_conforming_strings",
    "application_name": "application_name",
}
TRACKED_NAMES = frozenset(TRACKED.values())
#: Startup parameters accepted and ignored.
IGNORED_STARTUP = frozenset({"extra_float_digits"})
_RFQ_IDLE = m.ready_for_query("I")


#: (id(server params), client's tracked signature) -> (server params, AuthenticationOk + ParameterStatus block)
_STARTUP_BLOCKS: dict[tuple[int, tuple[str | None, ...]], tuple[dict[str, str], bytes, int]] = {}


def startup_block(server_params: dict[str, str], params: dict[str, str],
                   sig: tuple[str | None, ...]) -> bytes:
    """AuthenticationOk + the ParameterStatus messages of a login reply, built
    once per (pool's server values, client's tracked values)."""
    key = (id(server_params), sig)
    hit = _STARTUP_BLOCKS.get(key)
    if hit is not None and hit[0] is server_params and len(server_params) == hit[2]:
        return hit[1]
    block = m.AUTHENTICATION_OK + b"".join(m.parameter_status(name, params.get(name, value))
                                           for name, value in server_params.items())
    if len(_STARTUP_BLOCKS) > 256:
        _STARTUP_BLOCKS.clear()
    _STARTUP_BLOCKS[key] = (server_params, block, len(server_params))
    return block


#: (id(server params), client's startup values) -> (server params, filled values, signature)
_TRACKED_VALUES: dict[tuple[int, tuple[tuple[str, str], ...]],
                      tuple[dict[str, str], dict[str, str], tuple[str | None, ...]]] = {}


def tracked_values(server_params: dict[str, str],
                   params: dict[str, str]) -> tuple[dict[str, str], tuple[str | None, ...]]:
    """The client's tracked values (what it asked for, else the server
    default; DateStyle completed with the server's order) and their
    signature, computed once per (pool's server values, client's values):
    most clients of a pool send the same few startup parameters."""
    key = (id(server_params), tuple(params.items()))
    hit = _TRACKED_VALUES.get(key)
    if hit is not None and hit[0] is server_params:
        return hit[1], hit[2]
    filled = dict(params)
    for name in TRACKED_NAMES:
        if name not in filled and name in server_params:
            filled[name] = server_params[name]
    if "DateStyle" in filled and "DateStyle" in server_params:  # "SQL" -> "SQL, <server's order>"
        filled["DateStyle"] = canonical_value("DateStyle", filled["DateStyle"], server_params["DateStyle"])
    sig = tracked_signature(filled)
    if len(_TRACKED_VALUES) > 256:
        _TRACKED_VALUES.clear()
    _TRACKED_VALUES[key] = (server_params, filled, sig)
    return filled, sig


class ClientGone(Exception):
    """The client closed the connection during login."""


class Pipelined:
    """Messages a client sent together during login, framed at once by the
    reader (``read_raw``: the chunk and its ``(type, start, end)`` index),
    handed out one at a time in arrival order.  Sans-I/O."""

    __slots__ = ("chunk", "idx", "pos")

    def __init__(self, chunk: bytes, idx: list[tuple[int, int, int]], pos: int = 0) -> None:
        self.chunk = chunk
        self.idx = idx
        self.pos = pos  # the next message to hand out

    def __len__(self) -> int:
        """How many are left."""
        return len(self.idx) - self.pos

    def next(self) -> tuple[int, bytes] | None:
        """The next message (type, body), or None when all were handed out."""
        pos = self.pos
        if pos >= len(self.idx):
            return None
        t, s, e = self.idx[pos]
        self.pos = pos + 1
        return t, self.chunk[s:e]

    def rest(self) -> tuple[bytes, list[tuple[int, int, int]]]:
        """The messages not handed out, as one chunk with its index (as
        ``read_raw`` gives them); none are left afterwards."""
        pos = self.pos
        idx = self.idx
        if pos >= len(idx):
            return b"", []
        start = idx[pos][1] - 5
        chunk = self.chunk[start:]
        rest = [(t, s - start, e - start) for t, s, e in idx[pos:]]
        self.pos = len(idx)
        return chunk, rest


async def next_message(self: Any) -> tuple[int, bytes]:
    """Next complete message, in arrival order (startup/auth phase)."""
    p: Pipelined | None = self._pipelined
    if p is not None:
        msg = p.next()
        if msg is not None:
            return msg
        self._pipelined = None
    reader = self.reader
    while True:
        chunk, idx = reader.read_raw()
        if chunk:
            t, s, e = idx[0]
            if len(idx) > 1:  # pipelined: the rest is handed out in order
                self._pipelined = Pipelined(chunk, idx, 1)
            return t, chunk[s:e]
        check_login_message(reader)
        data = await self.stream.recv()
        if not data:
            raise ClientGone()
        reader.feed(data)


def take_pipelined(self: Any) -> tuple[bytes, list[tuple[int, int, int]]]:
    """Messages received during login but not consumed (a pipelined query)."""
    p: Pipelined | None = self._pipelined
    if p is None:
        return b"", []
    self._pipelined = None
    return p.rest()


async def startup(self: Any) -> bool:
    gw = self.gw
    s = self.settings
    limits = gw.limits
    peer = getattr(self.stream, "peer", "?")
    if not limits.try_begin_login(peer):
        raise AuthFailed("53300", "sorry, too many clients are logging in")
    login_limit = getattr(self.stream, "set_login_limit", None)
    if login_limit is not None:
        login_limit(s.login_buffer_size)
    # client_login_timeout: what asyncio.timeout() does, with one timer handle
    # and no context-manager coroutines (a login is short; this is its hot path).
    task = self._main
    expired: list[bool] | None = None
    timer = None
    if s.client_login_timeout > 0 and task is not None:
        expired = []
        cancelling = task.cancelling()
        timer = self.loop.call_later(s.client_login_timeout, _expire_login, task, expired)
    try:
        prefix = await self._handshake()
    except asyncio.CancelledError:
        if not expired or task.uncancel() > cancelling:
            raise
        limits.shed_log.shed("client_login_timeout: login not completed in time", peer)
        raise AuthFailed("08006", "client_login_timeout: login not completed in time") from None
    finally:
        if timer is not None:
            timer.cancel()
        limits.end_login()
    if prefix is None:
        return False
    after_login(self.reader, s)
    if login_limit is not None:
        login_limit(None)
    if s.tcp_socket_buffer > 0:
        set_socket_buffer(getattr(self.stream, "transport", None), s.tcp_socket_buffer)
    # Database lookup only after authentication (as PostgreSQL does).
    if self.database in ADMIN_DATABASES:  # the admin console (gateway/admin.py)
        await serve_console(self, prefix)
        return False
    pool = gw.pools.get(self.database)
    if pool is None or pool.disabled:
        raise AuthFailed("3D000", f'database "{self.database}" does not exist')
    pool = gw.auth_query.pool_for(pool, self.user)  # a database without `user`: the client's own pool
    self.pool = pool
    self.acc.errors = pool.obs.errors  # server ErrorResponses by SQLSTATE class (/metrics)
    self.transaction_mode = pool.transaction_mode
    if self.transaction_mode and s.max_prepared_statements > 0:
        self.prepared = Rewriter(ClientStatements(gw.statements, db=database_key(pool.db)),
                                 s.max_prepared_statements)
        self.acc.rewriter = self.prepared
    if self.transaction_mode:
        self.track = Tracker()
        if listen_enabled(self):  # LISTEN answered by the gateway (gateway/listen_session.py)
            self.listen = LISTEN_LAZY
    self.cache = cache_attach(self)
    pool.add_client(self)
    server_params = await pool.ensure_params(self)
    # Client's tracked values: what it asked for, else the server default.
    params = self.params
    filled, self.sig = tracked_values(server_params, params)
    params.update(filled)
    # Session mode: the client's server is linked now, and BackendKeyData names it.
    gw.register_session(self, 0 if self.transaction_mode else await link_session_server(self))
    gw.obs.logged_in(getattr(self.stream, "kind", "?"), "token" if getattr(self.stream, "token", None)
                     is not None else gw.authenticator.auth_type)
    reply = b"".join((prefix, startup_block(server_params, params, self.sig),
                      m.backend_key_data(self.process_id, self.secret_key), _RFQ_IDLE))
    direct = self._direct
    if direct is None:
        await self.stream.send(reply)
    elif not direct(reply):
        await self._direct_drain()
    return True


def _expire_login(task: "asyncio.Task[Any]", expired: list[bool]) -> None:
    """client_login_timeout elapsed: cancel the session task (startup turns it into 08006)."""
    if not task.done():
        expired.append(True)
        task.cancel()

async def link_session_server(self: Any) -> int:
    """Session mode: take the client's server at login (waiting in the pool's
    queue, bounded by ``query_wait_timeout``; PoolError otherwise) and link it
    for the whole session, as PgBouncer's session pooling does.  Returns the
    server's backend pid, which the login reply's BackendKeyData then carries
    (with a gateway-issued secret), so that ``pg_terminate_backend`` of the
    client's ``backend_pid`` ends its own server, as directly; 0 when the
    upstream sent no pid.  See docs/pooling-semantics.md."""
    pool = self.pool
    server = pool.try_acquire()
    if server is None:
        server = await pool.wait_for_server(self)
    self._send_pending(server)  # links it; DISCARD ALL / SET batch as needed (replies swallowed)
    return int(server.backend_pid)


async def handshake(self: Any) -> bytes | None:
    """Startup packet(s) and authentication.  Returns the bytes to send
    before AuthenticationOk, or None when the stream is done (cancel)."""
    gw = self.gw
    send = _login_sender(self)
    while True:
        mtype, body = await self._next_message()
        if mtype != m.F.UNTYPED:  # pragma: no cover - the reader guarantees it
            raise ProtocolError("expected a startup packet")
        msg = m.decode_frontend(mtype, body)
        if type(msg) is m.StartupMessage:  # (the usual case first)
            break
        if isinstance(msg, m.SSLRequest) and getattr(self.stream, "tls_available", False):
            if self.reader.buffered or self._pipelined:
                # Bytes sent in clear after the SSLRequest must not count as encrypted.
                raise ProtocolError("unencrypted data received after SSLRequest")
            send(b"S")
            await self.stream.start_tls()
            continue
        if isinstance(msg, (m.SSLRequest, m.GSSENCRequest)):
            send(m.SSL_REFUSED)
            continue
        if isinstance(msg, m.CancelRequest):
            await gw.handle_cancel(msg.process_id, msg.secret_key)
            return None
        assert isinstance(msg, m.StartupMessage)
        break
    if msg.major != 3:
        raise AuthFailed("0A000", f"unsupported frontend protocol {msg.major}.{msg.minor}: "
                                  "server supports 3.0 to 3.0")
    unrecognized: list[str] = []
    user = msg.params.get("user", "")
    for key, value in msg.params.items():
        if key in ("user", "database"):
            continue
        lk = key.lower()
        canonical = TRACKED.get(lk)
        if canonical is not None:
            self.params[canonical] = canonical_value(canonical, value)
        elif key.startswith("_pq_."):
            unrecognized.append(key)
        elif lk == "options":
            try:
                self.params.update(tracked_options(value, TRACKED))
            except OptionsError as exc:
                raise AuthFailed(exc.sqlstate, str(exc)) from None
        elif lk in IGNORED_STARTUP:
            pass
        else:
            raise AuthFailed("08P01", f"unsupported startup parameter: {key}")
    if msg.minor > 0 or unrecognized:
        send(m.negotiate_protocol_version(0, unrecognized))
    token = getattr(self.stream, "token", None)
    peer = getattr(self.stream, "peer", "?")
    if token is not None:  # API token (WebSocket upgrade): no password exchange
        user = await gw.authenticator.authenticate_token(token, user, peer)
    if not user:
        raise AuthFailed("28000", "no PostgreSQL user name specified in startup packet")
    self.user = user
    self.database = msg.params.get("database") or user
    self._admit()
    if token is not None:
        return b""
    secret: bytes | None = await gw.authenticator.authenticate(user, send, self._next_message, peer, self.database)
    return secret


def _login_sender(self: Any) -> Callable[[bytes], Any]:
    """How login messages are sent: straight to the transport (no coroutine per
    message; each is small and followed by waiting for the client's answer, so
    no flow control is needed), or -- a stream without ``send_nowait`` -- queued
    for the session's writer task, in order."""
    direct: Callable[[bytes], Any] | None = self._direct
    if direct is not None:
        return direct

    def queued(data: bytes) -> None:
        self._send_or_queue(data)
        self._ensure_writer()
    return queued


def admit(self: Any) -> None:
    """Count this client against ``max_client_conn`` (53300 past it;
    57P03 while the gateway shuts down)."""
    gw = self.gw
    if not gw.accepting:
        raise AuthFailed("57P03", "the gateway is shutting down")
    if gw.n_clients + gw.limits.clients_beside(self.stream) >= self.settings.max_client_conn:
        raise AuthFailed("53300", "sorry, too many clients already")
    gw.n_clients += 1
    self.counted = True
