"""Zero-downtime restart (gateway/takeover.py, docs/takeover.md): a new
``wirepool serve`` started by ``wirepool takeover`` (the systemd ExecReload)
takes over the listening sockets of a running one while 200 clients run short
transactions over TCP (asyncpg) and WebSocket (the driver), plus driver
clients over HTTP ``/pg`` whose transactions span the handover.  The load
generator counts: zero failed transactions, zero refused connections."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import asyncpg
import psutil
import pytest

import driver
from tests.gateway import served
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import eventually
from tests.pgcluster import PgCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, pg: PgCluster, dbname: str, http_port: int, pg_port: int, *, shutdown_timeout: float = 10,
                 pool_size: int = 20) -> None:
    d = path.parent
    served.write_config(path, pg, dbname, {
        "listen": f"127.0.0.1:{http_port}", "pg_listen": f"127.0.0.1:{pg_port}", "auth_type": "password",
        "default_pool_size": pool_size, "query_wait_timeout": 60, "shutdown_timeout": shutdown_timeout,
        "admin_users": ["alice"], "pid_file": str(d / "wirepool.pid"), "control_socket": str(d / "wirepool.ctl")})


class Load:
    """Clients that connect, run a few short transactions, disconnect, again."""

    def __init__(self) -> None:
        self.ok = 0
        self.connects = 0
        self.failures: list[str] = []
        self.refused: list[str] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    def add(self, n: int, connect: Callable[[], Awaitable[Any]], per_conn: int = 3) -> None:
        self.tasks += [asyncio.ensure_future(self._client(connect, per_conn)) for _ in range(n)]

    async def _client(self, connect: Callable[[], Awaitable[Any]], per_conn: int) -> None:
        while not self.stop.is_set():
            try:
                conn = await connect()
            except (ConnectionRefusedError, ConnectionResetError) as exc:
                self.refused.append(repr(exc))
                continue
            except Exception as exc:  # counted: the proof is the count
                self.failures.append("connect: " + repr(exc))
                continue
            self.connects += 1
            try:
                for _ in range(per_conn):
                    async with conn.transaction():
                        await conn.execute("SELECT pg_sleep(0.005)")
                        assert await conn.fetchval("SELECT 1") == 1
                    self.ok += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            finally:
                try:
                    await conn.close()
                except Exception as exc:
                    self.failures.append("close: " + repr(exc))

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 60)


def _serve(cfg: Path, log: Path, *args: str, **env_extra: str) -> subprocess.Popen[bytes]:
    return served.serve_cli(cfg, log, *args, env=env_extra)


def _pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _stop_pid(pid: int) -> None:
    try:
        p = psutil.Process(pid)
        p.send_signal(signal.SIGTERM)
        p.wait(20)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:  # pragma: no cover - a hang: fail loudly, leave nothing behind
        p.kill()
        raise


async def test_takeover_under_load_tcp_ws_http(pg, pg_db, tmp_path):
    http_port, pg_port = free_port(), free_port()
    cfg = tmp_path / "wirepool.toml"
    write_config(cfg, pg, pg_db, http_port, pg_port, shutdown_timeout=60)
    log = tmp_path / "serve.log"
    # systemd's Type=notify: both processes report to NOTIFY_SOCKET (deploy/systemd/wirepool.service)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify"))
    old = _serve(cfg, log, "serve", NOTIFY_SOCKET=str(tmp_path / "notify"))
    pid_file = tmp_path / "wirepool.pid"
    new_pid: int | None = None
    load = Load()
    try:
        await eventually(lambda: _pid(pid_file) == old.pid and (tmp_path / "wirepool.ctl").exists(),
                         timeout=30, what="old gateway up")
        load.add(100, lambda: asyncpg.connect(host="127.0.0.1", port=pg_port, user="alice",
                                              password=ALICE_PASSWORD, database="app"), per_conn=2)
        load.add(100, lambda: driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{http_port}/v2?dbname=app"),
                 per_conn=2)
        # HTTP /pg sessions: BEGIN .. COMMIT is several requests, each on a new
        # connection once the old process answers `connection: close`.
        load.add(10, lambda: driver.connect(f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{http_port}/app"), per_conn=3)
        await eventually(lambda: load.ok > 200, timeout=60, what="load running on the old gateway")
        before = load.ok
        # the systemd ExecReload: returns once the new process serves
        env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(tmp_path / "notify"))
        with open(tmp_path / "takeover.log", "wb") as out:
            r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway.cli", "takeover",
                                                         "--config", str(cfg)],
                                        stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), timeout=120)
        assert r.returncode == 0, (tmp_path / "takeover.log").read_text() + log.read_text()[-3000:]
        new_pid = _pid(pid_file)
        assert new_pid is not None and new_pid != old.pid
        # the old process finishes its clients and exits by itself, within shutdown_timeout
        t0 = time.monotonic()
        code = await asyncio.to_thread(old.wait, 70)
        assert code == 0, log.read_text()[-3000:]
        assert time.monotonic() - t0 < 60 + 3
        after_old = load.ok
        await eventually(lambda: load.ok > after_old + 150, timeout=60, what="load running on the new gateway")
        assert psutil.pid_exists(new_pid)
        await load.finish()
        text = log.read_text()
        # the old process accepted nothing after the handover, and its clients left by themselves
        at_handover = re.search(r"handed over.*\(accepted: (\d+) http, (\d+) tcp;", text)
        at_end = re.search(r"TAKEOVER: every client left.*\(accepted: (\d+) http, (\d+) tcp;", text)
        assert at_handover and at_end, text[-3000:]
        assert at_handover.groups() == at_end.groups()
        assert "takeover: received" in (tmp_path / "takeover.log").read_text()
        print(f"takeover under load: {load.ok} transactions, {load.connects} connections, "
              f"{len(load.failures)} failed, {len(load.refused)} refused")
        assert load.failures == [], load.failures[:5]
        assert load.refused == [], load.refused[:5]
        assert load.ok > before + 300
        notify.setblocking(False)
        states = []
        while True:
            try:
                states.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        assert states == [f"MAINPID={old.pid}\nREADY=1", f"MAINPID={new_pid}\nREADY=1"], states
    finally:
        notify.close()
        if not load.stop.is_set():
            load.stop.set()
            await asyncio.wait(load.tasks, timeout=30)
        if old.poll() is None:
            old.kill()
            old.wait()
        new_pid = new_pid or _pid(pid_file)
        if new_pid is not None and new_pid != old.pid:
            _stop_pid(new_pid)
    assert not pid_file.exists()
    assert not (tmp_path / "wirepool.ctl").exists()


async def test_takeover_refused_cases_leave_the_running_gateway_alone(pg, pg_db, tmp_path):
    """No running gateway: --takeover fails clearly.  A second plain `serve`
    on the same control_socket refuses to start.  `wirepool takeover` with a
    broken file fails before touching the running one."""
    http_port, pg_port = free_port(), free_port()
    cfg = tmp_path / "wirepool.toml"
    write_config(cfg, pg, pg_db, http_port, pg_port)
    log = tmp_path / "serve.log"
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--takeover", "--config", str(cfg)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert r.returncode == 1 and "no running gateway answers on control_socket" in r.stderr, r.stderr
    workers = tmp_path / "workers.toml"  # several SO_REUSEPORT sockets: nothing single to hand over
    workers.write_text(cfg.read_text().replace("[gateway]", "[gateway]\nworkers = 2"))
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--takeover", "--config", str(workers)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert r.returncode == 1 and "not available with workers > 1" in r.stderr, r.stderr
    old = _serve(cfg, log, "serve")
    try:
        await eventually(lambda: (tmp_path / "wirepool.ctl").exists() and _pid(tmp_path / "wirepool.pid") == old.pid,
                         timeout=30, what="gateway up")
        cfg3 = tmp_path / "third.toml"  # other ports, the same control_socket and pid_file
        write_config(cfg3, pg, pg_db, free_port(), free_port())
        r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg3)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
        assert r.returncode == 1 and "is in use by a running gateway" in r.stderr, r.stderr
        cfg2 = tmp_path / "other.toml"
        write_config(cfg2, pg, pg_db, http_port, pg_port)
        cfg2.write_text(cfg2.read_text().replace("[gateway]", f'[gateway]\ntls_cert_file = "{tmp_path}/missing.pem"'))
        r = subprocess.run([sys.executable, "-m", "gateway.cli", "takeover", "--config", str(cfg2)],
                           capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
        assert r.returncode == 2 and "tls_cert_file" in r.stderr, r.stderr
        conn = await asyncpg.connect(host="127.0.0.1", port=pg_port, user="alice", password=ALICE_PASSWORD,
                                     database="app")
        assert await conn.fetchval("SELECT 7") == 7
        await conn.close()
        assert old.poll() is None and _pid(tmp_path / "wirepool.pid") == old.pid
    finally:
        old.terminate()
        old.wait(30)
    assert not (tmp_path / "wirepool.ctl").exists()
