"""Listening sockets that outlive processes: bound once, handed on (docs/takeover.md, docs/scaling.md).

A gateway's listening sockets are created by the first process and then passed
on: to forked workers (gateway/workers.py) and, at a takeover, to the
successor over ``SCM_RIGHTS`` (gateway/takeover.py, gateway/handover.py).
They stay the same kernel sockets, so the connections waiting in their accept
queues are never refused or reset.  A listener may therefore have to accept on
several sockets (a single process taking over from N workers, or M workers
from N > M): :func:`start_on` starts it on the first and adds a server per
other socket, behind one :class:`MultiServer`.
"""

from __future__ import annotations

import socket
import sys
from typing import Any, Iterable

#: file descriptors per SCM_RIGHTS message (Linux refuses more than 253)
FDS_PER_MESSAGE = 200


class MultiServer:
    """Several ``asyncio.Server`` objects seen as one (what the listeners use of a server)."""

    def __init__(self, servers: list[Any]) -> None:
        self.servers = servers

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(s for srv in self.servers for s in srv.sockets)

    def close(self) -> None:
        for srv in self.servers:
            srv.close()

    def retire(self, fd: int) -> bool:
        """Stop accepting on the socket ``fd`` and close it (gateway/reuseport.py); the others go on."""
        for srv in self.servers:
            if any(s.fileno() == fd for s in srv.sockets):
                srv.close()
                self.servers.remove(srv)
                return True
        return False

    def is_serving(self) -> bool:
        return any(srv.is_serving() for srv in self.servers)

    async def wait_closed(self) -> None:
        for srv in self.servers:
            await srv.wait_closed()


async def start_on(listener: Any, socks: list[socket.socket]) -> None:
    """Start ``listener`` (gateway.http.HttpListener or gateway.tcp.TcpListener)
    accepting on every socket of ``socks`` (one server each, same protocol)."""
    if len(socks) <= 1:
        listener.sock = socks[0] if socks else listener.sock
        await listener.start()
        return
    servers = []
    for s in socks:
        listener.sock = s
        await listener.start()
        servers.append(listener.server)
    listener.sock = socks[0]
    listener.server = MultiServer(servers)


def reuse_port_of(sock: socket.socket) -> bool:
    """Whether ``sock`` was bound with SO_REUSEPORT (more sockets may then join its port)."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        return bool(sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT))
    except OSError:
        return False


def reuse_port_balances() -> bool:
    """SO_REUSEPORT that balances between listeners (Linux >= 3.9)."""
    return hasattr(socket, "SO_REUSEPORT") and sys.platform.startswith("linux")


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


def address_of(sock: socket.socket) -> tuple[str, int]:
    a = sock.getsockname()
    return str(a[0]), int(a[1])


def slots(received: list[socket.socket], count: int, reuse: bool, backlog: int = 2048) -> list[socket.socket]:
    """The listening sockets of one address for ``count`` workers, given those
    ``received`` from a predecessor: all of them kept (closing one would reset
    its queue), plus new SO_REUSEPORT ones up to ``count`` when they can join."""
    out = list(received)
    if out and reuse and all(reuse_port_of(s) for s in out):
        addr = address_of(out[0])
        while len(out) < count:
            out.append(bind_socket(addr, listen=True, reuse_port=True, backlog=backlog))
    return out


def assign(socks: list[socket.socket], index: int, count: int, shared: bool) -> list[socket.socket]:
    """Worker ``index``'s sockets: slot ``j`` goes to worker ``j % count``; in the
    shared mode (one socket nobody else may join) every worker accepts on all."""
    if shared:
        return list(socks)
    return [s for j, s in enumerate(socks) if j % count == index]


def send_sockets(conn: socket.socket, header: bytes, fds: Iterable[int]) -> None:
    """The header line, then the fds in messages of at most FDS_PER_MESSAGE (blocking)."""
    fds = list(fds)
    socket.send_fds(conn, [header], fds[:FDS_PER_MESSAGE])
    for i in range(FDS_PER_MESSAGE, len(fds), FDS_PER_MESSAGE):
        socket.send_fds(conn, [b"+"], fds[i:i + FDS_PER_MESSAGE])


def recv_sockets(conn: socket.socket) -> tuple[bytes, list[int]]:
    """Counterpart of :func:`send_sockets`: (header line, the first message's fds);
    the header says how many there are: :func:`recv_more` reads the rest."""
    msg, fds, _flags, _addr = socket.recv_fds(conn, 65536, FDS_PER_MESSAGE)
    return msg, list(fds)


def recv_more(conn: socket.socket, fds: list[int], total: int) -> None:
    """Read the rest of ``total`` fds (messages after the header's)."""
    while len(fds) < total:
        _msg, more, _flags, _addr = socket.recv_fds(conn, 16, FDS_PER_MESSAGE)
        if not more:
            raise OSError("the running gateway sent fewer sockets than announced")
        fds.extend(more)
