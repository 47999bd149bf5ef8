"""Requests of the sans-I/O client protocol (:mod:`driver.protocol.client`).

A request is what the caller submits: the login exchange, a simple query (one
``Query`` message), a COPY, or an extended-protocol batch (Parse/Bind/Describe/
Execute/Close ... Sync).  Each ends at one ReadyForQuery; the protocol calls
its hooks as the replies arrive, and its results hold the rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Sequence

from . import messages as m
from .framing import ProtocolError

if TYPE_CHECKING:
    from .events import CopyInStarted

__all__ = ["Request", "StartupRequest", "SimpleQuery", "CopyQuery", "ExtendedQuery",
           "ExecResult", "QueryResult", "RowDecoder", "RowDecoderFactory", "raw_row_decoder"]

_ROW_DESCRIPTION = 84  # T

RowDecoder = Callable[[bytes], Any]
"""Turns a DataRow *body* into a row (usually a tuple)."""
RowDecoderFactory = Callable[[Sequence[tuple[int, int]]], RowDecoder]
"""``[(type_oid, format), ...]`` -> RowDecoder."""


def _discard(_: Any) -> None:
    return None


def raw_row_decoder(columns: Sequence[tuple[int, int]]) -> RowDecoder:
    """Default factory: rows are tuples of raw ``bytes`` (or None)."""
    return m.decode_data_row


# ---------------------------------------------------------------------------
# Requests
# ---------------------------------------------------------------------------


class Request:
    """Something sent to the server that ends with one ReadyForQuery.

    ``error``: fields of the ErrorResponse that failed it (None if none).
    ``exception``: a client-side failure (connection lost, auth failure...).
    ``done`` becomes true when its ReadyForQuery (or a failure) arrives.
    ``tag`` is free for the caller (e.g. a future).
    """

    __slots__ = ("error", "exception", "done", "tag", "copy_out", "copy_in_active")

    def __init__(self) -> None:
        self.error: dict[str, str] | None = None
        self.exception: BaseException | None = None
        self.done = False
        self.tag: Any = None
        self.copy_out: list[bytes] = []
        self.copy_in_active = False

    @property
    def failed(self) -> bool:
        return self.error is not None or self.exception is not None

    def _bytes(self) -> bytes:  # pragma: no cover - overridden
        raise NotImplementedError

    # Hooks called by the protocol; subclasses override what they use.
    def _row_description(self, body: bytes, factory: RowDecoderFactory) -> None:
        pass

    def _data_row(self, body: bytes) -> None:
        append, decode = self._row_sink()
        append(decode(body))

    def _row_sink(self) -> tuple[Callable[[Any], None], RowDecoder]:
        """Where the DataRows arriving now go: ``(list.append, decoder)``."""
        return _discard, _discard

    def _complete(self, tag: str | None, suspended: bool = False) -> None:
        pass

    def _param_description(self, oids: tuple[int, ...]) -> None:
        pass

    def _no_data(self) -> None:
        pass

    def _copy_data(self, body: bytes) -> None:
        """A CopyData message of a COPY TO STDOUT (kept in ``copy_out``)."""
        self.copy_out.append(body)


class StartupRequest(Request):
    """The login exchange; done at the first ReadyForQuery."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<StartupRequest done={self.done} error={self.error}>"


class QueryResult:
    """The outcome of one statement: its columns, rows and command tag."""

    __slots__ = ("fields", "rows", "status", "suspended", "decoder")

    def __init__(self, decoder: RowDecoder | None = None) -> None:
        self.fields: tuple[m.FieldDescription, ...] | None = None
        self.rows: list[Any] = []
        self.status: str | None = None
        self.suspended = False
        self.decoder = decoder

    def __repr__(self) -> str:
        return f"<QueryResult status={self.status!r} rows={len(self.rows)} suspended={self.suspended}>"


ExecResult = QueryResult


class SimpleQuery(Request):
    """A simple-protocol Query (possibly several statements).

    ``results`` holds one :class:`QueryResult` per statement.  Rows are kept
    only when ``keep_rows`` (decoded in text format by the factory).
    """

    __slots__ = ("sql", "results", "keep_rows", "_current")

    def __init__(self, sql: str, *, keep_rows: bool = False) -> None:
        super().__init__()
        self.sql = sql
        self.keep_rows = keep_rows
        self.results: list[QueryResult] = []
        self._current: QueryResult | None = None

    def _bytes(self) -> bytes:
        return m.query(self.sql)

    def _cur(self) -> QueryResult:
        cur = self._current
        if cur is None:
            cur = self._current = QueryResult()
            self.results.append(cur)
        return cur

    def _row_description(self, body: bytes, factory: RowDecoderFactory) -> None:
        cur = self._cur()
        fields = _decode_fields(body)
        cur.fields = fields
        if self.keep_rows:
            cur.decoder = factory([(f.type_oid, f.format) for f in fields])

    def _row_sink(self) -> tuple[Callable[[Any], None], RowDecoder]:
        cur = self._cur()
        if cur.decoder is None:
            return _discard, _discard
        return cur.rows.append, cur.decoder

    def _complete(self, tag: str | None, suspended: bool = False) -> None:
        cur = self._cur()
        cur.status = tag
        self._current = None

    @property
    def status(self) -> str | None:
        """Command tag of the last statement."""
        return self.results[-1].status if self.results else None

    def __repr__(self) -> str:
        return f"<SimpleQuery {self.sql[:40]!r} done={self.done}>"


class CopyQuery(SimpleQuery):
    """A simple-protocol COPY statement whose data the caller streams.

    COPY TO STDOUT: each CopyData body goes to ``sink`` (``copy_out`` if
    None) as it arrives; ``sink`` may get the bodies of several consecutive
    CopyData messages concatenated in one call (the data stream is the same).  COPY FROM STDIN: ``on_copy_in`` is called with the
    :class:`CopyInStarted` event as soon as the CopyInResponse is handled
    (before the event is returned by ``next_events``), so the caller can
    start sending without waiting for a dispatch round.
    """

    __slots__ = ("sink", "on_copy_in")

    def __init__(self, sql: str, sink: Callable[[bytes], None] | None = None) -> None:
        super().__init__(sql)
        self.sink = sink
        self.on_copy_in: Callable[[CopyInStarted], None] | None = None

    def _copy_data(self, body: bytes) -> None:
        if self.sink is None:
            self.copy_out.append(body)
        else:
            self.sink(body)

    def __repr__(self) -> str:
        return f"<CopyQuery {self.sql[:40]!r} done={self.done}>"


class ExtendedQuery(Request):
    """A batch of extended-protocol messages ending with one Sync.

    Build it with :meth:`parse`, :meth:`describe_statement`, :meth:`bind`,
    :meth:`describe_portal`, :meth:`execute`, :meth:`close_statement`,
    :meth:`close_portal`; then submit it.  Results:

    * ``param_oids`` -- from ParameterDescription (Describe of a statement);
    * ``fields`` -- from RowDescription (``()`` after NoData, None if not described);
    * ``results`` -- one :class:`QueryResult` per Execute, in order.

    An Execute without a row decoder gets one from the protocol's factory
    when a RowDescription arrives in the same batch; otherwise rows are raw.
    """

    __slots__ = ("_parts", "results", "param_oids", "fields", "_exec_index")

    def __init__(self) -> None:
        super().__init__()
        self._parts: list[bytes] = []
        self.results: list[QueryResult] = []
        self.param_oids: tuple[int, ...] | None = None
        self.fields: tuple[m.FieldDescription, ...] | None = None
        self._exec_index = 0

    # -- building ---------------------------------------------------------
    def parse(self, name: str, sql: str, param_oids: Sequence[int] = ()) -> ExtendedQuery:
        self._parts.append(m.parse(name, sql, param_oids))
        return self

    def describe_statement(self, name: str = "") -> ExtendedQuery:
        self._parts.append(m.describe("S", name))
        return self

    def describe_portal(self, name: str = "") -> ExtendedQuery:
        self._parts.append(m.describe("P", name))
        return self

    def bind(self, portal: str, statement: str, param_formats: Sequence[int],
             params: Sequence[bytes | None], result_formats: Sequence[int]) -> ExtendedQuery:
        self._parts.append(m.bind(portal, statement, param_formats, params, result_formats))
        return self

    def add_raw(self, data: bytes) -> ExtendedQuery:
        """Append pre-encoded messages that produce no Execute result (e.g. Bind)."""
        self._parts.append(data)
        return self

    def execute(self, portal: str = "", max_rows: int = 0,
                decoder: RowDecoder | None = None) -> QueryResult:
        self._parts.append(m.execute(portal, max_rows))
        result = QueryResult(decoder)
        self.results.append(result)
        return result

    def close_statement(self, name: str) -> ExtendedQuery:
        self._parts.append(m.close("S", name))
        return self

    def close_portal(self, name: str) -> ExtendedQuery:
        self._parts.append(m.close("P", name))
        return self

    def _bytes(self) -> bytes:
        self._parts.append(m.SYNC)
        data = b"".join(self._parts)
        self._parts = []
        return data

    # -- replies ------------------------------------------------------------
    def _row_description(self, body: bytes, factory: RowDecoderFactory) -> None:
        fields = _decode_fields(body)
        self.fields = fields
        # The next Execute(s) without a decoder use these columns.
        cols = [(f.type_oid, f.format) for f in fields]
        decoder: RowDecoder | None = None
        for res in self.results[self._exec_index:]:
            if res.fields is None:
                res.fields = fields
            if res.decoder is None:
                if decoder is None:
                    decoder = factory(cols)
                res.decoder = decoder

    def _no_data(self) -> None:
        self.fields = ()

    def _param_description(self, oids: tuple[int, ...]) -> None:
        self.param_oids = oids

    def _row_sink(self) -> tuple[Callable[[Any], None], RowDecoder]:
        if self._exec_index >= len(self.results):
            raise ProtocolError("DataRow without a matching Execute")
        res = self.results[self._exec_index]
        return res.rows.append, (m.decode_data_row if res.decoder is None else res.decoder)

    def _complete(self, tag: str | None, suspended: bool = False) -> None:
        if self._exec_index >= len(self.results):
            raise ProtocolError("command completion without a matching Execute")
        res = self.results[self._exec_index]
        res.status = tag
        res.suspended = suspended
        self._exec_index += 1

    def __repr__(self) -> str:
        return f"<ExtendedQuery executes={len(self.results)} done={self.done}>"


def _decode_fields(body: bytes) -> tuple[m.FieldDescription, ...]:
    msg = m.decode_backend(_ROW_DESCRIPTION, body)
    assert isinstance(msg, m.RowDescription)
    return msg.fields
