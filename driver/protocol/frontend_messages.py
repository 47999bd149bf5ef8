"""Frontend (client to server) messages decoded: what a server reads.

The gateway parses its clients' messages with :func:`decode_frontend` (and
:func:`decode_password` / :func:`decode_sasl_initial_response` for the
authentication exchange); the driver never decodes them, so
:mod:`driver.protocol.messages` re-exports these names lazily.  CopyData and
CopyDone, shared by both directions, live in :mod:`~driver.protocol.messages`.
"""

from __future__ import annotations

import struct
from typing import Callable, Final, Union

from ._dataclass import dataclass, field
from .framing import UNTYPED, ProtocolError
from .messages import (_COPY_DONE, CANCEL_REQUEST_CODE, GSSENC_REQUEST_CODE, SSL_REQUEST_CODE,
                       CopyData, CopyDone, _read_cstr, _unpack_I32, _unpack_i32, _unpack_ii,
                       _unpack_u16)

__all__ = [
    "F",
    "CopyFail", "StartupMessage", "SSLRequest", "GSSENCRequest", "CancelRequest",
    "PasswordMessage", "Query", "Parse", "Bind", "Describe", "Execute", "Close", "Sync", "Flush",
    "Terminate", "FunctionCall", "FrontendMessage", "decode_frontend", "decode_password",
    "decode_sasl_initial_response",
]


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


@dataclass(frozen=True, slots=True)
class CopyFail:
    message: str


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


FrontendMessage = Union[
    StartupMessage, SSLRequest, GSSENCRequest, CancelRequest, PasswordMessage, Query, Parse, Bind,
    Describe, Execute, Close, Sync, Flush, Terminate, CopyData, CopyDone, CopyFail, FunctionCall,
]

_SYNC = Sync()
_FLUSH = Flush()
_TERMINATE = Terminate()


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
