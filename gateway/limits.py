"""Limits for clients that have not logged in yet, and for HTTP connections.

PostgreSQL reads at most 10,000 bytes of startup packet and 65,535 bytes per
authentication message before a client has proven who it is; a connection
that sends an impossible message type or length before login is closed at
once.  The gateway does the same (``FrontendReader`` limits, see
:func:`login_reader`) and adds what a server on the internet needs and
PgBouncer has none of:

* ``max_login_clients``: connections still logging in (pg_listen and
  WebSocket, from accept until AuthenticationOk).  Past it a new connection
  gets FATAL 53300 and is closed, before anything of it is read.
* ``login_buffer_size``: bytes the gateway buffers for one unauthenticated
  connection (transport queue; a WebSocket frame on the permessage-deflate
  path).  Reading pauses past it; bytes pipelined after the password are read
  after login.
* ``max_http_conn``: HTTP connections (not upgraded to WebSocket) open at
  once; past it (or past ``max_client_conn`` HTTP connections) a new one gets
  ``503`` and is closed at once, so slow clients cannot take every file
  descriptor.  Open HTTP connections also count toward ``max_client_conn``
  for pg_listen and WebSocket logins (53300).

Every shed client is logged -- at most once per :data:`SHED_LOG_INTERVAL` per
reason, with the number shed since the previous line.

This module is sans-I/O apart from logging: the listeners and the session
call it.
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any, Callable

from driver.protocol.framing import MAX_STARTUP_SIZE, FrontendReader, ProtocolError

__all__ = ["MAX_AUTH_MESSAGE_SIZE", "JSON_MAX_DEPTH", "json_too_deep", "SHED_LOG_INTERVAL", "ShedLog", "Limits", "login_reader",
           "check_login_message"]

log = logging.getLogger("wirepool.limits")

#: Postgres' PG_MAX_AUTH_TOKEN_LENGTH: the largest PasswordMessage/SASL message before login.
MAX_AUTH_MESSAGE_SIZE = 65535
#: at most one log line per reason this often (seconds)
SHED_LOG_INTERVAL = 10.0
_PASSWORD = 112  # 'p': the only typed message a client sends before login


class ShedLog:
    """Rate-limited warnings: one line per reason per ``interval`` seconds,
    counting the events folded into it."""

    def __init__(self, interval: float = SHED_LOG_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._last: dict[str, float] = {}
        self._count: dict[str, int] = {}
        #: every shed event by reason, logged or not (for metrics and tests)
        self.totals: dict[str, int] = {}

    def shed(self, reason: str, peer: str = "?") -> bool:
        """Record one shed client; True when a line was logged."""
        self.totals[reason] = self.totals.get(reason, 0) + 1
        n = self._count.get(reason, 0) + 1
        now = self.clock()
        last = self._last.get(reason)
        if last is not None and now - last < self.interval:
            self._count[reason] = n
            return False
        self._last[reason] = now
        self._count[reason] = 0
        log.warning("shedding clients: %s (%d since the last report; latest %s)", reason, n, peer)
        return True


def _open_file_limit() -> int:
    try:
        import resource
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):  # pragma: no cover - not POSIX
        return 4096
    return soft if 0 < soft < (1 << 20) else 1 << 20


def effective_caps(settings: Any) -> tuple[int, int]:
    """``(max_login_clients, max_http_conn)`` with 0 ("auto") resolved from
    the process's open-file limit, so that neither kind of connection can take
    every file descriptor: logins a quarter of it (at most 1000), HTTP half."""
    nofile = _open_file_limit()
    login = settings.max_login_clients or max(16, min(1000, nofile // 4))
    http = settings.max_http_conn or max(16, nofile // 2)
    return login, http


class Limits:
    """Counters of the connections the limits apply to (one per Gateway)."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.max_login_clients, self.max_http_conn = effective_caps(settings)
        self.logging_in = 0
        self.http_open = 0
        self.shed_log = ShedLog()

    def update(self, settings: Any) -> None:
        """New settings (RELOAD, SIGHUP, the admin SET): the caps apply to the next
        connection; connections already open or logging in are never closed for it."""
        self.settings = settings
        self.max_login_clients, self.max_http_conn = effective_caps(settings)

    # -- login phase (pg_listen and WebSocket sessions)
    def try_begin_login(self, peer: str) -> bool:
        cap = self.max_login_clients
        if self.logging_in >= cap:
            self.shed_log.shed(f"max_login_clients ({cap}) connections still logging in", peer)
            return False
        self.logging_in += 1
        return True

    def end_login(self) -> None:
        self.logging_in -= 1

    # -- HTTP connections (listen, before any WebSocket upgrade)
    def http_full(self) -> str | None:
        """Why no further HTTP connection may open now (None: one may)."""
        if self.http_open >= self.max_http_conn:
            return f"max_http_conn ({self.max_http_conn}) HTTP connections open"
        if self.http_open >= self.settings.max_client_conn:
            # (requests on the HTTP connections admitted are counted with the
            # sessions: POST /sql past max_client_conn gets its 53300 error)
            return f"max_client_conn ({self.settings.max_client_conn}) HTTP connections open"
        return None

    def try_open_http(self, peer: str) -> bool:
        full = self.http_full()
        if full is not None:
            self.shed_log.shed(full, peer)
            return False
        self.http_open += 1
        return True

    def close_http(self) -> None:
        self.http_open -= 1

    def clients_beside(self, stream: Any) -> int:
        """Connections counted toward ``max_client_conn`` besides the logged-in
        sessions: open HTTP connections -- for a pg_listen or WebSocket client
        (an HTTP request's own session runs on one of them: not counted twice)."""
        return 0 if getattr(stream, "kind", "") == "http" else self.http_open


def login_reader(settings: Any) -> FrontendReader:
    """The reader of a new client connection: Postgres' pre-login limits
    (startup packet <= 10,000 bytes, authentication messages <= 65,535);
    :func:`after_login` lifts them to ``max_message_size``."""
    return FrontendReader(max_size=min(MAX_AUTH_MESSAGE_SIZE, settings.max_message_size),
                          max_startup_size=MAX_STARTUP_SIZE)


def after_login(reader: FrontendReader, settings: Any) -> None:
    reader.max_size = settings.max_message_size


def check_login_message(reader: FrontendReader) -> None:
    """Before login the next typed message can only be a PasswordMessage
    ('p'): any other type byte closes the connection at once, as Postgres
    does, without waiting for (or buffering) the rest of the message."""
    t = reader.peek_type()
    if t is not None and t != _PASSWORD:
        raise ProtocolError(f"expected password response, got message type {t!r}")


#: deepest JSON nesting accepted in a request (checked before parsing: Python's
#: parser would raise RecursionError near 1,000 levels) -- Neon's params are flat
JSON_MAX_DEPTH = 100
# a JSON string (skipped whole) or a bracket
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


def json_too_deep(data: bytes, limit: int = JSON_MAX_DEPTH) -> bool:
    """True when the JSON text ``data`` nests arrays/objects deeper than
    ``limit`` (brackets inside strings do not count).  Does not parse: a
    malformed document is left to the parser."""
    if data.count(b"[") + data.count(b"{") <= limit:
        return False
    depth = 0
    for mo in _JSON_TOKEN.finditer(data):
        c = data[mo.start()]
        if c == 91 or c == 123:  # [ {
            depth += 1
            if depth > limit:
                return True
        elif c == 93 or c == 125:  # ] }
            depth -= 1
    return False
