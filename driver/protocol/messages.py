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
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping, Sequence, Union

from .framing import FrontendReader, ProtocolError

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
AUTHENTICATION_CLEARTEXT_PASSWORD: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x03"


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
class NegotiateProtocolVersion:
    newest_minor: int
    unrecognized: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class FunctionCallResponse:
    value: bytes | None


BackendMessage = Union[
    AuthenticationRequest, ParameterStatus, BackendKeyData, ReadyForQuery, RowDescription, DataRow,
    CommandComplete, EmptyQueryResponse, ErrorResponse, NoticeResponse, NotificationResponse,
    ParseComplete, BindComplete, CloseComplete, NoData, PortalSuspended, ParameterDescription,
    CopyInResponse, CopyOutResponse, CopyBothResponse, CopyData, CopyDone, NegotiateProtocolVersion,
    FunctionCallResponse,
]

# Singletons for body-less messages.
_PARSE_COMPLETE = ParseComplete()
_BIND_COMPLETE = BindComplete()
_CLOSE_COMPLETE = CloseComplete()
_NO_DATA = NoData()
_PORTAL_SUSPENDED = PortalSuspended()
_EMPTY_QUERY = EmptyQueryResponse()
_COPY_DONE = CopyDone()

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


# The server's side (backend encoders, frontend messages), loaded on first use.
if TYPE_CHECKING:
    from .backend_encoders import *  # noqa: F401,F403
    from .frontend_messages import *  # noqa: F401,F403


def __getattr__(name: str) -> Any:
    """Backend encoders and frontend messages: re-exported from
    :mod:`.backend_encoders` / :mod:`.frontend_messages` when first named."""
    if name.startswith("__"):  # e.g. __path__, probed by every ``from ... import``
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import backend_encoders, frontend_messages

    for module in (backend_encoders, frontend_messages):
        if name in module.__all__:
            value = getattr(module, name)
            globals()[name] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
