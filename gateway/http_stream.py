"""HttpStream: the in-memory ClientStream between an HTTP request and a Session.

Part of :mod:`gateway.http_exec` (which re-exports :class:`HttpStream`): the
executor feeds a request's batch in and waits for the ReadyForQuery replies it
expects; the session writes its replies out.  Headers only: the driver's
framing counts messages, no row is parsed.  A COPY FROM STDIN is failed at
once (the request body was the whole batch).
"""

from __future__ import annotations

import asyncio
from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader, ProtocolError

__all__ = ["HttpStream", "COPY_UNSUPPORTED"]

_Z, _E = 90, 69
_G = 71  # CopyInResponse
COPY_UNSUPPORTED = "COPY FROM STDIN is not supported over HTTP (the request body is the whole batch)"
_COPY_FAIL = m.copy_fail(COPY_UNSUPPORTED)


class HttpStream:
    """In-memory ClientStream between an HTTP request and a Session."""

    kind = "http"
    terminated = False  # (ClientStream; nothing to linger for in memory)

    def __init__(self, peer: str = "http") -> None:
        self.peer = peer
        self._in: list[bytes] = []
        self._in_waiter: asyncio.Future[None] | None = None
        self._closed = False
        loop = asyncio.get_running_loop()
        self.loop = loop
        # startup reply (AuthenticationOk ... ReadyForQuery) of the Session
        self.hello: asyncio.Future[bytes] = loop.create_future()
        self._hello_done = False
        self._hello_parts: list[bytes] = []
        # current batch
        self._reader = MessageReader(max_size=1 << 30)
        self._out: list[bytes] = []
        self._out_bytes = 0
        self.max_response = 0
        self.overflow = False
        self.on_overflow: Any = None
        self.target = 0
        self.zs = 0
        self.status: int | None = None
        self.fatal: dict[str, str] | None = None
        self.done: asyncio.Future[None] | None = None
        #: ReadyForQuery replies the session's accounting still expects
        #: (gateway.accounting: skip-till-Sync included); set by the executor
        self.owed: Any = None
        #: the last message out was a ReadyForQuery (not an error the server skips after)
        self.at_z = False

    # -- batch control (executor side)
    def begin(self, expected: int, max_response: int) -> asyncio.Future[None]:
        self._out = []
        self._out_bytes = 0
        self.overflow = False
        self.max_response = max_response
        self.target = expected
        self.zs = 0
        self.fatal = None
        self.at_z = False
        fut = self.done = self.loop.create_future()
        if self._closed or expected == 0:
            fut.set_result(None)
        return fut

    def feed(self, data: bytes) -> None:
        if data:
            self._in.append(data)
        w = self._in_waiter
        if w is not None and not w.done():
            w.set_result(None)

    def take_output(self) -> bytes:
        out = b"".join(self._out)
        self._out = []
        self._out_bytes = 0
        return out

    @property
    def closed(self) -> bool:
        return self._closed

    # -- ClientStream API (session side)
    async def recv(self) -> bytes:
        while not self._in:
            if self._closed:
                return b""
            self._in_waiter = self.loop.create_future()
            try:
                await self._in_waiter
            finally:
                self._in_waiter = None
        data = self._in[0] if len(self._in) == 1 else b"".join(self._in)
        self._in.clear()
        return data

    def send_nowait(self, data: bytes) -> bool:
        self._output(data)
        return True

    async def drain(self) -> None:
        return None

    async def send(self, data: bytes) -> None:
        self._output(data)

    async def close(self) -> None:
        self.shutdown()

    def shutdown(self) -> None:
        """End the stream: the session's recv() returns EOF."""
        if self._closed:
            return
        self._closed = True
        w = self._in_waiter
        if w is not None and not w.done():
            w.set_result(None)
        if not self.hello.done():
            self.hello.set_exception(ConnectionResetError("session ended during startup"))
            self.hello.exception()  # retrieved: no "never retrieved" warning
        d = self.done
        if d is not None and not d.done():
            d.set_result(None)

    # -- output accounting (headers only: the driver's framing, no row parsing)
    def _output(self, data: bytes) -> None:
        if self._closed and self.done is None:
            return
        reader = self._reader
        reader.feed(data)
        try:
            chunk, idx = reader.read_raw()
        except ProtocolError:  # pragma: no cover - the session only sends whole messages
            return
        if not chunk:
            return
        if not self._hello_done:
            # The Session's startup reply ends with its first ReadyForQuery.
            for t, s, e in idx:
                if t == _Z:
                    cut = e
                    self._hello_parts.append(chunk[:cut])
                    self._hello_done = True
                    if not self.hello.done():
                        self.hello.set_result(b"".join(self._hello_parts))
                    chunk = chunk[cut:]
                    idx = [(t2, s2 - cut, e2 - cut) for t2, s2, e2 in idx if s2 >= cut]
                    break
                if t == _E:
                    fields = m.decode_fields(chunk[s:e])
                    if fields.get("S") in ("FATAL", "PANIC") or fields.get("V") in ("FATAL", "PANIC"):
                        self.fatal = fields
            else:
                self._hello_parts.append(chunk)
                return
            if not chunk:
                return
        if any(t == _G for t, _s, _e in idx):
            # COPY FROM STDIN: the request body was the whole batch, there is no
            # more data.  Fail the COPY now and hide the CopyInResponse (the
            # client gets the server's "COPY from stdin failed" error instead).
            parts: list[bytes] = []
            kept: list[tuple[int, int, int]] = []
            pos = 0
            for t, s, e in idx:
                if t == _G:
                    self.feed(_COPY_FAIL)
                    continue
                parts.append(chunk[s - 5:e])
                kept.append((t, pos + 5, pos + e - s + 5))
                pos += e - s + 5
            chunk, idx = b"".join(parts), kept
            if not chunk:
                return
        zs = self.zs
        for t, s, e in idx:
            if t == _Z:
                zs += 1
                self.status = chunk[s]
            elif t == _E:
                body = chunk[s:e]
                if b"SFATAL\x00" in body or b"SPANIC\x00" in body:
                    self.fatal = m.decode_fields(body)

        self.zs = zs
        self.at_z = idx[-1][0] == _Z
        if not self.overflow:
            self._out.append(chunk)
            self._out_bytes += len(chunk)
            if self.max_response and self._out_bytes > self.max_response:
                self.overflow = True
                self._out = []
                self._out_bytes = 0
                cb = self.on_overflow
                if cb is not None and zs < self.target:
                    cb()
        d = self.done
        if d is not None and not d.done() and (zs >= self.target or (self.owed is not None and self.owed() <= 0)):
            # every ReadyForQuery came -- or the session's skip-till-Sync accounting
            # says the rest will not (Queries Postgres skips after an extended error)
            d.set_result(None)

    def more(self, n: int) -> asyncio.Future[None]:
        """Continue the batch: wait for ``n`` more ReadyForQuery (output kept)."""
        self.target = self.zs + n
        fut = self.done = self.loop.create_future()
        if self._closed:
            fut.set_result(None)
        return fut
