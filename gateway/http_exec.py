"""HttpExecutor: run a batch of Postgres frontend messages for an HTTP request.

The primitive under both HTTP endpoints (the protocol-over-HTTP endpoint in
:mod:`gateway.http_protocol` and the Neon-compatible ``POST /sql``)::

    ex = get_executor(gateway)                     # one per Gateway, created lazily
    principal = await ex.authenticate("app", "alice", "secret", None)   # or token="..."
    res = await ex.run(principal, frontend_bytes, timeout=15.0)
    res.data        # raw backend messages up to and including the final ReadyForQuery
    res.status      # "I" / "T" / "E" (None if the session ended: see res.fatal)
    res.session_token   # set when status is T/E (or the session was opened with keep=True)
    res = await ex.run(None, more_bytes, session_token=res.session_token, timeout=15.0)

How: every HTTP session is a real :class:`gateway.session.Session` -- the same
class that serves WebSocket and pg_listen clients -- whose startup and
authentication are skipped (the HTTP request was authenticated already) and
whose ClientStream is an in-memory queue (:class:`HttpStream`).  So pooling,
tracked-parameter hygiene, query/idle-transaction timeouts, cancel and (once
issue 5 lands in the session) prepared-statement handling are exactly those of
WebSocket clients, on the same pools.

* A batch must end with Query, Sync or FunctionCall (optionally followed by a
  Terminate); the number of Query/Sync/FunctionCall messages is the number of
  ReadyForQuery the response waits for.
* Without a session token a new Session is made for the request and ended when
  the batch is answered -- unless the final status is ``T``/``E`` (the server
  stays linked to it) or ``keep=True`` was asked (the driver keeps one session
  per connection, for its named prepared statements).  Then a token is issued.
* Session tokens: ``base64url(sid[16] || seq[8] || issued_ms[8]) "." base64url(HMAC-SHA256(secret, payload)[:16])``
  with a per-gateway random secret.  Each response issues the next ``seq``;
  presenting an older one is a replay (409, 08P01); a bad MAC is a forgery (401,
  08P01); a session that has gone (idle timeout -> ROLLBACK and release, or
  ended by an error) answers 410 with 08003 and the reason.
* Time: ``timeout`` -> CancelRequest to the backend, then up to
  ``CANCEL_GRACE`` seconds for its ReadyForQuery, then the session is ended
  (its server discarded).  ``res.timed_out`` tells the caller.
* Response size: past ``max_response`` bytes the running statement is cancelled
  and the bytes are dropped; :class:`HttpExecError` 507 (54000) is raised once
  the batch has ended.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, MessageReader, ProtocolError

from .auth import AuthFailed, Throttled
from .params import canonical as canonical_value
from .session import TRACKED, Session

log = logging.getLogger("wirepool.gateway.http")

_Q, _S, _F, _X, _Z, _E = 81, 83, 70, 88, 90, 69
_COUNTED = (_Q, _S, _F)
_G = 71  # CopyInResponse
COPY_UNSUPPORTED = "COPY FROM STDIN is not supported over HTTP (the request body is the whole batch)"
_COPY_FAIL = m.copy_fail(COPY_UNSUPPORTED)
#: seconds allowed after a CancelRequest for the batch to end before the session is killed
CANCEL_GRACE = 5.0
_ENDED_MEMORY = 4096  # remembered reasons of ended sessions (for clear errors)


class HttpExecError(Exception):
    """A request cannot be run: ``status`` (HTTP), ``sqlstate``, ``message``."""

    def __init__(self, status: int, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.sqlstate = sqlstate
        self.message = message
        #: the session lives on: its next token (e.g. after a 507), else None
        self.session_token: str | None = None

    def error_response(self, severity: str = "ERROR") -> bytes:
        """The error as a Postgres ErrorResponse message (a NUL quoted from the
        request, e.g. in a database name, is written ``\\0``: fields are C strings)."""
        return m.error(self.sqlstate, self.message.replace("\0", "\\0"), severity=severity)


class HttpAuthError(HttpExecError):
    """Authentication failed (28P01 / 28000 -> 401, 3D000 -> 404, throttled 08004 -> 429)."""


@dataclass(frozen=True)
class Principal:
    user: str
    database: str
    #: "password", "token" or "trust"
    method: str = "password"


@dataclass
class ExecResult:
    #: backend messages, verbatim, up to and including the final ReadyForQuery
    data: bytes
    #: final transaction status "I" / "T" / "E"; None when the session ended early
    status: str | None
    #: next single-use session token (status T/E, or a kept session), else None
    session_token: str | None = None
    #: ReadyForQuery messages received (== the batch's Query/Sync/FunctionCall count unless it ended early)
    ready_count: int = 0
    #: fields of the FATAL error that ended the session early (server lost, pool error...), else None
    fatal: dict[str, str] | None = None
    #: the request timeout fired (a cancel was sent; if the batch still did not end, ``fatal`` is set)
    timed_out: bool = False
    #: ParameterStatus values the session reported at its start (new sessions only)
    parameters: dict[str, str] = field(default_factory=dict)
    #: the gateway process id / secret of the Session (for cancel bookkeeping)
    process_id: int = 0
    #: new sessions: the startup reply (AuthenticationOk ... ReadyForQuery), else b""
    startup: bytes = b""
    #: result cache (gateway/cache_hook.py): "hit" / "stale" / "miss" for the batch's last
    #: cacheable statement; None when the database's cache is off
    cache: str | None = None


# --------------------------------------------------------------------------- stream

class HttpStream:
    """In-memory ClientStream between an HTTP request and a Session."""

    kind = "http"

    def __init__(self, peer: str = "http") -> None:
        self.peer = peer
        self._in: list[bytes] = []
        self._in_waiter: asyncio.Future[None] | None = None
        self._closed = False
        loop = asyncio.get_running_loop()
        self.loop = loop
        # startup reply (AuthenticationOk ... ReadyForQuery) of the Session
        self.hello: asyncio.Future[bytes] = loop.create_future()
        self._hello_done = False
        self._hello_parts: list[bytes] = []
        # current batch
        self._reader = MessageReader(max_size=1 << 30)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self.max_response = 0
        self.overflow = False
        self.on_overflow: Any = None
        self.target = 0
        self.zs = 0
        self.status: int | None = None
        self.fatal: dict[str, str] | None = None
        self.done: asyncio.Future[None] | None = None
        #: ReadyForQuery replies the session's accounting still expects
        #: (gateway.accounting: skip-till-Sync included); set by the executor
        self.owed: Any = None
        #: the last message out was a ReadyForQuery (not an error the server skips after)
        self.at_z = False

    # -- batch control (executor side)
    def begin(self, expected: int, max_response: int) -> asyncio.Future[None]:
        self._out = []
        self._out_bytes = 0
        self.overflow = False
        self.max_response = max_response
        self.target = expected
        self.zs = 0
        self.fatal = None
        self.at_z = False
        fut = self.done = self.loop.create_future()
        if self._closed or expected == 0:
            fut.set_result(None)
        return fut

    def feed(self, data: bytes) -> None:
        if data:
            self._in.append(data)
        w = self._in_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        self._out_bytes = 0
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    # -- ClientStream API (session side)
    async def recv(self) -> bytes:
        while not self._in:
            if self._closed:
                return b""
            self._in_waiter = self.loop.create_future()
            try:
                await self._in_waiter
            finally:
                self._in_waiter = None
        data = self._in[0] if len(self._in) == 1 else b"".join(self._in)
        self._in.clear()
        return data

    def send_nowait(self, data: bytes) -> bool:
        self._output(data)
        return True

    async def drain(self) -> None:
        return None

    async def send(self, data: bytes) -> None:
        self._output(data)

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """End the stream: the session's recv() returns EOF."""
        if self._closed:
            return
        self._closed = True
        w = self._in_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if not self.hello.done():
            self.hello.set_exception(ConnectionResetError("session ended during startup"))
            self.hello.exception()  # retrieved: no "never retrieved" warning
        d = self.done
        if d is not None and not d.done():
            d.set_result(None)

    # -- output accounting (headers only: the driver's framing, no row parsing)
    def _output(self, data: bytes) -> None:
        if self._closed and self.done is None:
            return
        reader = self._reader
        reader.feed(data)
        try:
            chunk, idx = reader.read_raw()
        except ProtocolError:  # pragma: no cover - the session only sends whole messages
            return
        if not chunk:
            return
        if not self._hello_done:
            # The Session's startup reply ends with its first ReadyForQuery.
            for t, s, e in idx:
                if t == _Z:
                    cut = e
                    self._hello_parts.append(chunk[:cut])
                    self._hello_done = True
                    if not self.hello.done():
                        self.hello.set_result(b"".join(self._hello_parts))
                    chunk = chunk[cut:]
                    idx = [(t2, s2 - cut, e2 - cut) for t2, s2, e2 in idx if s2 >= cut]
                    break
                if t == _E:
                    fields = m.decode_fields(chunk[s:e])
                    if fields.get("S") in ("FATAL", "PANIC") or fields.get("V") in ("FATAL", "PANIC"):
                        self.fatal = fields
            else:
                self._hello_parts.append(chunk)
                return
            if not chunk:
                return
        if any(t == _G for t, _s, _e in idx):
            # COPY FROM STDIN: the request body was the whole batch, there is no
            # more data.  Fail the COPY now and hide the CopyInResponse (the
            # client gets the server's "COPY from stdin failed" error instead).
            parts: list[bytes] = []
            kept: list[tuple[int, int, int]] = []
            pos = 0
            for t, s, e in idx:
                if t == _G:
                    self.feed(_COPY_FAIL)
                    continue
                parts.append(chunk[s - 5:e])
                kept.append((t, pos + 5, pos + e - s + 5))
                pos += e - s + 5
            chunk, idx = b"".join(parts), kept
            if not chunk:
                return
        zs = self.zs
        for t, s, e in idx:
            if t == _Z:
                zs += 1
                self.status = chunk[s]
            elif t == _E:
                body = chunk[s:e]
                if b"SFATAL\x00" in body or b"SPANIC\x00" in body:
                    self.fatal = m.decode_fields(body)

        self.zs = zs
        self.at_z = idx[-1][0] == _Z
        if not self.overflow:
            self._out.append(chunk)
            self._out_bytes += len(chunk)
            if self.max_response and self._out_bytes > self.max_response:
                self.overflow = True
                self._out = []
                self._out_bytes = 0
                cb = self.on_overflow
                if cb is not None and zs < self.target:
                    cb()
        d = self.done
        if d is not None and not d.done() and (zs >= self.target or (self.owed is not None and self.owed() <= 0)):
            # every ReadyForQuery came -- or the session's skip-till-Sync accounting
            # says the rest will not (Queries Postgres skips after an extended error)
            d.set_result(None)

    def more(self, n: int) -> asyncio.Future[None]:
        """Continue the batch: wait for ``n`` more ReadyForQuery (output kept)."""
        self.target = self.zs + n
        fut = self.done = self.loop.create_future()
        if self._closed:
            fut.set_result(None)
        return fut


# --------------------------------------------------------------------------- session

class PreauthSession(Session):
    """A Session whose client was authenticated by the HTTP layer."""

    def __init__(self, gateway: Any, stream: HttpStream, principal: Principal,
                 params: dict[str, str]) -> None:
        super().__init__(gateway, stream)
        self.reader.in_startup = False  # no StartupMessage: typed messages from the first byte
        self._principal = principal
        self._startup_params = params

    async def _handshake(self) -> bytes | None:  # overrides Session._handshake
        for key, value in self._startup_params.items():
            canonical = TRACKED.get(key.lower())
            if canonical is not None:
                self.params[canonical] = canonical_value(canonical, value)
        self.user = self._principal.user
        self.database = self._principal.database
        self._admit()
        return b""

    def replies_owed(self) -> int:
        """ReadyForQuery replies still to come for what the client sent (the
        skip-till-Sync accounting of :mod:`gateway.accounting`), less Queries
        the rewriter saw skipped (the accounting applies those at the next
        ReadyForQuery -- which for a skipped last Query never comes)."""
        rw = self.prepared
        return self.acc.outstanding - (rw.skipped_rfq if rw is not None else 0)


def check_startup_params(params: dict[str, str]) -> None:
    """Only the tracked parameters may be set per HTTP session (as over WebSocket)."""
    for key in params:
        if key.lower() not in TRACKED and key.lower() not in ("extra_float_digits",):
            raise HttpExecError(400, "08P01", f"unsupported startup parameter: {key}")


# --------------------------------------------------------------------------- executor

class _HttpSession:
    __slots__ = ("sid", "seq", "session", "stream", "task", "principal", "keep", "busy",
                 "timer", "issued")

    def __init__(self, sid: bytes, session: PreauthSession, stream: HttpStream,
                 task: asyncio.Task[None], principal: Principal, keep: bool) -> None:
        self.sid = sid
        self.seq = 0
        self.session = session
        self.stream = stream
        self.task = task
        self.principal = principal
        self.keep = keep
        self.busy = False
        self.timer: asyncio.TimerHandle | None = None
        self.issued = 0


class HttpExecutor:
    """One per Gateway (see :func:`get_executor`)."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self._secret = secrets.token_bytes(32)
        #: who issued the tokens (gateway/cluster.py): b"" for a lone process
        self.owner = b""
        self.sessions: dict[bytes, _HttpSession] = {}
        self._ended: OrderedDict[bytes, tuple[str, int]] = OrderedDict()  # sid -> (why, last seq)
        # counters (tests, metrics)
        self.requests = 0
        #: requests whose HTTP client disconnected before the reply (work cancelled)
        self.abandoned = 0
        self.sessions_started = 0
        self.sessions_expired = 0

    # ------------------------------------------------------------- auth
    async def authenticate(self, database: str, user: str | None, password: str | None,
                           token: str | None, peer: str = "?") -> Principal:
        """Check credentials like any client: unknown user and wrong password are
        the same 28P01, cost the same and are throttled per source address and
        user (gateway/auth.py).  ``token``: an API token (``[users.X] tokens``)."""
        auth = self.gw.authenticator
        method = "password"
        try:
            if token is not None:
                try:
                    user = await auth.authenticate_token(token, user, peer)
                except Throttled:
                    raise
                except AuthFailed:
                    raise HttpAuthError(401, "28P01",
                                        f'password authentication failed for user "{user or ""}"') from None
                method = "token"
            else:
                if not user:
                    raise HttpAuthError(401, "28000", "no PostgreSQL user name specified")
                if auth.auth_type == "trust":
                    method = "trust"
                if not await auth.verify_password(user, password, peer):
                    raise HttpAuthError(401, "28P01", f'password authentication failed for user "{user}"')
        except Throttled as exc:
            raise HttpAuthError(429, exc.sqlstate, exc.message) from None
        if not database:
            database = user
        if database not in self.gw.pools:
            raise HttpAuthError(404, "3D000", f'database "{database}" does not exist')
        return Principal(user, database, method)

    # ------------------------------------------------------------- tokens
    def _sign(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:16]

    def _issue(self, hs: _HttpSession) -> str:
        hs.seq += 1
        hs.issued = int(time.time() * 1000)
        payload = hs.sid + struct.pack("!QQ", hs.seq, hs.issued) + self.owner
        return _b64(payload) + "." + _b64(self._sign(payload))

    def set_identity(self, secret: bytes, owner: bytes) -> None:
        """Workers / instances (gateway/cluster.py): a shared token key, and the
        owner (worker index + advertise_url) every token issued here names."""
        self._secret = secret
        self.owner = owner

    def token_owner(self, token: str) -> bytes:
        """The owner a token names, once its MAC is checked (401 for a forgery)."""
        return self._verify(token)[32:]

    def _verify(self, token: str) -> bytes:
        try:
            p, _, mac = token.partition(".")
            payload = _unb64(p)
            sig = _unb64(mac)
        except (ValueError, TypeError):
            payload, sig = b"", b""
        if len(payload) < 32 or len(payload) > 1024 or not hmac.compare_digest(sig, self._sign(payload)):
            raise HttpExecError(401, "08P01", "invalid HTTP session token (malformed or not signed by this gateway)")
        return payload

    def session_principal(self, token: str) -> Principal:
        """Who the session of ``token`` belongs to (the token is not consumed)."""
        return self._lookup(token).principal

    def _lookup(self, token: str) -> _HttpSession:
        payload = self._verify(token)
        if payload[32:] != self.owner:
            # another worker/instance, or an earlier process at this address (takeover, restart)
            raise HttpExecError(401, "08P01", "invalid HTTP session token (issued by another gateway process, "
                                              "and not forwarded to it: docs/scaling.md)")
        sid = payload[:16]
        seq, _issued = struct.unpack("!QQ", payload[16:32])
        hs = self.sessions.get(sid)
        if hs is None:
            reason, last = self._ended.get(sid, ("it no longer exists", 0))
            if seq < last:
                raise HttpExecError(409, "08P01", "HTTP session token was already used (tokens are single-use); "
                                                  f"the session has ended since: {reason}")
            raise HttpExecError(410, "08003", f"HTTP session is gone: {reason}")
        if seq != hs.seq or hs.busy:
            raise HttpExecError(409, "08P01", "HTTP session token was already used (tokens are single-use: "
                                              "present the one returned by the latest response)")
        return hs

    def _forget(self, hs: _HttpSession, reason: str) -> None:
        if self.sessions.get(hs.sid) is hs:
            del self.sessions[hs.sid]
        if hs.timer is not None:
            hs.timer.cancel()
            hs.timer = None
        self._ended[hs.sid] = (reason, hs.seq)
        while len(self._ended) > _ENDED_MEMORY:
            self._ended.popitem(last=False)

    def _arm(self, hs: _HttpSession) -> None:
        if hs.timer is not None:
            hs.timer.cancel()
        in_xact = hs.stream.status not in (None, 73)
        s = self.settings
        delay = s.http_session_timeout if in_xact else s.http_idle_session_timeout
        hs.timer = self.gw.loop.call_later(delay, self._expire, hs, in_xact, delay)

    def _expire(self, hs: _HttpSession, in_xact: bool, delay: float) -> None:
        hs.timer = None
        if hs.busy or self.sessions.get(hs.sid) is not hs:
            return
        self.sessions_expired += 1
        if in_xact:
            reason = (f"expired after {delay:g}s idle (http_session_timeout); "
                      "its transaction was rolled back")
        else:
            reason = f"expired after {delay:g}s idle (http_idle_session_timeout)"
        self._forget(hs, reason)
        hs.stream.shutdown()  # the Session ends: ROLLBACK if needed, server released

    def _on_session_end(self, hs: _HttpSession) -> None:
        if self.sessions.get(hs.sid) is hs:
            f = hs.stream.fatal
            why = f"ended by the gateway: {f.get('C')} {f.get('M')}" if f else "ended by the gateway"
            self._forget(hs, why)

    # ------------------------------------------------------------- sessions
    def _start_session(self, principal: Principal, params: dict[str, str]) -> tuple[PreauthSession, HttpStream, asyncio.Task[None]]:
        gw = self.gw
        ensure = getattr(gw, "_ensure_started", None)
        if ensure is not None:
            ensure()
        stream = HttpStream()
        session = PreauthSession(gw, stream, principal, params)
        stream.owed = session.replies_owed
        all_sessions = getattr(gw, "_all_sessions", None)

        async def run() -> None:
            if all_sessions is not None:
                all_sessions.add(session)
            try:
                await session.run()
            except asyncio.CancelledError:
                raise
            except Exception:  # pragma: no cover - Session.run handles everything
                log.exception("unexpected error in HTTP session")
            finally:
                if all_sessions is not None:
                    all_sessions.discard(session)
                stream.shutdown()

        task = gw.loop.create_task(run())
        self.sessions_started += 1
        return session, stream, task

    async def hello(self, principal: Principal, params: dict[str, str] | None = None, *,
                    keep: bool = False, timeout: float | None = None) -> ExecResult:
        """Open a session without running anything: ``data`` is the startup reply
        (AuthenticationOk, ParameterStatus..., BackendKeyData, ReadyForQuery)."""
        return await self.run(principal, b"", timeout=timeout, params=params, keep=keep)

    async def run(self, principal: Principal | None, frontend: bytes, *, session_token: str | None = None,
                  timeout: float | None = None, params: dict[str, str] | None = None,
                  keep: bool = False, max_response: int | None = None,
                  max_messages: int | None = None) -> ExecResult:
        """Run one batch (see the module doc).  Raises :class:`HttpExecError`
        for a request that cannot run (bad token, malformed batch, limits)."""
        s = self.settings
        self.requests += 1
        if timeout is None:
            timeout = s.http_request_timeout or None
        limit = max_messages if max_messages is not None else s.http_max_batch_messages
        max_resp = max_response if max_response is not None else s.http_max_response_size
        # -- frame the batch (headers only)
        chunk, expected, terminate = _frame_batch(frontend, s.max_message_size, limit)
        hello = not frontend
        # -- find or make the session
        if session_token is not None:
            hs = self._lookup(session_token)
            if principal is not None and (principal.user != hs.principal.user
                                          or principal.database != hs.principal.database):
                raise HttpExecError(403, "08P01", "the HTTP session token belongs to another user or database")
            if params:
                check_startup_params(params)  # ignored for an existing session: set at its start
            hs.busy = True
            hs.seq += 1  # consumed: a replay of this token is refused from now on
            if hs.timer is not None:
                hs.timer.cancel()
                hs.timer = None
            stream, session = hs.stream, hs.session
            new = False
        else:
            if principal is None:
                raise HttpExecError(401, "28000", "no credentials and no session token")
            p = dict(params or {})
            check_startup_params(p)
            session, stream, task = self._start_session(principal, p)
            hs = _HttpSession(secrets.token_bytes(16), session, stream, task, principal, keep)
            hs.busy = True
            new = True
        done: asyncio.Future[None] | None = None
        try:
            parameters: dict[str, str] = {}
            startup = b""
            if new:
                try:
                    hello_bytes = await asyncio.wait_for(asyncio.shield(stream.hello), timeout)
                except (ConnectionResetError, asyncio.TimeoutError):
                    stream.shutdown()
                    fatal = stream.fatal or {"S": "FATAL", "V": "FATAL", "C": "08006",
                                             "M": "could not start an HTTP session: timeout"}
                    return ExecResult(b"", None, None, 0, fatal, False, {}, session.process_id)
                parameters = _parameter_status(hello_bytes)
                startup = hello_bytes
                if hello:
                    hs.keep = keep
                    result = ExecResult(hello_bytes, "I", None, 1, None, False, parameters, session.process_id,
                                        hello_bytes)
                    if keep:
                        self.sessions[hs.sid] = hs
                        hs.task.add_done_callback(lambda _t, hs=hs: self._on_session_end(hs))
                        result.session_token = self._issue(hs)
                        self._arm(hs)
                    else:
                        stream.shutdown()
                    return result
            elif hello:
                return ExecResult(b"", chr(stream.status or 73), self._issue(hs), 0, None, False, {},
                                  session.process_id)
            cc = session.cache
            if cc is not None:
                cc.state = None
            done = stream.begin(expected, max_resp)
            stream.on_overflow = lambda: self.gw.spawn(self._cancel(session))
            if chunk:
                stream.feed(chunk)
            timed_out = False
            if not done.done():
                try:
                    await asyncio.wait_for(asyncio.shield(done), timeout)
                except asyncio.TimeoutError:
                    timed_out = True
                    await self._cancel(session)
                    try:
                        await asyncio.wait_for(asyncio.shield(done), CANCEL_GRACE)
                    except asyncio.TimeoutError:
                        session.terminate("57014", "canceling HTTP request: the statement did not end "
                                                   "after a cancel (http_request_timeout)")
                        try:
                            await asyncio.wait_for(asyncio.shield(done), CANCEL_GRACE)
                        except asyncio.TimeoutError:  # pragma: no cover
                            stream.shutdown()
            if stream.zs < expected and not stream.at_z and not (stream.closed or timed_out or terminate):
                # The batch's last Query/FunctionCall was skipped (skip-till-Sync after
                # an error in an extended-protocol message before it): no ReadyForQuery
                # will come.  End the skip with a Sync; its ReadyForQuery ends the response.
                more = stream.more(1)
                stream.feed(m.SYNC)
                try:
                    await asyncio.wait_for(asyncio.shield(more), timeout or CANCEL_GRACE)
                except asyncio.TimeoutError:  # pragma: no cover - a Sync is always answered
                    session.terminate("08006", "the server did not answer a Sync")
            data = stream.take_output()
            ended = stream.closed and (not stream.at_z or session.replies_owed() > 0)
            status = None if ended else chr(stream.status or 73)
            if stream.overflow and not ended:
                err = HttpExecError(507, "54000", f"response exceeds {max_resp} bytes (http_max_response_size)"
                                    "; the statement was cancelled")
                err.session_token = self._finish(hs, new, status, terminate)
                raise err
            res = ExecResult(data, status, None, stream.zs, stream.fatal if ended else None, timed_out,
                             parameters, session.process_id, startup)
            if cc is not None:
                res.cache = cc.state or "miss"
            if terminate:
                res.status = None  # the session is closed (as asked)
            elif ended and res.fatal is None:
                res.fatal = {"S": "FATAL", "V": "FATAL", "C": "08006", "M": "the HTTP session ended unexpectedly"}
            res.session_token = self._finish(hs, new, status, terminate)
            return res
        except asyncio.CancelledError:
            # The HTTP client went away before its reply: cancel what runs, then
            # end the session (ROLLBACK if needed, server back to the pool).
            if not new:
                self._forget(hs, "its HTTP client went away during a request")
            self.gw.spawn(self._abandon(session, stream, done))
            raise
        except BaseException:
            if hs.busy and not new:
                hs.busy = False
                if self.sessions.get(hs.sid) is hs:
                    self._arm(hs)
            elif new and self.sessions.get(hs.sid) is not hs:
                stream.shutdown()
            raise
        finally:
            hs.busy = False

    def _finish(self, hs: _HttpSession, new: bool, status: str | None, terminate: bool) -> str | None:
        """After a batch: keep the session (new token) or end it."""
        if status is None or terminate or (status == "I" and not hs.keep):
            if not new:
                self._forget(hs, "ended by the client (Terminate)" if terminate else
                             "its transaction ended" if status is not None else "ended by an error")
            hs.stream.shutdown()
            return None
        if new:
            self.sessions[hs.sid] = hs
            hs.task.add_done_callback(lambda _t, hs=hs: self._on_session_end(hs))
        token = self._issue(hs)
        hs.busy = False
        self._arm(hs)
        return token

    async def _abandon(self, session: PreauthSession, stream: HttpStream,
                       done: "asyncio.Future[None] | None") -> None:
        """Work of a request whose client disconnected: CancelRequest to the
        running query, wait for the batch to end, then close the session."""
        self.abandoned += 1
        try:
            if done is not None and not done.done():
                await self._cancel(session)
                try:
                    await asyncio.wait_for(asyncio.shield(done), CANCEL_GRACE)
                except asyncio.TimeoutError:
                    session.terminate("57014", "canceling HTTP request: its client went away")
        finally:
            stream.shutdown()

    async def _cancel(self, session: PreauthSession) -> None:
        await self.gw.handle_cancel(session.process_id, session.secret_key)

    async def cancel_session(self, process_id: int, secret_key: int) -> None:
        """Forward a cancel for an HTTP session's running batch (keyed like a CancelRequest)."""
        await self.gw.handle_cancel(process_id, secret_key)

    async def close_session(self, session_token: str) -> None:
        """End an HTTP session now (ROLLBACK if in a transaction, server released)."""
        hs = self._lookup(session_token)
        self._forget(hs, "ended by the client")
        hs.stream.shutdown()

    def stats(self) -> dict[str, int]:
        return {"http_sessions": len(self.sessions), "http_requests": self.requests,
                "http_sessions_started": self.sessions_started,
                "http_sessions_expired": self.sessions_expired}


def get_executor(gateway: Any) -> HttpExecutor:
    """The gateway's HttpExecutor (created on first use, kept as ``gateway.http_executor``)."""
    ex = getattr(gateway, "http_executor", None)
    if ex is None:
        ex = HttpExecutor(gateway)
        gateway.http_executor = ex
    return ex  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- helpers

def _frame_batch(frontend: bytes, max_message_size: int, limit: int) -> tuple[bytes, int, bool]:
    """Validate a batch: ``(bytes to forward, ReadyForQuery expected, ends with Terminate)``."""
    if not frontend:
        return b"", 0, False
    reader = FrontendReader(max_size=max_message_size, startup=False)
    reader.feed(frontend)
    try:
        chunk, idx = reader.read_raw()
    except ProtocolError as exc:
        raise HttpExecError(400, "08P01", f"invalid batch: {exc}") from None
    if reader.buffered:
        raise HttpExecError(400, "08P01", "invalid batch: it ends with an incomplete message")
    if len(idx) > limit:
        raise HttpExecError(413, "54000", f"batch has {len(idx)} messages; the limit is {limit} "
                                          "(http_max_batch_messages)")
    expected = 0
    terminate = False
    last = -1
    for i, (t, s, _e) in enumerate(idx):
        if t in _COUNTED:
            expected += 1
            last = i
        elif t == _X:
            if i != len(idx) - 1:
                raise HttpExecError(400, "08P01", "invalid batch: Terminate must be the last message")
            terminate = True
            chunk = chunk[: s - 5]
    end = len(idx) - (1 if terminate else 0)
    if end > 0 and last != end - 1:
        raise HttpExecError(400, "08P01", "invalid batch: it must end with Sync, Query or FunctionCall "
                                          "(the response ends at the matching ReadyForQuery)")
    return chunk, expected, terminate


def _parameter_status(startup_reply: bytes) -> dict[str, str]:
    reader = MessageReader()
    reader.feed(startup_reply)
    out: dict[str, str] = {}
    for t, body in reader.read():
        if t == _S:
            msg = m.decode_backend(t, body)
            out[msg.name] = msg.value  # type: ignore[attr-defined]
    return out


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
