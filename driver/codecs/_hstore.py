"""The ``pg_contrib.hstore`` codec (``set_builtin_type_codec``): dict <-> hstore.

Binary format: int32 count, then per pair the key and the value (NULL: -1) as
int32 length + UTF-8 bytes.  Text format: ``"k"=>"v", "n"=>NULL``.
"""

from __future__ import annotations

import struct
from typing import Any

from ._core import EncodeError, TypeInfo, type_name

_i32 = struct.Struct("!i")


def _s(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    raise EncodeError(f"expected str, got {type_name(v)}")


def encode_hstore(v: Any) -> bytes:
    items = v.items() if hasattr(v, "items") else v
    pairs = list(items)
    parts = [_i32.pack(len(pairs))]
    for k, x in pairs:
        if k is None:
            raise EncodeError("null value not allowed in hstore key")
        kb = _s(k)
        parts += [_i32.pack(len(kb)), kb]
        if x is None:
            parts.append(_i32.pack(-1))
        else:
            xb = _s(x)
            parts += [_i32.pack(len(xb)), xb]
    return b"".join(parts)


def decode_hstore(b: Any) -> dict[str, str | None]:
    n = _i32.unpack_from(b)[0]
    pos = 4
    out: dict[str, str | None] = {}
    for _ in range(n):
        ln = _i32.unpack_from(b, pos)[0]
        pos += 4
        if ln < 0:
            raise ValueError("null value not allowed in hstore key")
        k = str(b[pos:pos + ln], "utf-8")
        pos += ln
        ln = _i32.unpack_from(b, pos)[0]
        pos += 4
        if ln < 0:
            out[k] = None
        else:
            out[k] = str(b[pos:pos + ln], "utf-8")
            pos += ln
    return out


def _quoted(s: str, i: int) -> tuple[str, int]:
    # s[i] == '"'
    buf = []
    i += 1
    while s[i] != '"':
        if s[i] == "\\":
            i += 1
        buf.append(s[i])
        i += 1
    return "".join(buf), i + 1


def decode_hstore_text(b: Any) -> dict[str, str | None]:
    s = str(b, "utf-8")
    out: dict[str, str | None] = {}
    i, n = 0, len(s)
    while i < n:
        if s[i] != '"':
            i += 1
            continue
        k, i = _quoted(s, i)
        i = s.index("=>", i) + 2
        while s[i] == " ":
            i += 1
        if s[i] == '"':
            out[k], i = _quoted(s, i)
        else:
            out[k] = None  # NULL
            i += 4
    return out


HSTORE = TypeInfo(oid=0, name="hstore", decode_text=decode_hstore_text, encode=encode_hstore,
                  decode_binary=decode_hstore)
