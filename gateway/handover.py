"""Takeover with ``workers = N`` (docs/takeover.md): the supervisor's side.

The protocol is gateway/takeover.py's; here a ``workers = N`` supervisor plays
either part, against a supervisor or a lone process, with any worker counts:

* **Offering** (:class:`SupervisorControl`, a thread of the running
  supervisor): it holds every worker's listening sockets (gateway/workers.py),
  so it sends them all, and names its workers' internal unix sockets as
  ``forward`` (any worker routes a ``/pg`` request or a cancel to the sibling
  holding the session).  On ``GO`` it sends its workers SIGUSR2: each stops
  accepting and drains as a taken-over process does (``TAKEOVER`` mode:
  clients leave by themselves for half of ``shutdown_timeout``, then the
  graceful shutdown), and the supervisor exits once they have.
* **Taking over** (``wirepool serve --takeover`` with ``workers = M``): the new
  supervisor receives the sockets (:func:`receive_for_workers`), keeps every one
  of them (closing one with connections in its queue would reset them) and ends
  with the layout a fresh start of M has, one ``SO_REUSEPORT`` socket per worker
  (gateway/reuseport.py): M > N: new sockets join the port (a lone process's
  socket, bound without ``SO_REUSEPORT``, is made joinable first) and get
  connections once the workers serve; M < N: the sockets past M get no new
  connection and are closed once their queues are empty (meanwhile some workers
  accept on two).  Where that is not possible (no ``SO_REUSEPORT`` balancing)
  all M workers share the socket(s) received.  Once every worker serves, it says
  ``GO``; then it offers the sockets on ``control_socket`` in turn (not the
  retiring ones).  Until the predecessor has exited its ``/pg`` sessions and
  cancel keys are reached through ``forward`` (gateway/cluster.py, gateway/peers.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
from typing import TYPE_CHECKING

from . import reuseport
from .sockets import address_of, bind_socket, reuse_port_of, send_sockets, slots
from .takeover import REQUEST, ROLES, Handover, TakeoverError, _read_line_blocking, bind_control, offer_header, receive

if TYPE_CHECKING:  # pragma: no cover
    from .workers import Supervisor

log = logging.getLogger("wirepool.handover")

#: seconds the successor may take from receiving the sockets to its GO
GO_TIMEOUT = 300.0


def listening_sockets(addr: tuple[str, int], received: list[socket.socket], count: int,
                      reuse: bool) -> tuple[list[socket.socket], bool]:
    """The listening sockets of one address for ``count`` workers and whether
    every worker accepts on all of them (shared) rather than on its own.
    Sockets received from a predecessor come first, in its order; a lone
    process's socket is made joinable, and new ones get no connection until
    :func:`gateway.reuseport.grow` after the handover (gateway/reuseport.py)."""
    if received:
        if reuse and len(received) < count:
            for s in received:
                if not reuse_port_of(s):
                    reuseport.join(s)  # a lone process's (or the pre-fork mode's) socket: others may join it
        grows = reuse and len(received) < count and all(reuse_port_of(s) for s in received)
        if grows:
            reuseport.steer(received[0], len(received))  # before the new ones join (no group yet: fails)
        socks = slots(received, count, reuse)
        if grows and len(socks) > len(received):
            reuseport.steer(received[0], len(received))  # the group exists now
        return socks, not (reuse and all(reuse_port_of(s) for s in received))
    if not reuse:
        return [bind_socket(addr, listen=True, reuse_port=False)], True
    if addr[1]:
        # A listener already there (another gateway's workers, bound with SO_REUSEPORT as ours
        # are) would otherwise be joined, and quietly given half of the new connections: a
        # probe without SO_REUSEPORT fails with EADDRINUSE as a lone process's bind does.
        bind_socket(addr, listen=False, reuse_port=False).close()
    first = bind_socket(addr, listen=True, reuse_port=True)  # port 0 resolves here; the others join it
    out = [first]
    try:
        out += [bind_socket(address_of(first), listen=True, reuse_port=True) for _ in range(count - 1)]
    except BaseException:
        for s in out:
            s.close()
        raise
    return out, False


def receive_for_workers(path: str | None) -> Handover:
    if not path:
        raise TakeoverError("--takeover needs gateway.control_socket")
    return receive(path)


class SupervisorControl:
    """The running supervisor's control socket: offers every worker's sockets to a successor."""

    def __init__(self, sup: "Supervisor", path: str) -> None:
        self.sup = sup
        self.path = path
        self.sock: socket.socket | None = bind_control(path)
        self.handed_over = False
        self.thread = threading.Thread(target=self._loop, name="wirepool-control", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _loop(self) -> None:
        while not self.handed_over and self.sock is not None:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            with conn:
                try:
                    self._serve(conn)
                except Exception:
                    log.exception("takeover: control connection failed")

    def _offer(self) -> tuple[list[str], list[int], list[str]]:
        ctx = self.sup.base
        roles, fds = [], []
        retiring = set(map(id, ctx.retiring))  # not passed on (gateway/reuseport.py)
        for role in ROLES:
            for s in ctx.sockets.get(role, ([], True))[0]:
                if id(s) in retiring:
                    continue
                roles.append(role)
                fds.append(s.fileno())
        return roles, fds, [ctx.socket_path(i) for i in range(ctx.count)]

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        if _read_line_blocking(conn) != REQUEST.strip():
            conn.sendall(b"ERR unknown request\n")
            return
        roles, fds, forward = self._offer()
        send_sockets(conn, offer_header(roles, forward, generation=self.sup.base.generation.hex(),
                                        retiring=len(self.sup.base.retiring),
                                        workers=self.sup.count), fds)
        log.info("takeover: offered %d sockets (%s) to a successor; waiting for it to start", len(fds),
                 ", ".join(sorted(set(roles))))
        conn.settimeout(GO_TIMEOUT)
        try:
            line = _read_line_blocking(conn)
        except OSError:
            line = b""
        if line != b"GO":
            log.warning("takeover: the successor gave up (%r); still serving", line[:100])
            return
        self.handed_over = True
        self.sup.hand_over()
        self._unlink()
        conn.sendall(b"OK " + json.dumps({"forward": forward}).encode() + b"\n")

    def _unlink(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
            try:
                os.unlink(self.path)
            except OSError:
                pass

    def close(self) -> None:
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)  # wakes the thread's accept()
            except OSError:
                pass
        self._unlink()  # not once handed over: the path is the successor's then
