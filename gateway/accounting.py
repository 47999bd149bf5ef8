"""Transaction-boundary accounting: what a linked server still owes its client.

Sans-I/O (bytes and message indexes in, counters and decisions out), one
instance per client session; everything that decides *when a transaction
ends* lives here, the way h11 keeps its state machine in ``_state.py``:

- **outstanding**: ReadyForQuery replies still due.  Query, Sync and
  FunctionCall each owe one; every ReadyForQuery from the server pays one.
- **dirty**: extended-protocol messages (Parse, Bind, Describe, Execute,
  Close) since the last Query/Sync/FunctionCall.  While non-zero the server
  cannot be released even at ReadyForQuery ``I`` (a Sync is still to come).
- **skip-till-Sync**: a Query/FunctionCall sent after extended messages in
  the same Sync segment is "at risk": Postgres discards it (no
  ReadyForQuery) when one of those extended messages fails.  Rare (libpq,
  asyncpg, JDBC never do it).  Without the prepared-statement rewriter the
  server's replies are scanned while such a Query is pending and its
  ErrorResponses matched to extended completions (:meth:`_risk_scan`); with
  the rewriter (``gateway.prepared.Rewriter``) its reply queue knows
  (``skipped_rfq``) and this class only subtracts.  Either way, once the
  server skips to a Sync the client has not sent yet (the at-risk Query was
  discarded, or the rewriter refused a message in its place), ``dirty`` is
  set again: a ReadyForQuery of an earlier Query must not release a server
  that would discard the next client's messages up to *its* Sync.
- **swallow**: replies to the gateway's own queries sent ahead of the
  client's bytes (a SET batch at link, a state probe at the end of a
  transaction): that many ReadyForQuery-terminated replies are cut from the
  front of the server stream (:meth:`swallowed`); each one's end is reported
  (``events.swallow_done``), its rows and errors too.

Server chunks are framed by ``MessageReader.feed_read_runs``: a run of
DataRows is one index entry (nothing here looks inside rows).

Use: ``client(chunk, idx)`` for every framed client chunk (before it is
forwarded), ``from_server(chunk, idx)`` for every framed server chunk (it
cuts swallowed replies and scans for skips), then -- after the rewriter, if
any -- ``replies(chunk, idx)``, which returns the status byte of the last
ReadyForQuery (or -1).  When it returns ``I`` and :meth:`settled` is true,
the transaction is over: in transaction mode the server can be released.
"""

from __future__ import annotations

from typing import Any, Protocol

from driver.protocol.framing import ProtocolError, split_data_rows

from .auth_query import note_role_end, note_role_tag
from .observe import error_class
from .schema import DDL_FIRST, is_ddl_tag

_Q, _S, _F, _X, _P = 81, 83, 70, 88, 80  # frontend types: Query, Sync, FunctionCall, Terminate, Parse
_H = 72  # Flush
#: frontend CopyData/CopyDone/CopyFail and Flush: no reply of their own
_COPY = frozenset({100, 99, 102, 72})
#: the other frontend types Postgres reads after login (Bind, Close, Describe, Execute);
#: any type outside these, _COPY and QSFXP ends its session with a FATAL 08P01
_EXTENDED = frozenset(b"BCDE")
#: backend completion replies of one extended-protocol message (Parse '1', Bind '2',
#: Close '3', Describe 'T'/'n', Execute 'C'/'I'/'s'); ErrorResponse is the other end.
_XDONE = frozenset(b"123nTCIs")
_ERR = 69  # 'E'
_Z = 90  # 'Z'
_PS = 83  # backend 'S' ParameterStatus
_C = 67  # backend CommandComplete
_DROW = 68  # backend DataRow
_IDLE = 73  # 'I'
_LISTEN_TAG = b"LISTEN\x00"
_NOTED = frozenset({_Z, _PS, _C, _ERR})  # what replies() looks at (RowDescription, DataRow...: nothing)
#: first bytes of the CommandComplete tags replies() looks at (LISTEN, DDL_FIRST)
_TAGGED = DDL_FIRST | {ord("L")}

Index = list[tuple[int, int, int]]


class Events(Protocol):
    """What the accounting reports back (rare paths only)."""

    def parameter_status(self, body: bytes) -> None: ...
    def swallowed_row(self, body: bytes) -> None: ...
    def swallowed_error(self, body: bytes) -> None: ...
    def swallow_done(self) -> None: ...


class _NoEvents:
    def parameter_status(self, body: bytes) -> None:
        pass

    def swallowed_row(self, body: bytes) -> None:
        pass

    def swallowed_error(self, body: bytes) -> None:
        pass

    def swallow_done(self) -> None:
        pass


class Accounting:
    """Outstanding replies of one client's link (see the module docstring)."""

    __slots__ = ("outstanding", "dirty", "swallow", "texts", "text", "named", "listened", "ddl", "fatal", "errors",
                 "status", "rewriter", "events", "roles",
                 "watch", "_risk", "_risky", "_xdone", "_xerr")

    def __init__(self, rewriter: Any = None, events: Events | None = None) -> None:
        self.outstanding = 0
        #: extended-protocol messages (each owes one reply) since the last Query/Sync/FunctionCall
        self.dirty = 0
        #: gateway-internal replies (ReadyForQuery-terminated) to cut from the server stream
        self.swallow = 0
        #: Query and Parse messages in the last client chunk (SQL text to look at) and,
        #: when there is one, its body (start, end); end < 0 (negated) for a Parse
        self.texts = 0
        self.text = (0, 0)
        #: a Parse with a statement name went by (only counted without the rewriter)
        self.named = False
        #: a LISTEN completed
        self.listened = False
        #: a DDL completed (gateway.schema.is_ddl_tag): the session bumps the schema epoch
        self.ddl = False
        #: a role change completed; its transaction has not ended yet
        self.roles = False
        #: the server sent a FATAL/PANIC ErrorResponse (it is about to close)
        self.fatal = False
        #: ErrorResponses by SQLSTATE class (the session points it at its pool's counter)
        self.errors: dict[str, int] = {}
        #: last ReadyForQuery status seen by :meth:`swallowed` (-1: none)
        self.status = -1
        self.rewriter = rewriter
        self.events: Events = events if events is not None else _NoEvents()
        self._risk: list[list[int]] = []  # [kind 0=Query 1=Sync, Zs before its part, extended replies owed]
        self._risky = False  # the current client segment holds an at-risk Query
        self.watch = False  # scan server replies (while dirty or at risk)
        self._xdone = 0      # extended completions since the last ReadyForQuery (while watching)
        self._xerr = False   # an ErrorResponse since the last ReadyForQuery: the server skips to Sync

    # ------------------------------------------------------------- client
    def client(self, chunk: bytes, idx: Index) -> tuple[bytes, Index, bool]:
        """Account one framed client chunk.  Returns the chunk and index to
        forward (cut before a Terminate) and whether the client terminated."""
        if len(idx) == 1 and not self.dirty and not self._risky:
            t, s, e = idx[0]
            if t == _Q:  # one simple Query outside a Sync segment (the common case): the loop below, unrolled
                self.outstanding += 1
                self.texts = 1
                self.text = s, e
                return chunk, idx, False
        if not self._risky and idx[-1][0] == _S:
            # Sync segments only (Parse/Bind/Describe/Execute/Close..., Sync: the
            # extended protocol's usual chunk): the loop below, reduced to counting
            syncs = texts = 0
            for t, s, e in idx:
                if t in _EXTENDED:  # Bind, Close, Describe, Execute
                    continue
                if t == _P:
                    texts += 1
                    text = s, -e
                    if s < e and chunk[s] and self.rewriter is None:
                        self.named = True
                elif t == _S:
                    syncs += 1
                else:
                    break
            else:
                self.outstanding += syncs
                self.dirty = 0
                self.texts = texts
                if texts == 1:
                    self.text = text
                return chunk, idx, False
        out = self.outstanding
        dirty = d0 = self.dirty
        risky: int = self._risky
        terminate = False
        texts = 0
        for t, s, _e in idx:
            if t == _Q or t == _F:
                if t == _Q:
                    texts += 1
                    text = s, _e
                if dirty or risky:
                    risky = self._at_risk(out, dirty)
                    if risky < 0:  # the server already skips to Sync: no ReadyForQuery
                        dirty = dirty or 1  # and still waits for that Sync: not settled, not clean
                        continue
                out += 1
                dirty = 0
            elif t == _S:
                if risky:
                    risky = self._risk_sync(out)
                out += 1
                dirty = 0
            elif t == _X:
                chunk = chunk[: s - 5]
                idx = idx[: idx.index((t, s, _e))]
                terminate = True
                break
            elif t == _P:
                texts += 1
                text = s, -_e  # negative end: a Parse
                dirty += 1
                if s < _e and chunk[s] and self.rewriter is None:
                    self.named = True
            elif t not in _COPY:
                if t not in _EXTENDED:
                    # Postgres would end the session with this FATAL, taking the pooled
                    # server with it: the gateway answers it and keeps the server
                    raise ProtocolError(f"invalid frontend message type {t}")
                dirty += 1
            elif t == _H and _e != s:
                # Postgres fails it as an extended-protocol message and then skips
                # every message until a Sync, with no reply to count: a server
                # released after it would ignore the next client's Query.
                raise ProtocolError("invalid message format: Flush has a body")
        self.texts = texts
        if texts == 1:
            self.text = text
        if not chunk:
            return chunk, idx, terminate
        self.outstanding = out
        if dirty and not d0 and self.rewriter is None and not self.watch:
            self.watch = True  # replies to these messages may precede an at-risk Query
            self._xdone = 0
            self._xerr = False
        self.dirty = dirty
        return chunk, idx, terminate

    def _at_risk(self, before: int, k: int) -> int:
        """Slow path: a Query/FunctionCall follows extended messages in its Sync
        segment (``before`` ReadyForQuery still due ahead of it, ``k`` extended
        messages since the previous Query/Sync/FunctionCall).  Returns -1 when
        the server already skips it (it gets no ReadyForQuery)."""
        if self.rewriter is not None:
            return 0  # the rewriter tracks skips itself (Rewriter.skipped_rfq)
        if not self.watch:
            # nothing pending, server replies were not scanned: start counting now
            self._xdone = 0
            self._xerr = False
        elif before == 0 and self._xerr:
            self._risky = True
            return -1
        # with nothing due ahead, the replies since the last ReadyForQuery (_xdone)
        # are exactly those to these k messages
        self._risk.append([0, before, k])
        self.watch = True
        self._risky = True
        return 1

    def _risk_sync(self, before: int) -> bool:
        if self.rewriter is None:
            self._risk.append([1, before, 0])
        self._risky = False
        return False

    # ------------------------------------------------------------- server
    def from_server(self, chunk: bytes, idx: Index) -> tuple[bytes, Index]:
        """First look at a framed server chunk: cut the replies to the
        gateway's own queries, scan for skipped Queries.  Returns what is
        left for the client."""
        if self.swallow:
            chunk, idx = self.swallowed(chunk, idx)
            if not chunk:
                return chunk, idx
        if self.watch:
            self._risk_scan(idx)
        return chunk, idx

    def swallowed(self, chunk: bytes, idx: Index) -> tuple[bytes, Index]:
        """Drop the replies to the gateway's own queries from the front of the stream."""
        n = 0
        cut = 0
        ev = self.events
        for t, s, e in idx:
            n += 1
            if t == _DROW:  # a run of DataRows (MessageReader.feed_read_runs)
                for row in split_data_rows(chunk, s, e):
                    ev.swallowed_row(row)
            elif t == _PS:
                ev.parameter_status(chunk[s:e])
            elif t == _ERR:
                ev.swallowed_error(chunk[s:e])
            elif t == _Z:
                self.status = chunk[s]
                self.swallow -= 1
                ev.swallow_done()
                if self.swallow == 0:
                    cut = e
                    break
        if self.swallow:
            return b"", []
        return chunk[cut:], [(t, s - cut, e - cut) for t, s, e in idx[n:]]

    def _risk_scan(self, idx: Index) -> None:
        """Slow path (server replies while watching): match ErrorResponses to
        at-risk Queries; those Postgres will skip are no longer outstanding."""
        risk = self._risk
        for t, _s, _e in idx:
            if t == _Z:
                self._xdone = 0
                self._xerr = False
                for entry in risk:
                    entry[1] -= 1
                while risk and risk[0][1] < 0:
                    del risk[0]
            elif t == _ERR:
                self._xerr = True
                if risk and risk[0][0] == 0 and risk[0][1] == 0 and self._xdone < risk[0][2]:
                    # an extended message before this Query failed: skip to Sync
                    n = 0
                    while risk and risk[0][0] == 0:
                        del risk[0]
                        n += 1
                    for entry in risk:
                        entry[1] -= n
                    if risk:  # the Sync ending the segment: its ReadyForQuery comes next
                        del risk[0]
                    else:  # that Sync is not sent yet: the server waits for it (not settled)
                        self.dirty = self.dirty or 1
                    self.outstanding -= n
            elif t in _XDONE:
                self._xdone += 1
        if not risk and not self.dirty and not self._risky:
            self.watch = False

    def replies(self, chunk: bytes, idx: Index) -> int:
        """Account the server messages going to the client (after the
        rewriter).  Returns the status byte of the last ReadyForQuery, or -1.
        ParameterStatus messages are reported to ``events``."""
        z = -1
        out = self.outstanding
        for t, s, e in idx:
            if t not in _NOTED:
                continue
            if t == _Z:
                out -= 1
                z = chunk[s]
            elif t == _PS:
                self.events.parameter_status(chunk[s:e])
            elif t == _C:
                if chunk[s] in _TAGGED:
                    self._tag(chunk, s, e)
            elif t == _ERR:
                body = chunk[s:e]
                cls = error_class(body)
                errors = self.errors
                errors[cls] = errors.get(cls, 0) + 1
                if b"\x00VFATAL\x00" in body or b"\x00VPANIC\x00" in body:
                    self.fatal = True
        if z < 0:
            return z
        if self.roles and z == _IDLE:  # ... and again once its transaction is over (lookups made during it)
            self.roles = False
            note_role_end()
        rw = self.rewriter
        if rw is not None:
            if out > 0 and rw.skipped_rfq:
                # Queries Postgres discarded (skip-till-Sync after an extended-protocol
                # error before them): the rewriter saw it; they get no ReadyForQuery
                out -= rw.skipped_rfq
                rw.skipped_rfq = 0
            if rw.skips_to_sync:
                # ... and the server now waits for a Sync the client has not sent
                # (or a refused message made it fail): not settled until it comes
                self.dirty = self.dirty or 1
        self.outstanding = out if out > 0 else 0
        return z

    def _tag(self, chunk: bytes, s: int, e: int) -> None:
        """A CommandComplete whose tag starts with one of :data:`_TAGGED`."""
        if chunk[s:e] == _LISTEN_TAG:
            self.listened = True
        elif chunk[s] in DDL_FIRST:
            if is_ddl_tag(chunk, s, e):
                self.ddl = True
            elif note_role_tag(chunk, s, e):  # CREATE/ALTER/DROP ROLE: cached auth_query lookups are stale
                self.roles = True

    def settled(self) -> bool:
        """Nothing owed: no ReadyForQuery due and no extended message waiting for its Sync."""
        return not self.outstanding and not self.dirty

    def busy(self) -> bool:
        """Something is still owed (what a server cannot be returned clean in)."""
        return bool(self.outstanding or self.dirty or self.swallow)

    def lost(self) -> None:
        """The server went away: nothing is owed any more."""
        self.outstanding = 0
        self._risk.clear()
        self.watch = False
