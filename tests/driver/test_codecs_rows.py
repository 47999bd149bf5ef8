"""build_row_decoder on DataRow bodies assembled from the server's own value bytes,
compared with asyncpg's fetchrow of the same expressions."""

from __future__ import annotations

import struct
from typing import Any, AsyncIterator

import asyncpg
import pytest

from driver import codecs
from driver.codecs import oids

from .test_codecs import same

COLUMNS = [
    ("int4", "42"), ("int4", "NULL"), ("int8", "-9223372036854775808"), ("int2", "-7"),
    ("text", "'héllo'"), ("text", "''"), ("float8", "'NaN'"), ("float8", "-1.5"),
    ("bool", "true"), ("bool", "false"), ("bool", "NULL"),
    ("timestamptz", "'2020-06-01 12:00+05:45'"), ("numeric", "'-123.4500'"),
    ("int4[]", "'{{1,NULL},{3,4}}'"), ("jsonb", "'{\"a\": 1}'"), ("uuid", "NULL"),
    ("date", "'infinity'"), ("interval", "'-1 mon 2 days'"), ("inet", "'10.1.2.3/8'"),
]


def _body(values: list[bytes | None]) -> bytes:
    parts = [struct.pack("!h", len(values))]
    for v in values:
        parts.append(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v)
    return b"".join(parts)


@pytest.fixture(scope="module")
async def apg(pg: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(pg.dsn(password=pg.SUPERUSER_PASSWORD))
    try:
        yield conn
    finally:
        await conn.close()


async def _column_bytes(conn: asyncpg.Connection, binary: bool) -> tuple[list[tuple[int, int]], list[bytes | None]]:
    cols: list[tuple[int, int]] = []
    raw: list[bytes | None] = []
    for sqltype, lit in COLUMNS:
        row = await conn.fetchrow(
            f"SELECT t.oid::int, t.typsend::text FROM pg_type t WHERE t.oid = '{sqltype}'::regtype")
        oid, send = row[0], row[1]
        expr = f"({lit})::{sqltype}"
        if binary:
            v = await conn.fetchval(f"SELECT {send}({expr})")
        else:
            s = await conn.fetchval(f"SELECT format('%s', {expr}) WHERE {expr} IS NOT NULL")
            v = None if s is None else s.encode()
        cols.append((oid, 1 if binary else 0))
        raw.append(v)
    return cols, raw


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "text"])
async def test_row_decoder_matches_asyncpg(apg: asyncpg.Connection, binary: bool) -> None:
    await apg.execute("SET TimeZone = 'America/St_Johns'")
    cols, raw = await _column_bytes(apg, binary)
    expected = await apg.fetchrow("SELECT " + ", ".join(f"({lit})::{t}" for t, lit in COLUMNS))
    decode = codecs.build_row_decoder(cols)
    got = decode(_body(raw))
    assert isinstance(got, tuple) and len(got) == len(COLUMNS)
    for i, (g, e) in enumerate(zip(got, expected)):
        assert same(g, e, strict_decimal=binary), (COLUMNS[i], g, e)
    # decoders are cached per column layout, and work on every row of that layout
    assert codecs.build_row_decoder(cols) is decode
    all_null = decode(_body([None] * len(cols)))
    assert all_null == (None,) * len(cols)


def test_row_decoder_edge_layouts() -> None:
    assert codecs.build_row_decoder([])(b"\x00\x00") == ()
    dec = codecs.build_row_decoder([(oids.TEXT, 1), (99999, 0), (99999, 1), (oids.INT4, 0)])
    body = _body([b"a\x00b", "é".encode(), b"\x01\x02", b"-17"])
    assert dec(body) == ("a\x00b", "é", b"\x01\x02", -17)
    # a body with trailing bytes from the next message is not consulted past the last column
    dec2 = codecs.build_row_decoder([(oids.INT8, 1)])
    assert dec2(_body([struct.pack("!q", 2**62)])) == (2**62,)


def test_custom_registry_enum_as_text() -> None:
    reg = codecs.TypeRegistry()
    info = reg.register_text_type(70001, "mood", array_oid=70002)
    assert info.oid == 70001 and reg.result_format_for(70001) == 0
    assert reg.encoder_for(70001)[0] == 0
    assert reg.encode_params([70001, 70002], ["happy", ["sad", None, 'a "q"']]) == (
        [0, 0], [b"happy", b'{"sad",NULL,"a \\"q\\""}'])
    dec = reg.build_row_decoder([(70001, 0), (70002, 0)])
    assert dec(_body([b"ok", b'{x,NULL,"y z"}'])) == ("ok", ["x", None, "y z"])
    # the default registry is untouched
    assert codecs.result_format_for(70001) == 0 and 70001 not in codecs.DEFAULT_REGISTRY
    codecs.register_type(codecs.TypeInfo(oid=70003, name="t", decode_text=lambda b: "custom"),
                         registry=reg)
    assert reg.decoder_for(70003, 0)(b"x") == "custom"
