"""Private, throwaway PostgreSQL clusters for the test-suite.

A :class:`PgCluster` runs ``initdb`` into a fresh temporary directory, listens
on 127.0.0.1 on a free port plus a unix socket in the same temporary
directory, and creates a fixed set of login roles, one per authentication
method, so tests can exercise every method the driver and gateway support::

    with PgCluster({"max_connections": 20}) as pg:
        pg.psql("SELECT 1")                      # superuser over the unix socket
        dsn = pg.dsn("md5_user", PgCluster.MD5_PASSWORD)

Binaries are found via ``$PG_BIN``, then ``PATH``, then the ``pgserver`` wheel.
When running as root the server runs as the ``postgres`` system user.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import quote

import psutil

from gateway.pgbinaries import (  # shared with the gateway's embedded mode
    RUN_AS,
    SERVER_BINARIES,
    has_server_binaries as _has_server_binaries,
    is_root as _is_root,
    pgserver_bin_dir,
    runnable_bin_dir,
    runuser_prefix as _runuser,
)


# Environment variables that would change what psql/pg_ctl connect to.
_PG_ENV_VARS = (
    "PGHOST", "PGHOSTADDR", "PGPORT", "PGDATABASE", "PGUSER", "PGPASSWORD",
    "PGPASSFILE", "PGSERVICE", "PGSERVICEFILE", "PGOPTIONS", "PGSSLMODE",
    "PGDATA", "PGCONNECT_TIMEOUT", "PGTARGETSESSIONATTRS",
)


class PgClusterError(RuntimeError):
    pass


def find_pg_bin() -> Path:
    """Directory holding initdb, pg_ctl and postgres.

    Order: ``$PG_BIN``; the directory of ``initdb`` on ``PATH`` (if pg_ctl and
    postgres sit beside it); the pgserver wheel's ``pginstall/bin``.
    """
    env = os.environ.get("PG_BIN")
    if env:
        d = Path(env)
        if not _has_server_binaries(d):
            raise PgClusterError(f"PG_BIN={env!r} lacks one of {SERVER_BINARIES}")
        return d
    initdb = shutil.which("initdb")
    if initdb:
        d = Path(initdb).resolve().parent
        for cand in (Path(initdb).parent, d):
            if _has_server_binaries(cand):
                return cand
    d2 = pgserver_bin_dir()
    if d2 is not None:
        d2 = runnable_bin_dir(d2)
        return d2
    raise PgClusterError("no PostgreSQL server binaries: set PG_BIN or install pgserver")


def find_psql(bin_dir: Path) -> str:
    p = bin_dir / "psql"
    if os.access(p, os.X_OK):
        return str(p)
    w = shutil.which("psql")
    if w:
        return w
    d = pgserver_bin_dir()
    if d is not None and os.access(d / "psql", os.X_OK):
        return str(d / "psql")
    raise PgClusterError("psql not found")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _conf_value(v: Any) -> str:
    if isinstance(v, bool):
        return "on" if v else "off"
    if isinstance(v, (int, float)):
        return str(v)
    return "'" + str(v).replace("'", "''") + "'"


def _sql_literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


class PgCluster:
    """A private PostgreSQL cluster in a temporary directory. See module doc."""

    HOST = "127.0.0.1"
    DATABASE = "wirepool_test"

    SUPERUSER = "wp_admin"
    SUPERUSER_PASSWORD = "wp_admin_pw"
    SCRAM_USER = "scram_user"
    SCRAM_PASSWORD = "scram_pw"
    MD5_USER = "md5_user"
    MD5_PASSWORD = "md5_pw"
    PLAIN_USER = "plain_user"
    PLAIN_PASSWORD = "plain_pw"
    TRUST_USER = "trust_user"

    #: role -> (pg_hba method for 127.0.0.1, password or None)
    ROLES: dict[str, tuple[str, str | None]] = {
        SUPERUSER: ("scram-sha-256", SUPERUSER_PASSWORD),
        SCRAM_USER: ("scram-sha-256", SCRAM_PASSWORD),
        MD5_USER: ("md5", MD5_PASSWORD),
        PLAIN_USER: ("password", PLAIN_PASSWORD),
        TRUST_USER: ("trust", None),
    }
    TEST_ROLES = (SCRAM_USER, MD5_USER, PLAIN_USER, TRUST_USER)

    BASE_SETTINGS: dict[str, Any] = {
        "listen_addresses": HOST,
        "password_encryption": "scram-sha-256",
        "fsync": False,
        "synchronous_commit": False,
        "full_page_writes": False,
        "shared_buffers": "32MB",
        "max_wal_senders": 0,
        "wal_level": "minimal",
        "log_min_messages": "warning",
        "log_connections": False,
    }

    def __init__(self, settings: Mapping[str, Any] | None = None, *, start: bool = True,
                 hostssl_only: bool = False) -> None:
        #: pg_hba.conf accepts TCP logins over TLS only (``hostssl``; needs ssl = on in ``settings``)
        self.hostssl_only = hostssl_only
        self.bin_dir: Path = find_pg_bin()
        self.psql_bin: str = find_psql(self.bin_dir)
        self.host: str = self.HOST
        self.port: int = free_port()
        self.settings: dict[str, Any] = dict(settings or {})
        self._as_root = _is_root()
        self.base_dir = Path(tempfile.mkdtemp(prefix="wirepool-pg-"))
        self.socket_dir: Path = self.base_dir
        self.datadir: Path = self.base_dir / "data"
        self.logfile: Path = self.base_dir / "postgres.log"
        self._cleaned = False
        atexit.register(self.cleanup)
        try:
            if self._as_root:
                shutil.chown(self.base_dir, user=RUN_AS, group=None)
                os.chmod(self.base_dir, 0o755)
            self._initdb()
            if start:
                self.start()
                self._create_roles()
        except BaseException:
            self.cleanup()
            raise

    # ------------------------------------------------------------ processes
    def _cmd(self, argv: list[str]) -> list[str]:
        return (_runuser() + argv) if self._as_root else argv

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _PG_ENV_VARS}
        env["LC_ALL"] = "C"
        return env

    def _run(self, argv: list[str], *, check: bool = True, timeout: float = 60,
             input: str | None = None) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(self._cmd(argv), capture_output=True, text=True, env=self._env(),
                           timeout=timeout, input=input, cwd=self.base_dir)
        if check and r.returncode != 0:
            raise PgClusterError(
                f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}{self._log_tail()}")
        return r

    def _log_tail(self, n: int = 30) -> str:
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return ""
        return "\n--- server log ---\n" + "\n".join(lines)

    def _initdb(self) -> None:
        self._run([str(self.bin_dir / "initdb"), "-D", str(self.datadir), "-U", self.SUPERUSER,
                   "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions"])
        self._write_conf()

    def _write_conf(self) -> None:
        conf = dict(self.BASE_SETTINGS)
        conf.update(self.settings)
        conf["port"] = self.port
        conf["unix_socket_directories"] = str(self.socket_dir)
        lines = ["# wirepool test cluster"] + [f"{k} = {_conf_value(v)}" for k, v in conf.items()]
        # postgresql.auto.conf is read last and overrides postgresql.conf.
        self._write_owned(self.datadir / "postgresql.auto.conf", "\n".join(lines) + "\n")
        hba = ["# TYPE DATABASE USER ADDRESS METHOD"]
        host = "hostssl" if self.hostssl_only else "host"
        for role, (method, _pw) in self.ROLES.items():
            hba.append(f"{host} all {role} 127.0.0.1/32 {method}")
        hba.append(f"{host} all all 127.0.0.1/32 scram-sha-256")
        hba.append("local all all trust")
        self._write_owned(self.datadir / "pg_hba.conf", "\n".join(hba) + "\n")

    def _write_owned(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self._as_root:
            shutil.chown(path, user=RUN_AS, group=None)
        os.chmod(path, 0o600)

    def set_port(self, port: int) -> None:
        """Change the TCP port (takes effect at the next start)."""
        self.port = port
        self._write_conf()

    def _postmaster_pid(self) -> int | None:
        try:
            first = (self.datadir / "postmaster.pid").read_text().split("\n", 1)[0]
            return int(first)
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(pid: int) -> bool:
        try:
            return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        return pid is not None and self._alive(pid)

    def start(self) -> None:
        """Start the server; returns once it accepts connections (pg_ctl -w)."""
        if self.is_running():
            return
        for attempt in range(3):
            r = self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-l",
                           str(self.logfile), "-w", "-t", "60", "start"], check=False, timeout=90)
            if r.returncode == 0:
                return
            # Lost a race for the port with another process: pick another one.
            if "Address already in use" in self._log_tail(10) and attempt < 2:
                self.set_port(free_port())
                continue
            raise PgClusterError(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}{self._log_tail()}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode: smart|fast|immediate) and wait until it is down."""
        if not self.is_running():
            return
        self._run([str(self.bin_dir / "pg_ctl"), "-D", str(self.datadir), "-m", mode,
                   "-w", "-t", "60", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster and all its children: a simulated crash.

        Waits until every server process is gone, then removes the stale lock
        files (the reaped-by-nobody zombie postmaster would otherwise make the
        next postmaster believe the old one still runs). ``start()`` then
        performs crash recovery.
        """
        pid = self._postmaster_pid()
        if pid is None or not self._alive(pid):
            return
        try:
            pm = psutil.Process(pid)
            procs = [pm] + pm.children(recursive=True)
        except psutil.NoSuchProcess:
            procs = []
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        deadline = time.monotonic() + 30
        for p in procs:
            while self._alive(p.pid) and time.monotonic() < deadline:
                try:
                    p.wait(timeout=0.05)  # reaps if it is our child; else polls
                except (psutil.TimeoutExpired, psutil.NoSuchProcess, ChildProcessError):
                    pass
        if any(self._alive(p.pid) for p in procs):
            raise PgClusterError("server processes survived SIGKILL")
        for f in (self.datadir / "postmaster.pid",
                  self.socket_dir / f".s.PGSQL.{self.port}.lock"):
            try:
                f.unlink()
            except FileNotFoundError:
                pass

    # -------------------------------------------------------------- clients
    def psql(self, sql: str, user: str | None = None, db: str | None = None,
             *, check: bool = True) -> str:
        """Run ``sql`` with psql over the unix socket (trust); return its stdout.

        Statements are fed on stdin, so each runs on its own (CREATE DATABASE
        etc. work). Output is unaligned tuples only (``-A -t``). Raises
        :class:`PgClusterError` on any SQL error unless ``check=False``.
        """
        argv = [self.psql_bin, "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port),
                "-U", user or self.SUPERUSER, "-d", db or self.DATABASE, "-f", "-"]
        r = subprocess.run(argv, input=sql, capture_output=True, text=True, env=self._env(),
                           timeout=120)
        if check and r.returncode != 0:
            raise PgClusterError(f"psql failed ({r.returncode}): {r.stderr.strip()}\nSQL: {sql}")
        return r.stdout.strip()

    def dsn(self, user: str = "wp_admin", password: str | None = None,
            database: str = "wirepool_test") -> str:
        auth = quote(user, safe="")
        if password is not None:
            auth += ":" + quote(password, safe="")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(database, safe='')}"

    def connect_kwargs(self, user: str = "wp_admin", password: str | None = None,
                       database: str = "wirepool_test") -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": user,
                "password": password, "database": database}

    def _create_roles(self) -> None:
        lines = [f"ALTER ROLE {self.SUPERUSER} PASSWORD {_sql_literal(self.SUPERUSER_PASSWORD)};"]
        for role, (method, pw) in self.ROLES.items():
            if role == self.SUPERUSER:
                continue
            if method == "md5":
                lines.append("SET password_encryption = 'md5';")
            pw_sql = f" PASSWORD {_sql_literal(pw)}" if pw is not None else ""
            lines.append(f"CREATE ROLE {role} LOGIN{pw_sql};")
            if method == "md5":
                lines.append("RESET password_encryption;")
        self.psql("\n".join(lines), db="postgres")
        self.create_database(self.DATABASE)

    def create_database(self, name: str) -> None:
        """Create ``name`` owned by wp_admin, connectable and writable by the test roles."""
        roles = ", ".join(self.TEST_ROLES)
        self.psql(f'CREATE DATABASE "{name}" OWNER {self.SUPERUSER};\n'
                  f'GRANT CONNECT, TEMPORARY ON DATABASE "{name}" TO {roles};', db="postgres")
        self.psql(f"GRANT USAGE, CREATE ON SCHEMA public TO {roles};", db=name)

    def drop_database(self, name: str) -> None:
        self.psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE);', db="postgres")

    # ------------------------------------------------------------ lifecycle
    def cleanup(self) -> None:
        """Stop the server (immediately if a fast stop fails) and delete everything."""
        if self._cleaned:
            return
        self._cleaned = True
        try:
            if self.is_running():
                try:
                    self.stop("fast")
                except Exception:
                    self.kill()
        finally:
            shutil.rmtree(self.base_dir, ignore_errors=True)
            atexit.unregister(self.cleanup)

    def __enter__(self) -> "PgCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else "stopped"
        return f"<PgCluster {self.host}:{self.port} {self.datadir} {state}>"
