"""The test clusters themselves: auth methods, lifecycle, binary discovery."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import asyncpg
import pytest

from tests.pgcluster import PgCluster, find_pg_bin, pgserver_bin_dir

P = PgCluster
PASSWORD_ROLES = [
    (P.SUPERUSER, P.SUPERUSER_PASSWORD),
    (P.SCRAM_USER, P.SCRAM_PASSWORD),
    (P.MD5_USER, P.MD5_PASSWORD),
    (P.PLAIN_USER, P.PLAIN_PASSWORD),
]


def test_hba_methods_and_stored_passwords(pg: PgCluster) -> None:
    rules = pg.psql("SELECT user_name[1], auth_method FROM pg_hba_file_rules "
                    "WHERE type = 'host' AND error IS NULL ORDER BY line_number")
    assert rules.splitlines() == [
        "wp_admin|scram-sha-256", "scram_user|scram-sha-256", "md5_user|md5",
        "plain_user|password", "trust_user|trust", "all|scram-sha-256"]
    stored = dict(line.split("|") for line in pg.psql(
        "SELECT rolname, coalesce(left(rolpassword, 6), '') FROM pg_authid "
        "WHERE rolname IN ('wp_admin','scram_user','md5_user','plain_user','trust_user')").splitlines())
    assert stored == {"wp_admin": "SCRAM-", "scram_user": "SCRAM-", "md5_user": "md5b51",
                      "plain_user": "SCRAM-", "trust_user": ""}
    assert pg.psql("SHOW fsync; SHOW listen_addresses").splitlines() == ["off", "127.0.0.1"]


@pytest.mark.parametrize("user,password", PASSWORD_ROLES)
async def test_password_login_over_tcp(pg: PgCluster, user: str, password: str) -> None:
    conn = await asyncpg.connect(pg.dsn(user, password))
    try:
        assert await conn.fetchval("SELECT current_user") == user
        assert await conn.fetchval("SELECT inet_server_addr()::text") == "127.0.0.1/32"
        await conn.execute(f"CREATE TABLE t_{user} (x int); DROP TABLE t_{user}")
    finally:
        await conn.close()


@pytest.mark.parametrize("user,password", PASSWORD_ROLES)
async def test_wrong_password_fails(pg: PgCluster, user: str, password: str) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(pg.dsn(user, password + "x"))


async def test_trust_login_without_password(pg: PgCluster) -> None:
    conn = await asyncpg.connect(pg.dsn(P.TRUST_USER))
    try:
        assert await conn.fetchval("SELECT current_user") == P.TRUST_USER
    finally:
        await conn.close()


async def test_unknown_role_falls_to_scram_rule(pg: PgCluster) -> None:
    pg.psql("CREATE ROLE other_user LOGIN PASSWORD 'other_pw'", db="postgres")
    try:
        conn = await asyncpg.connect(pg.dsn("other_user", "other_pw"))
        await conn.close()
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(pg.dsn("other_user", "nope"))
    finally:
        pg.psql("DROP ROLE other_user", db="postgres")


async def test_pg_db_is_fresh_and_usable(pg: PgCluster, pg_db: str) -> None:
    assert pg.psql("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace",
                   db=pg_db) == "0"
    assert pg.psql(f"SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '{pg_db}'",
                   db="postgres") == P.SUPERUSER
    conn = await asyncpg.connect(pg.dsn(P.MD5_USER, P.MD5_PASSWORD, pg_db))
    try:
        await conn.execute("CREATE TABLE t (x int)")
    finally:
        await conn.close()


async def test_drop_database_with_open_connection(pg: PgCluster) -> None:
    pg.create_database("wp_drop_me")
    conn = await asyncpg.connect(pg.dsn(P.PLAIN_USER, P.PLAIN_PASSWORD, "wp_drop_me"))
    try:
        pg.drop_database("wp_drop_me")
        assert pg.psql("SELECT count(*) FROM pg_database WHERE datname = 'wp_drop_me'") == "0"
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError)):
            await conn.fetchval("SELECT 1")
    finally:
        conn.terminate()


def test_settings_and_paths(pg_factory: Callable[..., PgCluster]) -> None:
    c = pg_factory({"max_connections": 7, "cluster_name": "it's"})
    assert c.psql("SHOW max_connections; SHOW cluster_name").splitlines() == ["7", "it's"]
    assert c.socket_dir == c.datadir.parent
    assert (c.socket_dir / f".s.PGSQL.{c.port}").exists()
    assert c.dsn("md5_user", "p@ss/w", "db") == f"postgresql://md5_user:p%40ss%2Fw@127.0.0.1:{c.port}/db"


async def test_restart(pg_factory: Callable[..., PgCluster]) -> None:
    c = pg_factory()
    started = c.psql("SELECT pg_postmaster_start_time()")
    conn = await asyncpg.connect(c.dsn(P.SCRAM_USER, P.SCRAM_PASSWORD))
    c.restart()
    assert c.is_running()
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                        ConnectionError, asyncpg.AdminShutdownError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    assert c.psql("SELECT pg_postmaster_start_time()") != started
    conn = await asyncpg.connect(c.dsn(P.SCRAM_USER, P.SCRAM_PASSWORD))
    assert await conn.fetchval("SELECT 2") == 2
    await conn.close()
    c.stop()
    assert not c.is_running()
    c.stop()  # idempotent
    c.start()
    assert c.psql("SELECT 3") == "3"


async def test_kill_then_start(pg_factory: Callable[..., PgCluster]) -> None:
    c = pg_factory()
    c.psql("CREATE TABLE survives (x int); INSERT INTO survives VALUES (1); CHECKPOINT")
    conn = await asyncpg.connect(c.dsn(P.TRUST_USER))
    pid = int((c.datadir / "postmaster.pid").read_text().split()[0])
    c.kill()
    assert not c.is_running()
    with pytest.raises((asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError)):
        await conn.fetchval("SELECT 1")
    conn.terminate()
    with pytest.raises(OSError):
        await asyncpg.connect(c.dsn(P.TRUST_USER), timeout=5)
    c.start()
    assert c.is_running()
    assert int((c.datadir / "postmaster.pid").read_text().split()[0]) != pid
    assert c.psql("SELECT x FROM survives") == "1"
    assert "not properly shut down" in (c.logfile.read_text())


def test_cleanup_removes_everything() -> None:
    with PgCluster() as c:
        base = c.datadir.parent
        assert c.is_running()
    assert not base.exists()
    assert not c.is_running()


def test_pgserver_bin_dir() -> None:
    d = pgserver_bin_dir()
    assert d is not None
    assert os.access(d / "postgres", os.X_OK)


def test_find_pg_bin_falls_back_to_pgserver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PG_BIN", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    d = find_pg_bin()
    assert (d / "postgres").exists()
    assert d != Path("/usr/local/bin")
    # The fallback binaries really work (as root: runnable by the postgres user).
    monkeypatch.setenv("PG_BIN", str(d))
    with PgCluster() as c:
        assert c.bin_dir == d
        assert c.psql("SELECT current_setting('server_version_num')::int >= 120000") == "t"


def test_pg_bin_env_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    d = pgserver_bin_dir()
    assert d is not None
    monkeypatch.setenv("PG_BIN", str(d))
    assert find_pg_bin() == d
