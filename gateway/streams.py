"""The byte-stream seam between the gateway's listeners and its sessions.

Every listener (WebSocket on ``listen``, plain TCP on ``pg_listen``) hands the
session layer an object with this shape.  Message boundaries of the transport
carry no meaning: ``recv`` returns whatever bytes arrived.
"""

from __future__ import annotations

from typing import Protocol


class TransportError(Exception):
    """The transport broke its own rules (e.g. a text WebSocket frame)."""


class ClientStream(Protocol):
    #: "ws", "tcp" or "http" -- for logs, metrics and transport-specific rules.
    kind: str
    #: "ip:port" of the peer, for logs.
    peer: str

    async def recv(self) -> bytes:
        """Next chunk of bytes from the client; ``b""`` at end of stream.

        Raises :class:`TransportError` on a transport-level violation.
        """
        ...

    async def send(self, data: bytes) -> None:
        """Send bytes to the client (one WebSocket message per call)."""
        ...

    async def close(self) -> None:
        """Close the stream; idempotent, never raises."""
        ...
