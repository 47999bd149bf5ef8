"""gateway/ws_close.py (sans-I/O): the closing handshake of the WebSocket fast
path, checked against websockets' own frames, byte script by byte script."""

from __future__ import annotations

import os

import pytest
from websockets.frames import Close, Frame, Opcode

from gateway.ws_close import CLOSE_NORMAL, close_reply, skip_to_close


def _client(opcode: Opcode, data: bytes) -> bytes:
    """A frame as a client sends it (masked), serialized by websockets."""
    return Frame(opcode, data).serialize(mask=True, extensions=[])


def _server(opcode: Opcode, data: bytes) -> bytes:
    return Frame(opcode, data).serialize(mask=False, extensions=[])


def test_close_normal_is_what_websockets_sends() -> None:
    assert CLOSE_NORMAL == _server(Opcode.CLOSE, Close(1000, "").serialize())


@pytest.mark.parametrize("payload", [b"", Close(1000, "").serialize(), Close(1001, "going away").serialize(),
                                     Close(4000, "é" * 40).serialize()])
def test_close_reply_echoes_a_valid_close_frame_unmasked(payload: bytes) -> None:
    frame = b"\x82\x80" + os.urandom(4) + _client(Opcode.CLOSE, payload)  # after an empty binary frame
    assert close_reply(frame, 6, len(frame)) == _server(Opcode.CLOSE, payload)
    assert close_reply(frame + b"more", 6, len(frame) + 4) == _server(Opcode.CLOSE, payload)


def test_close_reply_leaves_an_incomplete_frame_to_websockets() -> None:
    frame = _client(Opcode.CLOSE, Close(1000, "bye").serialize())
    for end in range(2, len(frame)):
        assert close_reply(frame[:end], 0, end) is None, end
    assert close_reply(frame, 0, len(frame)) is not None


@pytest.mark.parametrize("payload", [b"\x03", b"\x03\xed", b"\x00\x01", b"\x03\xe8\xff\xfe"],
                         ids=["one byte", "1005 on the wire", "code 1", "reason not UTF-8"])
def test_close_reply_leaves_an_invalid_payload_to_websockets(payload: bytes) -> None:
    with pytest.raises(Exception):
        Close.parse(payload)  # websockets refuses it too: it answers with its own 1002/1007
    frame = _client(Opcode.CLOSE, payload)
    assert close_reply(frame, 0, len(frame)) is None


def _script() -> tuple[bytes, int]:
    """Frames a client may still send after our close frame, its close frame
    last; the offset where that close frame ends."""
    frames = [_client(Opcode.BINARY, b"x" * 10), _client(Opcode.BINARY, os.urandom(300)),
              _client(Opcode.TEXT, b"t"), _client(Opcode.BINARY, os.urandom(70_000)),
              _client(Opcode.PING, b"p"), _client(Opcode.CLOSE, Close(1000, "ok").serialize())]
    data = b"".join(frames)
    return data, len(data)


def _feed(chunks: list[bytes]) -> int | None:
    """Bytes consumed when the scan ended (None: not ended)."""
    rx, left, used = b"", 0, 0
    for c in chunks:
        used += len(c)
        ended, rx, left = skip_to_close(rx, left, c)
        if ended:
            return used
    return None


def test_skip_to_close_ends_exactly_at_the_whole_close_frame() -> None:
    data, end = _script()
    assert _feed([data]) == end
    assert _feed([data[:-1]]) is None  # one byte of the close frame missing: wait for it
    # every split in two, and byte by byte around the frame headers
    for cut in list(range(0, 400)) + list(range(end - 400, end)):
        assert _feed([data[:cut], data[cut:]]) == end, cut
    chunks = [data[i:i + 7] for i in range(0, end, 7)]
    assert _feed(chunks) == end


def test_skip_to_close_keeps_a_partial_header_and_skips_long_payloads() -> None:
    big = _client(Opcode.BINARY, b"\0" * 70_000)  # 64-bit length: 14-byte header
    ended, rx, left = skip_to_close(b"", 0, big[:9])
    assert (ended, rx, left) == (False, big[:9], 0)  # header incomplete: kept
    ended, rx, left = skip_to_close(rx, left, big[9:20])
    assert (ended, rx, left) == (False, b"", len(big) - 20)  # inside the payload: bytes left to skip
    ended, rx, left = skip_to_close(rx, left, big[20:])
    assert (ended, rx, left) == (False, b"", 0)


def test_skip_to_close_ends_at_an_unmasked_frame() -> None:
    # websockets would fail the connection: the scan ends, TCP is closed
    assert skip_to_close(b"", 0, _client(Opcode.BINARY, b"a") + _server(Opcode.BINARY, b"b"))[0] is True
    assert skip_to_close(b"", 0, _client(Opcode.BINARY, b"a"))[0] is False
