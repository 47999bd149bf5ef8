"""Unit tests of gateway.prepared: scripted message sequences, no I/O.

Every expectation is byte-exact: what the server receives and what the client
receives, built with the driver's encoders.
"""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from gateway.prepared import FAIL_MESSAGE, ServerStatements, StatementRegistry
from tests.gateway.prepared_helpers import (B, bchunk, CC, Client, E, fchunk, H, ONE, P, Q3, REFUSED, ROW,
    S, THREE, TWO, ZE, ZI)


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
