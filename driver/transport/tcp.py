"""TCP (and unix-socket) transport over asyncio streams, with TLS via SSLRequest."""

from __future__ import annotations

import asyncio
import ssl as ssl_module

from ..protocol import messages
from .base import Connector, Endpoint, Transport, TransportError

__all__ = ["TcpTransport", "TcpConnector", "make_ssl_context"]

_READ_SIZE = 256 * 1024
_SSL_REQUIRED = ("require", "verify-ca", "verify-full")
_SSL_MODES = ("disable", "allow", "prefer") + _SSL_REQUIRED


class TcpTransport(Transport):
    __slots__ = ("_reader", "_writer", "secure")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 secure: bool = False) -> None:
        self._reader = reader
        self._writer = writer
        self.secure = secure

    async def send(self, data: bytes) -> None:
        writer = self._writer
        if writer.is_closing():
            raise TransportError("the connection is closed")
        writer.write(data)
        await writer.drain()

    async def recv(self) -> bytes:
        return await self._reader.read(_READ_SIZE)

    def close(self) -> None:
        if not self._writer.is_closing():
            self._writer.close()

    def abort(self) -> None:
        self._writer.transport.abort()

    async def wait_closed(self) -> None:
        try:
            await self._writer.wait_closed()
        except (OSError, ssl_module.SSLError):
            pass

    @property
    def is_closing(self) -> bool:
        return self._writer.is_closing()


def make_ssl_context(sslmode: str, cafile: str | None = None) -> ssl_module.SSLContext:
    """The SSLContext libpq would use for ``sslmode`` (without client certificates).

    ``verify-full`` checks the chain and the host name; ``verify-ca`` only the
    chain; ``require``/``prefer``/``allow`` encrypt without verification.
    ``cafile``: the DSN's ``sslrootcert`` (trusted CAs; default: the system's).
    """
    ctx = ssl_module.create_default_context(ssl_module.Purpose.SERVER_AUTH, cafile=cafile)
    if sslmode == "verify-full":
        return ctx
    ctx.check_hostname = False
    if sslmode != "verify-ca":
        ctx.verify_mode = ssl_module.CERT_NONE
    return ctx


def sslrootcert(endpoint: Endpoint) -> str | None:
    """The DSN's ``sslrootcert`` (libpq's name), if any."""
    query = endpoint.options.get("query") or {}
    value = query.get("sslrootcert")
    return str(value) if value else None


class TcpConnector(Connector):
    """Opens TCP connections (a host starting with ``/`` is a unix-socket directory)."""

    async def connect(self, endpoint: Endpoint) -> Transport:
        mode = endpoint.sslmode or "prefer"
        if mode not in _SSL_MODES:
            raise ValueError(f"invalid sslmode {mode!r}: expected one of {', '.join(_SSL_MODES)}")
        host = endpoint.host
        try:
            if host.startswith("/"):
                reader, writer = await asyncio.open_unix_connection(
                    f"{host.rstrip('/')}/.s.PGSQL.{endpoint.port}", limit=_READ_SIZE)
                return TcpTransport(reader, writer)  # no TLS over unix sockets
            reader, writer = await asyncio.open_connection(host, endpoint.port, limit=_READ_SIZE)
        except OSError as exc:
            raise TransportError(exc.errno, f"cannot connect to {host}:{endpoint.port}: {exc.strerror or exc}") from exc
        ctx = endpoint.ssl_context
        if ctx is None and mode in ("disable", "allow"):
            return TcpTransport(reader, writer)
        try:
            writer.write(messages.ssl_request())
            await writer.drain()
            answer = await reader.readexactly(1)
        except (OSError, asyncio.IncompleteReadError) as exc:
            writer.close()
            raise TransportError(f"SSL negotiation with {host}:{endpoint.port} failed: {exc}") from exc
        if answer == b"N":
            if ctx is not None or mode in _SSL_REQUIRED:
                writer.close()
                raise TransportError(f"the server at {host}:{endpoint.port} does not support SSL")
            return TcpTransport(reader, writer)
        if answer != b"S":
            writer.close()
            raise TransportError(f"unexpected answer {answer!r} to SSLRequest")
        if reader._buffer:  # type: ignore[attr-defined]
            # Bytes after 'S' before the handshake would be a MITM injection (CVE-2021-23222).
            writer.close()
            raise TransportError("the server sent unencrypted data after accepting SSL")
        if ctx is None:
            ctx = make_ssl_context(mode, sslrootcert(endpoint))
        try:
            await writer.start_tls(ctx, server_hostname=host if ctx.check_hostname else None)
        except (OSError, ssl_module.SSLError) as exc:
            writer.close()
            raise TransportError(f"SSL handshake with {host}:{endpoint.port} failed: {exc}") from exc
        return TcpTransport(reader, writer, secure=True)
