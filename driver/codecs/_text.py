"""Text-format decoders (and a few text encoders) of the builtin types.

Used for the simple-query protocol and for columns whose results are requested in
text.  Text output is parsed assuming the server defaults DateStyle=ISO and
IntervalStyle=postgres (iso_8601 intervals are accepted too).  Values are returned
as the same Python types as the binary decoders return.
"""

from __future__ import annotations

import datetime as _dt
from typing import TYPE_CHECKING, Any

from . import _binary as B
from ._core import EncodeError, lazy_class, lazy_module, lazy_pattern, type_name

if TYPE_CHECKING:
    import ipaddress
    import uuid
    from decimal import Decimal
else:  # imported by the first uuid / inet / cidr / numeric value
    Decimal = lazy_class("decimal", "Decimal", globals())
    ipaddress = lazy_module("ipaddress", globals())
    uuid = lazy_module("uuid", globals())


def _s(b: Any) -> str:
    return str(b, "utf-8")


def decode_text(b: Any) -> str:
    return str(b, "utf-8")


def decode_int(b: Any) -> int:
    return int(b)


def decode_float(b: Any) -> float:
    return float(b)


def decode_numeric(b: Any) -> Decimal:
    return Decimal(_s(b))


def decode_bool(b: Any) -> bool:
    return bytes(b) in (b"t", b"true", b"on", b"1", b"yes")


def decode_bytea(b: Any) -> bytes:
    raw = bytes(b)
    if raw[:2] == b"\\x":
        return bytes.fromhex(raw[2:].decode("ascii"))
    # "escape" bytea_output: backslash-escaped octal and doubled backslashes
    out = bytearray()
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == 0x5C:  # backslash
            if raw[i + 1:i + 2] == b"\\":
                out.append(0x5C)
                i += 2
            else:
                out.append(int(raw[i + 1:i + 4], 8))
                i += 4
        else:
            out.append(c)
            i += 1
    return bytes(out)


def decode_char(b: Any) -> bytes:
    raw = bytes(b)
    if not raw:  # the NUL "char" is output as an empty string
        return b"\x00"
    if len(raw) == 4 and raw[:1] == b"\\":
        return bytes((int(raw[1:], 8),))
    return raw


def decode_uuid(b: Any) -> uuid.UUID:
    return uuid.UUID(_s(b))


def decode_void(b: Any) -> None:
    return None


# ---------------------------------------------------------------------------
# date / time
# ---------------------------------------------------------------------------

_DATE_RE = lazy_pattern("_DATE_RE", globals(), r"(\d{4,})-(\d\d)-(\d\d)( BC)?$")
_TIME_RE = r"(\d\d):(\d\d):(\d\d)(?:\.(\d{1,6}))?"
_TZ_RE = r"([+-])(\d\d)(?::?(\d\d))?(?::?(\d\d))?"
_TIME_ONLY = lazy_pattern("_TIME_ONLY", globals(), _TIME_RE + "$")
_TIMETZ = lazy_pattern("_TIMETZ", globals(), _TIME_RE + _TZ_RE + "$")
_TS = lazy_pattern("_TS", globals(), r"(\d{4,})-(\d\d)-(\d\d)[ T]" + _TIME_RE + "(?:" + _TZ_RE + ")?( BC)?$")


def _bc_check(bc: str | None, s: str) -> None:
    if bc:
        raise ValueError(f"BC dates are not supported by Python datetime: {s!r}")


def decode_date(b: Any) -> _dt.date:
    s = _s(b)
    if s == "infinity":
        return B.INFINITY_DATE
    if s == "-infinity":
        return B.NEG_INFINITY_DATE
    m = _DATE_RE.match(s)
    if m is None:
        raise ValueError(f"cannot parse date {s!r} (DateStyle must be ISO)")
    _bc_check(m.group(4), s)
    return _dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))


def _micro(frac: str | None) -> int:
    return int(frac.ljust(6, "0")) if frac else 0


def _tz(sign: str, hh: str, mm: str | None, ss: str | None) -> int:
    secs = int(hh) * 3600 + int(mm or 0) * 60 + int(ss or 0)
    return -secs if sign == "-" else secs


def decode_time(b: Any) -> _dt.time:
    s = _s(b)
    m = _TIME_ONLY.match(s)
    if m is None:
        raise ValueError(f"cannot parse time {s!r}")
    return _dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3)), _micro(m.group(4)))


def decode_timetz(b: Any) -> _dt.time:
    s = _s(b)
    m = _TIMETZ.match(s)
    if m is None:
        raise ValueError(f"cannot parse timetz {s!r}")
    off = _tz(m.group(5), m.group(6), m.group(7), m.group(8))
    minutes = int(off / 60)  # truncated to whole minutes like the binary decoder
    return _dt.time(int(m.group(1)), int(m.group(2)), int(m.group(3)), _micro(m.group(4)),
                    tzinfo=_dt.timezone(_dt.timedelta(minutes=minutes)))


_DAYS_PER_400Y = 146097


def _parse_ts(s: str, *, utc: bool) -> _dt.datetime:
    m = _TS.match(s)
    if m is None:
        raise ValueError(f"cannot parse timestamp {s!r} (DateStyle must be ISO)")
    year = int(m.group(1))
    if m.group(12):
        if not utc:
            _bc_check(m.group(12), s)
        year = 1 - year  # astronomical numbering: 1 BC is year 0
    off = 0 if m.group(8) is None else _tz(m.group(8), m.group(9), m.group(10), m.group(11))
    # a timestamptz shown in local time may lie just outside Python's year range
    # (e.g. 9999-12-31 23:00 UTC at +05:45): shift by whole 400-year cycles
    shift = 0
    if utc and (year < 1 or year > 9999):
        shift = -((year - 1) // 400) if year < 1 else -((year - 9999 + 399) // 400)
        year += 400 * shift
    dt = _dt.datetime(year, int(m.group(2)), int(m.group(3)), int(m.group(4)),
                      int(m.group(5)), int(m.group(6)), _micro(m.group(7)))
    if not utc:
        return dt
    return (dt - _dt.timedelta(seconds=off)) - _dt.timedelta(days=_DAYS_PER_400Y * shift)


def decode_timestamp(b: Any) -> _dt.datetime:
    s = _s(b)
    if s == "infinity":
        return B.INFINITY_DATETIME
    if s == "-infinity":
        return B.NEG_INFINITY_DATETIME
    return _parse_ts(s, utc=False)


def decode_timestamptz(b: Any) -> _dt.datetime:
    s = _s(b)
    if s == "infinity":
        return B.INFINITY_DATETIME
    if s == "-infinity":
        return B.NEG_INFINITY_DATETIME
    return _parse_ts(s, utc=True).replace(tzinfo=B.UTC)


_IV_UNIT = lazy_pattern(
    "_IV_UNIT", globals(),
    r"([+-]?\d+(?:\.\d+)?)\s+(years?|months?|mons?|days?|hours?|minutes?|mins?|seconds?|secs?)\b")
_IV_TIME = lazy_pattern("_IV_TIME", globals(), r"([+-])?(\d+):(\d\d)(?::(\d\d)(?:\.(\d{1,6}))?)?")
_IV_ISO = lazy_pattern(
    "_IV_ISO", globals(),
    r"P(?:([+-]?\d+)Y)?(?:([+-]?\d+)M)?(?:([+-]?\d+)D)?"
    r"(?:T(?:([+-]?\d+)H)?(?:([+-]?\d+)M)?(?:([+-]?\d+)(?:\.(\d+))?S)?)?$")


def _interval_td(months: int, days: int, us: int) -> _dt.timedelta:
    if months < 0:
        years = -(-months // 12)
        months = -(-months % 12)
    else:
        years, months = divmod(months, 12)
    return _dt.timedelta(days + months * 30 + years * 365, 0, us)


def decode_interval(b: Any) -> _dt.timedelta:
    s = _s(b)
    if s.startswith("P"):
        m = _IV_ISO.match(s)
        if m is None:
            raise ValueError(f"cannot parse interval {s!r}")
        y, mo, d, h, mi, sec, frac = m.groups()
        us = (int(h or 0) * 3600 + int(mi or 0) * 60 + int(sec or 0)) * 1000000
        if frac:
            f = int(frac[:6].ljust(6, "0"))
            us += -f if (sec or "").startswith("-") else f
        return _interval_td(int(y or 0) * 12 + int(mo or 0), int(d or 0), us)
    months = days = us = 0
    rest = s
    for num, unit in _IV_UNIT.findall(s):
        if "." in num:  # only seconds carry fractions (postgres_verbose style)
            us += int(Decimal(num) * 1000000)
            continue
        n = int(num)
        if unit.startswith("y"):
            months += 12 * n
        elif unit.startswith("mon"):
            months += n
        elif unit.startswith("d"):
            days += n
        elif unit.startswith("h"):
            us += n * 3600000000
        elif unit.startswith("min"):
            us += n * 60000000
        else:
            us += n * 1000000
    rest = _IV_UNIT.sub("", s)
    t = _IV_TIME.search(rest)
    if t is not None:
        sign, hh, mm, ss, frac = t.groups()
        tu = (int(hh) * 3600 + int(mm) * 60 + int(ss or 0)) * 1000000 + _micro(frac)
        us += -tu if sign == "-" else tu
    if s.endswith(" ago"):
        months, days, us = -months, -days, -us
    return _interval_td(months, days, us)


# ---------------------------------------------------------------------------
# json, network
# ---------------------------------------------------------------------------


def decode_inet(b: Any) -> B.IPAddress | B.IPInterface:
    s = _s(b)
    if "/" in s:
        return ipaddress.ip_interface(s)
    return ipaddress.ip_address(s)


def decode_cidr(b: Any) -> B.IPNetwork:
    return ipaddress.ip_network(_s(b))


# ---------------------------------------------------------------------------
# text-format encoders
# ---------------------------------------------------------------------------


def encode_str_strict(v: Any) -> bytes:
    """Text encoder of known text-only types (reg*, money...): str values only, like asyncpg."""
    if isinstance(v, str):
        return v.encode("utf-8")
    raise EncodeError(f"expected str, got {type_name(v)}")


def encode_str_any(v: Any) -> bytes:
    """Text encoder for unknown OIDs: ``str(value)`` encoded as UTF-8."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, (bytes, bytearray, memoryview)):
        return bytes(v)
    return str(v).encode("utf-8")


def encode_value_text(v: Any) -> bytes:
    """PostgreSQL text input of a Python value of a builtin type (bool, bytes,
    timedelta, date/time, else ``str()``), for text-format composites and ranges."""
    if isinstance(v, str):
        return v.encode("utf-8")
    if isinstance(v, bool):
        return b"t" if v else b"f"
    if isinstance(v, (bytes, bytearray, memoryview)):
        return b"\\x" + bytes(v).hex().encode("ascii")
    if isinstance(v, _dt.timedelta):
        return f"{v.days} days {v.seconds} seconds {v.microseconds} microseconds".encode("ascii")
    if isinstance(v, (_dt.date, _dt.time)):
        return v.isoformat().encode("ascii")
    return str(v).encode("utf-8")
