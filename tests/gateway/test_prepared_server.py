"""Unit tests of gateway.prepared_server (each server's LRU of statements and what
surely exists there), through the rewriter: scripted message sequences, no I/O.

Every expectation is byte-exact, built with the driver's encoders.
"""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from gateway.prepared import ServerStatements, StatementRegistry, server_statements
from tests.gateway.prepared_helpers import (B, CC, Client, E, ONE, P, ROW, S, THREE, TWO, ZI)


@pytest.fixture
def reg() -> StatementRegistry:
    return StatementRegistry()


def test_server_statements_attach_to_objects() -> None:
    class Conn:
        pass

    a, b = Conn(), Conn()
    sa = server_statements(a, 10)
    assert server_statements(a, 10) is sa
    assert server_statements(b, 10) is not sa
    assert sa.limit == 10


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
