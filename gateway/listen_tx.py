"""Transaction control seen by a listening session, sans-I/O (issue 13).

A LISTEN/UNLISTEN the gateway answers inside a transaction is kept pending
until COMMIT (:mod:`gateway.listen_session`).  Postgres also undoes the ones
issued after a savepoint on ``ROLLBACK TO SAVEPOINT`` and keeps them on
``RELEASE``; it refuses ``PREPARE TRANSACTION`` after them.  The server's
replies only say ``SAVEPOINT`` / ``RELEASE`` / ``ROLLBACK`` (also the tag of
``ROLLBACK TO``), so :class:`TxWatch` reads the client's statements that go to
the server while a transaction has pending actions, and matches them, in
order, with the CommandComplete tags that come back:

* :func:`split_statements` splits a query text on ``;`` outside strings,
  quoted identifiers, dollar quotes and comments;
* :func:`tx_op` classifies one statement: ``("sp", name)`` SAVEPOINT,
  ``("rel", name)`` RELEASE, ``("to", name)`` ROLLBACK TO, ``("prep", None)``
  PREPARE TRANSACTION, ``("x", None)`` any other statement whose tag is
  transaction control (BEGIN, COMMIT, ROLLBACK...), None otherwise;
* :class:`TxWatch` keeps one group of ops per Query / Sync (each answered by
  one ReadyForQuery; an error skips the rest of its group) and the savepoint
  stack as (name, number of pending actions when it was set).

Savepoints set before the session's first pending action are not known; they
are, by construction, before every pending action, so rolling back to an
unknown name undoes them all (and releasing one releases every known one).
"""

from __future__ import annotations

import re
from collections import deque

from .listen_core import _IDENT, _WS, ident

_Q, _P, _B, _E, _S = 81, 80, 66, 69, 83

Op = tuple[str, "str | None"]

#: CommandComplete tags of transaction-control statements (what :func:`tx_op` returns an op for)
TX_TAGS = frozenset((b"BEGIN", b"START TRANSACTION", b"COMMIT", b"ROLLBACK", b"SAVEPOINT", b"RELEASE",
                     b"PREPARE TRANSACTION"))
#: the op kinds each tag may answer
_FITS = {b"SAVEPOINT": ("sp",), b"RELEASE": ("rel",), b"ROLLBACK": ("to", "x", "prep"),
         b"COMMIT": ("x",), b"BEGIN": ("x",), b"START TRANSACTION": ("x",), b"PREPARE TRANSACTION": ("prep",)}


_SPECIAL = re.compile(rb"['\";$]|--|/\*")
_DOLLAR = re.compile(rb"\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_IDCHAR = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_$")
_E_STRING = re.compile(rb"(?s)'(?:[^'\\]|\\.|'')*'?")
_STRING = re.compile(rb"(?s)'(?:[^']|'')*'?")
_QUOTED = re.compile(rb'(?s)"(?:[^"]|"")*"?')
_W = _WS + rb"+"
_NOT_PREPARED = rb"(?!" + _WS + rb"*prepared\b)"
_OP = re.compile(
    rb"(?is)" + _WS + rb"*(?:"
    rb"(?:begin|start)\b"
    rb"|(?:commit|end)\b" + _NOT_PREPARED +
    rb"|(?:rollback|abort)\b" + _NOT_PREPARED + rb"(?:" + _W + rb"(?:work|transaction)\b)?"
    rb"(?:" + _W + rb"to(?:" + _W + rb"savepoint)?" + _W + rb"(" + _IDENT + rb"))?"
    rb"|savepoint" + _W + rb"(" + _IDENT + rb")"
    rb"|release(?:" + _W + rb"savepoint(?=" + _W + rb"\S))?" + _W + rb"(" + _IDENT + rb")"
    rb"|(prepare)" + _W + rb"transaction\b"
    rb")")


def split_statements(text: bytes) -> list[bytes]:
    """The statements of a query text (``;`` outside quotes, dollar quotes and comments)."""
    out: list[bytes] = []
    start = i = 0
    n = len(text)
    while True:
        mt = _SPECIAL.search(text, i)
        if mt is None:
            break
        j = mt.start()
        tok = mt.group()
        if tok == b";":
            out.append(text[start:j])
            start = i = j + 1
        elif tok == b"--":
            k = text.find(b"\n", j)
            i = n if k < 0 else k + 1
        elif tok == b"/*":  # nested, as in Postgres
            i = j + _start(text[j:])
        elif tok == b"'":
            e_str = j > 0 and text[j - 1] in b"eE" and (j < 2 or text[j - 2] not in _IDCHAR)
            i = (_E_STRING if e_str else _STRING).match(text, j).end()  # type: ignore[union-attr]
        elif tok == b'"':
            i = _QUOTED.match(text, j).end()  # type: ignore[union-attr]
        else:  # '$': a dollar quote unless part of an identifier or a $n parameter
            d = _DOLLAR.match(text, j)
            if d is None or (j > 0 and text[j - 1] in _IDCHAR):
                i = j + 1
            else:
                k = text.find(d.group(), d.end())
                i = n if k < 0 else k + len(d.group())
    out.append(text[start:])
    return out


def _start(stmt: bytes) -> int:
    """Where the statement's first word is (after blanks and comments, nested ones too)."""
    i, n = 0, len(stmt)
    while i < n:
        c = stmt[i]
        if c in b" \t\r\n\f\v":
            i += 1
        elif stmt.startswith(b"--", i):
            k = stmt.find(b"\n", i)
            i = n if k < 0 else k + 1
        elif stmt.startswith(b"/*", i):
            depth, i = 1, i + 2
            while depth:
                a, b = stmt.find(b"/*", i), stmt.find(b"*/", i)
                if b < 0:
                    return n
                depth, i = (depth + 1, a + 2) if 0 <= a < b else (depth - 1, b + 2)
        else:
            break
    return i


def tx_op(stmt: bytes) -> Op | None:
    """The transaction-control op of one statement (module docstring), or None."""
    mt = _OP.match(stmt, _start(stmt))
    if mt is None:
        return None
    if mt.group(2):
        return ("sp", ident(mt.group(2)))
    if mt.group(3):
        return ("rel", ident(mt.group(3)))
    if mt.group(1):
        return ("to", ident(mt.group(1)))
    if mt.group(4):
        return ("prep", None)
    return ("x", None)


def ops_of(text: bytes) -> list[Op]:
    if not any(k in text.lower() for k in (b"begin", b"start", b"commit", b"end", b"rollback", b"abort",
                                           b"savepoint", b"release", b"prepare")):
        return []
    return [op for op in map(tx_op, split_statements(text)) if op is not None]


class TxWatch:
    """Client statements in flight matched with their replies, and savepoints."""

    __slots__ = ("groups", "cur", "stmts", "portals", "saves")

    def __init__(self) -> None:
        #: per Query / Sync still to be answered: its transaction-control ops, in order
        self.groups: deque[deque[Op]] = deque()
        self.cur: list[Op] = []  # ops of the extended-protocol messages since the last Sync
        self.stmts: dict[bytes, list[Op]] = {}  # extended protocol: statement / portal -> ops
        self.portals: dict[bytes, list[Op]] = {}
        #: savepoints: (name, number of pending actions when it was set), oldest first
        self.saves: list[tuple[str | None, int]] = []

    def client(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> None:
        """Client messages going to the server."""
        for t, st, e in idx:
            if t == _Q:
                self.groups.append(deque(ops_of(chunk[st:e - 1])))
            elif t == _S:
                self.groups.append(deque(self.cur))
                self.cur = []
            elif t in (_P, _B, _E):
                j = chunk.find(b"\x00", st, e)
                if j < 0:
                    continue
                name = chunk[st:j]
                if t == _P:
                    k = chunk.find(b"\x00", j + 1, e)
                    ops = ops_of(chunk[j + 1:k]) if k > 0 else []
                    if ops:
                        self.stmts[name] = ops
                    else:
                        self.stmts.pop(name, None)
                elif t == _B:
                    k = chunk.find(b"\x00", j + 1, e)
                    ops = self.stmts.get(chunk[j + 1:k], []) if k > 0 else []
                    if ops:
                        self.portals[name] = ops
                    else:
                        self.portals.pop(name, None)
                else:
                    self.cur += self.portals.get(name, ())

    def op(self, tag: bytes) -> Op | None:
        """The client statement a transaction-control CommandComplete answers."""
        g = self.groups[0] if self.groups else None
        if not g:
            return None
        op = g.popleft()
        if op[0] not in _FITS.get(tag, ()):  # not what we expected (a statement we could not read)
            g.clear()
            return None
        return op

    def ready(self) -> None:
        """A ReadyForQuery: its group is answered (or was skipped after an error)."""
        if self.groups:
            self.groups.popleft()

    def savepoint(self, name: str | None, pos: int) -> None:
        self.saves.append((name, pos))

    def _find(self, name: str | None) -> int:
        for i in range(len(self.saves) - 1, -1, -1):
            if self.saves[i][0] == name:
                return i
        return -1

    def release(self, name: str | None) -> None:
        """RELEASE: that savepoint and the later ones go (their actions stay)."""
        del self.saves[max(self._find(name), 0):]

    def rollback_to(self, name: str | None) -> int:
        """ROLLBACK TO: the number of pending actions to keep (the savepoint stays)."""
        i = self._find(name)
        if i < 0:  # set before any pending action
            self.saves.clear()
            return 0
        del self.saves[i + 1:]
        return self.saves[i][1]

    def end(self) -> None:
        """The transaction ended (ReadyForQuery ``I``): no savepoints left."""
        self.saves.clear()
        if not self.groups:
            self.cur = []
            self.stmts.clear()
            self.portals.clear()
