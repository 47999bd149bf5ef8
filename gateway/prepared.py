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

Order: every forwarded message that the server answers gets an entry in a
reply queue (how its reply ends; pass / swallow / synthesize).  Synthetic
replies are emitted exactly when every reply before them has been delivered;
those with nothing before them come back at once as ``local_replies_now``.

Errors: an ErrorResponse to an extended-protocol message makes the server skip
everything up to Sync, so the queue drops the entries up to the next Sync and
undoes their effects (client mappings created or closed, statements assumed
created or evicted on the server).  A refusal decided by the gateway (26000
for an unknown name, the caps) is made real on the server: a Describe of a
statement that cannot exist (:data:`FAIL_MESSAGE`) is sent in place of the
refused message, so the server fails at exactly that point -- aborting the
implicit or explicit transaction as Postgres would -- and its ErrorResponse
is replaced by the gateway's.  After a refusal or a duplicate Parse the
client's messages up to Sync are not forwarded (the server skips them
anyway); the Sync is.  A failed injected Parse passes its error to the client.

Uncertainty: a statement whose last change on a server happened in an earlier
pipeline segment (before a Sync) that the server has not answered yet may or
may not exist there (that segment may still fail).  Such a statement -- and any
statement marked "maybe" after a skip, a ``DISCARD ALL``, an abandoned link
or any error at its Bind/Describe -- is re-created with ``Close`` + ``Parse``
(Close of a missing statement is no error), so the server's state never has to
be guessed.

Schema changes (``docs/prepared-statements.md``): a 0A000 (``cached plan must
not change result type``) or an ``XX000 cache lookup failed`` (a parameter
type dropped since the Parse) in reply to a statement's Bind/Describe/Execute
gives the registry entry a fresh gateway name, so no other client keeps
hitting the stale plan; the client still gets Postgres' error.  A DDL seen by
the gateway calls :meth:`StatementRegistry.bump` for its database: statements
created before it are no longer handed to new clients, and each server closes
the unused ones before its next use (:meth:`Rewriter._sweep`).  One a client
still maps is renamed when it is next parsed afresh on a server
(:meth:`StatementRegistry.renew`), so the servers holding its old plan close it
too: its first use after the migration fails (Postgres' error, on a server
with the old plan) or renews it, never a later one.

A Parse of a name the server already has is answered with a synthetic
ParseComplete only when the transaction surely is not aborted (no Query/Sync
reply outstanding, last ReadyForQuery not ``E``); otherwise the text is parsed
on the server under :data:`SCRATCH_NAME`, so a 25P02 comes from Postgres.

Hot path: a chunk in which no Parse/Bind/Describe/Close names a statement is
returned unchanged (the same object) after one pass over its index; a server
chunk is returned unchanged when the queue needs no change to it.
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

import re
import struct
import weakref
from collections import OrderedDict, deque
from typing import Any, Final

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader, ProtocolError

__all__ = [
    "DEFAULT_MAX_CLIENT_STATEMENTS",
    "DEFAULT_MAX_CLIENT_STATEMENT_BYTES",
    "Statement",
    "StatementRegistry",
    "ClientStatements",
    "ServerStatements",
    "server_statements",
    "Rewriter",
]

#: Per-client cap on the number of named statements.
DEFAULT_MAX_CLIENT_STATEMENTS = 1000
#: Per-client cap on the total size of their query texts (bytes).
DEFAULT_MAX_CLIENT_STATEMENT_BYTES = 8 * 1024 * 1024

_pack_i32 = struct.Struct("!i").pack

# frontend types
_P, _B, _D, _C, _E, _S, _Q, _F, _H = (ord(c) for c in "PBDCESQFH")
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
# what to do with the reply
_PASS = 0
_SWALLOW = 1
_REPLACE = 2   # the server's ErrorResponse is replaced by the entry's data
_REPLACE_42P05 = 3  # a 42P05 ErrorResponse is replaced by the entry's data; others pass

#: Sent in place of a message the gateway refuses (26000 unknown name, caps): it
#: fails on the server with 26000 -- no gateway or client statement has this
#: name -- so the server aborts the (implicit) transaction and skips to Sync
#: exactly as it would have for the refused message; the reply is replaced.
FAIL_MESSAGE = m.describe("S", "__wp_refused")
#: Statement name used to let the server judge a Parse the gateway would
#: otherwise answer itself (closed before every use).
SCRATCH_NAME = b"__wp_scratch"
_CLOSE_SCRATCH = m.close("S", SCRATCH_NAME.decode())

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

_DISCARD_RE = re.compile(rb"(?i)\b(?:discard\s+all|deallocate\s+(?:prepare\s+)?all)\b")
_DISCARD_TAGS = (b"DISCARD ALL\x00", b"DEALLOCATE ALL\x00")


class Statement:
    """One gateway-wide statement: its name and the Parse that creates it."""

    __slots__ = ("key", "name", "parse", "refs", "size", "born", "__weakref__")

    def __init__(self, key: bytes, name: bytes, born: int = 0) -> None:
        self.key = key          # raw Parse body after the name: query\0 + int16 n + oids
        self.size = len(key)
        self.refs = 0
        self.born = born        # registry clock at creation (stale after a later schema bump)
        self.name = name
        self.parse = b""
        self.rename(name)

    def rename(self, name: bytes, born: int | None = None) -> None:
        self.name = name
        if born is not None:
            self.born = born
        body = name + b"\x00" + self.key
        self.parse = b"P" + _pack_i32(len(body) + 4) + body

    def __repr__(self) -> str:
        return f"<Statement {self.name.decode()} refs={self.refs}>"


class StatementRegistry:
    """Gateway-wide: (query, param OIDs) -> :class:`Statement` with a unique name."""

    def __init__(self, prefix: str = "__wp_", keep_unused: int = 1000) -> None:
        self._prefix = prefix.encode()
        self._by_key: dict[bytes, Statement] = {}
        #: statements no client maps any more, kept (bounded) because servers
        #: probably still have them: a client preparing them again reuses the name
        self._unused: OrderedDict[bytes, None] = OrderedDict()
        self.keep_unused = keep_unused
        self._counter = 0
        #: every gateway name still in use anywhere -> its statement (renamed ones
        #: keep their old name here while the object lives: servers close them)
        self.by_name: weakref.WeakValueDictionary[bytes, Statement] = weakref.WeakValueDictionary()
        #: bumped at each schema change (and rename): servers re-check their statements
        self.clock = 0
        #: database key -> clock value of its last schema change (see :meth:`bump`)
        self.marks: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._by_key)

    def _new_name(self) -> bytes:
        self._counter += 1
        return self._prefix + str(self._counter).encode()

    def get(self, key: bytes, db: str = "") -> Statement:
        """The current statement for ``key``; a new one (new name) when there is
        none or it predates a schema change of database ``db``."""
        st = self._by_key.get(key)
        if st is None or (self.marks and st.born < self.marks.get(db, 0)):
            if st is not None:
                self._unused.pop(key, None)  # clients still holding it keep it
            st = self._by_key[key] = Statement(key, self._new_name(), self.clock)
            self.by_name[st.name] = st
        return st

    def bump(self, db: str) -> None:
        """A schema change (DDL) completed on database ``db``: statements
        created before it are not handed to new clients any more, and each
        server closes its unused ones before its next use (:meth:`Rewriter._sweep`)."""
        self.clock += 1
        self.marks[db] = self.clock

    def is_stale(self, name: bytes, db: str) -> bool:
        """Should a server of ``db`` holding ``name`` close it?  Yes when no
        statement goes by that name any more, or it predates a schema change
        and no client maps it (one that does gets Postgres' own error, then a
        fresh Parse)."""
        st = self.by_name.get(name)
        return st is None or st.name != name or (st.refs == 0 and st.born < self.marks.get(db, 0))

    def acquire(self, st: Statement) -> None:
        if st.refs == 0:
            cur = self._by_key.setdefault(st.key, st)
            if cur is st:
                self._unused.pop(st.key, None)
        st.refs += 1

    def release(self, st: Statement) -> None:
        st.refs -= 1
        if st.refs <= 0:
            st.refs = 0
            if self._by_key.get(st.key) is st:
                unused = self._unused
                unused[st.key] = None
                while len(unused) > self.keep_unused:
                    key, _ = unused.popitem(last=False)
                    del self._by_key[key]

    def invalidate(self, st: Statement, name: bytes) -> None:
        """The server said the statement's plan is stale: give it a new name
        (only once per stale name), so every server re-creates it."""
        if st.name == name:
            # every statement object with this text (clients still holding ones
            # from before a schema bump) is as stale: all get new names
            same = {o for o in list(self.by_name.values()) if o.key == st.key}
            same.add(st)
            for o in same:
                o.rename(self._new_name(), self.clock)  # parsed from now on: current schema
                self.by_name[o.name] = o
            self.clock += 1  # servers close the old names before their next use

    def renew(self, st: Statement, db: str) -> bool:
        """``st`` is about to be parsed afresh on a server after a schema change
        of ``db`` it predates: give it a new name first (True if it did), so
        the servers still holding its old plan close it before their next use
        instead of failing later.  Without this, a long-lived client's first
        use after a migration could land on a server without the statement
        (fresh Parse, no error, nothing retired) and a later use on one with
        the stale plan would fail then -- an error long after the migration."""
        if st.born >= self.marks.get(db, 0) or self.by_name.get(st.name) is not st:
            return False
        st.rename(self._new_name(), self.clock)
        self.by_name[st.name] = st
        self.clock += 1
        return True


class ClientStatements:
    """One client's statement names -> registry entries, with caps."""

    __slots__ = ("registry", "db", "max_statements", "max_bytes", "names", "total_bytes")

    def __init__(self, registry: StatementRegistry,
                 max_statements: int = DEFAULT_MAX_CLIENT_STATEMENTS,
                 max_bytes: int = DEFAULT_MAX_CLIENT_STATEMENT_BYTES, db: str = "") -> None:
        self.registry = registry
        #: the upstream database (schema epochs are per database)
        self.db = db
        self.max_statements = max_statements
        self.max_bytes = max_bytes
        self.names: dict[bytes, Statement] = {}
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self.names)

    def check_caps(self, size: int) -> str | None:
        """None if one more statement of ``size`` query bytes fits, else why not."""
        if self.max_statements and len(self.names) >= self.max_statements:
            return (f"too many prepared statements for this client: the limit is {self.max_statements}"
                    " (max_client_statements); close some first")
        if self.max_bytes and self.total_bytes + size > self.max_bytes:
            return (f"prepared statements of this client exceed {self.max_bytes} bytes of query text"
                    " (max_client_statement_bytes); close some first")
        return None

    def add(self, name: bytes, st: Statement) -> None:
        old = self.names.get(name)
        if old is not None:
            self.remove(name)
        self.names[name] = st
        self.total_bytes += st.size
        self.registry.acquire(st)

    def remove(self, name: bytes) -> Statement | None:
        st = self.names.pop(name, None)
        if st is not None:
            self.total_bytes -= st.size
            self.registry.release(st)
        return st

    def clear(self) -> None:
        for name in list(self.names):
            self.remove(name)


class ServerStatements:
    """What one server connection has prepared (gateway names), as an LRU.

    ``lru`` maps name -> pipeline segment in which it was (assumed) created;
    ``changed`` records the segment of each name's last change while
    segments are unanswered; ``maybe`` holds names that may or may not exist
    (to be closed before any re-creation).  ``sent``/``acked`` count Syncs
    forwarded / answered.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lru: OrderedDict[bytes, int] = OrderedDict()
        self.maybe: set[bytes] = set()
        self.changed: dict[bytes, int] = {}
        self.sent = 0
        self.acked = 0
        #: registry clock when this server's statements were last checked for staleness
        self.seen = 0

    def __len__(self) -> int:
        return len(self.lru)

    def __contains__(self, name: object) -> bool:
        return name in self.lru

    def forget_all(self) -> None:
        """Every statement may be gone (DISCARD ALL / DEALLOCATE ALL ran or may run)."""
        self.maybe.update(self.lru)
        self.lru.clear()

    def retire(self, name: bytes) -> None:
        """``name`` is stale or broken on this server: Close it before its next use."""
        if self.lru.pop(name, None) is not None or name not in self.maybe:
            self.maybe.add(name)

    def reset(self) -> None:
        """The server has no statements at all (e.g. after a reset query)."""
        self.lru.clear()
        self.maybe.clear()
        self.changed.clear()
        self.acked = self.sent


_SERVERS: "weakref.WeakKeyDictionary[Any, ServerStatements]" = weakref.WeakKeyDictionary()


def server_statements(server: Any, limit: int) -> ServerStatements:
    """The :class:`ServerStatements` of a server connection object (created
    on first use, dropped with the object)."""
    st = _SERVERS.get(server)
    if st is None:
        st = _SERVERS[server] = ServerStatements(limit)
    return st


def forget_statements(server: Any) -> None:
    """The server's named statements are gone (DISCARD ALL sent by the
    gateway between clients): the next use re-Parses them."""
    st = _SERVERS.get(server)
    if st is not None:
        st.reset()


def _cstr_end(chunk: bytes, pos: int, end: int) -> int:
    """Index of the NUL ending the string at ``pos`` (ProtocolError if none)."""
    i = chunk.find(b"\x00", pos, end)
    if i < 0:
        raise ProtocolError("malformed frontend message: unterminated name")
    return i


def _msg(mtype: bytes, body: bytes) -> bytes:
    return mtype + _pack_i32(len(body) + 4) + body


def _close_msg(name: bytes) -> bytes:
    return _msg(b"C", b"S" + name + b"\x00")


_NO_Q: Any = ()  # Rewriter._q while unlinked: empty, and any attempt to queue on it fails loudly


class Rewriter:
    """Rewrites one client's stream for the server it is linked to.

    One per client session; :meth:`link` binds it to a server at each link
    (the queue is empty then, since a server is only released with nothing
    outstanding), :meth:`abandon` when a server is given up mid-pipeline.
    """

    __slots__ = ("client", "limit", "enabled", "server", "_q", "_desc_half", "_status", "_skipping",
                 "_last_stmt", "_plain", "dropped_rfq", "skipped_rfq")

    def __init__(self, client: ClientStatements, limit: int) -> None:
        self.client = client
        self.limit = limit
        self.enabled = limit > 0
        self.server: ServerStatements | None = None
        #: the reply queue, a deque while linked; the shared empty tuple while not (idle-session memory)
        self._q: deque[Entry] = _NO_Q
        self._desc_half = False      # the head Describe('S') got its ParameterDescription
        self._status = 73            # last ReadyForQuery status seen ('I')
        self._skipping = False       # a local error: drop client messages until Sync
        self._last_stmt: tuple[Statement, bytes] | None = None
        #: plain Query replies outstanding that have no queue entry (they stand
        #: for ``_E_RZ`` entries at the head of the queue; only while it is empty)
        self._plain = 0
        #: Query/FunctionCall messages dropped while skipping in the last
        #: rewrite_frontend call (they will get no ReadyForQuery).
        self.dropped_rfq = 0
        #: Query/FunctionCall messages the server skipped after an error in an
        #: extended-protocol message before them (no ReadyForQuery will come);
        #: the session subtracts and resets it.
        self.skipped_rfq = 0

    # -------------------------------------------------------------- linking
    def link(self, server: ServerStatements) -> None:
        if self._q or self._plain:
            self.abandon()
        if self._q is _NO_Q:
            self._q = deque()
        self.server = server

    def unlink(self) -> None:
        if self._q or self._plain:
            self.abandon()
        self._q = _NO_Q  # empty now
        self.server = None

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
        self.skipped_rfq = 0

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
        if not q and not self._skipping and not sv.maybe:
            # Fastest path: only simple Queries (pgbench -S) that cannot be a
            # DISCARD/DEALLOCATE ALL: no queue entries, just a count.
            for t, _s, _e in index:
                if t != _Q:
                    break
            else:
                if len(chunk) <= 1024:
                    if b"all" not in chunk.lower():
                        self._plain += len(index)
                        return chunk, b""
                else:
                    search = _DISCARD_RE.search
                    for _t, s, e in index:
                        if search(chunk, s, e) is not None:
                            break
                    else:
                        self._plain += len(index)
                        return chunk, b""
        if self._plain:
            # materialize the counted replies at the head of the queue
            q.extend([_E_RZ] * self._plain)
            self._plain = 0
        if self._skipping or sv.maybe:
            return self._slow_frontend(chunk, index, sv)
        # Fast path: nothing names a statement (unnamed ones are fine).
        n0 = len(q)
        append = q.append
        last = self._last_stmt
        syncs = 0
        for t, s, e in index:
            if t == _E:
                append(_E_EXEC if last is None else (_REXEC, _PASS, None, last, (), 0))
            elif t == _S:
                append(_E_SYNC)
                syncs += 1
            elif t == _B:
                i = chunk.find(b"\x00", s, e) + 1
                if i <= 0 or i >= e or chunk[i]:
                    break
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
            elif t == _F:
                append(_E_RZ)
        else:
            sv.sent += syncs
            self._last_stmt = last
            return chunk, b""
        while len(q) > n0:  # a named statement: start over on the slow path
            q.pop()
        return self._slow_frontend(chunk, index, sv)

    def _sweep(self, sv: ServerStatements) -> None:
        """A schema changed (or a statement was renamed) since this server was
        last checked: its stale statements are closed before anything else."""
        reg = self.client.registry
        db = self.client.db
        for name in [n for n in sv.lru if reg.is_stale(n, db)]:
            sv.retire(name)
        sv.seen = reg.clock

    def _discard_all(self) -> None:
        """A DISCARD ALL / DEALLOCATE ALL may run: every statement on the server
        becomes uncertain.  (The client's own names are cleared when the
        server confirms the command with its CommandComplete tag.)"""
        if self.server is not None:
            self.server.forget_all()

    def _discarded(self, sv: ServerStatements | None) -> None:
        """The server ran DISCARD ALL / DEALLOCATE ALL for this client."""
        self.client.clear()
        if sv is not None:
            sv.forget_all()

    def _slow_frontend(self, chunk: bytes, index: list[tuple[int, int, int]],
                       sv: ServerStatements) -> tuple[bytes, bytes]:
        q = self._q
        client = self.client
        names = client.names
        out: list[bytes] = []
        copy_from = 0           # start of the pending verbatim run of chunk
        if sv.maybe and not self._skipping:  # (a server skipping to Sync would ignore the Close)
            self._close_maybe(sv, out)
        for t, s, e in index:
            start = s - 5
            if self._skipping:
                if start > copy_from:
                    out.append(chunk[copy_from:start])
                copy_from = e
                if t == _S:
                    self._skipping = False
                    out.append(m.SYNC)
                    q.append(_E_SYNC)
                    sv.sent += 1
                    if sv.maybe:
                        self._close_maybe(sv, out)
                elif t == _Q or t == _F:
                    self.dropped_rfq += 1
                continue
            if t == _P:
                ne = _cstr_end(chunk, s, e)
                if ne == s:
                    q.append(_E_R1)
                    continue
                name = chunk[s:ne]
                m.decode_frontend(_P, chunk[s:e])  # validates (ProtocolError)
                if start > copy_from:
                    out.append(chunk[copy_from:start])
                copy_from = e
                old = names.get(name)
                if old is not None:
                    # Let the server fail on its own: Parse the new text under the
                    # gateway name the client's statement already has there, so any
                    # earlier error (syntax, aborted transaction...) wins as in
                    # Postgres, then 42P05 -- reworded with the client's name.
                    self._ensure(sv, old, out)
                    body = old.name + chunk[ne:e]
                    out.append(b"P" + _pack_i32(len(body) + 4) + body)
                    err = m.error("42P05", f'prepared statement "{_txt(name)}" already exists')
                    q.append((_R1, _REPLACE_42P05, err, None, (), 0))
                    self._skipping = True
                    continue
                key = chunk[ne + 1:e]
                why = client.check_caps(len(key))
                if why is not None:
                    self._local_error(out, m.error("53400", why))
                    continue
                st = client.registry.get(key, client.db)
                client.add(name, st)
                cundo = ("cdel", name, st)
                gname = st.name
                if self._certain(sv, gname):
                    sv.lru.move_to_end(gname)
                    if self._status != 69 and not any(x[_KIND] == _RZ for x in q):
                        # surely not in an aborted transaction: answer it here
                        q.append((_RSYN, _PASS, m.PARSE_COMPLETE, None, (cundo,), 0))
                    else:
                        # maybe aborted (Postgres would refuse the Parse with 25P02):
                        # let the server parse the text under a scratch name
                        out.append(_CLOSE_SCRATCH)
                        q.append((_R1, _SWALLOW, None, None, (), 0))
                        body = SCRATCH_NAME + b"\x00" + key
                        out.append(b"P" + _pack_i32(len(body) + 4) + body)
                        q.append((_R1, _PASS, None, None, (cundo,), 0))
                else:
                    sundo = self._make_room(sv, gname, out)
                    out.append(st.parse)
                    q.append((_R1, _PASS, None, (st, gname), (cundo, sundo), 0))
            elif t == _B or (t == _D and s < e and chunk[s] == 83):  # Bind / Describe 'S'
                ns = _cstr_end(chunk, s, e) + 1 if t == _B else s + 1
                ne = _cstr_end(chunk, ns, e)
                kind = _R1 if t == _B else _RDESC
                if ne == ns:
                    q.append((kind, _PASS, None, None, (), 0))
                    if t == _B:
                        self._last_stmt = None
                    continue
                if start > copy_from:
                    out.append(chunk[copy_from:start])
                copy_from = e
                name = chunk[ns:ne]
                st2 = names.get(name)
                if st2 is None:
                    self._local_error(out, m.error("26000", f'prepared statement "{_txt(name)}" does not exist'))
                    continue
                gname = self._ensure(sv, st2, out)
                body = chunk[s:ns] + gname + chunk[ne:e]
                out.append(chr(t).encode() + _pack_i32(len(body) + 4) + body)
                ref = (st2, gname)
                if t == _B:
                    self._last_stmt = ref
                q.append((kind, _PASS, None, ref, (), 0))
            elif t == _D:  # Describe 'P'
                q.append(_E_R1)
            elif t == _C:
                if s >= e or chunk[s] != 83:  # Close 'P' (or malformed: the server says so)
                    q.append(_E_R1)
                    continue
                ne = _cstr_end(chunk, s + 1, e)
                if ne == s + 1:
                    q.append(_E_R1)
                    continue
                if start > copy_from:
                    out.append(chunk[copy_from:start])
                copy_from = e
                name = chunk[s + 1:ne]
                st3 = client.remove(name)
                undo: tuple[Any, ...] = (("cadd", name, st3),) if st3 is not None else ()
                q.append((_RSYN, _PASS, m.CLOSE_COMPLETE, None, undo, 0))
            elif t == _E:
                q.append(_E_EXEC if self._last_stmt is None else (_REXEC, _PASS, None, self._last_stmt, (), 0))
            elif t == _S:
                q.append(_E_SYNC)
                sv.sent += 1
            elif t == _Q:
                q.append(_E_RZ)
                if _DISCARD_RE.search(chunk, s, e) is not None:
                    self._discard_all()
            elif t == _F:
                q.append(_E_RZ)
        if len(chunk) > copy_from:
            out.append(chunk[copy_from:])
        # Synthetic replies at the head of the queue (nothing before them) go out now.
        now: list[bytes] = []
        while q and q[0][_KIND] == _RSYN:
            now.append(q.popleft()[_DATA])
        to_server = out[0] if len(out) == 1 else b"".join(out)
        return to_server, b"".join(now)

    def _local_error(self, out: list[bytes], err: bytes) -> None:
        """Refuse the current message with ``err``, in order, with Postgres'
        error semantics (transaction aborted, messages skipped up to Sync)."""
        out.append(FAIL_MESSAGE)
        self._q.append((_RDESC, _REPLACE, err, None, (), 0))
        self._skipping = True  # no need to send what the server would skip

    def _certain(self, sv: ServerStatements, gname: bytes) -> bool:
        """Does the server certainly have ``gname`` once what was sent so far runs?"""
        seg = sv.lru.get(gname)
        if seg is None:
            return False
        ch = sv.changed.get(gname)
        return ch is None or ch == sv.sent or ch < sv.acked

    def _ensure(self, sv: ServerStatements, st: Statement, out: list[bytes]) -> bytes:
        """Make sure the server has ``st`` before the next message: inject its
        Parse.  Returns the gateway name to use (``st`` may be renamed when it
        predates a schema change, see :meth:`StatementRegistry.renew`)."""
        gname = st.name
        if self._certain(sv, gname):
            sv.lru.move_to_end(gname)
            return gname
        if self.client.registry.renew(st, self.client.db):
            gname = st.name
        sundo = self._make_room(sv, gname, out)
        out.append(st.parse)
        self._q.append((_R1, _SWALLOW, None, (st, gname), (sundo,), 0))
        return gname

    def _make_room(self, sv: ServerStatements, gname: bytes, out: list[bytes]) -> tuple[Any, ...]:
        """Record ``gname`` as being created now; inject a Close first when its
        presence is uncertain, and evict the oldest past the limit."""
        seg = sv.sent
        ch = sv.changed.get(gname)
        uncertain = gname in sv.maybe or gname in sv.lru or (ch is not None and ch != seg and ch >= sv.acked)
        if uncertain:
            sv.maybe.discard(gname)
            sv.lru.pop(gname, None)
            out.append(_close_msg(gname))
            self._q.append((_R1, _SWALLOW, None, None, (), 0))
        while len(sv.lru) >= sv.limit:
            old, _ = sv.lru.popitem(last=False)
            sv.changed[old] = seg
            out.append(_close_msg(old))
            self._q.append((_R1, _SWALLOW, None, None, (("sclose", old, seg),), 0))
        sv.lru[gname] = seg
        sv.changed[gname] = seg
        return ("sparse", gname, seg, uncertain)

    def _close_maybe(self, sv: ServerStatements, out: list[bytes]) -> None:
        """Close statements whose existence is uncertain (and not in use)."""
        if not sv.maybe:
            return
        seg = sv.sent
        for name in sorted(sv.maybe):
            sv.changed[name] = seg
            out.append(_close_msg(name))
            self._q.append((_R1, _SWALLOW, None, None, (("sclose", name, seg),), 0))
        sv.maybe.clear()

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
            if q and q[0][_KIND] == _RSYN:
                # synthetic replies due right after this message
                if out is None:
                    out = []
                if e > copy_from:
                    out.append(chunk[copy_from:e])
                copy_from = e
                while q and q[0][_KIND] == _RSYN:
                    out.append(q.popleft()[_DATA])
        if out is None:
            return chunk, index
        if copy_from < len(chunk):
            out.append(chunk[copy_from:])
        new = b"".join(out)
        reader = MessageReader()
        reader.feed(new)
        return reader.read_raw()

    def _plain_replies(self, chunk: bytes, index: list[tuple[int, int, int]]) -> None:
        """Replies to counted plain Queries (the queue is empty): nothing to
        change, only ReadyForQuery status and a DISCARD/DEALLOCATE ALL tag
        (a query the pre-check could not see, e.g. built by a function)."""
        for t, s, e in index:
            if t == _Z:
                self._status = chunk[s]
                self._plain -= 1
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


def _txt(name: bytes) -> str:
    return name.decode("utf-8", "replace")
