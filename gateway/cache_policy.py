"""What the result cache may cache, under which key, for how long (sans-I/O).

- :func:`parse_hint` / :func:`parse_header`: the hint comment
  ``/* wirepool:cache ttl=60 swr=30 tags=quotes,authors */`` anywhere in a
  statement's text, and ``/sql``'s ``Wirepool-Cache: ttl=60, swr=30,
  tags=quotes`` request header.
- :func:`unit_of`: is a framed client chunk exactly one cacheable unit -- a
  simple Query, or an extended-protocol ``[Parse] Bind [Describe portal]
  Execute Sync`` of the unnamed statement (or, without Parse, of a named
  statement the client prepared earlier)?  Returns its parts, else None.
- :func:`read_only`: may a statement text be cached at all (one SELECT /
  WITH / VALUES / TABLE statement that neither writes nor locks), and the
  function names it calls; :class:`Volatility` says, from ``pg_proc``, whether
  they are all IMMUTABLE (``"auto"`` mode caches nothing else; unknown names
  and views are "not certain": not cached).
- :func:`replay`: the reply to a unit built from a stored entry, exactly as
  Postgres would send it (ParseComplete, BindComplete, RowDescription,
  DataRows, CommandComplete, ReadyForQuery ``I``).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from typing import Hashable

from driver.protocol import messages as m

_Q, _P, _B, _D, _E, _S, _H = 81, 80, 66, 68, 69, 83, 72
#: extended-protocol units: [Parse] Bind [Describe portal] Execute [Flush] Sync
_SHAPES = frozenset({b"PBES", b"PBDES", b"BES", b"BDES", b"PBEHS", b"PBDEHS", b"BEHS", b"BDEHS"})

PARSE_COMPLETE = b"1\x00\x00\x00\x04"
BIND_COMPLETE = b"2\x00\x00\x00\x04"
RFQ_IDLE = m.ready_for_query("I")

MAX_TTL = 86400.0 * 365


@dataclass(frozen=True)
class Hint:
    ttl: float | None = None
    swr: float | None = None
    tags: tuple[str, ...] = ()


_HINT = re.compile(rb"/\*\s*wirepool:cache\b(.*?)\*/", re.S | re.I)
_TAG_OK = re.compile(r"^[A-Za-z0-9_.:\-/]{1,128}$")


def _fields(pairs: list[tuple[str, str]]) -> Hint | None:
    ttl = swr = None
    tags: list[str] = []
    for k, v in pairs:
        k = k.strip().lower()
        v = v.strip()
        if k in ("ttl", "swr"):
            try:
                x = float(v)
            except ValueError:
                return None
            if not (0 <= x <= MAX_TTL):  # also rejects nan
                return None
            if k == "ttl":
                ttl = x
            else:
                swr = x
        elif k == "tags":
            for t in re.split(r"[,\s]+", v):
                if t:
                    if not _TAG_OK.match(t):
                        return None
                    tags.append(t)
        else:
            return None
    return Hint(ttl, swr, tuple(dict.fromkeys(tags)))


def parse_hint(sql: bytes) -> Hint | None:
    """The hint comment in a statement text, or None (none, or malformed:
    a malformed hint caches nothing)."""
    if b"wirepool:cache" not in sql and b"WIREPOOL:CACHE" not in sql.upper():
        return None
    mt = _HINT.search(sql)
    if mt is None:
        return None
    try:
        body = mt.group(1).decode("ascii")
    except UnicodeDecodeError:
        return None
    pairs = []
    for word in re.findall(r"[A-Za-z]+\s*=\s*[^\s=]*(?:\s*,\s*[^\s=,]+)*", body):
        k, _, v = word.partition("=")
        pairs.append((k, v))
    rest = re.sub(r"[A-Za-z]+\s*=\s*[^\s=]*(?:\s*,\s*[^\s=,]+)*", "", body).strip()
    if rest:
        return None
    return _fields(pairs)


def parse_header(value: str) -> Hint | None:
    """``ttl=60, swr=30, tags=quotes,authors`` (a comma-separated part without
    ``=`` continues the tags).  None when malformed."""
    pairs: list[tuple[str, str]] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" in part:
            k, _, v = part.partition("=")
            pairs.append((k, v))
        elif pairs and pairs[-1][0].strip().lower() == "tags":
            pairs[-1] = (pairs[-1][0], pairs[-1][1] + "," + part)
        else:
            return None
    return _fields(pairs) if pairs else None


def hint_comment(h: Hint) -> str:
    """A hint as a comment to put in front of a statement (for the /sql header)."""
    parts = []
    if h.ttl is not None:
        parts.append(f"ttl={h.ttl:g}")
    if h.swr is not None:
        parts.append(f"swr={h.swr:g}")
    if h.tags:
        parts.append("tags=" + ",".join(h.tags))
    return "/* wirepool:cache " + " ".join(parts) + " */ "


# ---------------------------------------------------------------- units

@dataclass(frozen=True)
class Unit:
    """One cacheable client unit."""

    #: message types in order, e.g. b"Q", b"PBDES", b"BES"
    shape: bytes
    #: the statement: a Query's text, or the Parse tail (text NUL + parameter type OIDs)
    text: bytes
    #: named statement (Bind without Parse): its client name, else b""
    stmt: bytes
    #: the Bind body after portal and statement names (formats, values, result formats)
    bind: bytes
    #: the Execute body (portal name, row limit: a reply cut by the limit is not cached)
    exe: bytes = b""
    #: a named Parse in the unit (node-postgres ``{name: ...}``): the statement name it creates
    pname: bytes = b""


def _cstr(chunk: bytes, pos: int, end: int) -> int:
    i = chunk.find(b"\x00", pos, end)
    return -1 if i < 0 else i


def unit_of(chunk: bytes, idx: list[tuple[int, int, int]]) -> Unit | None:
    """The chunk as one cacheable unit, else None (headers only, no decoding
    of values).  The unnamed portal; a Parse of the unnamed statement, or of a
    named one that the unit's Bind then uses (``pname``)."""
    n = len(idx)
    if n == 1:
        t, s, e = idx[0]
        if t != _Q or e - s < 2 or chunk[e - 1] != 0:
            return None
        return Unit(b"Q", chunk[s:e - 1], b"", b"")
    if n < 3 or n > 6 or idx[-1][0] != _S:
        return None
    shape = bytes(t for t, _s, _e in idx)
    if shape not in _SHAPES:
        return None
    if shape[-2] == _H:  # node-postgres: Flush before Sync (no reply of its own)
        idx = idx[:-2] + idx[-1:]
    text = pname = b""
    i = 0
    if shape[0] == _P:
        _t, s, e = idx[0]
        ne = _cstr(chunk, s, e)
        if ne < 0:
            return None
        pname = chunk[s:ne]  # a named Parse: the caller registers the name on a hit
        text = chunk[ne + 1:e]
        if _cstr(chunk, ne + 1, e) < 0:
            return None
        i = 1
    _t, s, e = idx[i]  # Bind: portal, statement, then the rest
    j = _cstr(chunk, s, e)
    if j != s:  # a named portal
        return None
    k = _cstr(chunk, j + 1, e)
    if k < 0:
        return None
    stmt = chunk[j + 1:k]
    if shape[0] == _P:
        if stmt != pname:  # Bind of another statement than the one just parsed
            return None
        stmt = b""
    if shape[0] == _B and not stmt:  # the unnamed statement of an earlier segment
        return None
    bind = chunk[k + 1:e]
    if b"D" in shape:
        _t, s, e = idx[i + 1]
        if e - s != 2 or chunk[s] != 80 or chunk[s + 1] != 0:  # Describe 'P' ""
            return None
    _t, s, e = idx[-2]  # Execute of the unnamed portal
    if e - s != 5 or chunk[s] != 0:
        return None
    if idx[-1][2] - idx[-1][1] != 0:
        return None
    return Unit(shape, text, stmt, bind, chunk[s:e], pname)


#: proper prefixes of the extended-protocol shapes (a unit arriving in several reads)
_PREFIXES = frozenset(sh[:i] for sh in _SHAPES for i in range(1, len(sh)) if sh[i - 1] != _H)
#: a whole unit but its Sync, ending in Flush (node-postgres writes ... Execute, Flush, Sync)
_FLUSHED = frozenset(sh[:-1] for sh in _SHAPES if sh[-2] == _H)
NOT_PREFIX, PREFIX, PREFIX_FLUSHED = 0, 1, 2


def unit_prefix(types: bytes) -> int:
    """Could message types ``types`` (no Sync yet) be the start of a unit?
    ``PREFIX_FLUSHED``: all of it but the Sync, after a Flush -- the client may
    also be waiting for the output the Flush asks for (a cursor), so only a
    short wait for the Sync is allowed."""
    if types in _PREFIXES:
        return PREFIX
    return PREFIX_FLUSHED if types in _FLUSHED else NOT_PREFIX


def sql_of(text: bytes, shape: bytes) -> bytes:
    """The SQL of a unit's text (a Parse tail ends at its NUL)."""
    if shape == b"Q":
        return text
    i = text.find(b"\x00")
    return text if i < 0 else text[:i]


def _replay_parts(shape: bytes) -> tuple[bytes, bool]:
    head = b"".join(PARSE_COMPLETE if t == _P else BIND_COMPLETE for t in shape if t in (_P, _B))
    return head, _D in shape


_REPLAY = {sh: _replay_parts(sh) for sh in _SHAPES}


def replay(shape: bytes, rowdesc: bytes, body: bytes) -> bytes:
    """The server's reply to ``shape`` from a stored result: ParseComplete and
    BindComplete as the unit asks, the RowDescription for a Describe, the rows
    and CommandComplete, ReadyForQuery ``I``."""
    if shape == b"Q":
        return rowdesc + body + RFQ_IDLE
    got = _REPLAY.get(shape)
    head, desc = got if got is not None else _replay_parts(shape)
    return b"".join((head, rowdesc, body, RFQ_IDLE) if desc else (head, body, RFQ_IDLE))


def refresh_batch(shape: bytes, text: bytes, bind: bytes, exe: bytes = b"\x00\x00\x00\x00\x00") -> bytes:
    """Frontend messages that re-run a unit on any server: the Query itself,
    or an unnamed Parse of the statement + Bind + Describe + Execute + Sync."""
    if shape == b"Q":
        return _msg(b"Q", text + b"\x00")
    return (_msg(b"P", b"\x00" + text) + _msg(b"B", b"\x00\x00" + bind) + _msg(b"D", b"P\x00")
            + _msg(b"E", exe) + m.SYNC)


def _msg(t: bytes, body: bytes) -> bytes:
    return t + struct.pack("!I", len(body) + 4) + body


# ---------------------------------------------------------------- read-only + volatility

_STRIP = re.compile(r"""'(?:[^']|'')*'|"(?:[^"]|"")*"|--[^\n]*|/\*.*?\*/|\$([A-Za-z_]\w*|)\$.*?\$\1\$""", re.S)
_FIRST = frozenset({"select", "with", "values", "table"})
_WRITES = frozenset({"insert", "update", "delete", "merge", "into", "for", "lock", "copy", "call",
                     "execute", "notify", "listen", "set", "do", "prepare", "create", "alter", "drop",
                     "truncate", "grant", "revoke", "vacuum", "analyze", "refresh", "discard", "reset"})
#: time and transaction dependent SQL value functions (no parentheses)
_TIME = frozenset({"current_timestamp", "current_time", "current_date", "localtime", "localtimestamp",
                   "current_catalog", "current_schema"})
#: words followed by "(" that are SQL syntax, not functions in pg_proc
_SYNTAX = frozenset({"in", "exists", "any", "all", "some", "values", "as", "cast", "coalesce", "nullif",
                     "greatest", "least", "row", "array", "over", "filter", "within", "from", "join", "using",
                     "on", "where", "and", "or", "not", "select", "lateral", "case", "when", "then", "else",
                     "is", "distinct", "by", "partition", "group", "order", "having", "limit", "offset",
                     "union", "intersect", "except", "with", "recursive", "materialized", "cube", "rollup",
                     "grouping", "sets", "like", "ilike", "similar", "between", "end", "table", "returning",
                     "fetch", "only", "nulls", "asc", "desc", "escape", "at", "zone", "interval", "varchar",
                     "char", "character", "numeric", "decimal", "time", "timestamp", "bit", "varying",
                     "precision", "float", "unnest", "rows", "range", "groups", "xmlelement", "json", "jsonb",
                     "overlay", "position", "substring", "trim", "extract", "collate"})
_WORD = re.compile(r'"(?:[^"]|"")*"|[A-Za-z_][A-Za-z0-9_$]*|\S')


@dataclass(frozen=True)
class ReadOnly:
    """A statement the cache may consider: its called function names
    (``schema.name`` or ``name``, lower case unless quoted) and identifiers."""

    functions: frozenset[str]
    words: frozenset[str]
    #: names in relation position (after FROM / JOIN / TABLE, or a comma of a FROM list),
    #: as the bare relation name (``s.t`` -> ``t``): the entry's tags in "auto" mode
    relations: frozenset[str] = frozenset()
    #: names the statement defines with ``WITH name AS (...)`` (not tables)
    ctes: frozenset[str] = frozenset()


def read_only(sql: bytes) -> ReadOnly | None:
    """One statement that only reads (SELECT/WITH/VALUES/TABLE without any
    writing CTE, INTO, locking clause or time function), else None."""
    try:
        text = sql.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if re.search(r"(?i)\be'|\bu&", text):  # escape-string / Unicode literals: not tokenized here
        return None
    stripped = _STRIP.sub(lambda mt: " " if not mt.group(0).startswith('"') else mt.group(0), text)
    toks = _WORD.findall(stripped)
    # trailing semicolons only
    while toks and toks[-1] == ";":
        toks.pop()
    if not toks or ";" in toks:
        return None
    if re.search(r"\$(?!\d)", stripped):  # parameters ($1) are fine; any other "$" is not certain
        return None
    first = toks[0].lower()
    if first not in _FIRST:
        return None
    funcs: set[str] = set()
    words: set[str] = set()
    n = len(toks)
    rels, ctes = _relations(toks)
    for i, tok in enumerate(toks):
        if tok[0] == '"':
            word = tok[1:-1].replace('""', '"')
        elif tok[0].isalpha() or tok[0] == "_":
            word = tok.lower()
            if word in _WRITES or word in _TIME:
                return None
        else:
            continue
        words.add(word)
        if i + 1 < n and toks[i + 1] == "(":
            if i >= 2 and toks[i - 1] == ".":
                prev = toks[i - 2]
                schema = prev[1:-1].replace('""', '"') if prev[0] == '"' else prev.lower()
                funcs.add(f"{schema}.{word}")
            elif word not in _SYNTAX or tok[0] == '"':
                funcs.add(word)
    return ReadOnly(frozenset(funcs), frozenset(words), frozenset(rels), frozenset(ctes))


#: clause keywords: the clause a comma belongs to (JOIN / ON / USING stay in FROM)
_CLAUSES = frozenset({"select", "from", "where", "group", "having", "order", "limit", "offset", "window",
                      "union", "intersect", "except", "returning", "values", "fetch", "with"})
#: functions whose argument syntax has a FROM of its own
_FROM_FUNCS = frozenset({"extract", "substring", "trim", "overlay", "position", "normalize"})


def _ident(tok: str) -> str | None:
    if tok[0] == '"':
        return tok[1:-1].replace('""', '"')
    if tok[0].isalpha() or tok[0] == "_":
        return tok.lower()
    return None


def _relations(toks: list[str]) -> tuple[set[str], set[str]]:
    """Names in relation position (tokens of :func:`read_only`), and CTE names."""
    rels: set[str] = set()
    ctes: set[str] = set()
    clause: list[str | None] = [None]  # per parenthesis depth
    expect = False  # the next name is a relation (or a function call: FROM f(...))
    n = len(toks)
    i = 0
    while i < n:
        tok = toks[i]
        low = tok.lower() if tok[0] != '"' else tok
        if tok == "(":
            prev = toks[i - 1].lower() if i else ""
            clause.append("fn" if prev in _FROM_FUNCS else None)
            expect = low == "(" and i + 1 < n and toks[i + 1].lower() == "table"
            i += 1
            continue
        if tok == ")":
            if len(clause) > 1:
                clause.pop()
            expect = False
            i += 1
            continue
        if low == "table" and (i == 0 or toks[i - 1] == "("):
            expect = True
            i += 1
            continue
        name = _ident(tok)
        if expect and name is not None and low not in ("only", "lateral"):
            j = i
            while j + 2 < n and toks[j + 1] == "." and _ident(toks[j + 2]) is not None:
                j += 2
            if not (j + 1 < n and toks[j + 1] == "("):  # FROM f(...): a function (checked elsewhere)
                rels.add(_ident(toks[j]) or "")
            expect = False
            i = j + 1
            continue
        if name is not None and tok[0] != '"':
            if low == "from":
                fn = clause[-1] == "fn"
                distinct = i >= 2 and toks[i - 1].lower() == "distinct" and (
                    toks[i - 2].lower() == "is" or (i >= 3 and toks[i - 2].lower() == "not"
                                                    and toks[i - 3].lower() == "is"))
                if not fn and not distinct:
                    clause[-1] = "from"
                    expect = True
                i += 1
                continue
            if low == "join" and clause[-1] == "from":
                expect = True
            elif low in _CLAUSES:
                clause[-1] = low
            if i + 2 < n and toks[i + 1].lower() == "as" and toks[i + 2].lower() in ("(", "materialized", "not"):
                ctes.add(name)
        elif tok == "," and clause[-1] == "from":
            expect = True
        elif expect and low not in ("only", "lateral"):
            expect = False
        i += 1
    return rels, ctes


#: catalog query: every function name (bare and schema-qualified) with whether all of
#: its overloads are IMMUTABLE, and the names of views (whose bodies are not looked at)
CATALOG_SQL = (
    "SELECT p.proname, bool_and(p.provolatile = 'i')::text FROM pg_catalog.pg_proc p GROUP BY 1"
    " UNION ALL SELECT n.nspname || '.' || p.proname, bool_and(p.provolatile = 'i')::text"
    " FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace GROUP BY 1"
    " UNION ALL SELECT '~view:' || c.relname, 'false' FROM pg_catalog.pg_class c"
    " WHERE c.relkind IN ('v', 'm', 'f') GROUP BY 1"
    " UNION ALL SELECT '~table:' || c.relname, 'false' FROM pg_catalog.pg_class c"
    " WHERE c.relkind IN ('r', 'p') GROUP BY 1"
)


class Volatility:
    """One upstream database's catalog answer (:data:`CATALOG_SQL`)."""

    __slots__ = ("immutable", "known", "views", "tables", "epoch")

    def __init__(self, rows: list[tuple[str, str]], epoch: int) -> None:
        self.immutable: set[str] = set()
        self.known: set[str] = set()
        self.views: set[str] = set()
        self.tables: set[str] = set()
        self.epoch = epoch
        for name, flag in rows:
            if name.startswith("~view:"):
                self.views.add(name[6:])
                continue
            if name.startswith("~table:"):
                self.tables.add(name[7:])
                continue
            self.known.add(name)
            if flag == "true":
                self.immutable.add(name)

    def certain(self, ro: ReadOnly) -> bool:
        """Every function called is known and IMMUTABLE, no view is named, and
        every name in relation position is a table (or the statement's CTE):
        so the relation names are the complete set of tags."""
        for f in ro.functions:
            if f not in self.immutable:
                return False
        for w in ro.words:
            if w in self.views:
                return False
        for r in ro.relations:
            if r not in self.tables and r not in ro.ctes:
                return False
        return True


# ---------------------------------------------------------------- keys

def cache_key(dbname: str, role: str, user: str, unit: Unit, statement: bytes,
              sig: tuple[str | None, ...], settings: dict[str, str]) -> Hashable:
    """Everything that can change the bytes of a result: the database and
    upstream role, the client identity, the statement (Parse tail: text and
    parameter types), the Bind (parameter formats and values, result formats),
    whether the reply has a RowDescription (a Describe; Parse and Flush do not
    matter: one entry serves a statement's first use and its later Bind-only
    uses), the tracked parameters and every session setting."""
    shape = b"Q" if unit.shape == b"Q" else b"ED" if _D in unit.shape else b"E"  # what the reply holds
    return (dbname, role, user, shape, statement, unit.bind, unit.exe, sig,
            tuple(sorted(settings.items())) if settings else ())
