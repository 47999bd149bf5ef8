"""``workers = N`` (gateway/workers.py, gateway/cluster.py): N processes, one pool budget.

The proof of issue 14: ``workers = 2`` with ``pool_size = 5``, 500 WebSocket
sessions and ``pgbench`` through ``pg_listen`` at once, and ``pg_stat_activity``
(polled all along) never shows more than 5 backends of the pool's database.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Any

import asyncpg
import pytest

import driver
from gateway.cli import main as cli_main
from gateway.config import ConfigError, parse_config
from gateway.workers import split, worker_config
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import admin, eventually
from tests.gateway.served import Served, http_get
from tests.gateway.test_admin import console, show
from tests.pgcluster import PgCluster

PGBENCH = shutil.which("pgbench") or "/usr/bin/pgbench"


def _metric(text: str, name: str, **labels: str) -> dict[str, float]:
    """``{worker: value}`` of one sample family filtered by labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        lab = dict(re.findall(r'(\w+)="([^"]*)"', line[:line.rindex("}")]))
        if all(lab.get(k) == v for k, v in labels.items()):
            out[lab["worker"]] = out.get(lab["worker"], 0.0) + float(line.rsplit(" ", 1)[1])
    return out


def test_split_and_worker_config_add_up() -> None:
    assert split(5, 2) == [3, 2] and split(7, 3) == [3, 2, 2] and split(0, 2) == [0, 0]
    cfg = parse_config({"gateway": {"workers": 3, "default_pool_size": 7, "min_pool_size": 4,
                                    "reserve_pool_size": 2, "max_client_conn": 100, "pid_file": "/tmp/x.pid"},
                        "databases": {"app": {"user": "u"}, "big": {"user": "u", "pool_size": 10}},
                        "users": {"alice": {"password": "pw"}}})
    shares = [worker_config(cfg, i, 3) for i in range(3)]
    for name, total in (("app", 7), ("big", 10)):
        assert sum(w.databases[name].effective_pool_size(w.gateway) for w in shares) == total
        assert sum(w.databases[name].effective_reserve_pool_size(w.gateway) for w in shares) == 2
        for w in shares:
            db = w.databases[name]
            assert db.effective_min_pool_size(w.gateway) <= db.effective_pool_size(w.gateway)
    assert sum(w.gateway.max_client_conn for w in shares) == 100
    assert all(w.gateway.pid_file is None for w in shares)  # only the supervisor writes it


def test_check_prints_the_per_worker_budget(tmp_path: Any, capsys: Any) -> None:
    p = tmp_path / "w.toml"
    p.write_text('[gateway]\nworkers = 2\ndefault_pool_size = 5\nreserve_pool_size = 1\n'
                 '[databases.app]\nuser = "u"\n[users.alice]\npassword = "pw"\n')
    assert cli_main(["check", "--config", str(p)]) == 0
    out = capsys.readouterr().out
    assert "databases.app: pool_size 5 = 3 + 2; reserve_pool_size 1 = 1 + 0; at most 6 servers" in out
    p.write_text('[gateway]\nworkers = 4\n[databases.app]\nuser = "u"\npool_size = 3\n[users.alice]\npassword = "pw"\n')
    assert cli_main(["check", "--config", str(p)]) == 2
    assert "databases.app.pool_size: pool size 3 is smaller than workers = 4" in capsys.readouterr().err
    p.write_text('[gateway]\nworkers = "auto"\n[databases.app]\nuser = "u"\npool_size = 300\n'
                 '[users.alice]\npassword = "pw"\n')
    assert cli_main(["check", "--config", str(p)]) == 0
    assert re.search(r"^workers = [1-9]\d*$", capsys.readouterr().out, re.M)


def test_advertise_url_and_cluster_secret_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    def cfg(**g: Any) -> Any:
        return parse_config({"gateway": g, "databases": {"app": {"user": "u"}}, "users": {"a": {"password": "p"}}})
    monkeypatch.setenv("WP_TEST_IP", "10.9.8.7")
    monkeypatch.setenv("WP_TEST_SECRET", "s" * 20)
    c = cfg(advertise_url="http://${WP_TEST_IP}:8432/", cluster_secret="${WP_TEST_SECRET}")
    assert c.gateway.advertise_url == "http://10.9.8.7:8432" and c.gateway.cluster_secret == "s" * 20
    for bad, msg in (({"advertise_url": "http://h:1"}, "cluster_secret: required with advertise_url"),
                     ({"advertise_url": "ftp://h:1", "cluster_secret": "x" * 16}, "advertise_url: invalid URL"),
                     ({"advertise_url": "http://h", "cluster_secret": "x" * 16}, "advertise_url: invalid URL"),
                     ({"advertise_url": "http://$WP_UNSET_VAR:1", "cluster_secret": "x" * 16}, "advertise_url"),
                     ({"cluster_secret": "short"}, "at least 16 characters"),
                     ({"cluster_secret": "$WP_UNSET_VAR"}, "WP_UNSET_VAR is not set"),
                     ({"workers": 0}, "workers: must be >= 1"), ({"workers": "many"}, "workers: expected an integer")):
        with pytest.raises(ConfigError) as e:
            cfg(**bad)
        assert msg in str(e.value), (bad, str(e.value))


@pytest.mark.skipif(not os.access(PGBENCH, os.X_OK), reason="pgbench not installed")
async def test_two_workers_keep_the_pool_budget_under_ws_and_pgbench(pg: PgCluster, pg_db: str) -> None:
    env = dict(os.environ, PGPASSWORD=PgCluster.SUPERUSER_PASSWORD)
    subprocess.run([PGBENCH, "-i", "-s", "1", "-q", "-h", pg.host, "-p", str(pg.port), "-U", PgCluster.SUPERUSER,
                    pg_db], check=True, env=env, capture_output=True)
    pg.psql("GRANT SELECT, UPDATE, INSERT ON ALL TABLES IN SCHEMA public TO scram_user", db=pg_db)
    with Served(pg, pg_db, {"workers": 2, "default_pool_size": 5, "query_wait_timeout": 60}) as gw:
        await gw.wait_ready()
        watcher = await admin(pg)
        peak = 0
        stop = asyncio.Event()

        async def poll() -> None:
            nonlocal peak
            while not stop.is_set():
                n = await watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE datname = $1 "
                                           "AND backend_type = 'client backend'", pg_db)
                peak = max(peak, n)
                await asyncio.sleep(0.01)

        async def pgbench() -> str:
            proc = await asyncio.create_subprocess_exec(
                PGBENCH, "-n", "-c", "8", "-j", "2", "-t", "150", "-h", "127.0.0.1", "-p", str(gw.pg_port),
                "-U", "alice", "app", env=dict(os.environ, PGPASSWORD=ALICE_PASSWORD),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode()
            return out.decode()

        conns: list[Any] = []

        async def ws_session(i: int) -> int:
            c = await driver.connect(gw.ws_dsn())
            conns.append(c)
            return int(await c.fetchval("SELECT $1::int + count(*)::int FROM pgbench_branches", i))

        poller = asyncio.create_task(poll())
        try:
            bench = asyncio.create_task(pgbench())
            got: list[int] = []
            for start in range(0, 500, 50):  # 500 sessions, all kept open until the end
                got += await asyncio.gather(*(ws_session(i) for i in range(start, start + 50)))
            assert got == [i + 1 for i in range(500)]
            # every session is still usable while the other 499 and pgbench hold the pool
            assert await asyncio.gather(*(c.fetchval("SELECT 1") for c in conns)) == [1] * 500
            out = await bench
            assert "number of transactions actually processed: 1200/1200" in out, out
        finally:
            stop.set()
            await poller
            await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
            await watcher.close()
        assert 1 <= peak <= 5, peak
        text = await gw.metrics()
        logins = _metric(text, "wirepool_logins_total")
        assert set(logins) == {"0", "1"} and all(v > 0 for v in logins.values()), logins  # both workers served
        sizes = _metric(text, "wirepool_pools_pool_size", database="app")
        assert sizes == {"0": 3.0, "1": 2.0}, sizes


async def test_worker_restart_reload_and_admin_console(pg: PgCluster, pg_db: str) -> None:
    with Served(pg, pg_db, {"workers": 2, "default_pool_size": 4}) as gw:
        await gw.wait_ready()
        # the admin console shows both workers' pools
        cols, rows = await show(gw.pg_port, "SHOW POOLS")
        names = [c for c, _ in cols]
        assert names[-1] == "worker" and names[:2] == ["database", "user"], names
        assert sorted((r[0], r[-1]) for r in rows if r[0] == "app") == [("app", "0"), ("app", "1")]
        async with await console(gw.pg_port) as conn:  # a command runs on every worker
            await conn.execute("PAUSE app")
            _, rows = await show(gw.pg_port, "SHOW POOLS")
            assert [r[names.index("paused")] for r in rows if r[0] == "app"] == [1, 1]
            await conn.execute("RESUME app")
            _, rows = await show(gw.pg_port, "SHOW POOLS")
            assert [r[names.index("paused")] for r in rows if r[0] == "app"] == [0, 0]
        # /status: one section per worker, behind the admin's credentials
        status, body = await http_get(gw.http_port, "/status")
        assert status == 401
        status, body = await http_get(gw.http_port, "/status",
                                      {"authorization": "Basic " + base64.b64encode(b"alice:" + ALICE_PASSWORD.encode()).decode()})
        assert status == 200 and b"worker 0</h1>" in body and b"worker 1</h1>" in body, body[:300]
        # SIGHUP reaches every worker, each applies its share of the new size
        text = gw.config.read_text().replace("default_pool_size = 4", "default_pool_size = 6")
        gw.config.write_text(text)
        gw.signal(signal.SIGHUP)

        async def resized() -> bool:
            return _metric(await gw.metrics(), "wirepool_pools_pool_size", database="app") == {"0": 3.0, "1": 3.0}
        await eventually(resized, timeout=20, what="both workers to reload")
        # a killed worker is restarted
        pids = re.findall(r"worker (\d)/2 starting \(pid (\d+)\)", gw.log_text())
        assert len(pids) == 2, gw.log_text()
        os.kill(int(dict(pids)["1"]), signal.SIGKILL)
        await eventually(lambda: len(re.findall(r"worker 1/2 starting", gw.log_text())) == 2, timeout=20,
                         what="worker 1 to restart")
        await gw.wait_ready()
        c = await driver.connect(gw.ws_dsn())
        assert await c.fetchval("SELECT 41 + 1") == 42
        await c.close()
        # a CancelRequest lands on either worker (a new connection): the other passes it on
        pgc = await asyncpg.connect(host="127.0.0.1", port=gw.pg_port, user="alice", password=ALICE_PASSWORD,
                                    database="app", statement_cache_size=0)
        try:
            for _ in range(4):
                t0 = time.monotonic()
                with pytest.raises(asyncio.TimeoutError):
                    await pgc.execute("SELECT pg_sleep(30)", timeout=0.3)
                assert await pgc.fetchval("SELECT 7") == 7  # the sleep was cancelled, not waited out
                assert time.monotonic() - t0 < 15
        finally:
            await pgc.close()
    assert gw.proc.returncode == 0


async def test_workers_on_an_inherited_socket(pg: PgCluster, pg_db: str) -> None:
    """Without SO_REUSEPORT (macOS, BSD; forced here): the workers accept on the supervisor's socket."""
    with Served(pg, pg_db, {"workers": 2, "default_pool_size": 2}, env={"WIREPOOL_REUSEPORT": "0"}) as gw:
        await gw.wait_ready()
        assert "shared listening socket" in gw.log_text()
        conns = [await driver.connect(gw.ws_dsn()) for _ in range(6)]
        try:
            assert await asyncio.gather(*(c.fetchval("SELECT $1::int", i) for i, c in enumerate(conns))) == list(range(6))
        finally:
            await asyncio.gather(*(c.close() for c in conns))
        pgc = await asyncpg.connect(host="127.0.0.1", port=gw.pg_port, user="alice", password=ALICE_PASSWORD,
                                    database="app", statement_cache_size=0)
        assert await pgc.fetchval("SELECT 5") == 5
        await pgc.close()
    assert gw.proc.returncode == 0
