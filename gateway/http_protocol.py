"""``POST /pg``: the PostgreSQL protocol over HTTP (the driver's http:// transport).

Format: ``docs/http-protocol.md``.  In short:

* request body = frontend messages (no startup), ending with Query / Sync /
  FunctionCall (optionally + Terminate); empty body = "hello" (the response
  is the startup reply: AuthenticationOk, ParameterStatus..., BackendKeyData,
  ReadyForQuery);
* credentials: ``Authorization: Basic`` (user:password) or ``Bearer`` (API
  token, optional ``Wirepool-User``), ``Wirepool-Database`` (percent-encoded;
  default: the user), ``Wirepool-Params`` (urlencoded tracked startup
  parameters) -- or ``Wirepool-Session: <token>`` alone to continue a session;
  ``Wirepool-Session: new`` opens a session kept after an idle result, whose
  response starts with the startup reply (even when the body is not empty);
* 200: body = backend messages up to the final ReadyForQuery;
  ``Wirepool-Status: I|T|E|closed``; ``Wirepool-Session: <next token>`` while
  the session lives;
* errors: HTTP status + one ErrorResponse message as the body and
  ``Wirepool-Error: <SQLSTATE>``.

``POST /pg/cancel``: body = a 16-byte CancelRequest carrying the
BackendKeyData of the hello reply; forwarded to the backend serving that
session (answered 204 whatever happens, as PostgreSQL answers nothing).

All execution goes through :class:`gateway.http_exec.HttpExecutor`.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any
from urllib.parse import parse_qsl, unquote

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, ProtocolError

from .http import HttpRequest, HttpResponse
from .http_exec import HttpExecError, get_executor

log = logging.getLogger("wirepool.gateway.http")

PATH = "/pg"
CANCEL_PATH = "/pg/cancel"
CT_BACKEND = "application/vnd.wirepool.pg-backend"
H_SESSION = "wirepool-session"
H_DATABASE = "wirepool-database"
H_USER = "wirepool-user"
H_PARAMS = "wirepool-params"
_NO_STORE = ("cache-control", "no-store")
#: severity of the ErrorResponse body per HTTP status (FATAL: the session is gone or never existed)
_FATAL_STATUSES = frozenset({401, 403, 404, 409, 410, 421, 503})


def error_response(e: HttpExecError) -> HttpResponse:
    severity = "FATAL" if e.status in _FATAL_STATUSES else "ERROR"
    headers = [("wirepool-error", e.sqlstate), _NO_STORE]
    if e.session_token:
        headers.append(("wirepool-session", e.session_token))
    if e.status == 401:
        headers.append(("www-authenticate", 'Basic realm="wirepool", charset="UTF-8"'))
    return HttpResponse(e.status, e.error_response(severity), CT_BACKEND, headers)


def parse_basic(value: str) -> tuple[str, str]:
    """(user, password) of an ``Authorization: Basic`` value; 401 28000 when malformed."""
    try:
        raw = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HttpExecError(401, "28000", "malformed Authorization: Basic header") from None
    user, sep, password = raw.partition(":")
    if not sep:
        raise HttpExecError(401, "28000", "malformed Authorization: Basic header (no ':')")
    return user, password


def _credentials(req: HttpRequest) -> tuple[str | None, str | None, str | None]:
    """(user, password, api_token) from the headers."""
    user = req.header(H_USER)
    password = token = None
    auth = (req.header("authorization") or "").strip()
    scheme, _, value = auth.partition(" ")
    scheme = scheme.lower()
    if scheme == "basic":
        user, password = parse_basic(value)
    elif scheme == "bearer":
        token = value.strip()
    elif auth:
        raise HttpExecError(401, "28000", f"unsupported Authorization scheme {scheme!r} (use Basic or Bearer)")
    return user, password, token


class HttpProtocolEndpoint:
    def __init__(self, app: Any) -> None:
        self.app = app

    @property
    def executor(self) -> Any:
        return get_executor(self.app.gateway)

    async def handle(self, req: HttpRequest) -> HttpResponse:
        try:
            return await self._handle(req)
        except HttpExecError as e:
            return error_response(e)

    async def _handle(self, req: HttpRequest) -> HttpResponse:
        ex = self.executor
        token = req.header(H_SESSION)
        keep = False
        if token is not None:
            token = token.strip()
            if token.lower() == "new":
                token, keep = None, True
            elif not token:
                token = None
        cluster = getattr(self.app.gateway, "cluster", None)
        if token is not None and cluster is not None:  # another worker's/instance's session: forward it
            fwd: HttpResponse | None = await cluster.route_pg(req, token)
            if fwd is not None:
                return fwd
        params: dict[str, str] = {}
        ph = req.header(H_PARAMS)
        if ph:
            params = dict(parse_qsl(ph, keep_blank_values=True))
            if any("\x00" in k or "\x00" in v for k, v in params.items()):
                raise HttpExecError(400, "08P01", "invalid Wirepool-Params: NUL characters are not allowed")
        principal = None
        if token is None:
            user, password, api_token = _credentials(req)
            database = unquote(req.header(H_DATABASE) or "")
            principal = await ex.authenticate(database, user, password, api_token, req.peer)
        elif req.header("authorization") is not None or req.header(H_USER) is not None:
            # Credentials with a session token must be the session's own: the
            # executor answers 403 for another user's (docs/http-protocol.md).
            user, password, api_token = _credentials(req)
            database = unquote(req.header(H_DATABASE) or "") or ex.session_principal(token).database
            principal = await ex.authenticate(database, user, password, api_token, req.peer)
        res = await ex.run(principal, req.body, session_token=token, params=params, keep=keep)
        headers = [("wirepool-status", res.status or "closed"), _NO_STORE]
        if res.cache is not None:
            headers.append(("wirepool-cache", res.cache))
        if res.session_token:
            headers.append(("wirepool-session", res.session_token))
        if res.timed_out:
            headers.append(("wirepool-timeout", "1"))
        data = res.data
        if keep and req.body:
            data = res.startup + data  # a new session's response starts with its startup reply
        if res.status is None and res.fatal is not None and b"SFATAL\x00" not in data:
            data += m.error_response(res.fatal)
        return HttpResponse(200, data, CT_BACKEND, headers)

    async def cancel(self, req: HttpRequest) -> HttpResponse:
        reader = FrontendReader(startup=True)
        reader.feed(req.body)
        try:
            msgs = reader.read()
        except ProtocolError:
            msgs = []
        if len(msgs) == 1:
            try:
                msg = m.decode_frontend(*msgs[0])
            except ProtocolError:
                msg = None
            if isinstance(msg, m.CancelRequest):
                await self.app.gateway.handle_cancel(msg.process_id, msg.secret_key)
                return HttpResponse(204, b"", None, [_NO_STORE])
        return error_response(HttpExecError(400, "08P01", "the body must be one CancelRequest (16 bytes)"))


def register(app: Any) -> HttpProtocolEndpoint:
    """Add ``POST /pg`` and ``POST /pg/cancel`` to the app's HTTP listener."""
    ep = HttpProtocolEndpoint(app)
    app.http.add_route("POST", PATH, ep.handle)
    app.http.add_route("POST", CANCEL_PATH, ep.cancel)
    return ep
