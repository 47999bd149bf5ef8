"""Shared definitions of the codecs package: error type, codec signatures, TypeInfo."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Union

Buffer = Union[bytes, bytearray, memoryview]
Encoder = Callable[[Any], bytes]
Decoder = Callable[[Any], Any]
"""A decoder takes the raw value bytes (bytes or memoryview) and returns a Python value."""

FORMAT_TEXT = 0
FORMAT_BINARY = 1


class EncodeError(ValueError):
    """A Python value cannot be encoded for a parameter of the requested type.

    Raised by encoders (``position`` is then None) and re-raised by
    :func:`driver.codecs.encode_params` with ``position`` set to the 1-based
    parameter number; its message then reads like asyncpg's DataError:
    ``invalid input for query argument $1: 'x' (an integer is required ...)``.
    """

    def __init__(self, message: str, *, position: int | None = None,
                 value: Any = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.value = value
        self.reason = reason if reason is not None else message


@dataclass(frozen=True)
class TypeInfo:
    """Codecs of one PostgreSQL type.

    ``encode``: Python value -> binary wire bytes (None: the type is sent in text format).
    ``decode_binary``: binary wire bytes -> value (None: results are requested in text format).
    ``decode_text``: text wire bytes -> value.
    ``encode_text``: Python value -> text wire bytes, used when ``encode`` is None.
    ``element_oid`` is non-zero for array types.
    """

    oid: int
    name: str
    decode_text: Decoder
    encode: Encoder | None = None
    decode_binary: Decoder | None = None
    encode_text: Encoder | None = None
    element_oid: int = 0
    array_oid: int = 0
    #: ranges and multiranges: the subtype's OID
    range_subtype: int = 0


def type_name(value: Any) -> str:
    return type(value).__name__
