"""A takeover into another number of listening sockets, without refusing or resetting a connection.

A fresh ``wirepool serve`` with ``workers = M`` listens on M ``SO_REUSEPORT``
sockets per address, one per worker (gateway/workers.py); a lone process on one.
A takeover (docs/takeover.md) hands the *same* sockets to the successor, so it
starts with the predecessor's count N.  This module brings it to its own count
on Linux, where the sockets of one address form a kernel "reuseport group" that
picks one of them for each new connection:

* **Join** (:func:`join`).  A lone process's socket, bound without
  ``SO_REUSEPORT``, gets the option while it listens; new sockets can then bind
  the port, and the first to listen forms a group with it.
* **Steer** (:func:`steer`).  A classic BPF program attached to the group
  (``SO_ATTACH_REUSEPORT_CBPF``) sends each new connection to a random one of
  the group's first ``n`` sockets.  The group keeps its sockets in the order they
  began listening, which is the order a takeover passes them on (slots 0..N-1),
  so the first ``n`` are known ones.  Growing (N < M): steer to N, the new
  sockets join at the end and get nothing until the successor serves, then
  steer to M.  Shrinking (N > M): steer to M; sockets M..N-1 get no new
  connection and *retire*.
* **Retire** (:func:`retire`).  A retiring socket is still accepted on for
  :data:`RETIRE_GRACE` seconds (handshakes begun before the steering complete)
  and until its accept queue is empty (``TCP_INFO``), then closed.  Nothing that
  reached it is reset; a handshake still unfinished after the grace (its ACK lost
  twice) would be.  Retiring sockets are not offered to a further successor.
* **Foreign sockets** (:func:`foreign`).  A socket of the group that is not ours
  (one the predecessor was still retiring when it handed over, closed by it at
  once) would shift the positions of the new ones: growing waits (at most
  :data:`FOREIGN_WAIT` s) until ``/proc/net/tcp*`` shows none before steering to M
  (only if the predecessor says it was retiring some: that file is slow to read
  with many connections).

Where any of this is missing (not Linux, ``WIREPOOL_REUSEPORT=0``, a kernel
without reuseport BPF) the successor keeps the predecessor's sockets as before:
a lone socket shared by all workers, or several sockets per worker.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import socket
import struct
import time
from typing import Any, Iterable

log = logging.getLogger("wirepool.reuseport")

#: <asm-generic/socket.h>: not in Python's socket module
SO_ATTACH_REUSEPORT_CBPF = 51
#: seconds a retiring socket is still accepted on after the steering away from it
RETIRE_GRACE = 3.0
#: seconds growing waits for the sockets a predecessor was retiring to close
FOREIGN_WAIT = 10.0
#: a retiring socket whose queue never empties is closed after this many seconds anyway
RETIRE_MAX = 60.0

# classic BPF: A = random(); A %= n; return A  (the index of the group's socket)
_LD_RANDOM = (0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF)  # BPF_LD|BPF_W|BPF_ABS, SKF_AD_OFF + SKF_AD_RANDOM
_MOD_K = 0x94  # BPF_ALU|BPF_MOD|BPF_K
_RET_A = (0x16, 0, 0, 0)  # BPF_RET|BPF_A


def join(sock: socket.socket) -> bool:
    """Let other sockets join ``sock``'s port (SO_REUSEPORT set while it listens)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return True
    except (OSError, AttributeError):
        return False


def steer(sock: socket.socket, n: int) -> bool:
    """New connections to ``sock``'s reuseport group go to its first ``n`` sockets
    (False: no group yet, or no reuseport BPF here)."""
    prog = b"".join(struct.pack("HBBI", *ins) for ins in (_LD_RANDOM, (_MOD_K, 0, 0, max(1, n)), _RET_A))
    buf = ctypes.create_string_buffer(prog, len(prog))
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF,
                        struct.pack("HL", len(prog) // 8, ctypes.addressof(buf)))
        return True
    except OSError as e:
        log.debug("reuseport steering on %s failed: %s", _name(sock), e)
        return False


def queued(sock: socket.socket) -> int:
    """Connections waiting in a listening socket's accept queue (TCP_INFO's tcpi_unacked)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
        return int(struct.unpack_from("I", info, 24)[0])
    except (OSError, AttributeError, struct.error):
        return 0


def _name(sock: socket.socket) -> str:
    try:
        a = sock.getsockname()
        return f"{a[0]}:{a[1]}"
    except OSError:
        return "?"


def _proc_addr(hexaddr: str) -> str:
    raw = bytes.fromhex(hexaddr)
    if len(raw) == 4:
        return socket.inet_ntop(socket.AF_INET, raw[::-1])
    return socket.inet_ntop(socket.AF_INET6, b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4)))


def foreign(socks: list[socket.socket]) -> int:
    """Listening sockets on the address of ``socks`` that are none of them (-1: unknown)."""
    try:
        host, port = socks[0].getsockname()[:2]
        ours = {os.fstat(s.fileno()).st_ino for s in socks}
    except OSError:
        return -1
    n, seen = 0, False
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        seen = True
        for line in lines:
            cols = line.split()
            if len(cols) < 10 or cols[3] != "0A":  # TCP_LISTEN
                continue
            addr, _, p = cols[1].partition(":")
            if int(p, 16) == port and _proc_addr(addr) == host and int(cols[9]) not in ours:
                n += 1
    return n if seen else -1


def can_steer(socks: list[socket.socket]) -> bool:
    from .sockets import reuse_port_of
    from .workers import reuse_port_available
    return bool(socks) and reuse_port_available() and all(reuse_port_of(s) for s in socks)


def shrink(sockets: dict[str, list[socket.socket]], count: int) -> list[socket.socket]:
    """Steer each address's group to its first ``count`` sockets; the others
    (returned) retire.  Nothing where steering is not possible."""
    out: list[socket.socket] = []
    for role, socks in sockets.items():
        if len(socks) > count and can_steer(socks) and steer(socks[0], count):
            out += socks[count:]
            log.info("takeover: %s %s: %d sockets -> %d; the other %d get no new connection and close "
                     "once their queues are empty", role, _name(socks[0]), len(socks), count, len(socks) - count)
    return out


def restore(sockets: dict[str, list[socket.socket]]) -> None:
    """A takeover given up: every socket of the predecessor gets connections again."""
    for socks in sockets.values():
        if len(socks) > 1 and can_steer(socks):
            steer(socks[0], len(socks))


def grow(socks: list[socket.socket], received: int, predecessor_retiring: Any = None) -> None:
    """After the handover: the ``received`` sockets and the new ones after them all get
    connections, once no foreign socket (a predecessor's retiring one) is left in the group.
    ``predecessor_retiring``: how many it was retiring when it offered (0: none, no need to
    look; None: an older predecessor that does not say)."""
    if len(socks) <= received:
        return
    deadline = time.monotonic() + FOREIGN_WAIT
    while predecessor_retiring != 0 and (n := foreign(socks)) != 0:
        if time.monotonic() > deadline:
            log.warning("takeover: %s: %s other listening sockets on the port; the %d new ones stay idle",
                        _name(socks[0]), n if n > 0 else "unknown", len(socks) - received)
            return
        time.sleep(0.05)
    if steer(socks[0], len(socks)):
        log.info("takeover: %s: %d sockets (%d new) get connections", _name(socks[0]), len(socks),
                 len(socks) - received)


async def retire(listeners: Iterable[Any], socks: list[socket.socket], on_done: Any = None) -> None:
    """Close this process's servers on ``socks`` after :data:`RETIRE_GRACE`, each once
    its accept queue is empty (``listeners``: gateway.http/tcp listeners serving them)."""
    await asyncio.sleep(RETIRE_GRACE)
    start = time.monotonic()
    left = {s.fileno(): s for s in socks if s.fileno() >= 0}
    while left:
        for fd, s in list(left.items()):
            if queued(s) and time.monotonic() - start < RETIRE_MAX:
                continue
            name = _name(s)
            for lst in listeners:
                server = getattr(lst, "server", None)
                if server is not None and hasattr(server, "retire") and server.retire(fd):
                    break
            else:
                s.close()  # not served here (the supervisor's copy)
            del left[fd]
            log.info("retired listening socket %s (fd %d, pid %d)", name, fd, os.getpid())
        if left:
            await asyncio.sleep(0.05)
    if on_done is not None:
        on_done()


def start_retiring(app: Any, socks: list[socket.socket]) -> None:
    """Retire those of ``socks`` this process holds (a worker closed the others at its start)."""
    mine = [s for s in socks if s.fileno() >= 0]
    if not mine:
        return
    app.retiring = mine  # gateway/takeover.py: not offered to a successor

    def done() -> None:
        app.retiring = []
    app.retire_task = asyncio.get_running_loop().create_task(retire([app.http, app.tcp], mine, done))
