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
import functools
import logging
import secrets
from dataclasses import dataclass, field
from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, MessageReader, ProtocolError

from .auth import AuthFailed, Throttled
from .http_sessions import (
    HttpAuthError,
    HttpExecError,
    HttpSessions,
    Principal,
    _HttpSession,
)
from .http_stream import COPY_UNSUPPORTED, HttpStream
from .params import canonical as canonical_value
from .login import TRACKED
from .session import Session

__all__ = [
    "HttpExecError", "HttpAuthError", "Principal", "ExecResult", "HttpStream", "PreauthSession",
    "HttpExecutor", "get_executor", "check_startup_params", "COPY_UNSUPPORTED", "CANCEL_GRACE",
]

log = logging.getLogger("wirepool.gateway.http")

_Q, _S, _F, _X = 81, 83, 70, 88
_COUNTED = (_Q, _S, _F)
#: seconds allowed after a CancelRequest for the batch to end before the session is killed
CANCEL_GRACE = 5.0


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

class HttpExecutor(HttpSessions):
    """One per Gateway (see :func:`get_executor`); the session table and tokens
    are :class:`~gateway.http_sessions.HttpSessions`'."""

    def __init__(self, gateway: Any) -> None:
        super().__init__(gateway)
        # counters (tests, metrics)
        self.requests = 0
        #: requests whose HTTP client disconnected before the reply (work cancelled)
        self.abandoned = 0
        self.sessions_started = 0

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
                # a user not in [users] is looked up with the database's auth_query (docs/auth-query.md)
                if not await auth.verify_password(user, password, peer, database or user):
                    raise HttpAuthError(401, "28P01", f'password authentication failed for user "{user}"')
        except Throttled as exc:
            raise HttpAuthError(429, exc.sqlstate, exc.message) from None
        except AuthFailed as exc:  # 08006: the auth_query lookup could not reach PostgreSQL
            raise HttpAuthError(503, exc.sqlstate, exc.message) from None
        if not database:
            database = user
        if database not in self.gw.pools:
            raise HttpAuthError(404, "3D000", f'database "{database}" does not exist')
        return Principal(user, database, method)

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
                        hs.task.add_done_callback(functools.partial(self._session_task_done, hs))
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
            hs.task.add_done_callback(functools.partial(self._session_task_done, hs))
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
    return ex


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
            assert isinstance(msg, m.ParameterStatus)
            out[msg.name] = msg.value
    return out
