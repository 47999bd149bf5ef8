"""Compiled Bind + Execute messages for ``executemany`` (one function per statement).

``executemany`` sends one Bind and one Execute per argument tuple.  Built
message by message (``encode_params``, then :func:`driver.protocol.messages.bind`)
that costs several Python calls per value; this compiles, per prepared
statement and codec registry, a function ``args -> bytes`` of both messages:
the constant parts (portal, statement name, formats) are built once, each
value's field comes from :mod:`driver.codecs._inline` (common values inlined,
the rest through the column's encoder).  Any exception means "use the general
path": the caller then encodes with ``encode_params``, which raises the
error asyncpg raises, with its argument position and element number.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .protocol import messages as m

if TYPE_CHECKING:
    from .codecs import TypeRegistry
    from .statements import _Statement

__all__ = ["bind_execute_encoder"]

#: beyond this many parameters the general path is used
_MAX_COMPILED = 256


def bind_execute_encoder(st: _Statement, types: TypeRegistry
                         ) -> Callable[[Sequence[Any]], bytes] | None:
    """``args -> Bind + Execute bytes`` for ``st`` with ``types``' encoders (cached
    on the statement), or None when the general path must be used."""
    cached = st.batch_encoder
    if cached is not None and cached[0] is types:
        fn: Callable[[Sequence[Any]], bytes] | None = cached[1]
        return fn
    fn = _compile(st, types)
    st.batch_encoder = (types, fn)
    return fn


def _compile(st: _Statement, types: TypeRegistry) -> Callable[[Sequence[Any]], bytes] | None:
    from .codecs._inline import NAMESPACE, field_code

    n = len(st.param_oids)
    if n == 0 or n > _MAX_COMPILED:
        return None
    try:
        pairs = [types.encoder_for(oid) for oid in st.param_oids]
    except Exception:
        return None
    formats = [fmt for fmt, _ in pairs]
    prefix = (m._cstr("") + m._cstr(st.name) + struct.pack(f"!h{n}h", n, *formats)
              + struct.pack("!h", n))
    res = list(st.result_formats)
    suffix = struct.pack(f"!h{len(res)}h", len(res), *res)
    names = ", ".join(f"a{i}" for i in range(n))
    lines = ["def build(args):", f"    {names}, = args"]
    lines += [field_code(i, enc) for i, (_, enc) in enumerate(pairs)]
    parts = ", ".join(["prefix"] + [f"p{i}" for i in range(n)] + ["suffix"])
    lines.append(f"    body = b''.join(({parts},))")
    lines.append("    return b''.join((b'B', i32(len(body) + 4), body, EXEC))")
    ns: dict[str, Any] = dict(NAMESPACE)
    ns.update({f"e{i}": enc for i, (_, enc) in enumerate(pairs)}, prefix=prefix, suffix=suffix,
              EXEC=m.execute("", 0))
    exec("\n".join(lines) + "\n", ns)
    build: Callable[[Sequence[Any]], bytes] = ns["build"]
    return build
