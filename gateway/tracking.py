"""Session state in transaction mode: what a client left on a server, and what
it expects to find on the next one.  Sans-I/O.

Detection is two-stage so that the hot path stays a single C-level scan:

1. :func:`hint` -- one case-insensitive regex search over the whole framed
   client chunk (message headers and Bind values included; false positives
   only cost stage 2).
2. :meth:`Tracker.scan` -- only when stage 1 hits: the text of each Query and
   Parse is matched against :data:`_STMT` (a SET/RESET that is not LOCAL,
   ``set_config``, PREPARE, LISTEN, DECLARE ... WITH HOLD, DO, DISCARD, temp
   objects, session-level advisory locks).  A ParameterStatus for a
   parameter the gateway does not track (e.g. ``default_transaction_read_only``)
   counts too (:meth:`Tracker.reported`).

A hit marks the transaction: when it ends, the gateway asks the server what
is really there (:data:`PROBE`, one round trip, only for marked transactions):
every parameter whose source is ``session`` with its current value, and
whether temp objects, session advisory locks, SQL prepared statements,
WITH HOLD cursors or LISTEN registrations exist.  Asking instead of parsing
values gets Postgres's semantics for free: ``SET LOCAL``, a SET in a
transaction that rolled back, ``set_config(..., true)``, parameters bound
with ``$1`` and expressions all end up as Postgres says they do.

The answer (:func:`parse_probe`) gives the client's settings (re-applied on
any other server it lands on: :func:`apply_sql`) and the cheapest cleanup of
the server (:func:`cleanup`).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field

#: stage 1: words worth a closer look (a DO block is seen by the SET it contains)
_WORDS = (b"set", b"temp", b"advisory", b"prepare", b"hold", b"listen", b"discard")

#: stage 2, on one statement text (bytes)
_STMT = re.compile(
    rb"(?is)(?:^|;)\s*(?:(?:/\*.*?\*/|--[^\n]*\n)\s*)*"
    rb"(?:set\s+(?!local\b)|reset\b|prepare\b|listen\b|declare\b[^;]*\bwith\s+hold\b|do\b|discard\b)"
    rb"|set_config|\btemp(?:orary)?\s+(?:table|view|sequence|recursive)\b|\bpg_temp\b"
    rb"|advisory_lock|\binto\s+temp(?:orary)?\b"
)

#: ParameterStatus names the gateway tracks itself (lower case, as pg_settings spells them)
TRACKED_LOWER = frozenset({"client_encoding", "datestyle", "intervalstyle", "timezone",
                           "standard_conforming_strings", "application_name"})

_Q, _P, _B = 81, 80, 66
_MAX_NAMES = 1024

#: Custom (dotted) parameter names in SET/RESET/set_config: pg_settings does not list them.
_CUSTOM = re.compile(
    rb"(?is)(?:(?:^|;)\s*(?:set\s+(?:session\s+)?|reset\s+)|set_config\s*\(\s*')"
    rb"([a-z_][a-z0-9_$]*\.[a-z0-9_$.]+)")

#: One query, one row per session parameter plus five flag rows (names start with '~').
PROBE = (
    "SELECT name, pg_catalog.current_setting(name) FROM pg_catalog.pg_settings WHERE source = 'session'"
    " UNION ALL SELECT '~temp', (EXISTS (SELECT 1 FROM pg_catalog.pg_class"
    " WHERE relnamespace = pg_catalog.pg_my_temp_schema()))::text"
    " UNION ALL SELECT '~locks', (EXISTS (SELECT 1 FROM pg_catalog.pg_locks WHERE locktype = 'advisory'"
    " AND pid = pg_catalog.pg_backend_pid()))::text"
    " UNION ALL SELECT '~prepared', pg_catalog.string_agg(pg_catalog.quote_ident(name), ', ')"
    " FROM pg_catalog.pg_prepared_statements WHERE from_sql"
    " UNION ALL SELECT '~cursors', (EXISTS (SELECT 1 FROM pg_catalog.pg_cursors WHERE is_holdable))::text"
    " UNION ALL SELECT '~listen', (EXISTS (SELECT 1 FROM pg_catalog.pg_listening_channels()))::text"
)


def probe_sql(custom: "set[str] | frozenset[str]" = frozenset()) -> str:
    """:data:`PROBE`, plus the current values of the custom parameters named."""
    if not custom:
        return PROBE
    extra = "".join(f" UNION ALL SELECT {quote_literal(n)}, pg_catalog.current_setting({quote_literal(n)}, true)"
                    for n in sorted(custom))
    return PROBE + extra


_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")


def hint(chunk: bytes) -> bool:
    """Stage 1 (hot path): may these bytes change session state?  Plain
    substring searches of the lower-cased bytes (faster than a regex)."""
    low = chunk.lower()
    return (b"set" in low or b"temp" in low or b"advisory" in low or b"prepare" in low
            or b"hold" in low or b"listen" in low or b"discard" in low)


def parse_name_end(chunk: bytes, s: int, e: int) -> int:
    """End of the statement name of a Parse body ``chunk[s:e]`` (its NUL), or
    ``e`` when the body has none (malformed: Postgres rejects it with 08P01)."""
    i = chunk.find(b"\x00", s, e)
    return e if i < 0 else i


def parse_parts(chunk: bytes, s: int, e: int) -> tuple[int, bytes]:
    """(end of the statement name, SQL text) of a Parse body ``chunk[s:e]``
    (never reads past the message: a malformed body gives ``(e, b"")`` or what it holds)."""
    i = chunk.find(b"\x00", s, e)
    if i < 0:
        return e, b""
    j = chunk.find(b"\x00", i + 1, e)
    return i, chunk[i + 1:e if j < 0 else j]


def statement_text(chunk: bytes, t: int, s: int, e: int) -> bytes:
    """The SQL text of a Query or Parse message body ``chunk[s:e]`` (never
    reads past the message: a malformed body gives what it holds)."""
    if t == _Q:
        return chunk[s:e - 1]
    return parse_parts(chunk, s, e)[1]


def stateful(sql: bytes) -> bool:
    """Stage 2: does this statement text possibly leave session state behind?"""
    return _STMT.search(sql) is not None


#: statement text -> verdict (both stages), for texts seen before: clients repeat theirs
_SEEN: dict[bytes, bool] = {}
_SEEN_MAX = 4096


def _verdict(sql: bytes, misses: bool = False) -> bool:
    """Both stages for a text not in :data:`_SEEN`.  Only texts that pass
    stage 1 are remembered: for the others stage 1 is as cheap as the
    lookup, and a stream of distinct texts (literals inlined, ``pgbench -S``)
    would only churn the dict -- except with ``misses`` (a Parse's text: its
    values come as parameters, so clients send the same texts again, and
    ``pgbench -M extended`` parses one per transaction)."""
    if not hint(sql):
        if misses and len(sql) <= 4096:
            if len(_SEEN) >= _SEEN_MAX:
                _SEEN.clear()
            _SEEN[sql] = False
        return False
    hit = stateful(sql)
    if len(sql) <= 4096:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        _SEEN[sql] = hit
    return hit


@dataclass
class ProbeResult:
    settings: dict[str, str] = field(default_factory=dict)
    temp: bool = False
    locks: bool = False
    prepared: str = ""  # quoted names, comma-separated
    cursors: bool = False
    listen: bool = False


def data_row_values(body: bytes) -> list[bytes | None]:
    """Text values of a DataRow body (the probe's answer)."""
    (n,) = struct.unpack_from("!h", body, 0)
    pos = 2
    out: list[bytes | None] = []
    for _ in range(n):
        (ln,) = struct.unpack_from("!i", body, pos)
        pos += 4
        if ln < 0:
            out.append(None)
        else:
            out.append(body[pos:pos + ln])
            pos += ln
    return out


def parse_probe(rows: list[bytes]) -> ProbeResult:
    """DataRow bodies of :data:`PROBE` -> what the server holds."""
    res = ProbeResult()
    for body in rows:
        vals = data_row_values(body)
        if len(vals) != 2 or vals[0] is None:
            continue
        name = vals[0].decode("utf-8", "replace")
        value = (vals[1] or b"").decode("utf-8", "replace")
        if name == "~temp":
            res.temp = value == "true"
        elif name == "~locks":
            res.locks = value == "true"
        elif name == "~prepared":
            res.prepared = value
        elif name == "~cursors":
            res.cursors = value == "true"
        elif name == "~listen":
            res.listen = value == "true"
        elif name.lower() not in TRACKED_LOWER and not name.startswith("transaction_"):
            if vals[1] is not None and (value or "." not in name):  # a custom one RESET is ''
                res.settings[name] = value
    return res


def cleanup(res: ProbeResult) -> tuple[list[str], list[str]]:
    """The cheapest statements that make the server safe for another client
    (each its own Query), as ``(now, later)``:

    - *now*, before the server goes back to the pool: session advisory locks
      (an idle pooled server must not block other servers' clients) and LISTEN
      registrations;
    - *later*, only when another client links the server (in the same write
      as that client's first message): temp objects, SQL prepared statements,
      WITH HOLD cursors -- the client that made them still finds them if it
      comes back to the same server first.

    Settings are not reset here: the next client's link re-applies its own
    (and RESETs the rest, :func:`apply_sql`)."""
    now, later = [], []
    if res.locks:
        now.append("SELECT pg_catalog.pg_advisory_unlock_all()")
    if res.listen:
        now.append("UNLISTEN *")
    if res.temp:
        later.append("DISCARD TEMP")
    if res.prepared:
        # only SQL-level PREPAREs: the gateway's protocol-level statements stay
        later.extend(f"DEALLOCATE {name}" for name in res.prepared.split(", "))
    if res.cursors:
        later.append("CLOSE ALL")
    return now, later


def quote_literal(value: str) -> str:
    if "\\" in value:
        return "E'" + value.replace("\\", "\\\\").replace("'", "''") + "'"
    return "'" + value.replace("'", "''") + "'"


def apply_sql(want: dict[str, str], have: dict[str, str]) -> list[str]:
    """Statements that turn a server's session settings ``have`` into the
    client's ``want`` (empty when equal).  Unknown-safe names only."""
    out = []
    sets = [f"pg_catalog.set_config({quote_literal(k)}, {quote_literal(v)}, false)"
            for k, v in want.items() if have.get(k) != v]
    if sets:
        out.append("SELECT " + ", ".join(sets))
    for k in have:
        if k not in want:
            out.append(f"RESET {k}" if _NAME.match(k) else f"RESET \"{k.replace(chr(34), chr(34) * 2)}\"")
    return out


_NONE: frozenset = frozenset()  # type: ignore[type-arg]  # shared by idle sessions until they need a set


class Tracker:
    """One client's session state (transaction mode)."""

    __slots__ = ("settings", "marked", "custom", "names", "all_binds")

    def __init__(self) -> None:
        #: the client's own session parameters (name -> current_setting value), re-applied on link
        self.settings: dict[str, str] = {}
        #: the current transaction may have left state behind: probe before release
        self.marked = False
        #: custom (dotted) parameter names the client touched (probed by name)
        self.custom: set[str] | frozenset[str] = _NONE  # (a set of its own at the first name)
        #: names of the client's prepared statements whose text is stateful: a Bind of
        #: one marks the transaction (a cached statement is executed without its text)
        self.names: set[bytes] | frozenset[bytes] = _NONE  # (a set of its own at the first name)
        self.all_binds = False  # too many such names: every Bind marks

    def watching(self) -> bool:
        """Must every chunk be scanned (stateful named statements exist)?"""
        return bool(self.names) or self.all_binds

    def look(self, chunk: bytes, idx: list[tuple[int, int, int]], texts: int, text: tuple[int, int]) -> None:
        """Hot path, per client chunk with SQL text or while the client has
        stateful named statements (``texts``: its Query/Parse count and
        ``text`` the body of the only one, from the accounting).  A text seen
        before costs one dict lookup (:data:`_SEEN`)."""
        if texts == 1:
            s, e = text
            if e > 0:
                sql = chunk[s:e - 1]
                hit = _SEEN.get(sql)
                if hit is None:
                    hit = _verdict(sql)
                if hit:
                    self._stateful(sql, chunk, _Q, s)
                if not self.names and not self.all_binds:
                    return
            else:
                e = -e  # a Parse: its end comes negated
                i, sql = parse_parts(chunk, s, e)  # (one scan for the name and the text)
                hit = _SEEN.get(sql)
                if hit is None:
                    hit = _verdict(sql, True)
                if hit:
                    self._stateful(sql, chunk, _P, s)
                elif self.names:  # (non-empty: a set of its own, not the shared frozenset)
                    self.names.discard(chunk[s:i])  # type: ignore[union-attr]
                if not self.names and not self.all_binds:
                    return
            self.scan(chunk, idx, binds_only=True)
        else:
            self.scan(chunk, idx)

    def _stateful(self, sql: bytes, chunk: bytes, t: int, s: int) -> None:
        self.marked = True
        if len(self.custom) < 256:
            for name in _CUSTOM.findall(sql):
                if type(self.custom) is not set:
                    self.custom = set()
                self.custom.add(name.decode("utf-8", "replace").lower())
        if t == _P:
            if len(self.names) < _MAX_NAMES:
                if type(self.names) is not set:
                    self.names = set()
                self.names.add(chunk[s:parse_name_end(chunk, s, len(chunk))])
            else:
                self.all_binds = True

    def scan(self, chunk: bytes, idx: list[tuple[int, int, int]], binds_only: bool = False) -> None:
        """Every Query/Parse text of a chunk (both stages), and Binds of the
        client's stateful named statements."""
        for t, s, e in idx:
            if (t == _Q or t == _P) and not binds_only:
                sql = statement_text(chunk, t, s, e)
                hit = _SEEN.get(sql)
                if hit is None:
                    hit = _verdict(sql)
                if hit:
                    self._stateful(sql, chunk, t, s)
                elif t == _P and self.names:
                    self.names.discard(chunk[s:chunk.index(b"\x00", s)])  # type: ignore[union-attr]  # reused
            elif t == _B and (self.names or self.all_binds):
                i = chunk.index(b"\x00", s) + 1  # portal name, then the statement name
                if self.all_binds or chunk[i:chunk.index(b"\x00", i)] in self.names:
                    self.marked = True

    def probe(self) -> str:
        return probe_sql(self.custom)

    def reported(self, name: str) -> None:
        """A ParameterStatus arrived while linked."""
        if name.lower() not in TRACKED_LOWER:
            self.marked = True

    def probed(self, res: ProbeResult) -> None:
        """The probe's answer.  ``marked`` was cleared when it was sent: a
        statement pipelined behind the probe marks the next transaction."""
        self.settings = res.settings
