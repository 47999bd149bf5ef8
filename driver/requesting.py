"""Request plumbing of a :class:`~driver.connection.Connection`.

:class:`RequestsMixin` (mixed into Connection): one operation at a time
(``_acquire``), submitting a sans-I/O request and waiting for its end
(``_request`` = ``_submit`` + ``_wait``), deadlines from ``timeout`` /
``command_timeout``, the cancellation of a running query on the server
(CancelRequest) when the deadline passes or the awaiting task is cancelled,
the end of a ``lazy_connect`` login, and the exception for a failed request.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from . import exceptions as exc
from .protocol import client as pc
from .protocol.framing import ProtocolError as FramingError
from .transport import TransportError

if TYPE_CHECKING:
    from .connection import Connection
    from .transport import Connector, Endpoint

__all__ = ["RequestsMixin"]

_BUSY_MSG = "cannot perform operation: another operation is in progress"


class RequestsMixin:
    """Submit requests, wait for them with a deadline, cancel them (mixed into Connection)."""

    if TYPE_CHECKING:
        _closed: bool
        _busy: bool
        _cancelling: asyncio.Task[None] | None
        _command_timeout: float | None
        _loop: asyncio.AbstractEventLoop
        _protocol: pc.ClientProtocol
        _connector: Connector
        _endpoint: Endpoint
        _login: tuple[pc.StartupRequest, asyncio.Future[None], float | None, bool] | None
        _last_server_error: dict[str, str] | None

        async def _flush(self) -> None: ...
        def _dispatch(self, events: list[pc.Event]) -> None: ...
        def _mark_closed(self) -> None: ...
        def terminate(self) -> None: ...

    def _check_open(self) -> None:
        if self._closed:
            raise exc.InterfaceError("connection is closed")

    async def _acquire(self) -> None:
        if self._cancelling is not None:
            # A cancelled operation is still being cancelled on the server: wait for it.
            await asyncio.shield(self._cancelling)
        self._check_open()
        if self._busy:
            raise exc.InterfaceError(_BUSY_MSG)
        self._busy = True

    def _release(self) -> None:
        self._busy = False

    def _deadline(self, timeout: float | None) -> float | None:
        if timeout is None:
            timeout = self._command_timeout
        if timeout is None:
            return None
        if timeout <= 0:
            raise ValueError("timeout must be a positive number")
        return self._loop.time() + timeout

    async def _request(self, req: pc.Request, deadline: float | None,
                       query: str | None = None) -> pc.Request:
        """Submit ``req``, wait for it (cancelling on the server at the deadline)."""
        fut = await self._submit(req, deadline)
        await self._wait(req, fut, deadline, query)
        return req

    async def _submit(self, req: pc.Request, deadline: float | None) -> asyncio.Future[None]:
        """Send ``req``; return the future done at its end (see :meth:`_wait`)."""
        self._check_open()
        fut: asyncio.Future[None] = self._loop.create_future()
        req.tag = fut
        try:
            self._protocol.submit(req)
            await self._flush()
        except pc.ConnectionLost as e:
            raise exc.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation") from e
        except (OSError, TransportError) as e:
            self._lost(e)
            raise exc.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation") from e
        if self._login is not None:
            # lazy_connect: this request went out right behind the login.
            await self._finish_login(deadline)
        return fut

    def _lost(self, e: BaseException) -> None:
        """The transport failed while sending."""
        self._protocol.connection_lost(e)
        self._dispatch(self._protocol.next_events())
        self._mark_closed()

    async def _wait(self, req: pc.Request, fut: asyncio.Future[None], deadline: float | None,
                    query: str | None = None) -> None:
        """Wait for a submitted request; raise its error (cancel it at the deadline)."""
        if not fut.done():
            if deadline is None:
                try:
                    await asyncio.shield(fut)
                except asyncio.CancelledError:
                    self._cancel_in_background(fut)
                    raise
            else:
                remaining = deadline - self._loop.time()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError()
                    await asyncio.wait_for(asyncio.shield(fut), remaining)
                except asyncio.TimeoutError:
                    await self._cancel_and_wait(fut)
                    raise asyncio.TimeoutError() from None
                except asyncio.CancelledError:
                    self._cancel_in_background(fut)
                    raise
        self._raise_for(req, query)

    async def _finish_login(self, deadline: float | None) -> None:
        """lazy_connect: wait for the login sent with the first request; raise
        what ``connect()`` would have raised if it failed."""
        assert self._login is not None
        startup, fut, login_timeout, pipelined = self._login
        timeout = login_timeout if deadline is None else max(0.0, deadline - self._loop.time())
        try:
            if not fut.done():
                await asyncio.wait_for(asyncio.shield(fut), timeout)
        except BaseException:
            self._login = None
            self.terminate()
            raise
        self._login = None
        if startup.error is not None or startup.exception is not None:
            self.terminate()
            from .login import login_error

            raise login_error(startup, self._last_server_error, pipelined)

    def _raise_for(self, req: pc.Request, query: str | None) -> None:
        if req.error is not None and isinstance(req.exception, pc.ConnectionLost):
            # A FATAL error, then the server closed the connection (as asyncpg reports it).
            raise exc.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation: "
                + req.error.get("M", "")) from exc.PostgresError.new(req.error, query)
        if req.error is not None:
            raise exc.PostgresError.new(req.error, query)
        if req.exception is not None:
            e = req.exception
            if isinstance(e, pc.RowDecodeError):
                if isinstance(e.original, exc.OutdatedSchemaCacheError):
                    # a type changed (ALTER TYPE): forget the types, as asyncpg does
                    from .typecodecs import forget_types

                    forget_types(cast("Connection", self))
                raise e.original  # a decoder raised: its exception, as asyncpg does
            if isinstance(e, pc.ConnectionLost):
                raise exc.ConnectionDoesNotExistError(
                    "connection was closed in the middle of operation") from e
            if isinstance(e, (FramingError, pc.ClientProtocolError)):
                raise exc.InterfaceError(f"protocol error: {e}") from e
            raise exc.InterfaceError(str(e)) from e

    async def _send_cancel(self) -> None:
        pid = self._protocol.backend_pid
        key = self._protocol.backend_secret
        if pid is None or key is None:
            raise exc.InterfaceError("cannot cancel: no BackendKeyData received")
        await self._connector.cancel(self._endpoint, pid, key)

    async def _cancel_and_wait(self, fut: asyncio.Future[None]) -> None:
        """Cancel the running query on the server and wait for its request to end."""
        try:
            await asyncio.wait_for(self._send_cancel(), 30)
            await asyncio.wait_for(asyncio.shield(fut), 30)
        except BaseException:
            self.terminate()
            raise

    def _cancel_in_background(self, fut: asyncio.Future[None]) -> None:
        """The awaiting task was cancelled: cancel on the server, keep the
        connection busy until the request has ended."""
        self._busy = True

        async def run() -> None:
            try:
                await self._cancel_and_wait(fut)
            except BaseException:
                pass
            finally:
                self._busy = False
                self._cancelling = None

        self._cancelling = self._loop.create_task(run())
