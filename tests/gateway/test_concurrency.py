"""500 concurrent WebSocket sessions of the driver through a pool of 5 server connections.

A sampler polls ``pg_stat_activity`` directly on Postgres (as the superuser)
during the run, counting the backends of the gateway's upstream role: it must
never see more than ``pool_size`` and must see some (else the test proves
nothing).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import driver
from tests.gateway.conftest import ALICE_PASSWORD

pytestmark = pytest.mark.timeout(180)

SESSIONS = 500
POOL_SIZE = 5
ROLE = "wp_ws_conc"
ROLE_PASSWORD = "wp-ws-conc-pw"


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "password"])
async def test_500_ws_sessions_pool_of_5(gateway_app: Any, pg: Any, pg_db: str, auth_type: str) -> None:
    # A dedicated upstream role, so that nothing else in the run is counted.
    pg.psql(f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
            f"CREATE ROLE {ROLE} LOGIN PASSWORD '{ROLE_PASSWORD}'; END IF; END $$;", db="postgres")
    pg.psql(f'GRANT CONNECT ON DATABASE "{pg_db}" TO {ROLE};', db="postgres")
    pg.psql(f"CREATE TABLE conc (id int primary key, who text); GRANT ALL ON conc TO {ROLE};", db=pg_db)
    # 500 logins at once (SCRAM work is bounded by auth_max_concurrent): this test is about
    # the pool limit, so the login deadline is PgBouncer's 60 s, not the internet default.
    app = await gateway_app(auth_type=auth_type, client_login_timeout=60.0, databases={
        "app": {"dbname": pg_db, "user": ROLE, "password": ROLE_PASSWORD, "pool_size": POOL_SIZE}})
    dsn = f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app"
    pipeline = "password" if auth_type == "password" else None

    admin = await driver.connect(pg.dsn("wp_admin", pg.SUPERUSER_PASSWORD, pg_db), statement_cache_size=0)
    done = asyncio.Event()
    samples: list[int] = []

    async def sampler() -> None:
        while not done.is_set():
            samples.append(await admin.fetchval(
                "select count(*) from pg_stat_activity where usename = $1 and datname = current_database()",
                ROLE))

    async def session(i: int) -> int:
        conn = await driver.connect(dsn, statement_cache_size=0, pipeline_connect=pipeline, timeout=120)
        try:
            async with conn.transaction():
                await conn.execute("insert into conc values ($1, $2)", i, f"s{i}")
                n = await conn.fetchval("select count(*) from conc where id = $1", i)
                assert conn.is_in_transaction()
            return int(n)
        finally:
            await conn.close()

    sampling = asyncio.create_task(sampler())
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    try:
        results = await asyncio.gather(*(session(i) for i in range(SESSIONS)), return_exceptions=True)
    finally:
        done.set()
        await sampling
    elapsed = loop.time() - t0
    try:
        errors = [r for r in results if isinstance(r, BaseException)]
        assert not errors, f"{len(errors)} sessions failed, first: {errors[0]!r}"
        assert results == [1] * SESSIONS
        assert await admin.fetchval("select count(*) from conc") == SESSIONS
        assert samples, "the sampler took no sample"
        assert max(samples) > 0, "the sampler never saw a gateway backend: the test would be vacuous"
        assert max(samples) <= POOL_SIZE, f"saw {max(samples)} backends of {ROLE} (pool_size {POOL_SIZE})"
        busy = sum(1 for s in samples if s > 0)
        print(f"\n{auth_type}: {SESSIONS} sessions in {elapsed:.2f}s, {len(samples)} samples, "
              f"max backends {max(samples)}, samples with backends {busy}")
    finally:
        await admin.close()
