"""Upstream PostgreSQL server connections (asyncio Protocol, no streams).

A :class:`ServerConnection` is one real backend connection owned by a
:class:`gateway.pool.Pool`.  It logs in with the driver's sans-I/O core
(:mod:`driver.protocol`), collects the server's ParameterStatus values and
BackendKeyData (needed to forward CancelRequests), and then carries bytes.

While a client session is linked (``server.client is not None``) every chunk
received is handed straight to ``client.on_server_data`` -- the hot path; the
session parses headers only.  While unlinked the connection belongs to the
pool: ParameterStatus updates are recorded, an *internal query* (reset,
rollback, DEALLOCATE) may be running and is drained here, anything else
(notices, notifications) is dropped.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any, Callable

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader, ProtocolError

from . import auth_passthrough as passthrough
from . import upstream_scram
from .prepared import forget_statements
from .tcp import set_socket_buffer
from .tls import UpstreamTlsError, negotiate_upstream, upstream_context

if TYPE_CHECKING:  # pragma: no cover
    from .pool import Pool

log = logging.getLogger("wirepool.gateway.server")

_Z = 90  # 'Z'
_S = 83  # 'S'
_E = 69  # 'E'


class ServerError(Exception):
    """Connecting to or logging in to the upstream server failed, or the
    connection broke.  ``sqlstate`` is what the affected client is told."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


#: The parameters tracked per client (PgBouncer's list), in a fixed order.
TRACKED_ORDER: tuple[str, ...] = ("client_encoding", "DateStyle", "IntervalStyle", "TimeZone",
                                  "standard_conforming_strings", "application_name")


def tracked_signature(params: dict[str, str]) -> tuple[str | None, ...]:
    """Tracked values in TRACKED_ORDER: equal signatures -> no SET needed."""
    return tuple(params.get(k) for k in TRACKED_ORDER)


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    """``name\\0value\\0`` -> (name, value); tolerant (the upstream is trusted)."""
    i = body.find(b"\x00")
    j = body.find(b"\x00", i + 1)
    return body[:i].decode("utf-8", "replace"), body[i + 1 : j].decode("utf-8", "replace")


class ServerConnection(asyncio.Protocol):
    """One backend connection.  Fields used by the pool and the session are public."""

    def __init__(self, pool: "Pool", host: str, port: int) -> None:
        self.pool = pool
        self.host = host
        self.port = port
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reader = MessageReader()
        #: Values the server reported with ParameterStatus (kept current).
        self.params: dict[str, str] = {}
        #: tracked_signature(params), kept current (compared at every link).
        self.sig: tuple[str | None, ...] = ()
        self.backend_pid = 0
        self.backend_key = 0
        #: Last ReadyForQuery status byte: 73 'I', 84 'T', 69 'E'.
        self.status = 73
        #: The linked client session (transaction/session pooling) or None.
        self.client: Any = None
        #: Named prepared statements on this server (gateway.prepared.ServerStatements), set on first use.
        self.statements: Any = None
        #: Session parameters set on this server that the gateway knows of (gateway.tracking).
        self.gucs: dict[str, str] = {}
        #: The [users] identity this server last served (None: clean, e.g. after DISCARD ALL).
        self.owner: str | None = None
        #: Cleanup owed before a client other than ``pending_owner`` uses it (temp objects,
        #: SQL prepared statements, held cursors; gateway.tracking.cleanup): encoded Query messages.
        self.pending: list[bytes] = []
        self.pending_owner: Any = None
        #: Pool list this server is on (maintained only by Pool._move).
        self.pool_list: dict[Any, None] | None = None
        now = self.loop.time()
        self.created = now
        self.last_used = now
        self.closed = False
        self.write_paused = False
        self._drain_waiter: asyncio.Future[None] | None = None
        # login phase
        self._logged_in = False
        self._login_msgs: list[tuple[int, bytes]] = []
        self._login_waiter: asyncio.Future[None] | None = None
        self._lost_exc: BaseException | None = None
        # internal query (reset / rollback) while unlinked
        self._internal_pending = 0
        self._internal_error: str | None = None
        self._internal_done: Callable[[bool], None] | None = None
        self._internal_timer: asyncio.TimerHandle | None = None

    def reset_state(self) -> None:
        """A reset (DISCARD ALL, server_reset_query) was sent: no session
        state, no named statements (the registry forgets them), no owner."""
        self.gucs = {}
        self.owner = None
        self.pending = []
        self.pending_owner = None
        forget_statements(self)

    def __repr__(self) -> str:
        return f"<ServerConnection {self.host}:{self.port} pid={self.backend_pid}>"

    # ------------------------------------------------------------ protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        set_socket_buffer(transport, getattr(getattr(self.pool, "settings", None), "tcp_socket_buffer", 0))

    def data_received(self, data: bytes) -> None:
        client = self.client
        if client is not None:
            client.on_server_data(self, data)
        elif self._logged_in:
            self._unlinked_data(data)
        else:
            self._login_data(data)

    def eof_received(self) -> bool | None:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        already = self.closed
        self.closed = True
        self._lost_exc = exc
        w = self._login_waiter
        if w is not None and not w.done():
            w.set_result(None)
        d = self._drain_waiter
        if d is not None and not d.done():
            d.set_result(None)
        if self._internal_done is not None:
            self._finish_internal(False)
        if not already:
            self.pool.server_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        d = self._drain_waiter
        if d is not None and not d.done():
            d.set_result(None)

    async def drain(self) -> None:
        """Wait until the transport's write buffer is below its high-water mark."""
        if self.write_paused and not self.closed:
            self._drain_waiter = self.loop.create_future()
            await self._drain_waiter
            self._drain_waiter = None

    # --------------------------------------------------------------- login
    def _login_data(self, data: bytes) -> None:
        self.reader.feed(data)
        try:
            self._login_msgs.extend(self.reader.read())
        except ProtocolError as exc:
            self._lost_exc = exc
            self.close()
        w = self._login_waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def _next_login_message(self) -> tuple[int, bytes]:
        while not self._login_msgs:
            if self.closed:
                raise ServerError("08006", f"server closed the connection during login"
                                  f"{': ' + str(self._lost_exc) if self._lost_exc else ''}")
            self._login_waiter = self.loop.create_future()
            await self._login_waiter
            self._login_waiter = None
        return self._login_msgs.pop(0)

    async def login(self, user: str, password: "str | passthrough.Credentials | None", dbname: str,
                    extra: dict[str, str] | None = None) -> None:
        """Run the startup + authentication exchange; ServerError on failure."""
        assert self.transport is not None
        params = {"user": user, "database": dbname}
        if extra:
            params.update(extra)
        self.transport.write(m.startup_message(params))
        scram: pg_auth.ScramClient | upstream_scram.CachedScramClient | None = None
        while True:
            mtype, body = await self._next_login_message()
            if mtype == m.B.AUTHENTICATION:
                req = m.decode_backend(mtype, body)
                assert isinstance(req, m.AuthenticationRequest)
                code = req.code
                if code == m.AUTH_OK:
                    continue
                if (password is None or not (isinstance(password, str) or password)) and code != m.AUTH_OK:
                    raise ServerError("08006", f"upstream server requested a password for user \"{user}\""
                                      " but none is configured")
                assert password is not None
                # password: a str, or the client's pass-through Credentials (gateway/auth_passthrough.py)
                if code == m.AUTH_CLEARTEXT_PASSWORD:
                    self.transport.write(m.password_message(passthrough.cleartext(password, user)))
                elif code == m.AUTH_MD5_PASSWORD:
                    self.transport.write(m.password_message(passthrough.md5_answer(password, user, req.data[:4])))
                elif code == m.AUTH_SASL:
                    if pg_auth.SCRAM_SHA_256 not in req.mechanisms:
                        raise ServerError("08006", f"upstream offers no supported SASL mechanism: {req.mechanisms}")
                    # a configured password: keys derived once per salt (gateway/upstream_scram.py)
                    scram = (upstream_scram.scram_client(password, user) if isinstance(password, str)
                             else passthrough.scram_client(password, user))
                    self.transport.write(m.sasl_initial_response(scram.mechanism, scram.client_first()))
                elif code == m.AUTH_SASL_CONTINUE and scram is not None:
                    try:
                        self.transport.write(m.sasl_response(scram.handle_server_first(req.data)))
                    except pg_auth.AuthenticationError as exc:
                        raise ServerError("08006", f"upstream SCRAM exchange failed: {exc}") from None
                elif code == m.AUTH_SASL_FINAL and scram is not None:
                    try:
                        scram.handle_server_final(req.data)
                    except pg_auth.AuthenticationError as exc:
                        raise ServerError("08006", f"upstream SCRAM exchange failed: {exc}") from None
                else:
                    raise ServerError("08006", f"unsupported upstream authentication request {code}")
            elif mtype == _S:
                name, value = parse_parameter_status(body)
                self.params[name] = value
            elif mtype == m.B.BACKEND_KEY_DATA:
                kd = m.decode_backend(mtype, body)
                assert isinstance(kd, m.BackendKeyData)
                self.backend_pid, self.backend_key = kd.process_id, kd.secret_key
            elif mtype == _E:
                err = m.decode_backend(mtype, body)
                assert isinstance(err, m.ErrorResponse)
                raise ServerError(err.sqlstate, err.message)
            elif mtype == _Z:
                self.status = body[0] if body else 73
                self._logged_in = True
                self.sig = tracked_signature(self.params)
                self._login_msgs.clear()
                return
            # NoticeResponse, NegotiateProtocolVersion: ignored

    # ---------------------------------------------------------- unlinked
    def _unlinked_data(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        try:
            msgs = reader.read()
        except ProtocolError:
            log.warning("%r sent malformed data; closing it", self)
            self.close()
            return
        for mtype, body in msgs:
            if mtype == _S:
                name, value = parse_parameter_status(body)
                self.params[name] = value
                self.sig = tracked_signature(self.params)
            elif mtype == _Z:
                self.status = body[0] if body else 73
                if self._internal_pending:
                    self._internal_pending -= 1
                    if self._internal_pending == 0:
                        self._finish_internal(self._internal_error is None and self.status == 73)
            elif mtype == _E:
                fields = m.decode_fields(body)
                if self._internal_pending:
                    self._internal_error = f"{fields.get('C')}: {fields.get('M')}"
                if fields.get("V", fields.get("S")) in ("FATAL", "PANIC"):
                    log.info("%r: %s %s", self, fields.get("C"), fields.get("M"))

    def run_internal(self, data: bytes, replies: int, done: Callable[[bool], None],
                     timeout: float = 10.0) -> None:
        """Write ``data`` (e.g. ROLLBACK, DISCARD ALL) while unlinked and call
        ``done(ok)`` once ``replies`` ReadyForQuery have arrived (``ok`` when
        no error was reported and the final status is idle) or on failure."""
        self._internal_pending = replies
        self._internal_error = None
        self._internal_done = done
        self._internal_timer = self.loop.call_later(timeout, self._internal_timeout)
        self.write(data)

    def _internal_timeout(self) -> None:
        if self._internal_done is not None:
            log.warning("%r: internal query timed out; closing", self)
            self._finish_internal(False)

    def _finish_internal(self, ok: bool) -> None:
        done = self._internal_done
        self._internal_done = None
        self._internal_pending = 0
        if self._internal_timer is not None:
            self._internal_timer.cancel()
            self._internal_timer = None
        if self._internal_error is not None:
            log.info("%r: internal query failed: %s", self, self._internal_error)
        if done is not None:
            done(ok)

    # --------------------------------------------------------------- misc
    def write(self, data: bytes) -> None:
        t = self.transport
        if t is not None and not self.closed:
            t.write(data)

    def close(self) -> None:
        """Terminate and close; the pool is told via connection_lost."""
        t = self.transport
        if t is None:
            if not self.closed:
                self.closed = True
                self.pool.server_lost(self)
            return
        if not t.is_closing():
            try:
                if self._logged_in:
                    t.write(m.TERMINATE)
            except Exception:  # pragma: no cover - transport already broken
                pass
            t.close()


async def open_server(pool: "Pool", host: str, port: int, user: str, password: str | None,
                      dbname: str, sslmode: str = "disable", sslrootcert: str | None = None) -> ServerConnection:
    """Connect (TLS per ``sslmode``, gateway/tls.py) and log in (no timeout
    here: the pool wraps this in one)."""
    loop = asyncio.get_running_loop()
    conn = ServerConnection(pool, host, port)
    try:
        if host.startswith("/"):  # unix socket: no TLS (libpq neither)
            await loop.create_unix_connection(lambda: conn, f"{host}/.s.PGSQL.{port}")
        elif sslmode == "disable":
            await loop.create_connection(lambda: conn, host, port)
        else:
            sock, use_tls = await negotiate_upstream(host, port, sslmode)
            if use_tls:
                await loop.create_connection(lambda: conn, sock=sock,
                                             ssl=upstream_context(sslmode, sslrootcert),
                                             server_hostname=host)
            else:
                await loop.create_connection(lambda: conn, sock=sock)
    except UpstreamTlsError as exc:
        raise ServerError("08006", f"could not connect to server {host}:{port}: {exc}") from None
    except ssl.SSLError as exc:
        raise ServerError("08006", f"could not connect to server {host}:{port}: TLS handshake failed: "
                          f"{exc.reason or exc}") from None
    except OSError as exc:
        raise ServerError("08006", f"could not connect to server {host}:{port}: {exc.strerror or exc}") from None
    try:
        await conn.login(user, password, dbname)
    except BaseException:
        conn.closed = True  # do not report a never-pooled connection as lost
        if conn.transport is not None:
            conn.transport.close()
        raise
    return conn
