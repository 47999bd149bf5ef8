"""Forwarding CancelRequests to upstream backends.

Clients only ever see gateway-issued BackendKeyData (see
:meth:`gateway.core.Gateway.register_session`).  A CancelRequest carrying such
a key is mapped to the backend currently linked to that client and a real
CancelRequest is sent to it -- and to nothing else: an unknown key, a wrong
secret or a client without a linked server are silently ignored, as
PostgreSQL itself does.
"""

from __future__ import annotations

import asyncio
import logging

from driver.protocol import messages as m

log = logging.getLogger("wirepool.gateway.cancel")


async def send_cancel(host: str, port: int, process_id: int, secret_key: int, timeout: float = 5.0) -> bool:
    """Send one CancelRequest to ``host:port`` (or a unix socket directory);
    return whether it was delivered (the server answers nothing)."""

    async def run() -> None:
        if host.startswith("/"):
            reader, writer = await asyncio.open_unix_connection(f"{host}/.s.PGSQL.{port}")
        else:
            reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(m.cancel_request(process_id, secret_key))
            await writer.drain()
            await reader.read()  # the server closes the connection once it has the request
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except (OSError, ConnectionError):
                pass

    try:
        await asyncio.wait_for(run(), timeout)
        return True
    except (OSError, asyncio.TimeoutError) as exc:
        log.info("cancel request to %s:%s failed: %s", host, port, exc)
        return False
