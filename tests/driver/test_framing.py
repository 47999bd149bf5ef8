"""Framing: any split of a valid stream yields the same messages; garbage only
ever raises ProtocolError; lengths are bounded before anything is allocated."""

from __future__ import annotations

import tracemalloc

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from driver.protocol import messages as m
from driver.protocol.framing import (
    UNTYPED,
    FrontendReader,
    MessageReader,
    MessageTooLarge,
    ProtocolError,
)

# --- strategies --------------------------------------------------------------

names = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=20)
blobs = st.binary(max_size=300)
values = st.one_of(st.none(), blobs)

backend_msgs = st.one_of(
    st.builds(m.data_row, st.lists(values, max_size=8)),
    st.builds(m.command_complete, names),
    st.builds(m.parameter_status, names, names),
    st.builds(m.ready_for_query, st.sampled_from("ITE")),
    st.builds(m.backend_key_data, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1)),
    st.builds(lambda c, msg: m.error(c, msg), st.sampled_from(["42P01", "23505", "08P01"]), names),
    st.builds(
        m.row_description,
        st.lists(st.builds(m.FieldDescription, names, type_oid=st.integers(0, 2**32 - 1)), max_size=5),
    ),
    st.just(m.PARSE_COMPLETE),
    st.just(m.BIND_COMPLETE),
    st.just(m.NO_DATA),
    st.builds(m.copy_data, blobs),
    st.builds(m.parameter_description, st.lists(st.integers(0, 2**32 - 1), max_size=6)),
    st.builds(m.notification_response, st.integers(0, 2**31 - 1), names, names),
)

frontend_msgs = st.one_of(
    st.builds(m.query, names),
    st.builds(m.parse, names, names, st.lists(st.integers(0, 2**32 - 1), max_size=4)),
    st.builds(
        m.bind,
        names,
        names,
        st.lists(st.sampled_from([0, 1]), max_size=3),
        st.lists(values, max_size=4),
        st.lists(st.sampled_from([0, 1]), max_size=3),
    ),
    st.builds(m.describe, st.sampled_from("SP"), names),
    st.builds(m.execute, names, st.integers(0, 1000)),
    st.builds(m.close, st.sampled_from("SP"), names),
    st.just(m.SYNC),
    st.just(m.FLUSH),
    st.builds(m.password_message, names),
    st.builds(m.copy_data, blobs),
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, prev = [], 0
    for p in points + [len(data)]:
        pieces.append(data[prev:p])
        prev = p
    return pieces


# --- typed messages ------------------------------------------------------------


@given(st.lists(backend_msgs, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_backend_stream_any_split(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    reader = MessageReader()
    got = []
    for piece in split(stream, cuts):
        reader.feed(piece)
        got.extend(reader.read())
    assert reader.buffered == 0
    # Re-encoding each (type, body) gives back the exact stream, and each decodes.
    assert b"".join(bytes([t]) + (len(b) + 4).to_bytes(4, "big") + b for t, b in got) == stream
    assert len(got) == len(msgs)
    for t, b in got:
        m.decode_backend(t, b)


@given(st.lists(frontend_msgs, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_read_raw_chunks_cover_the_stream(msgs: list[bytes], cuts: list[int]) -> None:
    stream = m.startup_message({"user": "u", "database": "d"}) + b"".join(msgs)
    reader = FrontendReader()
    chunks, types = [], []
    for piece in split(stream, cuts):
        reader.feed(piece)
        while True:
            chunk, index = reader.read_raw()
            if not chunk:
                break
            chunks.append(chunk)
            for t, start, end in index:
                types.append(t)
                assert 0 <= start <= end <= len(chunk)
                m.decode_frontend(t, chunk[start:end])
    assert b"".join(chunks) == stream
    assert types[0] == UNTYPED
    assert types[1:] == [msg[0] for msg in msgs]


def test_one_byte_at_a_time() -> None:
    stream = m.ssl_request() + m.startup_message({"user": "alice"}) + m.query("select 1") + m.SYNC
    reader = FrontendReader()
    got = []
    for i in range(len(stream)):
        reader.feed(stream[i : i + 1])
        got.extend(reader.read())
    decoded = [m.decode_frontend(t, b) for t, b in got]
    assert decoded == [
        m.SSLRequest(),
        m.StartupMessage(196608, {"user": "alice"}),
        m.Query("select 1"),
        m.Sync(),
    ]


def test_cancel_request_ends_startup() -> None:
    reader = FrontendReader()
    reader.feed(m.cancel_request(42, -7))
    [(t, body)] = reader.read()
    assert m.decode_frontend(t, body) == m.CancelRequest(42, -7)
    assert not reader.in_startup


@given(st.binary(max_size=2000), st.lists(st.integers(0, 5000), max_size=10), st.booleans())
@settings(suppress_health_check=[HealthCheck.too_slow])
def test_garbage_only_raises_protocol_error(garbage: bytes, cuts: list[int], frontend: bool) -> None:
    reader: MessageReader = FrontendReader(max_size=1 << 16) if frontend else MessageReader(max_size=1 << 16)
    try:
        for piece in split(garbage, cuts):
            reader.feed(piece)
            for t, body in reader.read():
                try:
                    (m.decode_frontend if frontend else m.decode_backend)(t, body)
                except ProtocolError:
                    pass
    except ProtocolError:
        pass
    # Whatever happened, nothing beyond the input and one message limit is held.
    assert reader.buffered <= len(garbage)


@pytest.mark.parametrize("length", [-1, 0, 3, -(2**31)])
def test_short_or_negative_length(length: int) -> None:
    reader = MessageReader()
    reader.feed(b"D" + length.to_bytes(4, "big", signed=True) + b"xxxx")
    with pytest.raises(ProtocolError):
        reader.read()


def test_huge_length_rejected_before_allocation() -> None:
    reader = MessageReader(max_size=1 << 20)
    tracemalloc.start()
    try:
        reader.feed(b"D\x7f\xff\xff\xff" + b"x" * 100)
        with pytest.raises(MessageTooLarge) as info:
            reader.read()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.length == 0x7FFFFFFF
    assert info.value.sqlstate == "08P01"
    assert peak < 1 << 16


def test_huge_startup_rejected() -> None:
    reader = FrontendReader()
    reader.feed((1 << 30).to_bytes(4, "big") + (196608).to_bytes(4, "big"))
    with pytest.raises(MessageTooLarge):
        reader.read()


def test_good_messages_before_a_bad_length_are_delivered() -> None:
    reader = MessageReader(max_size=100)
    reader.feed(m.command_complete("SELECT 1") + b"D\x00\x10\x00\x00")
    [(t, body)] = reader.read()
    assert m.decode_backend(t, body) == m.CommandComplete("SELECT 1")
    with pytest.raises(MessageTooLarge):
        reader.read()


def test_startup_message_before_a_bad_length_is_delivered() -> None:
    # found by fuzzing (tests/fuzz, in-process "frontend"): read() used to drop
    # the StartupMessage it had consumed when a bad typed header followed it
    startup = m.startup_message({"user": "a"})
    for reader_input in (startup + b"Q\x00\xff\xff\xff", m.ssl_request() + b"\x00\x00\x00\x01\x00\x00\x00\x00"):
        reader = FrontendReader(max_size=100)
        reader.feed(reader_input)
        [(t, body)] = reader.read()
        assert t == UNTYPED and reader_input.startswith((len(body) + 4).to_bytes(4, "big") + body)
        with pytest.raises(ProtocolError):
            reader.read()


def test_large_stream_memory_is_bounded() -> None:
    """Feeding 10,000 messages in small pieces keeps the buffer small."""
    reader = MessageReader()
    row = m.data_row([b"x" * 50] * 4)
    peak = 0
    count = 0
    for _ in range(10_000):
        reader.feed(row[:7])
        reader.feed(row[7:])
        count += len(reader.read())
        peak = max(peak, reader.buffered)
    assert count == 10_000
    assert peak <= len(row)


def test_backend_encoders_round_trip() -> None:
    fields = [m.FieldDescription("a", 1, 2, 23, 4, -1, 1), m.FieldDescription("é", type_oid=25)]
    cases = {
        m.row_description(fields): m.RowDescription(tuple(fields)),
        m.data_row([b"1", None, b""]): m.DataRow((b"1", None, b"")),
        m.authentication_sasl(["SCRAM-SHA-256"]): m.AuthenticationRequest(10, b"SCRAM-SHA-256\x00\x00"),
        m.authentication_md5_password(b"abcd"): m.AuthenticationRequest(5, b"abcd"),
        m.negotiate_protocol_version(0, ["_pq_.x"]): m.NegotiateProtocolVersion(0, ("_pq_.x",)),
        m.copy_in_response(0, [0, 0]): m.CopyInResponse(0, (0, 0)),
        m.parameter_description([23, 25]): m.ParameterDescription((23, 25)),
        m.notification_response(7, "ch", "hi"): m.NotificationResponse(7, "ch", "hi"),
    }
    for encoded, expected in cases.items():
        reader = MessageReader()
        reader.feed(encoded)
        [(t, body)] = reader.read()
        assert m.decode_backend(t, body) == expected
    assert m.AuthenticationRequest(10, b"SCRAM-SHA-256\x00\x00").mechanisms == ["SCRAM-SHA-256"]


def test_error_fields_round_trip() -> None:
    reader = MessageReader()
    reader.feed(m.error("28P01", 'password authentication failed for user "x"', detail="d"))
    [(t, body)] = reader.read()
    err = m.decode_backend(t, body)
    assert isinstance(err, m.ErrorResponse)
    assert err.sqlstate == "28P01" and err.fields["D"] == "d" and err.severity == "ERROR"


def test_sasl_and_password_decoding() -> None:
    msg = m.sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert m.decode_sasl_initial_response(msg[5:]) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert m.decode_password(m.password_message("s3cret")[5:]) == "s3cret"
    with pytest.raises(ProtocolError):
        m.decode_password(b"no-terminator")
    with pytest.raises(ProtocolError):
        m.decode_sasl_initial_response(b"SCRAM-SHA-256\x00\x00\x00\x00\x09abc")


def test_malformed_bodies_raise_protocol_error() -> None:
    for t, body in [(ord("T"), b"\x00\x02a"), (ord("Z"), b""), (ord("D"), b"\x00\x01\x00\x00\x00\x09ab"), (ord("?"), b"")]:
        with pytest.raises(ProtocolError):
            m.decode_backend(t, body)
    for t, body in [(ord("B"), b"\x00\x00\x00\x05"), (ord("P"), b"n"), (0, b"\x00\x03\x00\x00user\x00")]:
        with pytest.raises(ProtocolError):
            m.decode_frontend(t, body)


def test_nul_in_sent_string_is_refused() -> None:
    with pytest.raises(ValueError):
        m.query("select 1\x00; drop table x")


# --- feed_read_raw: the zero-copy fast path ------------------------------------


def _drive_pair(pieces: list[bytes], reader_cls: type[MessageReader]) -> None:
    """feed_read_raw(piece) behaves exactly like feed(piece); read_raw() (same
    chunks, index, errors and leftover state), and returns ``piece`` itself
    when it is whole messages and nothing was buffered."""
    fast, slow = reader_cls(max_size=4096), reader_cls(max_size=4096)
    for piece in pieces:
        was_empty = fast.buffered == 0
        try:
            got: tuple[bytes, list[tuple[int, int, int]]] | Exception = fast.feed_read_raw(piece)
        except ProtocolError as exc:
            got = exc
        slow.feed(piece)
        try:
            want: tuple[bytes, list[tuple[int, int, int]]] | Exception = slow.read_raw()
        except ProtocolError as exc:
            want = exc
        if isinstance(want, Exception):
            assert type(got) is type(want) and str(got) == str(want)
            return  # the stream is dead after a ProtocolError
        assert got == want
        assert fast.buffered == slow.buffered
        chunk, _ = want
        if was_empty and chunk == piece and piece and reader_cls is MessageReader:
            assert got[0] is piece  # zero copy when whole
    # drain: both report the same thing afterwards
    try:
        rest_f: object = fast.read_raw()
    except ProtocolError as exc:
        rest_f = str(exc)
    try:
        rest_s: object = slow.read_raw()
    except ProtocolError as exc:
        rest_s = str(exc)
    assert rest_f == rest_s


@given(st.lists(backend_msgs, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_feed_read_raw_matches_feed_then_read_raw(msgs: list[bytes], cuts: list[int]) -> None:
    stream = b"".join(msgs)
    _drive_pair(split(stream, cuts), MessageReader)
    _drive_pair([stream], MessageReader)
    _drive_pair(msgs, MessageReader)


@given(st.lists(frontend_msgs, max_size=12), st.lists(st.integers(0, 10_000), max_size=20))
def test_feed_read_raw_frontend_with_startup(msgs: list[bytes], cuts: list[int]) -> None:
    stream = m.startup_message({"user": "u", "database": "d"}) + b"".join(msgs)
    _drive_pair(split(stream, cuts), FrontendReader)
    _drive_pair([m.startup_message({"user": "u"}), *msgs], FrontendReader)


@given(st.lists(backend_msgs, max_size=6), st.binary(max_size=40), st.lists(st.integers(0, 500), max_size=6))
def test_feed_read_raw_garbage_matches(msgs: list[bytes], junk: bytes, cuts: list[int]) -> None:
    stream = b"".join(msgs) + junk
    _drive_pair(split(stream, cuts), MessageReader)


def test_feed_read_raw_returns_the_same_object() -> None:
    reader = MessageReader()
    data = m.command_complete("SELECT 1") + m.ready_for_query("I")
    chunk, index = reader.feed_read_raw(data)
    assert chunk is data
    assert [t for t, _, _ in index] == [ord("C"), ord("Z")]
    # partial tail stays buffered, the whole prefix is returned
    chunk, index = reader.feed_read_raw(data + b"Z\x00\x00")
    assert chunk == data and reader.buffered == 3
    chunk, index = reader.feed_read_raw(b"\x00\x05I")
    assert chunk == m.ready_for_query("I") and reader.buffered == 0


def test_feed_read_raw_bad_length_after_good_messages() -> None:
    reader = MessageReader(max_size=100)
    good = m.ready_for_query("I")
    chunk, index = reader.feed_read_raw(good + b"D\x7f\xff\xff\xff")
    assert chunk == good and len(index) == 1
    with pytest.raises(MessageTooLarge):
        reader.read_raw()


# --- read_copy_data (COPY TO STDOUT bodies in bulk) ---------------------------------------


def _copy_stream(bodies: list[bytes]) -> bytes:
    return b"".join(m.copy_data(b) for b in bodies)


@pytest.mark.parametrize("seed", range(40))
def test_read_copy_data_any_split_equals_the_bodies(seed: int) -> None:
    """Runs of equal-size rows (the strided path), variable rows, empty bodies, and
    the message after the COPY, split anywhere: the bodies come out in order, once,
    and the next message is left for read()."""
    import random

    rnd = random.Random(seed)
    bodies: list[bytes] = []
    while len(bodies) < 400:
        size = rnd.choice([0, 1, 7, 50, 300])
        run = rnd.choice([1, 2, 5, 17, 40, 120])
        bodies += [bytes([rnd.randrange(256)]) * size if rnd.random() < 0.5
                   else bytes(rnd.randrange(256) for _ in range(size)) for _ in range(run)]
    stream = _copy_stream(bodies) + m.command_complete("COPY 1") + _copy_stream([b"after"])
    cuts = sorted(rnd.sample(range(1, len(stream)), rnd.randint(0, 30)))
    r = MessageReader()
    got = b""
    msgs: list[tuple[int, bytes]] = []
    prev = 0
    for cut in cuts + [len(stream)]:
        r.feed(stream[prev:cut])
        prev = cut
        if not msgs:  # the protocol stops bulk framing at the COPY's end
            got += r.read_copy_data()
        msgs += r.read()  # what read_copy_data left: the rest of the stream
    assert got + b"".join(b for t, b in msgs if t == ord("d"))[:-5] == b"".join(bodies)
    assert len(got) > len(b"".join(bodies)) // 2  # most went the bulk way
    assert [t for t, _ in msgs if t != ord("d")] == [ord("C")]
    assert msgs[-2:] == [(ord("C"), b"COPY 1\x00"), (ord("d"), b"after")]
    assert r.buffered == 0


def test_read_copy_data_stops_at_a_bad_length() -> None:
    r = MessageReader(max_size=100)
    r.feed(_copy_stream([b"a"] * 20) + b"d" + (1000).to_bytes(4, "big") + b"x")
    assert r.read_copy_data() == b"a" * 20
    assert r.read_copy_data() == b""
    with pytest.raises(MessageTooLarge):
        r.read()


# feed_read_raw frames the usual end of an extended-protocol chunk (Describe of the
# unnamed portal, Execute, Sync) without its loop once the loop reaches it exactly:
# the same bytes inside another message, a partial tail, a reader whose limit is
# below an Execute's length must all frame as feed() + read_raw() does.
_TAIL = m.describe("P", "") + m.execute() + m.SYNC
tails = st.sampled_from([_TAIL, _TAIL[7:], _TAIL[:-1], _TAIL[7:-3], b""])
tail_streams = st.builds(
    # the first k bytes of the tail inside a CopyData (k: 0, a message boundary, all of it), or none
    lambda msgs, inner, k, tail: b"".join(msgs) + (m.copy_data(inner + tail[:k]) + tail[k:] if inner is not None
                                                   else tail),
    st.lists(frontend_msgs, max_size=4),
    st.one_of(st.none(), st.none(), st.binary(max_size=6)),
    st.sampled_from([0, 7, 17, 22]),
    tails,
)


@given(tail_streams, st.lists(st.integers(0, 600), max_size=4), st.sampled_from([4096, 8, 9]))
@example(_TAIL, [], 8)  # the Execute is longer than the reader's limit
@example(m.copy_data(b"D\x00\x00\x00\x06P\x00") + _TAIL[7:], [], 4096)  # the tail's first message in another
def test_feed_read_raw_usual_tail_matches(stream: bytes, cuts: list[int], max_size: int) -> None:
    for pieces in (split(stream, cuts), [stream]):
        fast, slow = MessageReader(max_size=max_size), MessageReader(max_size=max_size)
        for piece in pieces:
            try:
                got: object = fast.feed_read_raw(piece)
            except ProtocolError as exc:
                got = str(exc)
            slow.feed(piece)
            try:
                want: object = slow.read_raw()
            except ProtocolError as exc:
                want = str(exc)
            assert got == want and fast.buffered == slow.buffered
            if isinstance(want, str):
                break


def test_usual_tail_is_framed_without_copying() -> None:
    data = m.parse("", "select $1", [23]) + m.bind("", "", [0], [b"1"], []) + _TAIL
    chunk, index = MessageReader().feed_read_raw(data)
    assert chunk is data and [chr(t) for t, _, _ in index] == list("PBDES")
    assert [data[s:e] for _, s, e in index[2:]] == [b"P\x00", b"\x00\x00\x00\x00\x00", b""]


def test_check_buffered_raises_for_a_bad_header_left_behind_good_messages() -> None:
    r = MessageReader()
    chunk, idx = r.feed_read_raw(m.query("select 1") + b"Q\x00\x00\x00\x02")
    assert [t for t, _, _ in idx] == [ord("Q")]  # the good message is handed out first
    with pytest.raises(ProtocolError, match="invalid message length 2"):
        r.check_buffered()
    big = MessageReader(max_size=100)
    big.feed_read_raw(m.query("select 1") + b"Q\x00\x01\x00\x00")
    with pytest.raises(ProtocolError):
        big.check_buffered()


def test_check_buffered_accepts_a_partial_message() -> None:
    msg = m.query("select 1")
    for cut in range(len(msg)):  # nothing, a partial header, a partial body
        r = MessageReader()
        r.feed_read_raw(m.query("select 0") + msg[:cut])
        r.check_buffered()  # no error, nothing consumed
        assert r.buffered == cut
