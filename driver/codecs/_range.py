"""Range and multirange codecs built from their subtype's codecs (binary and text).

Ranges decode to :class:`driver.types.Range`; multiranges to a list of them.
A range encodes from a ``Range`` or, like asyncpg, from a tuple/list:
``()`` empty, ``(lower,)`` ``[lower, inf)``, ``(lower, upper)`` ``[lower, upper]``
(None: infinite).  A multirange encodes from a sequence of such values.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from ..types import Range
from ._core import Decoder, EncodeError, Encoder, type_name

EMPTY = 0x01
LB_INC = 0x02
UB_INC = 0x04
LB_INF = 0x08
UB_INF = 0x10

_i32 = struct.Struct("!i")
_pack_i32 = _i32.pack


def _flags_bounds(v: Any) -> tuple[int, Any, Any]:
    """(flags, lower, upper) of a Range or a 0-2 element tuple/list."""
    if isinstance(v, (tuple, list)):
        n = len(v)
        if n == 2:
            lower, upper = v
            flags = LB_INC | UB_INC
            if lower is None:
                flags |= LB_INF
            if upper is None:
                flags |= UB_INF
            return flags, lower, upper
        if n == 1:
            return LB_INC | UB_INF, v[0], None
        if n == 0:
            return EMPTY, None, None
        raise EncodeError(f"expected 0, 1 or 2 elements in range (got {n})")
    if isinstance(v, Range):
        if v.isempty:
            return EMPTY, None, None
        flags = 0
        lower, upper = v.lower, v.upper
        if v.lower_inc:
            flags |= LB_INC
        elif lower is None:
            flags |= LB_INF
        if v.upper_inc:
            flags |= UB_INC
        elif upper is None:
            flags |= UB_INF
        return flags, lower, upper
    raise EncodeError(f"list, tuple or Range object expected (got type {type(v)})")


def _has_lower(flags: int) -> bool:
    return not flags & (EMPTY | LB_INF)


def _has_upper(flags: int) -> bool:
    return not flags & (EMPTY | UB_INF)


def _make_range(flags: int, lower: Any, upper: Any) -> Range:
    return Range(lower, upper, lower_inc=bool(flags & LB_INC), upper_inc=bool(flags & UB_INC),
                 empty=bool(flags & EMPTY))


# ---------------------------------------------------------------------------
# binary
# ---------------------------------------------------------------------------


def make_binary_range_encoder(elem_encode: Encoder) -> Encoder:
    def encode_range(v: Any) -> bytes:
        flags, lower, upper = _flags_bounds(v)
        parts = [bytes((flags,))]
        for present, bound in ((_has_lower(flags), lower), (_has_upper(flags), upper)):
            if present:
                data = elem_encode(bound)
                parts.append(_pack_i32(len(data)))
                parts.append(data)
        return b"".join(parts)

    return encode_range


def _decode_range_at(b: Any, elem_decode: Decoder) -> Range:
    flags = b[0]
    pos = 1
    lower = upper = None
    if _has_lower(flags):
        n = _i32.unpack_from(b, pos)[0]
        pos += 4
        if n >= 0:
            lower = elem_decode(b[pos:pos + n])
            pos += n
    if _has_upper(flags):
        n = _i32.unpack_from(b, pos)[0]
        pos += 4
        if n >= 0:
            upper = elem_decode(b[pos:pos + n])
    return _make_range(flags, lower, upper)


def make_binary_range_decoder(elem_decode: Decoder) -> Decoder:
    def decode_range(b: Any) -> Range:
        return _decode_range_at(b, elem_decode)

    return decode_range


def make_binary_multirange_encoder(range_encode: Encoder) -> Encoder:
    def encode_multirange(v: Any) -> bytes:
        if not isinstance(v, Sequence) or isinstance(v, (str, bytes)):
            raise EncodeError(f"expected a sequence (got type {type_name(v)!r})")
        parts = [_pack_i32(len(v))]
        for r in v:
            data = range_encode(r)
            parts.append(_pack_i32(len(data)))
            parts.append(data)
        return b"".join(parts)

    return encode_multirange


def make_binary_multirange_decoder(elem_decode: Decoder) -> Decoder:
    def decode_multirange(b: Any) -> list[Range]:
        n = _i32.unpack_from(b)[0]
        pos = 4
        out = []
        for _ in range(n):
            ln = _i32.unpack_from(b, pos)[0]
            pos += 4
            if ln < 0:
                raise ValueError("unexpected NULL element in multirange value")
            out.append(_decode_range_at(b[pos:pos + ln], elem_decode))
            pos += ln
        return out

    return decode_multirange


# ---------------------------------------------------------------------------
# text
# ---------------------------------------------------------------------------


def _parse_bound(s: str, i: int, stops: str) -> tuple[str | None, int]:
    """A range bound starting at ``s[i]`` up to one of ``stops``; None if empty."""
    buf: list[str] = []
    quoted = False
    n = len(s)
    while i < n and s[i] not in stops:
        c = s[i]
        if c == '"':
            quoted = True
            i += 1
            while i < n:
                c = s[i]
                if c == "\\" and i + 1 < n:
                    buf.append(s[i + 1])
                    i += 2
                elif c == '"':
                    if i + 1 < n and s[i + 1] == '"':
                        buf.append('"')
                        i += 2
                    else:
                        i += 1
                        break
                else:
                    buf.append(c)
                    i += 1
        elif c == "\\" and i + 1 < n:
            buf.append(s[i + 1])
            i += 2
        else:
            buf.append(c)
            i += 1
    if not buf and not quoted:
        return None, i
    return "".join(buf), i


def _parse_range_text(s: str, i: int, elem_decode: Decoder) -> tuple[Range, int]:
    while i < len(s) and s[i] == " ":
        i += 1
    if s[i:i + 5].lower() == "empty":
        return Range(empty=True), i + 5
    flags = 0
    if s[i] == "[":
        flags |= LB_INC
    elif s[i] != "(":
        raise ValueError(f"malformed range literal: {s!r}")
    lo, i = _parse_bound(s, i + 1, ",")
    if i >= len(s):
        raise ValueError(f"malformed range literal: {s!r}")
    hi, i = _parse_bound(s, i + 1, ")]")
    if i >= len(s):
        raise ValueError(f"malformed range literal: {s!r}")
    if s[i] == "]":
        flags |= UB_INC
    lower = None if lo is None else elem_decode(lo.encode("utf-8"))
    upper = None if hi is None else elem_decode(hi.encode("utf-8"))
    return _make_range(flags, lower, upper), i + 1


def make_text_range_decoder(elem_decode: Decoder) -> Decoder:
    def decode_range_text(b: Any) -> Range:
        return _parse_range_text(str(b, "utf-8"), 0, elem_decode)[0]

    return decode_range_text


def make_text_multirange_decoder(elem_decode: Decoder) -> Decoder:
    def decode_multirange_text(b: Any) -> list[Range]:
        s = str(b, "utf-8").strip()
        if not s.startswith("{") or not s.endswith("}"):
            raise ValueError(f"malformed multirange literal: {s!r}")
        out: list[Range] = []
        i, end = 1, len(s) - 1
        while i < end:
            c = s[i]
            if c in ", ":
                i += 1
                continue
            r, i = _parse_range_text(s, i, elem_decode)
            out.append(r)
        return out

    return decode_multirange_text


def _quote_bound(data: bytes) -> str:
    s = str(data, "utf-8")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_text_range_encoder(elem_encode_text: Encoder) -> Encoder:
    def encode_range_text(v: Any) -> bytes:
        flags, lower, upper = _flags_bounds(v)
        if flags & EMPTY:
            return b"empty"
        lo = _quote_bound(elem_encode_text(lower)) if _has_lower(flags) else ""
        hi = _quote_bound(elem_encode_text(upper)) if _has_upper(flags) else ""
        text = ("[" if flags & LB_INC else "(") + lo + "," + hi + ("]" if flags & UB_INC else ")")
        return text.encode("utf-8")

    return encode_range_text


def make_text_multirange_encoder(range_encode_text: Encoder) -> Encoder:
    def encode_multirange_text(v: Any) -> bytes:
        if not isinstance(v, Sequence) or isinstance(v, (str, bytes)):
            raise EncodeError(f"expected a sequence (got type {type_name(v)!r})")
        return b"{" + b",".join(range_encode_text(r) for r in v) + b"}"

    return encode_multirange_text
