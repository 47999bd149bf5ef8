"""A real gateway in a child process: ``wirepool serve --config FILE``, as a user runs it.

The one helper for tests that start a gateway process (the supervisor forks
its workers, a takeover replaces the process, a SHUTDOWN or SIGHUP ends or
reloads it: the gateway must be its own process tree)::

    with Served(pg, pg_db, {"workers": 2}) as gw:          # writes the TOML, starts it
        await gw.wait_ready()                              # /metrics answers (every worker up)
        gw.http_port, gw.pg_port, gw.ws_dsn(), gw.proc, gw.log_text()

* :func:`write_config`: the TOML a user writes (``[gateway]``, ``[databases.app]``
  on ``pg``, ``[users.alice]``); every test that needs a file writes it here.
* :func:`serve_cli`: ``python -m gateway.cli <command> --config FILE`` with this
  tree first on ``PYTHONPATH`` (``serve``, ``takeover``, ``reload``...).
* :class:`Served`: both, plus readiness (:meth:`Served.wait_ready`) and stop;
  ``config=`` runs a file the test wrote itself.  Ports are picked free
  beforehand (``free_port``) and written into the TOML.
* :class:`ChildGateway`: what every gateway child shares (addresses, log,
  SIGTERM-then-kill stop); ``tests/gatewayproc.py``'s ``GatewayProcess`` (the
  fuzzing campaign's and the resource proofs' gateway) builds on it too.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

from tests.gateway.conftest import ALICE_PASSWORD
from tests.pgcluster import PgCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


_toml = toml_value  # the earlier name


def write_config(path: Path, pg: PgCluster, dbname: str, gateway: Mapping[str, Any], *,
                 database: Mapping[str, Any] | None = None,
                 users: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    """Write a gateway TOML to ``path``: ``[gateway]`` is ``gateway``; database
    ``app`` is ``dbname`` on ``pg`` as its SCRAM user (``database`` adds or
    overrides keys); ``users`` defaults to alice with ``ALICE_PASSWORD``."""
    db = {"host": pg.host, "port": pg.port, "dbname": dbname, "user": PgCluster.SCRAM_USER,
          "password": PgCluster.SCRAM_PASSWORD, **(database or {})}
    if users is None:
        users = {"alice": {"password": ALICE_PASSWORD}}
    tables: dict[str, Mapping[str, Any]] = {"gateway": gateway, "databases.app": db}
    tables.update((f"users.{name}", user) for name, user in users.items())
    lines: list[str] = []
    for name, table in tables.items():
        lines += [f"[{name}]", *(f"{k} = {toml_value(v)}" for k, v in table.items()), ""]
    path.write_text("\n".join(lines))
    return path


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a gateway child: this tree first on ``PYTHONPATH``."""
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **(extra or {}))


def serve_cli(config: Path, log: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start ``python -m gateway.cli <args> --config FILE`` (``args`` default:
    ``serve``), its output appended to ``log``."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "gateway.cli", *(args or ("serve",)), "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=cli_env(env), cwd=str(ROOT))


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=1).close()
        return True
    except OSError:
        return False


class ChildGateway:
    """A gateway child process: its addresses, its log, its stop."""

    host = "127.0.0.1"
    http_port = 0
    pg_port: int | None = None
    #: seconds for each SIGTERM to end it before the next step (a second SIGTERM, then SIGKILL)
    stop_timeout = 10.0
    proc: subprocess.Popen[bytes]
    log_path: Path

    # -- addresses -----------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.http_port}/v2"

    def pg_dsn(self, user: str, password: str | None, database: str = "app") -> str:
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password is not None else "")
        return f"postgresql://{auth}@{self.host}:{self.pg_port}/{quote(database, safe='')}"

    def ws_dsn(self, user: str = "alice", password: str = ALICE_PASSWORD, database: str = "app") -> str:
        return f"ws://{quote(user)}:{quote(password)}@{self.host}:{self.http_port}/v2?dbname={quote(database)}"

    def http_dsn(self, user: str = "alice", password: str = ALICE_PASSWORD, database: str = "app") -> str:
        return f"http://{quote(user)}:{quote(password)}@{self.host}:{self.http_port}/{quote(database)}"

    # -- observation ---------------------------------------------------------
    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_text().splitlines()[-n:])
        except OSError:
            return ""

    # -- lifecycle -----------------------------------------------------------
    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM; if it still runs after ``timeout``, a second SIGTERM (close
        now); then SIGKILL.  Returns the exit code."""
        wait = self.stop_timeout if timeout is None else timeout
        for sig in (signal.SIGTERM, signal.SIGTERM):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                continue
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def cleanup(self) -> None:
        """Remove what the child left (nothing by default)."""

    def __enter__(self) -> "ChildGateway":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.cleanup()


def _port(address: Any) -> int:
    """The port of a ``host:port`` listen address (0: ephemeral or none)."""
    return int(str(address).rpartition(":")[2] or 0) if address else 0


class Served(ChildGateway):
    """``wirepool serve`` (or another ``gateway.cli`` command) on a TOML file.

    ``settings`` go over the defaults in ``[gateway]`` (free ``listen`` and
    ``pg_listen`` ports, password auth, ``admin_users = ["alice"]``, a
    ``pid_file``); ``pool`` adds keys to ``[databases.app]``; ``users``
    replaces ``[users]``.  ``config``: run that file as it is instead.
    ``directory``: where the TOML and log go (default: a temporary directory,
    removed on exit).
    """

    def __init__(self, pg: PgCluster, dbname: str, settings: Mapping[str, Any] | None = None, *,
                 pool: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                 users: Mapping[str, Mapping[str, Any]] | None = None, config: Path | None = None,
                 directory: Path | None = None, args: tuple[str, ...] = ("serve",),
                 stop_timeout: float = 20.0) -> None:
        self._own_dir = directory is None
        self.dir = Path(tempfile.mkdtemp(prefix="wp-served-")) if directory is None else Path(directory)
        self.stop_timeout = stop_timeout
        if config is None:
            settings = settings or {}
            g = {"listen": f"127.0.0.1:{free_port()}", "pg_listen": f"127.0.0.1:{free_port()}",
                 "auth_type": "password", "shutdown_timeout": 2.0, "admin_users": ["alice"],
                 "pid_file": str(self.dir / "gateway.pid"), **settings}
            config = write_config(self.dir / "wirepool.toml", pg, dbname, g,
                                  database={"sslmode": "disable", **(pool or {})}, users=users)
        else:
            g = tomllib.loads(Path(config).read_text())["gateway"]
        self.config = Path(config)
        self.http_port = _port(g.get("listen"))
        self.pg_port = _port(g.get("pg_listen")) or None
        self.pid_file = Path(g["pid_file"]) if g.get("pid_file") else None
        self.workers = int(g.get("workers", 1))
        self.log_path = self.dir / "gateway.log"
        self.proc = serve_cli(self.config, self.log_path, *args, env=env)

    async def metrics(self) -> str:
        status, body = await http_get(self.http_port, "/metrics")
        assert status == 200, body
        return body.decode()

    async def _ready(self) -> bool:
        if not self.http_port:  # listen on an ephemeral port: pg_listen and the pid file tell
            pg_port = self.pg_port
            return pg_port is not None and port_open(pg_port) and (self.pid_file is None or self.pid_file.exists())
        try:
            text = await self.metrics()
        except (OSError, AssertionError):
            return False
        want = self.workers if self.workers > 1 else 0
        return len(re.findall(r'^wirepool_worker_up\{worker="\d+"\} 1\.0$', text, re.M)) == want

    async def wait_ready(self, timeout: float = 60.0) -> None:
        """Poll until the gateway serves: ``/metrics`` answers with every worker
        up (or, when ``listen`` is ephemeral, ``pg_listen`` accepts and the
        pid file exists).  RuntimeError with the log if it exits or times out."""
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if await self._ready():
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"gateway not ready:\n{self.log_text()[-3000:]}")
            await asyncio.sleep(0.1)

    def cleanup(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "Served":
        return self


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
