"""Prepared statements (``Connection.prepare``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Sequence

from . import codecs
from .types import Attribute, Type

if TYPE_CHECKING:
    from .connection import Connection
    from .statements import _Statement

__all__ = ["PreparedStatement", "Type", "Attribute"]


def _type_of(oid: int, conn: Connection | None = None) -> Type:
    """asyncpg's ``Type(oid, name, kind, schema)`` of a parameter or column type."""
    rows: dict[int, Any] = conn._type_rows if conn is not None else {}
    types = conn._types if conn is not None else codecs.DEFAULT_REGISTRY
    row = rows.get(oid)
    if row is not None:  # introspected (driver.introspection.TypeRow)
        if row.elem:
            return Type(oid, _type_of(row.elem, conn).name + "[]", "array", row.schema)
        kind = {"c": "composite", "r": "range", "m": "multirange"}.get(row.kind, "scalar")
        return Type(oid, row.name, kind, row.schema)
    info = types.get(oid)
    if info is None:
        return Type(oid, "", "scalar", "")
    if info.element_oid:
        elem = types.get(info.element_oid)
        name = (elem.name if elem is not None else info.name.lstrip("_")) + "[]"
        return Type(oid, name, "array", "pg_catalog")  # asyncpg spells arrays "text[]"
    if info.range_subtype:
        kind = "multirange" if info.name.endswith("multirange") else "range"
        return Type(oid, info.name, kind, "pg_catalog")
    return Type(oid, info.name, "scalar", "pg_catalog")


class PreparedStatement:
    """A named server-side prepared statement bound to its connection."""

    __slots__ = ("_conn", "_st", "_last_status", "_record_cls")

    def __init__(self, connection: Connection, state: _Statement,
                 record_class: Any = None) -> None:
        self._conn = connection
        self._st = state
        self._last_status: str | None = None
        #: ``prepare(record_class=)``; None: the connection's default.
        self._record_cls = record_class

    def get_name(self) -> str:
        return self._st.name

    def get_query(self) -> str:
        return self._st.query

    def get_statusmsg(self) -> str | None:
        """The command tag of the last execution."""
        return self._last_status

    def get_parameters(self) -> tuple[Type, ...]:
        return tuple(_type_of(oid, self._conn) for oid in self._st.param_oids)

    def get_attributes(self) -> tuple[Attribute, ...]:
        return tuple(Attribute(f.name, _type_of(f.type_oid, self._conn)) for f in self._st.fields)

    async def _run(self, args: Sequence[Any], timeout: float | None) -> Any:
        conn = self._conn
        await conn._acquire()
        try:
            rec = self._record_cls if self._record_cls is not None else conn._record_cls
            _, result = await conn._bind_execute(self._st.query, args, conn._deadline(timeout),
                                                 st=self._st, record_cls=rec)
            self._last_status = result.status
            return result
        finally:
            conn._release()

    async def fetch(self, *args: Any, timeout: float | None = None) -> list[Any]:
        result = await self._run(args, timeout)
        rows: list[Any] = result.rows
        return rows

    async def fetchrow(self, *args: Any, timeout: float | None = None) -> Any:
        result = await self._run(args, timeout)
        return result.rows[0] if result.rows else None

    async def fetchval(self, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        result = await self._run(args, timeout)
        return result.rows[0][column] if result.rows else None

    async def executemany(self, args: Iterable[Sequence[Any]], *,
                          timeout: float | None = None) -> None:
        conn = self._conn
        await conn._acquire()
        try:
            await conn._executemany(self._st.query, args, conn._deadline(timeout), st=self._st)
        finally:
            conn._release()

    async def fetchmany(self, args: Iterable[Sequence[Any]], *,
                        timeout: float | None = None) -> list[Any]:
        """Execute the statement for each argument tuple (one batch); all the rows."""
        conn = self._conn
        await conn._acquire()
        try:
            rec = self._record_cls if self._record_cls is not None else conn._record_cls
            return await conn._executemany(self._st.query, args, conn._deadline(timeout),
                                           st=self._st, rows=True, record_cls=rec)
        finally:
            conn._release()

    async def explain(self, *args: Any, analyze: bool = False) -> Any:
        """The statement's plan: ``EXPLAIN (FORMAT JSON, VERBOSE)`` decoded from
        JSON.  ``analyze=True`` runs the statement in a transaction rolled back
        afterwards (as asyncpg)."""
        import json

        query = "EXPLAIN (FORMAT JSON, VERBOSE" + (", ANALYZE) " if analyze else ") ")
        query += self._st.query
        conn = self._conn
        if analyze:
            tr = conn.transaction()
            await tr.start()
            try:
                data = await conn.fetchval(query, *args)
            finally:
                await tr.rollback()
        else:
            data = await conn.fetchval(query, *args)
        return json.loads(data) if isinstance(data, (str, bytes)) else data

    def cursor(self, *args: Any, prefetch: int | None = None,
               timeout: float | None = None) -> Any:
        from .cursor import CursorFactory

        factory = CursorFactory(self._conn, self._st.query, self._st, args, prefetch, timeout,
                                self._record_cls)
        factory._owner = self
        return factory

    def __del__(self) -> None:
        # As asyncpg: a statement from prepare() that nothing references any more is
        # closed on the server (the Close goes out with the connection's next request),
        # unless the connection's statement cache holds it.  Without this, code that
        # prepares and drops statements (SQLAlchemy's LRU of prepared statements) leaks
        # them on the server, and through a gateway hits max_client_statements.
        st, conn = self._st, self._conn
        if st.name and not st.closed and not conn.is_closed() \
                and conn._stmt_cache.get(st.query) is not st:
            st.closed = True
            conn._pending_closes.append(st.name)

    def __repr__(self) -> str:
        return f"<PreparedStatement {self._st.name} {self._st.query!r}>"
