"""Protocol-level named prepared statements across a transaction pool (sans-I/O).

In transaction mode every transaction may run on another server connection,
where a statement the client prepared earlier does not exist.  This module
rewrites the client's extended-protocol stream so that named statements
follow the client from server to server, the way PgBouncer (>= 1.21) does:

* :class:`StatementRegistry` (one per gateway): every distinct
  (query text, parameter type OIDs) -- the raw tail of the Parse body, so
  any ``client_encoding`` stays byte-exact -- gets ONE gateway-wide name
  ``__wp_<n>`` and the Parse message that creates it.  Entries are
  reference-counted by client mappings.
* :class:`ClientStatements` (one per client): the client's own statement
  names -> registry entries, capped by ``max_client_statements`` and
  ``max_client_statement_bytes`` (total query bytes); past a cap the Parse
  gets an ErrorResponse 53400 (in order) instead of a disconnect.
* :class:`ServerStatements` (one per server connection, see
  :func:`server_statements`): an LRU of the gateway names the server has
  prepared, bounded by ``max_prepared_statements``; the oldest is evicted
  with an injected ``Close('S')`` whose CloseComplete is swallowed.
* :class:`Rewriter` (one per client session, bound to the linked server with
  :meth:`Rewriter.link`): ``rewrite_frontend(chunk, index)`` returns
  ``(bytes_to_server, local_replies_now)`` and ``rewrite_backend(chunk,
  index)`` returns ``(chunk, index)`` for the client.

The pieces live in :mod:`gateway.prepared_registry` (statements, client names,
schema epochs), :mod:`gateway.prepared_server` (per-server LRU) and
:mod:`gateway.prepared_replies` (the reply queue, the server-to-client half);
this module is the client-to-server half and re-exports them all.

Rewriting rules (named statements only; the unnamed statement and all
portals pass through untouched):

* Parse ``s``: ``s`` already mapped -> the new text is sent as a Parse of the
  gateway name ``s`` already has on that server, so the server fails exactly
  where and how Postgres would (a syntax error or an aborted transaction
  first, else 42P05, reworded ``prepared statement "s" already exists``).
  Else map it; if the server already has the gateway statement a
  synthetic ParseComplete is queued, otherwise the Parse is forwarded renamed.
* Bind / Describe('S') of ``s``: renamed; if the server lacks the statement
  its Parse is injected first and the ParseComplete swallowed.  An unknown
  ``s`` is refused with 26000 ``prepared statement "s" does not exist`` (never
  forwarded: a client cannot reach a statement by its gateway name).
* Close('S') of ``s`` drops the client mapping; CloseComplete is synthesized.
* Simple Query text containing ``DEALLOCATE ALL`` / ``DISCARD ALL`` clears the
  client's mappings (and makes the server's statements "uncertain", below).

Order and errors: see :mod:`gateway.prepared_replies`.  Schema changes: see
:mod:`gateway.prepared_registry` (``docs/prepared-statements.md``).

Uncertainty: a statement whose last change on a server happened in an earlier
pipeline segment (before a Sync) that the server has not answered yet may or
may not exist there (that segment may still fail).  Such a statement -- and any
statement marked "maybe" after a skip, a ``DISCARD ALL``, an abandoned link
or any error at its Bind/Describe -- is re-created with ``Close`` + ``Parse``
(Close of a missing statement is no error), so the server's state never has to
be guessed.

A Parse of a name the server already has is answered with a synthetic
ParseComplete only when the transaction surely is not aborted (no Query/Sync
reply outstanding, last ReadyForQuery not ``E``); otherwise the text is parsed
on the server under :data:`SCRATCH_NAME`, so a 25P02 comes from Postgres.

Hot path: a chunk in which no Parse/Bind/Describe/Close names a statement is
returned unchanged (the same object) after one pass over its index; a server
chunk is returned unchanged when the queue needs no change to it.  Replies
nothing will change get no queue entries: a simple Query that cannot be a
DISCARD ALL, or a Sync whose whole segment is in the chunk and names no
statement, is only counted (``_plain``); the usual driver chunk, [Parse] Bind
[Describe] Execute Sync, is checked by its shape (``_one_segment``), and when
its Bind names a statement the server surely has, it is renamed there and the
segment queued as one entry (``_RSEG``, see :mod:`gateway.prepared_replies`).
``Rewriter.FAST = False`` turns these shortcuts off (the tests compare both).
``max_prepared_statements = 0`` disables everything (``Rewriter.enabled`` is
false; callers skip it).  Use it in transaction mode only (session mode keeps
a client on one server: nothing to do).

Headers only: Parse bodies are validated with
:func:`driver.protocol.messages.decode_frontend`; renaming splices the name
out of the body (NUL-terminated name fields) instead of re-encoding, so
parameter values are never decoded and the bytes stay exact.

Use (the session loop; ``gw.statements`` is one :class:`StatementRegistry`)::

    rw = Rewriter(ClientStatements(gw.statements), settings.max_prepared_statements)
    rw.link(server_statements(server, settings.max_prepared_statements))  # at each link
    to_server, now = rw.rewrite_frontend(chunk, index)   # before server.write
    outstanding -= rw.dropped_rfq                        # Queries skipped after a refusal
    chunk, index = rw.rewrite_backend(chunk, index)      # before forwarding to the client
    rw.unlink()                                          # at release / server lost / client gone
    rw.client.clear()                                    # when the client leaves

Known limits (all rare; Postgres' own behaviour otherwise, as checked against
a direct connection by tests/gateway/test_prepared_e2e.py):

* Several Sync segments sent before reading replies, where a later segment
  uses a name that an earlier one created or closed and that earlier segment
  fails: Postgres would answer 26000 (or run the old statement); the gateway
  decided when it forwarded the later segment.
* ``DISCARD ALL`` / ``DEALLOCATE ALL`` clear the client's names when the
  server confirms them, so messages pipelined right behind them (before the
  reply) still see the old names.
* SQL-level ``PREPARE`` / ``EXECUTE`` / ``DEALLOCATE name`` are not tracked
  (as with PgBouncer).  Server errors naming a gateway statement (if someone
  deallocates ``__wp_<n>`` by SQL) pass as they are; the gateway re-creates
  the statement on the next use.
* The names ``__wp_<n>``, ``__wp_refused`` and ``__wp_scratch`` are reserved
  on the upstream servers; statements whose presence is uncertain (and the
  scratch one) may briefly exceed ``max_prepared_statements`` on a server.
"""

from __future__ import annotations

from collections import deque


from .prepared_registry import (
    DEFAULT_MAX_CLIENT_STATEMENT_BYTES,
    DEFAULT_MAX_CLIENT_STATEMENTS,
    ClientStatements,
    Statement,
    StatementRegistry,
)
from .prepared_replies import (
    _NO_Q,
    _RSEG,
    Entry,
    _E_DESC,
    _E_EXEC,
    _E_R1,
    _E_RZ,
    _E_SYNC,
    _PASS,
    _R1,
    _REXEC,
)
from .prepared_general import (  # the general loop, and what both halves use
    _B, _C, _D, _DISCARD_RE, _E, _F, _P, _Q, _S, FAIL_MESSAGE, GeneralRewrite, _pack_i32,
)
from .prepared_server import ServerStatements, forget_statements, server_statements

__all__ = ["DEFAULT_MAX_CLIENT_STATEMENTS", "DEFAULT_MAX_CLIENT_STATEMENT_BYTES", "Statement", "StatementRegistry",
           "ClientStatements", "ServerStatements", "server_statements", "forget_statements", "Rewriter",
           "FAIL_MESSAGE"]

class Rewriter(GeneralRewrite):
    """Rewrites one client's stream for the server it is linked to.

    One per client session; :meth:`link` binds it to a server at each link
    (the queue is empty then, since a server is only released with nothing
    outstanding), :meth:`abandon` when a server is given up mid-pipeline.
    The server-to-client half (:meth:`rewrite_backend`) and the state are
    :class:`~gateway.prepared_replies.ReplyQueue`'s.
    """

    __slots__ = ()

    # ------------------------------------------------------------- frontend
    def rewrite_frontend(self, chunk: bytes, index: list[tuple[int, int, int]]) -> tuple[bytes, bytes]:
        """Client chunk -> ``(bytes for the server, replies for the client now)``."""
        self.dropped_rfq = 0
        sv = self.server
        if not self.enabled or sv is None:
            return chunk, b""
        q = self._q
        if sv.seen != self.client.registry.clock and not q and not self._plain:
            self._sweep(sv)
        if not q and not self._skipping and not sv.maybe and self.FAST:
            t0 = index[0][0]
            if t0 == _Q:
                if len(index) == 1 and not (self._plain_sync and self._plain):
                    # Fastest path: one simple Query (pgbench -S) that cannot be a
                    # DISCARD/DEALLOCATE ALL: no queue entry, just a count.
                    if (b"all" not in chunk.lower() if len(chunk) <= 1024
                            else _DISCARD_RE.search(chunk, 5) is None):
                        self._plain += 1
                        self._plain_sync = False
                        return chunk, b""
            elif 3 <= len(index) <= 5 and index[-1][0] == _S and index[-2][0] == _E:
                # maybe the usual extended-protocol chunk: [Parse] Bind [Describe] Execute Sync
                to_server = self._one_segment(chunk, index, t0, sv)
                if to_server is not None:
                    return to_server, b""
            # Plain chunks: no queue entries, just a count of the ReadyForQuery
            # replies owed.  A Query is plain unless it may be a DISCARD/DEALLOCATE
            # ALL and it does not follow extended messages of its segment (those
            # may fail and make the server skip it); a Sync is plain when all of its
            # segment is in this chunk and names no statement (nothing in its
            # reply is changed or undone: its ReadyForQuery ends it, errors or not).
            last = self._last_stmt
            syncs = queries = 0
            pend = False  # extended messages since the last Sync
            for t, s, e in index:
                if t == _S:
                    syncs += 1
                    pend = False
                elif t == _B:
                    i = chunk.find(b"\x00", s, e) + 1
                    if i <= 0 or i >= e or chunk[i]:
                        break
                    last = None
                    pend = True
                elif t == _Q or t == _F:
                    if pend:
                        break
                    queries += 1
                elif t == _E:
                    if last is not None:
                        break
                    pend = True
                elif t == _P:
                    if s >= e or chunk[s]:
                        break
                    pend = True
                elif t == _D or t == _C:
                    if e - s < 2 or (chunk[s] == 83 and chunk[s + 1]):
                        break
                    pend = True
            else:
                if (not pend and not (syncs and queries)
                        and (not self._plain or self._plain_sync == (syncs > 0))
                        and (not queries or not self._may_discard(chunk, index))):
                    if syncs:
                        self._plain += syncs
                        self._plain_sync = True
                        sv.sent += syncs
                    elif queries:
                        self._plain += queries
                        self._plain_sync = False
                    self._last_stmt = last
                    return chunk, b""
        if q is _NO_Q:  # the first entry of this link: the queue is made now (not per link)
            q = self._q = deque()
        if self._plain:
            # materialize the counted replies at the head of the queue
            q.extend([_E_SYNC if self._plain_sync else _E_RZ] * self._plain)
            self._plain = 0
        if self._skipping or sv.maybe or not self.FAST:
            return self._slow_frontend(chunk, index, sv)
        # Fast path: nothing names a statement the server may lack (unnamed ones are
        # fine; a Bind of a named statement the server surely has is renamed here).
        ents: list[Entry] = []
        append = ents.append
        last = self._last_stmt
        syncs = 0
        rz = False  # a Query/FunctionCall among the entries
        refs = False  # an entry names a statement
        out: list[bytes] | None = None
        copy_from = 0
        for t, s, e in index:
            if t == _E:
                if last is None:
                    append(_E_EXEC)
                else:
                    append((_REXEC, _PASS, None, last, (), 0))
                    refs = True
            elif t == _S:
                append(_E_SYNC)
                syncs += 1
            elif t == _B:
                i = chunk.find(b"\x00", s, e) + 1
                if i <= 0 or i >= e:
                    break
                if chunk[i]:
                    # named: renamed when the server surely has it (else the slow path injects it)
                    ne = chunk.find(b"\x00", i, e)
                    if ne < 0:
                        break
                    st = self.client.names.get(chunk[i:ne])
                    if st is None:
                        break
                    gname = st.name
                    if gname not in sv.lru:
                        break
                    ch = sv.changed.get(gname)
                    if ch is not None and ch != sv.sent + syncs and ch >= sv.acked:
                        break
                    sv.lru.move_to_end(gname)  # (done again, in the same order, if the slow path takes over)
                    if out is None:
                        out = []
                    if s - 5 > copy_from:
                        out.append(chunk[copy_from:s - 5])
                    body = chunk[s:i] + gname + chunk[ne:e]
                    out.append(b"B" + _pack_i32(len(body) + 4) + body)
                    copy_from = e
                    last = (st, gname)
                    append((_R1, _PASS, None, last, (), 0))
                    refs = True
                else:
                    append(_E_R1)
                    last = None
            elif t == _P:
                if s >= e or chunk[s]:
                    break
                append(_E_R1)
            elif t == _D or t == _C:
                if e - s < 2:
                    break
                if chunk[s] == 83:  # 'S'
                    if chunk[s + 1]:
                        break
                    append(_E_DESC if t == _D else _E_R1)
                else:
                    append(_E_R1)
            elif t == _Q:
                if _DISCARD_RE.search(chunk, s, e) is not None:
                    break
                append(_E_RZ)
                rz = True
            elif t == _F:
                append(_E_RZ)
                rz = True
        else:
            sv.sent += syncs
            self._last_stmt = last
            if syncs == 1 and not rz and ents[-1] is _E_SYNC:
                # one whole segment: one entry (its Sync alone when nothing in it names a statement)
                q.append((_RSEG, _PASS, tuple(ents), None, (), 1) if refs else _E_SYNC)
            else:
                q.extend(ents)
            if out is None:
                return chunk, b""
            if len(chunk) > copy_from:
                out.append(chunk[copy_from:])
            return b"".join(out), b""
        return self._slow_frontend(chunk, index, sv)

    def _one_segment(self, chunk: bytes, index: list[tuple[int, int, int]], t0: int,
                     sv: ServerStatements) -> bytes | None:
        """``rewrite_frontend`` for a chunk of the usual shape, [Parse] Bind
        [Describe] Execute Sync (the queue empty, nothing uncertain): what goes to
        the server, or None when the general paths must decide (a named Parse
        or Describe, a statement the server may lack...).  Unnamed statements:
        one plain Sync counted.  A Bind of a named statement the server surely
        has: renamed, and the segment is one queue entry."""
        k = 0
        if t0 == _P:
            _t, s, e = index[0]
            if s >= e or chunk[s]:
                return None
            k = 1
        t, s, e = index[k]  # the Bind
        if t != _B:
            return None
        i = chunk.find(b"\x00", s, e) + 1  # its statement name
        if i <= 0 or i >= e:
            return None
        desc: Entry | None = None
        t, ds, de = index[k + 1]
        if t != _D:
            if t != _E or len(index) - k != 3:
                return None
        elif len(index) - k != 4:
            return None
        else:
            if de - ds < 2:
                return None
            if chunk[ds] == 83:  # 'S'
                if chunk[ds + 1]:
                    return None
                desc = _E_DESC
            else:
                desc = _E_R1
        if not chunk[i]:  # the unnamed statement: a plain Sync
            if self._plain and not self._plain_sync:
                return None
            self._plain += 1
            self._plain_sync = True
            sv.sent += 1
            self._last_stmt = None
            return chunk
        if self._plain:
            return None
        ne = chunk.find(b"\x00", i, e)
        if ne < 0:
            return None
        st = self.client.names.get(chunk[i:ne])
        if st is None:
            return None
        gname = st.name
        if gname not in sv.lru:
            return None
        ch = sv.changed.get(gname)
        if ch is not None and ch != sv.sent and ch >= sv.acked:
            return None
        sv.lru.move_to_end(gname)
        ref = self._last_stmt = (st, gname)
        bind: Entry = (_R1, _PASS, None, ref, (), 0)
        run: Entry = (_REXEC, _PASS, None, ref, (), 0)
        sub: tuple[Entry, ...] = (bind, run, _E_SYNC) if desc is None else (bind, desc, run, _E_SYNC)
        if k:
            sub = (_E_R1,) + sub
        q = self._q
        if q is _NO_Q:
            q = self._q = deque()
        q.append((_RSEG, _PASS, sub, None, (), 1))
        sv.sent += 1
        body = chunk[s:i] + gname + chunk[ne:e]
        return b"".join((chunk[:s - 5], b"B", _pack_i32(len(body) + 4), body, chunk[e:]))

    @staticmethod
    def _may_discard(chunk: bytes, index: list[tuple[int, int, int]]) -> bool:
        """Can a Query of this chunk be a DISCARD ALL / DEALLOCATE ALL?  (A cheap
        test first: most chunks do not contain "all" at all.)"""
        if len(chunk) <= 1024:
            if b"all" not in chunk.lower():
                return False
        search = _DISCARD_RE.search
        for t, s, e in index:
            if t == _Q and search(chunk, s, e) is not None:
                return True
        return False

    def _sweep(self, sv: ServerStatements) -> None:
        """A schema changed (or a statement was renamed) since this server was
        last checked: its stale statements are closed before anything else."""
        reg = self.client.registry
        db = self.client.db
        for name in [n for n in sv.lru if reg.is_stale(n, db)]:
            sv.retire(name)
        sv.seen = reg.clock
