"""The floor of a Python pooler's CPU: a byte relay on uvloop (``python -m bench.relay_floor``).

Every client connection gets its own connection to the target (no pooling, no
parsing, no authentication of its own: Postgres does the login); every chunk
read on one side is written to the other from the transport's
``data_received``, with write flow control and half-closes passed through.
That is the least any pooler written on CPython + uvloop does per message:
one event-loop callback and one ``transport.write`` a read.  ``bench.cpu_units
--floor`` measures it beside PgBouncer and the gateway in the same run, so the
gateway's ratio can be read against what the platform itself costs.

Usage: ``python -m bench.relay_floor --target 127.0.0.1:5432``; prints the
listening port on stdout once ready; runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


class _Half(asyncio.Protocol):
    """One side of a relayed connection; ``peer`` is the other side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.early: list[bytes] = []  # client bytes read before the target connection is up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer
        if peer is None or peer.transport is None:
            self.early.append(data)
        else:
            peer.transport.write(data)

    def eof_received(self) -> bool:
        peer = self.peer
        if peer is not None and peer.transport is not None and peer.transport.can_write_eof():
            peer.transport.write_eof()
            return True
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        peer = self.peer
        if peer is not None and peer.transport is not None:
            peer.transport.close()

    # flow control: a slow side pauses reading on the other
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


async def serve(target: str, listen_port: int = 0) -> None:
    host, _, port = target.rpartition(":")
    loop = asyncio.get_running_loop()

    def client_side() -> _Half:
        client = _Half()

        async def connect() -> None:
            try:
                _, upstream = await loop.create_connection(_Half, host, int(port))
            except OSError:
                if client.transport is not None:
                    client.transport.close()
                return
            upstream.peer, client.peer = client, upstream
            if client.transport is None or client.transport.is_closing():
                upstream.transport.close()  # type: ignore[union-attr]
                return
            for data in client.early:
                upstream.transport.write(data)  # type: ignore[union-attr]
            client.early.clear()

        loop.create_task(connect())
        return client

    server = await loop.create_server(client_side, "127.0.0.1", listen_port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.relay_floor", description=__doc__.split("\n")[0])
    ap.add_argument("--target", required=True, help="host:port to relay to")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:  # pragma: no cover - the gateway extra installs it
        pass
    asyncio.run(serve(a.target, a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
