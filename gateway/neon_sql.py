"""Neon-compatible SQL over HTTP: ``POST /sql`` and ``OPTIONS /sql``.

Serves the requests of ``neon()`` from ``@neondatabase/serverless`` (see
shared/reference/neon-wire-compat.md) so the unmodified driver works with
``neonConfig.fetchEndpoint = "http://<gateway>/sql"``.

Request::

    POST /sql
    Neon-Connection-String: postgresql://user:password@any-host/db   (host never dialled)
    Authorization: Bearer <api token>                                (optional; instead of the password)
    Neon-Array-Mode: true|false          rows as arrays (else objects keyed by column name)
    Neon-Raw-Text-Output: true|false     values as Postgres text (else bool/int2/int4/float/json(b)
                                         and arrays of them become JSON values)
    Neon-Batch-Isolation-Level: ReadUncommitted|ReadCommitted|RepeatableRead|Serializable
    Neon-Batch-Read-Only: true|false     Neon-Batch-Deferrable: true|false    (batches only)

    {"query": "select $1::int", "params": ["1"]}
    {"queries": [{"query": ..., "params": [...]}, ...]}      one transaction, rolled back on any error

Each query becomes Parse (no parameter types: the server infers them) /
Bind (text parameters, text results) / Describe portal / Execute; the whole
request ends with one Sync and runs, through :class:`gateway.http_exec.HttpExecutor`,
on one server of the same pool WebSocket clients use.  A batch is
``BEGIN <options>`` ... ``COMMIT``, Sync, ``ROLLBACK``: after a failure the
trailing ROLLBACK ends the aborted transaction in the same round trip (after
a success it is a no-op whose warning is dropped).

Response 200: ``{"command", "rowCount", "rowAsArray", "fields": [{"name",
"dataTypeID", "tableID", "columnID", "dataTypeSize", "dataTypeModifier",
"format"}], "rows"}`` or ``{"results": [...]}`` for a batch.  Errors: 400 with
``{"message", "code", "severity", "detail", "hint", "position", ...}`` (the
ErrorResponse fields present; authentication failures are 28P01, an unknown
database 3D000), 413 request body over ``sql_max_request_size``, 507 response
over ``sql_max_response_size``, 500 internal.  Every response carries CORS
headers; ``OPTIONS /sql`` answers the preflight.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader, ProtocolError

from .cache_policy import hint_comment
from .cache_policy import parse_header as parse_cache_header
from .http import HttpRequest, HttpResponse
from .http_exec import HttpAuthError, HttpExecError, get_executor
from .limits import JSON_MAX_DEPTH, json_too_deep

log = logging.getLogger("wirepool.gateway.neon_sql")

PATH = "/sql"

#: Neon's error fields, from ErrorResponse field codes.
_ERROR_FIELDS = (
    ("M", "message"), ("C", "code"), ("D", "detail"), ("H", "hint"), ("P", "position"),
    ("p", "internalPosition"), ("q", "internalQuery"), ("W", "where"), ("s", "schema"),
    ("t", "table"), ("c", "column"), ("d", "dataType"), ("n", "constraint"), ("F", "file"),
    ("L", "line"), ("R", "routine"),
)

_ISOLATION = {
    "readuncommitted": "READ UNCOMMITTED", "read uncommitted": "READ UNCOMMITTED",
    "readcommitted": "READ COMMITTED", "read committed": "READ COMMITTED",
    "repeatableread": "REPEATABLE READ", "repeatable read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}

ALLOWED_HEADERS = ("Authorization, Content-Type, Neon-Connection-String, Neon-Raw-Text-Output, "
                   "Neon-Array-Mode, Neon-Batch-Isolation-Level, Neon-Batch-Read-Only, "
                   "Neon-Batch-Deferrable, Neon-Pool-Opt-In, Wirepool-Cache")
CORS_HEADERS = [
    ("access-control-allow-origin", "*"),
    ("access-control-allow-headers", ALLOWED_HEADERS),
    ("access-control-allow-methods", "POST, OPTIONS"),
    ("access-control-max-age", "86400"),
    ("access-control-expose-headers", "Wirepool-Cache"),
]

_T, _D, _C, _E, _Z, _I, _N = (m.B.ROW_DESCRIPTION, m.B.DATA_ROW, m.B.COMMAND_COMPLETE, m.B.ERROR_RESPONSE,
                              m.B.READY_FOR_QUERY, m.B.EMPTY_QUERY_RESPONSE, m.B.NO_DATA)
_DESCRIBE_EXECUTE = m.describe("P") + m.execute("", 0)
_ROLLBACK = m.query("ROLLBACK")
_decode_row = m.decode_data_row


class NeonError(Exception):
    """An error answered in Neon's JSON shape."""

    def __init__(self, status: int, message: str, code: str = "08P01", severity: str = "ERROR",
                 **extra: str) -> None:
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code, "severity": severity, **extra}

    @classmethod
    def from_fields(cls, status: int, fields: dict[str, str]) -> "NeonError":
        err = cls(status, fields.get("M", ""), fields.get("C", "XX000"),
                  fields.get("V") or fields.get("S") or "ERROR")
        for code, name in _ERROR_FIELDS[2:]:
            if code in fields:
                err.body[name] = fields[code]
        return err


# --------------------------------------------------------------------------- request parsing

def _bool_header(req: HttpRequest, name: str) -> bool | None:
    v = req.header(name)
    if v is None:
        return None
    v = v.strip().lower()
    if v == "true":
        return True
    if v == "false":
        return False
    raise NeonError(400, f"invalid {name} header {v!r}: expected true or false")


def parse_connection_string(cs: str) -> tuple[str, str | None, str]:
    """``postgresql://user:password@host:port/db?...`` -> (user, password, database).
    The host and port are ignored: the gateway routes by database name only."""
    try:
        parts = urlsplit(cs.strip())
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError
        netloc = parts.netloc
    except ValueError:
        raise NeonError(400, "invalid Neon-Connection-String: expected postgresql://user:password@host/database",
                        "08P01") from None
    userinfo = netloc.rpartition("@")[0] if "@" in netloc else ""
    user, sep, password = userinfo.partition(":")
    database = unquote(parts.path.lstrip("/"))
    if not database:
        database = dict(parse_qsl(parts.query)).get("dbname", "")
    return unquote(user), (unquote(password) if sep else None), database


def _param_text(value: Any) -> str | None:
    """A JSON parameter -> Postgres text (neon() sends strings or null already)."""
    if value is None or isinstance(value, str):
        return value
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return _array_literal(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _array_literal(values: list[Any]) -> str:
    items = []
    for v in values:
        if isinstance(v, list):
            items.append(_array_literal(v))
            continue
        t = _param_text(v)
        if t is None:
            items.append("NULL")
        else:
            items.append('"' + t.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "{" + ",".join(items) + "}"


def _statement(item: Any, where: str) -> tuple[bytes, bool | None]:
    """One ``{"query", "params"}`` -> Parse/Bind/Describe/Execute bytes (+ its arrayMode)."""
    if not isinstance(item, dict):
        raise NeonError(400, f"invalid request: {where} must be an object with \"query\" and \"params\"")
    sql = item.get("query")
    params = item.get("params", [])
    if params is None:
        params = []
    if not isinstance(sql, str):
        raise NeonError(400, f"invalid request: {where}.query must be a string")
    if not isinstance(params, list):
        raise NeonError(400, f"invalid request: {where}.params must be an array")
    if len(params) > 65535:
        raise NeonError(400, f"invalid request: {where} has {len(params)} parameters (at most 65535)", "54000")
    mode = item.get("arrayMode")
    try:
        values = [None if (t := _param_text(p)) is None else t.encode("utf-8") for p in params]
        return m.parse("", sql) + m.bind("", "", (), values, ()) + _DESCRIBE_EXECUTE, \
            (mode if isinstance(mode, bool) else None)
    except (ValueError, UnicodeEncodeError) as exc:
        raise NeonError(400, f"invalid request: {where}: {exc}", "22021") from None


def _begin_sql(req: HttpRequest) -> str:
    parts = ["BEGIN"]
    iso = req.header("neon-batch-isolation-level")
    if iso is not None and iso.strip():
        level = _ISOLATION.get(iso.strip().lower())
        if level is None:
            raise NeonError(400, f"invalid Neon-Batch-Isolation-Level {iso!r}: expected ReadUncommitted, "
                                 "ReadCommitted, RepeatableRead or Serializable")
        parts.append("ISOLATION LEVEL " + level)
    ro = _bool_header(req, "neon-batch-read-only")
    if ro is not None:
        parts.append("READ ONLY" if ro else "READ WRITE")
    de = _bool_header(req, "neon-batch-deferrable")
    if de is not None:
        parts.append("DEFERRABLE" if de else "NOT DEFERRABLE")
    return " ".join(parts)


# --------------------------------------------------------------------------- value conversion
# Neon-Raw-Text-Output: false -> these types become JSON values; the rest stay text.

def _to_bool(v: str) -> Any:
    return v == "t"


def _to_int(v: str) -> Any:
    return int(v)


def _to_float(v: str) -> Any:
    f = float(v)
    if f != f or f in (float("inf"), float("-inf")):
        return v  # NaN/Infinity have no JSON number: keep the text
    return f


#: json/jsonb values nested deeper than this stay text (the response must
#: serialize without hitting Python's recursion limit)
JSON_OUTPUT_MAX_DEPTH = 500


def _to_json(v: str) -> Any:
    if len(v) > JSON_OUTPUT_MAX_DEPTH and json_too_deep(v.encode("utf-8"), JSON_OUTPUT_MAX_DEPTH):
        return v
    return json.loads(v)


_SCALAR: dict[int, Callable[[str], Any]] = {16: _to_bool, 21: _to_int, 23: _to_int, 700: _to_float,
                                            701: _to_float, 114: _to_json, 3802: _to_json}
#: array type OID -> element type OID (the common built-in ones)
_ARRAY_ELEM = {
    1000: 16, 1005: 21, 1007: 23, 1016: 20, 1021: 700, 1022: 701, 199: 114, 3807: 3802, 1009: 25,
    1015: 1043, 1014: 1042, 1002: 18, 1003: 19, 1231: 1700, 1182: 1082, 1183: 1083, 1115: 1114,
    1185: 1184, 1187: 1186, 2951: 2950, 1001: 17, 1028: 26, 1270: 1266, 651: 650, 1041: 869,
    1040: 829, 3643: 3614, 3645: 3615,
}


def _parse_array(text: str, elem: Callable[[str], Any] | None) -> Any:
    """Postgres array text (``{1,NULL,"a b",{2,3}}``) -> nested lists."""
    if text.startswith("["):  # explicit bounds "[0:1]={...}": drop them
        text = text[text.index("=") + 1:]
    pos = 0
    n = len(text)

    def parse() -> list[Any]:
        nonlocal pos
        assert text[pos] == "{"
        pos += 1
        out: list[Any] = []
        if pos < n and text[pos] == "}":
            pos += 1
            return out
        while pos < n:
            c = text[pos]
            if c == "{":
                out.append(parse())
            elif c == '"':
                pos += 1
                buf = []
                while text[pos] != '"':
                    if text[pos] == "\\":
                        pos += 1
                    buf.append(text[pos])
                    pos += 1
                pos += 1
                s = "".join(buf)
                out.append(elem(s) if elem is not None else s)
            else:
                start = pos
                while text[pos] not in ",}":
                    pos += 1
                s = text[start:pos].strip()
                if s.upper() == "NULL":
                    out.append(None)
                else:
                    out.append(elem(s) if elem is not None else s)
            c = text[pos]
            pos += 1
            if c == "}":
                return out
        raise ValueError("unterminated array")

    return parse()


def _converter(type_oid: int) -> Callable[[str], Any] | None:
    conv = _SCALAR.get(type_oid)
    if conv is not None:
        return conv
    elem_oid = _ARRAY_ELEM.get(type_oid)
    if elem_oid is not None:
        elem = _SCALAR.get(elem_oid)

        def conv_array(v: str) -> Any:
            try:
                return _parse_array(v, elem)
            except (ValueError, IndexError, AssertionError):
                return v
        return conv_array
    return None


# --------------------------------------------------------------------------- response building

def _field_json(f: m.FieldDescription) -> dict[str, Any]:
    return {"name": f.name, "dataTypeID": f.type_oid, "tableID": f.table_oid, "columnID": f.column_attnum,
            "dataTypeSize": f.type_size, "dataTypeModifier": f.type_modifier,
            "format": "text" if f.format == 0 else "binary"}


def _command(tag: str) -> tuple[str, int | None]:
    parts = tag.split(" ")
    count: int | None = None
    if len(parts) > 1 and parts[-1].isdigit():
        count = int(parts[-1])
    return parts[0], count


def build_results(data: bytes, array_modes: list[bool], raw_text: bool, max_size: int) -> list[dict[str, Any]]:
    """Backend messages -> one Neon result per described statement (the first
    ErrorResponse raises :class:`NeonError`).  Statements sent without
    Describe (the batch's BEGIN/COMMIT/ROLLBACK) produce no result."""
    reader = MessageReader(max_size=1 << 30)
    reader.feed(data)
    try:
        chunk, idx = reader.read_raw()
    except ProtocolError as exc:  # pragma: no cover - the server speaks the protocol
        raise NeonError(500, f"malformed backend data: {exc}", "XX000") from None
    results: list[dict[str, Any]] = []
    fields: list[m.FieldDescription] | None = None
    rows: list[Any] = []
    names: list[str] = []
    convs: list[Callable[[str], Any] | None] = []
    array_mode = True
    size = 0
    decode = _decode_row
    for t, s, e in idx:
        if t == _D:
            if fields is None:  # pragma: no cover - DataRow always follows RowDescription
                continue
            size += e - s
            if size > max_size:
                raise NeonError(507, f"response is too large (max is {max_size} bytes: sql_max_response_size)",
                                "54000")
            values = decode(chunk[s:e])
            if raw_text:
                row = [None if v is None else v.decode() for v in values]
            else:
                row = [None if v is None else (v.decode() if c is None else c(v.decode()))
                       for v, c in zip(values, convs)]
            rows.append(row if array_mode else dict(zip(names, row)))
        elif t == _T or t == _N:
            if t == _T:
                desc = m.decode_backend(t, chunk[s:e])
                assert isinstance(desc, m.RowDescription)
                fields = list(desc.fields)
            else:
                fields = []
            names = [f.name for f in fields]
            convs = [_converter(f.type_oid) for f in fields] if not raw_text else []
            rows = []
            i = len(results)
            array_mode = array_modes[i] if i < len(array_modes) else True
        elif t == _C or t == _I:
            if fields is None:
                continue  # BEGIN / COMMIT / ROLLBACK (not described): no result
            if t == _C:
                cc = m.decode_backend(t, chunk[s:e])
                assert isinstance(cc, m.CommandComplete)
                command, count = _command(cc.tag)
            else:
                command, count = "", None
            results.append({"command": command, "rowCount": count, "rowAsArray": array_mode,
                            "fields": [_field_json(f) for f in fields], "rows": rows})
            fields = None
            rows = []
        elif t == _E:
            raise NeonError.from_fields(400, m.decode_fields(chunk[s:e]))
    return results


# --------------------------------------------------------------------------- the endpoint

class NeonSql:
    """``POST /sql`` / ``OPTIONS /sql`` for one Gateway."""

    def __init__(self, gateway: Any, settings: Any) -> None:
        self.gw = gateway
        s = settings
        self.max_request = s.sql_max_request_size
        self.max_response = s.sql_max_response_size
        self.timeout = s.sql_timeout
        self.requests = 0

    async def options(self, req: HttpRequest) -> HttpResponse:
        return HttpResponse(204, b"", None, list(CORS_HEADERS))

    async def handle(self, req: HttpRequest) -> HttpResponse:
        self.requests += 1
        try:
            obj, cached = await self._execute(req)
            out = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
            if len(out) > self.max_response:
                raise NeonError(507, f"response is too large (max is {self.max_response} bytes: "
                                     "sql_max_response_size)", "54000")
            headers = list(CORS_HEADERS)
            if cached is not None:
                headers.append(("wirepool-cache", cached))
            return HttpResponse(200, out, "application/json", headers)
        except NeonError as exc:
            return self._error(exc.status, exc.body)
        except HttpExecError as exc:
            # neon() reads the JSON of a 400 only: authentication (401/404 in the
            # executor) and request errors are 400 here; 413/507/5xx stay.
            status = exc.status
            if (isinstance(exc, HttpAuthError) and status != 429) or (status < 500 and status not in (413, 429)):
                status = 400
            return self._error(status, {"message": exc.message, "code": exc.sqlstate,
                                        "severity": "FATAL" if isinstance(exc, HttpAuthError) else "ERROR"})
        except Exception:
            log.exception("POST /sql failed")
            return self._error(500, {"message": "internal error in the gateway", "code": "XX000",
                                     "severity": "ERROR"})

    @staticmethod
    def _error(status: int, body: dict[str, Any]) -> HttpResponse:
        return HttpResponse(status, json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8"),
                            "application/json", list(CORS_HEADERS))

    async def _execute(self, req: HttpRequest) -> tuple[Any, str | None]:
        if len(req.body) > self.max_request:
            raise NeonError(413, f"request body is too large ({len(req.body)} > {self.max_request} bytes: "
                                 "sql_max_request_size)", "54000")
        # -- credentials
        cs = req.header("neon-connection-string")
        token: str | None = None
        auth = req.header("authorization")
        if auth is not None:
            scheme, _, value = auth.strip().partition(" ")
            if scheme.lower() != "bearer" or not value.strip():
                raise NeonError(400, "invalid Authorization header: expected Bearer <token>", "28000", "FATAL")
            token = value.strip()
        user: str | None
        if cs is not None:
            user, password, database = parse_connection_string(cs)
        elif token is not None:
            user, password, database = None, None, ""
        else:
            raise NeonError(400, "missing Neon-Connection-String header (or Authorization: Bearer <token>)",
                            "28000", "FATAL")
        array_header = _bool_header(req, "neon-array-mode")
        raw_header = _bool_header(req, "neon-raw-text-output")
        array_mode = bool(array_header)
        raw_text = bool(raw_header)
        # -- body
        if json_too_deep(req.body):
            raise NeonError(400, f"invalid request: JSON nested deeper than {JSON_MAX_DEPTH} levels", "54000")
        try:
            payload = json.loads(req.body)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise NeonError(400, f"invalid request: body is not valid JSON ({exc})") from None
        if not isinstance(payload, dict):
            raise NeonError(400, "invalid request: expected {\"query\", \"params\"} or {\"queries\": [...]}")
        batch = "queries" in payload
        parts: list[bytes] = []
        modes: list[bool] = []
        if batch:
            queries = payload["queries"]
            if not isinstance(queries, list):
                raise NeonError(400, "invalid request: \"queries\" must be an array")
            parts.append(m.parse("", _begin_sql(req)) + m.bind("", "", (), (), ()) + m.execute("", 0))
            for i, item in enumerate(queries):
                data, mode = _statement(item, f"queries[{i}]")
                parts.append(data)
                modes.append(array_mode if mode is None else mode)
            parts.append(m.parse("", "COMMIT") + m.bind("", "", (), (), ()) + m.execute("", 0))
            parts.append(m.SYNC)
            parts.append(_ROLLBACK)
        else:
            hinted = req.header("wirepool-cache")
            if hinted is not None and isinstance(payload.get("query"), str):
                hint = parse_cache_header(hinted)
                if hint is None:
                    raise NeonError(400, "invalid Wirepool-Cache header: expected ttl=<s>, swr=<s>, tags=<a,b>")
                payload = dict(payload, query=hint_comment(hint) + payload["query"])
            data, mode = _statement(payload, "request")
            parts.append(data)
            parts.append(m.SYNC)
            modes.append(array_mode if mode is None else mode)
        # -- run on a pooled server
        ex = get_executor(self.gw)
        principal = await ex.authenticate(database, user or None, password, token, req.peer)
        res = await ex.run(principal, b"".join(parts), timeout=self.timeout, max_response=self.max_response)
        if res.session_token is not None:
            # The statement left a transaction open (e.g. a lone BEGIN): Neon
            # requests never keep one, so roll it back and release the server.
            try:
                await ex.run(None, _ROLLBACK, session_token=res.session_token, timeout=self.timeout)
            except HttpExecError:
                log.warning("rollback after an open transaction on /sql failed", exc_info=True)
        if res.fatal is not None and res.status is None:
            results = build_results(res.data, modes, raw_text, self.max_response)  # an ERROR first, if any
            raise NeonError.from_fields(400, res.fatal)
        results = build_results(res.data, modes, raw_text, self.max_response)
        if len(results) != len(modes):  # pragma: no cover - every statement was described
            raise NeonError(500, f"expected {len(modes)} results, got {len(results)}", "XX000")
        return ({"results": results} if batch else results[0]), res.cache


def register(app: Any) -> NeonSql:
    """Add ``POST /sql`` and ``OPTIONS /sql`` to a started-up :class:`gateway.app.GatewayApp`'s listener."""
    neon = NeonSql(app.gateway, app.config.gateway)
    http = app.http
    http.add_route("POST", PATH, neon.handle)
    http.add_route("OPTIONS", PATH, neon.options)
    # The listener refuses bodies over its own cap before any route runs.
    http.max_body_size = max(http.max_body_size, neon.max_request + 1)
    return neon
