"""The rewriter's shortcuts agree with its general loops (property tests).

``Rewriter`` counts plain Query/Sync replies instead of queueing entries, keeps a
whole Sync segment as one queue entry, renames a Bind of a statement the server
surely has without the general loop, and lets a segment's reply through without
looking at each message (gateway/prepared.py, gateway/prepared_replies.py).
``General`` below is the same class with all of that off (``FAST = False``).
Both are driven with the same random client chunks -- the usual
[Parse] Bind [Describe] Execute Sync chunks of libpq and asyncpg, named and
unnamed statements, Closes, Queries (DISCARD ALL among them), Flushes, several
segments per chunk -- and the same server replies, produced by a small model of
Postgres (each message answered or failed, skip to Sync after an error, Queries
skipped in a failed segment, ReadyForQuery status, notices in between) and cut
into random pieces; servers are switched between transactions and abandoned in
mid-pipeline.  After every step both must have sent the same bytes to the
server and to the client and hold the same state.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass, field
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, MessageReader, ProtocolError
from gateway.prepared import ClientStatements, Rewriter, ServerStatements, StatementRegistry


class General(Rewriter):
    """The rewriter with every shortcut off: the general loops only."""

    __slots__ = ()
    FAST = False


NAMES = ["", "", "", "a", "b", "c"]
#: FunctionCall of oid 1 without arguments, and its answer (a NULL)
FUNCTION_CALL = b"F" + struct.pack("!iiHHH", 14, 1, 0, 0, 0)
FUNCTION_RESULT = b"V" + struct.pack("!ii", 8, -1)
NOTICE = m.notice_response({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "just so"})
TEXTS = ["select $1::int", "select 2", "select $1::text", "discard all"]


def _client_message(rnd: random.Random, names: list[str]) -> bytes:
    k = rnd.random()
    name = rnd.choice(names)
    if k < 0.15:
        return m.parse(name, rnd.choice(TEXTS), rnd.choice([[], [23]]))
    if k < 0.35:
        return m.bind(rnd.choice(["", "", "p"]), name, [0], [b"1"], [])
    if k < 0.45:
        return m.describe(rnd.choice("SPP"), name)
    if k < 0.6:
        return m.execute(rnd.choice(["", "", "p"]))
    if k < 0.67:
        return m.close(rnd.choice("SP"), name)
    if k < 0.8:
        return m.SYNC
    if k < 0.87:
        return m.query(rnd.choice(["select 1", "begin", "commit", "rollback", "discard all", "select 'all'"]))
    if k < 0.92:
        return m.FLUSH
    if k < 0.95:
        return m.copy_data(b"1\n")
    return FUNCTION_CALL


def client_chunk(rnd: random.Random) -> bytes:
    """Mostly the shapes of real drivers, sometimes anything."""
    k = rnd.random()
    name = rnd.choice(NAMES)
    if k < 0.55:
        msgs = []
        if rnd.random() < 0.5:
            msgs.append(m.parse(name if rnd.random() < 0.3 else "", rnd.choice(TEXTS), [23]))
        msgs.append(m.bind("", name, [0], [str(rnd.randrange(9)).encode()], []))
        if rnd.random() < 0.6:
            msgs.append(m.describe("P", "") if rnd.random() < 0.8 else m.describe("S", name))
        msgs += [m.execute(), m.SYNC]
        if rnd.random() < 0.15:  # two segments, or one left open
            msgs += [m.bind("", name, [0], [b"7"], []), m.execute()] + ([m.SYNC] if rnd.random() < 0.5 else [])
        return b"".join(msgs)
    if k < 0.65:
        return m.query(rnd.choice(["select 1", "begin", "commit", "discard all", "deallocate all", "select 'x'"]))
    names = NAMES + ["zz"]
    return b"".join(_client_message(rnd, names) for _ in range(rnd.randrange(1, 7)))


@dataclass
class Server:
    """A small model of a Postgres backend's replies (not of its statements)."""

    rnd: random.Random
    out: bytearray = field(default_factory=bytearray)
    skipping: bool = False
    status: str = "I"

    def _async(self) -> None:
        if self.rnd.random() < 0.05:
            self.out += NOTICE
        elif self.rnd.random() < 0.03:
            self.out += m.parameter_status("application_name", "x")

    def _error(self) -> bytes:
        code = self.rnd.choice(["22012", "42P05", "26000", "0A000", "42601"])
        if self.status != "I":
            self.status = "E"
        return m.error(code, "cached plan must not change result type" if code == "0A000" else "boom")

    def _rows(self) -> bytes:
        tag = self.rnd.choice(["SELECT 1"] * 6 + ["DISCARD ALL", "DEALLOCATE ALL", "DELETE 1"])
        return m.data_row([b"1"]) * self.rnd.randrange(3) + m.command_complete(tag)

    def receive(self, data: bytes) -> None:
        r = FrontendReader(startup=False)
        r.feed(data)
        for t, body in r.read():
            c = chr(t)
            if self.skipping:
                if c == "S":
                    self.skipping = False
                    self.out += m.ready_for_query(self.status)
                continue
            self._async()
            fail = self.rnd.random() < 0.12 or (c == "D" and b"__wp_refused" in body)
            if c == "Q":
                text = body[:-1].decode()
                if fail and self.status == "E":
                    self.out += self._error()
                elif fail:
                    self.out += self._error()
                elif text == "begin":
                    self.status = "T" if self.status == "I" else self.status
                    self.out += m.command_complete("BEGIN")
                elif text in ("commit", "rollback"):
                    self.status = "I"
                    self.out += m.command_complete(text.upper())
                elif "discard" in text or "deallocate" in text:
                    self.out += m.command_complete(text.upper())
                else:
                    self.out += self._rows()
                self.out += m.ready_for_query(self.status)
            elif c == "S":
                self.out += m.ready_for_query(self.status)
            elif c == "H" or c == "d":
                pass
            elif c == "F":
                self.out += self._error() if fail else FUNCTION_RESULT
                self.out += m.ready_for_query(self.status)
            elif fail:
                self.out += self._error()
                self.skipping = True
            elif c == "P":
                self.out += m.PARSE_COMPLETE
            elif c == "B":
                self.out += m.BIND_COMPLETE
            elif c == "C":
                self.out += m.CLOSE_COMPLETE
            elif c == "D":
                if body[:1] == b"S":
                    self.out += m.parameter_description([23])
                self.out += m.row_description([]) if self.rnd.random() < 0.7 else m.NO_DATA
            elif c == "E":
                self.out += self._rows()

    def take(self, everything: bool) -> bytes:
        n = len(self.out) if everything else self.rnd.randrange(len(self.out) + 1)
        data = bytes(self.out[:n])
        del self.out[:n]
        return data


def _state(rw: Rewriter) -> dict[str, Any]:
    sv = rw.server
    return {
        "status": rw._status, "skipping": rw._skipping, "skipped_rfq": rw.skipped_rfq,
        # (not _desc_half: half of a Describe's reply is only tracked for a queue entry)
        "dropped_rfq": rw.dropped_rfq, "busy": rw.outstanding > 0,
        "last": None if rw._last_stmt is None else rw._last_stmt[1],
        "names": {k: v.name for k, v in rw.client.names.items()},
        "server": None if sv is None else (list(sv.lru.items()), sorted(sv.maybe), dict(sv.changed), sv.sent,
                                           sv.acked),
    }


class Side:
    """One rewriter with its own registry, client and two servers."""

    def __init__(self, cls: type[Rewriter], limit: int) -> None:
        self.reg = StatementRegistry()
        self.rw = cls(ClientStatements(self.reg), limit)
        self.servers = [ServerStatements(limit), ServerStatements(limit)]
        self.rw.link(self.servers[0])
        self.reader = MessageReader()


def _run(rnd: random.Random, steps: int) -> int:
    """Drives both sides; returns how many chunks the fast side took a shortcut for."""
    limit = rnd.choice([2, 3, 200])
    fast, general = Side(Rewriter, limit), Side(General, limit)
    server = Server(random.Random(rnd.random()))
    shortcuts = 0
    for _ in range(steps):
        k = rnd.random()
        if k < 0.45:
            data = client_chunk(rnd)
            r = FrontendReader(startup=False)
            r.feed(data)
            chunk, idx = r.read_raw()
            results = []
            for side in (fast, general):
                try:
                    results.append(side.rw.rewrite_frontend(chunk, idx))
                except ProtocolError as exc:
                    results.append(type(exc))
            assert results[0] == results[1]
            if isinstance(results[0], type):
                return shortcuts
            if fast.rw.outstanding < general.rw.outstanding:
                shortcuts += 1  # fewer queue entries
            to_server, local = results[0]  # type: ignore[misc]
            server.receive(to_server)
        elif k < 0.9 and server.out:
            data = server.take(rnd.random() < 0.5)
            if not data:
                continue
            outs = []
            for side in (fast, general):
                chunk, idx = side.reader.feed_read_runs(data)
                if chunk:
                    chunk, idx = side.rw.rewrite_backend(chunk, idx)
                    # the index must describe the chunk exactly
                    if chunk:
                        chk = MessageReader()
                        chk.feed(chunk)
                        assert [(t, chunk[s:e]) for t, s, e in idx if t != 68] == \
                            [(t, b) for t, b in chk.read() if t != 68]
                outs.append(chunk)
            assert outs[0] == outs[1]
        elif k < 0.95:
            # the session releases or gives up the server: another one next
            settled = not server.out and fast.rw.outstanding == 0
            if not settled and rnd.random() < 0.7:
                continue
            j = rnd.randrange(2)
            for side in (fast, general):
                side.rw.unlink()
                side.rw.link(side.servers[j])
                side.reader = MessageReader()
            server = Server(random.Random(rnd.random()), status="I")
        else:
            for side in (fast, general):
                side.reg.bump("")
        assert _state(fast.rw) == _state(general.rw)
        fast.rw.skipped_rfq = general.rw.skipped_rfq = 0  # (the accounting takes them)
    return shortcuts


@given(st.integers(0, 2**64))
@settings(max_examples=200)
def test_shortcuts_agree_with_the_general_loops(seed: int) -> None:
    # (a seed, not hypothesis' recorded randoms: 10x faster, and a failure names its seed)
    _run(random.Random(seed), 40)


def test_the_shortcuts_are_taken() -> None:
    """(So that the property above compares something.)"""
    assert sum(_run(random.Random(seed), 40) for seed in range(20)) > 100
