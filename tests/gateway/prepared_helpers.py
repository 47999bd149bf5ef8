"""Helpers for the gateway.prepared unit tests (test_prepared_*.py): frame
scripted client/server messages and drive one client's rewriter."""

from __future__ import annotations

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, MessageReader
from gateway.prepared import (
    ClientStatements,
    Rewriter,
    ServerStatements,
    StatementRegistry,
)

Q1 = "select $1::int + 1"
Q2 = "select $1::text"
Q3 = "select 42"


def fchunk(*msgs: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    r = FrontendReader(startup=False)
    r.feed(b"".join(msgs))
    chunk, idx = r.read_raw()
    assert r.buffered == 0
    return chunk, idx


def bchunk(*msgs: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    r = MessageReader()
    r.feed(b"".join(msgs))
    chunk, idx = r.read_raw()
    assert r.buffered == 0
    return chunk, idx


def P(name: str, sql: str = Q1, oids: tuple[int, ...] = (23,)) -> bytes:
    return m.parse(name, sql, oids)


def B(stmt: str, *params: bytes, portal: str = "") -> bytes:
    return m.bind(portal, stmt, [0] * len(params), list(params), [])


E = m.execute()
S = m.SYNC
H = m.FLUSH
ONE = m.PARSE_COMPLETE
TWO = m.BIND_COMPLETE
THREE = m.CLOSE_COMPLETE
ROW = m.data_row([b"2"])
CC = m.command_complete("SELECT 1")
ZI = m.ready_for_query("I")
ZE = m.ready_for_query("E")
ZT = m.ready_for_query("T")
#: what the server answers to FAIL_MESSAGE (the gateway replaces it)
REFUSED = m.error("26000", 'prepared statement "__wp_refused" does not exist')


class Client:
    """One client session's rewriter plus helpers to drive it."""

    def __init__(self, registry: StatementRegistry, limit: int = 200, **caps: int) -> None:
        self.cs = ClientStatements(registry, **caps)
        self.rw = Rewriter(self.cs, limit)

    def link(self, sv: ServerStatements) -> None:
        self.rw.link(sv)

    def send(self, *msgs: bytes) -> tuple[bytes, bytes]:
        chunk, idx = fchunk(*msgs)
        return self.rw.rewrite_frontend(chunk, idx)

    def recv(self, *msgs: bytes) -> bytes:
        chunk, idx = bchunk(*msgs)
        out, out_idx = self.rw.rewrite_backend(chunk, idx)
        # the returned index must describe the returned chunk exactly
        assert (out, out_idx) == bchunk(out) if out else out_idx == []
        return out
