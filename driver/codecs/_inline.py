"""Source code of a value's length-prefixed binary field, for compiled encoders.

The binary COPY row encoder (driver/copy.py) and the Bind builder of
``executemany`` (driver/batch.py) are compiled per statement with ``exec``.
For each column this module gives the code computing ``p<i>``, the field
(int32 length + bytes, or the NULL marker) of the value ``a<i>``: the common
case of a builtin encoder is inlined (an exact ``int`` in range, a ``float``,
a ``str``, an aware UTC ``datetime``); any other value goes through the
column's encoder ``e<i>``, so errors and edge cases are the encoder's own.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from . import _binary

__all__ = ["field_code", "NAMESPACE"]

#: builtin encoder -> (condition on the value ``{a}``, expression of its field)
_INLINE: dict[Callable[[Any], bytes], tuple[str, str | None]] = {
    _binary.encode_int2: ("type({a}) is int and -32768 <= {a} <= 32767", "ih(2, {a})"),
    _binary.encode_int4: ("type({a}) is int and -2147483648 <= {a} <= 2147483647", "ii(4, {a})"),
    _binary.encode_int8: ("type({a}) is int and -9223372036854775808 <= {a} <= 9223372036854775807",
                          "iq(8, {a})"),
    _binary.encode_float8: ("type({a}) is float", "id_(8, {a})"),
    _binary.encode_text: ("type({a}) is str", None),  # utf-8, then its length
    # aware in UTC: microseconds since 2000-01-01 UTC (infinities go through the encoder)
    _binary.encode_timestamptz: ("type({a}) is datetime and {a}.tzinfo is UTC and "
                                 "NEG_INF_US < (us := ({a} - EPOCH_UTC) // US) < INF_US",
                                 "iq(8, us)"),
}

#: names the generated code uses (``e<i>`` are added per statement)
NAMESPACE: dict[str, Any] = dict(
    NULL=b"\xff\xff\xff\xff", i32=struct.Struct("!i").pack, ih=struct.Struct("!ih").pack,
    ii=struct.Struct("!ii").pack, iq=struct.Struct("!iq").pack, id_=struct.Struct("!id").pack,
    datetime=_binary._datetime, UTC=_binary.UTC, EPOCH_UTC=_binary.PG_EPOCH_UTC,
    US=_binary._ONE_US, NEG_INF_US=_binary._NEG_INFINITY_TS_US, INF_US=_binary._INFINITY_TS_US)


def field_code(i: int, enc: Callable[[Any], bytes]) -> str:
    """Statements (indented 4 spaces) setting ``p{i}`` from ``a{i}`` with encoder ``e{i}``."""
    generic = (f"if a{i} is None:\n        p{i} = NULL\n    else:\n"
               f"        d = e{i}(a{i})\n        p{i} = i32(len(d)) + d")
    inline = _INLINE.get(enc)
    if inline is None:
        return "    " + generic
    cond, expr = inline
    if expr is None:
        body = f"d = a{i}.encode(); p{i} = i32(len(d)) + d"
    else:
        body = f"p{i} = " + expr.format(a=f"a{i}")
    return f"    if {cond.format(a=f'a{i}')}:\n        {body}\n    el" + generic
