"""TypeRegistry: OID -> codecs lookup, parameter encoding and DataRow decoding."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any, Callable

from . import _arrays as A
from . import _binary as B
from . import _geo as G
from . import _range as R
from . import _text as T
from . import oids
from ._core import FORMAT_BINARY, FORMAT_TEXT, Decoder, EncodeError, Encoder, TypeInfo

RowDecoder = Callable[[bytes], tuple[Any, ...]]

# --------------------------------------------------------------------------
# builtin scalar types: (oid, name, binary encoder, binary decoder, text decoder)
# --------------------------------------------------------------------------

_STR_TYPES = {
    oids.TEXT: "text", oids.VARCHAR: "varchar", oids.BPCHAR: "bpchar", oids.NAME: "name",
    oids.XML: "xml", oids.JSON: "json", oids.REFCURSOR: "refcursor", oids.CSTRING: "cstring",
}
_UINT4_TYPES = {oids.OID: "oid", oids.XID: "xid", oids.CID: "cid"}
# reg* types are exchanged in text (their names), like asyncpg does
_TEXT_ONLY_TYPES = {
    oids.REGPROC: "regproc", oids.REGPROCEDURE: "regprocedure", oids.REGOPER: "regoper",
    oids.REGOPERATOR: "regoperator", oids.REGCLASS: "regclass", oids.REGTYPE: "regtype",
    oids.REGCONFIG: "regconfig", oids.REGDICTIONARY: "regdictionary",
    oids.REGNAMESPACE: "regnamespace", oids.REGROLE: "regrole", oids.REGCOLLATION: "regcollation",
    # types asyncpg also returns as str
    oids.MONEY: "money", oids.MACADDR: "macaddr", oids.MACADDR8: "macaddr8",
    oids.UNKNOWN: "unknown",
    oids.TSVECTOR: "tsvector", oids.TSQUERY: "tsquery", oids.ACLITEM: "aclitem",
}


def _builtin_scalars() -> list[TypeInfo]:
    L: list[TypeInfo] = []

    def add(oid: int, name: str, enc: Encoder | None, dec: Decoder | None, tdec: Decoder,
            tenc: Encoder | None = None) -> None:
        L.append(TypeInfo(oid=oid, name=name, decode_text=tdec, encode=enc, decode_binary=dec,
                          encode_text=tenc, array_oid=oids.ELEMENT_ARRAY.get(oid, 0)))

    add(oids.BOOL, "bool", B.encode_bool, B.decode_bool, T.decode_bool)
    add(oids.INT2, "int2", B.encode_int2, B.decode_int2, T.decode_int)
    add(oids.INT4, "int4", B.encode_int4, B.decode_int4, T.decode_int)
    add(oids.INT8, "int8", B.encode_int8, B.decode_int8, T.decode_int)
    for oid, name in _UINT4_TYPES.items():
        add(oid, name, B.encode_uint4, B.decode_uint4, T.decode_int)
    add(oids.XID8, "xid8", B.encode_uint8, B.decode_uint8, T.decode_int)
    add(oids.FLOAT4, "float4", B.encode_float4, B.decode_float4, T.decode_float)
    add(oids.FLOAT8, "float8", B.encode_float8, B.decode_float8, T.decode_float)
    add(oids.NUMERIC, "numeric", B.encode_numeric, B.decode_numeric, T.decode_numeric)
    for oid, name in _STR_TYPES.items():
        add(oid, name, B.encode_text, B.decode_text, T.decode_text)
    add(oids.CHAR, "char", B.encode_char, B.decode_char, T.decode_char)
    add(oids.JSONB, "jsonb", B.encode_jsonb, B.decode_jsonb, T.decode_text)
    add(oids.JSONPATH, "jsonpath", B.encode_jsonpath, B.decode_jsonpath, T.decode_text)
    add(oids.BYTEA, "bytea", B.encode_bytea, B.decode_bytea, T.decode_bytea)
    add(oids.UUID, "uuid", B.encode_uuid, B.decode_uuid, T.decode_uuid)
    add(oids.DATE, "date", B.encode_date, B.decode_date, T.decode_date)
    add(oids.TIME, "time", B.encode_time, B.decode_time, T.decode_time)
    add(oids.TIMETZ, "timetz", B.encode_timetz, B.decode_timetz, T.decode_timetz)
    add(oids.TIMESTAMP, "timestamp", B.encode_timestamp, B.decode_timestamp, T.decode_timestamp)
    add(oids.TIMESTAMPTZ, "timestamptz", B.encode_timestamptz, B.decode_timestamptz,
        T.decode_timestamptz)
    add(oids.INTERVAL, "interval", B.encode_interval, B.decode_interval, T.decode_interval)
    add(oids.INET, "inet", B.encode_inet, B.decode_inet, T.decode_inet)
    add(oids.CIDR, "cidr", B.encode_cidr, B.decode_cidr, T.decode_cidr)
    add(oids.VOID, "void", None, B.decode_void, T.decode_void)
    for oid, name in _TEXT_ONLY_TYPES.items():
        add(oid, name, None, None, T.decode_text, T.encode_str_strict)

    add(oids.BIT, "bit", G.encode_bits, G.decode_bits, G.decode_bits_text)
    add(oids.VARBIT, "varbit", G.encode_bits, G.decode_bits, G.decode_bits_text)
    add(oids.POINT, "point", G.encode_point, G.decode_point, G.decode_point_text)
    add(oids.LSEG, "lseg", G.encode_box, G.decode_lseg, G.decode_lseg_text)
    add(oids.BOX, "box", G.encode_box, G.decode_box, G.decode_box_text)
    add(oids.LINE, "line", G.encode_line, G.decode_line, G.decode_line_text)
    add(oids.PATH, "path", G.encode_path, G.decode_path, G.decode_path_text)
    add(oids.POLYGON, "polygon", G.encode_polygon, G.decode_polygon, G.decode_polygon_text)
    add(oids.CIRCLE, "circle", G.encode_circle, G.decode_circle, G.decode_circle_text)
    return L


# builtin range type -> (subtype, multirange type)
BUILTIN_RANGES = {
    oids.INT4RANGE: (oids.INT4, oids.INT4MULTIRANGE, "int4range", "int4multirange"),
    oids.INT8RANGE: (oids.INT8, oids.INT8MULTIRANGE, "int8range", "int8multirange"),
    oids.NUMRANGE: (oids.NUMERIC, oids.NUMMULTIRANGE, "numrange", "nummultirange"),
    oids.DATERANGE: (oids.DATE, oids.DATEMULTIRANGE, "daterange", "datemultirange"),
    oids.TSRANGE: (oids.TIMESTAMP, oids.TSMULTIRANGE, "tsrange", "tsmultirange"),
    oids.TSTZRANGE: (oids.TIMESTAMPTZ, oids.TSTZMULTIRANGE, "tstzrange", "tstzmultirange"),
}


_unpack_i32 = struct.Struct("!i").unpack_from
_unpack_oid_len = struct.Struct("!Ii").unpack_from

# Expressions inlined by build_row_decoder for the hottest fixed-size binary types;
# ``b`` is the row body, ``p`` the value's offset, ``q`` its end.
_INLINE: dict[Decoder, str] = {
    B.decode_int4: "ui4(b, p)[0]",
    B.decode_int8: "ui8(b, p)[0]",
    B.decode_int2: "ui2(b, p)[0]",
    B.decode_float8: "uf8(b, p)[0]",
    B.decode_text: "b[p:q].decode()",
    B.decode_bool: "b[p] != 0",
}
_INLINE_NS: dict[str, Any] = {
    "ui4": B.unpack_i32, "ui8": B.unpack_i64, "ui2": B.unpack_i16, "uf8": B.unpack_f64,
    "ul": _unpack_i32,
}


class TypeRegistry:
    """OID -> TypeInfo map.  A new registry starts with all builtin types.

    A connection can keep its own registry (``TypeRegistry()``) and add codecs for
    non-builtin OIDs (enums, domains...) with :meth:`register` / :meth:`register_text_type`.
    """

    def __init__(self, *, builtins: bool = True) -> None:
        self._types: dict[int, TypeInfo] = {}
        self._row_decoders: dict[tuple[tuple[int, int], ...], RowDecoder] = {}
        if builtins:
            for info in _builtin_scalars():
                self.register(info)
            for rng, (sub, multi, rname, mname) in BUILTIN_RANGES.items():
                self.register_range(rng, sub, rname, array_oid=oids.ELEMENT_ARRAY.get(rng, 0))
                self.register_multirange(multi, rng, mname,
                                         array_oid=oids.ELEMENT_ARRAY.get(multi, 0))
            self._register_record()
            for arr, elem in oids.ARRAY_ELEMENT.items():
                if elem in self._types and arr not in self._types:
                    self.register_array(arr, elem, delim=";" if elem == oids.BOX else ",")

    # -- registration ------------------------------------------------------

    def register(self, info: TypeInfo) -> None:
        self._types[info.oid] = info
        self._row_decoders.clear()

    def register_array(self, array_oid: int, element_oid: int, *, delim: str = ",") -> TypeInfo:
        """Register array codecs for ``array_oid`` built from ``element_oid``'s codecs."""
        el = self._types.get(element_oid)
        if el is None:
            raise KeyError(f"element type {element_oid} is not registered")
        enc = A.make_binary_array_encoder(element_oid, el.encode) if el.encode else None
        tenc = None
        if enc is None:
            tenc = A.make_text_array_encoder(el.encode_text or T.encode_str_any)
        dec = A.make_binary_array_decoder(el.decode_binary) if el.decode_binary else None
        info = TypeInfo(oid=array_oid, name=f"_{el.name}", decode_text=A.make_text_array_decoder(
            el.decode_text, delim), encode=enc, decode_binary=dec, encode_text=tenc,
            element_oid=element_oid)
        self.register(info)
        return info

    def register_range(self, oid: int, subtype_oid: int, name: str, *,
                       array_oid: int = 0) -> TypeInfo:
        """Register a range type over ``subtype_oid`` (binary when the subtype is)."""
        sub = self._types.get(subtype_oid)
        if sub is None:
            raise KeyError(f"range subtype {subtype_oid} is not registered")
        binary = sub.encode is not None and sub.decode_binary is not None
        info = TypeInfo(
            oid=oid, name=name, decode_text=R.make_text_range_decoder(sub.decode_text),
            encode=R.make_binary_range_encoder(sub.encode) if binary and sub.encode else None,
            decode_binary=(R.make_binary_range_decoder(sub.decode_binary)
                           if binary and sub.decode_binary else None),
            encode_text=None if binary else R.make_text_range_encoder(self.text_encoder(sub)),
            array_oid=array_oid, range_subtype=subtype_oid)
        self.register(info)
        return info

    def register_multirange(self, oid: int, range_oid: int, name: str, *,
                            array_oid: int = 0) -> TypeInfo:
        """Register a multirange type of the (registered) range type ``range_oid``."""
        rng = self._types.get(range_oid)
        if rng is None:
            raise KeyError(f"range type {range_oid} is not registered")
        sub = self._types.get(rng.range_subtype)
        if sub is None:
            raise KeyError(f"range subtype {rng.range_subtype} is not registered")
        info = TypeInfo(
            oid=oid, name=name, decode_text=R.make_text_multirange_decoder(sub.decode_text),
            encode=R.make_binary_multirange_encoder(rng.encode) if rng.encode else None,
            decode_binary=(R.make_binary_multirange_decoder(sub.decode_binary)
                           if rng.decode_binary and sub.decode_binary else None),
            encode_text=None if rng.encode else R.make_text_multirange_encoder(
                rng.encode_text or T.encode_str_any),
            array_oid=array_oid, range_subtype=rng.range_subtype)
        self.register(info)
        return info

    def register_alias(self, oid: int, base_oid: int, name: str) -> TypeInfo:
        """Register ``oid`` (e.g. a domain) with the codecs of ``base_oid``."""
        base = self._types.get(base_oid)
        if base is None:
            raise KeyError(f"base type {base_oid} is not registered")
        info = base.replace(oid=oid, name=name, array_oid=0)
        self.register(info)
        return info

    def register_enum(self, oid: int, name: str) -> TypeInfo:
        """An enum: its label as str (enum_send/enum_recv carry the label's text)."""
        info = TypeInfo(oid=oid, name=name, decode_text=T.decode_text, encode=B.encode_text,
                        decode_binary=B.decode_text, encode_text=T.encode_str_strict)
        self.register(info)
        return info

    def register_composite(self, oid: int, name: str, names: Sequence[str],
                           att_oids: Sequence[int],
                           build: Callable[[tuple[Any, ...]], Any] | None = None,
                           adapt: Callable[[Any], Any] | None = None) -> TypeInfo:
        """A composite type of the (registered) attribute types ``att_oids``.

        Decoded to a Record (or ``build(values_tuple)``); ``adapt`` maps a value
        before encoding (a custom ``tuple`` codec's encoder).  Binary when every
        attribute type has binary codecs, else text.
        """
        from ._composite import (make_binary_composite_decoder, make_binary_composite_encoder,
                                 make_text_composite_decoder, make_text_composite_encoder)

        atts = [self._types.get(o) for o in att_oids]
        if any(a is None for a in atts):
            raise KeyError(f"attribute types of {name} are not registered")
        infos = [a for a in atts if a is not None]
        if build is None:
            from ..record import Record, make_mapping

            mapping = make_mapping(names)

            def build(values: tuple[Any, ...], _m: Any = mapping) -> Any:
                return Record(_m, values)
        binary = all(a.encode is not None and a.decode_binary is not None for a in infos)
        tdec = make_text_composite_decoder([a.decode_text for a in infos], build, name)
        if binary:
            enc: Encoder | None = make_binary_composite_encoder(
                names, att_oids, [a.encode for a in infos if a.encode is not None])
            dec: Decoder | None = make_binary_composite_decoder(
                [a.decode_binary for a in infos if a.decode_binary is not None], build,
                att_oids, name)
            tenc = None
        else:
            enc = dec = None
            tenc = make_text_composite_encoder(names, [self.text_encoder(a) for a in infos])
        if adapt is not None:
            enc = _adapted(adapt, enc)
            tenc = _adapted(adapt, tenc)
        info = TypeInfo(oid=oid, name=name, decode_text=tdec, encode=enc, decode_binary=dec,
                        encode_text=tenc)
        self.register(info)
        return info

    def text_encoder(self, info: TypeInfo) -> Encoder:
        """A text-format encoder of ``info`` (inside text composites and ranges)."""
        if info.encode_text is not None:
            return info.encode_text
        if info.element_oid:
            el = self._types.get(info.element_oid)
            return A.make_text_array_encoder(
                self.text_encoder(el) if el is not None else T.encode_str_any)
        return T.encode_value_text

    def copy(self) -> TypeRegistry:
        """A registry with the same codecs (changes to it do not affect this one)."""
        reg = TypeRegistry(builtins=False)
        reg._types = dict(self._types)
        if oids.RECORD in reg._types:
            reg._register_record()
            reg.register_array(oids.RECORD_ARRAY, oids.RECORD)
        return reg

    def _register_record(self) -> None:
        """Anonymous records (``SELECT ROW(1, 'a')``): a tuple, each field decoded by
        the type OID the server sends with it (binary), as asyncpg does."""
        from ._composite import parse_record_text

        def decode_record(b: Any) -> tuple[Any, ...]:
            n = _unpack_i32(b)[0]
            pos = 4
            out: list[Any] = []
            for _ in range(n):
                oid, ln = _unpack_oid_len(b, pos)
                pos += 8
                if ln < 0:
                    out.append(None)
                else:
                    info = self._types.get(oid)
                    dec = info.decode_binary if info is not None else None
                    if oid == oids.UNKNOWN:  # unknownsend() sends the text
                        dec = B.decode_text
                    out.append((dec or B.decode_bytea)(b[pos:pos + ln]))
                    pos += ln
            return tuple(out)

        def decode_record_text(b: Any) -> tuple[Any, ...]:
            return tuple(parse_record_text(str(b, "utf-8")))

        self.register(TypeInfo(oid=oids.RECORD, name="record", decode_text=decode_record_text,
                               decode_binary=decode_record, encode_text=T.encode_str_any,
                               array_oid=oids.RECORD_ARRAY))

    def register_text_type(self, oid: int, name: str, *, array_oid: int = 0,
                           strict: bool = True) -> TypeInfo:
        """Register a type exchanged as text and returned as str (e.g. an enum).

        ``strict``: only str values encode (else ``str(value)`` is sent).
        """
        info = TypeInfo(oid=oid, name=name, decode_text=T.decode_text, encode=None,
                        decode_binary=None, array_oid=array_oid,
                        encode_text=T.encode_str_strict if strict else T.encode_str_any)
        self.register(info)
        if array_oid:
            self.register_array(array_oid, oid)
        return info

    def get(self, oid: int) -> TypeInfo | None:
        return self._types.get(oid)

    def __contains__(self, oid: object) -> bool:
        return oid in self._types

    # -- lookups -----------------------------------------------------------

    def encoder_for(self, oid: int) -> tuple[int, Encoder]:
        info = self._types.get(oid)
        if info is None:
            return FORMAT_TEXT, T.encode_str_any
        if info.encode is not None:
            return FORMAT_BINARY, info.encode
        return FORMAT_TEXT, info.encode_text or T.encode_str_any

    def decoder_for(self, oid: int, fmt: int) -> Decoder:
        info = self._types.get(oid)
        if info is None:
            if fmt == FORMAT_BINARY:
                return B.decode_bytea
            return T.decode_text
        if fmt == FORMAT_BINARY:
            if info.decode_binary is None:
                raise ValueError(f"no binary decoder for type {info.name} (oid {oid})")
            return info.decode_binary
        return info.decode_text

    def result_format_for(self, oid: int) -> int:
        info = self._types.get(oid)
        return FORMAT_BINARY if info is not None and info.decode_binary is not None else FORMAT_TEXT

    def encode_params(self, param_oids: Sequence[int],
                      args: Sequence[Any]) -> tuple[list[int], list[bytes | None]]:
        if len(param_oids) != len(args):
            raise EncodeError(
                f"the server expects {len(param_oids)} argument{'s' if len(param_oids) != 1 else ''}"
                f" for this query, {len(args)} {'was' if len(args) == 1 else 'were'} passed")
        formats: list[int] = []
        values: list[bytes | None] = []
        for i, (oid, arg) in enumerate(zip(param_oids, args)):
            fmt, enc = self.encoder_for(oid)
            if arg is None:
                formats.append(fmt)
                values.append(None)
                continue
            try:
                data = enc(arg)
            except EncodeError as e:
                raise _positioned(e, i + 1, arg) from None
            except (TypeError, ValueError, OverflowError, ArithmeticError, IndexError, KeyError,
                    struct.error) as e:
                raise _positioned(EncodeError(str(e)), i + 1, arg) from None
            formats.append(fmt)
            values.append(data)
        return formats, values

    def build_row_decoder(self, columns: Sequence[tuple[int, int]]) -> RowDecoder:
        key = tuple((int(o), int(f)) for o, f in columns)
        fn = self._row_decoders.get(key)
        if fn is None:
            fn = _compile_row_decoder([self.decoder_for(o, f) for o, f in key])
            if len(self._row_decoders) > 1024:
                self._row_decoders.clear()
            self._row_decoders[key] = fn
        return fn


def _adapted(adapt: Callable[[Any], Any], enc: Encoder | None) -> Encoder | None:
    if enc is None:
        return None
    inner = enc

    def encode(v: Any) -> bytes:
        return inner(adapt(v))

    return encode


def _short_repr(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 40 else r[:40] + "..."


def _positioned(e: EncodeError, position: int, value: Any) -> EncodeError:
    return EncodeError(
        f"invalid input for query argument ${position}: {_short_repr(value)} ({e.reason})",
        position=position, value=value, reason=e.reason)


def _compile_row_decoder(decoders: list[Decoder]) -> RowDecoder:
    """Generate a DataRow-body parser specialised for the column decoders.

    The loop over columns is unrolled and the hottest fixed-size types are inlined
    (struct.unpack_from at the value's offset, no slicing).
    """
    ns: dict[str, Any] = dict(_INLINE_NS)
    lines = ["def decode_row(b):", "    p = 2"]
    names = []
    for i, dec in enumerate(decoders):
        v = f"v{i}"
        names.append(v)
        expr = _INLINE.get(dec)
        if expr is None:
            ns[f"d{i}"] = dec
            expr = f"d{i}(b[p:q])"
        lines.append("    n = ul(b, p)[0]")
        lines.append("    p += 4")
        lines.append("    if n < 0:")
        lines.append(f"        {v} = None")
        lines.append("    else:")
        if "q]" in expr:
            lines.append("        q = p + n")
            lines.append(f"        {v} = {expr}")
            lines.append("        p = q")
        else:
            lines.append(f"        {v} = {expr}")
            lines.append("        p += n")
    if names:
        lines.append(f"    return ({', '.join(names)},)")
    else:
        lines.append("    return ()")
    src = "\n".join(lines) + "\n"
    exec(compile(src, f"<row decoder {len(decoders)} columns>", "exec"), ns)
    fn: RowDecoder = ns["decode_row"]
    return fn


DEFAULT_REGISTRY = TypeRegistry()
