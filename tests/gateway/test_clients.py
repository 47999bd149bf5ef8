"""Real clients through pg_listen: psql, pgbench, asyncpg (incl. cancel forwarding)."""

from __future__ import annotations

import asyncio
import os
import shutil
import time

import asyncpg
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, backends, errors, eventually, pool_stats

PSQL = shutil.which("psql") or "/usr/bin/psql"
PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = ALICE_PASSWORD
    env["PGCONNECT_TIMEOUT"] = "10"
    return env


async def _run(*argv: str, input: bytes | None = None, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.PIPE,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env=_env())
    out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    return proc.returncode or 0, out.decode(), err.decode()


@pytest.mark.skipif(not os.access(PSQL, os.X_OK), reason="psql not installed")
@pytest.mark.parametrize("sslmode", ["prefer", "disable"])
async def test_psql(gateway_app, pg_db, sslmode):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    script = b"""
\\set ON_ERROR_STOP 1
CREATE TABLE items (id int PRIMARY KEY, name text);
BEGIN;
INSERT INTO items SELECT g, 'item-' || g FROM generate_series(1, 100) g;
COMMIT;
\\copy items FROM stdin
1000\tcopied
\\.
SELECT count(*), max(name) FROM items;
SELECT current_setting('application_name');
"""
    rc, out, err = await _run(PSQL, "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(app.pg_port), "-U", "alice",
                              "-d", f"dbname=app sslmode={sslmode}", "-f", "-", input=script)
    assert rc == 0, err
    lines = [x for x in out.splitlines() if x]
    assert "101|item-99" in lines
    assert "psql" in lines
    # an error reaches psql with its SQLSTATE
    rc, out, err = await _run(PSQL, "-X", "-v", "ON_ERROR_STOP=1", "-v", "VERBOSITY=verbose",
                              "-h", "127.0.0.1", "-p", str(app.pg_port), "-U", "alice", "app",
                              "-c", "SELECT 1/0")
    assert rc != 0 and "22012" in err


@pytest.mark.skipif(not os.access(PGBENCH, os.X_OK), reason="pgbench not installed")
async def test_pgbench(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 3}})
    common = ["-h", "127.0.0.1", "-p", str(app.pg_port), "-U", "alice"]
    rc, out, err = await _run(PGBENCH, "-i", "-s", "1", "-q", *common, "app", timeout=120)
    assert rc == 0, err
    rc, out, err = await _run(PGBENCH, "-c", "8", "-j", "2", "-t", "60", *common, "app", timeout=120)
    assert rc == 0, err
    assert "number of transactions actually processed: 480/480" in out
    rc, out, err = await _run(PGBENCH, "-S", "-C", "-c", "4", "-t", "20", *common, "app", timeout=120)
    assert rc == 0, err
    assert "number of transactions actually processed: 80/80" in out
    st = pool_stats(app)
    assert st["sv_active"] + st["sv_idle"] + st["sv_used"] + st["sv_login"] <= 3


async def test_asyncpg_timeout_cancels_through_gateway(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    conn = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    adm = await admin(pg, pg_db)
    try:
        t0 = time.monotonic()
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("SELECT pg_sleep(30)", timeout=0.5)
        # asyncpg sent a CancelRequest with the gateway-issued key: the backend stopped sleeping.
        async def none_sleeping() -> bool:
            return not any("pg_sleep" in (r["query"] or "") and r["state"] == "active"
                           for r in await backends(adm, pg_db))
        await eventually(none_sleeping, what="pg_sleep to be cancelled")
        assert await conn.fetchval("SELECT 9") == 9
        assert time.monotonic() - t0 < 20
    finally:
        await conn.close()
        await adm.close()


async def test_cancel_with_wrong_key_cancels_nothing(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    a = await RawClient.connect(app.pg_port)
    try:
        msgs = await a.login("alice", ALICE_PASSWORD, "app")
        key = [x for x in msgs if isinstance(x, m.BackendKeyData)][0]
        await a.send(m.query("SELECT pg_sleep(0.5)"))
        await eventually(lambda: pool_stats(app)["sv_active"] == 1, what="query to be linked")
        for pid, secret in ((key.process_id, key.secret_key ^ 1), (key.process_id ^ 1, key.secret_key)):
            c = await RawClient.connect(app.pg_port)
            await c.send(m.cancel_request(pid, secret))
            assert await c.read_to_eof() == []
            await c.close()
        msgs = await a.until(m.ReadyForQuery)
        assert not errors(msgs)
        # the right key cancels
        await a.send(m.query("SELECT pg_sleep(30)"))
        await eventually(lambda: pool_stats(app)["sv_active"] == 1, what="query to be linked")
        c = await RawClient.connect(app.pg_port)
        await c.send(m.cancel_request(key.process_id, key.secret_key))
        assert await c.read_to_eof() == []
        await c.close()
        msgs = await a.until(m.ReadyForQuery, timeout=10)
        assert [e.sqlstate for e in errors(msgs)] == ["57014"]
    finally:
        await a.close()


async def test_many_asyncpg_clients_small_pool(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 5}})
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")

    async def one(i: int) -> int:
        conn = await asyncpg.connect(dsn, statement_cache_size=0)
        try:
            async with conn.transaction():
                await conn.execute("SELECT pg_sleep(0.01)")
                return await conn.fetchval("SELECT $1::int", i)
        finally:
            await conn.close()

    results = await asyncio.gather(*(one(i) for i in range(200)))
    assert results == list(range(200))
    adm = await admin(pg, pg_db)
    try:
        assert len(await backends(adm, pg_db)) <= 5
    finally:
        await adm.close()
