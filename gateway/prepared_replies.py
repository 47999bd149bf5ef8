"""The reply queue of the prepared-statement rewriter (sans-I/O).

Part of :mod:`gateway.prepared`: :class:`ReplyQueue` is the state one client's
:class:`~gateway.prepared.Rewriter` keeps for the server it is linked to, and
its server-to-client half (:meth:`ReplyQueue.rewrite_backend`).  The frontend
half (:mod:`gateway.prepared`) queues one entry per forwarded message the server
answers, saying how its reply ends and what to do with it (pass / swallow /
replace / synthesize), and what to undo if the server skips or fails it.

Order: every forwarded message that the server answers gets an entry in a
reply queue (how its reply ends; pass / swallow / synthesize).  Synthetic
replies are emitted exactly when every reply before them has been delivered;
those with nothing before them come back at once as ``local_replies_now``.

Errors: an ErrorResponse to an extended-protocol message makes the server skip
everything up to Sync, so the queue drops the entries up to the next Sync and
undoes their effects (client mappings created or closed, statements assumed
created or evicted on the server).  A refusal decided by the gateway (26000
for an unknown name, the caps) is made real on the server: a Describe of a
statement that cannot exist (:data:`gateway.prepared.FAIL_MESSAGE`) is sent in place of the
refused message, so the server fails at exactly that point -- aborting the
implicit or explicit transaction as Postgres would -- and its ErrorResponse
is replaced by the gateway's.  After a refusal or a duplicate Parse the
client's messages up to Sync are not forwarded (the server skips them
anyway); the Sync is.  A failed injected Parse passes its error to the client.

Fewer entries (the hot path): replies to plain Queries and to Sync segments
naming no statement are only counted (``_plain``: nothing in them is changed or
undone, their ReadyForQuery ends them, errors or not), and a segment whose
entries only pass replies is one ``_RSEG`` entry: its reply passes in one step
when it comes whole in one chunk without an error, DISCARD tag or other
ReadyForQuery; otherwise it is expanded into its entries before any of its
reply is read (and, if the server skips it after an earlier error, it stands
for its Sync alone).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Final

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader

from .prepared_registry import ClientStatements, Statement
from .prepared_server import ServerStatements

__all__ = ["ReplyQueue", "Entry"]

# backend types
_Z = ord("Z")
_ERR = ord("E")
_ASYNC = frozenset(map(ord, "NSA"))  # Notice, ParameterStatus, Notification
_EXEC_END = frozenset(map(ord, "CIs"))  # CommandComplete, EmptyQuery, PortalSuspended
_CC = ord("C")

# how an entry's reply ends
_R1 = 0      # exactly one message (ParseComplete, BindComplete, CloseComplete, T/n)
_RDESC = 1   # ParameterDescription then T/n (Describe 'S')
_REXEC = 2   # ... CommandComplete / EmptyQueryResponse / PortalSuspended (Execute)
_RZ = 3      # ... ReadyForQuery (Sync, Query, FunctionCall)
_RSYN = 4    # nothing from the server: synthesized reply bytes
#: a whole Sync segment of pass-through messages as one entry: ``data`` holds the
#: entries its messages would have had (the last one ``_E_SYNC``).  None of them
#: undoes anything or is a Query/FunctionCall, so while the segment's reply is
#: unread it is expanded back only when needed: when it reaches the head of the
#: queue before the reply comes in one error-free chunk, or when the server
#: skips it up to its Sync (it then stands for that Sync alone).
_RSEG = 5
# what to do with the reply
_PASS = 0
_SWALLOW = 1
_REPLACE = 2   # the server's ErrorResponse is replaced by the entry's data
_REPLACE_42P05 = 3  # a 42P05 ErrorResponse is replaced by the entry's data; others pass

# entry fields: (kind, action, data, (statement, gateway name) | None, undo ops, is_sync)
_KIND: Final = 0
_ACT: Final = 1
_DATA: Final = 2
_STMT: Final = 3
_UNDO: Final = 4
_SYNC: Final = 5
Entry = tuple[int, int, Any, Any, tuple[Any, ...], int]
# shared entries for plain messages (entries are never mutated)
_E_R1: Entry = (_R1, _PASS, None, None, (), 0)
_E_DESC: Entry = (_RDESC, _PASS, None, None, (), 0)
_E_EXEC: Entry = (_REXEC, _PASS, None, None, (), 0)
_E_RZ: Entry = (_RZ, _PASS, None, None, (), 0)
_E_SYNC: Entry = (_RZ, _PASS, None, None, (), 1)

_DISCARD_TAGS = (b"DISCARD ALL\x00", b"DEALLOCATE ALL\x00")

_NO_Q: Any = ()  # Rewriter._q with no entry made yet: empty, and any attempt to queue on it fails loudly


class ReplyQueue:
    """What the linked server still owes one client, and how each reply reaches it.

    The base of :class:`~gateway.prepared.Rewriter`: :meth:`link` binds it to a
    server at each link (the queue is empty then, since a server is only
    released with nothing outstanding), :meth:`abandon` when a server is given
    up mid-pipeline.
    """

    __slots__ = ("client", "limit", "enabled", "server", "_q", "_desc_half", "_status", "_skipping",
                 "_last_stmt", "_plain", "_plain_sync", "dropped_rfq", "skipped_rfq")

    #: the shortcuts (plain counts, segment entries, the one-chunk reply); a
    #: subclass with False runs the general loops only (the tests compare the two)
    FAST = True

    def __init__(self, client: ClientStatements, limit: int) -> None:
        self.client = client
        self.limit = limit
        self.enabled = limit > 0
        self.server: ServerStatements | None = None
        #: the reply queue: a deque from its first entry while linked; the shared empty tuple while
        #: not linked or before that entry (idle-session memory, no allocation per plain transaction)
        self._q: deque[Entry] = _NO_Q
        self._desc_half = False      # the head Describe('S') got its ParameterDescription
        self._status = 73            # last ReadyForQuery status seen ('I')
        self._skipping = False       # a local error: drop client messages until Sync
        self._last_stmt: tuple[Statement, bytes] | None = None
        #: plain Query or Sync replies outstanding that have no queue entry (they
        #: stand for ``_E_RZ`` entries -- ``_E_SYNC`` with ``_plain_sync`` -- at the
        #: head of the queue; only while it is empty).  A Sync is plain when every
        #: message of its segment is (unnamed statements, no Query/FunctionCall)
        self._plain = 0
        self._plain_sync = False
        #: Query/FunctionCall messages dropped while skipping in the last
        #: rewrite_frontend call (they will get no ReadyForQuery).
        self.dropped_rfq = 0
        #: Query/FunctionCall messages the server skipped after an error in an
        #: extended-protocol message before them (no ReadyForQuery will come);
        #: the session subtracts and resets it.
        self.skipped_rfq = 0

    # -------------------------------------------------------------- linking
    def link(self, server: ServerStatements) -> None:
        """(The queue itself is made by ``Rewriter.rewrite_frontend`` at its first
        entry: plain Queries only count, and most transactions need none.)"""
        if self._q or self._plain:
            self.abandon()
        self.server = server

    def unlink(self) -> None:
        if self._q or self._plain:
            self.abandon()
        self._q = _NO_Q  # empty now
        self.server = None

    @property
    def skips_to_sync(self) -> bool:
        """The server discards the client's messages up to its next Sync (an
        extended-protocol error; that Sync has not been sent yet)."""
        return self._skipping

    @property
    def outstanding(self) -> int:
        """Entries still waiting for (or holding) replies."""
        return len(self._q) + self._plain

    def abandon(self) -> None:
        """The linked server is given up mid-pipeline (client gone, error):
        whatever was in flight may or may not have happened there."""
        sv = self.server
        q = self._q
        if sv is not None:
            for entry in q:
                for op in entry[_UNDO]:
                    if op[0] in ("sparse", "sclose"):
                        name = op[1]
                        sv.lru.pop(name, None)
                        sv.maybe.add(name)
            sv.changed.clear()
            sv.acked = sv.sent
        if q:
            q.clear()
        self._plain = 0
        self._skipping = False
        self._desc_half = False
        self.skipped_rfq = 0

    def _discarded(self, sv: ServerStatements | None) -> None:
        """The server ran DISCARD ALL / DEALLOCATE ALL for this client."""
        self.client.clear()
        if sv is not None:
            sv.forget_all()

    # -------------------------------------------------------------- backend
    def rewrite_backend(self, chunk: bytes, index: list[tuple[int, int, int]]
                        ) -> tuple[bytes, list[tuple[int, int, int]]]:
        """Server chunk -> ``(chunk, index)`` for the client (same objects when
        nothing changes)."""
        q = self._q
        if not q:
            if self._plain:
                self._plain_replies(chunk, index)
            return chunk, index
        head = q[0]
        if head[_KIND] == _RSEG:
            if len(q) == 1 and index[-1][0] == _Z and self.FAST:
                # the segment's whole reply in one chunk: if nothing in it is an
                # error, another ReadyForQuery or a tag to look at, it passes as is
                for t, s, _e in index[:-1]:
                    if t == _ERR or t == _Z or (t == _CC and chunk[s] == 68):
                        break
                else:
                    q.clear()
                    self._status = chunk[index[-1][1]]
                    if (sv := self.server) is not None:
                        sv.acked += 1
                        if sv.acked >= sv.sent:
                            sv.changed.clear()
                    return chunk, index
            q.popleft()
            q.extendleft(reversed(head[_DATA]))
        sv = self.server
        out: list[bytes] | None = None   # built only when something changes
        copy_from = 0
        for t, s, e in index:
            if t == 68 or t in _ASYNC or not q:  # DataRow: never ends nor is dropped
                continue
            head = q[0]
            kind = head[_KIND]
            act = head[_ACT]
            if t == _ERR:
                if kind == _RZ:
                    continue  # Query / Sync / FunctionCall error: ReadyForQuery follows
                q.popleft()
                self._desc_half = False
                if act == _REPLACE or (act == _REPLACE_42P05
                                       and m.decode_fields(chunk[s:e]).get("C") == "42P05"):
                    if out is None:
                        out = []
                    if s - 5 > copy_from:
                        out.append(chunk[copy_from:s - 5])
                    out.append(head[_DATA])
                    copy_from = e
                    self._skip_to_sync(sv)
                else:
                    self._skip_to_sync(sv)  # undo later messages first (LIFO)...
                    self._failed(head, chunk[s:e], sv)  # ...then the failed one
                # (the error itself always reaches the client)
            else:
                if kind == _R1:
                    done = True
                elif kind == _REXEC:
                    done = t in _EXEC_END
                    if t == _CC and chunk[s] == 68 and chunk.startswith(_DISCARD_TAGS, s):
                        self._discarded(sv)
                elif kind == _RZ:
                    done = t == _Z
                    if t == _Z:
                        self._status = chunk[s]
                    elif t == _CC and chunk[s] == 68 and chunk.startswith(_DISCARD_TAGS, s):
                        self._discarded(sv)
                else:  # _RDESC
                    done = self._desc_half
                    self._desc_half = not done
                if act:  # swallowed (or, impossibly, a refused message succeeded)
                    if out is None:
                        out = []
                    if s - 5 > copy_from:
                        out.append(chunk[copy_from:s - 5])
                    if act >= _REPLACE and done:
                        out.append(head[_DATA])
                    copy_from = e
                if not done:
                    continue
                q.popleft()
                if head[_SYNC] and sv is not None:
                    sv.acked += 1
                    if sv.acked >= sv.sent:
                        sv.changed.clear()
            if q and q[0][_KIND] >= _RSYN:
                if q[0][_KIND] == _RSEG:  # its messages' replies come next: one entry each
                    q.extendleft(reversed(q.popleft()[_DATA]))
                    continue
                # synthetic replies due right after this message
                if out is None:
                    out = []
                if e > copy_from:
                    out.append(chunk[copy_from:e])
                copy_from = e
                while q and q[0][_KIND] == _RSYN:
                    out.append(q.popleft()[_DATA])
                if q and q[0][_KIND] == _RSEG:
                    q.extendleft(reversed(q.popleft()[_DATA]))
        if out is None:
            return chunk, index
        if copy_from < len(chunk):
            out.append(chunk[copy_from:])
        new = b"".join(out)
        reader = MessageReader()
        reader.feed(new)
        return reader.read_raw()

    @staticmethod
    def _acked(sv: ServerStatements | None) -> None:
        """The server answered one more Sync."""
        if sv is not None:
            sv.acked += 1
            if sv.acked >= sv.sent:
                sv.changed.clear()

    def _plain_replies(self, chunk: bytes, index: list[tuple[int, int, int]]) -> None:
        """Replies to counted plain Queries or Syncs (the queue is empty): nothing
        to change, only ReadyForQuery status, acknowledged Syncs and a
        DISCARD/DEALLOCATE ALL tag (a query the pre-check could not see, e.g.
        built by a function, or sent as a Parse)."""
        for t, s, e in index:
            if t == _Z:
                self._status = chunk[s]
                self._plain -= 1
                if self._plain_sync:
                    self._acked(self.server)
                if not self._plain:
                    return
            elif t == _CC and chunk[s] == 68 and chunk.startswith(_DISCARD_TAGS, s):
                self._discarded(self.server)

    def _failed(self, head: Entry, body: bytes, sv: ServerStatements | None) -> None:
        """The server answered ``head`` with an ErrorResponse."""
        for op in head[_UNDO]:
            self._undo(op, sv, failed=True)
        ref = head[_STMT]
        if ref is None or sv is None:
            return
        st, gname = ref
        fields = m.decode_fields(body)
        code = fields.get("C", "")
        if code == "0A000" or (code == "XX000" and fields.get("M", "").startswith("cache lookup failed")):
            # a stale plan (cached plan must not change result type) or a parameter
            # type dropped since the Parse: every server re-creates it under a new name
            self.client.registry.invalidate(st, gname)
            sv.retire(gname)
        elif head[_KIND] != _REXEC and not any(op and op[0] == "sparse" for op in head[_UNDO]):
            # any error at Bind/Describe of the statement: re-Parse it on this
            # server before its next use (a Parse that failed is already undone)
            sv.retire(gname)

    def _skip_to_sync(self, sv: ServerStatements | None) -> None:
        """The server skips everything up to the next Sync: so do we (LIFO undo)."""
        q = self._q
        skipped: list[Entry] = []
        while q and not q[0][_SYNC]:
            skipped.append(q.popleft())
            if skipped[-1][_KIND] == _RZ:  # a Query/FunctionCall Postgres discards: no ReadyForQuery
                self.skipped_rfq += 1
        if q and q[0][_KIND] == _RSEG:
            # a segment entry: its messages are skipped (none undoes anything or
            # is a Query), its Sync is answered
            q[0] = _E_SYNC
        if not q:
            # the client has not sent that Sync yet: drop its messages up to it
            # (Postgres would discard them), as after a local error
            self._skipping = True
        for entry in reversed(skipped):
            for op in reversed(entry[_UNDO]):
                self._undo(op, sv)

    def _undo(self, op: tuple[Any, ...], sv: ServerStatements | None, failed: bool = False) -> None:
        """Revert the effect of a message the server skipped (or that failed)."""
        what = op[0]
        if what == "cdel":       # a client Parse did not happen
            _, name, st = op
            if self.client.names.get(name) is st:
                self.client.remove(name)
        elif what == "cadd":     # a client Close did not happen
            _, name, st = op
            if name not in self.client.names and st is not None:
                self.client.add(name, st)
        elif sv is not None:
            name, seg = op[1], op[2]
            if sv.changed.get(name, seg) != seg:
                return  # changed again later; that change decides
            if what == "sparse":  # a Parse did not happen (or failed)
                sv.lru.pop(name, None)
                if op[3] and not failed:
                    sv.maybe.add(name)  # its preceding Close was skipped too
            elif what == "sclose" and name not in sv.lru:  # a Close did not happen
                sv.maybe.add(name)
