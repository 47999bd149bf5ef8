"""``workers = N``: N gateway processes sharing ``listen`` and ``pg_listen``.

The supervisor (:func:`serve`, run by ``wirepool serve`` when ``workers > 1``)
binds the addresses, forks N workers and watches them:

* **Sockets.**  On Linux each worker opens its own listening socket with
  ``SO_REUSEPORT`` and the kernel spreads new connections between them; the
  supervisor keeps a bound, non-listening socket per address so that port 0
  resolves once and the port stays reserved while workers restart.  Where
  ``SO_REUSEPORT`` is missing (or does not balance, e.g. macOS/BSD) the
  supervisor listens once and every worker accepts on the inherited socket
  (the pre-fork model).  Windows has no ``fork``: ``workers > 1`` is refused.
* **Pool budget.**  Every pool's ``pool_size``, ``min_pool_size`` and
  ``reserve_pool_size`` (and ``max_client_conn``) are split so the workers'
  figures add up to the configured ones (:func:`split`, shown by
  ``wirepool check``): the backends of the whole gateway never exceed the
  configured pool size plus reserve.
* **Signals.**  SIGTERM/SIGINT are forwarded (each worker drains for
  ``shutdown_timeout``), SIGHUP is forwarded (each worker re-reads the file and
  applies its own share, :func:`worker_config`).  A worker that dies is
  restarted (after 1 s if it had lived less than 1 s); one that exits 0 (admin
  ``SHUTDOWN``) is not, and the supervisor ends when none is left.
* **One gateway seen from outside.**  Each worker serves an internal HTTP
  channel on a unix socket in a private runtime directory
  (gateway/cluster.py): ``/metrics``, the admin console and ``/status`` of the
  worker that answers gather the others', and ``/pg`` requests are forwarded to
  the worker owning their session.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import wait as wait_sentinels
from typing import Any

from .config import Config, format_address

log = logging.getLogger("wirepool.workers")

#: a worker that dies sooner than this after its start is restarted after RESTART_DELAY
QUICK_DEATH = 1.0
RESTART_DELAY = 1.0


def split(total: int, n: int) -> list[int]:
    """``total`` shared by ``n`` workers, larger shares first: ``split(5, 2) == [3, 2]``."""
    q, r = divmod(total, n)
    return [q + (1 if i < r else 0) for i in range(n)]


def worker_config(cfg: Config, index: int, count: int) -> Config:
    """The configuration worker ``index`` of ``count`` runs: its share of each pool."""
    if count <= 1:
        return cfg
    g = cfg.gateway
    dbs = {}
    for name, db in cfg.databases.items():
        dbs[name] = replace(db, pool_size=split(db.effective_pool_size(g), count)[index],
                            min_pool_size=split(db.effective_min_pool_size(g), count)[index],
                            reserve_pool_size=split(db.effective_reserve_pool_size(g), count)[index])
    ng = replace(g, max_client_conn=max(1, split(g.max_client_conn, count)[index]), pid_file=None,
                 control_socket=None)  # takeover (gateway/takeover.py) is per process: not with workers
    return replace(cfg, gateway=ng, databases=dbs)


def budget_lines(cfg: Config) -> list[str]:
    """``wirepool check``: each pool's per-worker figures and their sums."""
    g = cfg.gateway
    n = g.workers
    out = [f"# workers = {n}: each pool's servers are split between the workers (docs/scaling.md)"]
    total = 0
    for name, db in cfg.databases.items():
        size, reserve = db.effective_pool_size(g), db.effective_reserve_pool_size(g)
        sizes, reserves = split(size, n), split(reserve, n)
        total += size + reserve
        out.append(f"#   databases.{name}: pool_size {size} = {' + '.join(map(str, sizes))}; "
                   f"reserve_pool_size {reserve} = {' + '.join(map(str, reserves))}; "
                   f"at most {size + reserve} servers")
    out.append(f"#   max_client_conn {g.max_client_conn} = {' + '.join(map(str, split(g.max_client_conn, n)))}")
    out.append(f"#   all pools: at most {total} backends for this instance "
               "(instances x this must stay <= max_connections - superuser_reserved_connections)")
    return out


def reuse_port_available() -> bool:
    """SO_REUSEPORT that balances between listeners (Linux >= 3.9); ``WIREPOOL_REUSEPORT=0``
    forces the inherited-socket mode of other platforms (tests, or to compare the two)."""
    if os.environ.get("WIREPOOL_REUSEPORT") == "0":
        return False
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


@dataclass
class WorkerContext:
    """What a worker knows of its place in the gateway (passed over ``fork``)."""

    index: int
    count: int
    #: private directory (0700) holding ``worker-<i>.sock``
    runtime_dir: str
    #: shared secret: signs /pg session tokens, authenticates the internal channel
    secret: bytes
    #: resolved addresses (port 0 already replaced)
    listen: tuple[str, int]
    pg_listen: tuple[str, int] | None
    reuse_port: bool
    #: inherited listening sockets (pre-fork mode), None with SO_REUSEPORT
    http_sock: socket.socket | None = None
    pg_sock: socket.socket | None = None

    def socket_path(self, index: int) -> str:
        return os.path.join(self.runtime_dir, f"worker-{index}.sock")

    def listener_socket(self, which: str) -> socket.socket:
        """The socket this worker accepts on for ``listen`` ("http") or ``pg_listen`` ("pg")."""
        inherited = self.http_sock if which == "http" else self.pg_sock
        if inherited is not None:
            return inherited
        addr = self.listen if which == "http" else self.pg_listen
        assert addr is not None
        return bind_socket(addr, listen=True, reuse_port=True)


def bind_socket(addr: tuple[str, int], *, listen: bool, reuse_port: bool, backlog: int = 2048) -> socket.socket:
    host, port = addr
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, stype, proto, _, sockaddr = infos[0]
    s = socket.socket(family, stype, proto)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(sockaddr)
        if listen:
            s.listen(backlog)
            s.setblocking(False)
    except BaseException:
        s.close()
        raise
    return s


# --------------------------------------------------------------------------- worker side

def _worker_main(cfg: Config, config_path: str | None, ctx: WorkerContext) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it forwards SIGTERM
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    import asyncio

    from . import app
    logging.getLogger("wirepool").info("worker %d/%d starting (pid %d)", ctx.index, ctx.count, os.getpid())
    app.install_uvloop()
    try:
        asyncio.run(app.run(worker_config(cfg, ctx.index, ctx.count), config_path=config_path, workers=ctx))
    except KeyboardInterrupt:  # pragma: no cover
        os._exit(130)
    except Exception:
        log.exception("worker %d failed", ctx.index)
        os._exit(1)
    os._exit(0)


# --------------------------------------------------------------------------- supervisor

class Supervisor:
    def __init__(self, cfg: Config, config_path: str | None) -> None:
        if not hasattr(os, "fork"):
            raise OSError("workers > 1 needs fork() (not available on this platform)")
        self.cfg = cfg
        self.config_path = config_path
        g = cfg.gateway
        self.count = g.workers
        self.reuse = reuse_port_available()
        self._keep: list[socket.socket] = []
        listen = self._reserve(g.listen)
        pg = self._reserve(g.pg_listen) if g.pg_listen is not None else None
        if g.control_socket:
            log.warning("gateway.control_socket: takeover is not available with workers > 1 (ignored)")
        self.runtime_dir = tempfile.mkdtemp(prefix="wirepool-workers-")
        os.chmod(self.runtime_dir, 0o700)
        secret = g.cluster_secret.encode() if g.cluster_secret else secrets.token_bytes(32)
        self.base = WorkerContext(0, self.count, self.runtime_dir, secret, listen[0], pg[0] if pg else None,
                                  self.reuse, None if self.reuse else listen[1],
                                  None if self.reuse or pg is None else pg[1])
        self.mp = multiprocessing.get_context("fork")
        self.procs: dict[int, Any] = {}
        self.started: dict[int, float] = {}
        self.done: set[int] = set()
        self.stopping = False
        self._pending: list[int] = []

    def _reserve(self, addr: tuple[str, int]) -> tuple[tuple[str, int], socket.socket]:
        s = bind_socket(addr, listen=not self.reuse, reuse_port=self.reuse)
        self._keep.append(s)
        return (addr[0], s.getsockname()[1]), s

    def _start(self, i: int) -> None:
        ctx = replace(self.base, index=i)
        p = self.mp.Process(target=_worker_main, args=(self.cfg, self.config_path, ctx),
                            name=f"wirepool-worker-{i}", daemon=False)
        p.start()
        self.procs[i] = p
        self.started[i] = time.monotonic()

    def _signal(self, signum: int) -> None:
        self._pending.append(signum)

    def _forward(self, sig: int) -> None:
        for p in self.procs.values():
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def run(self) -> int:
        from .reload import remove_pid_file, write_pid_file
        g = self.cfg.gateway
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, lambda s, f: self._signal(s))
        for i in range(self.count):
            self._start(i)
        write_pid_file(g.pid_file)
        log.info("supervisor %d: %d workers (%s), http+ws %s%s", os.getpid(), self.count,
                 "SO_REUSEPORT" if self.reuse else "shared listening socket", format_address(self.base.listen),
                 f", postgres {format_address(self.base.pg_listen)}" if self.base.pg_listen else "")
        restart_at: dict[int, float] = {}
        deadline: float | None = None
        try:
            while True:
                while self._pending:
                    sig = self._pending.pop(0)
                    if sig == signal.SIGHUP:
                        log.info("SIGHUP: reloading the workers")
                        self._forward(signal.SIGHUP)
                    elif not self.stopping:
                        self.stopping = True
                        deadline = time.monotonic() + g.shutdown_timeout + 10
                        log.info("%s: stopping the workers", signal.Signals(sig).name)
                        self._forward(signal.SIGTERM)
                    else:
                        self._forward(signal.SIGTERM)  # a second signal: the workers close now
                alive = {i: p for i, p in self.procs.items() if p.is_alive()}
                for i, p in list(self.procs.items()):
                    if i in alive or i in self.done:
                        continue
                    p.join(0)
                    code = p.exitcode
                    if self.stopping or code == 0:
                        self.done.add(i)
                        continue
                    now = time.monotonic()
                    if i not in restart_at:
                        quick = now - self.started.get(i, 0) < QUICK_DEATH
                        restart_at[i] = now + (RESTART_DELAY if quick else 0)
                        log.warning("worker %d (pid %s) died with %s; restarting", i, p.pid, code)
                    if now >= restart_at[i]:
                        del restart_at[i]
                        self._start(i)
                if len(self.done) == self.count:
                    return 0
                if deadline is not None and time.monotonic() > deadline:
                    log.warning("workers still running after shutdown_timeout; killing them")
                    self._forward(signal.SIGKILL)
                    deadline = None
                sentinels = [p.sentinel for i, p in self.procs.items() if i not in self.done and p.is_alive()]
                if sentinels:
                    wait_sentinels(sentinels, timeout=0.2)
                else:
                    time.sleep(0.05)
        finally:
            for p in self.procs.values():
                if p.is_alive():
                    p.kill()
                    p.join(5)
            for s in self._keep:
                s.close()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            remove_pid_file(g.pid_file)


def serve(cfg: Config, config_path: str | None = None) -> int:
    """``wirepool serve`` with ``workers > 1``; returns the exit status."""
    try:
        sup = Supervisor(cfg, config_path)
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    return sup.run()


def single_context(cfg: Config) -> WorkerContext | None:
    """workers = 1 with ``advertise_url``: the identity /pg tokens carry (no unix channel)."""
    g = cfg.gateway
    if g.advertise_url is None:
        return None
    return WorkerContext(0, 1, "", (g.cluster_secret or "").encode(), g.listen, g.pg_listen, False)
