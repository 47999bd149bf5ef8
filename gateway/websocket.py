"""The WebSocket stream of the ``listen`` port: :class:`WebSocketStream`, a
``ClientStream`` over websockets' sans-I/O protocol, with a fast path of its
own for plain binary frames (no protocol object for an idle session).

The opening handshake: :mod:`gateway.ws_handshake`; the closing handshake on
the fast path: :mod:`gateway.ws_close`.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from websockets.frames import CloseCode, Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from gateway.linger import linger_close, lingering
from gateway.streams import TransportError
from gateway.tcp import ProtocolStream
from gateway.ws_close import CLOSE_NORMAL, apply_mask as _apply_mask, close_reply, skip_to_close
from gateway.ws_handshake import ws_log

if TYPE_CHECKING:
    from gateway.http_messages import HttpRequest

log = logging.getLogger("wirepool.http")

__all__ = ["WS_CLOSE_TIMEOUT", "WebSocketStream", "_apply_mask", "ws_log"]

WS_CLOSE_TIMEOUT = 5.0


# --------------------------------------------------------------------------- stream

class WebSocketStream(ProtocolStream):
    """A ``ClientStream`` over a WebSocket (``kind == "ws"``).

    - ``recv()``: payload of binary messages (fragments and messages coalesced);
      ``b""`` once the client closed (close frame or TCP EOF); a text frame raises
      :class:`TransportError` (after any binary bytes received before it).
    - ``send(data)``: one binary message per call.
    - ``close()``: sends a close frame (1000, or 1003 after a text frame) and
      closes TCP when the client answers (or after a timeout).
    - ``path``, ``query`` (dict), ``token`` (``?token=`` or ``Authorization: Bearer``), ``authorization``
      (raw header), ``extensions`` (negotiated, e.g. ``["permessage-deflate"]``), ``subprotocol``
      (the client's raw ``Sec-WebSocket-Protocol`` request header, or None).

    ``ws`` is websockets' protocol: given for a negotiated handshake; after a
    plain one (``ws=None``) it is made only when needed (a frame off the fast
    path, EOF, close) -- an idle session does not carry it (about 1 KB).
    """

    kind = "ws"
    __slots__ = ("ws", "path", "query", "authorization", "token", "extensions", "subprotocol", "_plain_frames", "_fast_rx",
                 "_rx", "_rx_limit", "_rx_left", "_rx_mask", "_rx_off", "_text", "_close_timer", "_frag_limit",
                 "_close_sent")

    def __init__(self, transport: asyncio.Transport, ws: ServerProtocol | None, request: "HttpRequest",
                 max_size: int | None = None) -> None:
        super().__init__(transport, peer=request.peer)
        self.ws: ServerProtocol | None = ws
        self.path = request.path
        self.query = request.query
        self.authorization: str | None = request.header("authorization")
        tok = request.query.get("token")
        if tok is None and self.authorization and self.authorization[:7].lower() == "bearer ":
            tok = self.authorization[7:].strip()
        self.token: str | None = tok
        exts = ws.extensions if ws is not None else ()
        self.extensions = [e.name for e in exts]
        self.subprotocol: str | None = request.header("sec-websocket-protocol")
        self._plain_frames = not exts
        # receive fast path (see _rx_fast): only without extensions
        self._fast_rx = self._plain_frames
        self._rx = b""
        self._rx_limit: int | None = ws.max_message_size if ws is not None else max_size
        self._frag_limit: int | None = None  # set_login_limit's, for a protocol made later
        # a frame whose payload is still arriving (fast path): bytes left, its mask, mask offset
        self._rx_left = 0
        self._rx_mask = b""
        self._rx_off = 0
        self._text = False          # inside a text message (its continuation frames are dropped)
        self._close_timer: asyncio.TimerHandle | None = None
        #: our close frame was written on the fast path (no websockets protocol):
        #: the client's frames are skipped until its close frame (see _rx_closing)
        self._close_sent = False

    # -- protocol side
    def _feed(self, data: bytes) -> None:
        if self._closed:  # closing (waiting for the client's close frame): nobody reads any more
            self.bytes_received += len(data)
            return
        super()._feed(data)

    def _ws_data(self, data: bytes) -> None:
        if self._close_sent:
            self._rx_closing(data)
            return
        if self._fast_rx:
            data = self._rx_fast(data)
            if not data:
                return
        (self.ws or self._protocol()).receive_data(data)
        self._process()

    def _protocol(self) -> ServerProtocol:
        """websockets' protocol, made now if the plain handshake left none
        (its parser starts at a frame boundary: the fast path hands over
        only there)."""
        ws = self.ws
        if ws is None:
            ws = self.ws = ServerProtocol(max_size=self._rx_limit, logger=ws_log, state=State.OPEN)
            ws.max_fragment_size = self._frag_limit
        return ws

    def _rx_fast(self, data: bytes) -> bytes:
        """Complete, unfragmented, masked binary frames (what clients send) are
        unmasked here; at the first other frame (control, text, fragment, RSV
        bits, over max_size) the rest of the stream goes to websockets for good
        (its parser has seen nothing since OPEN, so it starts at a frame
        boundary).  Returns the bytes for websockets (b"" while on the fast path)."""
        feed = self._feed
        if self._rx_left:
            data = self._rx_stream(data)
            if not data:
                return b""
        buf = self._rx + data if self._rx else data
        end = len(buf)
        pos = 0
        limit = self._rx_limit
        while end - pos >= 6:
            b1 = buf[pos + 1]
            if buf[pos] != 0x82 or b1 < 0x80:
                if buf[pos] == 0x88 and 0x80 <= b1 < 0x80 + 126 and self._fast_close(buf, pos, end):
                    self._rx = b""
                    return b""
                break
            n = b1 & 0x7F
            if n < 126:
                start = pos + 6
            elif n == 126:
                if end - pos < 8:
                    self._rx = buf[pos:]
                    return b""
                n = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 8
            else:
                if end - pos < 14:
                    self._rx = buf[pos:]
                    return b""
                n = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start = pos + 14
            if limit is not None and n > limit:
                break
            stop = start + n
            if stop > end:
                # Payload still arriving: hand out what is here (message boundaries
                # mean nothing), so a large frame is never held whole in memory.
                mask = buf[start - 4 : start]
                self._rx = b""
                self._rx_left = stop - end
                self._rx_mask = mask
                self._rx_off = (end - start) % 4
                if end > start:
                    feed(_apply_mask(buf[start:end], mask))
                return b""
            pos = stop
            if n:
                feed(_apply_mask(buf[start:stop], buf[start - 4 : start]))
            if self._lost or self._closed:
                self._rx = b""
                return b""
        else:
            self._rx = buf[pos:] if pos < end else b""
            return b""
        # hand over to websockets from this frame on
        self._fast_rx = False
        self._rx = b""
        return buf[pos:]

    def _fast_close(self, buf: bytes, pos: int, end: int) -> bool:
        """The client's close frame at ``pos`` answered as websockets does (echo
        its payload, close TCP, EOF to the session) without a protocol; False
        (websockets takes over) if incomplete or not a valid close payload."""
        reply = close_reply(buf, pos, end)
        if reply is None:
            return False
        t = self.transport
        t.write(reply)
        self.bytes_sent += len(reply)
        self._feed_eof()
        self._closed = True  # "further data received is discarded" (RFC 6455 1.4); sends refused
        t.close()
        return True

    def _rx_closing(self, data: bytes) -> None:
        """After our fast-path close frame: skip the client's frames up to its
        close frame, then close TCP (:func:`gateway.ws_close.skip_to_close`)."""
        ended, self._rx, self._rx_left = skip_to_close(self._rx, self._rx_left, data)
        if ended:
            self._end_close()

    def _end_close(self) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def _rx_stream(self, data: bytes) -> bytes:
        """More payload of the frame being streamed; returns the bytes after it."""
        n = self._rx_left
        part, rest = (data, b"") if len(data) <= n else (data[:n], data[n:])
        off = self._rx_off
        mask = self._rx_mask[off:] + self._rx_mask[:off] if off else self._rx_mask
        self._rx_left = n - len(part)
        self._rx_off = (off + len(part)) % 4
        self._feed(_apply_mask(part, mask))
        if self._lost or self._closed:
            return b""
        return rest

    def set_login_limit(self, limit: int | None) -> None:
        """Before login: frames websockets parses (permessage-deflate, control,
        fragments) are capped at ``limit`` bytes and at most about ``limit``
        received bytes are buffered; ``None`` lifts both."""
        super().set_login_limit(limit)
        self._frag_limit = limit
        if self.ws is not None:
            self.ws.max_fragment_size = limit

    def _ws_eof(self) -> None:
        if self._close_sent:  # the client closed TCP without its close frame
            self._end_close()
            self._feed_eof()
            return
        if self._rx_left:  # EOF inside a streamed frame
            self._fast_rx = False
            self._rx_left = 0
        if self._fast_rx and self._rx:
            self._fast_rx = False
            rest, self._rx = self._rx, b""
            self._protocol().receive_data(rest)
        self._protocol().receive_eof()
        self._process()
        self._feed_eof()

    def _process(self) -> None:
        ws = self._protocol()
        for ev in ws.events_received():
            if not isinstance(ev, Frame):  # pragma: no cover - only frames once OPEN
                continue
            op = ev.opcode
            if op is Opcode.BINARY:
                self._text = False
                self._feed(ev.data if type(ev.data) is bytes else bytes(ev.data))
            elif op is Opcode.CONT:
                if not self._text:
                    self._feed(ev.data if type(ev.data) is bytes else bytes(ev.data))
            elif op is Opcode.TEXT:
                self._text = True
                self._feed_error(TransportError(
                    "text WebSocket frame received: only binary messages carry the Postgres protocol"))
                if not self._reading_paused and not self._lost:
                    self._reading_paused = True
                    self.transport.pause_reading()
            elif op is Opcode.CLOSE:
                self._feed_eof()
            # PING is answered by the protocol (pong queued in data_to_send); PONG ignored.
        if ws.parser_exc is not None and self._error is None and not self._eof:
            self._feed_error(TransportError(f"WebSocket protocol error: {ws.parser_exc}"))
        self._flush_ws()

    def _flush_ws(self) -> None:
        if self.ws is None:
            return
        out = self.ws.data_to_send()
        if not out:
            return
        t = self.transport
        for chunk in out:
            if chunk:
                if not self._lost:
                    t.write(chunk)
                    self.bytes_sent += len(chunk)
            else:  # SEND_EOF: the server closes the TCP connection
                if self._close_timer is not None:
                    self._close_timer.cancel()
                    self._close_timer = None
                # (after a failure, e.g. 1009, the client may still be sending: no RST)
                linger_close(t)

    # -- ClientStream API
    def send_nowait(self, data: bytes) -> bool:
        """One binary message, written now; False when the caller should
        ``await drain()`` (slow client).  ConnectionResetError when gone."""
        ws = self.ws
        if self._lost or self._closed or (ws is not None and ws.state is not State.OPEN):
            raise ConnectionResetError(f"ws client {self.peer} is gone")
        if not data:
            return not self._write_paused
        t = self.transport
        if self._plain_frames:
            # No extension negotiated: a server frame is a header + the payload
            # (unmasked), exactly what websockets would serialize.
            n = len(data)
            if n < 126:
                t.write(bytes((0x82, n)) + data)
            elif n < 65536:
                t.write(b"\x82\x7e" + n.to_bytes(2, "big") + data)
            else:
                t.writelines((b"\x82\x7f" + n.to_bytes(8, "big"), data))
            self.bytes_sent += n
        else:
            ws = self._protocol()
            ws.send_binary(data)
            for chunk in ws.data_to_send():
                t.write(chunk)
                self.bytes_sent += len(chunk)
        return not self._write_paused

    async def send(self, data: bytes) -> None:
        if not self.send_nowait(data):
            await self._drain()

    async def close(self) -> None:
        self.close_nowait()

    def session_done(self, task: "asyncio.Task[None]") -> None:
        """Done callback of the task serving this stream: log a failure, close."""
        if not task.cancelled():
            exc = task.exception()
            if exc is not None:
                log.error("WebSocket session for %s failed", self.peer, exc_info=exc)
        self.close_nowait()

    def close_nowait(self) -> None:
        """:meth:`close` without awaiting (nothing in it waits)."""
        if self._closed:
            return
        self._closed = True
        if self._lost:
            return
        try:
            if self.ws is None and self._fast_rx and not self._rx_left:
                # Plain frames and no protocol yet (the usual case): our close
                # frame -- 1000 with no reason, exactly what websockets would
                # serialize -- without making one; see _rx_closing for the rest.
                self.transport.write(CLOSE_NORMAL)
                self.bytes_sent += len(CLOSE_NORMAL)
                self._close_sent = True
                if self._reading_paused:
                    self._reading_paused = False
                    self.transport.resume_reading()
                if not self.transport.is_closing():
                    self._close_timer = self._loop.call_later(WS_CLOSE_TIMEOUT, self._close_timeout)
                return
            ws = self._protocol()
            if ws.state is State.OPEN:
                code = CloseCode.UNSUPPORTED_DATA if self._text else CloseCode.NORMAL_CLOSURE
                ws.send_close(code)
                if self._rx_left:
                    # the client is inside a frame (perhaps megabytes long): its close
                    # frame cannot come before that frame's end -- do not read it all;
                    # but linger, so that no RST destroys the frames sent (gateway/linger.py)
                    self._flush_ws()
                    linger_close(self.transport)
                    return
                if self._reading_paused:
                    self._reading_paused = False
                    self.transport.resume_reading()
                self._flush_ws()
                if not self._lost and not self.transport.is_closing():
                    self._close_timer = self._loop.call_later(WS_CLOSE_TIMEOUT, self._close_timeout)
            elif not self.transport.is_closing() and not lingering(self.transport):
                self.transport.close()
        except Exception:  # pragma: no cover - close never raises
            self.transport.abort()

    def _close_timeout(self) -> None:
        self._close_timer = None
        if not self._lost:
            self.transport.abort()

    def _connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        super()._connection_lost(exc)

