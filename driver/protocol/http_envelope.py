"""Sans-I/O client side of wirepool's Postgres-protocol-over-HTTP (``POST /pg``).

No sockets, no asyncio, standard library only (runs in Pyodide).  The format
is specified in ``docs/http-protocol.md``; in short, there is NO envelope:

* request body  = raw PostgreSQL v3 frontend messages (no StartupMessage), the
  batch ending with Query, Sync or FunctionCall (optionally + Terminate);
* response body = raw backend messages up to the final ReadyForQuery;
* everything else (credentials, database, session token, status) travels in
  HTTP headers.

So any HTTP client plus any Postgres message codec is enough, and no
``msgpack`` is needed (it is not available offline in Pyodide).

:class:`HttpSessionClient` turns the *byte stream* a
:class:`driver.connection.Connection` writes (StartupMessage first) into HTTP
requests, and HTTP responses back into the byte stream the protocol core
reads, emulating what HTTP has no notion of:

* startup: the StartupMessage becomes a "hello" request (``Wirepool-Session:
  new``; its body holds the batches already waiting, if any: with
  ``lazy_connect`` login + first query cost one round trip) whose response
  starts with the gateway's real startup reply (AuthenticationOk,
  ParameterStatus..., BackendKeyData, ReadyForQuery);
  a pipelined PasswordMessage is dropped and answered with a synthesized
  AuthenticationCleartextPassword so the protocol core accepts it;
* batching: bytes are buffered until a Query/Sync/FunctionCall boundary; all
  complete batches waiting when a request can be sent go in ONE request;
* the session token: every response carries the next single-use token, which
  the next request presents (the driver keeps one gateway session per
  connection, so named prepared statements and transactions survive between
  requests);
* a lone ``BEGIN`` (the driver's ``transaction()`` start) is answered locally
  and sent in front of the next batch, so an interactive transaction of k
  statements costs k+1 round trips, not k+2;
* ``LISTEN`` is answered locally with an error (0A000): notifications need a
  persistent connection; COPY FROM STDIN is refused by the gateway (the
  driver's CopyData/CopyDone/CopyFail are dropped here);
* errors of the HTTP layer become ErrorResponse messages: per batch (with a
  ReadyForQuery, the connection stays usable) for a refused batch, or FATAL +
  end of stream when the session is lost (expired, replayed, forged token).

Use::

    c = HttpSessionClient(user="alice", password="secret", database="app")
    c.send(startup_and_query_bytes)
    req = c.next_request()          # HttpRequestSpec or None (waiting for a response / nothing to send)
    ... perform req.method req.path with req.headers and req.body ...
    c.receive_response(status, headers, body)     # or c.receive_failure("why")
    backend = c.data_received()     # bytes for ClientProtocol.receive_data; c.eof when the stream ended
"""

from __future__ import annotations

import base64
import re
from ._dataclass import dataclass, field
from typing import Iterable, Mapping
from urllib.parse import quote, urlencode

from . import messages as m
from .framing import FrontendReader, MessageReader, ProtocolError

__all__ = [
    "HttpSessionClient", "HttpRequestSpec", "CT_FRONTEND", "CT_BACKEND", "DEFAULT_PATH",
    "H_SESSION", "H_DATABASE", "H_PARAMS", "H_STATUS", "H_ERROR", "H_USER",
    "encode_cancel_request", "basic_authorization", "http_error_sqlstate",
]

DEFAULT_PATH = "/pg"
CANCEL_SUFFIX = "/cancel"
CT_FRONTEND = "application/vnd.wirepool.pg-frontend"
CT_BACKEND = "application/vnd.wirepool.pg-backend"
H_SESSION = "Wirepool-Session"
H_DATABASE = "Wirepool-Database"
H_USER = "Wirepool-User"
H_PARAMS = "Wirepool-Params"
H_STATUS = "Wirepool-Status"
H_ERROR = "Wirepool-Error"

_Q, _S, _F, _X, _P = 81, 83, 70, 88, 112
_COPY_FRONTEND = (100, 99, 102)  # d c f
_Z, _E = 90, 69
_BEGIN_RE = re.compile(
    r"\s*BEGIN(\s+TRANSACTION|\s+WORK)?"
    r"(\s+ISOLATION\s+LEVEL\s+(SERIALIZABLE|REPEATABLE\s+READ|READ\s+COMMITTED|READ\s+UNCOMMITTED))?"
    r"(\s+READ\s+ONLY|\s+READ\s+WRITE)?(\s+NOT\s+DEFERRABLE|\s+DEFERRABLE)?\s*;?\s*", re.IGNORECASE)
_LISTEN_RE = re.compile(r"\s*LISTEN\s", re.IGNORECASE)
#: HTTP statuses after which the gateway session is gone (token refused or session ended).
_SESSION_LOST = (401, 403, 404, 409, 410)

LISTEN_UNSUPPORTED = ("LISTEN is not supported over the HTTP transport: notifications need a "
                      "persistent connection (use add_listener, which streams the gateway's GET /listen, "
                      "or ws://, wss:// or postgresql://)")


def http_error_sqlstate(status: int) -> str:
    """SQLSTATE used when an HTTP error carries no ErrorResponse."""
    if status in (413, 507):
        return "54000"  # program_limit_exceeded
    if status == 401:
        return "28P01"
    if status in (409, 410):
        return "08003"
    if status in (502, 503, 504):
        return "08006"
    return "08P01"


def basic_authorization(user: str, password: str) -> str:
    raw = f"{user}:{password}".encode("utf-8")
    return "Basic " + base64.b64encode(raw).decode("ascii")


def encode_cancel_request(process_id: int, secret_key: int) -> bytes:
    """Body of ``POST <path>/cancel``: a standard 16-byte CancelRequest."""
    return m.cancel_request(process_id, secret_key)


@dataclass
class HttpRequestSpec:
    """One HTTP request to perform."""

    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    #: ReadyForQuery messages the response must contain
    expected: int = 0
    #: the hello (startup) request
    hello: bool = False
    #: the final request of a closing connection (Terminate)
    terminate: bool = False


@dataclass
class _Item:
    """A complete batch (HTTP) or a locally answered one."""

    body: bytes = b""
    expected: int = 0
    local: bytes | None = None  # local reply (no request)
    begin: bool = False  # a deferrable lone BEGIN (answered locally, sent with the next batch)


@dataclass
class HttpSessionClient:
    user: str = ""
    password: str | None = None
    database: str = ""
    #: API token (``Authorization: Bearer``) instead of user/password
    api_token: str | None = None
    path: str = DEFAULT_PATH
    #: extra request headers (e.g. Host is set by the HTTP client)
    extra_headers: list[tuple[str, str]] = field(default_factory=list)
    #: startup parameters (tracked ones: application_name, TimeZone...)
    params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._reader = FrontendReader(startup=True)
        self._pending: list[bytes] = []  # typed messages after the last boundary
        self._pending_count = 0
        self._items: list[_Item] = []
        self._out: list[bytes] = []
        self._token: str | None = None
        self._status = "I"
        self._started = False
        self._hello_sent = False
        self._password_early = False
        self._in_flight: HttpRequestSpec | None = None
        self._in_flight_begin = False
        self._deferred_begin: bytes | None = None
        self._terminate = False
        self._terminate_sent = False
        self.eof = False
        #: HTTP requests made so far (tests, metrics)
        self.requests = 0

    # ------------------------------------------------------------------ input
    def send(self, data: bytes) -> None:
        """Frontend bytes written by the connection."""
        if self.eof or self._terminate:
            return
        reader = self._reader
        reader.feed(data)
        try:
            msgs = reader.read()
        except ProtocolError as exc:  # pragma: no cover - our own protocol core writes these
            self._lost("08P01", f"malformed frontend data: {exc}")
            return
        for mtype, body in msgs:
            if mtype == m.F.UNTYPED:
                self._startup(body)
                continue
            if not self._started:  # pragma: no cover - the core always starts with a StartupMessage
                continue
            if mtype == _P:
                if not self._hello_sent or self._in_flight is not None and self._in_flight.hello:
                    self._password_early = True
                continue  # credentials travel in headers
            if mtype in _COPY_FRONTEND:
                continue  # COPY FROM STDIN is refused by the gateway; nothing to send
            if mtype == _X:
                self._terminate = True
                self._pending.clear()
                self._pending_count = 0
                break
            raw = _frame(mtype, body)
            if mtype == _Q:
                sql = _query_text(body)
                if not self._pending:
                    if _LISTEN_RE.match(sql):
                        self._items.append(_Item(local=m.error("0A000", LISTEN_UNSUPPORTED)))
                        continue
                    if _BEGIN_RE.fullmatch(sql):
                        self._items.append(_Item(body=raw, expected=1, begin=True))
                        continue
            self._pending.append(raw)
            if mtype in (_Q, _S, _F):
                self._items.append(_Item(body=b"".join(self._pending), expected=self._pending_count + 1))
                self._pending.clear()
                self._pending_count = 0
            # (a typed message other than a boundary waits in _pending)

    def _startup(self, body: bytes) -> None:
        msg = m.decode_frontend(m.F.UNTYPED, body)
        if not isinstance(msg, m.StartupMessage):  # SSLRequest / CancelRequest: not over HTTP
            self._lost("08P01", "only a StartupMessage may start an HTTP session")
            return
        params = dict(msg.params)
        user = params.pop("user", "")
        database = params.pop("database", "")
        if user and not self.user:
            self.user = user
        if database and not self.database:
            self.database = database
        self.params.update(params)
        self._started = True

    # ------------------------------------------------------------------ requests
    def next_request(self) -> HttpRequestSpec | None:
        """The next HTTP request to perform (None: nothing to send now, or a
        request is in flight -- requests are strictly sequential)."""
        if self._in_flight is not None or self.eof:
            return None
        if not self._started:
            return None
        if not self._hello_sent:
            # The hello, with whatever complete batches are already waiting
            # (lazy connect: login + first query in one round trip).
            self._hello_sent = True
            bodies: list[bytes] = []
            expected = 1
            while self._items and self._items[0].local is None:
                item = self._items.pop(0)
                bodies.append(item.body)
                expected += item.expected
            req = HttpRequestSpec("POST", self.path, self._headers(hello=True), b"".join(bodies), expected,
                                  hello=True)
            return self._flight(req)
        self._drain_local()
        if self._items:
            bodies = []
            expected = 0
            begin_in_front = False
            if self._deferred_begin is not None:
                bodies.append(self._deferred_begin)
                self._deferred_begin = None
                begin_in_front = True
            while self._items and self._items[0].local is None:
                item = self._items[0]
                if item.begin and self._status == "I" and not bodies and len(self._items) == 1:
                    # A lone BEGIN: answer it now, send it in front of the next batch.
                    self._items.pop(0)
                    self._deferred_begin = item.body
                    self._status = "T"
                    self._out.append(m.command_complete("BEGIN") + m.ready_for_query("T"))
                    return None
                self._items.pop(0)
                bodies.append(item.body)
                expected += item.expected
            if bodies:
                req = HttpRequestSpec("POST", self.path, self._headers(), b"".join(bodies),
                                      expected + (1 if begin_in_front else 0))
                self._in_flight_begin = begin_in_front
                return self._flight(req)
            self._drain_local()
        if self._terminate and not self._terminate_sent:
            self._terminate_sent = True
            if self._token is None:
                self.eof = True
                return None
            self._deferred_begin = None  # never sent: nothing to roll back
            req = HttpRequestSpec("POST", self.path, self._headers(), m.TERMINATE, 0, terminate=True)
            return self._flight(req)
        return None

    def _flight(self, req: HttpRequestSpec) -> HttpRequestSpec:
        self._in_flight = req
        self.requests += 1
        return req

    def _drain_local(self) -> None:
        items = self._items
        while items and items[0].local is not None:
            item = items.pop(0)
            assert item.local is not None
            self._out.append(item.local + m.ready_for_query(self._status))

    def _headers(self, hello: bool = False) -> list[tuple[str, str]]:
        h: list[tuple[str, str]] = [("Content-Type", CT_FRONTEND), ("Accept", CT_BACKEND)]
        if hello or self._token is None:
            if self.api_token is not None:
                h.append(("Authorization", "Bearer " + self.api_token))
                if self.user:
                    h.append((H_USER, self.user))
            elif self.password is not None:
                h.append(("Authorization", basic_authorization(self.user, self.password)))
            else:
                h.append((H_USER, self.user))
            h.append((H_DATABASE, quote(self.database, safe="")))
            if self.params:
                h.append((H_PARAMS, urlencode(self.params)))
            h.append((H_SESSION, "new"))
        else:
            h.append((H_SESSION, self._token))
        h.extend(self.extra_headers)
        return h

    # ------------------------------------------------------------------ responses
    def receive_response(self, status: int, headers: Iterable[tuple[str, str]] | Mapping[str, str],
                         body: bytes) -> None:
        """The response to the request in flight."""
        req = self._in_flight
        if req is None:  # pragma: no cover - caller bug
            raise RuntimeError("no request in flight")
        self._in_flight = None
        hdrs = {k.lower(): v for k, v in (headers.items() if isinstance(headers, Mapping) else headers)}
        token = hdrs.get(H_SESSION.lower())
        if token:
            self._token = token
        begin_in_front, self._in_flight_begin = self._in_flight_begin, False
        if req.terminate:
            self.eof = True
            return
        if status == 200:
            state = hdrs.get(H_STATUS.lower(), "")
            if req.hello and self._password_early:
                body = m.AUTHENTICATION_CLEARTEXT_PASSWORD + body
            expected = req.expected
            if begin_in_front:
                body = _strip_first_ready(body)
                expected -= 1
            zs, last = _count_ready(body)
            if last is not None:
                self._status = last
            if state == "closed" or zs < expected:
                # The session ended (FATAL in the body): the stream ends here.
                self._out.append(body)
                self.eof = True
                return
            self._out.append(body)
            self._drain_local()
            return
        fields = _error_fields(body) or {
            "S": "ERROR", "V": "ERROR", "C": hdrs.get(H_ERROR.lower()) or http_error_sqlstate(status),
            "M": f"HTTP {status} from the gateway: {body[:200].decode('utf-8', 'replace').strip()}"}
        if req.hello or status in _SESSION_LOST or status >= 500 and status != 507 or not token and self._token is None:
            fatal = dict(fields, S="FATAL", V="FATAL")
            self._out.append(m.error_response(fatal))
            self.eof = True
            return
        # The batch was refused but the session lives on: each request of the
        # batch gets the error and its ReadyForQuery.
        if begin_in_front:
            self._deferred_begin = None
        err = m.error_response(dict(fields, S="ERROR", V="ERROR"))
        n = max(req.expected - (1 if begin_in_front else 0), 1)
        self._out.append((err + m.ready_for_query(self._status)) * n)
        self._drain_local()

    def receive_failure(self, reason: str) -> None:
        """The request in flight failed at the network level: the stream ends."""
        self._in_flight = None
        if not self.eof:
            self._lost("08006", f"HTTP request to the gateway failed: {reason}")

    def _lost(self, sqlstate: str, message: str) -> None:
        self._out.append(m.error(sqlstate, message, severity="FATAL"))
        self.eof = True

    # ------------------------------------------------------------------ output
    def data_received(self) -> bytes:
        """Backend bytes for the protocol core (and forget them)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    @property
    def has_data(self) -> bool:
        return bool(self._out)

    @property
    def session_token(self) -> str | None:
        return self._token

    @property
    def transaction_status(self) -> str:
        return self._status

    @property
    def busy(self) -> bool:
        return self._in_flight is not None


# ---------------------------------------------------------------------------- helpers

def _frame(mtype: int, body: bytes) -> bytes:
    return bytes((mtype,)) + (len(body) + 4).to_bytes(4, "big") + body


def _query_text(body: bytes) -> str:
    return body[:-1].decode("utf-8", "replace") if body.endswith(b"\x00") else body.decode("utf-8", "replace")


def _count_ready(data: bytes) -> tuple[int, str | None]:
    r = MessageReader(max_size=1 << 30)
    r.feed(data)
    _chunk, idx = r.read_raw()
    n = 0
    last: str | None = None
    for t, s, _e in idx:
        if t == _Z:
            n += 1
            last = chr(_chunk[s])
    return n, last


def _strip_first_ready(data: bytes) -> bytes:
    """Drop the replies of a deferred BEGIN (everything up to its ReadyForQuery)."""
    r = MessageReader(max_size=1 << 30)
    r.feed(data)
    chunk, idx = r.read_raw()
    for t, _s, e in idx:
        if t == _Z:
            return chunk[e:] + r.take_buffer()
    return data


def _error_fields(body: bytes) -> dict[str, str] | None:
    if len(body) < 6 or body[0] != _E:
        return None
    r = MessageReader(max_size=1 << 20)
    r.feed(body)
    try:
        for t, b in r.read():
            if t == _E:
                return m.decode_fields(b)
    except ProtocolError:
        return None
    return None
