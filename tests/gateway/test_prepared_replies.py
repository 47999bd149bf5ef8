"""Unit tests of gateway.prepared_replies (the reply queue: order, errors, skip to
Sync, undo), through the rewriter: scripted message sequences, no I/O.

Every expectation is byte-exact, built with the driver's encoders.
"""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from gateway.prepared import FAIL_MESSAGE, ServerStatements, StatementRegistry
from tests.gateway.prepared_helpers import (B, CC, Client, E, fchunk, H, ONE, P, Q2, Q3, ROW, S, THREE,
    TWO, ZE, ZI, ZT)


@pytest.fixture
def reg() -> StatementRegistry:
    return StatementRegistry()


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
