"""The HTTP session table: who a request is, its single-use session tokens, expiry.

Part of :mod:`gateway.http_exec` (which re-exports every public name here):
:class:`HttpSessions` is the base of :class:`gateway.http_exec.HttpExecutor`
that issues and checks session tokens, finds a token's session and forgets
sessions that ended or idled out; :class:`HttpExecError` is the error every
request that cannot run gets.

Session tokens: ``base64url(sid[16] || seq[8] || issued_ms[8] || owner) "."
base64url(HMAC-SHA256(secret, payload)[:16])`` with a per-gateway random secret
(shared by workers and instances, :meth:`HttpSessions.set_identity`).  Each
response issues the next ``seq``; presenting an older one is a replay (409,
08P01); a bad MAC is a forgery (401, 08P01); a session that has gone answers
410 with 08003 and the reason.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from driver.protocol import messages as m

if TYPE_CHECKING:
    from .http_exec import PreauthSession
    from .http_stream import HttpStream

__all__ = ["HttpExecError", "HttpAuthError", "Principal", "HttpSessions"]

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


class HttpSessions:
    """Open HTTP sessions by id, their tokens and idle timers (one table per executor)."""

    def __init__(self, gateway: Any) -> None:
        self.gw = gateway
        self.settings = gateway.settings
        self._secret = secrets.token_bytes(32)
        #: who issued the tokens (gateway/cluster.py): b"" for a lone process
        self.owner = b""
        self.sessions: dict[bytes, _HttpSession] = {}
        self._ended: OrderedDict[bytes, tuple[str, int]] = OrderedDict()  # sid -> (why, last seq)
        self.sessions_expired = 0

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

    def _session_task_done(self, hs: _HttpSession, _task: object) -> None:
        self._on_session_end(hs)

    def _on_session_end(self, hs: _HttpSession) -> None:
        if self.sessions.get(hs.sid) is hs:
            f = hs.stream.fatal
            why = f"ended by the gateway: {f.get('C')} {f.get('M')}" if f else "ended by the gateway"
            self._forget(hs, why)


def _b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode("ascii")


def _unb64(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
