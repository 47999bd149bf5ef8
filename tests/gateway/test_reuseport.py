"""gateway/reuseport.py: a retiring listening socket loses none of the connections
queued on it (real sockets and connections; the takeover end to end is
tests/gateway/test_takeover.py, the steering ``test_listening_sockets_for_n_then_m_workers``)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from gateway import reuseport
from gateway.sockets import MultiServer, bind_socket


class _Listener:
    """What reuseport.retire uses of a gateway listener: ``server``."""

    def __init__(self, server: Any) -> None:
        self.server = server


async def test_a_retiring_socket_serves_its_queue_then_closes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reuseport, "RETIRE_GRACE", 0.2)
    first = bind_socket(("127.0.0.1", 0), listen=True, reuse_port=True)
    second = bind_socket(first.getsockname()[:2], listen=True, reuse_port=True)
    port = first.getsockname()[1]
    loop = asyncio.get_running_loop()
    # 40 connections queued before anybody accepts: the kernel's hash puts some on each socket
    clients = []
    for _ in range(40):
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, ("127.0.0.1", port))
        clients.append(c)
    assert reuseport.queued(second) > 0 and reuseport.queued(first) > 0
    assert reuseport.steer(first, 1)  # from now on every new connection goes to the first socket
    served: dict[int, int] = {0: 0, 1: 0}

    def serve(i: int) -> Any:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            served[i] += 1
            w.write(await r.readexactly(1))
            await w.drain()
            w.close()
        return echo
    servers = [await asyncio.start_server(serve(i), sock=s, start_serving=i == 0)
               for i, s in enumerate((first, second))]
    listener = _Listener(MultiServer(servers))
    try:
        # the second socket's queue is served only after the grace: retire waits for it to empty
        loop.call_later(0.6, lambda: asyncio.ensure_future(servers[1].start_serving()))
        done = asyncio.Event()
        t0 = loop.time()
        await asyncio.wait_for(reuseport.retire([listener], [second], done.set), 30)
        assert done.is_set() and second.fileno() == -1  # closed, once its queue was empty
        assert loop.time() - t0 >= 0.6
        assert listener.server.servers == servers[:1]
        for c in clients:  # every queued connection was accepted and answers: none was reset
            await loop.sock_sendall(c, b"x")
            assert await asyncio.wait_for(loop.sock_recv(c, 1), 10) == b"x"
        assert served[0] + served[1] == 40 and served[1] > 0
        r, w = await asyncio.open_connection("127.0.0.1", port)  # the port still accepts
        w.write(b"y")
        assert await asyncio.wait_for(r.readexactly(1), 10) == b"y"
        w.close()
        assert served[0] + served[1] == 41
    finally:
        for c in clients:
            c.close()
        listener.server.close()
        first.close()
