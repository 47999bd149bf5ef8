"""Zero-downtime restart (gateway/takeover.py, docs/takeover.md): a new
``wirepool serve`` started by ``wirepool takeover`` (the systemd ExecReload)
takes over the listening sockets of a running one while 200 clients run short
transactions over TCP (asyncpg) and WebSocket (the driver), plus driver
clients over HTTP ``/pg`` whose transactions span the handover.  The load
generator counts: zero failed transactions, zero refused connections."""

from __future__ import annotations

import asyncio
import errno
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
import psycopg
import pytest

import driver
from tests.gateway import served
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import admin, eventually
from tests.pgcluster import PgCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def write_config(path: Path, pg: PgCluster, dbname: str, http_port: int, pg_port: int, *, shutdown_timeout: float = 10,
                 pool_size: int = 20, workers: int = 1) -> None:
    d = path.parent
    served.write_config(path, pg, dbname, {
        "listen": f"127.0.0.1:{http_port}", "pg_listen": f"127.0.0.1:{pg_port}", "auth_type": "password",
        "default_pool_size": pool_size, "query_wait_timeout": 60, "shutdown_timeout": shutdown_timeout,
        "admin_users": ["alice"], "pid_file": str(d / "wirepool.pid"), "control_socket": str(d / "wirepool.ctl"),
        "workers": workers})


class Load:
    """Clients that connect, run a few short transactions (each inserts one row
    naming its kind), disconnect, again."""

    def __init__(self) -> None:
        self.ok: dict[str, int] = {}
        self.connects = 0
        self.failures: list[str] = []
        self.refused: list[str] = []
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[Any]] = []

    @property
    def total(self) -> int:
        return sum(self.ok.values())

    def add(self, kind: str, n: int, connect: Callable[[], Awaitable[Any]], per_conn: int = 3) -> None:
        self.ok.setdefault(kind, 0)
        self.tasks += [asyncio.ensure_future(self._client(kind, connect, per_conn)) for _ in range(n)]

    async def _client(self, kind: str, connect: Callable[[], Awaitable[Any]], per_conn: int) -> None:
        while not self.stop.is_set():
            try:
                conn = await connect()
            except (ConnectionRefusedError, ConnectionResetError) as exc:
                self.refused.append(repr(exc))
                continue
            except Exception as exc:  # counted: the proof is the count
                self.failures.append(f"{time.time():.3f} {kind} connect: {exc!r}")
                continue
            self.connects += 1
            try:
                for _ in range(per_conn):
                    async with conn.transaction():
                        await conn.execute("SELECT pg_sleep(0.005)")
                        await conn.execute(f"INSERT INTO tk(kind) VALUES ('{kind}')")
                    self.ok[kind] += 1
            except Exception as exc:
                self.failures.append(f"{time.time():.3f} {kind} {exc!r}")
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


async def cancel_from_a_new_connection(conn: psycopg.AsyncConnection[Any], pg: PgCluster, dbname: str) -> None:
    """libpq's CancelRequest (a new connection to the same address) for a
    ``pg_sleep(30)`` running on ``conn``: the query ends with 57014 at once."""
    watcher = await admin(pg, dbname)
    try:
        t0 = time.monotonic()
        task = asyncio.ensure_future(conn.execute("SELECT pg_sleep(30)"))
        await eventually(lambda: watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                                  "AND query = 'SELECT pg_sleep(30)'"), timeout=20,
                         what="the query running")
        await conn.cancel_safe()
        with pytest.raises(psycopg.errors.QueryCanceled):
            await asyncio.wait_for(task, 20)
        assert time.monotonic() - t0 < 15
        assert await (await conn.execute("SELECT 7")).fetchone() == (7,)
    finally:
        await watcher.close()


async def _takeover(cfg: Path, out: Path, notify: Path | None = None) -> None:
    """The systemd ExecReload: returns once the new gateway serves."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), **({"NOTIFY_SOCKET": str(notify)} if notify else {}))
    with open(out, "wb") as f:
        r = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "gateway.cli", "takeover",
                                                     "--config", str(cfg)],
                                    stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(ROOT), timeout=120)
    assert r.returncode == 0, out.read_text()[-3000:]


def _listening_inodes(port: int) -> set[int]:
    """The listening TCP sockets on ``port`` (any address), by inode, from /proc/net/tcp*."""
    out = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and int(cols[1].rpartition(":")[2], 16) == port:
                out.add(int(cols[9]))
    return out


def _layout(pid: int, ports: tuple[int, ...]) -> int | None:
    """How many workers the gateway ``pid`` serves with, when each worker (or the lone
    process) holds exactly one listening socket per port of ``ports``, its own, and no
    other process holds any other socket on them; else None."""
    try:
        proc = psutil.Process(pid)
        procs = proc.children() or [proc]
        held = []
        for p in procs:
            links = [os.readlink(f"/proc/{p.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{p.pid}/fd")]
            held.append({int(x[8:-1]) for x in links if x.startswith("socket:[")})
    except (OSError, psutil.Error):
        return None
    for port in ports:
        every = _listening_inodes(port)
        mine = [h & every for h in held]
        if any(len(m) != 1 for m in mine) or set().union(*mine) != every or len(every) != len(procs):
            return None
    return len(procs)


def _drains(text: str) -> dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]]:
    """pid -> (accepted when it stopped accepting, accepted when every client had left)."""
    out: dict[str, Any] = {}
    for pid, *acc in re.findall(r"TAKEOVER: pid (\d+) stopped accepting \(accepted: (\d+) http, (\d+) tcp;", text):
        out[pid] = (tuple(acc), None)
    for pid, *acc in re.findall(r"TAKEOVER: pid (\d+): every client left.*\(accepted: (\d+) http, (\d+) tcp;", text):
        out[pid] = (out.get(pid, (None,))[0], tuple(acc))
    return out


async def test_takeover_under_load_workers_1_to_3_to_2_to_1(pg, pg_db, tmp_path):
    """Three takeovers under load, each into another worker count, each ending
    in the layout a fresh start of that count has: a lone process (one socket
    per address, bound without SO_REUSEPORT) is taken over by ``workers = 3``
    (its socket made joinable, two new ones join: one socket per worker), that
    by ``workers = 2`` (the third socket retires), that by a lone process again
    (one socket per address).  Across all three: every transaction counted by
    the load generator is in the table once, none failed, no connection
    refused; an HTTP transaction begun before a handover commits after it, and
    a CancelRequest landing on the successor reaches a query running in the
    predecessor."""
    pg.psql("CREATE TABLE tk (kind text NOT NULL); GRANT ALL ON tk TO scram_user", db=pg_db)
    http_port, pg_port = free_port(), free_port()
    cfg = tmp_path / "wirepool.toml"
    write_config(cfg, pg, pg_db, http_port, pg_port, shutdown_timeout=60, workers=1)
    log = tmp_path / "serve.log"
    # systemd's Type=notify: the supervisors report to NOTIFY_SOCKET (deploy/systemd/wirepool.service)
    notify_path = tmp_path / "notify"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    old = _serve(cfg, log, "serve", NOTIFY_SOCKET=str(notify_path))
    pid_file = tmp_path / "wirepool.pid"
    pids: list[int] = [old.pid]
    load = Load()
    dsn_http = f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{http_port}/app"
    try:
        await eventually(lambda: _pid(pid_file) == old.pid and (tmp_path / "wirepool.ctl").exists(),
                         timeout=30, what="old gateway up")
        load.add("tcp", 100, lambda: asyncpg.connect(host="127.0.0.1", port=pg_port, user="alice",
                                                     password=ALICE_PASSWORD, database="app"), per_conn=2)
        load.add("ws", 100, lambda: driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{http_port}/v2?dbname=app"),
                 per_conn=2)
        # HTTP /pg sessions: BEGIN .. COMMIT is several requests, each on a new
        # connection once the old process answers `connection: close`.
        load.add("http", 10, lambda: driver.connect(dsn_http), per_conn=3)
        steps = [3, 2, 1]
        for step, workers in enumerate(steps):
            out = tmp_path / f"takeover{step + 1}.log"
            await eventually(lambda: load.total > 100 + 150 * step, timeout=60, what="load running")
            before = load.total
            held = await psycopg.AsyncConnection.connect(host="127.0.0.1", port=pg_port, user="alice",
                                                          password=ALICE_PASSWORD, dbname="app", autocommit=True)
            span = await driver.connect(dsn_http)
            tr = span.transaction()
            await tr.start()
            await span.execute(f"INSERT INTO tk(kind) VALUES ('span{step}')")
            write_config(cfg, pg, pg_db, http_port, pg_port, shutdown_timeout=60, workers=workers)
            await _takeover(cfg, out, notify_path)
            new_pid = _pid(pid_file)
            assert new_pid is not None and new_pid not in pids, out.read_text()[-3000:]
            pids.append(new_pid)
            # the predecessor still holds `held` and `span`: a CancelRequest sent to the
            # listening socket (now the successor's) reaches held's query there (checked from a
            # lone process to workers and back; workers to workers route the same way)
            if workers != 2:
                await cancel_from_a_new_connection(held, pg, pg_db)
            await held.close()
            await tr.commit()  # a request of the predecessor's /pg session, forwarded to it
            await span.close()
            # the layout of a fresh start with this count (while the predecessor drains): one
            # listening socket per worker and address, and no other socket left on the ports
            await eventually(lambda: _layout(new_pid, (http_port, pg_port)) == workers, timeout=30,
                             what=f"one listening socket per worker of {workers}")
            after = load.total
            await eventually(lambda: load.total > after + 40, timeout=60, what="load running on the new gateway")
            assert load.total > before + 80
            assert psutil.pid_exists(new_pid)

        # each predecessor finishes its clients and exits by itself, well within shutdown_timeout
        def gone(pid: int) -> bool:
            if pid == old.pid:
                return old.poll() is not None
            try:
                return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
            except psutil.NoSuchProcess:
                return True
        try:
            await eventually(lambda: all(gone(p) for p in pids[:-1]), timeout=45, what="the predecessors to exit")
        except AssertionError:
            raise AssertionError(f"{load.failures[:5]}\n" + "\n".join(
                p.read_text()[-3000:] for p in [log, *tmp_path.glob("takeover*.log")])) from None
        assert old.returncode == 0, log.read_text()[-3000:]
        await load.finish()
        text = log.read_text()
        logs = [log] + [tmp_path / f"takeover{i}.log" for i in (1, 2)]
        # every worker of each predecessor accepted nothing after the handover, and its clients left by themselves
        drains = [_drains(p.read_text()) for p in logs]
        assert [len(d) for d in drains] == [1, 3, 2], drains
        for d in drains:
            for pid, (start, end) in d.items():
                assert start is not None and start == end, (pid, start, end)
        received = [re.findall(r"received listen \S+( \(x\d\))?", (tmp_path / f"takeover{i}.log").read_text())
                    for i in (1, 2, 3)]
        assert received == [[""], [" (x3)"], [" (x2)"]], received  # the sockets each predecessor offered
        assert "3 workers (SO_REUSEPORT)" in (tmp_path / "takeover1.log").read_text()
        assert "2 workers (SO_REUSEPORT)" in (tmp_path / "takeover2.log").read_text()
        assert len(re.findall(r"retired listening socket", (tmp_path / "takeover2.log").read_text())) == 2
        assert len(re.findall(r"retired listening socket", (tmp_path / "takeover3.log").read_text())) == 2
        print(f"takeover under load: {load.ok} transactions, {load.connects} connections, "
              f"{len(load.failures)} failed, {len(load.refused)} refused")
        assert load.failures == [], load.failures[:5]
        assert load.refused == [], load.refused[:5]
        a = await admin(pg, pg_db)
        try:
            rows = dict(await a.fetch("SELECT kind, count(*) FROM tk GROUP BY kind"))
        finally:
            await a.close()
        spans = {f"span{i}": 1 for i in range(len(steps))}
        assert rows == {**load.ok, **spans}, (rows, load.ok)  # each committed exactly once
        notify.setblocking(False)
        states = []
        while True:
            try:
                states.append(notify.recv(4096).decode())
            except BlockingIOError:
                break
        assert states == [f"MAINPID={p}\nREADY=1" for p in pids], (states, text[-2000:])
    finally:
        notify.close()
        if not load.stop.is_set():
            load.stop.set()
            await asyncio.wait(load.tasks, timeout=30)
        if old.poll() is None:
            old.kill()
            old.wait()
        for pid in pids[1:]:
            _stop_pid(pid)
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
    workers = tmp_path / "workers.toml"  # the same with workers: the supervisor says it
    write_config(workers, pg, pg_db, http_port, pg_port, workers=2)
    r = subprocess.run([sys.executable, "-m", "gateway.cli", "serve", "--takeover", "--config", str(workers)],
                       capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=60)
    assert r.returncode == 1 and "no running gateway answers on control_socket" in r.stderr, r.stderr
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


def _spread(socks: list[socket.socket], n: int = 120) -> list[int]:
    """Connect ``n`` times to the sockets' port: how many landed on each (none refused)."""
    port = socks[0].getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    counts = [0] * len(socks)
    deadline = time.monotonic() + 10
    while sum(counts) < n and time.monotonic() < deadline:
        for i, s in enumerate(socks):
            s.setblocking(False)
            try:
                s.accept()[0].close()
                counts[i] += 1
            except BlockingIOError:
                pass
    for c in clients:
        c.close()
    assert sum(counts) == n, counts
    return counts


def test_listening_sockets_for_n_then_m_workers() -> None:
    """gateway/handover.py + gateway/reuseport.py: the sockets a successor's workers accept
    on, and where the kernel sends new connections meanwhile (real sockets and connections)."""
    from gateway import reuseport
    from gateway.handover import listening_sockets
    from gateway.sockets import assign, reuse_port_of
    two, shared = listening_sockets(("127.0.0.1", 0), [], 2, True)  # a supervisor of 2: one socket each
    lone = socket.create_server(("127.0.0.1", 0))  # a lone process's: no SO_REUSEPORT
    made: list[socket.socket] = [*two, lone]
    try:
        assert not shared and len(two) == 2 and all(reuse_port_of(s) for s in two)
        assert two[0].getsockname() == two[1].getsockname()
        assert all(_spread(two))  # no steering: the kernel's hash spreads them
        three, shared = listening_sockets(("127.0.0.1", 9), two, 3, True)  # 2 -> 3: one more joins the port
        made += three[2:]
        assert not shared and three[:2] == two and len(three) == 3
        assert three[2].getsockname() == two[0].getsockname()
        assert _spread(three)[2] == 0  # the new one gets nothing until the successor serves...
        reuseport.grow(three, 2)
        assert all(_spread(three))  # ...then its share
        assert [assign(three, i, 2, shared) for i in range(2)] == [[three[0], three[2]], [three[1]]]  # 3 -> 2
        assert reuseport.shrink({"listen": three}, 2) == [three[2]]  # the third retires: no new connections
        assert _spread(three)[2] == 0 and all(_spread(three)[:2])
        # 1 -> 3: the lone process's socket is made joinable; two new ones join it
        one, shared = listening_sockets(("127.0.0.1", 9), [lone], 3, True)
        made += one[1:]
        assert not shared and one[0] is lone and len(one) == 3 and reuse_port_of(lone)
        assert _spread(one) == [120, 0, 0]
        reuseport.grow(one, 1)
        assert all(_spread(one)) and [assign(one, i, 3, shared) for i in range(3)] == [[s] for s in one]
        reuseport.restore({"listen": one})  # a takeover given up: all of the predecessor's again
        assert all(_spread(one))
        pre, shared = listening_sockets(("127.0.0.1", 9), two, 3, False)  # no SO_REUSEPORT here: share them
        assert shared and pre == two
        assert reuseport.foreign(one) == 0 and reuseport.foreign(one[:2]) == 1
    finally:
        for s in made:
            s.close()


@pytest.mark.parametrize("first_reuses", [True, False])
def test_fresh_workers_refuse_a_port_already_listened_on(first_reuses: bool) -> None:
    """A second `wirepool serve` with workers > 1 on a port a gateway already listens on
    fails with EADDRINUSE, whether that gateway has workers (SO_REUSEPORT sockets, which
    ours would otherwise join and share connections with) or is a lone process."""
    from gateway.handover import listening_sockets
    from gateway.sockets import address_of
    first, _ = listening_sockets(("127.0.0.1", 0), [], 2 if first_reuses else 1, first_reuses)
    addr = address_of(first[0])
    try:
        with pytest.raises(OSError) as e:
            listening_sockets(addr, [], 2, True)
        assert e.value.errno == errno.EADDRINUSE
    finally:
        for s in first:
            s.close()
    # and once it is gone, the port is free again
    again, _ = listening_sockets(addr, [], 2, True)
    for s in again:
        s.close()
