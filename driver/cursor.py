"""Server-side cursors over protocol-level portals (``Connection.cursor``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generator, Sequence

from . import exceptions as exc
from .protocol import client as pc

if TYPE_CHECKING:
    from .connection import Connection
    from .statements import _Statement

__all__ = ["CursorFactory", "Cursor", "CursorIterator"]


class CursorFactory:
    """What ``Connection.cursor()`` returns: ``async for`` it, or ``await`` it."""

    __slots__ = ("_conn", "_query", "_state", "_args", "_prefetch", "_timeout", "_record_cls",
                 "_owner")

    def __init__(self, connection: Connection, query: str, state: _Statement | None,
                 args: Sequence[Any], prefetch: int | None, timeout: float | None,
                 record_class: Any = None) -> None:
        self._conn = connection
        self._query = query
        self._state = state
        self._args = tuple(args)
        self._prefetch = prefetch
        self._timeout = timeout
        self._record_cls = record_class
        #: the PreparedStatement this cursor comes from: kept alive while the cursor
        #: is, so its server-side statement is not closed under it (see PreparedStatement.__del__)
        self._owner: Any = None

    def __aiter__(self) -> CursorIterator:
        prefetch = 50 if self._prefetch is None else self._prefetch
        it = CursorIterator(self._conn, self._query, self._state, self._args, prefetch,
                            self._timeout, self._record_cls)
        it._owner = self._owner
        return it

    def __await__(self) -> Generator[Any, None, Cursor]:
        if self._prefetch is not None:
            raise exc.InterfaceError("prefetch argument can only be specified for iterable cursor")
        cursor = Cursor(self._conn, self._query, self._state, self._args, self._record_cls)
        cursor._owner = self._owner
        return cursor._init(self._timeout).__await__()


class _BaseCursor:
    __slots__ = ("_conn", "_query", "_state", "_args", "_portal", "_exhausted", "_record_cls",
                 "_owner")

    def __init__(self, connection: Connection, query: str, state: _Statement | None,
                 args: Sequence[Any], record_class: Any = None) -> None:
        self._record_cls = record_class if record_class is not None else connection._record_cls
        self._conn = connection
        self._query = query
        self._state = state
        self._args = args
        self._portal: str | None = None
        self._exhausted = False
        self._owner: Any = None

    def _check_ready(self) -> None:
        if self._state is not None and self._state.closed:
            raise exc.InterfaceError("cursor: the prepared statement is closed")
        if not self._conn.is_in_transaction():
            raise exc.NoActiveSQLTransactionError("cursor cannot be created outside of a transaction")

    async def _bind(self, n: int, timeout: float | None) -> list[Any]:
        """Prepare (if needed), bind the portal and, if ``n``, fetch its first ``n`` rows."""
        self._check_ready()
        if self._portal is not None:
            raise exc.InterfaceError("cursor already has an open portal")
        conn = self._conn
        await conn._acquire()
        try:
            deadline = conn._deadline(timeout)
            st = self._state
            if st is None:
                st = self._state = await conn._prepare_statement(self._query, deadline)
            conn._portal_counter += 1
            portal = f"__wp_portal_{conn._portal_counter}__"
            req = pc.ExtendedQuery()
            conn._queue_closes(req)
            if st.name == "":
                req.parse("", st.query, st.param_oids)
            formats, values = conn._encode(st, self._args)
            req.bind(portal, st.name, formats, values, st.result_formats)
            result = req.execute(portal, n, st.decoder_for(self._record_cls)) if n else None
            await conn._request(req, deadline, self._query)
            self._portal = portal
            if result is None:
                return []
            if not result.suspended:
                self._exhausted = True
            return result.rows
        finally:
            conn._release()

    async def _exec(self, n: int, timeout: float | None) -> list[Any]:
        self._check_ready()
        if self._portal is None:
            raise exc.InterfaceError("cursor does not have an open portal")
        assert self._state is not None
        conn = self._conn
        await conn._acquire()
        try:
            req = pc.ExtendedQuery()
            result = req.execute(self._portal, n, self._state.decoder_for(self._record_cls))
            await conn._request(req, conn._deadline(timeout), self._query)
            if not result.suspended:
                self._exhausted = True
            return result.rows
        finally:
            conn._release()


class CursorIterator(_BaseCursor):
    """``async for record in conn.cursor(...)``: fetches ``prefetch`` rows at a time."""

    __slots__ = ("_buffer", "_prefetch", "_timeout")

    def __init__(self, connection: Connection, query: str, state: _Statement | None,
                 args: Sequence[Any], prefetch: int, timeout: float | None,
                 record_class: Any = None) -> None:
        super().__init__(connection, query, state, args, record_class)
        if prefetch <= 0:
            raise exc.InterfaceError("prefetch argument must be greater than zero")
        self._prefetch = prefetch
        self._timeout = timeout
        self._buffer: list[Any] = []

    def __aiter__(self) -> CursorIterator:
        return self

    async def __anext__(self) -> Any:
        if not self._buffer and not self._exhausted:
            if self._portal is None:
                rows = await self._bind(self._prefetch, self._timeout)
            else:
                rows = await self._exec(self._prefetch, self._timeout)
            self._buffer = rows
            self._buffer.reverse()
        if self._buffer:
            return self._buffer.pop()
        raise StopAsyncIteration


class Cursor(_BaseCursor):
    """An open portal: ``fetch(n)``, ``fetchrow()``, ``forward(n)``."""

    __slots__ = ()

    async def _init(self, timeout: float | None) -> Cursor:
        await self._bind(0, timeout)
        return self

    async def fetch(self, n: int, *, timeout: float | None = None) -> list[Any]:
        self._check_ready()
        if n <= 0:
            raise exc.InterfaceError("n must be greater than zero")
        if self._exhausted:
            return []
        rows = await self._exec(n, timeout)
        if len(rows) < n:
            self._exhausted = True
        return rows

    async def fetchrow(self, *, timeout: float | None = None) -> Any:
        self._check_ready()
        if self._exhausted:
            return None
        rows = await self._exec(1, timeout)
        if not rows:
            self._exhausted = True
            return None
        return rows[0]

    async def forward(self, n: int, *, timeout: float | None = None) -> int:
        """Skip ``n`` rows; return how many were skipped."""
        self._check_ready()
        if n <= 0:
            raise exc.InterfaceError("n must be greater than zero")
        status = await self._conn.execute(f"MOVE FORWARD {int(n):d} {self._portal}",
                                          timeout=timeout)
        advanced = int(status.split()[1])
        if advanced < n:
            self._exhausted = True
        return advanced

    def __repr__(self) -> str:
        return f"<driver.Cursor {self._query!r}{' exhausted' if self._exhausted else ''}>"
