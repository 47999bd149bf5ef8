"""Unit tests of gateway.prepared: scripted message sequences, no I/O.

Every expectation is byte-exact: what the server receives and what the client
receives, built with the driver's encoders.
"""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, MessageReader
from gateway.prepared import (
    FAIL_MESSAGE,
    ClientStatements,
    Rewriter,
    ServerStatements,
    StatementRegistry,
    server_statements,
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


@pytest.fixture
def reg() -> StatementRegistry:
    return StatementRegistry()


def test_disabled_passes_everything_untouched(reg: StatementRegistry) -> None:
    c = Client(reg, limit=0)
    assert not c.rw.enabled
    c.link(ServerStatements(0))
    chunk, idx = fchunk(P("s1"), B("s1", b"1"), E, m.close("S", "s1"), S)
    out, local = c.rw.rewrite_frontend(chunk, idx)
    assert out is chunk and local == b""
    bc, bidx = bchunk(ONE, TWO, ROW, CC, THREE, ZI)
    assert c.rw.rewrite_backend(bc, bidx) == (bc, bidx)
    assert len(reg) == 0 and len(c.cs) == 0


def test_hot_path_returns_the_same_chunk(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    chunk, idx = fchunk(m.query("select 1"), E, S, H)
    out, local = c.rw.rewrite_frontend(chunk, idx)
    assert out is chunk and local == b""
    bc, bidx = bchunk(m.row_description([]), CC, ZI, ROW, CC, ZI)
    out2, idx2 = c.rw.rewrite_backend(bc, bidx)
    assert out2 is bc and idx2 is bidx
    assert c.rw.outstanding == 0


def test_unnamed_statements_pass_through(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    chunk, idx = fchunk(P(""), B("", b"1"), m.describe("S", ""), m.describe("P", ""), E,
                        m.close("S", ""), m.close("P", ""), S)
    out, local = c.rw.rewrite_frontend(chunk, idx)
    assert out == chunk and local == b""
    reply = [ONE, TWO, m.parameter_description([23]), m.NO_DATA, m.NO_DATA, CC, THREE, THREE, ZI]
    assert c.recv(*reply) == b"".join(reply)
    assert len(reg) == 0 and c.rw.outstanding == 0


def test_first_parse_renamed_and_forwarded(reg: StatementRegistry) -> None:
    c = Client(reg)
    sv = ServerStatements(200)
    c.link(sv)
    out, local = c.send(P("s1"), B("s1", b"1"), E, S)
    assert out == P("__wp_1") + B("__wp_1", b"1") + E + S
    assert local == b""
    assert c.recv(ONE, TWO, ROW, CC, ZI) == ONE + TWO + ROW + CC + ZI
    assert list(sv.lru) == [b"__wp_1"] and c.rw.outstanding == 0


def test_parse_answered_locally_when_server_has_it(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    a = Client(reg)
    a.link(sv)
    a.send(P("s1"), S)
    a.recv(ONE, ZI)
    # another client, same query under another name, same server
    b = Client(reg)
    b.link(sv)
    out, local = b.send(P("other"), B("other", b"5"), E, S)
    assert out == B("__wp_1", b"5") + E + S
    assert local == ONE  # nothing outstanding before it: delivered at once
    assert b.recv(TWO, ROW, CC, ZI) == TWO + ROW + CC + ZI
    assert len(reg) == 1


def test_synthetic_parse_complete_keeps_pipeline_order(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("a", Q2, (25,)), P("z", Q3, ()), S)
    c.recv(ONE, ONE, ZI)
    c.cs.remove(b"a")  # as if another client had prepared it: only the server knows __wp_1
    out, local = c.send(B("z"), E, P("b", Q2, (25,)), B("b", b"x"), E, S)
    assert out == B("__wp_2") + E + B("__wp_1", b"x") + E + S
    assert local == b""  # z's replies come first
    got = c.recv(TWO, ROW, CC, TWO, ROW)
    assert got == TWO + ROW + CC + ONE + TWO + ROW
    assert c.recv(CC, ZI) == CC + ZI


def test_parse_goes_to_the_server_when_the_transaction_may_be_aborted(reg: StatementRegistry) -> None:
    """Postgres refuses a Parse inside an aborted transaction (25P02): when that
    is possible the gateway cannot answer for the server."""
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("a", Q3, ()), S)
    c.recv(ONE, ZI)
    c.cs.remove(b"a")
    scratch = m.close("S", "__wp_scratch") + P("__wp_scratch", Q3, ())
    # a Query before it in the same pipeline may fail inside a transaction block
    out, local = c.send(m.query("select 1/0"), P("b", Q3, ()), S)
    assert out == m.query("select 1/0") + scratch + S and local == b""
    err = m.error("22012", "division by zero")
    aborted = m.error("25P02", "current transaction is aborted, commands ignored until end of transaction block")
    assert c.recv(err, ZE, THREE, aborted, ZE) == err + ZE + aborted + ZE
    assert len(c.cs) == 0  # refused: not created
    # the last status was E: still not answered locally
    out, local = c.send(P("b", Q3, ()), S)
    assert out == scratch + S and local == b""
    assert c.recv(THREE, aborted, ZE) == aborted + ZE
    c.send(m.query("rollback"))
    c.recv(m.command_complete("ROLLBACK"), ZI)
    out, local = c.send(P("b", Q3, ()), S)
    assert out == S and local == ONE
    assert c.recv(ZI) == ZI and set(c.cs.names) == {b"b"}


def test_reuse_on_second_server_injects_parse(reg: StatementRegistry) -> None:
    c = Client(reg)
    sv1, sv2 = ServerStatements(200), ServerStatements(200)
    c.link(sv1)
    c.send(P("s1"), B("s1", b"1"), E, S)
    c.recv(ONE, TWO, ROW, CC, ZI)
    c.rw.unlink()
    # next transaction lands on another server
    c.link(sv2)
    out, local = c.send(B("s1", b"2"), E, S)
    assert out == P("__wp_1") + B("__wp_1", b"2") + E + S and local == b""
    # the injected Parse's ParseComplete is swallowed
    assert c.recv(ONE, TWO, ROW, CC, ZI) == TWO + ROW + CC + ZI
    assert b"__wp_1" in sv2
    # and on the first server again: nothing injected
    c.rw.unlink()
    c.link(sv1)
    out, _ = c.send(B("s1", b"3"), E, S)
    assert out == B("__wp_1", b"3") + E + S


def test_describe_statement_renamed_and_injected(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    c.link(ServerStatements(200))
    out, _ = c.send(m.describe("S", "s1"), S)
    assert out == P("__wp_1") + m.describe("S", "__wp_1") + S
    pd = m.parameter_description([23])
    rd = m.row_description([])
    assert c.recv(ONE, pd, rd, ZI) == pd + rd + ZI


def test_close_answered_locally_in_order(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    out, local = c.send(B("s1", b"1"), E, m.close("S", "s1"), S)
    assert out == B("__wp_1", b"1") + E + S and local == b""
    assert c.recv(TWO, ROW, CC, ZI) == TWO + ROW + CC + THREE + ZI
    assert len(c.cs) == 0
    assert b"__wp_1" in sv  # the server keeps it for others
    # Close with nothing outstanding: answered at once; unknown names are no error
    out, local = c.send(m.close("S", "nope"), S)
    assert out == S and local == THREE
    assert c.recv(ZI) == ZI
    # the name is free again
    out, local = c.send(P("s1"), S)
    assert out == S and local == ONE


def test_close_portal_passes_through(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    chunk, idx = fchunk(m.close("P", "p1"), S)
    out, _ = c.rw.rewrite_frontend(chunk, idx)
    assert out == chunk
    assert c.recv(THREE, ZI) == THREE + ZI


def test_duplicate_name_gets_42P05_and_skips_to_sync(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    err = m.error("42P05", 'prepared statement "s1" already exists')
    out, local = c.send(P("s1", Q3, ()), B("s1", b"1"), E, S)
    # the server fails at the same point, on its own (so a syntax error or an
    # aborted transaction wins, as in Postgres); nothing after it is sent
    assert out == P("__wp_1", Q3, ()) + S
    assert local == b""
    dup = m.error("42P05", 'prepared statement "__wp_1" already exists')
    assert c.recv(dup, ZI) == err + ZI
    # any other error passes as it is
    out, _ = c.send(P("s1", "selec 1", ()), S)
    assert out == P("__wp_1", "selec 1", ()) + S
    syntax = m.error("42601", 'syntax error at or near "selec"')
    assert c.recv(syntax, ZI) == syntax + ZI
    # the old mapping is intact
    out, _ = c.send(B("s1", b"7"), E, S)
    assert out == B("__wp_1", b"7") + E + S


def test_42P05_in_the_middle_of_a_pipeline(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    err = m.error("42P05", 'prepared statement "s1" already exists')
    # the Sync arrives in a later chunk: skipping lasts across chunks
    out, local = c.send(B("s1", b"1"), E, P("s1"), B("s1", b"2"), E)
    assert out == B("__wp_1", b"1") + E + P("__wp_1") and local == b""
    out, local = c.send(B("s1", b"3"), E, m.query("select 1"), S)
    assert out == S and local == b""
    assert c.rw.dropped_rfq == 1  # the Query was skipped, as Postgres skips it
    # inside an explicit transaction: the server's own status says it aborted
    dup = m.error("42P05", 'prepared statement "__wp_1" already exists')
    assert c.recv(TWO, ROW, CC, dup, ZE) == TWO + ROW + CC + err + ZE
    assert c.rw.outstanding == 0


def test_refused_message_after_a_server_error_is_not_reported(reg: StatementRegistry) -> None:
    """Only the first error of a pipeline reaches the client, as with Postgres."""
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    unnamed = m.bind("", "", [], [], [])
    out, _ = c.send(unnamed, B("ghost"), S)
    assert out == unnamed + FAIL_MESSAGE + S
    err = m.error("26000", "unnamed prepared statement does not exist")
    assert c.recv(err, ZI) == err + ZI
    assert c.rw.outstanding == 0


def test_unknown_statement_gets_26000(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    out, local = c.send(B("ghost"), E, S)
    assert out == FAIL_MESSAGE + S and local == b""
    out, local = c.send(m.describe("S", "ghost"), S)
    assert out == FAIL_MESSAGE + S and local == b""
    err = m.error("26000", 'prepared statement "ghost" does not exist')
    assert c.recv(REFUSED, ZI, REFUSED, ZI) == err + ZI + err + ZI
    # a client name that happens to look like a gateway name is not forwarded
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    out, _ = c.send(B("__wp_1"), E, S)
    assert out == FAIL_MESSAGE + S


def test_error_in_the_middle_of_a_pipeline(reg: StatementRegistry) -> None:
    """P a, B a, E (fails), P b, B b, E, S: the server skips everything after
    the error; the client sees exactly Postgres' replies; b is not created."""
    c = Client(reg)
    sv = ServerStatements(200)
    c.link(sv)
    qa, qb = "select 1/$1::int", "select $1::int * 2"
    out, local = c.send(P("a", qa), B("a", b"0"), E, P("b", qb), B("b", b"1"), E, S)
    assert out == (P("__wp_1", qa) + B("__wp_1", b"0") + E + P("__wp_2", qb) + B("__wp_2", b"1") + E + S)
    err = m.error("22012", "division by zero")
    assert c.recv(ONE, TWO, err, ZI) == ONE + TWO + err + ZI
    assert c.rw.outstanding == 0
    assert list(sv.lru) == [b"__wp_1"]       # b's Parse was skipped
    assert set(c.cs.names) == {b"a"}         # and so was the client's statement
    # b is free again and gets created (no spurious 42P05)
    out, local = c.send(P("b", qb), B("b", b"4"), E, S)
    assert out == P("__wp_2", qb) + B("__wp_2", b"4") + E + S and local == b""
    assert c.recv(ONE, TWO, ROW, CC, ZI) == ONE + TWO + ROW + CC + ZI
    assert list(sv.lru) == [b"__wp_1", b"__wp_2"]


def test_error_skips_synthetic_replies_and_undoes_close(reg: StatementRegistry) -> None:
    """Synthetic replies queued after a server error are dropped (Postgres
    would not have answered those messages) and their effects undone."""
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("a"), P("z", Q3, ()), S)
    c.recv(ONE, ONE, ZI)
    other = Client(reg)
    other.link(sv)
    out, local = other.send(m.bind("", "", [], [], []), E,
                            P("a2"), m.close("S", "x"), S)
    # unnamed Bind forwarded; P a2 answered by a synthetic ParseComplete (queued)
    assert out == m.bind("", "", [], [], []) + E + S and local == b""
    err = m.error("26000", 'unnamed prepared statement does not exist')
    assert other.recv(err, ZI) == err + ZI
    assert len(other.cs) == 0  # the skipped Parse did not create a2
    # Close of an existing name skipped by an error restores the mapping
    out, _ = c.send(m.bind("", "", [], [], []), m.close("S", "a"), S)
    assert c.recv(err, ZI) == err + ZI
    assert set(c.cs.names) == {b"a", b"z"}


def test_failed_injected_parse_surfaces_its_error(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("s1", "select * from t"), S)
    c.recv(ONE, ZI)
    sv2 = ServerStatements(200)
    c.link(sv2)
    out, _ = c.send(B("s1"), E, S)
    assert out == P("__wp_1", "select * from t") + B("__wp_1") + E + S
    err = m.error("42P01", 'relation "t" does not exist')
    assert c.recv(err, ZI) == err + ZI
    assert len(sv2) == 0 and not sv2.maybe  # definitely not created
    # next time it is injected again
    out, _ = c.send(B("s1"), E, S)
    assert out == P("__wp_1", "select * from t") + B("__wp_1") + E + S


def test_lru_eviction_with_close(reg: StatementRegistry) -> None:
    c = Client(reg, limit=2)
    sv = ServerStatements(2)
    c.link(sv)
    for name, q in (("a", "select 1"), ("b", "select 2")):
        out, _ = c.send(P(name, q, ()), S)
        c.recv(ONE, ZI)
    c.send(B("a"), E, S)  # touch a: b is now the oldest
    c.recv(TWO, CC, ZI)
    out, _ = c.send(P("c", "select 3", ()), B("c"), E, S)
    assert out == (m.close("S", "__wp_2") + P("__wp_3", "select 3", ()) + B("__wp_3") + E + S)
    assert c.recv(THREE, ONE, TWO, ROW, CC, ZI) == ONE + TWO + ROW + CC + ZI
    assert list(sv.lru) == [b"__wp_1", b"__wp_3"]
    # b is re-injected when used, evicting a
    out, _ = c.send(B("b"), E, S)
    assert out == m.close("S", "__wp_1") + P("__wp_2", "select 2", ()) + B("__wp_2") + E + S
    assert c.recv(THREE, ONE, TWO, ROW, CC, ZI) == TWO + ROW + CC + ZI


def test_eviction_within_one_pipeline_keeps_order(reg: StatementRegistry) -> None:
    c = Client(reg, limit=1)
    sv = ServerStatements(1)
    c.link(sv)
    out, _ = c.send(P("a", "select 1", ()), B("a"), E, P("b", "select 2", ()), B("b"), E, B("a"), E, S)
    assert out == (P("__wp_1", "select 1", ()) + B("__wp_1") + E
                   + m.close("S", "__wp_1") + P("__wp_2", "select 2", ()) + B("__wp_2") + E
                   + m.close("S", "__wp_2") + P("__wp_1", "select 1", ()) + B("__wp_1") + E + S)
    got = c.recv(ONE, TWO, CC, THREE, ONE, TWO, CC, THREE, ONE, TWO, CC, ZI)
    assert got == ONE + TWO + CC + ONE + TWO + CC + TWO + CC + ZI
    assert list(sv.lru) == [b"__wp_1"]


def test_skipped_eviction_close_makes_statement_uncertain(reg: StatementRegistry) -> None:
    c = Client(reg, limit=1)
    sv = ServerStatements(1)
    c.link(sv)
    c.send(P("a", "select 1", ()), S)
    c.recv(ONE, ZI)
    # an error before the injected Close: the server skips Close and Parse
    out, _ = c.send(m.bind("", "", [], [], []), P("b", "select 2", ()), S)
    assert out == m.bind("", "", [], [], []) + m.close("S", "__wp_1") + P("__wp_2", "select 2", ()) + S
    err = m.error("26000", "unnamed prepared statement does not exist")
    assert c.recv(err, ZI) == err + ZI
    assert len(sv) == 0 and sv.maybe == {b"__wp_1"}
    # a stays usable: Close + Parse (Close of a missing statement is no error)
    out, _ = c.send(B("a"), E, S)
    assert out == m.close("S", "__wp_1") + P("__wp_1", "select 1", ()) + B("__wp_1") + E + S
    assert c.recv(THREE, ONE, TWO, CC, ZI) == TWO + CC + ZI


def test_pipelined_segments_before_replies_are_safe(reg: StatementRegistry) -> None:
    """Segment 2 uses a statement created in unanswered segment 1: if segment 1
    failed the statement would be missing, so it is re-created with Close+Parse."""
    c = Client(reg)
    sv = ServerStatements(200)
    c.link(sv)
    out, _ = c.send(P("a"), S, B("a", b"1"), E, S)
    assert out == (P("__wp_1") + S + m.close("S", "__wp_1") + P("__wp_1") + B("__wp_1", b"1") + E + S)
    assert c.recv(ONE, ZI, THREE, ONE, TWO, ROW, CC, ZI) == ONE + ZI + TWO + ROW + CC + ZI
    # answered: now certain
    out, _ = c.send(B("a", b"2"), E, S)
    assert out == B("__wp_1", b"2") + E + S


def test_discard_all_clears_the_client_mapping(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    for sql in ("DEALLOCATE ALL", "discard  all", "deallocate prepare all"):
        chunk, idx = fchunk(m.query(sql))
        out, local = c.rw.rewrite_frontend(chunk, idx)
        assert out is chunk and local == b""
        tag = m.command_complete(sql.upper().replace("  ", " ").replace(" PREPARE", ""))
        assert c.recv(tag, ZI) == tag + ZI
        assert len(c.cs) == 0  # cleared once the server confirms it
        # the name can be prepared again; the server statement is re-created safely
        out, local = c.send(P("s1"), S)
        assert out == m.close("S", "__wp_1") + P("__wp_1") + S
        assert c.recv(THREE, ONE, ZI) == ONE + ZI
    # DISCARD ALL executed through the extended protocol is seen in its tag
    c.send(P("", "DISCARD ALL", ()), m.bind("", "", [], [], []), E, S)
    assert c.recv(ONE, TWO, m.command_complete("DISCARD ALL"), ZI) == (
        ONE + TWO + m.command_complete("DISCARD ALL") + ZI)
    assert len(sv) == 0 and sv.maybe == {b"__wp_1"}


def test_caps_give_a_clear_error(reg: StatementRegistry) -> None:
    c = Client(reg, max_statements=2, max_bytes=0)
    c.link(ServerStatements(200))
    c.send(P("a", "select 1", ()), P("b", "select 2", ()), S)
    c.recv(ONE, ONE, ZI)
    out, local = c.send(P("c", "select 3", ()), S)
    assert out == FAIL_MESSAGE + S and local == b""
    got = c.recv(REFUSED, ZI)
    assert m.decode_backend(got[0], got[5:-6]) == m.ErrorResponse(m.error_fields(
        "53400", "too many prepared statements for this client: the limit is 2 (max_client_statements);"
        " close some first"))
    # closing one makes room
    out, local = c.send(m.close("S", "a"), P("c", "select 3", ()), S)
    assert out == P("__wp_3", "select 3", ()) + S and local == THREE
    c.recv(ONE, ZI)
    big = Client(reg, max_statements=0, max_bytes=30)
    big.link(ServerStatements(200))
    out, local = big.send(P("x", "select 'a long query text here'", ()), S)
    assert out == FAIL_MESSAGE + S
    got = big.recv(REFUSED, ZI)
    assert b"53400" in got and b"max_client_statement_bytes" in got


def test_stale_plan_gets_a_fresh_gateway_name(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1", Q3, ()), S)
    c.recv(ONE, ZI)
    out, _ = c.send(B("s1"), E, S)
    stale = m.error("0A000", "cached plan must not change result type")
    assert c.recv(stale, ZI) == stale + ZI
    # every client now uses a new gateway name, re-created on each server;
    # the stale one is closed on this server first
    other = Client(reg)
    other.link(sv)
    out, local = other.send(P("mine", Q3, ()), B("mine"), E, S)
    assert out == m.close("S", "__wp_1") + P("__wp_2", Q3, ()) + B("__wp_2") + E + S and local == b""
    assert other.recv(THREE, ONE, TWO, ROW, CC, ZI) == ONE + TWO + ROW + CC + ZI
    out, _ = c.send(B("s1"), E, S)
    assert out == B("__wp_2") + E + S


def test_statement_missing_on_server_is_recreated(reg: StatementRegistry) -> None:
    """If the server says 26000 for a gateway name (someone deallocated it), the
    next use re-creates it instead of failing forever."""
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    c.send(B("s1", b"1"), E, S)
    err = m.error("26000", 'prepared statement "__wp_1" does not exist')
    assert c.recv(err, ZI) == err + ZI
    out, _ = c.send(B("s1", b"1"), E, S)
    assert out == m.close("S", "__wp_1") + P("__wp_1") + B("__wp_1", b"1") + E + S


def test_abandon_makes_in_flight_statements_uncertain(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1"), B("s1", b"1"), E, S)
    c.rw.unlink()  # e.g. the client vanished mid-pipeline; the pool drains the server
    assert len(sv) == 0 and sv.maybe == {b"__wp_1"}
    d = Client(reg)
    d.link(sv)
    out, local = d.send(P("t"), S)
    assert out == m.close("S", "__wp_1") + P("__wp_1") + S


def test_async_messages_pass_and_registry_refcounts(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1"), S)
    note = m.notice_response(m.error_fields("00000", "hi", severity="NOTICE"))
    ps = m.parameter_status("TimeZone", "UTC")
    assert c.recv(note, ONE, ps, ZI) == note + ONE + ps + ZI
    st = c.cs.names[b"s1"]
    assert st.refs == 1
    c.cs.clear()
    assert st.refs == 0
    # kept as unused (servers still have it): preparing it again reuses the name
    d = Client(reg)
    d.link(sv)
    out, local = d.send(P("x"), S)
    assert out == S and local == ONE


def test_server_statements_attach_to_objects() -> None:
    class Conn:
        pass

    a, b = Conn(), Conn()
    sa = server_statements(a, 10)
    assert server_statements(a, 10) is sa
    assert server_statements(b, 10) is not sa
    assert sa.limit == 10


def test_copy_in_execute_and_split_chunks(reg: StatementRegistry) -> None:
    """COPY through a named statement; server replies arriving one message per chunk."""
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    out, _ = c.send(P("cp", "copy t from stdin", ()), B("cp"), E, H)
    assert out == P("__wp_1", "copy t from stdin", ()) + B("__wp_1") + E + H
    got = c.recv(ONE) + c.recv(TWO) + c.recv(m.copy_in_response(0, []))
    assert got == ONE + TWO + m.copy_in_response(0, [])
    chunk, idx = fchunk(m.copy_data(b"1\n"), m.copy_done(), S)
    out, _ = c.rw.rewrite_frontend(chunk, idx)
    assert out is chunk
    assert c.recv(m.command_complete("COPY 1")) + c.recv(ZI) == m.command_complete("COPY 1") + ZI
    assert c.rw.outstanding == 0


def test_skipped_recreation_stays_uncertain(reg: StatementRegistry) -> None:
    """Close+Parse re-creating an uncertain statement, skipped by an error: the
    statement is still uncertain afterwards (it may exist from before)."""
    c = Client(reg)
    sv = ServerStatements(200)
    c.link(sv)
    unnamed = m.bind("", "", [], [], [])
    out, _ = c.send(P("a"), S, unnamed, B("a", b"1"), E, S)
    assert out == P("__wp_1") + S + unnamed + m.close("S", "__wp_1") + P("__wp_1") + B("__wp_1", b"1") + E + S
    err = m.error("26000", "unnamed prepared statement does not exist")
    assert c.recv(ONE, ZI, err, ZI) == ONE + ZI + err + ZI
    assert len(sv) == 0 and sv.maybe == {b"__wp_1"}
    out, _ = c.send(B("a", b"2"), E, S)
    assert out == m.close("S", "__wp_1") + P("__wp_1") + B("__wp_1", b"2") + E + S


def test_duplicate_parse_on_a_server_lacking_the_statement(reg: StatementRegistry) -> None:
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    sv2 = ServerStatements(200)
    c.link(sv2)
    out, _ = c.send(P("s1", Q3, ()), S)
    # the existing statement is created there first, so the duplicate fails as it should
    assert out == P("__wp_1") + P("__wp_1", Q3, ()) + S
    dup = m.error("42P05", 'prepared statement "__wp_1" already exists')
    assert c.recv(ONE, dup, ZI) == m.error("42P05", 'prepared statement "s1" already exists') + ZI
    assert b"__wp_1" in sv2


def test_failed_discard_all_keeps_the_mapping(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1"), S)
    c.recv(ONE, ZI)
    c.send(m.query("begin"), m.query("DISCARD ALL"))
    err = m.error("25001", "DISCARD ALL cannot run inside a transaction block")
    got = c.recv(m.command_complete("BEGIN"), ZT, err, ZE)
    assert got == m.command_complete("BEGIN") + ZT + err + ZE
    assert set(c.cs.names) == {b"s1"}
    # the server statement was marked uncertain meanwhile: re-created safely
    out, _ = c.send(m.query("rollback"), B("s1", b"1"), E, S)
    assert out == m.close("S", "__wp_1") + m.query("rollback") + P("__wp_1") + B("__wp_1", b"1") + E + S


def test_undo_is_last_in_first_out(reg: StatementRegistry) -> None:
    """Close a; Parse a (fails); Close a (skipped): a no longer exists, as in Postgres."""
    c = Client(reg)
    c.link(ServerStatements(200))
    c.send(P("a"), S)
    c.recv(ONE, ZI)
    out, local = c.send(m.close("S", "a"), P("a", "selec"), m.close("S", "a"), S)
    assert out == P("__wp_2", "selec") + S and local == THREE
    err = m.error("42601", 'syntax error at or near "selec"')
    assert c.recv(err, ZI) == err + ZI
    assert len(c.cs) == 0


def test_plain_queries_are_counted_and_keep_order(reg: StatementRegistry) -> None:
    """Simple Queries take the no-entry fast path; a synthetic ParseComplete
    sent behind them still waits for their ReadyForQuery, and the status of
    that ReadyForQuery is seen (an aborted transaction -> Parse on the server)."""
    sv = ServerStatements(200)
    a = Client(reg)
    a.link(sv)
    a.send(P("s1"), S)
    a.recv(ONE, ZI)
    b = Client(reg)
    b.link(sv)
    q = m.query("SELECT 1")
    out, local = b.send(q)
    assert out == q and local == b"" and b.rw.outstanding == 1
    out, local = b.send(q, q)
    assert out == q + q and b.rw.outstanding == 3
    assert b.recv(ROW, CC, ZI) == ROW + CC + ZI
    assert b.rw.outstanding == 2
    # Parse of a statement the server has, behind two outstanding Queries
    out, local = b.send(P("other"), S)
    assert local == b""  # not before the Queries' replies
    assert b.rw.outstanding > 2
    got = b.recv(ROW, CC, ZI, ROW, CC, ZI)
    assert got.startswith(ROW + CC + ZI + ROW + CC + ZI)
    # Query replies outstanding: the server judges the text under the scratch name
    assert out.startswith(m.close("S", "__wp_scratch")) and out.endswith(S)
    assert b.recv(THREE, ONE, ZI) == ONE + ZI
    assert b.rw.outstanding == 0
    # a DISCARD ALL never takes the counting path
    out, local = b.send(m.query("discard   ALL"))
    assert b.rw._plain == 0 and b.rw.outstanding == 1
    b.recv(m.command_complete("DISCARD ALL"), ZI)
    assert b"other" not in b.rw.client.names and b.rw.outstanding == 0


def test_cache_lookup_failure_retires_the_statement(reg: StatementRegistry) -> None:
    """A parameter type dropped behind the gateway's back (XX000 cache lookup
    failed): the client gets the error, then the statement is closed and
    parsed afresh (new name) instead of failing forever."""
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1", Q3, ()), S)
    c.recv(ONE, ZI)
    other = Client(reg)
    other.link(sv)
    out, local = other.send(P("s1", Q3, ()), m.describe("S", "s1"), m.FLUSH)
    assert local == ONE  # the server has it: answered by the gateway
    err = m.error("XX000", "cache lookup failed for type 16391")
    assert other.recv(err) == err
    out, local = other.send(S)  # the server skips to Sync: the Close comes after it
    assert out == S + m.close("S", "__wp_1") and local == b""
    assert other.recv(ZI, THREE) == ZI
    out, local = other.send(m.describe("S", "s1"), S)
    assert out == P("__wp_2", Q3, ()) + m.describe("S", "__wp_2") + S


def test_schema_bump_closes_unused_statements_and_renews_names(reg: StatementRegistry) -> None:
    sv = ServerStatements(200)
    c = Client(reg)
    c.link(sv)
    c.send(P("s1", Q3, ()), P("s2", "select 2", ()), S)
    c.recv(ONE, ONE, ZI)
    c.send(m.close("S", "s2"), S)
    c.recv(ZI)
    reg.bump("")
    # a new client gets a new name for the same text; the server first closes
    # __wp_2 (unused) but keeps __wp_1 (c still maps it: Postgres judges it)
    other = Client(reg)
    other.link(sv)
    out, local = other.send(P("x", Q3, ()), S)
    assert out == m.close("S", "__wp_2") + P("__wp_3", Q3, ()) + S and local == b""
    assert other.recv(THREE, ONE, ZI) == ONE + ZI
    out, _ = c.send(B("s1"), E, S)
    assert out == B("__wp_1") + E + S
    # another database's schema change does not touch this one's statements
    reg.bump("elsewhere")
    out, local = other.send(P("y", Q3, ()), S)
    assert out == S and local == ONE
