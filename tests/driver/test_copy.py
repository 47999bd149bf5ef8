"""The COPY API (driver/copy.py) against a real server, side by side with asyncpg."""

from __future__ import annotations

import datetime
import decimal
import io
import uuid
from pathlib import Path
from typing import Any, AsyncIterator

import asyncpg
import pytest

import driver
from driver import copy as drv_copy
from driver import exceptions as exc

N = 100_000
COLS = ("id int, name text, score float8, at timestamptz, amount numeric, blob bytea, "
        "ok bool, u uuid, tags int[], maybe text")
T0 = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)


def records(n: int = N) -> list[tuple[Any, ...]]:
    return [(i, f"name {i} \t'\"\\", i / 7, T0 + datetime.timedelta(seconds=i),
             decimal.Decimal(i) / 100, bytes([i % 256, 0, 255]), i % 2 == 0,
             uuid.UUID(int=i), [i, None, -i], None if i % 3 else "x") for i in range(n)]


async def digest(c: Any, table: str) -> str:
    """One value for the whole table's content (any client)."""
    return str(await c.fetchval(
        f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"))


@pytest.fixture
async def apg(admin_dsn: str) -> AsyncIterator[Any]:
    c = await asyncpg.connect(admin_dsn)
    try:
        yield c
    finally:
        await c.close()


async def test_copy_records_100k_matches_asyncpg(conn: driver.Connection, apg: Any) -> None:
    await conn.execute(f"CREATE TABLE mine ({COLS}); CREATE TABLE theirs ({COLS})")
    recs = records()
    assert await conn.copy_records_to_table("mine", records=recs) == f"COPY {N}"
    assert await apg.copy_records_to_table("theirs", records=recs) == f"COPY {N}"
    assert await conn.fetchval("SELECT count(*) FROM mine") == N
    assert await digest(conn, "mine") == await digest(apg, "theirs")
    # and what comes back decodes to what went in
    assert [tuple(r) for r in await conn.fetch("SELECT * FROM mine WHERE id < 5 ORDER BY id")] \
        == recs[:5]


async def test_copy_out_100k_matches_asyncpg(conn: driver.Connection, apg: Any,
                                             tmp_path: Path) -> None:
    await conn.execute(f"CREATE TABLE src ({COLS})")
    await apg.copy_records_to_table("src", records=records())
    for opts in ({}, {"format": "csv", "header": True}, {"format": "binary"}):
        theirs = io.BytesIO()
        assert await apg.copy_from_table("src", output=theirs, **opts) == f"COPY {N}"
        mine = io.BytesIO()
        assert await conn.copy_from_table("src", output=mine, **opts) == f"COPY {N}"
        assert mine.getvalue() == theirs.getvalue(), opts
    # to a path, and to a coroutine function
    path = tmp_path / "out.tsv"
    assert await conn.copy_from_table("src", output=path, columns=["id", "name"]) == f"COPY {N}"
    chunks: list[bytes] = []

    async def sink(data: bytes) -> None:
        chunks.append(data)

    assert await conn.copy_from_table("src", output=sink, columns=["id", "name"]) == f"COPY {N}"
    theirs = io.BytesIO()
    await apg.copy_from_table("src", output=theirs, columns=["id", "name"])
    assert path.read_bytes() == b"".join(chunks) == theirs.getvalue()
    assert len(chunks) > 1  # streamed, not one buffer at the end


async def test_copy_from_query_with_args_matches_asyncpg(conn: driver.Connection,
                                                         apg: Any) -> None:
    q = "SELECT g, $1::text || g, $2::int[] FROM generate_series(1, $3::int) g"
    args = ("it's", [1, None], 1000)
    theirs = io.BytesIO()
    await apg.copy_from_query(q, *args, output=theirs, format="csv")
    mine = io.BytesIO()
    assert await conn.copy_from_query(q, *args, output=mine, format="csv") == "COPY 1000"
    assert mine.getvalue() == theirs.getvalue()
    mine = io.BytesIO()
    await conn.copy_from_query("SELECT $1::text", None, output=mine)
    assert mine.getvalue() == b"\\N\n"


async def test_copy_to_table_sources_match_asyncpg(conn: driver.Connection, apg: Any,
                                                   tmp_path: Path) -> None:
    await conn.execute(f"CREATE TABLE src ({COLS})")
    await apg.copy_records_to_table("src", records=records())
    data = io.BytesIO()
    await apg.copy_from_table("src", output=data, format="csv")
    raw = data.getvalue()
    path = tmp_path / "in.csv"
    path.write_bytes(raw)

    async def agen() -> AsyncIterator[bytes]:
        for i in range(0, len(raw), 100_000):
            yield raw[i:i + 100_000]

    sources: list[Any] = [path, str(path), io.BytesIO(raw), agen(), bytearray(raw),
                          memoryview(raw)]
    expected = await digest(apg, "src")
    for i, source in enumerate(sources):
        await conn.execute(f"CREATE TABLE dst{i} ({COLS})")
        assert await conn.copy_to_table(f"dst{i}", source=source, format="csv") == f"COPY {N}"
        assert await digest(conn, f"dst{i}") == expected, source


async def test_columns_where_schema_and_async_records(conn: driver.Connection,
                                                      apg: Any) -> None:
    await conn.execute("CREATE SCHEMA s; CREATE TABLE s.\"T t\" (a int, b text DEFAULT 'd', "
                       "c int); CREATE TABLE s.\"U\" (a int, b text DEFAULT 'd', c int)")

    async def gen() -> AsyncIterator[tuple[int, int]]:
        for i in range(1000):
            yield (i, -i)

    kw: dict[str, Any] = {"columns": ["a", "c"], "schema_name": "s", "where": "a % 2 = 0"}
    assert await conn.copy_records_to_table("T t", records=gen(), **kw) == "COPY 500"
    assert await apg.copy_records_to_table("U", records=gen(), **kw) == "COPY 500"
    assert await digest(conn, 's."T t"') == await digest(apg, 's."U"')
    assert await conn.fetchval("SELECT count(*) FROM s.\"T t\" WHERE b = 'd'") == 500
    assert await conn.copy_to_table("T t", source=b"1\t2\n3\t4\n" if False else
                                    bytearray(b"1,2\n3,4\n"), columns=["a", "c"],
                                    schema_name="s", format="csv", where="a > 1") == "COPY 1"


async def test_enum_and_domain_columns(conn: driver.Connection) -> None:
    await conn.execute("CREATE TYPE mood AS ENUM ('sad', 'ok'); CREATE DOMAIN posint AS int "
                       "CHECK (VALUE > 0); CREATE TABLE e (m mood, p posint)")
    assert await conn.copy_records_to_table("e", records=[("ok", 1), ("sad", 2)]) == "COPY 2"
    assert await conn.fetch("SELECT m::text, p FROM e ORDER BY p") == [("ok", 1), ("sad", 2)]
    with pytest.raises(exc.CheckViolationError):
        await conn.copy_records_to_table("e", records=[("ok", -1)])


async def test_errors_leave_the_connection_usable(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE t (a int, b text)")
    with pytest.raises(exc.UndefinedTableError):
        await conn.copy_records_to_table("nosuch", records=[(1, "x")])
    with pytest.raises(exc.UndefinedTableError):
        await conn.copy_from_table("nosuch", output=io.BytesIO())
    with pytest.raises(exc.InvalidTextRepresentationError):
        await conn.copy_to_table("t", source=bytearray(b"1\tx\nbad\ty\n"))
    with pytest.raises(exc.DataError, match=r"argument \$1 in element #1"):
        await conn.copy_records_to_table("t", records=[(1, "a"), ("x", "y")])
    with pytest.raises(exc.InterfaceError, match="record #0"):
        await conn.copy_records_to_table("t", records=[(1,)])

    async def failing() -> AsyncIterator[bytes]:
        yield b"1\tx\n"
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom"):  # as asyncpg: the source's error
        await conn.copy_to_table("t", source=failing())

    async def bad_writer(data: bytes) -> None:
        raise KeyError("w")

    with pytest.raises(KeyError):
        await conn.copy_from_query("SELECT generate_series(1, 300000)", output=bad_writer)
    assert await conn.fetchval("SELECT count(*) FROM t") == 0
    assert not conn.is_in_transaction()
    assert await conn.fetchval("SELECT 1") == 1


async def test_copy_inside_a_transaction(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE t (a int)")
    async with conn.transaction():
        await conn.copy_records_to_table("t", records=[(1,), (2,)])
        assert await conn.fetchval("SELECT count(*) FROM t") == 2
        with pytest.raises(exc.InvalidTextRepresentationError):
            await conn.copy_to_table("t", source=bytearray(b"x\n"))
        assert conn._protocol.transaction_status == "E"
    # failed transaction rolled back by the context manager
    assert await conn.fetchval("SELECT count(*) FROM t") == 0


async def test_copy_out_memory_is_bounded(conn: driver.Connection,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A slow output stops the reader: what waits for it stays near the high-water mark."""
    monkeypatch.setattr(drv_copy, "_HIGH_WATER", 64 * 1024)
    sizes: list[int] = []
    total = 0

    async def slow(data: bytes) -> None:
        nonlocal total
        total += len(data)
        sink = conn._copy_sink
        sizes.append(sink.size if sink is not None else 0)
        await __import__("asyncio").sleep(0.001)

    q = "SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g"
    assert await conn.copy_from_query(q, output=slow) == "COPY 100000"
    assert total > 10_000_000
    # one read (256 KiB) can land on top of a full buffer, never more
    assert max(sizes) <= 64 * 1024 + 2 * 256 * 1024
    assert await conn.fetchval("SELECT 1") == 1


async def test_timeout_cancels_the_copy(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE t (a int)")

    async def slow() -> AsyncIterator[bytes]:
        yield b"1\n"
        await __import__("asyncio").sleep(5)
        yield b"2\n"

    with pytest.raises(TimeoutError):
        await conn.copy_to_table("t", source=slow(), timeout=0.5)
    assert await conn.fetchval("SELECT count(*) FROM t") == 0


class _Int(int):
    pass


_EDGE_COLS = "a int2, b int4, c int8, d float8, e text, f timestamptz, g numeric"
_UTC = datetime.timezone.utc
_PLUS = datetime.timezone(datetime.timedelta(hours=5, minutes=30))
#: values on both sides of the row encoder's inlined fast paths (exact int in range,
#: float, str, UTC-aware datetime) and of the numeric encoder's (no exponent in str())
EDGE_RECORDS: list[tuple[Any, ...]] = [
    (-32768, -2**31, -2**63, 0.0, "", datetime.datetime(1, 1, 1, tzinfo=_UTC),
     decimal.Decimal("-0.00")),
    (32767, 2**31 - 1, 2**63 - 1, float("inf"), "é\u20ac", datetime.datetime(9999, 12, 31, 23, 59,
     59, 999999, tzinfo=_UTC), decimal.Decimal("1E+10")),
    (True, _Int(7), False, float("-inf"), "x" * 70_000, datetime.datetime(2000, 1, 1, tzinfo=_PLUS),
     decimal.Decimal("-1.5E-7")),
    (None, None, None, None, None, None, None),
    (_Int(-1), 5, 2**40, 7, "a", datetime.datetime.max, decimal.Decimal("NaN")),
    (0, 0, 0, decimal.Decimal("2.5"), "b", datetime.datetime.min, decimal.Decimal("-Infinity")),
    (1, 1, 1, -0.0, "c", datetime.date(2020, 2, 29), decimal.Decimal("123456789012345678901.0001")),
    (2, 2, 2, 1e308, "d", datetime.datetime(2024, 6, 1, 12, tzinfo=_UTC),
     decimal.Decimal("0.000100")),
]


async def test_edge_values_match_asyncpg(conn: driver.Connection, apg: Any) -> None:
    await conn.execute(f"SET timezone = 'UTC'; CREATE TABLE mine ({_EDGE_COLS});"
                       f" CREATE TABLE theirs ({_EDGE_COLS})")
    await apg.execute("SET timezone = 'UTC'")
    assert await conn.copy_records_to_table("mine", records=EDGE_RECORDS) == "COPY 8"
    assert await apg.copy_records_to_table("theirs", records=EDGE_RECORDS) == "COPY 8"
    assert await digest(conn, "mine") == await digest(apg, "theirs")
    # out of range / wrong type: an error for that record, both sides, the connection goes on
    for bad in [(32768, 0, 0, 0.0, "", None, None), (0, 2**31, 0, 0.0, "", None, None),
                (0, 0, 2**63, 0.0, "", None, None), (0, 0, 0, "1.5", "", None, None),
                (0, 0, 0, 0.0, b"x", None, None), (0, 0, 0, 0.0, "", "2024-01-01", None)]:
        recs = EDGE_RECORDS[:2] + [bad]
        with pytest.raises((asyncpg.DataError, asyncpg.InterfaceError, OverflowError, TypeError,
                            ValueError)):
            await apg.copy_records_to_table("theirs", records=recs)
        with pytest.raises((exc.DataError, exc.InterfaceError)) as ei:
            await conn.copy_records_to_table("mine", records=recs)
        assert "#2" in str(ei.value), ei.value
    assert await conn.fetchval("SELECT count(*) FROM mine") == 8


def test_numeric_encoder_fast_path_is_byte_identical() -> None:
    """encode_numeric's str()-based path gives numeric_send's bytes, as the general path."""
    import random

    from driver.codecs import _binary

    rnd = random.Random(9)
    values = [decimal.Decimal(x) for x in (
        "0", "-0", "0.00", "-0.00", "0E+7", "1E-16383", "1E-16384", "1E+131071", "1E+131072",
        "9" * 200, "0.0001", "10000", "123.4500", "-.5", "99999999.99999999")]
    for _ in range(20_000):
        values.append(decimal.Decimal(rnd.randint(-10**15, 10**15)) / 10 ** rnd.randint(0, 15))
        values.append(decimal.Decimal(f"{rnd.choice('-+')}{rnd.randint(0, 10**rnd.randint(0, 40))}"
                                      f"E{rnd.randint(-60, 60)}"))

    def run(f: Any, v: decimal.Decimal) -> Any:
        try:
            return f(v)
        except Exception as e:
            return type(e)

    assert [v for v in values if run(_binary.encode_numeric, v)
            != run(_binary._encode_numeric, v)] == []


async def test_numeric_values_round_trip_like_asyncpg(conn: driver.Connection, apg: Any) -> None:
    vals = [decimal.Decimal(x) for x in ("0.00", "-0.001", "12345678.9000", "1E+20", "-7",
                                         "0.000000001", "31415926535897932384626433.832795")]
    sql = "SELECT $1::numeric::text"
    assert [await conn.fetchval(sql, v) for v in vals] == [await apg.fetchval(sql, v) for v in vals]
