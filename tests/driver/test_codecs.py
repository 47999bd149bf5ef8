"""Differential tests of driver.codecs against asyncpg on a real PostgreSQL.

For every (type, SQL literal):
- the binary decoder applied to the server's ``<type>send(literal)`` bytes must give
  exactly what asyncpg returns for ``SELECT literal`` (same Python type, same value,
  same Decimal exponent, same tzinfo), or fail where asyncpg fails;
- the text decoder applied to ``literal::text`` must give the same value;
- the binary encoder applied to asyncpg's value must give the bytes the server
  sends for that value when asyncpg passes it as a parameter.
"""

from __future__ import annotations

import datetime as dt
import decimal
import ipaddress
import math
import os
import struct
import time
import uuid
from typing import Any, AsyncIterator

import asyncpg
import pytest

from driver import codecs
from driver.codecs import EncodeError, oids

D = decimal.Decimal

SCALARS: list[tuple[str, list[str]]] = [
    ("int2", ["0", "-32768", "32767"]),
    ("int4", ["0", "-2147483648", "2147483647", "42"]),
    ("int8", ["0", "-9223372036854775808", "9223372036854775807"]),
    ("float4", ["1.1", "-0", "'Infinity'", "'-Infinity'", "'NaN'", "3.4028235e38", "1e-45", "-2.5"]),
    ("float8", ["0.1", "-0", "1.7976931348623157e308", "5e-324", "'NaN'", "'Infinity'", "'-Infinity'"]),
    ("numeric", ["0", "0.000", "-0.5", "1.2300", "'NaN'", "'Infinity'", "'-Infinity'", "1e-20", "1e20",
                 "123456789012345678901234567890.123456789", "-99999999.00001", "1e1000",
                 "1e-1000", "0.00001000", "10000", "100000", "12345.6789", "9999.9999",
                 "-1", "0.1", "1000000000000.0000000000001", "-0.000"]),
    ("bool", ["true", "false"]),
    ("text", ["''", "'héllo wörld 🎉 日本'", "E'tab\\there\\nnewline'", "'NULL'", "'\"q\" ''s'' \\'"]),
    ("varchar", ["'abc'", "'ünï'"]),
    ("bpchar(5)", ["'ab'"]),
    ("name", ["'pg_class'", "'Ünïcode name'"]),
    ('"char"', ["'a'", "'\\377'", "''"]),
    ("bytea", ["'\\x'", "'\\x00ff10'", "'\\x5c22'", "decode(repeat('ab', 300), 'hex')"]),
    ("uuid", ["'00000000-0000-0000-0000-000000000000'", "'ffffffff-ffff-ffff-ffff-ffffffffffff'",
              "'6771a417-0f76-4fc9-b280-7dac6682637b'"]),
    ("date", ["'2000-01-01'", "'1999-12-31'", "'0001-01-01'", "'9999-12-31'", "'infinity'",
              "'-infinity'", "'1970-01-01'", "'2400-02-29'", "'1582-10-10'",
              "'0001-01-01 BC'", "'10000-01-01'"]),
    ("time", ["'00:00'", "'23:59:59.999999'", "'12:34:56.5'", "'24:00:00'"]),
    ("timetz", ["'00:00+00'", "'12:34:56.789+05:30'", "'23:59:59.999999-15:59'",
                "'01:02:03+14:59'", "'12:00:00+05:30:15'", "'12:00-00:00:30'"]),
    ("timestamp", ["'2000-01-01 00:00'", "'1999-12-31 23:59:59.999999'", "'0001-01-01 00:00'",
                   "'9999-12-31 23:59:59.999999'", "'infinity'", "'-infinity'",
                   "'1900-02-28 12:00:00.000001'", "'10000-01-01'", "'4713-01-01 BC'"]),
    ("timestamptz", ["'2000-01-01 00:00+00'", "'2020-06-01 12:00+05:45'", "'1850-01-01 00:00+00'",
                     "'0001-01-01 00:00+00'", "'9999-12-31 23:59:59.999999+00'", "'infinity'",
                     "'-infinity'", "'1969-12-31 23:59:59.999999-03:30'",
                     "'2038-01-19 03:14:08+00'"]),
    ("interval", ["'0'", "'1 year 2 mons 3 days 04:05:06.789'", "'-1 mon'", "'-14 mons'",
                  "'1 mon -1 day'", "'-1 sec'", "'-00:00:00.000001'", "'100 years'",
                  "'1 day -00:00:01'", "'-1 days +23:59:59'", "'-13 mons -1 day'",
                  "'23 mons'", "'1000 hours'", "'2000000 years'", "'-2000000 years'",
                  "'2147483647 days'", "'-2147483648 days'"]),
    ("json", ["'{\"a\" : [1, 2.5, null]}'", "'\"☃\"'", "'null'"]),
    ("jsonb", ["'{\"a\" : [1, 2.5, null], \"b\": \"é\"}'", "'\"☃\"'", "'null'", "'[]'"]),
    ("xml", ["'<a>é</a>'"]),
    ("oid", ["0", "4294967295"]),
    ("xid", ["'0'", "'4294967295'"]),
    ("cid", ["'7'"]),
    ("xid8", ["'0'", "'18446744073709551615'"]),
    ("inet", ["'10.0.0.1'", "'10.0.0.0/8'", "'10.1.2.3/8'", "'::1'", "'::1/128'",
              "'2001:db8::/32'", "'2001:db8::1/64'", "'0.0.0.0/0'", "'255.255.255.255/32'"]),
    ("cidr", ["'10.0.0.0/8'", "'2001:db8::/32'", "'192.168.1.1/32'", "'::/0'"]),
    ("jsonpath", ["'$.a[*] ? (@ > 1)'"]),
]

ARRAYS: list[tuple[str, list[str]]] = [
    ("int4[]", ["'{}'", "'{1,2,3}'", "'{{1,2},{3,NULL}}'", "'[2:3]={1,2}'", "'{{{1}},{{2}}}'",
                "'{NULL}'", "'[0:1][5:5]={{1},{2}}'"]),
    ("int2[]", ["'{-32768,32767}'"]),
    ("int8[]", ["'{{1,2,3},{4,5,6}}'"]),
    ("text[]", [r"""'{"a,b","c\"d","NULL",NULL,"","é"," sp ","{x}","back\\slash",nul\l}'""",
                "'{{a,b},{c,d}}'", "'{}'", "ARRAY[E'x\\ty', '']"]),
    ("varchar[]", ["'{a,NULL}'"]),
    ("name[]", ["'{pg_class,\"A b\"}'"]),
    ("bpchar(2)[]", ["'{a,bc}'"]),
    ("numeric[]", ["'{1.50,NaN,-Infinity,NULL,1e30}'"]),
    ("float8[]", ["'{NaN,Infinity,-0,1.5}'"]),
    ("float4[]", ["'{1.1,-Infinity}'"]),
    ("bool[]", ["'{t,f,NULL}'"]),
    ("date[]", ["'{infinity,2000-01-01,-infinity,NULL}'"]),
    ("timestamp[]", ["'{\"2000-01-01 00:00\",infinity}'"]),
    ("timestamptz[]", ["'{\"2000-01-01 00:00+03\",\"1850-01-01 00:00+00\",-infinity}'"]),
    ("time[]", ["'{12:00,NULL}'"]),
    ("timetz[]", ["'{12:00+02}'"]),
    ("interval[]", ["'{\"1 day\",\"-1 mon\",NULL}'"]),
    ("uuid[]", ["'{6771a417-0f76-4fc9-b280-7dac6682637b,NULL}'"]),
    ("bytea[]", [r"""'{"\\x00ff",NULL,"\\x"}'"""]),
    ("jsonb[]", ["ARRAY['{\"a\":1}'::jsonb, NULL, '[1, \"x,y\"]']"]),
    ("json[]", ["ARRAY['{\"a\" : 1}'::json]"]),
    ("inet[]", ["'{10.0.0.1/8,::1,NULL}'"]),
    ("cidr[]", ["'{10.0.0.0/8}'"]),
    ("oid[]", ["'{1,4294967295}'"]),
    ('"char"[]', ["'{a,b}'"]),
    ("xml[]", ["ARRAY['<a/>'::xml]"]),
]

TEXT_ONLY: list[tuple[str, list[str]]] = [
    ("regtype", ["'int4'", "'timestamp with time zone'"]),
    ("regclass", ["'pg_class'"]),
    ("regproc", ["'now'"]),
    ("money", ["'1.5'", "'-1000000.01'"]),
    ("macaddr", ["'08:00:2b:01:02:03'"]),
    ("regtype[]", ["'{int4,text}'"]),
    ("money[]", ["'{1.5,NULL}'"]),
    ("unknown", ["'abc'"]),
]


def same(a: Any, b: Any, *, strict_decimal: bool = True) -> bool:
    """Exact equality: same type (UUID subclasses aside), tz-awareness and Decimal exponent."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y, strict_decimal=strict_decimal)
                                        for x, y in zip(a, b))
    if isinstance(a, uuid.UUID) and isinstance(b, uuid.UUID):
        return str(a) == str(b)
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if isinstance(a, D):
        if a.is_nan() or b.is_nan():
            return a.is_nan() and b.is_nan()
        return str(a) == str(b) if strict_decimal else a == b
    if isinstance(a, (dt.datetime, dt.time)):
        return a == b and a.tzinfo == b.tzinfo if (a.tzinfo and b.tzinfo) else (
            a.tzinfo is None and b.tzinfo is None and a == b)
    return bool(a == b)


@pytest.fixture(scope="module")
async def apg(pg: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg.dsn(password=pg.SUPERUSER_PASSWORD))
    # a timezone with a fractional historical offset (LMT +05:41:16) for text output
    await conn.execute("SET TimeZone = 'Asia/Kathmandu'")
    try:
        yield conn
    finally:
        await conn.close()


async def _type_info(conn: asyncpg.Connection, sqltype: str) -> tuple[int, str]:
    row = await conn.fetchrow(
        f"SELECT t.oid::int, t.typsend::text FROM pg_type t WHERE t.oid = '{sqltype}'::regtype")
    return int(row[0]), str(row[1])


async def _reference(conn: asyncpg.Connection, expr: str) -> tuple[bool, Any]:
    try:
        return True, await conn.fetchval(f"SELECT {expr}")
    except (ValueError, OverflowError) as e:  # asyncpg's decoder failed
        return False, e


def _ids(table: list[tuple[str, list[str]]]) -> list[Any]:
    return [pytest.param(t, lit, id=f"{t}:{lit[:40]}") for t, lits in table for lit in lits]


@pytest.mark.parametrize("sqltype,literal", _ids(SCALARS) + _ids(ARRAYS))
async def test_binary_and_text_match_asyncpg(apg: asyncpg.Connection, sqltype: str, literal: str) -> None:
    oid, send = await _type_info(apg, sqltype)
    expr = f"({literal})::{sqltype}"
    ok, ref = await _reference(apg, expr)
    raw = await apg.fetchval(f"SELECT {send}({expr})")
    text = await apg.fetchval(f"SELECT format('%s', {expr})")  # the type's output function
    assert codecs.result_format_for(oid) == 1
    dec_b = codecs.decoder_for(oid, 1)
    dec_t = codecs.decoder_for(oid, 0)
    if not ok:
        with pytest.raises((ValueError, OverflowError)):
            dec_b(raw)
        with pytest.raises((ValueError, OverflowError)):
            dec_t(text.encode())
        return
    got = dec_b(raw)
    assert same(got, ref), (got, ref)
    assert same(dec_b(memoryview(raw)), ref)
    got_t = dec_t(text.encode())
    if sqltype.startswith("float4"):  # text carries the shortest repr, binary the float32 value
        def f32(x: Any) -> Any:
            return [f32(y) for y in x] if isinstance(x, list) else (
                x if x is None else struct.unpack("!f", struct.pack("!f", x))[0])
        got_t = f32(got_t)
    assert same(got_t, ref, strict_decimal=False), (text, got_t, ref)
    # encoder: our bytes == what the server sends back for asyncpg's encoding of the value
    fmt, enc = codecs.encoder_for(oid)
    assert fmt == 1
    expected = await apg.fetchval(f"SELECT {send}($1::{sqltype})", ref)
    assert enc(ref) == expected, (ref, enc(ref), expected)


@pytest.mark.parametrize("sqltype,literal", _ids(TEXT_ONLY))
async def test_text_only_types(apg: asyncpg.Connection, sqltype: str, literal: str) -> None:
    oid, _ = await _type_info(apg, sqltype)
    expr = f"({literal})::{sqltype}"
    ref = await apg.fetchval(f"SELECT {expr}")
    text = await apg.fetchval(f"SELECT format('%s', {expr})")  # the type's output function
    assert codecs.result_format_for(oid) == 0
    got = codecs.decoder_for(oid, 0)(text.encode())
    assert same(got, ref), (got, ref)


async def test_oid_constants_match_pg_type(apg: asyncpg.Connection) -> None:
    rows = await apg.fetch("SELECT oid::int, typname, typarray::int FROM pg_type WHERE oid < 10000")
    by_name = {r["typname"]: (r["oid"], r["typarray"]) for r in rows}
    checked = 0
    for attr in dir(oids):
        if not attr.isupper() or attr in ("ARRAY_ELEMENT", "ELEMENT_ARRAY"):
            continue
        value = getattr(oids, attr)
        if attr.endswith("_ARRAY"):
            name = attr[:-6].lower()
            assert by_name[name][1] == value, attr
        else:
            name = "char" if attr == "CHAR" else attr.lower()
            assert by_name[name][0] == value, attr
        checked += 1
    assert checked > 100
    assert oids.INT4 == 23 and oids.INT4_ARRAY == 1007
    for arr, el in oids.ARRAY_ELEMENT.items():
        assert await apg.fetchval("SELECT typelem::int FROM pg_type WHERE oid = $1", arr) == el


# --------------------------------------------------------------------------
# encoders: Python values (not only values asyncpg returns) vs asyncpg's encoding
# --------------------------------------------------------------------------

TZ5 = dt.timezone(dt.timedelta(hours=5))
TZM = dt.timezone(dt.timedelta(hours=-3, minutes=-30))
ENCODE_CASES: list[tuple[str, Any]] = [
    ("int4", True), ("int4", 1.9), ("int4", D("7.5")), ("int8", -(2**63)), ("int2", -1),
    ("float8", 1), ("float8", D("1.25")), ("float4", 2**100), ("float8", float("-inf")),
    ("numeric", 1), ("numeric", 1.5), ("numeric", 0.1), ("numeric", "1.50"), ("numeric", 10**40),
    ("numeric", D("1E+5")), ("numeric", D("-0")), ("numeric", D("0E-5")), ("numeric", D("sNaN")),
    ("numeric", D("-NaN")), ("numeric", D("1.000E+7")), ("numeric", D("-123.456E-10")),
    ("numeric", D("9" * 200 + "." + "1" * 300)), ("numeric", -(10**4000)), ("numeric", D("-1E+131071")),
    ("bytea", bytearray(b"\x00\x01")), ("bytea", memoryview(b"xyz")), ("bytea", b""),
    ("uuid", "6771a417-0f76-4fc9-b280-7dac6682637b"), ("uuid", "6771A4170F764FC9B2807DAC6682637B"),
    ("date", dt.datetime(2020, 1, 2, 3, 4)), ("date", dt.date.max), ("date", dt.date(1, 1, 2)),
    ("timestamp", dt.date(2020, 1, 1)), ("timestamp", dt.datetime.max), ("timestamp", dt.datetime.min),
    ("timestamp", dt.datetime(1800, 5, 6, 7, 8, 9, 10)),
    ("timestamptz", dt.datetime(2020, 1, 1, tzinfo=TZ5)), ("timestamptz", dt.datetime.max),
    ("timestamptz", dt.datetime.min), ("timestamptz", dt.datetime.max.replace(tzinfo=dt.timezone.utc)),
    ("timestamptz", dt.datetime(1901, 1, 1, 0, 0, 0, 1, tzinfo=TZM)),
    ("time", dt.time(1, 2, 3, tzinfo=dt.timezone.utc)), ("time", dt.time(23, 59, 59, 999999)),
    ("timetz", dt.time(1, 2, 3, tzinfo=TZM)), ("timetz", dt.time(0, 0, tzinfo=dt.timezone.utc)),
    ("interval", dt.timedelta(days=-1, seconds=5)), ("interval", dt.timedelta(microseconds=-1)),
    ("interval", dt.timedelta(days=999999999)), ("interval", dt.timedelta(0)),
    ("jsonb", '{"a": 1}'), ("json", '{"a" :1}'), ("text", "é\x01"), ("name", "x" * 63),
    ("inet", "10.0.0.1/8"), ("inet", ipaddress.ip_network("10.0.0.0/8")), ("inet", "::1"),
    ("inet", ipaddress.ip_address("1.2.3.4")), ("inet", ipaddress.ip_interface("2001:db8::1/64")),
    ("cidr", "10.0.0.0/8"), ("cidr", ipaddress.ip_interface("10.0.0.0/8")),
    ("cidr", ipaddress.ip_network("::/0")),
    ("oid", 2**32 - 1), ('"char"', b"a"),
    ("int4[]", (1, 2)), ("int4[]", [[]]), ("int4[]", [[1], [None]]), ("text[]", ["a", None, ""]),
    ("int8[]", [[[1, 2]], [[3, 4]]]), ("numeric[]", [D("1.5"), 2, None]),
    ("timestamptz[]", [dt.datetime(2020, 1, 1, tzinfo=TZ5)]), ("uuid[]", [uuid.UUID(int=5)]),
    ("bool[]", [True, False, None]), ("float8[]", [1, 2.5]), ("date[]", [dt.date(2000, 1, 1)]),
    ("bytea[]", [b"x", bytearray(b"y")]), ("jsonb[]", ['{"a": 1}']),
    ("inet[]", ["10.0.0.1", ipaddress.ip_interface("10.0.0.1/8")]),
]

ENCODE_ERRORS: list[tuple[str, Any]] = [
    ("int4", "1"), ("int4", 2**31), ("int2", 40000), ("int8", 2**63), ("int4", None.__class__),
    ("float8", "1.5"), ("float4", 1e300), ("bool", 1), ("bool", "t"), ("text", 1), ("text", b"x"),
    ("varchar", 1), ("bytea", "x"), ("uuid", 5), ("uuid", "not-a-uuid"), ("date", "2020-01-01"),
    ("timestamp", dt.datetime(2020, 1, 1, tzinfo=TZ5)), ("timestamp", "2020-01-01"),
    ("timetz", dt.time(1, 2, 3)), ("time", "01:02"), ("interval", 5), ("json", {"a": 1}),
    ("jsonb", 1), ("cidr", "10.0.0.1/8"), ("inet", "nonsense"), ("oid", -1), ("oid", 2**32),
    ("numeric", "abc"), ("numeric", [1]), ("numeric", D("1E-20000")),
    ("int4[]", [[1, 2], [3]]), ("int4[]", "abc"), ("int4[]", 5), ("text[]", "ab"),
    ("int4[]", [1, "x"]), ("int4[]", [[1], 2]), ("int4[]", [[[[[[[1]]]]]]]),
]


def _eid(cases: list[tuple[str, Any]]) -> list[Any]:
    return [pytest.param(t, v, id=f"{t}:{type(v).__name__}:{repr(v)[:30]}") for t, v in cases]


@pytest.mark.parametrize("sqltype,value", _eid(ENCODE_CASES))
async def test_encoder_matches_asyncpg(apg: asyncpg.Connection, sqltype: str, value: Any) -> None:
    oid, send = await _type_info(apg, sqltype)
    expected = await apg.fetchval(f"SELECT {send}($1::{sqltype})", value)
    formats, values = codecs.encode_params([oid], [value])
    assert formats == [1]
    assert values == [expected]


@pytest.mark.parametrize("sqltype,value", _eid(ENCODE_ERRORS))
async def test_encoder_errors_like_asyncpg(apg: asyncpg.Connection, sqltype: str, value: Any) -> None:
    oid, _ = await _type_info(apg, sqltype)
    with pytest.raises((asyncpg.DataError, asyncpg.InterfaceError)):
        await apg.fetchval(f"SELECT $1::{sqltype}", value)
    with pytest.raises(EncodeError) as ei:
        codecs.encode_params([oids.INT4, oid], [1, value])
    msg = str(ei.value)
    assert msg.startswith("invalid input for query argument $2: "), msg
    assert ei.value.position == 2 and ei.value.value is value
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("tz", ["UTC", "America/St_Johns", "Asia/Kathmandu"])
async def test_naive_datetime_for_timestamptz_is_local_time(
        apg: asyncpg.Connection, tz: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        for v in (dt.datetime(2020, 7, 1, 12, 0), dt.date(2021, 1, 1), dt.datetime(1900, 1, 1)):
            expected = await apg.fetchval("SELECT timestamptz_send($1::timestamptz)", v)
            assert codecs.encode_params([oids.TIMESTAMPTZ], [v])[1] == [expected], v
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert os.environ.get("TZ") is None


def test_encoder_messages_name_expected_type() -> None:
    cases = [(oids.INT4, "x", "integer"), (oids.BOOL, 1, "boolean"), (oids.TEXT, 1, "str"),
             (oids.BYTEA, "x", "bytes"), (oids.UUID, 1, "UUID"), (oids.DATE, 1, "date"),
             (oids.TIMESTAMPTZ, 1, "datetime"), (oids.INTERVAL, 1, "timedelta"),
             (oids.NUMERIC, [], "Decimal"), (oids.FLOAT8, "x", "real number"),
             (oids.INT4_ARRAY, 1, "list")]
    for oid, value, word in cases:
        with pytest.raises(EncodeError) as ei:
            codecs.encode_params([oid], [value])
        assert word in str(ei.value), str(ei.value)
        assert str(ei.value).startswith("invalid input for query argument $1: ")


def test_encode_params_nulls_unknown_and_count() -> None:
    formats, values = codecs.encode_params([oids.INT4, 0, 99999, oids.TEXT, oids.REGTYPE],
                                           [None, 5, True, None, "int4"])
    assert formats == [1, 0, 0, 1, 0]
    assert values == [None, b"5", b"True", None, b"int4"]
    with pytest.raises(EncodeError, match="expects 2 arguments"):
        codecs.encode_params([oids.INT4, oids.INT4], [1])
    # unknown OIDs decode to str, and results are requested in text
    assert codecs.result_format_for(99999) == 0
    assert codecs.decoder_for(99999, 0)(b"\xc3\xa9") == "\u00e9"


async def test_interval_overflow_raises_instead_of_wrapping(apg: asyncpg.Connection) -> None:
    # Known, deliberate difference: asyncpg computes years*365 in int32 and silently
    # wraps (178000000 years -> 545490560 days); we raise OverflowError instead.
    raw = await apg.fetchval("SELECT interval_send('178000000 years'::interval)")
    with pytest.raises(OverflowError):
        codecs.decoder_for(oids.INTERVAL, 1)(raw)
