"""Gateway-wide named statements and each client's names for them (sans-I/O).

Part of :mod:`gateway.prepared` (which re-exports every public name here):

* :class:`Statement`: one (query text, parameter type OIDs) -- the raw tail of
  the Parse body, so any ``client_encoding`` stays byte-exact -- with ONE
  gateway-wide name ``__wp_<n>`` and the Parse message that creates it.
* :class:`StatementRegistry` (one per gateway): key -> statement, reference
  counted by client mappings, plus the schema epochs below.
* :class:`ClientStatements` (one per client): the client's own statement
  names -> registry entries, capped by ``max_client_statements`` and
  ``max_client_statement_bytes`` (total query bytes).

Schema changes (``docs/prepared-statements.md``): a 0A000 (``cached plan must
not change result type``) or an ``XX000 cache lookup failed`` (a parameter
type dropped since the Parse) in reply to a statement's Bind/Describe/Execute
gives the registry entry a fresh gateway name, so no other client keeps
hitting the stale plan; the client still gets Postgres' error.  A DDL seen by
the gateway calls :meth:`StatementRegistry.bump` for its database: statements
created before it are no longer handed to new clients, and each server closes
the unused ones before its next use (:meth:`gateway.prepared.Rewriter._sweep`).  One a client
still maps is renamed when it is next parsed afresh on a server
(:meth:`StatementRegistry.renew`), so the servers holding its old plan close it
too: its first use after the migration fails (Postgres' error, on a server
with the old plan) or renews it, never a later one.
"""

from __future__ import annotations

import struct
import weakref
from collections import OrderedDict

__all__ = ["DEFAULT_MAX_CLIENT_STATEMENTS", "DEFAULT_MAX_CLIENT_STATEMENT_BYTES", "Statement", "StatementRegistry",
           "ClientStatements"]

#: Per-client cap on the number of named statements.
DEFAULT_MAX_CLIENT_STATEMENTS = 1000
#: Per-client cap on the total size of their query texts (bytes).
DEFAULT_MAX_CLIENT_STATEMENT_BYTES = 8 * 1024 * 1024

_pack_i32 = struct.Struct("!i").pack


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
        server closes its unused ones before its next use (:meth:`gateway.prepared.Rewriter._sweep`)."""
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
            for o in sorted(same, key=_by_name):  # (in a set order would depend on addresses)
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


def _by_name(st: Statement) -> bytes:
    return st.name


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
