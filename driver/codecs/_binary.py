"""Binary-format encoders and decoders of the builtin scalar types.

Decoders take the value's bytes (bytes or memoryview); encoders return the value's
bytes (without the int32 length prefix) or raise EncodeError.  Python types and edge
values follow asyncpg's behaviour.
"""

from __future__ import annotations

import datetime as _dt
import struct
from typing import TYPE_CHECKING, Any

from ._core import EncodeError, lazy_class, lazy_module, type_name

if TYPE_CHECKING:
    import ipaddress
    import uuid
    from decimal import Decimal
else:  # imported by the first uuid / inet / cidr / numeric value
    Decimal = lazy_class("decimal", "Decimal", globals())
    ipaddress = lazy_module("ipaddress", globals())
    uuid = lazy_module("uuid", globals())

_i16 = struct.Struct("!h")
_i32 = struct.Struct("!i")
_i64 = struct.Struct("!q")
_u32 = struct.Struct("!I")
_u64 = struct.Struct("!Q")
_f32 = struct.Struct("!f")
_f64 = struct.Struct("!d")
_qi = struct.Struct("!qi")
_qii = struct.Struct("!qii")
_numeric_head = struct.Struct("!HhHH")

unpack_i16 = _i16.unpack_from
unpack_i32 = _i32.unpack_from
unpack_i64 = _i64.unpack_from
unpack_u32 = _u32.unpack_from
unpack_u64 = _u64.unpack_from
unpack_f32 = _f32.unpack_from
unpack_f64 = _f64.unpack_from

# ---------------------------------------------------------------------------
# bool
# ---------------------------------------------------------------------------


def decode_bool(b: Any) -> bool:
    return bool(b[0] != 0)


def encode_bool(v: Any) -> bytes:
    if v is True:
        return b"\x01"
    if v is False:
        return b"\x00"
    raise EncodeError(f"a boolean is required (got type {type_name(v)})")


# ---------------------------------------------------------------------------
# integers
# ---------------------------------------------------------------------------


def decode_int2(b: Any) -> int:
    return int(unpack_i16(b)[0])


def decode_int4(b: Any) -> int:
    return int(unpack_i32(b)[0])


def decode_int8(b: Any) -> int:
    return int(unpack_i64(b)[0])


def decode_uint4(b: Any) -> int:
    return int(unpack_u32(b)[0])


def decode_uint8(b: Any) -> int:
    return int(unpack_u64(b)[0])


def _as_int(v: Any, what: str) -> int:
    if type(v) is int:
        return v
    if isinstance(v, (str, bytes, bytearray, memoryview)) or not (
        hasattr(type(v), "__index__") or hasattr(type(v), "__int__")
    ):
        raise EncodeError(f"an integer is required for {what} (got type {type_name(v)})")
    try:
        return int(v)
    except (TypeError, ValueError, OverflowError) as e:
        raise EncodeError(f"an integer is required for {what} (got {v!r}: {e})") from None


def _int_encoder(what: str, lo: int, hi: int, st: struct.Struct, range_name: str) -> Any:
    pack = st.pack

    def encode(v: Any) -> bytes:
        i = _as_int(v, what)
        if i < lo or i > hi:
            raise EncodeError(f"value out of {range_name} range")
        return pack(i)

    encode.__name__ = f"encode_{what}"
    return encode


encode_int2 = _int_encoder("int2", -(2**15), 2**15 - 1, _i16, "int16")
encode_int4 = _int_encoder("int4", -(2**31), 2**31 - 1, _i32, "int32")
encode_int8 = _int_encoder("int8", -(2**63), 2**63 - 1, _i64, "int64")
encode_uint4 = _int_encoder("oid", 0, 2**32 - 1, _u32, "uint32")
encode_uint8 = _int_encoder("xid8", 0, 2**64 - 1, _u64, "uint64")

# ---------------------------------------------------------------------------
# floats
# ---------------------------------------------------------------------------


def decode_float4(b: Any) -> float:
    return float(unpack_f32(b)[0])


def decode_float8(b: Any) -> float:
    return float(unpack_f64(b)[0])


def _as_float(v: Any, what: str) -> float:
    if type(v) is float:
        return v
    if isinstance(v, (str, bytes, bytearray, memoryview)):
        raise EncodeError(f"a real number is required for {what} (got type {type_name(v)})")
    try:
        return float(v)
    except (TypeError, ValueError) as e:
        raise EncodeError(f"a real number is required for {what} (got type {type_name(v)}: {e})") from None
    except OverflowError:
        raise EncodeError(f"value out of {what} range") from None


def encode_float4(v: Any) -> bytes:
    f = _as_float(v, "float4")
    try:
        return _f32.pack(f)
    except OverflowError:
        raise EncodeError("value out of float32 range") from None


def encode_float8(v: Any) -> bytes:
    return _f64.pack(_as_float(v, "float8"))


# ---------------------------------------------------------------------------
# numeric
# ---------------------------------------------------------------------------

_NUMERIC_POS = 0x0000
_NUMERIC_NEG = 0x4000
_NUMERIC_NAN = 0xC000
_NUMERIC_PINF = 0xD000
_NUMERIC_NINF = 0xF000
_NUMERIC_MAX_DSCALE = 0x3FFF


_digit_structs = [struct.Struct(f"!{i}H").unpack_from for i in range(64)]
_digit_fmts = ["%04d" * i for i in range(64)]


def decode_numeric(b: Any) -> Decimal:
    ndigits, weight, sign, dscale = _numeric_head.unpack_from(b)
    if sign >= _NUMERIC_NAN:
        if sign == _NUMERIC_NAN:
            return Decimal("NaN")
        if sign == _NUMERIC_PINF:
            return Decimal("Infinity")
        if sign == _NUMERIC_NINF:
            return Decimal("-Infinity")
        raise ValueError(f"invalid numeric sign 0x{sign:04x}")
    if ndigits == 0:
        return Decimal((0, (0,), -dscale))
    if ndigits < 64:
        coeff = _digit_fmts[ndigits] % _digit_structs[ndigits](b, 8)
    else:
        coeff = ("%04d" * ndigits) % struct.unpack_from(f"!{ndigits}H", b, 8)
    # value = int(coeff) * 10 ** exp10
    exp10 = 4 * (weight - ndigits + 1)
    if dscale:
        adj = dscale + exp10
        if adj > 0:
            coeff += "0" * adj
        elif adj < 0:
            coeff = coeff[:adj] or "0"
        exp10 = -dscale
    if sign:
        return Decimal(f"-{coeff}E{exp10}")
    return Decimal(f"{coeff}E{exp10}")


_P10 = (1, 10, 100, 1000)
#: struct.pack of a numeric with k base-10000 digits, by k
_numeric_packs: dict[int, Any] = {}


def encode_numeric(v: Any) -> bytes:
    """Decimal -> numeric_send's bytes.  A finite Decimal whose ``str`` has no
    exponent (the common case) takes an integer-arithmetic path, about twice
    as fast as the general one (:func:`_encode_numeric`), byte for byte the same."""
    if type(v) is Decimal:
        s = str(v)
        if len(s) < 120 and "E" not in s and "N" not in s and "I" not in s:
            neg = s[0] == "-"
            if neg:
                s = s[1:]
            ip, dot, fp = s.partition(".")
            dscale = len(fp)
            coef = int(ip + fp)
            exp = -dscale
            r = exp % 4  # align the exponent to base-10000 digits
            if r:
                coef *= _P10[r]
                exp -= r
            if coef == 0:
                return _numeric_head.pack(0, 0, _NUMERIC_POS, dscale)
            groups = []  # least significant first
            while coef:
                coef, d = divmod(coef, 10000)
                groups.append(d)
            low = 0
            while groups[low] == 0:  # trailing zero digits are not sent
                low += 1
            k = len(groups) - low
            pack = _numeric_packs.get(k)
            if pack is None:
                pack = _numeric_packs[k] = struct.Struct(f"!HhHH{k}H").pack
            body: bytes = pack(k, len(groups) - 1 + exp // 4, _NUMERIC_NEG if neg else _NUMERIC_POS,
                               dscale, *groups[:low - 1 if low else None:-1])
            return body
    return _encode_numeric(v)


def _encode_numeric(v: Any) -> bytes:
    if isinstance(v, Decimal):
        d = v
    elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
        try:
            d = Decimal(v)
        except (ArithmeticError, ValueError):
            raise EncodeError(f"invalid numeric value {v!r}") from None
    else:
        raise EncodeError(
            f"a Decimal, int, float or str is required for numeric (got type {type_name(v)})")
    sign_bit, digit_tuple, exp = d.as_tuple()
    if not isinstance(exp, int):
        if exp == "F":
            # dscale 0x20: byte-identical to what numeric_send() emits for infinities
            return struct.pack("!HhHH", 0, 0, _NUMERIC_NINF if sign_bit else _NUMERIC_PINF, 0x20)
        return struct.pack("!HhHH", 0, 0, _NUMERIC_NAN, 0)
    dscale = -exp if exp < 0 else 0
    if dscale > _NUMERIC_MAX_DSCALE:
        raise EncodeError("cannot encode Decimal value into numeric: exponent is too small")
    s = "".join(map(str, digit_tuple))
    # align the exponent to a multiple of 4 (base-10000 digits)
    r = exp % 4
    if r:
        s += "0" * r
        exp -= r
    pad = -len(s) % 4
    if pad:
        s = "0" * pad + s
    groups = [int(s[i:i + 4]) for i in range(0, len(s), 4)]
    weight = len(groups) - 1 + exp // 4
    # strip leading and trailing zero groups
    start = 0
    while start < len(groups) and groups[start] == 0:
        start += 1
    if start == len(groups):
        return struct.pack("!HhHH", 0, 0, _NUMERIC_POS, dscale)
    weight -= start
    end = len(groups)
    while groups[end - 1] == 0:
        end -= 1
    groups = groups[start:end]
    if weight > 0x7FFF or weight < -0x8000 or len(groups) > 0xFFFF:
        raise EncodeError("cannot encode Decimal value into numeric: value out of range")
    return struct.pack(f"!HhHH{len(groups)}H", len(groups), weight,
                       _NUMERIC_NEG if sign_bit else _NUMERIC_POS, dscale, *groups)


# ---------------------------------------------------------------------------
# strings, bytes
# ---------------------------------------------------------------------------


def decode_text(b: Any) -> str:
    return str(b, "utf-8")


def encode_text(v: Any) -> bytes:
    if type(v) is str or isinstance(v, str):
        return v.encode("utf-8")
    raise EncodeError(f"expected str, got {type_name(v)}")


def decode_bytea(b: Any) -> bytes:
    return bytes(b)


def encode_bytea(v: Any) -> bytes:
    if type(v) is bytes:
        return v
    if isinstance(v, str):
        raise EncodeError("a bytes-like object is required for bytea, not 'str'")
    try:
        return bytes(memoryview(v))
    except TypeError:
        raise EncodeError(f"a bytes-like object is required for bytea, not {type_name(v)!r}") from None


def decode_char(b: Any) -> bytes:
    # asyncpg returns the "char" type as bytes
    return bytes(b)


def encode_char(v: Any) -> bytes:
    if isinstance(v, str):
        return v.encode("utf-8")
    try:
        return bytes(memoryview(v))
    except TypeError:
        raise EncodeError(f'a bytes-like object or str is required for "char", not {type_name(v)!r}') from None


def decode_jsonb(b: Any) -> str:
    if b[0] != 1:
        raise ValueError(f"unexpected JSONB format: {b[0]}")
    return str(b[1:], "utf-8")


def encode_jsonb(v: Any) -> bytes:
    if isinstance(v, str):
        return b"\x01" + v.encode("utf-8")
    raise EncodeError(f"expected str, got {type_name(v)}")


decode_jsonpath = decode_jsonb
encode_jsonpath = encode_jsonb


def decode_void(b: Any) -> None:
    return None


# ---------------------------------------------------------------------------
# uuid
# ---------------------------------------------------------------------------


def decode_uuid(b: Any) -> uuid.UUID:
    if len(b) != 16:
        raise ValueError(f"cannot decode UUID, expected 16 bytes, got {len(b)}")
    return uuid.UUID(bytes=bytes(b))


def encode_uuid(v: Any) -> bytes:
    if isinstance(v, uuid.UUID):
        return v.bytes
    if isinstance(v, str):
        try:
            return uuid.UUID(v).bytes
        except ValueError:
            raise EncodeError(f"invalid UUID string {v!r}") from None
    raw = getattr(v, "bytes", None)
    if isinstance(raw, bytes) and len(raw) == 16:
        return raw
    raise EncodeError(f"a uuid.UUID or str is required for uuid (got type {type_name(v)})")


# ---------------------------------------------------------------------------
# date / time
# ---------------------------------------------------------------------------

UTC = _dt.timezone.utc
PG_EPOCH_DATE = _dt.date(2000, 1, 1)
PG_EPOCH_ORDINAL = PG_EPOCH_DATE.toordinal()
PG_EPOCH = _dt.datetime(2000, 1, 1)
PG_EPOCH_UTC = _dt.datetime(2000, 1, 1, tzinfo=UTC)
DATE_INFINITY = 0x7FFFFFFF
DATE_NEG_INFINITY = -0x80000000
TS_INFINITY = 0x7FFFFFFFFFFFFFFF
TS_NEG_INFINITY = -0x8000000000000000
# asyncpg maps PostgreSQL +-infinity to the Python extremes (naive, even for timestamptz)
INFINITY_DATE = _dt.date.max
NEG_INFINITY_DATE = _dt.date.min
INFINITY_DATETIME = _dt.datetime.max
NEG_INFINITY_DATETIME = _dt.datetime.min
_INFINITY_DATE_ORD = INFINITY_DATE.toordinal()
_NEG_INFINITY_DATE_ORD = NEG_INFINITY_DATE.toordinal()
_ONE_US = _dt.timedelta(microseconds=1)
_timedelta = _dt.timedelta
_datetime = _dt.datetime
_date_fromordinal = _dt.date.fromordinal


def _us_of(delta: _dt.timedelta) -> int:
    return (delta.days * 86400 + delta.seconds) * 1000000 + delta.microseconds


_INFINITY_TS_US = _us_of(INFINITY_DATETIME - PG_EPOCH)
_NEG_INFINITY_TS_US = _us_of(NEG_INFINITY_DATETIME - PG_EPOCH)


def decode_date(b: Any) -> _dt.date:
    d = unpack_i32(b)[0]
    if d == DATE_INFINITY:
        return INFINITY_DATE
    if d == DATE_NEG_INFINITY:
        return NEG_INFINITY_DATE
    return _date_fromordinal(d + PG_EPOCH_ORDINAL)


def encode_date(v: Any) -> bytes:
    if not isinstance(v, _dt.date):
        raise EncodeError(f"a datetime.date is required for date (got type {type_name(v)})")
    o = v.toordinal()
    if o == _INFINITY_DATE_ORD:
        return _i32.pack(DATE_INFINITY)
    if o == _NEG_INFINITY_DATE_ORD:
        return _i32.pack(DATE_NEG_INFINITY)
    return _i32.pack(o - PG_EPOCH_ORDINAL)


def decode_timestamp(b: Any) -> _dt.datetime:
    us = unpack_i64(b)[0]
    if us == TS_INFINITY:
        return INFINITY_DATETIME
    if us == TS_NEG_INFINITY:
        return NEG_INFINITY_DATETIME
    return PG_EPOCH + _timedelta(0, 0, us)


def decode_timestamptz(b: Any) -> _dt.datetime:
    us = unpack_i64(b)[0]
    if us == TS_INFINITY:
        return INFINITY_DATETIME
    if us == TS_NEG_INFINITY:
        return NEG_INFINITY_DATETIME
    return PG_EPOCH_UTC + _timedelta(0, 0, us)


def _pack_ts(us: int) -> bytes:
    if us == _INFINITY_TS_US:
        return _i64.pack(TS_INFINITY)
    if us == _NEG_INFINITY_TS_US:
        return _i64.pack(TS_NEG_INFINITY)
    return _i64.pack(us)


def encode_timestamp(v: Any) -> bytes:
    if not isinstance(v, _dt.datetime):
        if isinstance(v, _dt.date):
            v = _dt.datetime(v.year, v.month, v.day)
        else:
            raise EncodeError(
                f"a datetime.datetime or datetime.date is required for timestamp (got type {type_name(v)})")
    if v.tzinfo is not None and v.utcoffset() is not None:
        raise EncodeError(
            "a naive datetime is required for timestamp without time zone (got a timezone-aware datetime)")
    return _pack_ts(_us_of(v.replace(tzinfo=None) - PG_EPOCH))


def local_timezone() -> _dt.tzinfo:
    off = _dt.datetime.now(UTC).astimezone().utcoffset()
    return _dt.timezone(off if off is not None else _dt.timedelta(0))


def encode_timestamptz(v: Any) -> bytes:
    if type(v) is _datetime and v.utcoffset() is not None:
        # aware: the difference from the epoch is the instant, no astimezone() needed
        us = (v - PG_EPOCH_UTC) // _ONE_US
        if _NEG_INFINITY_TS_US < us < _INFINITY_TS_US:
            return _i64.pack(us)
    if not isinstance(v, _dt.datetime):
        if isinstance(v, _dt.date):
            v = _dt.datetime(v.year, v.month, v.day, tzinfo=local_timezone())
        else:
            raise EncodeError(
                f"a datetime.datetime or datetime.date is required for timestamptz (got type {type_name(v)})")
    if v.tzinfo is None:
        if v == INFINITY_DATETIME:
            return _i64.pack(TS_INFINITY)
        if v == NEG_INFINITY_DATETIME:
            return _i64.pack(TS_NEG_INFINITY)
    # naive datetimes are interpreted as local time (like asyncpg)
    try:
        u = v.astimezone(UTC)
    except (OverflowError, ValueError) as e:
        raise EncodeError(f"cannot convert {v!r} to UTC: {e}") from None
    return _pack_ts(_us_of(u.replace(tzinfo=None) - PG_EPOCH))


def _time_from_us(us: int) -> _dt.time:
    s, micro = divmod(us, 1000000)
    m, sec = divmod(s, 60)
    h, minute = divmod(m, 60)
    return _dt.time(h, minute, sec, micro)


def decode_time(b: Any) -> _dt.time:
    return _time_from_us(unpack_i64(b)[0])


def encode_time(v: Any) -> bytes:
    if not isinstance(v, _dt.time):
        raise EncodeError(f"a datetime.time is required for time (got type {type_name(v)})")
    return _i64.pack(((v.hour * 60 + v.minute) * 60 + v.second) * 1000000 + v.microsecond)


def decode_timetz(b: Any) -> _dt.time:
    us, off = _qi.unpack_from(b)
    # PostgreSQL stores seconds *west* of UTC; asyncpg truncates to whole minutes
    minutes = int(off / 60)
    return _time_from_us(us).replace(tzinfo=_dt.timezone(_dt.timedelta(minutes=-minutes)))


def encode_timetz(v: Any) -> bytes:
    if not isinstance(v, _dt.time):
        raise EncodeError(f"a datetime.time is required for timetz (got type {type_name(v)})")
    off = v.utcoffset()
    if off is None:
        raise EncodeError("a timezone-aware datetime.time is required for timetz (got a naive time)")
    us = ((v.hour * 60 + v.minute) * 60 + v.second) * 1000000 + v.microsecond
    return _qi.pack(us, -(off.days * 86400 + off.seconds))


def decode_interval(b: Any) -> _dt.timedelta:
    us, days, months = _qii.unpack_from(b)
    # asyncpg: a year is 365 days, a month 30 days (C-style truncating division)
    if months < 0:
        years = -(-months // 12)
        months = -(-months % 12)
    else:
        years, months = divmod(months, 12)
    return _timedelta(days + months * 30 + years * 365, 0, us)


def encode_interval(v: Any) -> bytes:
    if not isinstance(v, _dt.timedelta):
        raise EncodeError(f"a datetime.timedelta is required for interval (got type {type_name(v)})")
    try:
        return _qii.pack(v.seconds * 1000000 + v.microseconds, v.days, 0)
    except struct.error:
        raise EncodeError("value out of interval range") from None


# ---------------------------------------------------------------------------
# inet / cidr
# ---------------------------------------------------------------------------

_AF_INET = 2
_AF_INET6 = 3
if TYPE_CHECKING:
    IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
    IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
    IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _net_parts(b: Any, cidr: bool) -> tuple[int, int, bytes]:
    # b[2] is the is_cidr flag: the type OID already says which of the two it is
    family, bits, n = b[0], b[1], b[3]
    if family == _AF_INET:
        maxbits, alen = 32, 4
    elif family == _AF_INET6:
        maxbits, alen = 128, 16
    else:
        raise ValueError(f"invalid address family in {'cidr' if cidr else 'inet'} value")
    if bits > maxbits or n != alen or len(b) != 4 + alen:
        raise ValueError(f"invalid {'cidr' if cidr else 'inet'} value")
    return bits, maxbits, bytes(b[4:4 + alen])


def decode_inet(b: Any) -> IPAddress | IPInterface:
    bits, maxbits, addr = _net_parts(b, False)
    if bits == maxbits:
        return ipaddress.ip_address(addr)
    return ipaddress.ip_interface((addr, bits))


def decode_cidr(b: Any) -> IPNetwork:
    bits, _, addr = _net_parts(b, True)
    return ipaddress.ip_network((addr, bits))


def _net_bytes(packed: bytes, bits: int, is_cidr: int) -> bytes:
    return bytes((_AF_INET if len(packed) == 4 else _AF_INET6, bits, is_cidr, len(packed))) + packed


def encode_inet(v: Any) -> bytes:
    try:
        a = ipaddress.ip_address(v)
    except ValueError:
        try:
            i = ipaddress.ip_interface(v)
        except (ValueError, TypeError) as e:
            raise EncodeError(
                f"an ipaddress address/interface/network or str is required for inet ({e})") from None
        return _net_bytes(i.packed, i.network.prefixlen, 0)
    except TypeError as e:
        raise EncodeError(f"an ipaddress address/interface/network or str is required for inet ({e})") from None
    return _net_bytes(a.packed, a.max_prefixlen, 0)


def encode_cidr(v: Any) -> bytes:
    try:
        n = ipaddress.ip_network(v)
    except (ValueError, TypeError) as e:
        raise EncodeError(f"an ipaddress network or str is required for cidr ({e})") from None
    return _net_bytes(n.network_address.packed, n.prefixlen, 1)
