"""The real ``@neondatabase/serverless`` driver (Node, npm) through the gateway's /v2.

Runs tests/js/neon_ws.mjs in a subprocess (node is present on every machine of
this project: no skip) and asserts on the JSON it prints.
"""

from __future__ import annotations

from typing import Any

import pytest

import driver
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.node_helpers import run_node_json

pytestmark = pytest.mark.timeout(120)



async def run_neon(gateway_port: int, connection_string: str, pipeline: str) -> dict[str, Any]:
    return await run_node_json("neon_ws.mjs", f"127.0.0.1:{gateway_port}", connection_string, pipeline)


@pytest.mark.parametrize("auth_type,pipeline,user,password", [
    ("scram-sha-256", "false", "bob", BOB_PASSWORD),    # SCRAM, verifier in the config
    ("scram-sha-256", "false", "alice", ALICE_PASSWORD),  # SCRAM, plaintext in the config
    ("password", "password", "alice", ALICE_PASSWORD),  # pipelineConnect: "password"
])
async def test_neon_serverless_driver(gateway_app: Any, pg: Any, pg_db: str, auth_type: str, pipeline: str,
                                      user: str, password: str) -> None:
    pg.psql("CREATE TABLE neon_rb (x int); GRANT ALL ON neon_rb TO PUBLIC;", db=pg_db)
    app = await gateway_app(auth_type=auth_type, databases={"app": {"dbname": pg_db, "pool_size": 2}})
    # host:port in the connection string are only the `address` hint: never dialled by the gateway.
    cs = f"postgresql://{user}:{password}@db.invalid:5432/app"
    out = await run_neon(app.http_port, cs, pipeline)
    assert "fatal" not in out, out
    assert out["typed"] == {"i": 42, "t": "héllo", "b": "000102ff", "ts": "2024-01-02T03:04:05.678Z",
                            "j": {"a": [1, 2]}}
    assert out["rollback"] == {"inside": 1, "after": 0}
    assert out["error"]["code"] == "42P01" and "no_such_table_xyz" in out["error"]["message"]
    assert out["concurrent"] == [2, 4, 6, 8, 10]
    # the rollback really left nothing behind
    admin = await driver.connect(pg.dsn("wp_admin", pg.SUPERUSER_PASSWORD, pg_db), statement_cache_size=0)
    try:
        assert await admin.fetchval("select count(*) from neon_rb") == 0
    finally:
        await admin.close()


async def test_neon_wrong_password_gets_28P01(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(auth_type="password", databases={"app": {"dbname": pg_db}})
    out = await run_neon(app.http_port, "postgresql://alice:wrong@db.invalid:5432/app", "password")
    assert out.get("fatal", {}).get("code") == "28P01", out


async def test_neon_pipelined_password_against_scram_fails_cleanly(gateway_app: Any, pg_db: str) -> None:
    """The Neon driver's own limitation (documented): pipelineConnect "password"
    against a SCRAM gateway gets an error, not a hang."""
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    out = await run_neon(app.http_port, f"postgresql://alice:{ALICE_PASSWORD}@db.invalid:5432/app", "password")
    assert out.get("fatal", {}).get("code") in ("08P01", "28P01"), out
