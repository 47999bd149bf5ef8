"""Per-connection custom codecs: ``set_type_codec``, ``reset_type_codec``,
``set_builtin_type_codec`` and ``reload_schema_state``, with asyncpg's semantics.

A connection's codecs live in its own :class:`~driver.codecs.TypeRegistry`
(a copy of the builtin one, made on first change), so nothing leaks to other
connections.  Custom codecs are kept as specs (``Custom``/``Alias``) and the
registry is rebuilt from the builtin one, the specs and the cached
introspection rows whenever they change; arrays, ranges and composites are
derived again, so a codec applies to arrays of its type and to composite fields.
Loaded on first use.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

from . import codecs
from . import exceptions as exc
from .codecs import oids
from .codecs._core import TypeInfo
from .codecs._text import encode_str_any

if TYPE_CHECKING:
    from .connection import Connection
    from .introspection import TypeRow

__all__ = ["Custom", "Alias", "set_type_codec", "reset_type_codec", "set_builtin_type_codec",
           "reload_schema_state", "resolve_override", "rebuild"]


class Custom(NamedTuple):
    """A ``set_type_codec`` codec."""

    oid: int
    name: str
    kind: str  # "scalar" or "composite"
    encoder: Callable[[Any], Any]
    decoder: Callable[[Any], Any]
    format: str


class Alias(NamedTuple):
    """A ``set_builtin_type_codec`` codec: the builtin codec ``codec`` under ``oid``."""

    oid: int
    name: str
    codec: TypeInfo
    format: str | None


# ``format='tuple'``: the binary layout of these types, as a tuple of numbers
_TUPLE_FORMATS: dict[int, tuple[struct.Struct, Callable[[tuple[Any, ...]], tuple[Any, ...]]]] = {
    oids.DATE: (struct.Struct("!i"), lambda t: t),
    oids.TIME: (struct.Struct("!q"), lambda t: t),
    oids.TIMETZ: (struct.Struct("!qi"), lambda t: t),
    oids.TIMESTAMP: (struct.Struct("!q"), lambda t: t),
    oids.TIMESTAMPTZ: (struct.Struct("!q"), lambda t: t),
    # wire: microseconds, days, months; the tuple: months, days, microseconds
    oids.INTERVAL: (struct.Struct("!qii"), lambda t: (t[2], t[1], t[0])),
}


def _text_bytes(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    raise codecs.EncodeError(f"expected str, got {type(v).__name__}")


def _resolve_custom(reg: codecs.TypeRegistry, c: Custom, row: TypeRow | None) -> None:
    enc, dec = c.encoder, c.decoder
    base = reg.get(c.oid)
    if c.kind == "composite":
        if row is None:
            return
        reg.register_composite(c.oid, c.name, row.att_names, row.att_oids,
                               build=dec, adapt=enc)
        return
    if c.format == "text":
        def decode_text(b: Any) -> Any:
            return dec(str(b, "utf-8"))

        def encode_text(v: Any) -> bytes:
            return _text_bytes(enc(v))

        reg.register(TypeInfo(oid=c.oid, name=c.name, decode_text=decode_text,
                              encode_text=encode_text))
        return
    if c.format == "binary":
        def encode(v: Any) -> bytes:
            return bytes(enc(v))

        def decode_binary(b: Any) -> Any:
            return dec(bytes(b))
        unpack: Callable[[Any], Any] = decode_binary
    else:  # tuple
        st, order = _TUPLE_FORMATS[c.oid]

        def encode(v: Any) -> bytes:
            return st.pack(*order(tuple(enc(v))))

        def decode_binary(b: Any) -> Any:
            return dec(order(st.unpack(bytes(b))))
        unpack = decode_binary

    def decode_text_via_binary(b: Any) -> Any:
        # text results (describe_first=False): through the builtin codecs
        if base is None or base.encode is None:
            raise exc.InterfaceError(f"no text decoder for the custom codec of {c.name}")
        return unpack(base.encode(base.decode_text(b)))

    reg.register(TypeInfo(oid=c.oid, name=c.name, decode_text=decode_text_via_binary,
                          encode=encode, decode_binary=decode_binary))


def _resolve_alias(reg: codecs.TypeRegistry, a: Alias) -> None:
    info = a.codec.replace(oid=a.oid, name=a.name, array_oid=0, element_oid=0)
    if a.format == "text":
        info = info.replace(encode=None, decode_binary=None,
                            encode_text=info.encode_text or encode_str_any)
    reg.register(info)


def resolve_override(reg: codecs.TypeRegistry, spec: Any, row: TypeRow | None) -> None:
    """Register the custom codec ``spec`` in ``reg``."""
    if isinstance(spec, Custom):
        _resolve_custom(reg, spec, row)
    else:
        _resolve_alias(reg, spec)


def rebuild(conn: Connection) -> None:
    """The connection's registry from the builtin one + its custom codecs + introspection."""
    from .codecs._registry import BUILTIN_RANGES
    from .introspection import register_rows

    overrides, rows = conn._type_overrides, conn._type_rows
    if not overrides and not rows:
        conn._types = codecs.DEFAULT_REGISTRY
        return
    reg = codecs.DEFAULT_REGISTRY.copy()
    for oid, spec in overrides.items():
        if isinstance(spec, Alias) or spec.kind == "scalar":
            resolve_override(reg, spec, rows.get(oid))
    # builtin arrays and ranges of an overridden type use the new codec
    for arr, elem in oids.ARRAY_ELEMENT.items():
        if elem in overrides:
            reg.register_array(arr, elem, delim=";" if elem == oids.BOX else ",")
    for rng, (sub, multi, rname, mname) in BUILTIN_RANGES.items():
        if sub in overrides:
            reg.register_range(rng, sub, rname)
            reg.register_multirange(multi, rng, mname)
            for t in (rng, multi):
                arr_oid = oids.ELEMENT_ARRAY.get(t)
                if arr_oid:
                    reg.register_array(arr_oid, t)
    register_rows(reg, rows, overrides)
    conn._types = reg


# ---------------------------------------------------------------------------
# the Connection methods
# ---------------------------------------------------------------------------


def _literal(s: str) -> str:
    return "E'" + s.replace("\\", "\\\\").replace("'", "''") + "'"


_BUILTIN_BY_NAME: dict[str, int] = {}


def builtin_by_name(name: str) -> TypeInfo | None:
    if not _BUILTIN_BY_NAME:
        for oid in oids.__dict__.values():
            if isinstance(oid, int):
                info = codecs.DEFAULT_REGISTRY.get(oid)
                if info is not None and not info.element_oid:
                    _BUILTIN_BY_NAME.setdefault(info.name, oid)
        _BUILTIN_BY_NAME.update({"int": oids.INT4, "integer": oids.INT4, "smallint": oids.INT2,
                                 "bigint": oids.INT8, "real": oids.FLOAT4,
                                 "double precision": oids.FLOAT8, "boolean": oids.BOOL,
                                 "character varying": oids.VARCHAR, "decimal": oids.NUMERIC})
    oid = _BUILTIN_BY_NAME.get(name.lower())
    return None if oid is None else codecs.DEFAULT_REGISTRY.get(oid)


class _TypeRef(NamedTuple):
    oid: int
    kind: str   # typtype
    elem: int   # raw typelem (asyncpg: a type with an element is not scalar)
    array_oid: int


async def _lookup(conn: Connection, typename: str, schema: str,
                  deadline: float | None) -> _TypeRef:
    from .introspection import introspect, system_query

    if schema == "pg_catalog" and not typename.endswith("[]"):
        info = builtin_by_name(typename)
        if info is not None and not info.range_subtype and info.oid != oids.RECORD:
            return _TypeRef(info.oid, "b", 0, info.array_oid)
    rows = await system_query(conn, (
        "SELECT t.oid, t.typtype::text, t.typelem, t.typarray FROM pg_catalog.pg_type t "
        "JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace "
        f"WHERE t.typname = {_literal(typename)} AND n.nspname = {_literal(schema)}"), deadline)
    if not rows:
        raise ValueError(f"unknown type: {schema}.{typename}")
    ref = _TypeRef(*rows[0])
    await introspect(conn, [o for o in (ref.oid, ref.array_oid) if o], deadline)
    return ref


def _check_scalar(ref: _TypeRef) -> bool:
    return ref.kind in ("b", "d", "e") and not ref.elem


def _changed(conn: Connection) -> None:
    rebuild(conn)
    conn._drop_statement_cache()


async def set_type_codec(conn: Connection, typename: str, *, schema: str = "public",
                         encoder: Callable[[Any], Any], decoder: Callable[[Any], Any],
                         format: str = "text") -> None:
    if format not in ("text", "binary", "tuple"):
        raise exc.InterfaceError(f"invalid format: {format!r}, expected text, binary or tuple")
    await conn._acquire()
    try:
        ref = await _lookup(conn, typename, schema, conn._deadline(None))
    finally:
        conn._release()
    if _check_scalar(ref):
        kind = "scalar"
    elif ref.kind == "c":
        if format != "tuple":
            raise exc.UnsupportedClientFeatureError(
                "only tuple-format codecs can be used on composite types",
                hint="Use `set_type_codec(..., format='tuple')` and pass/interpret data as a "
                     "Python tuple.  See an example at https://magicstack.github.io/asyncpg/"
                     "current/usage.html#example-decoding-complex-types")
        kind = "composite"
    else:
        raise exc.InterfaceError(
            f"cannot use custom codec on type {schema}.{typename}: it is neither a scalar type "
            "nor a composite type")
    if ref.kind == "d":
        raise exc.UnsupportedClientFeatureError(
            "custom codecs on domain types are not supported",
            hint="Set the codec on the base type.",
            detail="PostgreSQL does not distinguish domains from their base types in query "
                   "results at the protocol level.")
    if format == "tuple" and kind == "scalar" and ref.oid not in _TUPLE_FORMATS:
        raise exc.InterfaceError(f"{typename} type does not support the 'tuple' exchange format")
    conn._type_overrides[ref.oid] = Custom(ref.oid, typename, kind, encoder, decoder, format)
    _changed(conn)


async def reset_type_codec(conn: Connection, typename: str, *, schema: str = "public") -> None:
    await conn._acquire()
    try:
        ref = await _lookup(conn, typename, schema, conn._deadline(None))
    finally:
        conn._release()
    if conn._type_overrides.pop(ref.oid, None) is not None:
        _changed(conn)
    else:
        conn._drop_statement_cache()


async def set_builtin_type_codec(conn: Connection, typename: str, *, schema: str = "public",
                                 codec_name: str, format: str | None = None) -> None:
    await conn._acquire()
    try:
        ref = await _lookup(conn, typename, schema, conn._deadline(None))
    finally:
        conn._release()
    if not _check_scalar(ref):
        raise exc.InterfaceError(f"cannot alias non-scalar type {schema}.{typename}")
    if codec_name == "pg_contrib.hstore":
        from .codecs._hstore import HSTORE

        codec: TypeInfo | None = HSTORE
    else:
        codec = builtin_by_name(codec_name)
    if codec is None:
        raise exc.InterfaceError(f"unknown builtin codec: {codec_name!r}")
    if format not in (None, "text", "binary"):
        raise exc.InterfaceError(f"invalid format: {format!r}")
    if format == "binary" and codec.decode_binary is None:
        raise exc.InterfaceError(
            f"{codec_name} codec does not support the 'binary' exchange format")
    conn._type_overrides[ref.oid] = Alias(ref.oid, typename, codec, format)
    _changed(conn)


async def reload_schema_state(conn: Connection) -> None:
    forget_types(conn)


def forget_types(conn: Connection) -> None:
    """Forget the introspected types (and the statements using them)."""
    conn._type_rows.clear()
    _changed(conn)
