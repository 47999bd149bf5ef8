"""LISTEN/NOTIFY and notices delivered by the connection's reader."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import driver

Connect = Callable[..., Awaitable[driver.Connection]]


async def test_notification_delivered(conn: driver.Connection) -> None:
    got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    await conn.add_listener("chan1", lambda *a: got.put_nowait(a))
    await conn.execute("NOTIFY chan1, 'payload 1'")
    c, pid, channel, payload = await asyncio.wait_for(got.get(), 5)
    assert c is conn and pid == conn.get_server_pid()
    assert (channel, payload) == ("chan1", "payload 1")


async def test_notification_while_idle_from_other_connection(conn: driver.Connection,
                                                             connect: Connect) -> None:
    got: asyncio.Queue[tuple[Any, ...]] = asyncio.Queue()
    await conn.add_listener("idle chan", lambda *a: got.put_nowait(a))  # needs quoting
    other = await connect()
    await other.execute("SELECT pg_notify('idle chan', 'from other')")
    # conn runs no query: its reader task must deliver the notification.
    _, pid, channel, payload = await asyncio.wait_for(got.get(), 5)
    assert pid == other.get_server_pid()
    assert (channel, payload) == ("idle chan", "from other")


async def test_async_callbacks_and_several_listeners(conn: driver.Connection) -> None:
    a: asyncio.Queue[str] = asyncio.Queue()
    b: asyncio.Queue[str] = asyncio.Queue()

    async def cb_async(c: Any, pid: int, channel: str, payload: str) -> None:
        await asyncio.sleep(0)
        a.put_nowait(payload)

    await conn.add_listener("multi", cb_async)
    await conn.add_listener("multi", lambda c, p, ch, pl: b.put_nowait(pl))
    await conn.execute("NOTIFY multi, 'x'; NOTIFY multi, 'y'")
    assert [await asyncio.wait_for(a.get(), 5) for _ in range(2)] == ["x", "y"]
    assert [await asyncio.wait_for(b.get(), 5) for _ in range(2)] == ["x", "y"]


async def test_remove_listener_unlistens(conn: driver.Connection) -> None:
    got: list[str] = []

    def cb(c: Any, pid: int, channel: str, payload: str) -> None:
        got.append(payload)

    await conn.add_listener("gone", cb)
    assert await conn.fetchval("SELECT array_agg(c) FROM pg_listening_channels() c") == ["gone"]
    await conn.remove_listener("gone", cb)
    assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0
    await conn.execute("NOTIFY gone, 'lost'")
    await conn.fetchval("SELECT 1")
    assert got == []


async def test_notify_inside_transaction_arrives_on_commit(conn: driver.Connection,
                                                           connect: Connect) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    await conn.add_listener("txchan", lambda c, p, ch, pl: got.put_nowait(pl))
    other = await connect()
    async with other.transaction():
        await other.execute("NOTIFY txchan, 'committed'")
        await conn.fetchval("SELECT 1")
        assert got.empty()
    assert await asyncio.wait_for(got.get(), 5) == "committed"


async def test_callback_exception_does_not_break_connection(conn: driver.Connection) -> None:
    got: asyncio.Queue[str] = asyncio.Queue()
    loop = asyncio.get_running_loop()
    old_handler = loop.get_exception_handler()
    errors: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda lp, ctx: errors.append(ctx))
    try:
        def bad(*a: Any) -> None:
            raise RuntimeError("listener bug")

        await conn.add_listener("err", bad)
        await conn.add_listener("err", lambda c, p, ch, pl: got.put_nowait(pl))
        await conn.execute("NOTIFY err, 'still here'")
        assert await asyncio.wait_for(got.get(), 5) == "still here"
        assert await conn.fetchval("SELECT 1") == 1
        assert any(isinstance(e.get("exception"), RuntimeError) for e in errors)
    finally:
        loop.set_exception_handler(old_handler)
