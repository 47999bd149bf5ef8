"""``wirepool serve`` without a config: an embedded PostgreSQL plus a matching gateway.

PostgreSQL comes from the ``pgserver`` wheel (its bundled ``pginstall/bin``;
we use the binaries directly rather than ``pgserver.get_server()``: as root,
pgserver creates a ``pgserver`` system user and chmods every parent directory
of its install and data paths -- /root included -- to make them reachable).
Layout, under ``$XDG_DATA_HOME/wirepool`` (default ``~/.local/share/wirepool``)
or ``--data-dir``::

    pgdata/            the cluster (initdb on first run)
    run/               its unix socket (no TCP listener: only the gateway reaches it)
    log/postgres.log
    credentials.json   generated passwords (0600), so connection strings stay stable

As root, the server runs as the ``postgres`` system user (``runuser``); if that
user cannot reach the data directory (e.g. under /root), ``/var/lib/wirepool``
is used instead, and if it cannot execute the wheel's binaries they are copied
to a shared cache in the temp directory.

A role and database ``app`` are created; the gateway config (in memory) has one
database ``app`` and one edge user ``app`` with ``auth_type = "password"``
(loopback only; lets the Neon driver pipeline its connect), ``pg_listen``
enabled.  The connection strings are printed once the gateway is ready.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError, parse_address, parse_config
from gateway.pgbinaries import (
    RUN_AS,
    SERVER_BINARIES,
    has_server_binaries,
    is_root,
    pgserver_bin_dir,
    postgres_user_can,
    runuser_prefix,
    shared_copy_of_install,
)

DB_NAME = "app"
ROLE = "app"
EDGE_USER = "app"
SOCKET_PORT = 5432
DEFAULT_LISTEN = "127.0.0.1:8432"
DEFAULT_PG_LISTEN = "127.0.0.1:6432"


class EmbeddedError(RuntimeError):
    pass


def default_base_dir() -> Path:
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "share"
    return base / "wirepool"


def find_bin_dir() -> Path:
    """The pgserver wheel's ``pginstall/bin`` ($WIREPOOL_PG_BIN overrides)."""
    env = os.environ.get("WIREPOOL_PG_BIN")
    if env:
        if not has_server_binaries(Path(env)):
            raise EmbeddedError(f"WIREPOOL_PG_BIN={env!r} lacks one of {SERVER_BINARIES}")
        return Path(env)
    import importlib.util
    if importlib.util.find_spec("pgserver") is None:
        raise EmbeddedError("the pgserver package is not installed (pip install 'wirepool[gateway]')")
    d = pgserver_bin_dir()
    if d is None:
        raise EmbeddedError("the pgserver package has no PostgreSQL binaries")
    return d


class EmbeddedPostgres:
    def __init__(self, base_dir: Path | None = None) -> None:
        self.as_root = is_root()
        base = Path(base_dir) if base_dir is not None else default_base_dir()
        base.mkdir(parents=True, exist_ok=True)
        if self.as_root and not postgres_user_can("-x", base):
            fallback = Path("/var/lib/wirepool")
            print(f"wirepool: the postgres user cannot reach {base}; using {fallback}", file=sys.stderr)
            base = fallback
            base.mkdir(parents=True, exist_ok=True)
            os.chmod(base, 0o755)
        self.base = base.resolve()
        self.pgdata = self.base / "pgdata"
        self.run_dir = self.base / "run"
        if len(str(self.run_dir)) > 90:  # unix socket paths are limited to ~107 bytes
            h = hashlib.sha1(str(self.base).encode()).hexdigest()[:10]
            self.run_dir = Path(tempfile.gettempdir()) / f"wirepool-run-{os.getuid()}-{h}"
        self.log_dir = self.base / "log"
        self.logfile = self.log_dir / "postgres.log"
        self.cred_file = self.base / "credentials.json"
        bin_dir = find_bin_dir()
        if self.as_root and not postgres_user_can("-x", bin_dir / "postgres"):
            bin_dir = shared_copy_of_install(bin_dir)
        self.bin_dir = bin_dir
        self.psql_bin = str(bin_dir / "psql") if os.access(bin_dir / "psql", os.X_OK) else (
            shutil.which("psql") or "psql")
        self.started_here = False
        self.creds: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    def _cmd(self, argv: list[str]) -> list[str]:
        return (runuser_prefix() + argv) if self.as_root else argv

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        return env

    def _run(self, argv: list[str], *, timeout: float = 120, input: str | None = None,
             check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self._cmd(argv), capture_output=True, text=True, env=self._env(),
                           timeout=timeout, input=input, cwd="/")
        if check and r.returncode != 0:
            raise EmbeddedError(f"{Path(argv[0]).name} failed ({r.returncode}): {r.stderr.strip() or r.stdout.strip()}"
                                + self._log_tail())
        return r

    def _log_tail(self) -> str:
        try:
            return "\n--- postgres log ---\n" + "\n".join(self.logfile.read_text(errors="replace").splitlines()[-15:])
        except OSError:
            return ""

    def _own(self, path: Path, mode: int) -> None:
        if self.as_root:
            shutil.chown(path, user=RUN_AS, group=None)
        os.chmod(path, mode)

    # ------------------------------------------------------------------ setup
    def _load_creds(self) -> None:
        if self.cred_file.exists():
            try:
                self.creds = json.loads(self.cred_file.read_text())
            except (OSError, ValueError) as e:
                raise EmbeddedError(f"cannot read {self.cred_file}: {e}") from None
        changed = False
        for k in ("role_password", "edge_password"):
            if not isinstance(self.creds.get(k), str) or not self.creds[k]:
                self.creds[k] = secrets.token_urlsafe(18)
                changed = True
        if changed:
            fd = os.open(self.cred_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump(self.creds, f, indent=2)
        os.chmod(self.cred_file, 0o600)

    def _initdb(self) -> None:
        self.pgdata.mkdir(mode=0o700, exist_ok=True)
        self._own(self.pgdata, 0o700)
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.pgdata), "-U", "postgres",
                   "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C",
                   "--no-instructions"])

    def _write_conf(self) -> None:
        conf = (
            "# written by wirepool serve (embedded mode); postgresql.auto.conf is read last\n"
            "listen_addresses = ''\n"
            f"unix_socket_directories = '{str(self.run_dir).replace(chr(39), chr(39) * 2)}'\n"
            "unix_socket_permissions = 0700\n"
            f"port = {SOCKET_PORT}\n"
            "password_encryption = 'scram-sha-256'\n"
        )
        hba = (
            "# wirepool embedded: unix socket only (directory mode 0700)\n"
            "local all postgres trust\n"
            "local all all scram-sha-256\n"
        )
        for path, text in ((self.pgdata / "postgresql.auto.conf", conf), (self.pgdata / "pg_hba.conf", hba)):
            path.write_text(text)
            self._own(path, 0o600)

    def _is_running(self) -> bool:
        r = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "status"], check=False)
        return r.returncode == 0

    def start(self) -> None:
        self._load_creds()
        for d in (self.run_dir, self.log_dir):
            d.mkdir(mode=0o700, exist_ok=True)
            self._own(d, 0o700)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()
        if self._is_running():
            print(f"wirepool: reusing the PostgreSQL already running on {self.pgdata}", file=sys.stderr)
        else:
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.logfile),
                       "-w", "-t", "60", "start"], timeout=90)
            self.started_here = True
        self._ensure_app()

    def psql(self, sql: str, db: str = "postgres") -> str:
        r = self._run([self.psql_bin, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(self.run_dir),
                       "-p", str(SOCKET_PORT), "-U", "postgres", "-d", db, "-f", "-"], input=sql)
        return r.stdout.strip()

    def _ensure_app(self) -> None:
        pw = self.creds["role_password"].replace("'", "''")
        self.psql(
            "SELECT 'CREATE ROLE app LOGIN' WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'app')\\gexec\n"
            f"ALTER ROLE app LOGIN PASSWORD '{pw}';\n"
            "SELECT 'CREATE DATABASE app OWNER app' WHERE NOT EXISTS "
            "(SELECT 1 FROM pg_database WHERE datname = 'app')\\gexec\n")

    def stop(self) -> None:
        if self.started_here:
            self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.pgdata), "-m", "fast", "-w", "-t", "60", "stop"],
                      timeout=90, check=False)
            self.started_here = False

    def version(self) -> str:
        r = self._run([str(self.bin_dir / "postgres"), "--version"], check=False)
        return r.stdout.strip().rsplit(" ", 1)[-1] if r.returncode == 0 else "?"

    # ------------------------------------------------------------------ config
    def gateway_config(self, listen: str, pg_listen: str | None, log_level: str = "info") -> Config:
        data: dict[str, Any] = {
            "gateway": {"listen": listen, "pg_listen": pg_listen or "", "auth_type": "password",
                        "default_pool_size": 10, "log_level": log_level, "shutdown_timeout": 10.0},
            "databases": {DB_NAME: {"host": str(self.run_dir), "port": SOCKET_PORT, "dbname": DB_NAME,
                                    "user": ROLE, "password": self.creds["role_password"]}},
            "users": {EDGE_USER: {"password": self.creds["edge_password"]}},
        }
        return parse_config(data)


def connection_strings(app: Any, password: str) -> str:
    """The ready-to-paste block printed by ``wirepool serve`` in embedded mode."""
    from urllib.parse import quote
    pw = quote(password, safe="")
    host = app.http_host
    hp = f"[{host}]" if ":" in host else host
    lines = [
        "",
        "Wirepool is ready (embedded PostgreSQL). Connect with:",
        "",
        f"  driver:  ws://{EDGE_USER}:{pw}@{hp}:{app.http_port}/{DB_NAME}",
        "           e.g. await driver.connect(\"...\")   (Python, wirepool driver)",
    ]
    if app.pg_port is not None:
        lines += ["", f"  psql:    psql postgresql://{EDGE_USER}:{pw}@{app.pg_host}:{app.pg_port}/{DB_NAME}"]
    lines += [
        "",
        "  Neon serverless driver (Node):",
        '    import { Pool, neonConfig } from "@neondatabase/serverless";',
        '    import ws from "ws";',
        "    neonConfig.webSocketConstructor = ws;",
        f'    neonConfig.wsProxy = () => "{hp}:{app.http_port}/v2";',
        "    neonConfig.useSecureWebSocket = false;",
        "    neonConfig.pipelineTLS = false;",
        f'    const pool = new Pool({{ connectionString: "postgresql://{EDGE_USER}:{pw}@{hp}:5432/{DB_NAME}" }});',
        "",
        f"  health:  {app.http_url}/healthz    metrics: {app.http_url}/metrics",
        "  Ctrl-C (SIGINT) or SIGTERM stops the gateway and PostgreSQL.",
        "",
    ]
    return "\n".join(lines)


def serve_embedded(*, listen: str | None = None, pg_listen: str | None = None, data_dir: str | None = None,
                   log_level: str = "info") -> int:
    from gateway import app as app_mod
    from gateway.cli import _setup_logging

    listen = listen or DEFAULT_LISTEN
    pg_listen = DEFAULT_PG_LISTEN if pg_listen is None else pg_listen
    parse_address(listen, "--listen")
    if pg_listen:
        parse_address(pg_listen, "--pg-listen")
    _setup_logging(log_level)
    pg = EmbeddedPostgres(Path(data_dir) if data_dir else None)
    print(f"wirepool: starting embedded PostgreSQL {pg.version()} (data: {pg.pgdata})", file=sys.stderr, flush=True)
    try:
        pg.start()
        cfg = pg.gateway_config(listen, pg_listen or None, log_level)

        def ready(app: Any) -> None:
            sys.stdout.write(connection_strings(app, pg.creds["edge_password"]) + "\n")
            sys.stdout.flush()

        return app_mod.run_forever(cfg, ready_callback=ready)
    except ConfigError:
        raise
    finally:
        pg.stop()
