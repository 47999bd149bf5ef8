"""The WebSocket closing handshake on the fast path (RFC 6455 sections 5.5.1, 7),
sans-I/O: what :class:`gateway.websocket.WebSocketStream` does without a
websockets protocol (an idle plain session has none).

* The client closes: :func:`close_reply` is the close frame websockets would
  echo (its status and reason, unmasked), or None when websockets must answer
  (incomplete frame, invalid payload).
* We close: :data:`CLOSE_NORMAL` is our close frame (1000, no reason), then
  :func:`skip_to_close` reads the client's frames up to its close frame, as
  websockets does in CLOSING state (an unmasked frame ends it too: websockets
  would fail the connection).
"""

from __future__ import annotations

from websockets.frames import Close

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - pure-Python websockets build
    from websockets.utils import apply_mask

__all__ = ["CLOSE_NORMAL", "apply_mask", "close_reply", "skip_to_close"]

#: a server's close frame, code 1000 and no reason: exactly what websockets serializes
CLOSE_NORMAL = b"\x88\x02\x03\xe8"


def close_reply(buf: bytes, pos: int, end: int) -> bytes | None:
    """``buf[pos:end]`` starts with a masked close frame with a 7-bit length
    (``0x88``, ``0x80 | n``, n < 126): the unmasked echo of it websockets
    would send, or None (incomplete, or not a valid close payload)."""
    n = buf[pos + 1] & 0x7F
    start = pos + 6
    if start + n > end:
        return None
    payload = apply_mask(buf[start:start + n], buf[start - 4:start]) if n else b""
    try:
        Close.parse(payload)
    except Exception:  # ProtocolError, UnicodeDecodeError: websockets' own answer
        return None
    return b"\x88" + bytes((n,)) + payload


def skip_to_close(rx: bytes, left: int, data: bytes) -> tuple[bool, bytes, int]:
    """After our close frame: ``data`` received, with ``rx`` (an incomplete
    frame header kept from before) and ``left`` (payload bytes of the current
    frame still to skip).  Returns ``(ended, rx, left)``: ``ended`` when the
    client's close frame is whole (no unread bytes at close: no RST) or an
    unmasked frame came -- then close TCP; else the state to call again with."""
    if left:
        if len(data) <= left:
            return False, rx, left - len(data)
        data = data[left:]
        left = 0
    buf = rx + data if rx else data
    end = len(buf)
    pos = 0
    while end - pos >= 2:
        b1 = buf[pos + 1]
        if b1 < 0x80:
            return True, b"", 0
        n = b1 & 0x7F
        head = 6 if n < 126 else 8 if n == 126 else 14
        if end - pos < head:
            break
        if n == 126:
            n = (buf[pos + 2] << 8) | buf[pos + 3]
        elif n == 127:
            n = int.from_bytes(buf[pos + 2:pos + 10], "big")
        stop = pos + head + n
        if (buf[pos] & 0x0F) == 0x08:  # its close frame, once whole
            if stop > end and n < 126:
                break
            return True, b"", 0
        if stop > end:
            return False, b"", stop - end
        pos = stop
    return False, (buf[pos:] if pos < end else b""), 0
