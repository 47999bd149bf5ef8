"""The transport seam: how the driver moves protocol bytes.

The protocol core (:mod:`driver.protocol.client`) never touches I/O and
:class:`driver.connection.Connection` only talks to these two small
interfaces, so new transports (WebSocket via ``websockets`` or the Pyodide
JS ``WebSocket``, HTTP) plug in without changing either.

* :class:`Transport` -- one open byte stream to a PostgreSQL-speaking server.
  Message boundaries mean nothing: ``recv`` returns whatever arrived.
* :class:`Connector` -- opens transports for a :class:`Endpoint` and sends
  CancelRequests (over a *new* connection of the same kind).
"""

from __future__ import annotations

import abc
from ..protocol._dataclass import dataclass, field
from typing import Any


class TransportError(OSError):
    """The transport could not be opened or failed (maps to connection errors)."""


class HandshakeError(TransportError):
    """The server refused the transport's own handshake (e.g. a WebSocket
    upgrade answered without ``101``); ``connect()`` raises it as is."""


@dataclass
class Endpoint:
    """Where and how to connect (what a Connector needs; built from the DSN)."""

    scheme: str = "postgresql"
    host: str = "localhost"
    port: int = 5432
    #: ``disable`` | ``allow`` | ``prefer`` | ``require`` | ``verify-ca`` | ``verify-full``
    sslmode: str = "prefer"
    #: an ``ssl.SSLContext`` to use instead of one built from ``sslmode``
    ssl_context: Any = None
    connect_timeout: float | None = None
    #: transport-specific extras (e.g. a WebSocket URL path)
    options: dict[str, Any] = field(default_factory=dict)


class Transport(abc.ABC):
    """An open, bidirectional byte stream."""

    #: True when the stream is encrypted (TLS, wss...).
    secure: bool = False

    @abc.abstractmethod
    async def send(self, data: bytes) -> None:
        """Send ``data`` (all of it, in order)."""

    @abc.abstractmethod
    async def recv(self) -> bytes:
        """Return the next received bytes; ``b""`` at end of stream."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close gracefully (pending output is flushed when possible)."""

    @abc.abstractmethod
    def abort(self) -> None:
        """Close immediately, dropping pending output."""

    async def wait_closed(self) -> None:
        """Wait until the close has completed (optional)."""
        return None

    @property
    def is_closing(self) -> bool:
        return False


class Connector(abc.ABC):
    """Opens :class:`Transport` objects of one kind."""

    @abc.abstractmethod
    async def connect(self, endpoint: Endpoint) -> Transport:
        """Open a transport ready for the StartupMessage (TLS done if any)."""

    async def cancel(self, endpoint: Endpoint, process_id: int, secret_key: int) -> None:
        """Send a CancelRequest for ``process_id`` over a new connection and
        wait until the server has closed it (the cancel has been delivered)."""
        from ..protocol import messages

        transport = await self.connect(endpoint)
        try:
            await transport.send(messages.cancel_request(process_id, secret_key))
            while await transport.recv():
                pass
        finally:
            transport.close()
