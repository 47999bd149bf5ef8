"""COPY FROM STDIN (not offered by the driver: refused with CopyFail) against a real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import driver
from driver import exceptions as exc
from driver.protocol import client as pc
from driver.protocol import messages as m
from driver.transport import Transport


def _ends_with_ready(buf: bytes) -> bool:
    """``buf`` holds whole messages, the last one a ReadyForQuery."""
    i, last = 0, 0
    while i + 5 <= len(buf):
        last = buf[i]
        i += 1 + int.from_bytes(buf[i + 1:i + 5], "big")
    return i == len(buf) and last == ord("Z")


class _CoalescingTransport(Transport):
    """The real TCP transport, but once ``armed`` each ``recv`` returns every
    server byte up to the next ReadyForQuery in ONE chunk (as a proxy or a
    gateway that forwards whole replies does)."""

    def __init__(self, inner: Transport) -> None:
        self.inner = inner
        self.armed = False

    async def send(self, data: bytes) -> None:
        await self.inner.send(data)

    async def recv(self) -> bytes:
        if not self.armed:
            return await self.inner.recv()
        buf = b""
        while not _ends_with_ready(buf):
            data = await self.inner.recv()
            if not data:
                return buf
            buf += data
        return buf

    def close(self) -> None:
        self.inner.close()

    def abort(self) -> None:
        self.inner.abort()

    async def wait_closed(self) -> None:
        await self.inner.wait_closed()


class _CoalescingConnection(driver.Connection):
    def _start_reader(self) -> None:
        self._transport = _CoalescingTransport(self._transport)
        super()._start_reader()


class _CopyEndedEarly(pc.Request):
    """A COPY FROM STDIN whose end is already on its way when the server
    answers: CopyInResponse, then the COPY's ErrorResponse and ReadyForQuery."""

    def _bytes(self) -> bytes:
        return m.query("COPY wp_copy_t FROM STDIN") + m.copy_fail("ended before the reply")


async def test_copy_in_response_and_its_error_in_one_chunk(admin_dsn: str) -> None:
    c: Any = await driver.connect(admin_dsn, connection_class=_CoalescingConnection)
    try:
        await c.execute("CREATE TABLE wp_copy_t (x int)")
        c._transport.armed = True
        with pytest.raises(exc.QueryCanceledError, match="ended before the reply"):
            await asyncio.wait_for(c._request(_CopyEndedEarly(), None), 10)
        # The reader survived and the protocol is in sync.
        assert not c.is_closed()
        assert await asyncio.wait_for(c.fetchval("SELECT count(*) FROM wp_copy_t"), 10) == 0
    finally:
        await c.close()


async def test_copy_from_stdin_is_refused_and_connection_stays_usable(
        conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE wp_copy_t (x int)")
    with pytest.raises(exc.QueryCanceledError, match="COPY FROM STDIN is not supported"):
        await conn.execute("COPY wp_copy_t FROM STDIN")
    assert await conn.fetchval("SELECT 1") == 1
