"""Encoders and decoders of PostgreSQL v3 protocol messages (sans-I/O).

Encoders are plain functions returning the complete message as ``bytes``
(type byte and length included), so a batch is ``b"".join(...)``.
Decoders take a message *body* (what :mod:`driver.protocol.framing` returns)
and produce small immutable dataclasses.  Frontend and backend messages reuse
type bytes with different meanings, hence two dispatchers:
:func:`decode_backend` and :func:`decode_frontend`.

A malformed body raises :class:`~driver.protocol.framing.ProtocolError`.
"""

from __future__ import annotations

import struct
from ._dataclass import dataclass, field
from typing import Callable, Final, Mapping, Sequence, Union

from .framing import UNTYPED, FrontendReader, ProtocolError

# ---------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------

PROTOCOL_VERSION: Final = 196608  # 3.0
SSL_REQUEST_CODE: Final = FrontendReader.SSL_REQUEST_CODE
GSSENC_REQUEST_CODE: Final = FrontendReader.GSSENC_REQUEST_CODE
CANCEL_REQUEST_CODE: Final = FrontendReader.CANCEL_REQUEST_CODE

# Authentication request codes ('R').
AUTH_OK: Final = 0
AUTH_KERBEROS_V5: Final = 2
AUTH_CLEARTEXT_PASSWORD: Final = 3
AUTH_MD5_PASSWORD: Final = 5
AUTH_GSS: Final = 7
AUTH_GSS_CONTINUE: Final = 8
AUTH_SSPI: Final = 9
AUTH_SASL: Final = 10
AUTH_SASL_CONTINUE: Final = 11
AUTH_SASL_FINAL: Final = 12


class B:
    """Backend (server to client) message type bytes, as ints."""

    AUTHENTICATION: Final = ord("R")
    BACKEND_KEY_DATA: Final = ord("K")
    BIND_COMPLETE: Final = ord("2")
    CLOSE_COMPLETE: Final = ord("3")
    COMMAND_COMPLETE: Final = ord("C")
    COPY_DATA: Final = ord("d")
    COPY_DONE: Final = ord("c")
    COPY_IN_RESPONSE: Final = ord("G")
    COPY_OUT_RESPONSE: Final = ord("H")
    COPY_BOTH_RESPONSE: Final = ord("W")
    DATA_ROW: Final = ord("D")
    EMPTY_QUERY_RESPONSE: Final = ord("I")
    ERROR_RESPONSE: Final = ord("E")
    FUNCTION_CALL_RESPONSE: Final = ord("V")
    NEGOTIATE_PROTOCOL_VERSION: Final = ord("v")
    NO_DATA: Final = ord("n")
    NOTICE_RESPONSE: Final = ord("N")
    NOTIFICATION_RESPONSE: Final = ord("A")
    PARAMETER_DESCRIPTION: Final = ord("t")
    PARAMETER_STATUS: Final = ord("S")
    PARSE_COMPLETE: Final = ord("1")
    PORTAL_SUSPENDED: Final = ord("s")
    READY_FOR_QUERY: Final = ord("Z")
    ROW_DESCRIPTION: Final = ord("T")


class F:
    """Frontend (client to server) message type bytes, as ints."""

    UNTYPED: Final = UNTYPED  # StartupMessage, SSLRequest, GSSENCRequest, CancelRequest
    BIND: Final = ord("B")
    CLOSE: Final = ord("C")
    COPY_DATA: Final = ord("d")
    COPY_DONE: Final = ord("c")
    COPY_FAIL: Final = ord("f")
    DESCRIBE: Final = ord("D")
    EXECUTE: Final = ord("E")
    FLUSH: Final = ord("H")
    FUNCTION_CALL: Final = ord("F")
    PARSE: Final = ord("P")
    PASSWORD: Final = ord("p")  # also SASLInitialResponse, SASLResponse, GSSResponse
    QUERY: Final = ord("Q")
    SYNC: Final = ord("S")
    TERMINATE: Final = ord("X")


# ---------------------------------------------------------------------------
# Low-level helpers
# ---------------------------------------------------------------------------

_pack_i32 = struct.Struct("!i").pack
#: message element counts (parameters, formats, columns) are Int16 on the wire but
#: Postgres reads them unsigned: up to 65,535 (PQ_QUERY_PARAM_MAX_LIMIT)
_pack_u16 = struct.Struct("!H").pack
MAX_PARAMS: Final = 65535
_pack_ii = struct.Struct("!ii").pack
_unpack_i32 = struct.Struct("!i").unpack_from
_unpack_I32 = struct.Struct("!I").unpack_from
_unpack_u16 = struct.Struct("!H").unpack_from
_unpack_ii = struct.Struct("!ii").unpack_from
_FIELD = struct.Struct("!IhIhih")


def _msg(mtype: bytes, body: bytes) -> bytes:
    return mtype + _pack_i32(len(body) + 4) + body


def _cstr(value: str | bytes) -> bytes:
    data = value.encode("utf-8") if isinstance(value, str) else value
    if b"\x00" in data:
        raise ValueError("strings sent to PostgreSQL cannot contain NUL bytes")
    return data + b"\x00"


def _read_cstr(body: bytes, pos: int) -> tuple[str, int]:
    end = body.index(b"\x00", pos)  # ValueError when missing -> ProtocolError
    return body[pos:end].decode("utf-8", "replace"), end + 1


# Messages with no body: precomputed.
SYNC: Final = b"S\x00\x00\x00\x04"
FLUSH: Final = b"H\x00\x00\x00\x04"
TERMINATE: Final = b"X\x00\x00\x00\x04"
COPY_DONE: Final = b"c\x00\x00\x00\x04"
PARSE_COMPLETE: Final = b"1\x00\x00\x00\x04"
BIND_COMPLETE: Final = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE: Final = b"3\x00\x00\x00\x04"
NO_DATA: Final = b"n\x00\x00\x00\x04"
EMPTY_QUERY_RESPONSE: Final = b"I\x00\x00\x00\x04"
PORTAL_SUSPENDED: Final = b"s\x00\x00\x00\x04"
AUTHENTICATION_OK: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
AUTHENTICATION_CLEARTEXT_PASSWORD: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x03"
SSL_REFUSED: Final = b"N"  # answer to SSLRequest / GSSENCRequest: not supported


# ---------------------------------------------------------------------------
# Frontend encoders
# ---------------------------------------------------------------------------


def startup_message(params: Mapping[str, str], version: int = PROTOCOL_VERSION) -> bytes:
    body = bytearray(_pack_i32(version))
    for key, value in params.items():
        body += _cstr(key)
        body += _cstr(value)
    body += b"\x00"
    return _pack_i32(len(body) + 4) + bytes(body)


def ssl_request() -> bytes:
    return _pack_ii(8, SSL_REQUEST_CODE)


def gssenc_request() -> bytes:
    return _pack_ii(8, GSSENC_REQUEST_CODE)


def cancel_request(process_id: int, secret_key: int) -> bytes:
    return _pack_ii(16, CANCEL_REQUEST_CODE) + _pack_ii(process_id, secret_key)


def password_message(password: str | bytes) -> bytes:
    return _msg(b"p", _cstr(password))


def sasl_initial_response(mechanism: str, data: bytes | None) -> bytes:
    payload = _cstr(mechanism) + (_pack_i32(-1) if data is None else _pack_i32(len(data)) + data)
    return _msg(b"p", payload)


def sasl_response(data: bytes) -> bytes:
    return _msg(b"p", data)


def query(sql: str) -> bytes:
    return _msg(b"Q", _cstr(sql))


def _count(n: int, what: str) -> bytes:
    if n > MAX_PARAMS:
        raise ValueError(f"too many {what}: {n} (the protocol allows at most {MAX_PARAMS})")
    return _pack_u16(n)


def parse(name: str, sql: str, param_oids: Sequence[int] = ()) -> bytes:
    if len(param_oids) > MAX_PARAMS:
        _count(len(param_oids), "parameter types")
    body = _cstr(name) + _cstr(sql) + _pack_u16(len(param_oids))
    if param_oids:
        body += struct.pack(f"!{len(param_oids)}I", *param_oids)
    return _msg(b"P", body)


def bind(
    portal: str,
    statement: str,
    param_formats: Sequence[int],
    params: Sequence[bytes | None],
    result_formats: Sequence[int],
) -> bytes:
    parts = [_cstr(portal), _cstr(statement), _count(len(param_formats), "parameter formats")]
    if param_formats:
        parts.append(struct.pack(f"!{len(param_formats)}h", *param_formats))
    parts.append(_count(len(params), "parameters") if len(params) > MAX_PARAMS else _pack_u16(len(params)))
    for value in params:
        if value is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_pack_i32(len(value)))
            parts.append(value)
    parts.append(_pack_u16(len(result_formats)))
    if result_formats:
        parts.append(struct.pack(f"!{len(result_formats)}h", *result_formats))
    return _msg(b"B", b"".join(parts))


def describe(kind: str, name: str = "") -> bytes:
    """``kind`` is ``"S"`` (prepared statement) or ``"P"`` (portal)."""
    if kind not in ("S", "P"):
        raise ValueError("describe kind must be 'S' or 'P'")
    return _msg(b"D", kind.encode() + _cstr(name))


def execute(portal: str = "", max_rows: int = 0) -> bytes:
    return _msg(b"E", _cstr(portal) + _pack_i32(max_rows))


def close(kind: str, name: str = "") -> bytes:
    """``kind`` is ``"S"`` (prepared statement) or ``"P"`` (portal)."""
    if kind not in ("S", "P"):
        raise ValueError("close kind must be 'S' or 'P'")
    return _msg(b"C", kind.encode() + _cstr(name))


def sync() -> bytes:
    return SYNC


def flush() -> bytes:
    return FLUSH


def terminate() -> bytes:
    return TERMINATE


def copy_data(data: bytes) -> bytes:
    return _msg(b"d", data)


def copy_done() -> bytes:
    return COPY_DONE


def copy_fail(message: str) -> bytes:
    return _msg(b"f", _cstr(message))


# ---------------------------------------------------------------------------
# Backend encoders (used by the gateway and by tests)
# ---------------------------------------------------------------------------


def authentication_ok() -> bytes:
    return AUTHENTICATION_OK


def authentication_cleartext_password() -> bytes:
    return AUTHENTICATION_CLEARTEXT_PASSWORD


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError("md5 salt must be 4 bytes")
    return _msg(b"R", _pack_i32(AUTH_MD5_PASSWORD) + salt)


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    body = _pack_i32(AUTH_SASL) + b"".join(_cstr(m) for m in mechanisms) + b"\x00"
    return _msg(b"R", body)


def authentication_sasl_continue(data: bytes) -> bytes:
    return _msg(b"R", _pack_i32(AUTH_SASL_CONTINUE) + data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _msg(b"R", _pack_i32(AUTH_SASL_FINAL) + data)


def parameter_status(name: str, value: str) -> bytes:
    return _msg(b"S", _cstr(name) + _cstr(value))


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return _msg(b"K", _pack_ii(process_id, secret_key))


def ready_for_query(status: str) -> bytes:
    return _msg(b"Z", status.encode("ascii"))


def _fields_body(fields: Mapping[str, str]) -> bytes:
    body = bytearray()
    for code, value in fields.items():
        if len(code) != 1:
            raise ValueError(f"error field codes are single characters, not {code!r}")
        body += code.encode("ascii")
        body += _cstr(value)
    body += b"\x00"
    return bytes(body)


def error_response(fields: Mapping[str, str]) -> bytes:
    """``fields`` maps single-letter codes (``S``, ``V``, ``C``, ``M`` ...) to values."""
    return _msg(b"E", _fields_body(fields))


def notice_response(fields: Mapping[str, str]) -> bytes:
    return _msg(b"N", _fields_body(fields))


def error_fields(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> dict[str, str]:
    """The fields of an ErrorResponse as Postgres would build them."""
    fields = {"S": severity, "V": severity, "C": sqlstate, "M": message}
    if detail is not None:
        fields["D"] = detail
    if hint is not None:
        fields["H"] = hint
    return fields


def error(sqlstate: str, message: str, *, severity: str = "ERROR", detail: str | None = None,
          hint: str | None = None) -> bytes:
    """Shorthand: an encoded ErrorResponse."""
    return error_response(error_fields(sqlstate, message, severity=severity, detail=detail, hint=hint))


def notification_response(process_id: int, channel: str, payload: str) -> bytes:
    return _msg(b"A", _pack_i32(process_id) + _cstr(channel) + _cstr(payload))


def row_description(fields: Sequence["FieldDescription"]) -> bytes:
    body = bytearray(_pack_u16(len(fields)))
    for f in fields:
        body += _cstr(f.name)
        body += _FIELD.pack(f.table_oid, f.column_attnum, f.type_oid, f.type_size, f.type_modifier, f.format)
    return _msg(b"T", bytes(body))


def data_row(values: Sequence[bytes | None]) -> bytes:
    parts = [_pack_u16(len(values))]
    for v in values:
        if v is None:
            parts.append(b"\xff\xff\xff\xff")
        else:
            parts.append(_pack_i32(len(v)))
            parts.append(v)
    return _msg(b"D", b"".join(parts))


def command_complete(tag: str) -> bytes:
    return _msg(b"C", _cstr(tag))


def parameter_description(oids: Sequence[int]) -> bytes:
    return _msg(b"t", _pack_u16(len(oids)) + struct.pack(f"!{len(oids)}I", *oids))


def _copy_response(mtype: bytes, overall_format: int, column_formats: Sequence[int]) -> bytes:
    body = bytes([overall_format]) + _pack_u16(len(column_formats))
    body += struct.pack(f"!{len(column_formats)}h", *column_formats)
    return _msg(mtype, body)


def copy_in_response(overall_format: int, column_formats: Sequence[int]) -> bytes:
    return _copy_response(b"G", overall_format, column_formats)


def copy_out_response(overall_format: int, column_formats: Sequence[int]) -> bytes:
    return _copy_response(b"H", overall_format, column_formats)


def copy_both_response(overall_format: int, column_formats: Sequence[int]) -> bytes:
    return _copy_response(b"W", overall_format, column_formats)


def negotiate_protocol_version(newest_minor: int, unrecognized: Sequence[str] = ()) -> bytes:
    body = _pack_i32(newest_minor) + _pack_i32(len(unrecognized)) + b"".join(_cstr(o) for o in unrecognized)
    return _msg(b"v", body)


# ---------------------------------------------------------------------------
# Decoded message types
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuthenticationRequest:
    """'R': ``code`` is one of the AUTH_* constants; ``data`` the rest of the body
    (md5 salt, SASL mechanism list or SASL payload)."""

    code: int
    data: bytes = b""

    @property
    def mechanisms(self) -> list[str]:
        """For AUTH_SASL: the offered mechanism names."""
        return [m.decode("ascii", "replace") for m in self.data.split(b"\x00") if m]


@dataclass(frozen=True, slots=True)
class ParameterStatus:
    name: str
    value: str


@dataclass(frozen=True, slots=True)
class BackendKeyData:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class ReadyForQuery:
    status: str  # 'I' idle, 'T' in transaction, 'E' failed transaction


@dataclass(frozen=True, slots=True)
class FieldDescription:
    name: str
    table_oid: int = 0
    column_attnum: int = 0
    type_oid: int = 25
    type_size: int = -1
    type_modifier: int = -1
    format: int = 0


@dataclass(frozen=True, slots=True)
class RowDescription:
    fields: tuple[FieldDescription, ...]


@dataclass(frozen=True, slots=True)
class DataRow:
    values: tuple[bytes | None, ...]


@dataclass(frozen=True, slots=True)
class CommandComplete:
    tag: str


@dataclass(frozen=True, slots=True)
class EmptyQueryResponse:
    pass


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    fields: dict[str, str] = field(hash=False)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", "XX000")

    @property
    def message(self) -> str:
        return self.fields.get("M", "")

    @property
    def severity(self) -> str:
        return self.fields.get("V", self.fields.get("S", "ERROR"))


@dataclass(frozen=True, slots=True)
class NoticeResponse:
    fields: dict[str, str] = field(hash=False)

    @property
    def message(self) -> str:
        return self.fields.get("M", "")


@dataclass(frozen=True, slots=True)
class NotificationResponse:
    process_id: int
    channel: str
    payload: str


@dataclass(frozen=True, slots=True)
class ParseComplete:
    pass


@dataclass(frozen=True, slots=True)
class BindComplete:
    pass


@dataclass(frozen=True, slots=True)
class CloseComplete:
    pass


@dataclass(frozen=True, slots=True)
class NoData:
    pass


@dataclass(frozen=True, slots=True)
class PortalSuspended:
    pass


@dataclass(frozen=True, slots=True)
class ParameterDescription:
    type_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyInResponse:
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyOutResponse:
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyBothResponse:
    format: int
    column_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CopyData:
    data: bytes


@dataclass(frozen=True, slots=True)
class CopyDone:
    pass


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str


@dataclass(frozen=True, slots=True)
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    value: bytes | None


# Frontend messages -----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartupMessage:
    version: int
    params: dict[str, str] = field(hash=False)

    @property
    def major(self) -> int:
        return self.version >> 16

    @property
    def minor(self) -> int:
        return self.version & 0xFFFF


@dataclass(frozen=True, slots=True)
class SSLRequest:
    pass


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    pass


@dataclass(frozen=True, slots=True)
class CancelRequest:
    process_id: int
    secret_key: int


@dataclass(frozen=True, slots=True)
class PasswordMessage:
    """'p': its meaning depends on the authentication exchange in progress;
    use :func:`decode_password`, :func:`decode_sasl_initial_response` or
    take ``data`` as a SASLResponse."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Query:
    sql: str


@dataclass(frozen=True, slots=True)
class Parse:
    name: str
    sql: str
    param_oids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Bind:
    portal: str
    statement: str
    param_formats: tuple[int, ...]
    params: tuple[bytes | None, ...]
    result_formats: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Describe:
    kind: str  # 'S' or 'P'
    name: str


@dataclass(frozen=True, slots=True)
class Execute:
    portal: str
    max_rows: int


@dataclass(frozen=True, slots=True)
class Close:
    kind: str  # 'S' or 'P'
    name: str


@dataclass(frozen=True, slots=True)
class Sync:
    pass


@dataclass(frozen=True, slots=True)
class Flush:
    pass


@dataclass(frozen=True, slots=True)
class Terminate:
    pass


@dataclass(frozen=True, slots=True)
class FunctionCall:
    body: bytes


BackendMessage = Union[
    AuthenticationRequest, ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription, DataRow,
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, NotificationResponse,
    ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended, ParameterDescription,
    CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData, CopyDone, NegotiateProtocolVersion,
    FunctionCallResponse,
]
FrontendMessage = Union[
    StartupMessage, SSLRequest, GSSENCRequest, CancelRequest, PasswordMessage, Query, Parse, Bind,
    Describe, Execute, Close, Sync, Flush, Terminate, CopyData, CopyDone, CopyFail, FunctionCall,
]

# Singletons for body-less messages.
_PARSE_COMPLETE = ParseComplete()
_BIND_COMPLETE = BindComplete()
_CLOSE_COMPLETE = CloseComplete()
_NO_DATA = NoData()
_PORTAL_SUSPENDED = PortalSuspended()
_EMPTY_QUERY = EmptyQueryResponse()
_COPY_DONE = CopyDone()
_SYNC = Sync()
_FLUSH = Flush()
_TERMINATE = Terminate()

# ---------------------------------------------------------------------------
# Decoders
# ---------------------------------------------------------------------------


def decode_fields(body: bytes) -> dict[str, str]:
    """Body of ErrorResponse / NoticeResponse -> ``{code: value}``."""
    fields: dict[str, str] = {}
    pos = 0
    n = len(body)
    while pos < n:
        code = body[pos]
        if code == 0:
            return fields
        value, pos = _read_cstr(body, pos + 1)
        fields[chr(code)] = value
    raise ProtocolError("error/notice fields are not terminated")


def decode_data_row(body: bytes) -> tuple[bytes | None, ...]:
    (count,) = _unpack_u16(body, 0)
    pos = 2
    out: list[bytes | None] = []
    for _ in range(count):
        (length,) = _unpack_i32(body, pos)
        pos += 4
        if length < 0:
            out.append(None)
        else:
            end = pos + length
            if end > len(body):
                raise ProtocolError("DataRow value overruns its message")
            out.append(body[pos:end])
            pos = end
    return tuple(out)


def _decode_row_description(body: bytes) -> RowDescription:
    (count,) = _unpack_u16(body, 0)
    pos = 2
    fields = []
    unpack = _FIELD.unpack_from
    for _ in range(count):
        name, pos = _read_cstr(body, pos)
        table_oid, attnum, type_oid, size, mod, fmt = unpack(body, pos)
        pos += 18
        fields.append(FieldDescription(name, table_oid, attnum, type_oid, size, mod, fmt))
    return RowDescription(tuple(fields))


def _decode_auth(body: bytes) -> AuthenticationRequest:
    (code,) = _unpack_i32(body, 0)
    return AuthenticationRequest(code, body[4:])


def _decode_parameter_status(body: bytes) -> ParameterStatus:
    name, pos = _read_cstr(body, 0)
    value, _ = _read_cstr(body, pos)
    return ParameterStatus(name, value)


def _decode_key_data(body: bytes) -> BackendKeyData:
    pid, key = _unpack_ii(body, 0)
    return BackendKeyData(pid, key)


def _decode_rfq(body: bytes) -> ReadyForQuery:
    if len(body) != 1:
        raise ProtocolError("ReadyForQuery must carry one status byte")
    return ReadyForQuery(chr(body[0]))


def _decode_command_complete(body: bytes) -> CommandComplete:
    tag, _ = _read_cstr(body, 0)
    return CommandComplete(tag)


def _decode_notification(body: bytes) -> NotificationResponse:
    (pid,) = _unpack_i32(body, 0)
    channel, pos = _read_cstr(body, 4)
    payload, _ = _read_cstr(body, pos)
    return NotificationResponse(pid, channel, payload)


def _decode_param_desc(body: bytes) -> ParameterDescription:
    (count,) = _unpack_u16(body, 0)
    return ParameterDescription(struct.unpack_from(f"!{count}I", body, 2))


def _decode_copy_formats(body: bytes) -> tuple[int, tuple[int, ...]]:
    fmt = body[0]
    (count,) = _unpack_u16(body, 1)
    return fmt, struct.unpack_from(f"!{count}h", body, 3)


def _decode_negotiate(body: bytes) -> NegotiateProtocolVersion:
    minor, count = _unpack_ii(body, 0)
    pos = 8
    opts = []
    for _ in range(count):
        opt, pos = _read_cstr(body, pos)
        opts.append(opt)
    return NegotiateProtocolVersion(minor, tuple(opts))


def _decode_function_result(body: bytes) -> FunctionCallResponse:
    (length,) = _unpack_i32(body, 0)
    return FunctionCallResponse(None if length < 0 else body[4 : 4 + length])


_BACKEND: dict[int, Callable[[bytes], BackendMessage]] = {
    B.AUTHENTICATION: _decode_auth,
    B.PARAMETER_STATUS: _decode_parameter_status,
    B.BACKEND_KEY_DATA: _decode_key_data,
    B.READY_FOR_QUERY: _decode_rfq,
    B.ROW_DESCRIPTION: _decode_row_description,
    B.DATA_ROW: lambda b: DataRow(decode_data_row(b)),
    B.COMMAND_COMPLETE: _decode_command_complete,
    B.EMPTY_QUERY_RESPONSE: lambda b: _EMPTY_QUERY,
    B.ERROR_RESPONSE: lambda b: ErrorResponse(decode_fields(b)),
    B.NOTICE_RESPONSE: lambda b: NoticeResponse(decode_fields(b)),
    B.NOTIFICATION_RESPONSE: _decode_notification,
    B.PARSE_COMPLETE: lambda b: _PARSE_COMPLETE,
    B.BIND_COMPLETE: lambda b: _BIND_COMPLETE,
    B.CLOSE_COMPLETE: lambda b: _CLOSE_COMPLETE,
    B.NO_DATA: lambda b: _NO_DATA,
    B.PORTAL_SUSPENDED: lambda b: _PORTAL_SUSPENDED,
    B.PARAMETER_DESCRIPTION: _decode_param_desc,
    B.COPY_IN_RESPONSE: lambda b: CopyInResponse(*_decode_copy_formats(b)),
    B.COPY_OUT_RESPONSE: lambda b: CopyOutResponse(*_decode_copy_formats(b)),
    B.COPY_BOTH_RESPONSE: lambda b: CopyBothResponse(*_decode_copy_formats(b)),
    B.COPY_DATA: lambda b: CopyData(b),
    B.COPY_DONE: lambda b: _COPY_DONE,
    B.NEGOTIATE_PROTOCOL_VERSION: _decode_negotiate,
    B.FUNCTION_CALL_RESPONSE: _decode_function_result,
}


def decode_backend(mtype: int, body: bytes) -> BackendMessage:
    """Decode one server-to-client message body."""
    decoder = _BACKEND.get(mtype)
    if decoder is None:
        raise ProtocolError(f"unknown backend message type {chr(mtype)!r}")
    try:
        return decoder(body)
    except ProtocolError:
        raise
    except (struct.error, ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed backend message {chr(mtype)!r}: {exc}") from None


def _decode_untyped(body: bytes) -> StartupMessage | SSLRequest | GSSENCRequest | CancelRequest:
    (code,) = _unpack_I32(body, 0)
    if code == SSL_REQUEST_CODE:
        return SSLRequest()
    if code == GSSENC_REQUEST_CODE:
        return GSSENCRequest()
    if code == CANCEL_REQUEST_CODE:
        if len(body) != 12:
            raise ProtocolError("CancelRequest must be 16 bytes long")
        pid, key = _unpack_ii(body, 4)
        return CancelRequest(pid, key)
    params: dict[str, str] = {}
    pos = 4
    while True:
        if pos >= len(body):
            raise ProtocolError("startup packet is not terminated")
        if body[pos] == 0:
            break
        key, pos = _read_cstr(body, pos)
        value, pos = _read_cstr(body, pos)
        params[key] = value
    return StartupMessage(code, params)


def _decode_parse(body: bytes) -> Parse:
    name, pos = _read_cstr(body, 0)
    sql, pos = _read_cstr(body, pos)
    (count,) = _unpack_u16(body, pos)
    return Parse(name, sql, struct.unpack_from(f"!{count}I", body, pos + 2))


def _decode_bind(body: bytes) -> Bind:
    portal, pos = _read_cstr(body, 0)
    statement, pos = _read_cstr(body, pos)
    (nfmt,) = _unpack_u16(body, pos)
    formats = struct.unpack_from(f"!{nfmt}h", body, pos + 2)
    pos += 2 + 2 * nfmt
    (nparams,) = _unpack_u16(body, pos)
    pos += 2
    params: list[bytes | None] = []
    for _ in range(nparams):
        (length,) = _unpack_i32(body, pos)
        pos += 4
        if length < 0:
            params.append(None)
        else:
            if pos + length > len(body):
                raise ProtocolError("Bind parameter overruns its message")
            params.append(body[pos : pos + length])
            pos += length
    (nres,) = _unpack_u16(body, pos)
    results = struct.unpack_from(f"!{nres}h", body, pos + 2)
    return Bind(portal, statement, formats, tuple(params), results)


def _decode_kind_name(body: bytes) -> tuple[str, str]:
    kind = chr(body[0])
    if kind not in ("S", "P"):
        raise ProtocolError(f"invalid Describe/Close kind {kind!r}")
    name, _ = _read_cstr(body, 1)
    return kind, name


def _decode_execute(body: bytes) -> Execute:
    portal, pos = _read_cstr(body, 0)
    (max_rows,) = _unpack_i32(body, pos)
    return Execute(portal, max_rows)


def _decode_query(body: bytes) -> Query:
    sql, _ = _read_cstr(body, 0)
    return Query(sql)


def _decode_copy_fail(body: bytes) -> CopyFail:
    message, _ = _read_cstr(body, 0)
    return CopyFail(message)


_FRONTEND: dict[int, Callable[[bytes], FrontendMessage]] = {
    F.UNTYPED: _decode_untyped,
    F.PASSWORD: lambda b: PasswordMessage(b),
    F.QUERY: _decode_query,
    F.PARSE: _decode_parse,
    F.BIND: _decode_bind,
    F.DESCRIBE: lambda b: Describe(*_decode_kind_name(b)),
    F.EXECUTE: _decode_execute,
    F.CLOSE: lambda b: Close(*_decode_kind_name(b)),
    F.SYNC: lambda b: _SYNC,
    F.FLUSH: lambda b: _FLUSH,
    F.TERMINATE: lambda b: _TERMINATE,
    F.COPY_DATA: lambda b: CopyData(b),
    F.COPY_DONE: lambda b: _COPY_DONE,
    F.COPY_FAIL: _decode_copy_fail,
    F.FUNCTION_CALL: lambda b: FunctionCall(b),
}


def decode_frontend(mtype: int, body: bytes) -> FrontendMessage:
    """Decode one client-to-server message body (``mtype`` 0 = untyped)."""
    decoder = _FRONTEND.get(mtype)
    if decoder is None:
        raise ProtocolError(f"unknown frontend message type {chr(mtype)!r}")
    try:
        return decoder(body)
    except ProtocolError:
        raise
    except (struct.error, ValueError, IndexError) as exc:
        raise ProtocolError(f"malformed frontend message {chr(mtype)!r}: {exc}") from None


def decode_password(body: bytes) -> str:
    """Body of a PasswordMessage carrying a cleartext or md5 password."""
    try:
        value, end = _read_cstr(body, 0)
    except ValueError:
        raise ProtocolError("password message is not NUL-terminated") from None
    if end != len(body):
        raise ProtocolError("password message has trailing bytes")
    return value


def decode_sasl_initial_response(body: bytes) -> tuple[str, bytes | None]:
    """Body of a SASLInitialResponse -> ``(mechanism, data or None)``."""
    try:
        mechanism, pos = _read_cstr(body, 0)
        (length,) = _unpack_i32(body, pos)
    except (ValueError, struct.error):
        raise ProtocolError("malformed SASLInitialResponse") from None
    pos += 4
    if length < 0:
        return mechanism, None
    if pos + length != len(body):
        raise ProtocolError("SASLInitialResponse length does not match its message")
    return mechanism, body[pos:]
