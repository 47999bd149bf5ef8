"""Array codecs (binary and text), built from an element type's codecs."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sized
from typing import Any

from ._core import Decoder, EncodeError, Encoder, type_name

_head = struct.Struct("!iiI")
_i32 = struct.Struct("!i")
_ii = struct.Struct("!ii")
_unpack_i32 = _i32.unpack_from
_pack_i32 = _i32.pack
MAX_DIMS = 6


def _reshape(items: list[Any], dims: list[int]) -> list[Any]:
    for d in reversed(dims[1:]):
        items = [items[i:i + d] for i in range(0, len(items), d)]
    return items


def make_binary_array_decoder(elem_decode: Decoder) -> Decoder:
    def decode_array(b: Any) -> list[Any]:
        ndim = _unpack_i32(b)[0]
        if ndim == 0:
            return []
        dims = [_unpack_i32(b, 12 + 8 * k)[0] for k in range(ndim)]
        pos = 12 + 8 * ndim
        total = 1
        for d in dims:
            total *= d
        items: list[Any] = []
        append = items.append
        for _ in range(total):
            ln = _unpack_i32(b, pos)[0]
            pos += 4
            if ln < 0:
                append(None)
            else:
                append(elem_decode(b[pos:pos + ln]))
                pos += ln
        if ndim == 1:
            return items
        return _reshape(items, dims)

    return decode_array


def _is_array(v: Any) -> bool:
    """The top level of an array value: any sized iterable but str/bytes/mappings."""
    if isinstance(v, (list, tuple)):
        return True
    return (isinstance(v, Iterable) and isinstance(v, Sized)
            and not isinstance(v, (str, bytes, bytearray, memoryview, Mapping)))


def _is_subarray(v: Any) -> bool:
    """A nested sub-array; nested tuples are elements (records, points...), as in asyncpg."""
    return type(v) is list or (not isinstance(v, tuple) and _is_array(v))


def flatten_array(value: Any) -> tuple[list[int], list[Any]]:
    """Return (dims, flat elements) of a (nested) Python sequence; [] dims if empty."""
    if not _is_array(value):
        raise EncodeError(
            f"a sized iterable container (list or tuple) is required for an array (got type {type_name(value)})")
    top = list(value)
    dims = [len(top)]
    x: Any = top
    while x:
        first = next(iter(x))
        if not _is_subarray(first):
            break
        x = list(first)
        dims.append(len(x))
        if len(dims) > MAX_DIMS:
            raise EncodeError(f"number of array dimensions exceeds the maximum ({MAX_DIMS})")
    flat: list[Any] = []
    last = len(dims) - 1

    def walk(seq: Any, level: int) -> None:
        if len(seq) != dims[level]:
            raise EncodeError("non-homogeneous array: sub-arrays must have matching dimensions")
        if level == last:
            for item in seq:
                if item is not None and _is_subarray(item):
                    raise EncodeError("non-homogeneous array: mixed elements and sub-arrays")
                flat.append(item)
        else:
            for item in seq:
                if not _is_subarray(item):
                    raise EncodeError("non-homogeneous array: mixed elements and sub-arrays")
                walk(list(item), level + 1)

    walk(top, 0)
    if not flat:
        return [], []
    return dims, flat


def make_binary_array_encoder(elem_oid: int, elem_encode: Encoder) -> Encoder:
    def encode_array(value: Any) -> bytes:
        dims, flat = flatten_array(value)
        if not dims:
            return _head.pack(0, 0, elem_oid)
        parts: list[bytes] = []
        has_null = 0
        for i, item in enumerate(flat):
            if item is None:
                has_null = 1
                parts.append(b"\xff\xff\xff\xff")
            else:
                try:
                    data = elem_encode(item)
                except EncodeError as e:
                    raise EncodeError(f"invalid array element at index {i}: {e}") from None
                parts.append(_pack_i32(len(data)))
                parts.append(data)
        head = [_head.pack(len(dims), has_null, elem_oid)]
        head.extend(_ii.pack(d, 1) for d in dims)
        return b"".join(head + parts)

    return encode_array


# ---------------------------------------------------------------------------
# text format
# ---------------------------------------------------------------------------


def parse_array_text(s: str, delim: str = ",") -> list[Any]:
    """Parse PostgreSQL array text output into nested lists of str/None."""
    i = 0
    if s.startswith("["):  # explicit bounds decoration: [1:2][3:4]={...}
        i = s.index("=") + 1
    n = len(s)

    def parse(i: int) -> tuple[list[Any], int]:
        # s[i] == "{"
        items: list[Any] = []
        i += 1
        while i < n and s[i] == " ":
            i += 1
        if s[i] == "}":
            return items, i + 1
        while True:
            c = s[i]
            if c == "{":
                sub, i = parse(i)
                items.append(sub)
            elif c == '"':
                i += 1
                buf: list[str] = []
                while s[i] != '"':
                    if s[i] == "\\":
                        i += 1
                    buf.append(s[i])
                    i += 1
                i += 1
                items.append("".join(buf))
            else:
                buf = []
                escaped = False
                while s[i] != delim and s[i] != "}":
                    if s[i] == "\\":
                        i += 1
                        escaped = True
                    buf.append(s[i])
                    i += 1
                word = "".join(buf).strip()
                items.append(None if (not escaped and word.upper() == "NULL") else word)
            while s[i] == " ":
                i += 1
            if s[i] == delim:
                i += 1
                while s[i] == " ":
                    i += 1
                continue
            if s[i] == "}":
                return items, i + 1
            raise ValueError(f"malformed array literal: {s!r}")

    if i >= n or s[i] != "{":
        raise ValueError(f"malformed array literal: {s!r}")
    result, _ = parse(i)
    return result


def make_text_array_decoder(elem_decode: Decoder, delim: str = ",") -> Decoder:
    def convert(items: list[Any]) -> list[Any]:
        return [None if x is None else convert(x) if isinstance(x, list)
                else elem_decode(x.encode("utf-8")) for x in items]

    def decode_array_text(b: Any) -> list[Any]:
        return convert(parse_array_text(str(b, "utf-8"), delim))

    return decode_array_text


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def make_text_array_encoder(elem_encode_text: Encoder) -> Encoder:
    def encode_array_text(value: Any) -> bytes:
        dims, flat = flatten_array(value)
        if not dims:
            return b"{}"
        strs = ["NULL" if x is None else _quote(str(elem_encode_text(x), "utf-8")) for x in flat]
        for d in reversed(dims):
            strs = ["{" + ",".join(strs[i:i + d]) + "}" for i in range(0, len(strs), d)]
        return strs[0].encode("utf-8")

    return encode_array_text
