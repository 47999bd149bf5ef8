"""Unit tests of gateway.http_stream.HttpStream, the in-memory ClientStream
between an HTTP request and its Session: scripted replies, no I/O."""

from __future__ import annotations

import asyncio

import pytest

from driver.protocol import messages as m
from gateway.http_stream import COPY_UNSUPPORTED, HttpStream

ZI = m.ready_for_query("I")
ZT = m.ready_for_query("T")
CC = m.command_complete("SELECT 1")
ROW = m.data_row([b"x" * 40])
HELLO = m.authentication_ok() + m.parameter_status("TimeZone", "UTC") + m.backend_key_data(7, 9) + ZI


async def test_startup_reply_then_a_batch_of_two_ready_for_query() -> None:
    st = HttpStream()
    # the startup reply may come in pieces; it ends at the first ReadyForQuery
    await st.send(HELLO[:7])
    assert not st.hello.done()
    st.send_nowait(HELLO[7:])
    assert st.hello.result() == HELLO
    done = st.begin(2, 0)
    assert not done.done()
    await st.send(ROW + CC + ZI + ROW + CC)
    assert not done.done() and st.zs == 1
    await st.send(ZT)
    assert done.done() and st.status == ord("T") and st.at_z
    assert st.take_output() == ROW + CC + ZI + ROW + CC + ZT
    assert st.take_output() == b""


async def test_input_is_queued_for_the_session() -> None:
    st = HttpStream()
    st.feed(m.query("select 1"))
    st.feed(m.SYNC)
    assert await st.recv() == m.query("select 1") + m.SYNC
    waiting = asyncio.ensure_future(st.recv())
    await asyncio.sleep(0)
    assert not waiting.done()
    st.feed(m.SYNC)
    assert await asyncio.wait_for(waiting, 5) == m.SYNC


async def test_response_past_max_response_is_dropped_and_cancelled_once() -> None:
    st = HttpStream()
    await st.send(HELLO)
    calls: list[int] = []
    st.on_overflow = lambda: calls.append(1)
    done = st.begin(1, 200)
    await st.send(ROW + ROW)
    assert not st.overflow
    await st.send(ROW + ROW + ROW)
    assert st.overflow and calls == [1]
    await st.send(ROW + CC + ZI)
    assert done.done() and calls == [1]
    assert st.take_output() == b""


async def test_copy_from_stdin_is_failed_and_its_response_hidden() -> None:
    st = HttpStream()
    await st.send(HELLO)
    st.begin(1, 0)
    await st.send(m.copy_in_response(0, []))
    assert await st.recv() == m.copy_fail(COPY_UNSUPPORTED)
    err = m.error("57014", "COPY from stdin failed: " + COPY_UNSUPPORTED)
    await st.send(err + ZI)
    assert st.take_output() == err + ZI


async def test_shutdown_ends_every_wait() -> None:
    st = HttpStream()
    done = st.begin(1, 0)
    waiting = asyncio.ensure_future(st.recv())
    await asyncio.sleep(0)
    st.shutdown()
    assert await asyncio.wait_for(waiting, 5) == b""
    assert done.done() and st.closed
    with pytest.raises(ConnectionResetError):
        st.hello.result()
    assert st.begin(1, 0).done()  # a closed stream never waits


async def test_fatal_error_is_kept() -> None:
    st = HttpStream()
    fatal = m.error("57P01", "terminating connection", severity="FATAL")
    await st.send(fatal)
    assert st.fatal is not None and st.fatal["C"] == "57P01"
    assert not st.hello.done()
