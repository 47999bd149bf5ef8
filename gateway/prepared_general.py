"""The general loop of the prepared-statement rewriter (sans-I/O).

``GeneralRewrite._slow_frontend`` rewrites any client chunk message by
message -- Parse/Bind/Describe/Close/Execute/Sync/Query/Flush, the
client's names mapped to gateway names, missing statements created on the
server first, refusals answered in order -- and its helpers keep the
server's statement LRU.  :class:`gateway.prepared.Rewriter` inherits it and
takes its shortcuts (a plain segment, one known statement) before falling
back to it.  The design is in :mod:`gateway.prepared`'s docstring.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import ProtocolError

from .prepared_registry import (
    Statement,
)
from .prepared_replies import (
    _RSEG,
    _DATA,
    _E_EXEC,
    _E_R1,
    _E_RZ,
    _E_SYNC,
    _KIND,
    _PASS,
    _R1,
    _RDESC,
    _REPLACE,
    _REPLACE_42P05,
    _REXEC,
    _RSYN,
    _RZ,
    _SWALLOW,
    ReplyQueue,
)
from .prepared_server import ServerStatements

__all__ = ["FAIL_MESSAGE", "SCRATCH_NAME", "GeneralRewrite"]

_pack_i32 = struct.Struct("!i").pack

# frontend types
_P, _B, _D, _C, _E, _S, _Q, _F, _H = (ord(c) for c in "PBDCESQFH")

#: Sent in place of a message the gateway refuses (26000 unknown name, caps): it
#: fails on the server with 26000 -- no gateway or client statement has this
#: name -- so the server aborts the (implicit) transaction and skips to Sync
#: exactly as it would have for the refused message; the reply is replaced.
FAIL_MESSAGE = m.describe("S", "__wp_refused")
#: Statement name used to let the server judge a Parse the gateway would
#: otherwise answer itself (closed before every use).
SCRATCH_NAME = b"__wp_scratch"
_CLOSE_SCRATCH = m.close("S", SCRATCH_NAME.decode())


_DISCARD_RE = re.compile(rb"(?i)\b(?:discard\s+all|deallocate\s+(?:prepare\s+)?all)\b")


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


class GeneralRewrite(ReplyQueue):
    """The message-by-message client side of :class:`gateway.prepared.Rewriter`."""

    __slots__ = ()

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
                    if self._status != 69 and not any(x[_KIND] == _RZ or x[_KIND] == _RSEG for x in q):
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

    def _discard_all(self) -> None:
        """A DISCARD ALL / DEALLOCATE ALL may run: every statement on the server
        becomes uncertain.  (The client's own names are cleared when the
        server confirms the command with its CommandComplete tag.)"""
        if self.server is not None:
            self.server.forget_all()

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


def _txt(name: bytes) -> str:
    return name.decode("utf-8", "replace")
