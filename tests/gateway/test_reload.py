"""Live reload (gateway/reload.py) under load: pool sizes 5 -> 20 -> 3, a user
added and removed, by the admin RELOAD (in-process) and by SIGHUP through
`wirepool reload` (a real `wirepool serve` process).  Zero failed
transactions for unchanged users; pg_stat_activity follows; an invalid file
changes nothing."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from gateway.config import load_config
from tests.gateway import served
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import admin, backends, eventually
from tests.pgcluster import PgCluster, free_port

DAVE_PASSWORD = "dave-secret"


def write_config(path: Path, pg: PgCluster, dbname: str, *, size: int, dave: bool, pg_port: int = 0,
                 pid_file: Path | None = None, broken: bool = False) -> None:
    gateway: dict[str, Any] = {"listen": "127.0.0.1:0", "pg_listen": f"127.0.0.1:{pg_port}",
                               "default_pool_size": "lots" if broken else size, "query_wait_timeout": 60,
                               "shutdown_timeout": 5, "admin_users": ["alice"]}
    if pid_file:
        gateway["pid_file"] = str(pid_file)
    users = {"alice": {"password": ALICE_PASSWORD}}
    if dave:
        users["dave"] = {"password": DAVE_PASSWORD}
    served.write_config(path, pg, dbname, gateway, users=users)


class Load:
    """``n`` clients of one user running short transactions until stopped."""

    def __init__(self, port: int, user: str, password: str, n: int) -> None:
        self.port, self.user, self.password, self.n = port, user, password, n
        self.ok = 0
        self.failures: list[str] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    async def start(self) -> None:
        conns = await asyncio.gather(*(asyncpg.connect(host="127.0.0.1", port=self.port, user=self.user,
                                                       password=self.password, database="app")
                                       for _ in range(self.n)))
        self.tasks = [asyncio.ensure_future(self._run(c)) for c in conns]

    async def _run(self, conn: asyncpg.Connection) -> None:
        try:
            while not self.stop.is_set():
                try:
                    async with conn.transaction():
                        await conn.execute("SELECT pg_sleep(0.002)")
                        await conn.fetchval("SELECT 1")
                    self.ok += 1
                except Exception as exc:  # counted, not raised: the proof is the count
                    self.failures.append(repr(exc))
                    return
        finally:
            await conn.close()

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)


async def admin_cmd(port: int, sql: str) -> str:
    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, dbname="pgbouncer",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as conn:
        notices: list[str] = []
        conn.add_notice_handler(lambda d: notices.append(d.message_primary or ""))
        await conn.execute(sql)
        return " ".join(notices)


async def _n_backends(pg: PgCluster, dbname: str) -> int:
    conn = await admin(pg)
    try:
        return len(await backends(conn, dbname))
    finally:
        await conn.close()


async def _steps(pg: PgCluster, pg_db: str, cfg_path: Path, port: int, reload: Any, **kw: Any) -> None:
    load = Load(port, "alice", ALICE_PASSWORD, 200)
    await load.start()
    await eventually(lambda: load.ok > 100, what="load running")
    assert await _n_backends(pg, pg_db) <= 5
    # 5 -> 20, user dave added
    write_config(cfg_path, pg, pg_db, size=20, dave=True, pg_port=port, **kw)
    await reload()
    await eventually(lambda: _more_than(pg, pg_db, 5), timeout=20, what="pool grew past 5")
    dave = await asyncpg.connect(host="127.0.0.1", port=port, user="dave", password=DAVE_PASSWORD, database="app")
    tx = dave.transaction()
    await tx.start()
    await dave.execute("SELECT 1")
    # 20 -> 3, dave removed while inside a transaction: it finishes, then the session ends
    write_config(cfg_path, pg, pg_db, size=3, dave=False, pg_port=port, **kw)
    await reload()
    await eventually(lambda: _at_most(pg, pg_db, 3 + 1), timeout=20, what="pool shrank to 3 (+dave's)")
    assert await dave.fetchval("SELECT 2") == 2  # still inside its transaction
    await tx.commit()
    await eventually(lambda: dave.is_closed(), timeout=10, what="removed user's session ended")
    with pytest.raises(asyncpg.PostgresError):
        await asyncpg.connect(host="127.0.0.1", port=port, user="dave", password=DAVE_PASSWORD, database="app")
    await eventually(lambda: _at_most(pg, pg_db, 3), timeout=20, what="pool at 3")
    # an invalid file changes nothing
    write_config(cfg_path, pg, pg_db, size=3, dave=False, pg_port=port, broken=True, **kw)
    await reload(expect_error=True)
    before = load.ok
    await eventually(lambda: load.ok > before + 50, what="load continues")
    assert await _n_backends(pg, pg_db) <= 3
    await load.finish()
    assert load.failures == [], load.failures[:5]
    assert load.ok > 200


async def _more_than(pg: PgCluster, dbname: str, n: int) -> bool:
    return await _n_backends(pg, dbname) > n


async def _at_most(pg: PgCluster, dbname: str, n: int) -> bool:
    return await _n_backends(pg, dbname) <= n


async def test_reload_by_admin_command_under_load(gateway_app, pg, pg_db, tmp_path):
    cfg_path = tmp_path / "wirepool.toml"
    write_config(cfg_path, pg, pg_db, size=5, dave=False)
    app = await gateway_app(config=load_config(cfg_path))
    app.gateway.config_path = str(cfg_path)
    port = app.pg_port

    async def reload(expect_error: bool = False) -> None:
        if expect_error:
            with pytest.raises(psycopg.Error, match="gateway.default_pool_size"):
                await admin_cmd(port, "RELOAD")
            assert app.gateway.settings.default_pool_size == 3
        else:
            notice = await admin_cmd(port, "RELOAD")
            assert "default_pool_size" in notice, notice

    # keep the port stable across rewrites of the file (listen changes need a restart anyway)
    await _steps(pg, pg_db, cfg_path, port, reload)


async def test_reload_by_sighup_wirepool_reload(pg, pg_db, tmp_path):
    cfg_path = tmp_path / "wirepool.toml"
    pid_file = tmp_path / "wirepool.pid"
    port = free_port()
    write_config(cfg_path, pg, pg_db, size=5, dave=False, pg_port=port, pid_file=pid_file)
    gw = served.Served(pg, pg_db, config=cfg_path, directory=tmp_path, stop_timeout=15)
    proc = gw.proc
    try:
        await gw.wait_ready(timeout=30)

        async def reload(expect_error: bool = False) -> None:
            mark = gw.log_text().count("reload:")
            r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway.cli", "reload",
                                                         "--config", str(cfg_path)] if not expect_error else
                                        [sys.executable, "-c", f"import os,signal; os.kill({proc.pid}, signal.SIGHUP)"],
                                        env=served.cli_env(), capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            await eventually(lambda: gw.log_text().count("reload:") > mark, what="reload logged")
            text = gw.log_text()
            if expect_error:
                assert "gateway.default_pool_size" in text and "keeping the running configuration" in text

        await _steps(pg, pg_db, cfg_path, port, reload, pid_file=pid_file)
    finally:
        gw.stop()
    assert not pid_file.exists()
