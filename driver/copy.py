"""COPY (asyncpg's ``copy_*`` API): ``Connection.copy_to_table`` & co delegate here.

COPY FROM STDIN sends the source in CopyData messages of about
``_CHUNK`` bytes, waiting for each write to drain (a slow server slows the
source).  COPY TO STDOUT hands the data to the output as it arrives; the
connection stops reading from the server while more than ``_HIGH_WATER``
bytes wait for the output, so memory stays bounded whatever the size of
the table.  Over the HTTP transport a request is one batch with no room
for a stream, so COPY is refused there with a clear error.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
from collections.abc import AsyncIterable
from itertools import islice
from typing import TYPE_CHECKING, Any, AsyncIterator, Awaitable, Callable, Iterable, Sequence

from . import codecs
from . import exceptions as exc
from .protocol import client as pc

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["copy_from_table", "copy_from_query", "copy_to_table", "copy_records_to_table"]

#: bytes per CopyData message sent (asyncpg reads files in 512 KiB chunks)
_CHUNK = 512 * 1024
#: COPY TO STDOUT: stop reading from the server above this many buffered bytes
_HIGH_WATER = 4 * 1024 * 1024

_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_BINARY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_I32 = struct.Struct("!i").pack
_I16 = struct.Struct("!h").pack


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _table(table_name: str, schema_name: str | None) -> str:
    tab = _quote_ident(table_name)
    return _quote_ident(schema_name) + "." + tab if schema_name else tab


def _columns(columns: Iterable[str] | None) -> str:
    return "(" + ", ".join(_quote_ident(c) for c in columns) + ")" if columns else ""


def _where(where: str | None) -> str:
    return "WHERE " + where if where else ""


def format_copy_opts(**kwargs: Any) -> str:
    """COPY's option list, as asyncpg builds it (None: left out)."""
    opts = []
    force_quote = kwargs.get("force_quote")
    if isinstance(force_quote, bool):
        kwargs.pop("force_quote")
        if force_quote:
            opts.append("FORCE_QUOTE *")
    for k, v in kwargs.items():
        if v is None:
            continue
        if k in ("force_not_null", "force_null", "force_quote"):
            v = "(" + ", ".join(_quote_ident(c) for c in v) + ")"
        elif k in ("oids", "freeze", "header"):
            v = str(v)
        else:
            v = _quote_literal(v)
        opts.append(f"{k.upper()} {v}")
    return "(" + ", ".join(opts) + ")" if opts else ""


def _check_transport(conn: Connection) -> None:
    scheme = (conn._endpoint.scheme or "").lower()
    if scheme in ("http", "https"):
        raise exc.UnsupportedClientFeatureError(
            "COPY is not supported over the http:// transport: an HTTP request is one "
            "batch and cannot carry a COPY data stream; connect with ws:// (the gateway's "
            "WebSocket) or postgresql:// for COPY")


# ---------------------------------------------------------------------------
# COPY TO STDOUT
# ---------------------------------------------------------------------------


class _Sink:
    """What the server sent and the output has not taken yet."""

    __slots__ = ("chunks", "size", "wakeup", "drained", "req", "discarding")

    def __init__(self, req: pc.CopyQuery) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.wakeup = asyncio.Event()
        self.drained = asyncio.Event()
        self.drained.set()
        self.req = req
        self.discarding = False

    def __call__(self, body: bytes) -> None:
        if not self.discarding:
            self.chunks.append(body)
            self.size += len(body)

    async def received(self) -> None:
        """Called by the connection's reader after each read."""
        if self.chunks or self.req.done:
            self.wakeup.set()
        if self.size > _HIGH_WATER:
            self.drained.clear()
            await self.drained.wait()

    def take(self) -> bytes:
        data = b"".join(self.chunks)
        self.chunks.clear()
        self.size = 0
        self.drained.set()
        return data

    def stop(self) -> None:
        """Drop what arrives from now on (the output failed or gave up)."""
        self.discarding = True
        self.chunks.clear()
        self.size = 0
        self.drained.set()
        self.wakeup.set()


async def _copy_out(conn: Connection, copy_stmt: str, output: Any,
                    timeout: float | None) -> str:
    _check_transport(conn)
    try:
        path: Any = os.fspath(output)
    except TypeError:
        path = None
    loop = asyncio.get_running_loop()
    f: Any = None
    writer: Callable[[bytes], Awaitable[Any]]
    if path is not None:
        f = await loop.run_in_executor(None, open, path, "wb")
    elif hasattr(output, "write"):
        f = output
    elif callable(output):
        writer = output
    else:
        raise TypeError("output is expected to be a file-like object, a path-like object "
                        f"or a coroutine function, not {type(output).__name__}")
    if f is not None:
        file = f

        async def writer(data: bytes) -> None:
            await loop.run_in_executor(None, file.write, data)

    try:
        await conn._acquire()
        try:
            return await _run_copy_out(conn, copy_stmt, writer, conn._deadline(timeout))
        finally:
            conn._release()
    finally:
        if path is not None:
            await loop.run_in_executor(None, f.close)


async def _run_copy_out(conn: Connection, copy_stmt: str,
                        writer: Callable[[bytes], Awaitable[Any]], deadline: float | None) -> str:
    req = pc.CopyQuery(copy_stmt)
    sink = _Sink(req)
    req.sink = sink
    loop = conn._loop
    fut: asyncio.Future[None] | None = None
    conn._copy_sink = sink
    try:
        fut = await conn._submit(req, deadline)
        error: BaseException | None = None
        while True:
            if not sink.chunks and not fut.done():
                sink.wakeup.clear()
                remaining = None if deadline is None else deadline - loop.time()
                if remaining is not None and remaining <= 0:
                    raise asyncio.TimeoutError()
                wait = loop.create_task(sink.wakeup.wait())
                waiters: list[asyncio.Future[Any]] = [wait, fut]
                try:
                    await asyncio.wait(waiters, timeout=remaining,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    wait.cancel()
                if not sink.chunks and not fut.done() and not sink.wakeup.is_set():
                    raise asyncio.TimeoutError()
                continue
            if sink.chunks:
                data = sink.take()
                if error is None:
                    try:
                        await writer(data)
                    except Exception as e:  # stop the COPY; the server's rows are dropped
                        error = e
                        sink.stop()
                        if not fut.done():
                            await conn._cancel_and_wait(fut)
                continue
            break
        if error is not None:
            raise error
        await conn._wait(req, fut, deadline, copy_stmt)
        return req.status or ""
    except asyncio.TimeoutError:
        sink.stop()
        if fut is not None and not fut.done():
            await conn._cancel_and_wait(fut)
        raise
    except asyncio.CancelledError:
        sink.stop()
        if fut is not None and not fut.done():
            conn._cancel_in_background(fut)
        raise
    finally:
        sink.stop()
        conn._copy_sink = None


async def copy_from_table(conn: Connection, table_name: str, *, output: Any,
                          columns: Iterable[str] | None = None, schema_name: str | None = None,
                          timeout: float | None = None, format: str | None = None,
                          oids: Any = None, delimiter: str | None = None, null: str | None = None,
                          header: Any = None, quote: str | None = None,
                          escape: str | None = None, force_quote: Any = None,
                          encoding: str | None = None) -> str:
    """``COPY table TO STDOUT`` into ``output`` (a path, a file-like object
    or a coroutine function taking ``bytes``); returns the command tag."""
    opts = format_copy_opts(format=format, oids=oids, delimiter=delimiter, null=null,
                            header=header, quote=quote, escape=escape,
                            force_quote=force_quote, encoding=encoding)
    stmt = f"COPY {_table(table_name, schema_name)}{_columns(columns)} TO STDOUT {opts}"
    return await _copy_out(conn, stmt, output, timeout)


async def copy_from_query(conn: Connection, query: str, *args: Any, output: Any,
                          timeout: float | None = None, format: str | None = None,
                          oids: Any = None, delimiter: str | None = None, null: str | None = None,
                          header: Any = None, quote: str | None = None,
                          escape: str | None = None, force_quote: Any = None,
                          encoding: str | None = None) -> str:
    """``COPY (query) TO STDOUT`` into ``output``; arguments are inlined as
    quoted literals by the server first (as asyncpg does)."""
    _check_transport(conn)
    opts = format_copy_opts(format=format, oids=oids, delimiter=delimiter, null=null,
                            header=header, quote=quote, escape=escape,
                            force_quote=force_quote, encoding=encoding)
    if args:
        query = await _mogrify(conn, query, args, timeout)
    return await _copy_out(conn, f"COPY ({query}) TO STDOUT {opts}", output, timeout)


async def _mogrify(conn: Connection, query: str, args: Sequence[Any],
                   timeout: float | None) -> str:
    """``query`` with ``$n`` replaced by the server's ``quote_nullable`` of
    each argument, typed as the server infers it for ``query``."""
    from .statements import _Statement

    await conn._acquire()
    try:
        deadline = conn._deadline(timeout)
        st = await conn._prepare_statement(query, deadline, use_cache=False)
        cols = ", ".join(f"quote_nullable(${i})" for i in range(1, len(st.param_oids) + 1))
        sql = f"SELECT {cols}"
        req = pc.ExtendedQuery()
        req.parse("", sql, st.param_oids).describe_statement("")
        await conn._request(req, deadline, sql)
        lit = _Statement("", sql, st.param_oids, req.fields or (), None)
        _, result = await conn._bind_execute(sql, args, deadline, st=lit)
    finally:
        conn._release()
    values = result.rows[0]
    return re.sub(r"\$(\d+)\b", lambda m: str(values[int(m.group(1)) - 1]), query)


# ---------------------------------------------------------------------------
# COPY FROM STDIN
# ---------------------------------------------------------------------------


async def _file_chunks(f: Any) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    while True:
        data = await loop.run_in_executor(None, f.read, _CHUNK)
        if not data:
            return
        yield data


async def _aiter_source(source: Any) -> AsyncIterator[bytes]:
    async for data in source:
        yield data


async def _one(data: Any) -> AsyncIterator[bytes]:
    view = memoryview(data).cast("B")
    for i in range(0, len(view), _CHUNK):
        yield bytes(view[i:i + _CHUNK])


async def _copy_in(conn: Connection, copy_stmt: str, chunks: AsyncIterator[bytes],
                   deadline: float | None) -> str:
    """Run ``copy_stmt`` (a COPY FROM STDIN) sending ``chunks``."""
    _check_transport(conn)
    loop = conn._loop
    proto = conn._protocol
    req = pc.CopyQuery(copy_stmt)
    started: asyncio.Future[None] = loop.create_future()

    def on_copy_in(_: pc.CopyInStarted) -> None:
        if not started.done():
            started.set_result(None)

    req.on_copy_in = on_copy_in
    fut = await conn._submit(req, deadline)
    await _wait_either(conn, req, fut, started, deadline, copy_stmt)
    if fut.done():  # refused before any data (no such table, ...)
        conn._raise_for(req, copy_stmt)
        return req.status or ""
    try:
        while True:
            if deadline is None:
                data = await chunks.__anext__()
            else:
                data = await asyncio.wait_for(chunks.__anext__(), deadline - loop.time())
            if not req.copy_in_active:
                break  # the server failed the COPY: its error is on the way
            if data:
                proto.copy_data(bytes(data))
                await conn._flush()
    except StopAsyncIteration:
        pass
    except BaseException as e:
        if req.copy_in_active:
            proto.copy_fail(_fail_message(e))
            try:
                await conn._flush()
                await asyncio.wait_for(asyncio.shield(fut), 30)
            except BaseException:
                conn.terminate()
        raise
    if req.copy_in_active:
        proto.copy_done()
        await conn._flush()
    await conn._wait(req, fut, deadline, copy_stmt)
    return req.status or ""


def _fail_message(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "COPY timed out in the client"
    if isinstance(e, asyncio.CancelledError):
        return "COPY cancelled by the client"
    return f"error in the COPY data source: {type(e).__name__}: {e}"


async def _wait_either(conn: Connection, req: pc.Request, fut: asyncio.Future[None],
                       started: asyncio.Future[None], deadline: float | None,
                       query: str) -> None:
    remaining = None if deadline is None else max(0.0, deadline - conn._loop.time())
    await asyncio.wait([fut, started], timeout=remaining,
                       return_when=asyncio.FIRST_COMPLETED)
    if not fut.done() and not started.done():
        await conn._cancel_and_wait(fut)
        raise asyncio.TimeoutError()


async def copy_to_table(conn: Connection, table_name: str, *, source: Any,
                        columns: Iterable[str] | None = None, schema_name: str | None = None,
                        timeout: float | None = None, format: str | None = None,
                        oids: Any = None, freeze: Any = None, delimiter: str | None = None,
                        null: str | None = None, header: Any = None, quote: str | None = None,
                        escape: str | None = None, force_quote: Any = None,
                        force_not_null: Any = None, force_null: Any = None,
                        encoding: str | None = None, where: str | None = None) -> str:
    """``COPY table FROM STDIN`` from ``source``: a path, a file-like object,
    an async iterable of ``bytes`` or a bytes-like object."""
    _check_transport(conn)
    opts = format_copy_opts(format=format, oids=oids, freeze=freeze, delimiter=delimiter,
                            null=null, header=header, quote=quote, escape=escape,
                            force_not_null=force_not_null, force_null=force_null,
                            encoding=encoding)
    stmt = (f"COPY {_table(table_name, schema_name)}{_columns(columns)} FROM STDIN {opts} "
            f"{_where(where)}")
    try:
        path: Any = os.fspath(source)
    except TypeError:
        path = None
    loop = asyncio.get_running_loop()
    f: Any = None
    if path is not None:
        f = await loop.run_in_executor(None, open, path, "rb")
        chunks = _file_chunks(f)
    elif hasattr(source, "read"):
        chunks = _file_chunks(source)
    elif isinstance(source, AsyncIterable):
        chunks = _aiter_source(source)
    else:
        chunks = _one(source)
    try:
        await conn._acquire()
        try:
            return await _copy_in(conn, stmt, chunks, conn._deadline(timeout))
        finally:
            conn._release()
    finally:
        if f is not None:
            await loop.run_in_executor(None, f.close)


# -- binary COPY of records ----------------------------------------------------


async def copy_records_to_table(conn: Connection, table_name: str, *, records: Any,
                                columns: Sequence[str] | None = None,
                                schema_name: str | None = None, timeout: float | None = None,
                                where: str | None = None) -> str:
    """Binary ``COPY table FROM STDIN`` of ``records`` (an iterable or an
    async iterable of sequences), encoded with the columns' binary codecs."""
    _check_transport(conn)
    tab = _table(table_name, schema_name)
    col_list = ", ".join(_quote_ident(c) for c in columns) if columns else "*"
    stmt = f"COPY {tab}{_columns(columns)} FROM STDIN (FORMAT binary) {_where(where)}"
    await conn._acquire()
    try:
        deadline = conn._deadline(timeout)
        intro = await conn._prepare_statement(f"SELECT {col_list} FROM {tab} LIMIT 1", deadline)
        encoders = await _binary_encoders(conn, [f.type_oid for f in intro.fields], deadline)
        return await _copy_in(conn, stmt, _binary_chunks(records, encoders), deadline)
    finally:
        conn._release()


async def _binary_encoders(conn: Connection, type_oids: list[int],
                           deadline: float | None) -> list[Callable[[Any], bytes]]:
    """A binary encoder per column (enums: their label; domains: their base type's)."""
    out: list[Callable[[Any], bytes] | None] = []
    unknown: list[int] = []
    for oid in type_oids:
        fmt, enc = conn._types.encoder_for(oid)  # builtin, introspected and custom codecs
        if fmt == codecs.FORMAT_BINARY:
            out.append(enc)
        else:
            out.append(None)
            unknown.append(oid)
    if unknown:
        from .statements import _Statement

        sql = ("SELECT t.oid, t.typtype::text, t.typbasetype, format_type(t.oid, NULL) "
               "FROM pg_catalog.pg_type t WHERE t.oid = ANY($1::oid[])")
        st = await conn._prepare_statement(sql, deadline, use_cache=False)
        assert isinstance(st, _Statement)
        _, result = await conn._bind_execute(sql, [list(set(unknown))], deadline, st=st)
        kinds = {r[0]: (r[1], r[2], r[3]) for r in result.rows}
        for i, oid in enumerate(type_oids):
            if out[i] is not None:
                continue
            kind, base, name = kinds.get(oid, ("?", 0, str(oid)))
            if kind == "e":  # enum_send is the label's text
                out[i] = _encode_text
                continue
            if kind == "d":
                fmt, enc = codecs.encoder_for(base)
                if fmt == codecs.FORMAT_BINARY:
                    out[i] = enc
                    continue
            raise exc.InterfaceError(
                f"no binary format encoder for type {name} (OID {oid}): "
                "copy_records_to_table() needs one")
    return [e for e in out if e is not None]


def _encode_text(value: Any) -> bytes:
    return str(value).encode("utf-8")


async def _binary_chunks(records: Any, encoders: list[Callable[[Any], bytes]]
                         ) -> AsyncIterator[bytes]:
    """The binary COPY stream of ``records``, in chunks of about ``_CHUNK`` bytes."""
    encode_row = _row_encoder(encoders)
    buf: list[bytes] = [_BINARY_HEADER]
    append = buf.append
    size = 0
    n = 0
    try:
        if isinstance(records, AsyncIterable):
            async for rec in records:
                row = encode_row(rec)
                append(row)
                n += 1
                size += len(row)
                if size >= _CHUNK:
                    yield b"".join(buf)
                    buf.clear()
                    size = 0
        else:
            # batches of records encoded by map() (no Python loop per record)
            it = iter(records)
            while True:
                batch = list(islice(it, 1000))
                if not batch:
                    break
                try:
                    rows = b"".join(map(encode_row, batch))
                except _ENCODE_ERRORS:
                    for rec in batch:  # find the record (the except below reports it)
                        encode_row(rec)
                        n += 1
                    raise
                append(rows)
                n += len(batch)
                size += len(rows)
                if size >= _CHUNK:
                    yield b"".join(buf)
                    buf.clear()
                    size = 0
    except _ENCODE_ERRORS as e:
        raise _record_error(rec, n, encoders, e) from None
    append(_BINARY_TRAILER)
    yield b"".join(buf)


_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, ArithmeticError, codecs.EncodeError)


def _row_encoder(encoders: list[Callable[[Any], bytes]]) -> Callable[[Sequence[Any]], bytes]:
    """``record -> bytes`` of one binary COPY tuple, compiled for these columns
    (common values inlined: see :mod:`driver.codecs._inline`)."""
    from .codecs._inline import NAMESPACE, field_code

    n = len(encoders)
    names = ", ".join(f"a{i}" for i in range(n))
    lines = ["def encode_row(rec):", f"    {names}, = rec"]
    lines += [field_code(i, enc) for i, enc in enumerate(encoders)]
    parts = ", ".join(["head"] + [f"p{i}" for i in range(n)])
    lines.append(f"    return b''.join(({parts},))")
    ns: dict[str, Any] = dict(NAMESPACE)
    ns.update({f"e{i}": e for i, e in enumerate(encoders)}, head=_I16(n))
    exec("\n".join(lines) + "\n", ns)
    fn: Callable[[Sequence[Any]], bytes] = ns["encode_row"]
    return fn


def _record_error(rec: Any, n: int, encoders: list[Callable[[Any], bytes]],
                  e: BaseException) -> Exception:
    """The error for record #``n`` that could not be encoded."""
    try:
        values = list(rec)
    except TypeError:
        return exc.DataError(f"record #{n} of the COPY is not a sequence: {rec!r:.40}")
    if len(values) != len(encoders):
        return exc.InterfaceError(
            f"the number of columns in the record #{n} ({len(values)}) does not match "
            f"the number of columns of the COPY ({len(encoders)})")
    for col, (enc, value) in enumerate(zip(encoders, values)):
        if value is None:
            continue
        try:
            enc(value)
        except Exception as err:
            return exc.DataError(
                f"invalid input for query argument ${col + 1} in element #{n} of the "
                f"COPY records: {value!r:.40} ({err})")
    return exc.DataError(f"invalid record #{n} of the COPY: {e}")
