"""The admin SHUTDOWN against a real ``wirepool serve`` process (docs/admin.md):
plain (at once), WAIT_FOR_SERVERS (idle clients end, a transaction finishes)
and WAIT_FOR_CLIENTS (clients keep working until they leave by themselves)."""

from __future__ import annotations

import asyncio
import subprocess
import time

import asyncpg
import psycopg
import pytest

from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import eventually
from tests.gateway.served import Served

SHUTDOWN_TIMEOUT = 20


async def _connect(port: int) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, database="app")


async def _shutdown(port: int, mode: str) -> None:
    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, dbname="pgbouncer",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as conn:
        cur = await conn.execute(f"SHUTDOWN {mode}".strip())
        assert cur.statusmessage == "SHUTDOWN"


async def _refused(port: int) -> bool:
    try:
        conn = await _connect(port)
    except (ConnectionRefusedError, OSError):
        return True
    except asyncpg.PostgresError as e:
        # accepted in the instant before the listener closed, then turned away
        assert e.sqlstate in ("57P01", "57P03"), e
        return True
    await conn.close()
    return False


async def _exited(proc: subprocess.Popen[bytes], timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


@pytest.fixture
def serve(pg, pg_db, tmp_path):
    served: list[Served] = []

    async def start() -> tuple[subprocess.Popen[bytes], int]:
        gw = Served(pg, pg_db, {"listen": "127.0.0.1:0", "shutdown_timeout": SHUTDOWN_TIMEOUT,
                                "pid_file": str(tmp_path / "wirepool.pid")}, directory=tmp_path)
        served.append(gw)
        await gw.wait_ready(timeout=30)
        assert gw.pg_port is not None
        return gw.proc, gw.pg_port
    yield start
    for gw in served:
        if gw.proc.poll() is None:
            gw.proc.kill()
            gw.proc.wait()


async def test_shutdown_closes_at_once(serve, tmp_path):
    proc, port = await serve()
    busy = await _connect(port)
    tx = busy.transaction()
    await tx.start()
    await busy.execute("SELECT 1")
    t0 = time.monotonic()
    await _shutdown(port, "")
    assert await _exited(proc, 15) == 0
    assert time.monotonic() - t0 < SHUTDOWN_TIMEOUT / 2  # did not wait for the open transaction
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
        await busy.fetchval("SELECT 2")
    busy.terminate()
    assert not (tmp_path / "wirepool.pid").exists()


async def test_shutdown_wait_for_servers_lets_the_transaction_finish(serve, pg, pg_db):
    proc, port = await serve()
    idle = await _connect(port)
    busy = await _connect(port)
    await busy.execute("CREATE TABLE IF NOT EXISTS shutdown_probe (v int)")
    tx = busy.transaction()
    await tx.start()
    await busy.execute("INSERT INTO shutdown_probe VALUES (42)")
    await _shutdown(port, "WAIT_FOR_SERVERS")
    await eventually(lambda: idle.is_closed() or _refused(port), timeout=10, what="shutdown begun")
    assert await _refused(port)  # no new clients
    await eventually(lambda: _idle_ended(idle), timeout=10, what="idle client ended")
    assert proc.poll() is None  # still waiting for the transaction
    assert await busy.fetchval("SELECT count(*) FROM shutdown_probe WHERE v = 42") == 1
    await tx.commit()
    assert await _exited(proc, SHUTDOWN_TIMEOUT) == 0
    direct = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.SCRAM_USER, password=pg.SCRAM_PASSWORD,
                                   database=pg_db)
    try:
        assert await direct.fetchval("SELECT count(*) FROM shutdown_probe WHERE v = 42") == 1  # committed
    finally:
        await direct.close()
    busy.terminate()


async def _idle_ended(conn: asyncpg.Connection) -> bool:
    if conn.is_closed():
        return True
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return True
    except asyncpg.exceptions._base.InternalClientError:
        # asyncpg read the gateway's FATAL while idle and waits for a ReadyForQuery
        # that will not come: the close follows (under load, after this poll)
        return False
    return False


async def test_shutdown_wait_for_clients_serves_until_they_leave(serve):
    proc, port = await serve()
    clients = [await _connect(port) for _ in range(3)]
    await _shutdown(port, "WAIT_FOR_CLIENTS")
    await eventually(lambda: _refused(port), timeout=10, what="stopped accepting")
    # connected clients keep working: new transactions included
    for i, c in enumerate(clients):
        async with c.transaction():
            assert await c.fetchval("SELECT $1::int + 1", i) == i + 1
    await clients[0].close()
    await clients[1].close()
    assert await clients[2].fetchval("SELECT 5") == 5
    assert proc.poll() is None
    t0 = time.monotonic()
    await clients[2].close()
    assert await _exited(proc, SHUTDOWN_TIMEOUT) == 0
    assert time.monotonic() - t0 < SHUTDOWN_TIMEOUT / 2 - 1  # left when the last client did, not at the deadline
