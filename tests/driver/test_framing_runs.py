"""``MessageReader.feed_read_runs``: runs of DataRows framed as one entry
(strided header check, :func:`skip_data_rows`), everything else as
``feed_read_raw`` frames it -- for any split, any mix of row lengths."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from driver.protocol import messages as m
from driver.protocol.framing import (
    COPY_DATA,
    DATA_ROW,
    MessageReader,
    MessageTooLarge,
    ProtocolError,
    skip_data_rows,
    split_data_rows,
)

from .test_framing import split

# rows drawn from few lengths make long equal-length runs (the strided path)
cells = st.one_of(st.none(), st.sampled_from([b"", b"x", b"abc", b"12345678"]), st.binary(max_size=40))
rows = st.builds(m.data_row, st.lists(cells, min_size=1, max_size=3))
row_runs = st.builds(lambda r, n: [r] * n, rows, st.integers(1, 120))
# COPY ... TO STDOUT: one CopyData per row
copy_rows = st.builds(m.copy_data, st.one_of(st.sampled_from([b"1\n", b"12\n", b"abc\tdef\n"]), st.binary(max_size=30)))
copy_runs = st.builds(lambda r, n: [r] * n, copy_rows, st.integers(1, 120))
others = st.one_of(
    st.builds(m.command_complete, st.sampled_from(["SELECT 1", "LISTEN", "CREATE TABLE"])),
    st.builds(m.ready_for_query, st.sampled_from("ITE")),
    st.builds(lambda c: m.error(c, "boom"), st.sampled_from(["42P01", "23505"])),
    st.just(m.PARSE_COMPLETE),
    st.builds(m.parameter_status, st.just("TimeZone"), st.just("UTC")),
)
stream_parts = st.lists(st.one_of(row_runs, rows.map(lambda r: [r]), copy_runs, copy_rows.map(lambda r: [r]),
                                  others.map(lambda o: [o])), max_size=25)


def _expand(chunk: bytes, index: list[tuple[int, int, int]]) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    prev = None
    for t, s, e in index:
        assert 5 <= s <= e <= len(chunk)
        if t in (DATA_ROW, COPY_DATA):
            assert prev != t, "two row entries in a row: the run was not collapsed"
            out += [(t, b) for b in split_data_rows(chunk, s, e)]
        else:
            out.append((t, chunk[s:e]))
        prev = t
    return out


@given(stream_parts, st.lists(st.integers(0, 20_000), max_size=20))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_runs_match_per_message_framing_for_any_split(parts: list[list[bytes]], cuts: list[int]) -> None:
    stream = b"".join(b"".join(p) for p in parts)
    expected_reader = MessageReader()
    expected_reader.feed(stream)
    expected = expected_reader.read()
    reader = MessageReader()
    got: list[tuple[int, bytes]] = []
    chunks = []
    for piece in split(stream, cuts):
        chunk, index = reader.feed_read_runs(piece)
        chunks.append(chunk)
        got += _expand(chunk, index)
    assert reader.buffered == 0
    assert b"".join(chunks) == stream
    assert got == expected


def test_long_equal_run_is_one_entry_and_zero_copy() -> None:
    row = m.data_row([b"1234", b"item-1234"])
    data = m.row_description([]) + row * 5000 + m.command_complete("SELECT 5000") + m.ready_for_query("I")
    chunk, index = MessageReader().feed_read_runs(data)
    assert chunk is data
    assert [t for t, _, _ in index] == [ord("T"), DATA_ROW, ord("C"), ord("Z")]
    assert len(split_data_rows(chunk, index[1][1], index[1][2])) == 5000


@pytest.mark.parametrize("where", [0, 3, 4, 31, 32, 33, 255, 256, 4999])
def test_one_different_row_inside_an_equal_run(where: int) -> None:
    # the strided check must stop exactly at the odd row, wherever it is
    rows = [m.data_row([b"%04d" % i]) for i in range(5000)]
    rows[where] = m.data_row([b"12345"])
    data = b"".join(rows) + m.ready_for_query("I")
    chunk, index = MessageReader().feed_read_runs(data)
    assert [t for t, _, _ in index] == [DATA_ROW, ord("Z")]
    assert split_data_rows(chunk, index[0][1], index[0][2]) == [r[5:] for r in rows]


def test_incomplete_row_at_the_end_stays_buffered() -> None:
    row = m.data_row([b"abcd"])
    data = row * 100
    reader = MessageReader()
    chunk, index = reader.feed_read_runs(data[:-3])
    assert chunk == row * 99 and index == [(DATA_ROW, 5, len(row) * 99)]
    chunk, index = reader.feed_read_runs(data[-3:] + m.ready_for_query("I"))
    assert chunk == row + m.ready_for_query("I")
    assert [t for t, _, _ in index] == [DATA_ROW, ord("Z")]


def test_bad_length_after_a_run_reports_the_rows_first() -> None:
    row = m.data_row([b"abcd"])
    reader = MessageReader(max_size=1000)
    chunk, index = reader.feed_read_runs(row * 50 + b"D\x00\x10\x00\x00" + b"x" * 10)
    assert index == [(DATA_ROW, 5, len(row) * 50)]
    with pytest.raises(MessageTooLarge):
        reader.feed_read_runs(b"")
    reader = MessageReader()
    with pytest.raises(ProtocolError):
        reader.feed_read_runs(row * 8 + b"D\x00\x00\x00\x02")  # a row claiming 2 bytes
        reader.feed_read_runs(b"")


def test_skip_data_rows_stops_at_other_types_and_bounds() -> None:
    row = m.data_row([b"ab"])
    buf = row * 40 + m.command_complete("SELECT 40")
    assert skip_data_rows(buf, 0, len(buf)) == len(row) * 40
    assert skip_data_rows(buf, 0, len(row) * 40 - 1) == len(row) * 39
    assert skip_data_rows(buf, len(row) * 40, len(buf)) == len(row) * 40


def test_copy_out_run_is_one_entry() -> None:
    """COPY ... TO STDOUT sends one CopyData per row: a proxy frames a run of them as one
    entry, so forwarding costs per chunk, not per row (gateway COPY OUT, its cancel latency)."""
    rows = [m.copy_data(f"{i}\n".encode()) for i in range(1, 5000)]
    data = b"".join(rows) + m.command_complete("COPY 4999")
    chunk, index = MessageReader().feed_read_runs(data)
    assert chunk is data
    assert [t for t, _, _ in index] == [COPY_DATA, 67]
    assert [b for b in split_data_rows(chunk, index[0][1], index[0][2])] == [r[5:] for r in rows]


def _drain_runs(reader: MessageReader, pieces: list[bytes]) -> tuple[list[tuple[int, bytes]], str | None]:
    got: list[tuple[int, bytes]] = []
    try:
        for piece in [*pieces, b"", b""]:  # (the empty feeds report a bad header left buffered)
            chunk, index = reader.feed_read_runs(piece)
            got += _expand(chunk, index)
    except ProtocolError as exc:
        return got, f"{type(exc).__name__}: {exc}"
    return got, None


@given(stream_parts, st.binary(max_size=40), st.lists(st.integers(0, 20_000), max_size=8))
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_runs_with_garbage_match_per_message_framing(parts: list[list[bytes]], junk: bytes, cuts: list[int]) -> None:
    """A bad or partial message anywhere (the fast loop hands over to the
    general one): the same messages, then the same error, as ``read()``."""
    stream = b"".join(b"".join(p) for p in parts) + junk
    ref = MessageReader(max_size=4096)
    ref.feed(stream)
    want: list[tuple[int, bytes]] = []
    want_err = None
    try:
        for _ in range(3):
            want += ref.read()
    except ProtocolError as exc:
        want_err = f"{type(exc).__name__}: {exc}"
    for pieces in (split(stream, cuts), [stream]):
        got, err = _drain_runs(MessageReader(max_size=4096), pieces)
        assert got == want
        assert err == want_err


# feed_read_runs frames the usual start (ParseComplete, BindComplete) and end
# (ReadyForQuery) of a reply without its loop: those bytes inside a DataRow, a
# partial ReadyForQuery or other messages around them frame as read() does.
usual = st.builds(
    lambda head, parts, row, tail: head + b"".join(b"".join(p) for p in parts) + row + tail,
    st.sampled_from([m.PARSE_COMPLETE + m.BIND_COMPLETE, m.BIND_COMPLETE, m.PARSE_COMPLETE, b""]),
    st.lists(st.one_of(row_runs, others.map(lambda o: [o])), max_size=4),
    st.one_of(st.just(b""), st.builds(lambda v: m.data_row([v + b"Z\x00\x00\x00\x05"]), st.binary(max_size=3))),
    st.sampled_from([m.ready_for_query("I"), m.ready_for_query("T")[:-1], b"", m.ready_for_query("E")]),
)


@given(usual, st.lists(st.integers(0, 2_000), max_size=4))
def test_usual_reply_shapes_match_per_message_framing(stream: bytes, cuts: list[int]) -> None:
    expected_reader = MessageReader()
    expected_reader.feed(stream)
    expected = expected_reader.read()
    for pieces in (split(stream, cuts), [stream]):
        reader = MessageReader()
        got: list[tuple[int, bytes]] = []
        for piece in pieces:
            chunk, index = reader.feed_read_runs(piece)
            got += _expand(chunk, index)
        assert got == expected


def test_usual_reply_is_framed_whole() -> None:
    data = m.PARSE_COMPLETE + m.BIND_COMPLETE + m.row_description([]) + m.data_row([b"1"]) + \
        m.command_complete("SELECT 1") + m.ready_for_query("I")
    chunk, index = MessageReader().feed_read_runs(data)
    assert chunk is data and [chr(t) for t, _, _ in index] == list("12TDCZ")
    assert [data[s:e] for t, s, e in index if t in (49, 50, 90)] == [b"", b"", b"I"]
