"""Composite (row) type codecs built from their attributes' codecs.

Composites decode to :class:`driver.Record` (attribute name -> value), like asyncpg,
or hand a plain tuple to a ``format='tuple'`` custom decoder.  They encode from a
tuple, list or Record (by position) or a mapping (by attribute name; missing
attributes are NULL), like asyncpg.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sized
from typing import Any, Callable, Sequence

from ._core import Decoder, EncodeError, Encoder, type_name

_i32 = struct.Struct("!i")
_ii = struct.Struct("!Ii")
_NULL = b"\xff\xff\xff\xff"


def _values(v: Any, names: Sequence[str]) -> list[Any]:
    if isinstance(v, Mapping):
        return [v.get(n) for n in names]
    if isinstance(v, (str, bytes, bytearray, memoryview)) or not (
            isinstance(v, Iterable) and isinstance(v, Sized)):
        raise EncodeError(
            f"a sized iterable container or a mapping is required for a composite type "
            f"(got type {type_name(v)})")
    return list(v)


def make_binary_composite_encoder(names: Sequence[str], oids: Sequence[int],
                                  encoders: Sequence[Encoder]) -> Encoder:
    def encode_composite(v: Any) -> bytes:
        values = _values(v, names)
        parts = [_i32.pack(len(values))]
        for i, x in enumerate(values):
            oid = oids[i] if i < len(oids) else 0
            if x is None:
                parts.append(_ii.pack(oid, -1))
                continue
            if i >= len(encoders):  # the server rejects the column count
                raise EncodeError(
                    f"too many elements in composite value: expected {len(names)}")
            data = encoders[i](x)
            parts.append(_ii.pack(oid, len(data)))
            parts.append(data)
        return b"".join(parts)

    return encode_composite


def outdated(message: str, name: str | None, position: int | None = None) -> Exception:
    """asyncpg's OutdatedSchemaCacheError (the connection then forgets its types)."""
    from ..exceptions import OutdatedSchemaCacheError

    return OutdatedSchemaCacheError(
        message, data_type=name, position=None if position is None else str(position))


def make_binary_composite_decoder(decoders: Sequence[Decoder],
                                  build: Callable[[tuple[Any, ...]], Any],
                                  oids: Sequence[int] = (), name: str | None = None) -> Decoder:
    def decode_composite(b: Any) -> Any:
        n = _i32.unpack_from(b)[0]
        if n != len(decoders):
            raise outdated(f"unexpected number of attributes of composite type: {n}, "
                           f"expected {len(decoders)}", name)
        pos = 4
        out: list[Any] = []
        for i, dec in enumerate(decoders):
            oid, ln = _ii.unpack_from(b, pos)
            if oids and oid != oids[i]:
                raise outdated(f"unexpected data type of composite type attribute {i}: {oid}, "
                               f"expected {oids[i]}", name, i)
            pos += 8
            if ln < 0:
                out.append(None)
            else:
                out.append(dec(b[pos:pos + ln]))
                pos += ln
        return build(tuple(out))

    return decode_composite


def parse_record_text(s: str) -> list[str | None]:
    """The fields of a record's text output ``(a,"b c",,)``; None for NULL."""
    if len(s) < 2 or s[0] != "(" or s[-1] != ")":
        raise ValueError(f"malformed record literal: {s!r}")
    out: list[str | None] = []
    i, end = 1, len(s) - 1
    while True:
        buf: list[str] = []
        quoted = False
        while i < end and s[i] != ",":
            c = s[i]
            if c == '"':
                quoted = True
                i += 1
                while i < end:
                    c = s[i]
                    if c == "\\" and i + 1 < end:
                        buf.append(s[i + 1])
                        i += 2
                    elif c == '"':
                        if s[i + 1:i + 2] == '"':
                            buf.append('"')
                            i += 2
                        else:
                            i += 1
                            break
                    else:
                        buf.append(c)
                        i += 1
            elif c == "\\" and i + 1 < end:
                buf.append(s[i + 1])
                i += 2
            else:
                buf.append(c)
                i += 1
        out.append("".join(buf) if (buf or quoted) else None)
        if i >= end:
            return out
        i += 1  # the comma


def make_text_composite_decoder(decoders: Sequence[Decoder],
                                build: Callable[[tuple[Any, ...]], Any],
                                name: str | None = None) -> Decoder:
    def decode_composite_text(b: Any) -> Any:
        fields = parse_record_text(str(b, "utf-8"))
        if len(fields) != len(decoders):
            raise outdated(f"unexpected number of attributes of composite type: {len(fields)}, "
                           f"expected {len(decoders)}", name)
        return build(tuple(None if f is None else dec(f.encode("utf-8"))
                           for f, dec in zip(fields, decoders)))

    return decode_composite_text


def make_text_composite_encoder(names: Sequence[str], encoders: Sequence[Encoder]) -> Encoder:
    def encode_composite_text(v: Any) -> bytes:
        values = _values(v, names)
        if len(values) > len(encoders):
            raise EncodeError(f"too many elements in composite value: expected {len(names)}")
        parts = []
        for x, enc in zip(values, encoders):
            if x is None:
                parts.append("")
            else:
                s = str(enc(x), "utf-8")
                parts.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
        return ("(" + ",".join(parts) + ")").encode("utf-8")

    return encode_composite_text
