"""Upstream SCRAM logins derive the password's keys once per salt (gateway/upstream_scram.py)."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from driver.protocol import auth as pg_auth
from gateway import upstream_scram
from tests.gateway.conftest import ALICE_PASSWORD

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def pbkdf2_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every PBKDF2 the gateway runs, (password, salt) (the real function still runs;
    client logins against a plaintext [users] password run one each, too)."""
    calls: list[tuple[bytes, bytes]] = []
    real = pg_auth.pbkdf2_sha256

    def counting(password: bytes, salt: bytes, iterations: int) -> bytes:
        calls.append((password, salt))
        return real(password, salt, iterations)

    monkeypatch.setattr(pg_auth, "pbkdf2_sha256", counting)
    return calls


async def _hold_transactions(app: Any, db: str, n: int) -> set[int]:
    """n clients each in a transaction at once: n server connections; their backend pids."""
    conns = [await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, db), statement_cache_size=0)
             for _ in range(n)]
    try:
        trs = [c.transaction() for c in conns]
        for tr in trs:
            await tr.start()
        pids = set(await asyncio.gather(*(c.fetchval("SELECT pg_backend_pid()") for c in conns)))
        for tr in trs:
            await tr.commit()
        return pids
    finally:
        for c in conns:
            await c.close()


async def test_keys_derived_once_per_salt(gateway_app: Any, pg: Any, pg_db: str,
                                          pbkdf2_calls: list[tuple[bytes, bytes]]) -> None:
    role = f"wp_scram_cache_{uuid.uuid4().hex[:8]}"
    password = f"pw-{uuid.uuid4().hex}"
    pg.psql(f"SET password_encryption = 'scram-sha-256'; CREATE ROLE {role} LOGIN PASSWORD '{password}';"
            f"GRANT ALL ON DATABASE {pg_db} TO {role};", db="postgres")
    upstream = [c for c in pbkdf2_calls if c[0] == password.encode()]  # a view, refreshed below

    def derived() -> int:
        upstream[:] = [c for c in pbkdf2_calls if c[0] == password.encode()]
        return len(upstream)
    try:
        entry = {"dbname": pg_db, "user": role, "password": password, "pool_size": 3}
        app = await gateway_app(databases={"app": entry, "app2": dict(entry)})
        assert len(await _hold_transactions(app, "app", 3)) == 3  # three server logins...
        assert derived() == 1                                     # ...one PBKDF2
        assert len(await _hold_transactions(app, "app2", 2)) == 2  # another pool, same role and salt
        assert derived() == 1
        # The role's password set again: a new salt, so new keys (and the logins work).
        pg.psql(f"SET password_encryption = 'scram-sha-256'; ALTER ROLE {role} PASSWORD '{password}';",
                db="postgres")
        app3 = await gateway_app(databases={"app": entry})
        assert len(await _hold_transactions(app3, "app", 2)) == 2
        assert derived() == 2 and upstream[0][1] != upstream[1][1]
        assert upstream_scram.cache_size() >= 2
        # A wrong configured password still fails the upstream login (a clear error, no hang).
        bad = await gateway_app(databases={"app": dict(entry, password="not-the-password")})
        with pytest.raises(asyncpg.PostgresError):
            await asyncpg.connect(bad.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0,
                                  timeout=20)
    finally:
        pg.psql(f"DROP OWNED BY {role} CASCADE; DROP ROLE IF EXISTS {role};", db=pg_db)


def test_malformed_server_first_falls_back_to_the_drivers_error() -> None:
    client = upstream_scram.scram_client("pw", "u")
    assert client.client_first().startswith(b"n,,n=u,r=")
    with pytest.raises(pg_auth.AuthenticationError):
        client.handle_server_first(b"r=x,s=!!!,i=4096")
