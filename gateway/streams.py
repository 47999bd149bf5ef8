"""The byte-stream seam between the gateway's listeners and its sessions.

Every listener (WebSocket on ``listen``, plain TCP on ``pg_listen``) hands the
session layer an object with this shape.  Message boundaries of the transport
carry no meaning: ``recv`` returns whatever bytes arrived.
"""

from __future__ import annotations

from typing import Any, Protocol


class TransportError(Exception):
    """The transport broke its own rules (e.g. a text WebSocket frame)."""


class ClientStream(Protocol):
    #: "ws", "tcp" or "http" -- for logs, metrics and transport-specific rules.
    kind: str
    #: "ip:port" of the peer, for logs.
    peer: str
    #: set by the session when the client sent Terminate: it has nothing more to send, so
    #: closing needs no lingering (gateway/linger.py) to keep a reply from a reset
    terminated: bool

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


def direct_writer(stream: Any) -> tuple[Any, Any]:
    """A synchronous write path to the client, if the stream has one:
    ``(send_nowait(data) -> bool "no need to wait", async drain())`` or
    (None, None) -- then replies go through ``await send()`` in a writer task."""
    nowait = getattr(stream, "send_nowait", None)
    drain = getattr(stream, "drain", None)
    if nowait is not None and drain is not None:
        return nowait, drain
    return None, None
