"""Fast recovery after an upstream restart (issue 10, item 4): a background
probe ends the ``server_login_retry`` window as soon as Postgres accepts
logins again, the error in the window says what is going on (not where), and
a client whose server dies gets exactly one ErrorResponse."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, eventually

pytestmark = pytest.mark.timeout(180)

#: long on purpose: only the probe can end the window early
LOGIN_RETRY = 30.0


async def _connect(app: Any) -> asyncpg.Connection:
    return await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)


async def _works(app: Any) -> bool:
    try:
        conn = await _connect(app)
    except (asyncpg.PostgresError, OSError):
        return False
    try:
        return await conn.fetchval("select 1") == 1
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError):
        return False
    finally:
        conn.terminate()


async def _window_error(app: Any, port: int) -> None:
    """While the upstream is down: a clear error, fast, naming no host/port."""
    conn = await _connect(app)  # startup is answered by the gateway (cached parameters)
    try:
        t0 = time.monotonic()
        with pytest.raises(asyncpg.PostgresError) as ei:
            await conn.fetchval("select 1")
        assert time.monotonic() - t0 < 2
        msg = str(ei.value)
        assert ei.value.sqlstate.startswith("08") and "unreachable since" in msg and " UTC" in msg, msg
        assert str(port) not in msg and "127.0.0.1" not in msg, msg
    finally:
        conn.terminate()


async def test_killed_and_restarted_under_50_clients(gateway_app: Any, pg_factory: Any) -> None:
    c = await asyncio.to_thread(pg_factory)
    app = await gateway_app(auth_type="password", server_login_retry=LOGIN_RETRY, server_connect_timeout=3.0,
                            databases={"app": {"host": c.host, "port": c.port, "pool_size": 5}})
    ok = 0
    stop = asyncio.Event()
    failures: list[BaseException] = []

    async def worker() -> None:
        nonlocal ok
        conn = await _connect(app)
        try:
            while not stop.is_set():
                async with conn.transaction():
                    await conn.fetchval("select pg_sleep(0.001)")
                ok += 1
        except Exception as exc:
            failures.append(exc)
        finally:
            conn.terminate()

    tasks = [asyncio.ensure_future(worker()) for _ in range(50)]
    await eventually(lambda: ok >= 200, what="load to run")
    await asyncio.to_thread(c.kill)
    done, pending = await asyncio.wait(tasks, timeout=20)
    stop.set()
    assert not pending, "clients hung after the server died"
    assert len(failures) == 50
    await eventually(lambda: app.gateway.pools["app"].last_login_error is not None, what="a failed login")
    await _window_error(app, c.port)
    await asyncio.to_thread(c.start)  # returns once Postgres accepts logins
    t0 = time.monotonic()
    await eventually(lambda: _works(app), timeout=LOGIN_RETRY, what="new clients to succeed")
    elapsed = time.monotonic() - t0
    assert elapsed < 2.0, f"new clients succeeded {elapsed:.1f}s after Postgres came back"
    results = await asyncio.gather(*(_works(app) for _ in range(50)))
    assert all(results)


async def test_one_fatal_per_dropped_connection(gateway_app: Any, pg_factory: Any) -> None:
    """Postgres shut down (fast): each client inside a transaction gets the
    server's 57P01 and nothing more -- not a second 08006 from the gateway."""
    c = await asyncio.to_thread(pg_factory)
    app = await gateway_app(auth_type="password", server_login_retry=LOGIN_RETRY,
                            databases={"app": {"host": c.host, "port": c.port, "pool_size": 10}})
    clients = []
    for _ in range(10):
        rc = await RawClient.connect(app.pg_port)
        assert not errors(await rc.login("alice", ALICE_PASSWORD, "app"))
        assert not errors(await rc.query("begin; select 1"))
        clients.append(rc)
    await asyncio.to_thread(c.stop, "fast")
    for rc in clients:
        msgs = await rc.read_to_eof(timeout=10)
        errs = errors(msgs)
        assert [(e.sqlstate, e.severity) for e in errs] == [("57P01", "FATAL")], errs
    await asyncio.to_thread(c.start)
    await eventually(lambda: _works(app), timeout=5, what="new clients to succeed")
