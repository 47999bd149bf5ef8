"""Prepared statements and the statement cache of a :class:`~driver.connection.Connection`.

:class:`StatementsMixin` holds what asyncpg's statement cache does: prepare
(one Parse + Describe, then introspection of unknown types), cache by query
text (LRU, ``statement_cache_size``), the one-round-trip path for
``describe_first=False``, and the re-prepare-and-retry when the server says a
cached statement is stale (``InvalidCachedStatementError`` after DDL, a type
it names dropped and recreated -- ``XX000 cache lookup failed for type N``,
where asyncpg keeps failing -- or a statement the server lost), outside transactions only, as asyncpg does.
"""

from __future__ import annotations

import collections
from typing import TYPE_CHECKING, Any, Iterable, Sequence, cast

from . import exceptions as exc
from .protocol import client as pc
from .protocol.messages import FieldDescription, RowDescription, decode_backend
from .record import Record, make_mapping

if TYPE_CHECKING:
    from . import codecs
    from .connection import Connection
else:
    class _LazyCodecs:
        """``driver.codecs``, imported when a first statement needs it."""

        def __getattr__(self, name: str) -> Any:
            from . import codecs as module

            globals()["codecs"] = module
            return getattr(module, name)

    codecs = _LazyCodecs()

__all__ = ["StatementsMixin"]

class _Statement:
    """A server-side prepared statement (or the unnamed one) and its codecs."""

    __slots__ = ("name", "query", "param_oids", "fields", "result_formats", "row_decoder",
                 "mapping", "closed", "last_status", "_values_decoder", "_decoders",
                 "batch_encoder")

    def __init__(self, name: str, query: str, param_oids: Sequence[int],
                 fields: Sequence[FieldDescription], record_cls: Any,
                 types: codecs.TypeRegistry | None = None) -> None:
        if types is None:
            types = codecs.DEFAULT_REGISTRY
        self.name = name
        self.query = query
        self.param_oids = tuple(param_oids)
        self.fields = tuple(fields)
        self.result_formats = [types.result_format_for(f.type_oid) for f in self.fields]
        dec = types.build_row_decoder([(f.type_oid, fmt) for f, fmt in
                                       zip(self.fields, self.result_formats)])
        self.mapping = make_mapping([f.name for f in self.fields])
        self._values_decoder = dec
        self._decoders: dict[Any, pc.RowDecoder] = {}
        self.row_decoder: pc.RowDecoder = self.decoder_for(record_cls)
        self.closed = False
        self.last_status: str | None = None
        #: (registry, compiled Bind+Execute builder or None): see driver.batch
        self.batch_encoder: tuple[Any, Any] | None = None

    def decoder_for(self, record_cls: Any) -> pc.RowDecoder:
        """DataRow body -> an instance of ``record_cls`` (``Record`` if None)."""
        rec = Record if record_cls is None else record_cls
        decode = self._decoders.get(rec)
        if decode is None:
            def decode(body: bytes, _rec: Any = rec, _m: dict[str, int] = self.mapping,
                       _d: Any = self._values_decoder) -> Any:
                return _rec(_m, _d(body))
            self._decoders[rec] = decode
        return decode



def _text_row_factory(columns: Sequence[tuple[int, int]]) -> pc.RowDecoder:
    return codecs.build_row_decoder(columns)


class _OneShotQuery(pc.ExtendedQuery):
    """An ExtendedQuery whose rows (text format) become Records as they arrive."""

    __slots__ = ("record_cls", "types", "raw_rows")

    def __init__(self, record_cls: Any, types: codecs.TypeRegistry) -> None:
        super().__init__()
        self.record_cls = record_cls
        self.types = types
        #: the rows are kept raw: some column types must be introspected first
        self.raw_rows = False

    def _row_description(self, body: bytes, factory: pc.RowDecoderFactory) -> None:
        msg = decode_backend(ord("T"), body)
        assert isinstance(msg, RowDescription)
        fields = msg.fields
        self.fields = fields
        if any(f.type_oid not in self.types for f in fields):
            self.raw_rows = True
            for res in self.results:
                if res.decoder is None:
                    res.fields = fields
                    res.decoder = bytes
            return
        self._set_decoders(fields)

    def _set_decoders(self, fields: tuple[FieldDescription, ...]) -> Any:
        dec = self.types.build_row_decoder([(f.type_oid, 0) for f in fields])
        mapping = make_mapping([f.name for f in fields])
        rec = Record if self.record_cls is None else self.record_cls

        def decode(row: bytes, _rec: Any = rec, _m: dict[str, int] = mapping, _d: Any = dec) -> Any:
            return _rec(_m, _d(row))
        for res in self.results:
            if res.decoder is None:
                res.fields = fields
                res.decoder = decode
        return decode


_IP_TYPES = frozenset({"IPv4Address", "IPv6Address", "IPv4Network", "IPv6Network",
                       "IPv4Interface", "IPv6Interface"})


def _type_gone(e: exc.PostgresError) -> bool:
    """``XX000 cache lookup failed for type N``: the server's ``elog`` text,
    never translated (unlike ``ereport`` messages), so matching it is safe."""
    return (getattr(e, "sqlstate", None) == "XX000"
            and (getattr(e, "message", None) or "").startswith("cache lookup failed for type "))


class _NoText(Exception):
    pass


def _text_value(v: Any, in_array: bool = False) -> str:
    """PostgreSQL text input for a Python value (types the server will infer)."""
    t = type(v)
    if t is str:
        return str(v)
    if t is bool:
        return "t" if v else "f"
    if t is int:
        return str(v)
    if t is float:
        if v != v:
            return "NaN"
        if v in (float("inf"), float("-inf")):
            return "Infinity" if v > 0 else "-Infinity"
        return repr(v)
    if t in (bytes, bytearray, memoryview):
        return "\\x" + bytes(v).hex()
    # by module and name: the modules need not be imported to check
    mod, name = t.__module__, t.__name__
    if mod == "decimal" and name == "Decimal":
        return str(v)
    if mod == "datetime":
        if name in ("datetime", "date", "time"):
            return str(v.isoformat())
        if name == "timedelta":
            return f"{v.days} days {v.seconds} seconds {v.microseconds} microseconds"
    if (mod == "uuid" and name == "UUID") or (mod == "ipaddress" and name in _IP_TYPES):
        return str(v)
    if t is list:
        # tuples are not arrays here: nested in a list they are elements (records,
        # points...) for asyncpg; their type must come from a Describe
        parts = []
        for x in v:
            if x is None:
                parts.append("NULL")
            elif type(x) is list:
                parts.append(_text_value(x, True))
            else:
                s = _text_value(x, True)
                parts.append('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"')
        return "{" + ",".join(parts) + "}"
    raise _NoText


def _text_params(args: Sequence[Any]) -> list[bytes | None] | None:
    """Arguments as text-format parameters, or None when one of them has a
    type this path does not handle (the caller then Describes first)."""
    out: list[bytes | None] = []
    try:
        for a in args:
            out.append(None if a is None else _text_value(a).encode("utf-8"))
    except _NoText:
        return None
    return out


class StatementsMixin:
    """Statement preparation, caching and stale-statement retries (mixed into Connection)."""

    if TYPE_CHECKING:
        _cache_size: int
        _stmt_cache: collections.OrderedDict[str, _Statement]
        _pending_closes: list[str]
        _stmt_counter: int
        _record_cls: Any
        _describe_first: bool
        _types: codecs.TypeRegistry
        _type_overrides: dict[int, Any]
        _protocol: pc.ClientProtocol

        async def _request(self, req: pc.Request, deadline: float | None,
                           query: str | None = None) -> pc.Request: ...

    def _next_stmt_name(self) -> str:
        self._stmt_counter += 1
        return f"__wp_stmt_{self._stmt_counter}__"

    def _queue_closes(self, req: pc.ExtendedQuery) -> None:
        if self._pending_closes:
            for name in self._pending_closes:
                req.close_statement(name)
            self._pending_closes.clear()

    async def _prepare_statement(self, query: str, deadline: float | None, *,
                                 named: bool = False, use_cache: bool = True) -> _Statement:
        cacheable = use_cache and not named and self._cache_size > 0
        if cacheable:
            st = self._stmt_cache.get(query)
            if st is not None:
                self._stmt_cache.move_to_end(query)
                return st
        name = self._next_stmt_name() if (named or cacheable) else ""
        req = pc.ExtendedQuery()
        self._queue_closes(req)
        req.parse(name, query).describe_statement(name)
        await self._request(req, deadline, query)
        await self._ensure_types(req.param_oids or (), req.fields or (), deadline)
        st = _Statement(name, query, req.param_oids or (), req.fields or (), self._record_cls,
                        self._types)
        if cacheable:
            self._stmt_cache[query] = st
            while len(self._stmt_cache) > self._cache_size:
                _, old = self._stmt_cache.popitem(last=False)
                old.closed = True
                self._pending_closes.append(old.name)
        return st

    async def _ensure_types(self, param_oids: Sequence[int],
                            fields: Sequence[FieldDescription], deadline: float | None) -> None:
        """Introspect the types of a statement the codecs don't know (one query)."""
        types = self._types
        unknown = [o for o in param_oids if o not in types]
        unknown += [f.type_oid for f in fields if f.type_oid not in types]
        if unknown:
            from .introspection import introspect

            await introspect(cast("Connection", self), unknown, deadline)

    def _own_types(self) -> codecs.TypeRegistry:
        """This connection's private registry (copied from the builtin one on first use)."""
        if self._types is codecs.DEFAULT_REGISTRY:
            self._types = codecs.DEFAULT_REGISTRY.copy()
        return self._types

    def _invalidate(self, st: _Statement) -> None:
        cached = self._stmt_cache.get(st.query)
        if cached is st:
            del self._stmt_cache[st.query]
            self._pending_closes.append(st.name)
            st.closed = True

    def _encode(self, st: _Statement, args: Sequence[Any],
                element: int | None = None) -> tuple[list[int], list[bytes | None]]:
        try:
            return self._types.encode_params(st.param_oids, args)
        except codecs.EncodeError as e:
            if e.position is None:
                raise exc.InterfaceError(
                    str(e), hint="Check the query against the passed list of arguments.") from None
            msg = str(e)
            if element is not None:  # as asyncpg words it for executemany()
                prefix = f"invalid input for query argument ${e.position}"
                if msg.startswith(prefix):
                    msg = (f"{prefix} in element #{element} of executemany() sequence"
                           + msg[len(prefix):])
            raise exc.DataError(msg) from None

    def _add_bind_execute(self, req: pc.ExtendedQuery, st: _Statement, args: Sequence[Any], *,
                          portal: str = "", max_rows: int = 0,
                          record_cls: Any = None, element: int | None = None) -> pc.QueryResult:
        formats, values = self._encode(st, args, element)
        req.bind(portal, st.name, formats, values, st.result_formats)
        decoder = st.row_decoder if record_cls is None else st.decoder_for(record_cls)
        return req.execute(portal, max_rows, decoder)

    def _stale_statement(self, e: exc.PostgresError, stmt: _Statement) -> bool:
        """Forget what ``e`` says is stale; True if the statement may be
        prepared again and retried (outside a transaction, as asyncpg)."""
        if isinstance(e, exc.InvalidCachedStatementError):
            # A cached plan's result type changed (ALTER TABLE, search_path...):
            # asyncpg drops the whole statement cache.
            self._drop_statement_cache()
        elif getattr(e, "sqlstate", None) == "26000":  # the server lost the statement
            self._invalidate(stmt)
        elif _type_gone(e):
            # A type the statement names was dropped (DROP TYPE; CREATE TYPE): the
            # statement keeps the old OID and fails at every Bind.  Every cached
            # statement naming that type is as stale, and which ones they are is
            # not known here: drop the cache, as for InvalidCachedStatementError.
            self._drop_statement_cache()
        else:
            return False
        return self._protocol.transaction_status == "I"

    def _drop_statement_cache(self) -> None:
        for st in self._stmt_cache.values():
            st.closed = True
            self._pending_closes.append(st.name)
        self._stmt_cache.clear()

    async def _bind_execute(self, query: str, args: Sequence[Any], deadline: float | None, *,
                            st: _Statement | None = None, limit: int = 0,
                            record_cls: Any = None) -> tuple[_Statement, pc.QueryResult]:
        retry = st is None
        if st is None and not self._describe_first and not self._type_overrides and not (
                self._cache_size > 0 and query in self._stmt_cache):
            values = _text_params(args)
            if values is not None:
                return await self._one_shot(query, values, deadline, limit, record_cls)
        while True:
            stmt = st if st is not None else await self._prepare_statement(query, deadline)
            req = pc.ExtendedQuery()
            self._queue_closes(req)
            if stmt.name == "":
                req.parse("", stmt.query, stmt.param_oids)
            result = self._add_bind_execute(req, stmt, args, max_rows=limit,
                                            record_cls=record_cls)
            try:
                await self._request(req, deadline, query)
            except exc.PostgresError as e:
                if self._stale_statement(e, stmt) and retry:
                    retry = False
                    continue
                raise
            stmt.last_status = result.status
            return stmt, result

    async def _one_shot(self, query: str, values: list[bytes | None], deadline: float | None,
                        limit: int, record_cls: Any = None) -> tuple[_Statement, pc.QueryResult]:
        """ONE round trip for a statement not prepared yet (``describe_first=False``):

        Parse + Describe(statement) + Bind (parameters in TEXT format, their
        types inferred by the server as for a Describe) + Execute + Sync in
        one batch.  Result columns come back in text format and are decoded
        by the text codecs into the same Python types as the binary ones.
        With a statement cache the statement is named and cached (later
        calls use the binary, typed path); otherwise it is the unnamed one.
        """
        name = self._next_stmt_name() if self._cache_size > 0 else ""
        req = _OneShotQuery(record_cls if record_cls is not None else self._record_cls,
                            self._types)
        self._queue_closes(req)
        req.parse(name, query).describe_statement(name)
        req.bind("", name, (), values, ())
        result = req.execute("", limit)
        try:
            await self._request(req, deadline, query)
        except BaseException:
            if name:
                self._pending_closes.append(name)  # it may exist on the server
            raise
        if req.raw_rows:  # non-builtin column types: introspect, then decode
            await self._ensure_types((), req.fields or (), deadline)
            req.types = self._types
            decode = req._set_decoders(req.fields or ())
            result.rows = [decode(b) for b in result.rows]
        st = _Statement(name, query, req.param_oids or (), req.fields or (), self._record_cls,
                        self._types)
        st.last_status = result.status
        if name:
            self._stmt_cache[query] = st
            while len(self._stmt_cache) > self._cache_size:
                _, old = self._stmt_cache.popitem(last=False)
                old.closed = True
                self._pending_closes.append(old.name)
        return st, result


    def _bind_execute_many(self, req: pc.ExtendedQuery, stmt: _Statement,
                           args: Sequence[Sequence[Any]]) -> list[pc.QueryResult] | None:
        """Bind + Execute of every argument tuple with the statement's compiled
        builder (driver.batch); None when the general path must do it (no
        builder, or a value it does not take: that path raises the error)."""
        from .batch import bind_execute_encoder

        build = bind_execute_encoder(stmt, self._types)
        if build is None:
            return None
        try:
            data = b"".join(map(build, args))
        except Exception:
            return None
        req.add_raw(data)
        QueryResult = pc.QueryResult
        results = [QueryResult() for _ in range(len(args))]
        req.results.extend(results)
        return results

    async def _executemany(self, command: str, args: Iterable[Sequence[Any]],
                           deadline: float | None, st: _Statement | None = None, *,
                           rows: bool = False, record_cls: Any = None) -> list[Any]:
        args = args if isinstance(args, (list, tuple)) else list(args)
        retry = st is None
        while True:
            stmt = st if st is not None else await self._prepare_statement(command, deadline)
            if not args:
                return []
            req = pc.ExtendedQuery()
            if stmt.name == "":
                req.parse("", stmt.query, stmt.param_oids)
            results = None if rows else self._bind_execute_many(req, stmt, args)
            if results is None:
                results = [self._add_bind_execute(req, stmt, a, element=n, record_cls=record_cls)
                           for n, a in enumerate(args)]
            self._queue_closes(req)
            try:
                await self._request(req, deadline, command)
            except exc.PostgresError as e:
                if self._stale_statement(e, stmt) and retry:
                    retry = False
                    continue
                raise
            stmt.last_status = results[-1].status
            if not rows:
                return []
            return [r for res in results for r in res.rows]
