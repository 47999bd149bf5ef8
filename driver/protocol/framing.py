"""Incremental framing of PostgreSQL v3 protocol messages (sans-I/O).

Two readers share one implementation:

* :class:`MessageReader` reads *typed* messages -- one type byte followed by
  an int32 length that counts itself but not the type byte.  Every backend
  message, and every frontend message after the startup phase, looks like
  this.
* :class:`FrontendReader` additionally understands the *untyped* messages a
  client sends first (StartupMessage, SSLRequest, GSSENCRequest,
  CancelRequest): an int32 length followed by an int32 code.  Untyped
  messages are reported with type ``0`` and their body starts at the code.

Feed bytes as they arrive, split any way, and take complete messages out.
No method ever allocates more than the configured maximum message size: a
length prefix that is negative, too short for its header, or larger than
``max_size`` raises :class:`ProtocolError` (or its subclass
:class:`MessageTooLarge`) -- the *only* exception a reader raises.

Two ways to take messages out:

* :meth:`MessageReader.read` returns ``[(type, body), ...]`` -- what a
  client that decodes everything wants.
* :meth:`MessageReader.read_raw` returns ``(chunk, [(type, start, end), ...])``
  where ``chunk`` is one contiguous ``bytes`` holding whole messages and each
  triple locates a message *body* inside it.  A proxy that forwards most
  messages unchanged (the gateway) inspects only the types it cares about and
  forwards ``chunk`` (or slices of it) without re-encoding anything.
* :meth:`MessageReader.feed_read_runs` is ``feed_read_raw`` for the
  server-to-client direction of a proxy: a run of consecutive DataRows is
  *one* index entry ``(DATA_ROW, first_body_start, last_body_end)``, and so
  is a run of CopyData (``COPY ... TO STDOUT``: one message per row).  Rows
  of equal length (most result sets come in long runs of them) are framed
  by strided slices checked in C (:func:`skip_data_rows`), not one Python
  step per row; :func:`split_data_rows` recovers the rows when needed.

The usual extended-protocol exchange ends (client: Describe of the unnamed
portal, Execute, Sync; server: ReadyForQuery) and begins (server:
ParseComplete, BindComplete) with fixed bytes; ``feed_read_raw`` and
``feed_read_runs`` take those as fixed index entries, without their loop, once
the loop has reached them exactly (so they are those messages, not bytes
inside another one).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "ProtocolError",
    "MessageTooLarge",
    "MessageReader",
    "FrontendReader",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_STARTUP_SIZE",
    "UNTYPED",
    "DATA_ROW",
    "skip_data_rows",
    "split_data_rows",
]

#: PostgreSQL itself refuses anything over 1 GiB; a reader rejects larger lengths.
DEFAULT_MAX_MESSAGE_SIZE: Final = 0x3FFFFFFF
#: Postgres caps the startup packet at 10,000 bytes (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_SIZE: Final = 10000
#: Type code reported for untyped (startup-phase) frontend messages.
UNTYPED: Final = 0


#: consumed bytes at the front of the buffer that are dropped at once (not at the next feed)
_COMPACT_AT: Final = 1 << 16

_unpack_header = struct.Struct("!Bi").unpack_from  # type byte, length
_unpack_len = struct.Struct("!i").unpack_from

#: backend DataRow ('D')
DATA_ROW: Final = 68
#: CopyData ('d')
COPY_DATA: Final = 100
#: rows of equal length before the strided check (:func:`skip_data_rows`) takes over
_STRIDE_AFTER: Final = 3
_STRIDE_FIRST: Final = 32
_COLUMNS: Final = (4, 3, 0, 2, 1)
#: message types framed as runs by MessageReader.feed_read_runs
_RUNS: Final = frozenset((DATA_ROW, COPY_DATA))

# The usual extended-protocol exchange ends and begins with fixed bytes; the
# readers frame them without their loop once the loop has reached them exactly
# (so they are those messages, not bytes inside another one):
#: Execute of the unnamed portal (all rows) + Sync: how most client chunks end
_EXEC_SYNC: Final = b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00S\x00\x00\x00\x04"
#: ... after Describe of the unnamed portal (libpq's PQexecParams / PQexecPrepared)
_DESCRIBE_EXEC_SYNC: Final = b"D\x00\x00\x00\x06P\x00" + _EXEC_SYNC
#: ReadyForQuery without its status byte: how a server's reply ends
_READY: Final = b"Z\x00\x00\x00\x05"
#: ParseComplete + BindComplete, BindComplete: how a reply to the chunks above begins
_PARSE_BIND_DONE: Final = b"1\x00\x00\x00\x042\x00\x00\x00\x04"
_BIND_DONE: Final = b"2\x00\x00\x00\x04"


def skip_data_rows(buf: bytes | bytearray, pos: int, end: int, max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
                   mtype: int = DATA_ROW) -> int:
    """End of the run of *complete* DataRow (or ``mtype``) messages starting at ``pos``
    (``pos`` itself when there is none).  Stops before an incomplete row,
    another message type, or a row with an invalid length (left for the
    caller's framing to report).

    Equal-length neighbours are the common case (fixed-width columns, or
    text whose length changes rarely).  After a few of them the next ``k``
    rows are checked at once: the 5 header bytes of each are picked out with
    a strided slice (``buf[pos + j : stop : size]``, a C loop) and compared
    with the expected header -- exactly the offsets the row-by-row walk
    would visit, so this *is* that walk, done in C.  The probe grows x8
    while the whole probe matches.
    """
    unpack = _unpack_len
    prev = 0
    same = 0
    while end - pos >= 5 and buf[pos] == mtype:
        length = unpack(buf, pos + 1)[0]
        if length < 4 or length > max_size:
            return pos
        size = length + 1
        if size == prev:
            same += 1
            if same >= _STRIDE_AFTER and end - pos >= 2 * size:
                pos = _stride(buf, pos, end, size)
                same = 0
                prev = 0
                continue
        else:
            prev = size
            same = 0
        stop = pos + size
        if stop > end:
            return pos
        pos = stop
    return pos


def _stride(buf: bytes | bytearray, pos: int, end: int, size: int) -> int:
    """Skip the rows of exactly ``size`` bytes (header included) from ``pos``."""
    head = bytes(buf[pos : pos + 5])
    probe = _STRIDE_FIRST
    while True:
        avail = (end - pos) // size
        k = avail if avail < probe else probe
        if k == 0:
            return pos
        match = k
        for j in _COLUMNS:  # the length's low byte first: where a different row differs
            col = buf[pos + j : pos + match * size : size]  # later columns: only the rows still matching
            n = match - len(col.lstrip(head[j : j + 1]))
            if n < match:
                if not n:
                    return pos
                match = n
        pos += match * size
        if match < k or k == avail:
            return pos
        probe *= 8


def split_data_rows(chunk: bytes | bytearray, start: int, end: int) -> list[bytes]:
    """The bodies of the DataRows of a run entry ``(DATA_ROW, start, end)``."""
    out = []
    pos = start - 5
    unpack = _unpack_len
    while pos < end:
        stop = pos + 1 + unpack(chunk, pos + 1)[0]
        out.append(bytes(chunk[pos + 5 : stop]))
        pos = stop
    return out


class AuthenticationError(Exception):
    """Authentication failed: bad password/proof, bad server signature, or a
    malformed SCRAM message.

    ``sqlstate`` is what a PostgreSQL server reports for the same fault:
    ``28P01`` (invalid_password) for a wrong password or proof, ``08P01``
    (protocol_violation) for a malformed message, ``28000``
    (invalid_authorization_specification) for unsupported options.
    """

    def __init__(self, message: str, sqlstate: str = "08P01") -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ProtocolError(Exception):
    """The byte stream violates the framing of the PostgreSQL v3 protocol.

    ``sqlstate`` is ``08P01`` (protocol_violation), the code Postgres sends
    for the same fault.  After a ProtocolError the stream cannot be
    resynchronised: the connection must be closed.
    """

    sqlstate = "08P01"


class MessageTooLarge(ProtocolError):
    """A length prefix exceeds the reader's ``max_size``."""

    sqlstate = "08P01"

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"message length {length} exceeds the limit of {limit} bytes")
        self.length = length
        self.limit = limit


class MessageReader:
    """Incremental reader of typed messages (``type:u8, len:i32, body``).

    ``max_size`` bounds the length field (which includes its own 4 bytes);
    the buffered bytes never exceed ``max_size + 5`` plus the size of the
    last chunk fed.
    """

    __slots__ = ("_buf", "_pos", "max_size")

    def __init__(self, max_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        if max_size < 4:
            raise ValueError("max_size must be at least 4")
        self._buf = bytearray()
        self._pos = 0
        self.max_size = max_size

    # -- input -------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes.  Never raises."""
        if self._pos:
            # Drop what has been consumed before growing the buffer.
            del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        """Number of bytes received but not yet returned as messages."""
        return len(self._buf) - self._pos

    def peek_type(self) -> int | None:
        """Type byte of the next (possibly incomplete) message, or None when
        nothing is buffered.  Lets a caller reject an unexpected message at
        its first byte, before its body arrives."""
        if self._pos < len(self._buf):
            return self._buf[self._pos]
        return None

    def check_buffered(self) -> None:
        """Raise now the error that a bad header left buffered raises at the
        next read.  The reads hand out the good messages before a bad header
        and fail on the following call; a caller that has nothing more to read
        (all its input came in one piece) would otherwise wait for input that
        never comes.  Nothing is consumed; a partial message is no error."""
        pos = self._pos
        if len(self._buf) - pos >= 5:
            mtype, length = _unpack_header(self._buf, pos)
            self._check_length(mtype, length)

    def _check_length(self, mtype: int, length: int) -> None:
        if length < 4:
            raise ProtocolError(f"invalid message length {length} for message type {mtype!r}")
        if length > self.max_size:
            raise MessageTooLarge(length, self.max_size)

    # -- output ------------------------------------------------------------
    def read(self) -> list[tuple[int, bytes]]:
        """Return every complete message as ``(type, body)``; keep the rest."""
        buf = self._buf
        pos = self._pos
        end = len(buf)
        out: list[tuple[int, bytes]] = []
        append = out.append
        max_size = self.max_size
        unpack = _unpack_header
        while end - pos >= 5:
            mtype, length = unpack(buf, pos)
            if length < 4 or length > max_size:
                if out:
                    break  # hand out the good messages first; fail on the next call
                self._pos = pos
                self._check_length(mtype, length)
            stop = pos + 1 + length
            if stop > end:
                break
            append((mtype, bytes(buf[pos + 5 : stop])))
            pos = stop
        self._consume(pos)
        return out

    def read_copy_data(self) -> bytes:
        """The bodies of the complete CopyData messages at the front of the
        buffer, concatenated (``b""`` when the next message is not a complete
        CopyData); they are consumed.  Stops at any other message, an
        incomplete one or a bad length, which :meth:`read` then handles.

        COPY TO STDOUT sends one CopyData per row.  Each is framed with one
        slice (no tuple per message); a run of at least 16 messages of the
        same size (fixed-width rows) is found with :func:`_stride`'s strided
        header check and its 5-byte headers are cut out with five strided
        ``del`` (C loops), so such rows cost no Python step each.  After a
        run attempt that finds too few, the next one waits for twice as many
        equal neighbours (variable-width rows do not pay for the probes)."""
        buf = self._buf
        pos = start = self._pos
        end = len(buf)
        max_size = self.max_size
        unpack = _unpack_header
        view = memoryview(buf)
        parts: list[bytes | bytearray | memoryview] = []
        append = parts.append
        prev = same = 0
        need = 2
        while end - pos >= 5:
            mtype, length = unpack(buf, pos)
            size = length + 1
            stop = pos + size
            if mtype != 100 or stop > end or length < 4 or length > max_size:
                break
            if size == prev:
                same += 1
                if same >= need and end - pos >= 16 * size:
                    run_end = _stride(buf, pos, end, size)
                    if run_end - pos >= 16 * size:
                        seg = buf[pos:run_end]
                        for j in range(5):
                            del seg[::size - j]
                        append(seg)
                        pos = run_end
                        prev = same = 0
                        need = 2
                        continue
                    if need < 256:
                        need *= 2
                    same = 0
            else:
                prev = size
                same = 0
            append(view[pos + 5:stop])
            pos = stop
        data = b"".join(parts) if pos != start else b""
        parts.clear()
        view.release()
        self._consume(pos)
        return data

    def read_raw(self) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Return ``(chunk, [(type, body_start, body_end), ...])``.

        ``chunk`` holds every complete message received so far, verbatim;
        the offsets index into it.  Incomplete trailing bytes stay buffered.
        """
        buf = self._buf
        start = pos = self._pos
        end = len(buf)
        index: list[tuple[int, int, int]] = []
        append = index.append
        max_size = self.max_size
        unpack = _unpack_header
        while end - pos >= 5:
            mtype, length = unpack(buf, pos)
            if length < 4 or length > max_size:
                if index:
                    break  # hand out the good messages first; fail on the next call
                self._pos = pos
                self._check_length(mtype, length)
            stop = pos + 1 + length
            if stop > end:
                break
            append((mtype, pos + 5 - start, stop - start))
            pos = stop
        if pos == start:
            return b"", index
        chunk = bytes(buf[start:pos])
        self._consume(pos)
        return chunk, index

    def feed_read_raw(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        """``feed(data)`` then ``read_raw()``, without copying in the common case.

        When nothing is buffered, ``data`` is framed where it lies: if it
        holds whole messages only, the returned chunk *is* ``data``; a partial
        trailing message is kept buffered (and the chunk is the prefix before
        it).  Otherwise this is exactly ``feed(data); read_raw()``.  Results,
        errors and the state left behind are the same as with that pair.
        """
        if self._buf or type(data) is not bytes:  # (nothing buffered <=> _buf empty: _consume clears it)
            self.feed(data)
            return self.read_raw()
        end = len(data)
        max_size = self.max_size
        unpack = _unpack_header
        if end >= 5:
            mtype, length = unpack(data, 0)
            if length + 1 == end and 4 <= length <= max_size:  # exactly one message: the common case
                return data, [(mtype, 5, end)]
        pos = 0
        index: list[tuple[int, int, int]] = []
        append = index.append
        limit = end  # where the loop stops: before a usual tail, once it is checked
        if end > 20 and data[-5] == 83 and data.endswith(_EXEC_SYNC) and max_size >= 9:
            limit = end - 22 if data.endswith(_DESCRIBE_EXEC_SYNC) else end - 15
        while True:
            while limit - pos >= 5:
                mtype, length = unpack(data, pos)
                if length < 4 or length > max_size:
                    break  # buffered below; read_raw reports it (now or on the next call)
                stop = pos + 1 + length
                if stop > end:
                    break
                append((mtype, pos + 5, stop))
                pos = stop
            if limit == end:
                break
            if pos == limit:  # the tail starts exactly here: its messages, as the loop frames them
                if end - limit == 22:
                    append((68, limit + 5, limit + 7))
                    limit += 7
                append((69, limit + 5, limit + 10))
                append((83, end, end))
                pos = end
                break
            limit = end  # those bytes are inside another message: the loop frames on
        if pos == end:
            return data, index
        # keep the unframed tail (incomplete, or a bad header) buffered (the buffer is empty)
        self._buf += data[pos:] if pos else data
        if not index:
            return self.read_raw()  # raises on a bad header; b"" when incomplete
        return data[:pos], index

    def feed_read_runs(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        """:meth:`feed_read_raw`, except that a run of consecutive DataRows is
        one index entry ``(DATA_ROW, body_start_of_first, body_end_of_last)``
        (see :func:`skip_data_rows`), and so is a run of CopyData
        (``COPY_DATA``).  The chunk holds the same bytes."""
        end = len(data)
        max_size = self.max_size
        if not self._buf and type(data) is bytes and end <= max_size:
            # The common case, framed where it lies (offsets from 0); at anything
            # unusual (a partial or bad message) the general loop below takes over.
            # (No message within ``data`` can be longer than max_size.)
            index: list[tuple[int, int, int]]
            index = []
            pos = 0
            if end > 10 and data[0] <= 50:  # ('1', '2': the byte test first, the call only then)
                if data.startswith(_PARSE_BIND_DONE):
                    index = [(49, 5, 5), (50, 10, 10)]
                    pos = 10
                elif data.startswith(_BIND_DONE):
                    index = [(50, 5, 5)]
                    pos = 5
            append = index.append
            unpack = _unpack_header
            # a ReadyForQuery at the end: the loop stops before it (if it gets there exactly)
            limit = end - 6 if end > 6 and data[-6] == 90 and data.startswith(_READY, end - 6) else end
            while limit - pos >= 5:
                mtype, length = unpack(data, pos)
                stop = pos + 1 + length
                if stop > end or length < 4:
                    break
                if mtype in _RUNS:  # DataRow, CopyData: one entry per run
                    if end - stop >= 5 and data[stop] == mtype:
                        stop = skip_data_rows(data, stop, end, max_size, mtype)
                append((mtype, pos + 5, stop))
                pos = stop
            else:
                if pos == limit:
                    if limit != end:
                        append((90, end - 1, end))
                    return data, index
            # anything else -- a partial or bad message, or ReadyForQuery-like bytes
            # inside another message -- the general loop below, from here
            buf: bytes | bytearray = data
            start = 0
        elif self._pos == len(self._buf) and type(data) is bytes:
            if self._buf:
                self._buf.clear()
                self._pos = 0
            buf = data
            start = pos = 0
            index = []
            append = index.append
        else:
            self.feed(data)
            buf = self._buf
            start = pos = self._pos
            index = []
            append = index.append
        end = len(buf)
        max_size = self.max_size
        unpack = _unpack_header
        skip = skip_data_rows
        bad = False
        while end - pos >= 5:
            mtype, length = unpack(buf, pos)
            if length < 4 or length > max_size:
                bad = True
                break
            stop = pos + 1 + length
            if stop > end:
                break
            if (mtype == 68 or mtype == 100) and end - stop >= 5 and buf[stop] == mtype:
                stop = skip(buf, stop, end, max_size, mtype)  # DataRow, CopyData: one entry per run
            append((mtype, pos + 5 - start, stop - start))
            pos = stop
        if buf is data:
            if pos == end:
                return data, index
            self._buf += data[pos:] if pos else data  # the unframed tail stays buffered
            if not index:
                if bad:
                    self._check_length(*unpack(self._buf, 0))
                return b"", index
            return data[:pos], index
        if pos == start:
            if bad:
                self._pos = pos
                self._check_length(*unpack(buf, pos))
            return b"", index
        chunk = bytes(buf[start:pos])
        self._consume(pos)
        return chunk, index

    def _consume(self, pos: int) -> None:
        if pos >= len(self._buf):
            self._buf.clear()  # releases the memory of a large message
            self._pos = 0
        elif pos >= _COMPACT_AT:
            # after a large message, keep only the partial tail (the buffer shrinks)
            del self._buf[:pos]
            self._pos = 0
        else:
            self._pos = pos

    def take_buffer(self) -> bytes:
        """Remove and return every buffered byte, complete or not.

        Used when a stream switches to another protocol (e.g. after
        CopyBoth or a TLS upgrade) or is handed to another reader.
        """
        data = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return data


class FrontendReader(MessageReader):
    """Reader of the client-to-server stream, startup phase included.

    While :attr:`in_startup` is true the next message is untyped (int32
    length, int32 code, payload) and is reported as ``(UNTYPED, body)`` where
    ``body`` starts with the 4-byte code.  SSLRequest and GSSENCRequest keep
    the reader in the startup phase (a StartupMessage follows); a
    StartupMessage or CancelRequest ends it.  ``max_startup_size`` bounds
    untyped messages as Postgres does.
    """

    __slots__ = ("in_startup", "max_startup_size")

    SSL_REQUEST_CODE: Final = 80877103
    GSSENC_REQUEST_CODE: Final = 80877104
    CANCEL_REQUEST_CODE: Final = 80877102

    def __init__(
        self,
        max_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        *,
        startup: bool = True,
        max_startup_size: int = MAX_STARTUP_SIZE,
    ) -> None:
        super().__init__(max_size)
        self.in_startup = startup
        self.max_startup_size = max_startup_size

    def _read_untyped(self) -> tuple[int, int, int] | None:
        """Locate one untyped message: ``(start, body_start, stop)``."""
        buf = self._buf
        pos = self._pos
        if len(buf) - pos < 8:
            return None
        length = int.from_bytes(buf[pos : pos + 4], "big", signed=True)
        if length < 8:
            raise ProtocolError(f"invalid startup packet length {length}")
        if length > self.max_startup_size:
            raise MessageTooLarge(length, self.max_startup_size)
        stop = pos + length
        if stop > len(buf):
            return None
        code = int.from_bytes(buf[pos + 4 : pos + 8], "big")
        if code not in (self.SSL_REQUEST_CODE, self.GSSENC_REQUEST_CODE):
            self.in_startup = False
        return pos, pos + 4, stop

    def peek_type(self) -> int | None:
        return None if self.in_startup else super().peek_type()

    def read(self) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        try:
            while self.in_startup:
                loc = self._read_untyped()
                if loc is None:
                    return out
                _, body, stop = loc
                out.append((UNTYPED, bytes(self._buf[body:stop])))
                self._consume(stop)
            out.extend(super().read())
        except ProtocolError:
            if not out:
                raise
            # hand out the good messages first; the bad header (still buffered) fails the next call
        return out

    def feed_read_raw(self, data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
        if self.in_startup:
            self.feed(data)
            return self.read_raw()
        return super().feed_read_raw(data)

    def read_raw(self) -> tuple[bytes, list[tuple[int, int, int]]]:
        if not self.in_startup:
            return super().read_raw()
        # Startup phase: one untyped message per call keeps offsets simple.
        loc = self._read_untyped()
        if loc is None:
            return b"", []
        start, body, stop = loc
        chunk = bytes(self._buf[start:stop])
        self._consume(stop)
        return chunk, [(UNTYPED, body - start, stop - start)]
