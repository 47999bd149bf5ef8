"""``workers = N``: N gateway processes sharing ``listen`` and ``pg_listen``.

The supervisor (:func:`serve`, run by ``wirepool serve`` when ``workers > 1``)
binds the addresses, forks N workers and watches them:

* **Sockets.**  On Linux the supervisor opens one listening socket per worker
  on each address with ``SO_REUSEPORT`` (the kernel spreads new connections
  between them) and each worker accepts on its own, inherited over ``fork``.
  The supervisor keeps them: a worker that dies is restarted on the same
  socket, whose queued connections wait for it instead of being reset, and a
  takeover hands all of them to the successor (gateway/handover.py).  Where
  ``SO_REUSEPORT`` is missing (or does not balance, e.g. macOS/BSD) the
  supervisor listens once and every worker accepts on that socket (the
  pre-fork model).  Windows has no ``fork``: ``workers > 1`` is refused.
* **Pool budget.**  Every pool's ``pool_size``, ``min_pool_size`` and
  ``reserve_pool_size`` (and ``max_client_conn``) are split so the workers'
  figures add up to the configured ones (:func:`split`, shown by
  ``wirepool check``): the backends of the whole gateway never exceed the
  configured pool size plus reserve.
* **Signals.**  SIGTERM/SIGINT are forwarded (each worker drains for
  ``shutdown_timeout``), SIGUSR2 is the supervisor's "a successor took over"
  (stop accepting, drain as the takeover does), SIGHUP is forwarded (each worker re-reads the file and
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
import tempfile
import time
from dataclasses import dataclass, field, replace
from multiprocessing.connection import wait as wait_sentinels
from typing import Any

from . import reuseport
from . import takeover as _takeover
from .config import Config, format_address
from .sockets import assign, reuse_port_balances

log = logging.getLogger("wirepool.workers")

#: a worker that dies sooner than this after its start is restarted after RESTART_DELAY
QUICK_DEATH = 1.0
RESTART_DELAY = 1.0
#: seconds the workers get to start (pools, listeners) before a takeover is given up
READY_TIMEOUT = 120.0


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
                 control_socket=None)  # the supervisor's (gateway/handover.py)
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
    return reuse_port_balances()


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
    #: role ("listen", "pg_listen") -> (every worker's listening sockets, shared by all workers?)
    sockets: dict[str, tuple[list[socket.socket], bool]] = field(default_factory=dict)
    #: 2 bytes shared by the workers of one supervisor, in their /pg session tokens' owner
    generation: bytes = b"\0\0"
    #: unix sockets of the gateway taken over, while it drains (gateway/takeover.py: Predecessor)
    predecessor: list[str] = field(default_factory=list)
    #: pipe the worker writes to once it serves (the supervisor waits for every worker)
    ready_fd: int | None = None
    #: sockets past this gateway's count after a takeover: no new connections; each worker
    #: closes its own once their queues are empty (gateway/reuseport.py)
    retiring: list[socket.socket] = field(default_factory=list)

    def socket_path(self, index: int) -> str:
        return os.path.join(self.runtime_dir, f"worker-{index}.sock")

    def listener_sockets(self, role: str) -> list[socket.socket]:
        """The sockets this worker accepts on for ``role`` ("listen" or "pg_listen")."""
        socks, shared = self.sockets.get(role, ([], True))
        return assign(socks, self.index, self.count, shared)

    def all_sockets(self) -> list[socket.socket]:
        return [s for socks, _ in self.sockets.values() for s in socks]


# --------------------------------------------------------------------------- worker side

def _worker_main(cfg: Config, config_path: str | None, ctx: WorkerContext, close: list[Any]) -> None:
    os.setpgrp()  # a terminal's Ctrl-C reaches the supervisor only; it forwards SIGTERM
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    # the supervisor tells systemd and `wirepool takeover` it serves, not each worker
    os.environ.pop("NOTIFY_SOCKET", None)
    ready_fd = os.environ.pop("WIREPOOL_READY_FD", None)
    if ready_fd is not None and ready_fd.isdigit():
        close.append(int(ready_fd))  # `wirepool takeover` reads until the supervisor's line or EOF
    mine = set(map(id, ctx.listener_sockets("listen") + ctx.listener_sockets("pg_listen")))
    for obj in [*close, *(s for s in ctx.all_sockets() if id(s) not in mine)]:
        try:  # the supervisor's fds this worker has no use for (control socket, others' sockets)
            os.close(obj) if isinstance(obj, int) else obj.close()
        except OSError:
            pass
    import asyncio

    from . import app
    logging.getLogger("wirepool").info("worker %d/%d starting (pid %d)", ctx.index, ctx.count, os.getpid())
    app.install_uvloop()

    def ready(_app: Any) -> None:
        if ctx.ready_fd is not None:
            try:
                os.write(ctx.ready_fd, b"r")
                os.close(ctx.ready_fd)
            except OSError:
                pass
    try:
        asyncio.run(app.run(worker_config(cfg, ctx.index, ctx.count), config_path=config_path, workers=ctx,
                            ready_callback=ready))
    except KeyboardInterrupt:  # pragma: no cover
        os._exit(130)
    except Exception:
        log.exception("worker %d failed", ctx.index)
        os._exit(1)
    os._exit(0)


# --------------------------------------------------------------------------- supervisor

class Supervisor:
    def __init__(self, cfg: Config, config_path: str | None, takeover: bool = False) -> None:
        if not hasattr(os, "fork"):
            raise OSError("workers > 1 needs fork() (not available on this platform)")
        from .handover import listening_sockets, receive_for_workers
        self.cfg = cfg
        self.config_path = config_path
        g = cfg.gateway
        self.count = g.workers
        self.reuse = reuse_port_available()
        #: the process taken over (``--takeover``): its sockets, then its GO
        self.handover = receive_for_workers(g.control_socket) if takeover else None
        received = self.handover.sockets if self.handover is not None else {}
        try:
            socks = {"listen": listening_sockets(g.listen, received.get("listen", []), self.count, self.reuse)}
            if g.pg_listen is not None:
                socks["pg_listen"] = listening_sockets(g.pg_listen, received.get("pg_listen", []), self.count,
                                                       self.reuse)
            #: role -> how many of its sockets came from the predecessor (the new ones follow them)
            self.received = {role: len(received.get(role, [])) for role in socks}
            retiring = reuseport.shrink({r: ss for r, (ss, shared) in socks.items() if not shared}, self.count) \
                if self.handover is not None else []
        except BaseException:
            if self.handover is not None:
                self.handover.abort()
            raise
        #: when the supervisor closes its copies of the retiring sockets (the workers have closed theirs)
        self.retire_at: float | None = None
        for s in received.get("pg_listen", []) if g.pg_listen is None else ():
            s.close()  # pg_listen removed from the file: the predecessor's socket closes with it
        self.runtime_dir = tempfile.mkdtemp(prefix="wirepool-workers-")
        os.chmod(self.runtime_dir, 0o700)
        secret = g.cluster_secret.encode() if g.cluster_secret else secrets.token_bytes(32)
        listen = (g.listen[0], socks["listen"][0][0].getsockname()[1])
        pg = (g.pg_listen[0], socks["pg_listen"][0][0].getsockname()[1]) if g.pg_listen is not None else None
        gen = secrets.token_bytes(2)
        if self.handover is not None:
            while gen.hex() == self.handover.info.get("generation"):
                gen = secrets.token_bytes(2)
        self.base = WorkerContext(0, self.count, self.runtime_dir, secret, listen, pg, self.reuse, socks, gen,
                                  self.handover.forward if self.handover is not None else [], retiring=retiring)
        self.mp = multiprocessing.get_context("fork")
        self.procs: dict[int, Any] = {}
        self.started: dict[int, float] = {}
        self.ready: dict[int, int] = {}  # worker -> read end of its readiness pipe
        self.done: set[int] = set()
        self.stopping = False
        self.control: Any = None
        self._pending: list[int] = []

    def _start(self, i: int) -> None:
        r, w = os.pipe()
        ctx = replace(self.base, index=i, ready_fd=w)
        close = [*self.ready.values(), r] + ([self.control.sock] if self.control is not None else [])
        p = self.mp.Process(target=_worker_main, args=(self.cfg, self.config_path, ctx, close),
                            name=f"wirepool-worker-{i}", daemon=False)
        try:
            p.start()
        finally:
            os.close(w)
        self._close_ready(i)
        self.ready[i] = r
        self.procs[i] = p
        self.started[i] = time.monotonic()

    def _close_ready(self, i: int) -> None:
        fd = self.ready.pop(i, None)
        if fd is not None:
            os.close(fd)

    def wait_ready(self, timeout: float) -> bool:
        """Until every worker serves (True), or one died or ``timeout`` passed (False)."""
        import select
        deadline = time.monotonic() + timeout
        while self.ready:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            fds = list(self.ready.values())
            readable, _, _ = select.select(fds, [], [], min(left, 0.5))
            for i, fd in list(self.ready.items()):
                if fd in readable:
                    got = os.read(fd, 16)
                    self._close_ready(i)
                    if not got:  # the worker ended before it served
                        return False
        return True

    def hand_over(self) -> None:
        """A successor took over (gateway/handover.py): the workers stop accepting and drain."""
        log.info("takeover: handed over; the workers finish their clients")
        self.stopping = True
        self._forward(signal.SIGUSR2)
        # the successor holds its own copies; ours would keep a socket it retires in the group
        # until this process exits (gateway/reuseport.py).  No worker is restarted from now on.
        for s in self.base.all_sockets():
            s.close()
        self.base.retiring, self.retire_at = [], None

    def _drop_retiring(self) -> None:
        """Close this process's copies of the retiring sockets and forget them."""
        gone = set(map(id, self.base.retiring))
        if not gone:
            return
        for s in self.base.retiring:
            s.close()
        self.base.sockets = {r: ([s for s in ss if id(s) not in gone], shared)
                             for r, (ss, shared) in self.base.sockets.items()}
        self.base.retiring = []
        self.retire_at = None

    def _signal(self, signum: int) -> None:
        self._pending.append(signum)

    def _forward(self, sig: int) -> None:
        for p in self.procs.values():
            if p.is_alive() and p.pid:
                try:
                    os.kill(p.pid, sig)
                except ProcessLookupError:
                    pass

    def _begin(self) -> bool:
        """Start the workers; with ``--takeover``, let the predecessor go once they all serve."""
        from .handover import SupervisorControl
        g = self.cfg.gateway
        if g.control_socket and self.handover is None:
            self.control = SupervisorControl(self, g.control_socket)  # refused while another gateway runs
        for i in range(self.count):
            self._start(i)
        ok = self.wait_ready(READY_TIMEOUT)
        if self.handover is not None:
            if not ok:
                log.error("takeover: the workers did not start; the running gateway carries on")
                self.handover.abort()
                return False
            try:
                self.handover.commit()
            except BaseException:
                reuseport.restore(self.handover.sockets)  # the predecessor carries on, on all its sockets
                raise
            for role, (socks, shared) in self.base.sockets.items():
                if not shared:
                    reuseport.grow(socks, self.received.get(role, 0), self.handover.info.get("retiring"))
            if self.base.retiring:
                self.retire_at = time.monotonic() + reuseport.RETIRE_GRACE + 0.5
            if g.control_socket:
                self.control = SupervisorControl(self, g.control_socket)
        if self.control is not None:
            self.control.start()
        return True

    def run(self) -> int:
        from .reload import remove_pid_file, write_pid_file
        g = self.cfg.gateway
        for stop_sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(stop_sig, lambda s, f: self._signal(s))
        restart_at: dict[int, float] = {}
        deadline: float | None = None
        try:
            if not self._begin():
                return 1
            write_pid_file(g.pid_file)
            _takeover.signal_ready()  # systemd: MAINPID = this supervisor; `wirepool takeover` returns
            log.info("supervisor %d: %d workers (%s), http+ws %s%s", os.getpid(), self.count,
                     "shared listening socket" if any(sh for _, sh in self.base.sockets.values()) else "SO_REUSEPORT",
                     format_address(self.base.listen),
                     f", postgres {format_address(self.base.pg_listen)}" if self.base.pg_listen else "")
            while True:
                while self._pending:
                    sig = self._pending.pop(0)
                    if sig == signal.SIGHUP:
                        log.info("SIGHUP: reloading the workers")
                        self._forward(signal.SIGHUP)
                    elif not self.stopping:
                        self.stopping = True
                        log.info("%s: stopping the workers", signal.Signals(sig).name)
                        self._forward(signal.SIGTERM)
                    else:
                        self._forward(signal.SIGTERM)  # a second signal: the workers close now
                if self.retire_at is not None and time.monotonic() >= self.retire_at:
                    self._drop_retiring()
                if self.stopping and deadline is None:
                    deadline = time.monotonic() + g.shutdown_timeout + 10
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
                    deadline = float("inf")
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
            for i in list(self.ready):
                self._close_ready(i)
            if self.control is not None:
                self.control.close()
            for s in self.base.all_sockets():
                s.close()
            shutil.rmtree(self.runtime_dir, ignore_errors=True)
            remove_pid_file(g.pid_file)


def serve(cfg: Config, config_path: str | None = None, takeover: bool = False) -> int:
    """``wirepool serve`` with ``workers > 1``; returns the exit status."""
    try:
        sup = Supervisor(cfg, config_path, takeover)
    except OSError as e:
        log.error("cannot start: %s", e)
        return 1
    try:
        return sup.run()
    except OSError as e:  # the control socket in use, a takeover the predecessor refused
        log.error("cannot start: %s", e)
        return 1


def single_context(cfg: Config) -> WorkerContext | None:
    """workers = 1 with ``advertise_url`` or ``peer_id``: the identity /pg tokens and
    cancel keys carry (no unix channel)."""
    g = cfg.gateway
    if g.advertise_url is None and not g.peer_id:
        return None
    return WorkerContext(0, 1, "", (g.cluster_secret or "").encode(), g.listen, g.pg_listen, False,
                         generation=secrets.token_bytes(2))
