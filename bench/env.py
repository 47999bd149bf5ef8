"""The processes a benchmark run starts and stops itself.

- :class:`BenchCluster`: a private PostgreSQL (``max_connections = 100``) with a
  ``bench`` role (SCRAM), a ``bench`` database, an indexed ``items`` table and
  (on demand) pgbench tables at scale 10.
- :class:`PgBouncer`: ``/usr/sbin/pgbouncer`` with an ini + userlist written to
  a temp dir, transaction mode, the same pool size as the gateway, run as the
  ``postgres`` system user (PgBouncer refuses to run as root).
- :class:`Gateway`: ``wirepool serve --config`` in its own process (never in
  the load generator's process).

Everything listens on 127.0.0.1 only and is removed at the end.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.pgcluster import PgCluster, free_port  # noqa: E402

PGBOUNCER_BIN = os.environ.get("PGBOUNCER", "/usr/sbin/pgbouncer")
PGBOUNCER_HINT = "install it with: apt-get install pgbouncer (Debian/Ubuntu package `pgbouncer`)"

BENCH_USER = "bench"
BENCH_PASSWORD = "bench_pw"
BENCH_DB = "bench"
ITEMS = 10_000
#: the indexed SELECT every session runs
QUERY = "SELECT val FROM items WHERE id = $1"
#: the bench user's API token on every bench gateway (the cold-start latency case, bench/cold_start.py)
BENCH_TOKEN = "wp_bench_cold_start_token_0123456789"
POOL_SIZE = 20


def wait_port(host: str, port: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=1.0):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout}s")
            time.sleep(0.05)


def wait_workers(host: str, port: int, n: int, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll /metrics until ``n`` workers answer (``wirepool_worker_up{worker=..} 1.0``)."""
    import urllib.request
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2) as r:
                text = r.read().decode()
            if sum(1 for line in text.splitlines()
                   if line.startswith("wirepool_worker_up{") and line.endswith(" 1.0")) >= n:
                return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{n} workers not ready after {timeout}s")
        time.sleep(0.1)


def scram_verifier_for(password: str, iterations: int) -> str:
    """A SCRAM-SHA-256 verifier (RFC 5802/7677, Postgres' storage format) with a chosen
    iteration count: the client-side PBKDF2 cost of every login scales with it."""
    import base64
    import hashlib
    import hmac
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(hashlib.sha256(client_key).digest())}:{b64(server_key)}"


class BenchCluster:
    """A private PgCluster prepared for the benchmarks."""

    def __init__(self, max_connections: int = 100, scram_iterations: int = 4096) -> None:
        self.pg = PgCluster({"max_connections": max_connections,
                             "superuser_reserved_connections": 3})
        self.host = self.pg.host
        self.port = self.pg.port
        self.scram_iterations = scram_iterations
        pw = BENCH_PASSWORD if scram_iterations == 4096 else scram_verifier_for(BENCH_PASSWORD, scram_iterations)
        self.pg.psql(f"CREATE ROLE {BENCH_USER} LOGIN PASSWORD '{pw}';", db="postgres")
        self.pg.psql(f"CREATE DATABASE {BENCH_DB} OWNER {BENCH_USER};", db="postgres")
        self.pg.psql(
            "CREATE TABLE items (id int PRIMARY KEY, val text NOT NULL);\n"
            f"INSERT INTO items SELECT i, 'item-' || i FROM generate_series(1, {ITEMS}) i;\n"
            "ANALYZE items;", user=BENCH_USER, db=BENCH_DB)
        self._pgbench_ready = False

    def conn_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": BENCH_USER,
                "password": BENCH_PASSWORD, "database": BENCH_DB}

    def admin_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": PgCluster.SUPERUSER,
                "password": PgCluster.SUPERUSER_PASSWORD, "database": "postgres"}

    def scram_verifier(self) -> str:
        """The ``bench`` role's stored SCRAM-SHA-256 verifier (what poolers keep in their user lists:
        authenticating a client against it costs a few HMACs, not a PBKDF2 run)."""
        if not hasattr(self, "_verifier"):
            self._verifier = self.pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{BENCH_USER}'",
                                          db="postgres")
            assert self._verifier.startswith("SCRAM-SHA-256$"), self._verifier
        return self._verifier

    def pgbench_init(self, scale: int = 10) -> None:
        """``pgbench -i -s scale`` into the bench database (once per cluster)."""
        if self._pgbench_ready:
            return
        env = dict(os.environ, PGPASSWORD=BENCH_PASSWORD)
        r = subprocess.run(["pgbench", "-i", "-q", "-s", str(scale), "-h", self.host, "-p", str(self.port),
                            "-U", BENCH_USER, BENCH_DB], env=env, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            raise RuntimeError(f"pgbench -i failed: {r.stderr}")
        self._pgbench_ready = True

    def bench_backends(self) -> int:
        out = self.pg.psql(f"SELECT count(*) FROM pg_stat_activity WHERE usename = '{BENCH_USER}' "
                           "AND backend_type = 'client backend'", db="postgres")
        return int(out)

    def wait_backends_gone(self, timeout: float = 15.0) -> None:
        """Wait until no ``bench`` backend is left (closed sessions disappear asynchronously)."""
        deadline = time.monotonic() + timeout
        while self.bench_backends() > 0 and time.monotonic() < deadline:
            time.sleep(0.1)

    def close(self) -> None:
        self.pg.cleanup()


class _Service:
    """A child process we started, with psutil accounting."""

    proc: subprocess.Popen[Any] | None = None
    name = "service"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def stop(self, timeout: float = 10.0) -> None:
        p = self.proc
        if p is None:
            return
        self.proc = None
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def __enter__(self) -> "_Service":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError


class PgBouncer(_Service):
    name = "pgbouncer"

    def __init__(self, cluster: BenchCluster, pool_size: int = POOL_SIZE, max_client_conn: int = 12000) -> None:
        self.cluster = cluster
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.host = "127.0.0.1"
        self.port = 0
        self.dir: Path | None = None

    @staticmethod
    def available() -> bool:
        return os.access(PGBOUNCER_BIN, os.X_OK)

    def start(self) -> None:
        if not self.available():
            raise RuntimeError(f"{PGBOUNCER_BIN} not found; {PGBOUNCER_HINT}")
        self.dir = Path(tempfile.mkdtemp(prefix="wirepool-bench-pgbouncer-"))
        self.port = free_port()
        ini = self.dir / "pgbouncer.ini"
        users = self.dir / "userlist.txt"
        c = self.cluster
        # The server's own SCRAM verifier, as with auth_query/pg_shadow: PgBouncer then
        # verifies clients without PBKDF2 and logs into Postgres with the client's SCRAM keys.
        users.write_text(f'"{BENCH_USER}" "{c.scram_verifier()}"\n')
        ini.write_text(f"""[databases]
{BENCH_DB} = host={c.host} port={c.port} dbname={BENCH_DB}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
pool_mode = transaction
default_pool_size = {self.pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {self.max_client_conn}
max_db_connections = 0
server_login_retry = 1
ignore_startup_parameters = extra_float_digits,options
listen_backlog = 4096
logfile = {self.dir / 'pgbouncer.log'}
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
pidfile = {self.dir / 'pgbouncer.pid'}
""")
        kw: dict[str, Any] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            shutil.chown(self.dir, user="postgres")
            for f in (ini, users):
                shutil.chown(f, user="postgres")
                os.chmod(f, 0o600)
            kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self.proc = subprocess.Popen([PGBOUNCER_BIN, str(ini)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, **kw)
        try:
            wait_port(self.host, self.port, proc=self.proc)
        except RuntimeError:
            err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
            self.stop()
            raise RuntimeError(f"pgbouncer did not start: {err}")

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def conn_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.port, "user": BENCH_USER,
                "password": BENCH_PASSWORD, "database": BENCH_DB}


def gateway_available() -> tuple[bool, str]:
    """Can a gateway be started from this checkout? (``gateway.cli`` exists)"""
    import importlib.util
    if importlib.util.find_spec("gateway.cli") is None:
        return False, "gateway.cli not in this checkout yet"
    return True, ""


def gateway_command(config_path: str, uvloop: bool = True) -> list[str]:
    if not uvloop:
        # Same CLI, with gateway.app's uvloop installer turned off (see Gateway.use_uvloop).
        return [sys.executable, "-c", "import sys, gateway.app as a; a.install_uvloop = lambda: False; "
                "from gateway.cli import main; sys.exit(main())", "serve", "--config", config_path]
    exe = shutil.which("wirepool")
    if exe:
        return [exe, "serve", "--config", config_path]
    return [sys.executable, "-m", "gateway.cli", "serve", "--config", config_path]


class Gateway(_Service):
    """``wirepool serve --config`` in a child process."""

    name = "gateway"
    #: The gateway runs on uvloop when available (its own default). If a probe session fails
    #: with uvloop's transports (a gateway bug seen during development), the harness falls
    #: back to the default asyncio loop for the rest of the run and says so in the rows.
    use_uvloop: bool = True
    fallback_note: str = ""
    _probed: bool = False

    def __init__(self, cluster: BenchCluster, *, auth_type: str = "scram-sha-256",
                 pool_size: int = POOL_SIZE, max_client_conn: int = 12000,
                 extra: dict[str, Any] | None = None) -> None:
        self.cluster = cluster
        self.auth_type = auth_type
        self.pool_size = pool_size
        self.max_client_conn = max_client_conn
        self.extra = extra or {}
        self.host = "127.0.0.1"
        self.port = 0       # HTTP + WebSocket
        self.pg_port = 0    # pg_listen
        self.dir: Path | None = None
        self.log: Path | None = None

    def config_text(self) -> str:
        c = self.cluster
        extra = "".join(f"{k} = {_toml(v)}\n" for k, v in self.extra.items())
        return f"""[gateway]
listen = "127.0.0.1:{self.port}"
pg_listen = "127.0.0.1:{self.pg_port}"
auth_type = "{self.auth_type}"
max_client_conn = {self.max_client_conn}
pool_mode = "transaction"
default_pool_size = {self.pool_size}
log_level = "warning"
{extra}
[databases.{BENCH_DB}]
host = "{c.host}"
port = {c.port}
dbname = "{BENCH_DB}"
user = "{BENCH_USER}"
password = "{BENCH_PASSWORD}"

[users.{BENCH_USER}]
password = "{self.user_password()}"
tokens = ["{BENCH_TOKEN}"]
"""

    def user_password(self) -> str:
        """What the gateway keeps for the edge user: the server's SCRAM verifier (as PgBouncer
        does here) for SCRAM; the plaintext for ``auth_type = "password"`` (compared as is)."""
        if self.auth_type == "scram-sha-256":
            return self.cluster.scram_verifier()
        return BENCH_PASSWORD

    def start(self) -> None:
        ok, why = gateway_available()
        if not ok:
            raise RuntimeError(why)
        self.dir = Path(tempfile.mkdtemp(prefix="wirepool-bench-gateway-"))
        self.port = free_port()
        self.pg_port = free_port()
        cfg = self.dir / "gateway.toml"
        cfg.write_text(self.config_text())
        self.log = self.dir / "gateway.log"
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        self._spawn(cfg, env)
        if not Gateway._probed:
            # Once per run: check a session works; the probe leaves a warm server connection in
            # the pool, so the gateway is restarted afterwards (every measurement starts cold).
            Gateway._probed = True
            ok = self._probe()
            if not ok and Gateway.use_uvloop and ("UVTransport" in self.log_tail(200) or "uvloop" in self.log_tail(200)):
                Gateway.use_uvloop = False
                Gateway.fallback_note = ("gateway on asyncio, not uvloop: sessions failed under uvloop "
                                         "(transport type assertion in gateway listeners)")
            super().stop()
            self.cluster.wait_backends_gone()
            self._spawn(cfg, env)

    def restart_cold(self) -> None:
        """Restart with an empty pool (after a probe session left a warm server connection)."""
        super().stop()
        self.cluster.wait_backends_gone()
        self._spawn(self._cfg, self._env)

    def _spawn(self, cfg: Path, env: dict[str, str]) -> None:
        assert self.log is not None
        self._cfg, self._env = cfg, env
        with open(self.log, "ab") as logf:
            self.proc = subprocess.Popen(gateway_command(str(cfg), Gateway.use_uvloop), stdout=logf,
                                         stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        try:
            wait_port(self.host, self.pg_port, proc=self.proc)
            wait_port(self.host, self.port, proc=self.proc)
            workers = int(self.extra.get("workers", 1))
            if workers > 1:  # every worker listening (gateway/workers.py), not just the first
                wait_workers(self.host, self.port, workers, proc=self.proc)
        except RuntimeError as e:
            tail = self.log_tail()
            self.stop()
            raise RuntimeError(f"gateway did not start ({e}): {tail}")

    def _probe(self) -> bool:
        """One asyncpg session over pg_listen (run from this orchestrating process)."""
        import asyncpg

        async def go() -> bool:
            try:
                conn = await asyncpg.connect(**self.tcp_kwargs(), statement_cache_size=0, timeout=10)
                try:
                    return await conn.fetchval(QUERY, 1) == "item-1"
                finally:
                    await conn.close()
            except Exception:  # noqa: BLE001
                return False
        return asyncio.run(go())

    def log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.log or Path("/nonexistent")).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def tcp_kwargs(self) -> dict[str, Any]:
        return {"host": self.host, "port": self.pg_port, "user": BENCH_USER,
                "password": BENCH_PASSWORD, "database": BENCH_DB}

    def url(self, scheme: str, port: int | None = None) -> str:
        """``ws://`` or ``http://`` DSN of the bench database for ``driver.connect``."""
        return f"{scheme}://{BENCH_USER}:{BENCH_PASSWORD}@127.0.0.1:{port or self.port}/{BENCH_DB}"

    def ws_url(self, port: int | None = None) -> str:
        return self.url("ws", port)


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


class ProcWatch:
    """Peak RSS and CPU seconds of a process (and its children) over a window."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.peak_rss = 0
        self.cpu0 = 0.0
        self._procs: list[psutil.Process] = []
        if pid is not None:
            try:
                p = psutil.Process(pid)
                self._procs = [p] + p.children(recursive=True)
            except psutil.NoSuchProcess:
                self._procs = []
        self.cpu0 = self._cpu()
        self.sample()

    def _cpu(self) -> float:
        total = 0.0
        for p in self._procs:
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def rss(self) -> int:
        total = 0
        for p in self._procs:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total

    def sample(self) -> int:
        r = self.rss()
        if r > self.peak_rss:
            self.peak_rss = r
        return r

    def cpu_seconds(self) -> float:
        return self._cpu() - self.cpu0


class PostgresCpu:
    """CPU seconds used by the whole PostgreSQL server (postmaster, live backends, and
    backends that exited meanwhile, which the postmaster reaped) over a window."""

    def __init__(self, cluster: BenchCluster) -> None:
        self.pid = cluster.pg._postmaster_pid()
        self.t0 = self._total()

    def _total(self) -> float:
        if self.pid is None:
            return 0.0
        try:
            pm = psutil.Process(self.pid)
            t = pm.cpu_times()
            total = t.user + t.system + t.children_user + t.children_system
            for ch in pm.children():
                try:
                    c = ch.cpu_times()
                    total += c.user + c.system
                except psutil.NoSuchProcess:
                    pass
            return total
        except psutil.NoSuchProcess:
            return 0.0

    def seconds(self) -> float:
        return round(self._total() - self.t0, 2)


class BackendSampler:
    """Samples ``pg_stat_activity`` from a separate superuser connection (a
    reserved slot, so it never competes with the load) and the pooler's RSS,
    in a thread of the orchestrating process (which generates no load)."""

    def __init__(self, cluster: BenchCluster, watch: ProcWatch | None, interval: float = 0.01) -> None:
        self.cluster = cluster
        self.watch = watch
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = False
        self._thread: Any = None
        self._error: BaseException | None = None

    def __enter__(self) -> "BackendSampler":
        import threading
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        if self._thread is not None:
            self._thread.join(30)

    def _run(self, ready: Any) -> None:
        try:
            asyncio.run(self._loop(ready))
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self._error = e
            ready.set()

    async def _loop(self, ready: Any) -> None:
        import asyncpg
        conn = await asyncpg.connect(**self.cluster.admin_kwargs())
        try:
            stmt = await conn.prepare(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND backend_type = 'client backend'")
            ready.set()
            while not self._stop:
                n = await stmt.fetchval(BENCH_USER)
                self.samples += 1
                if n > self.peak:
                    self.peak = n
                if self.watch is not None:
                    self.watch.sample()
                await asyncio.sleep(self.interval)
        finally:
            await conn.close()
