"""Cold-start latency cases of the ``latency`` scenario (issue 14).

Time to first row of a *fresh* session behind the delay proxy
(``bench/proxy.py``), next to direct TCP + SCRAM and PgBouncer + SCRAM (the
scenario's ``direct`` and ``pgbouncer`` rows):

* ``gateway-ws-token`` -- the driver over the gateway's WebSocket with an API
  token and ``lazy_connect=true&describe_first=false``: the StartupMessage
  (no password exchange: the token authenticated the upgrade) leaves with the
  first query, so login + query is one flight.
* ``ws-relay-pgbouncer`` -- the stack a Neon-style proxy gives: the same
  driver over a *plain* WebSocket-to-TCP relay (:func:`serve_relay`, this
  module, ``python -m bench.cold_start --target HOST:PORT``) in front of
  PgBouncer, SCRAM end to end (the relay only moves bytes).

Round trips are counted as the scenario does: p50 / (2 x one-way delay), the
TCP handshake included (the proxy delays a connection's first bytes by three
one-way delays).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from typing import Any

#: (row target, service it needs, description) -- appended to harness.LATENCY_CASES
CASES = (
    ("gateway-ws-token", "gateway-ws",
     "driver over WebSocket, API token, lazy_connect=true&describe_first=false (login + query in one flight)"),
    ("ws-relay-pgbouncer", "pgbouncer",
     "driver over a plain WebSocket-to-TCP relay in front of PgBouncer, SCRAM (a Neon-style stack)"),
)


def token_dsn(port: int) -> str:
    from . import env as E
    return (f"ws://127.0.0.1:{port}/{E.BENCH_DB}?token={E.BENCH_TOKEN}"
            "&lazy_connect=true&describe_first=false")


def relay_dsn(port: int) -> str:
    from . import env as E
    return f"ws://{E.BENCH_USER}:{E.BENCH_PASSWORD}@127.0.0.1:{port}/{E.BENCH_DB}"


def relay(target_port: int) -> contextlib.AbstractContextManager[int]:
    """A WebSocket-to-TCP relay process in front of ``127.0.0.1:target_port``; yields its port."""
    from .harness import child_port
    return child_port(["bench.cold_start", "--target", f"127.0.0.1:{target_port}"], "WebSocket relay")


async def serve_relay(host: str, port: int) -> None:
    """Each WebSocket connection (any path) gets a TCP connection to host:port;
    binary messages go to TCP as they are, TCP bytes come back as binary messages."""
    from websockets.asyncio.server import serve

    async def handler(ws: Any) -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            await ws.close(1011)
            return

        async def up() -> None:
            async for msg in ws:
                writer.write(msg if isinstance(msg, bytes) else msg.encode())
            writer.close()

        async def down() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                await ws.send(data)
            await ws.close()
        tasks = [asyncio.create_task(up()), asyncio.create_task(down())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            writer.close()

    async with serve(handler, "127.0.0.1", 0, compression=None, max_size=None) as server:
        sock = next(iter(server.sockets))
        print(sock.getsockname()[1], flush=True)
        await asyncio.Future()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.cold_start", description="a plain WebSocket-to-TCP relay")
    ap.add_argument("--target", required=True, help="HOST:PORT of the TCP server (e.g. PgBouncer)")
    a = ap.parse_args(argv)
    host, _, port = a.target.rpartition(":")
    try:
        asyncio.run(serve_relay(host, int(port)))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
