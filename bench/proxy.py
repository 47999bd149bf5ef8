"""A TCP proxy that adds a one-way delay in each direction (``python -m bench.proxy``).

Every chunk read on one side is written to the other side ``delay`` seconds
later, order preserved, so a request/response round trip costs ``2 * delay``
more. The TCP handshake (which the kernel completes locally) is modelled too:
the first client bytes are delivered no earlier than ``3 * delay`` after the
connection was accepted (SYN, SYN-ACK, then the data's own one-way trip), as
they would over a real link with that delay. TLS is not involved.

Usage: ``python -m bench.proxy --target 127.0.0.1:5432 --delay 0.025``; prints
the listening port on stdout once ready; runs until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                not_before: float) -> None:
    loop = asyncio.get_running_loop()
    q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def sender() -> None:
        try:
            while True:
                due, data = await q.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            return

    task = asyncio.ensure_future(sender())
    try:
        while True:
            try:
                data = await reader.read(65536)
            except (ConnectionError, OSError):
                data = b""
            q.put_nowait((max(loop.time() + delay, not_before), data))
            if not data:
                break
        await task
    finally:
        task.cancel()


async def _handle(cr: asyncio.StreamReader, cw: asyncio.StreamWriter, host: str, port: int,
                  delay: float) -> None:
    loop = asyncio.get_running_loop()
    accepted = loop.time()
    try:
        sr, sw = await asyncio.open_connection(host, port)
    except OSError:
        cw.close()
        return
    try:
        await asyncio.gather(_pipe(cr, sw, delay, accepted + 3 * delay),
                             _pipe(sr, cw, delay, 0.0))
    finally:
        for w in (cw, sw):
            w.close()


async def serve(target: str, delay: float, listen_port: int = 0) -> None:
    host, _, port = target.rpartition(":")
    server = await asyncio.start_server(lambda r, w: _handle(r, w, host, int(port), delay),
                                        "127.0.0.1", listen_port, backlog=4096)
    sock_port = server.sockets[0].getsockname()[1]
    print(sock_port, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for s in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(s, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.proxy")
    ap.add_argument("--target", required=True, help="host:port to forward to")
    ap.add_argument("--delay", type=float, default=0.025, help="one-way delay in seconds")
    ap.add_argument("--port", type=int, default=0)
    a = ap.parse_args(argv)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(a.target, a.delay, a.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
