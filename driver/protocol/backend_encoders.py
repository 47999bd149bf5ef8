"""Encoders of backend (server to client) messages: what a server sends.

Used by the gateway (it answers clients itself: authentication, errors,
ParseComplete of a statement it already prepared...) and by tests; the
driver never needs them, so :mod:`driver.protocol.messages` re-exports them
lazily.  Each returns the complete message (type byte and length included).
"""

from __future__ import annotations

import struct
from typing import Final, Mapping, Sequence

from .messages import (AUTH_MD5_PASSWORD, AUTH_SASL, AUTH_SASL_CONTINUE, AUTH_SASL_FINAL,
                       AUTHENTICATION_CLEARTEXT_PASSWORD, FieldDescription, _cstr, _FIELD, _msg,
                       _pack_i32, _pack_ii, _pack_u16)

__all__ = [
    "PARSE_COMPLETE", "BIND_COMPLETE", "CLOSE_COMPLETE", "NO_DATA", "EMPTY_QUERY_RESPONSE",
    "PORTAL_SUSPENDED", "AUTHENTICATION_OK", "SSL_REFUSED", "authentication_ok",
    "authentication_cleartext_password", "authentication_md5_password", "authentication_sasl",
    "authentication_sasl_continue", "authentication_sasl_final", "parameter_status",
    "backend_key_data", "ready_for_query", "error_response", "notice_response", "error_fields",
    "error", "notification_response", "row_description", "data_row", "command_complete",
    "parameter_description", "copy_in_response", "copy_out_response", "copy_both_response",
    "negotiate_protocol_version",
]

# Messages with no body: precomputed.
PARSE_COMPLETE: Final = b"1\x00\x00\x00\x04"
BIND_COMPLETE: Final = b"2\x00\x00\x00\x04"
CLOSE_COMPLETE: Final = b"3\x00\x00\x00\x04"
NO_DATA: Final = b"n\x00\x00\x00\x04"
EMPTY_QUERY_RESPONSE: Final = b"I\x00\x00\x00\x04"
PORTAL_SUSPENDED: Final = b"s\x00\x00\x00\x04"
AUTHENTICATION_OK: Final = b"R\x00\x00\x00\x08\x00\x00\x00\x00"
SSL_REFUSED: Final = b"N"  # answer to SSLRequest / GSSENCRequest: not supported


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


def row_description(fields: Sequence[FieldDescription]) -> bytes:
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

