"""Micro-benchmarks (pytest-benchmark) of the protocol core's hot paths.

Run: ``python -m bench micro`` (writes rows to the results JSON) or directly
``pytest bench/test_micro.py --benchmark-columns=ops,mean``.

Cases, grouped so that pytest-benchmark compares like with like:

- ``framing``: split a backend byte stream of 1,000 DataRows (+ CommandComplete,
  ReadyForQuery) into messages. driver ``MessageReader.read`` (whole stream and
  1,460-byte TCP-sized chunks) and ``read_raw`` (the gateway's zero-copy path),
  against pg8000's own framing loop (``pg8000.core._read`` + ``ci_unpack``) over
  an in-memory socket file.
- ``datarow``: decode 1,000 DataRow bodies of six columns (int4, int8, text,
  float8, timestamptz, numeric). driver: binary format via
  ``codecs.build_row_decoder`` (what the driver asks the server for);
  pg8000: its real ``CoreConnection.handle_DATA_ROW`` on text-format bodies
  (what pg8000 asks the server for).
- ``encode``: build the frontend messages of one parameterised extended-query
  round trip (Parse/Bind/Describe/Execute/Sync) and the backend messages the
  gateway synthesises. pg8000 and asyncpg build messages inline in their I/O
  code (asyncpg in Cython), so there is no comparable standalone function:
  driver only.

asyncpg's framing and decoding live in compiled code with no Python entry
point; its end-to-end figures are in ``python -m bench driver``.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import sys
import types
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from driver.codecs import build_row_decoder, encoder_for, oids  # noqa: E402
from driver.protocol import messages as m  # noqa: E402
from driver.protocol.framing import MessageReader  # noqa: E402

N = 1_000
COLS = [oids.INT4, oids.INT8, oids.TEXT, oids.FLOAT8, oids.TIMESTAMPTZ, oids.NUMERIC]
BASE = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)


def _values(i: int) -> list[Any]:
    return [i, i * 1_000_000_007, f"row number {i}", i * 1.5, BASE + dt.timedelta(seconds=i),
            Decimal(i) * Decimal("1.25")]


def _binary_bodies() -> list[bytes]:
    encs = [encoder_for(o)[1] for o in COLS]
    out = []
    for i in range(N):
        parts = [struct.pack("!h", len(COLS))]
        for enc, v in zip(encs, _values(i)):
            b = enc(v)
            parts.append(struct.pack("!i", len(b)) + b)
        out.append(b"".join(parts))
    return out


def _text_bodies() -> list[bytes]:
    out = []
    for i in range(N):
        vals = _values(i)
        texts = [str(vals[0]), str(vals[1]), vals[2], repr(vals[3]),
                 vals[4].strftime("%Y-%m-%d %H:%M:%S+00"), str(vals[5])]
        parts = [struct.pack("!h", len(COLS))]
        for t in texts:
            b = t.encode()
            parts.append(struct.pack("!i", len(b)) + b)
        out.append(b"".join(parts))
    return out


BIN_BODIES = _binary_bodies()
TEXT_BODIES = _text_bodies()
STREAM = b"".join(b"D" + struct.pack("!i", len(b) + 4) + b for b in BIN_BODIES) + \
    m.command_complete(f"SELECT {N}") + m.ready_for_query("I")
CHUNKS = [STREAM[i:i + 1460] for i in range(0, len(STREAM), 1460)]


def _lib(benchmark: Any, name: str) -> None:
    benchmark.extra_info["library"] = name


# ------------------------------------------------------------------ framing
@pytest.mark.benchmark(group="framing: 1,000 DataRows")
def test_framing_driver_whole(benchmark: Any) -> None:
    _lib(benchmark, "driver")

    def run() -> int:
        r = MessageReader()
        r.feed(STREAM)
        return len(r.read())
    assert benchmark(run) == N + 2


@pytest.mark.benchmark(group="framing: 1,000 DataRows")
def test_framing_driver_chunks(benchmark: Any) -> None:
    _lib(benchmark, "driver")

    def run() -> int:
        r = MessageReader()
        n = 0
        for c in CHUNKS:
            r.feed(c)
            n += len(r.read())
        return n
    assert benchmark(run) == N + 2


@pytest.mark.benchmark(group="framing: 1,000 DataRows")
def test_framing_driver_read_raw_chunks(benchmark: Any) -> None:
    _lib(benchmark, "driver")

    def run() -> int:
        r = MessageReader()
        n = 0
        for c in CHUNKS:
            r.feed(c)
            n += len(r.read_raw()[1])
        return n
    assert benchmark(run) == N + 2


@pytest.mark.benchmark(group="framing: 1,000 DataRows")
def test_framing_pg8000(benchmark: Any) -> None:
    core = pytest.importorskip("pg8000.core")
    _lib(benchmark, "pg8000")
    read, ci_unpack = core._read, core.ci_unpack

    def run() -> int:
        sock = io.BufferedReader(io.BytesIO(STREAM))  # type: ignore[arg-type]
        n = 0
        code = None
        while code != b"Z":
            code, length = ci_unpack(read(sock, 5))
            read(sock, length - 4)
            n += 1
        return n
    assert benchmark(run) == N + 2


# ------------------------------------------------------------------ DataRow
@pytest.mark.benchmark(group="datarow: 1,000 rows x 6 columns")
def test_datarow_driver_binary(benchmark: Any) -> None:
    _lib(benchmark, "driver")
    decode = build_row_decoder([(o, 1) for o in COLS])

    def run() -> list[Any]:
        return [decode(b) for b in BIN_BODIES]
    rows = benchmark(run)
    assert len(rows) == N and tuple(rows[7]) == tuple(_values(7))


@pytest.mark.benchmark(group="datarow: 1,000 rows x 6 columns")
def test_datarow_driver_split_only(benchmark: Any) -> None:
    """Only splitting the DataRow into column byte strings (no value decoding)."""
    _lib(benchmark, "driver")

    def run() -> list[Any]:
        return [m.decode_data_row(b) for b in BIN_BODIES]
    assert len(benchmark(run)) == N


@pytest.mark.benchmark(group="datarow: 1,000 rows x 6 columns")
def test_datarow_pg8000_text(benchmark: Any) -> None:
    core = pytest.importorskip("pg8000.core")
    conv = pytest.importorskip("pg8000.converters")
    _lib(benchmark, "pg8000")
    funcs = [conv.int_in, conv.int_in, conv.string_in, float, conv.timestamptz_in, conv.numeric_in]
    fake = types.SimpleNamespace(_client_encoding="utf8")
    handle = core.CoreConnection.handle_DATA_ROW

    def run() -> list[Any]:
        ctx = core.Context(None, columns=[], input_funcs=funcs)
        for b in TEXT_BODIES:
            handle(fake, b, ctx)
        return ctx.rows  # type: ignore[no-any-return]
    rows = benchmark(run)
    assert len(rows) == N and rows[7][:4] == _values(7)[:4]


# ----------------------------------------------------------------- encoding
@pytest.mark.benchmark(group="encode")
def test_encode_extended_round_trip(benchmark: Any) -> None:
    _lib(benchmark, "driver")
    enc4 = encoder_for(oids.INT4)[1]
    enctext = encoder_for(oids.TEXT)[1]

    def run() -> bytes:
        return b"".join((
            m.parse("", "SELECT * FROM t WHERE a = $1 AND b = $2", (oids.INT4, oids.TEXT)),
            m.bind("", "", (1, 1), (enc4(42), enctext("hello")), (1,)),
            m.describe("P", ""), m.execute("", 0), m.sync()))
    assert benchmark(run)


@pytest.mark.benchmark(group="encode")
def test_encode_simple_query(benchmark: Any) -> None:
    _lib(benchmark, "driver")
    assert benchmark(m.query, "SELECT val FROM items WHERE id = 42")


@pytest.mark.benchmark(group="encode")
def test_encode_backend_datarow_x100(benchmark: Any) -> None:
    _lib(benchmark, "driver")
    vals = [b"1", b"hello", None, b"2024-01-01"]

    def run() -> int:
        return sum(len(m.data_row(vals)) for _ in range(100))
    assert benchmark(run)


@pytest.mark.benchmark(group="encode")
def test_encode_gateway_handshake(benchmark: Any) -> None:
    """What the gateway sends a client after auth: AuthenticationOk, ParameterStatus x6, BackendKeyData, RFQ."""
    _lib(benchmark, "driver")
    params = {"client_encoding": "UTF8", "DateStyle": "ISO, MDY", "IntervalStyle": "postgres",
              "TimeZone": "UTC", "standard_conforming_strings": "on", "server_version": "15.0"}

    def run() -> bytes:
        return b"".join([m.authentication_ok(), *(m.parameter_status(k, v) for k, v in params.items()),
                         m.backend_key_data(1234, 5678), m.ready_for_query("I")])
    assert benchmark(run)


# ------------------------------------------------------- gateway hot path
def _gateway_session() -> tuple[Any, Any, list[bytes]]:
    """A transaction-mode Session linked to a fake server, writing to a fake
    client transport: one round trip = client chunk in, server reply in."""
    import asyncio

    from gateway.config import GatewaySettings
    from gateway.session import Session

    written: list[bytes] = []
    loop = asyncio.new_event_loop()
    from gateway.observe import PoolObs

    pool = types.SimpleNamespace(query_count=0, xact_count=0, xact_time=0.0, obs=PoolObs(), cl_waiting={},
                                 release=lambda s: None,
                                 reset_and_release=lambda *a: None, try_acquire=lambda: None)
    gw = types.SimpleNamespace(settings=GatewaySettings(), loop=loop, accepting=True)
    stream = types.SimpleNamespace(send_nowait=lambda d: written.append(d) or True,
                                   drain=lambda: None)
    sess = Session(gw, stream)  # type: ignore[arg-type]
    sess.pool = pool  # type: ignore[assignment]
    server = types.SimpleNamespace(reader=MessageReader(), write=written.append, params={}, sig=(),
                                   status=73, client=None, transport=None, statements=None, closed=False,
                                   owner=None, gucs={}, pending=[], pending_owner=None)
    if hasattr(sess, "track"):  # session state tracking on (transaction mode)
        from gateway.tracking import Tracker
        sess.track = Tracker()
    sess.params = {}
    sess.sig = ()
    pool.try_acquire = lambda: server
    return sess, server, written


@pytest.mark.benchmark(group="gateway: one transaction-mode round trip")
def test_gateway_round_trip_extended(benchmark: Any) -> None:
    """Parse/Bind/Describe/Execute/Sync in, ParseComplete..ReadyForQuery out:
    Session._from_client + on_server_data (framing, accounting, link, release)."""
    _lib(benchmark, "gateway")
    sess, server, written = _gateway_session()
    rd = __import__("driver.protocol.framing", fromlist=["FrontendReader"]).FrontendReader(startup=False)
    req = b"".join((m.parse("", "SELECT * FROM t WHERE a = $1", (oids.INT4,)),
                    m.bind("", "", (1,), (b"\x00\x00\x00\x2a",), (1,)), m.describe("P", ""),
                    m.execute("", 0), m.sync()))
    rep = b"".join((b"1\x00\x00\x00\x04", b"2\x00\x00\x00\x04", b"n\x00\x00\x00\x04",
                    m.command_complete("SELECT 0"), m.ready_for_query("I")))

    def run() -> int:
        rd.feed(req)
        chunk, idx = rd.read_raw()
        sess._from_client(chunk, idx)
        sess.on_server_data(server, rep)
        n = len(written)
        written.clear()
        return n
    assert benchmark(run) == 2 and sess.server is None


@pytest.mark.benchmark(group="gateway: one transaction-mode round trip")
def test_gateway_round_trip_simple(benchmark: Any) -> None:
    """Query in, RowDescription..ReadyForQuery out."""
    _lib(benchmark, "gateway")
    sess, server, written = _gateway_session()
    rd = __import__("driver.protocol.framing", fromlist=["FrontendReader"]).FrontendReader(startup=False)
    req = m.query("SELECT val FROM items WHERE id = 42")
    rep = m.command_complete("SELECT 0") + m.ready_for_query("I")

    def run() -> int:
        rd.feed(req)
        chunk, idx = rd.read_raw()
        sess._from_client(chunk, idx)
        sess.on_server_data(server, rep)
        n = len(written)
        written.clear()
        return n
    assert benchmark(run) == 2 and sess.server is None
