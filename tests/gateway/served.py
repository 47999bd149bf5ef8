"""``wirepool serve --config FILE`` in a child process, as a user runs it.

For the workers and forwarding proofs (tests/gateway/test_workers.py,
test_forwarding.py): the supervisor forks its workers, so the gateway must be
its own process tree.  Ports are picked free beforehand (``free_port``) and
written into the TOML; :meth:`Served.wait_ready` polls ``/metrics`` until every
worker answers.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from tests.gateway.conftest import ALICE_PASSWORD
from tests.pgcluster import PgCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class Served:
    def __init__(self, pg: PgCluster, dbname: str, settings: Mapping[str, Any], *,
                 pool: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="wp-served-"))
        self.http_port = int(settings["listen"].rpartition(":")[2]) if "listen" in settings else free_port()
        self.pg_port = free_port()
        g = {"listen": f"127.0.0.1:{self.http_port}", "pg_listen": f"127.0.0.1:{self.pg_port}",
             "auth_type": "password", "shutdown_timeout": 2.0, "admin_users": ["alice"],
             "pid_file": str(self.dir / "gateway.pid"), **settings}
        db = {"host": pg.host, "port": pg.port, "dbname": dbname, "user": PgCluster.SCRAM_USER,
              "password": PgCluster.SCRAM_PASSWORD, "sslmode": "disable", **(pool or {})}
        lines = ["[gateway]", *(f"{k} = {_toml(v)}" for k, v in g.items()), "",
                 "[databases.app]", *(f"{k} = {_toml(v)}" for k, v in db.items()), "",
                 "[users.alice]", f"password = {_toml(ALICE_PASSWORD)}", ""]
        self.config = self.dir / "wirepool.toml"
        self.config.write_text("\n".join(lines))
        self.workers = int(settings.get("workers", 1))
        self.log_path = self.dir / "gateway.log"
        self._log = open(self.log_path, "wb")
        penv = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(env or {}))
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config)],
                                     stdout=self._log, stderr=subprocess.STDOUT, env=penv, cwd=str(ROOT))

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def ws_dsn(self, user: str = "alice", password: str = ALICE_PASSWORD) -> str:
        return f"ws://{quote(user)}:{quote(password)}@127.0.0.1:{self.http_port}/v2?dbname=app"

    def http_dsn(self, user: str = "alice", password: str = ALICE_PASSWORD) -> str:
        return f"http://{quote(user)}:{quote(password)}@127.0.0.1:{self.http_port}/app"

    def log_text(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    async def metrics(self) -> str:
        from tests.gateway.served import http_get
        status, body = await http_get(self.http_port, "/metrics")
        assert status == 200, body
        return body.decode()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        want = self.workers if self.workers > 1 else 0
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            try:
                text = await self.metrics()
                if len(re.findall(r'^wirepool_worker_up\{worker="\d+"\} 1\.0$', text, re.M)) == want:
                    return
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 20.0) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __enter__(self) -> "Served":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


async def http_get(port: int, path: str, headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """A minimal HTTP/1.1 GET (Connection: close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        writer.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{extra}\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body
