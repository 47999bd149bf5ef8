"""Unit tests of gateway.prepared_registry (statements, schema epochs, client caps),
through the rewriter: scripted message sequences, no I/O.

Every expectation is byte-exact, built with the driver's encoders.
"""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from gateway.prepared import FAIL_MESSAGE, ServerStatements, StatementRegistry
from tests.gateway.prepared_helpers import (B, CC, Client, E, ONE, P, Q3, REFUSED, ROW, S, THREE, TWO, ZI)


@pytest.fixture
def reg() -> StatementRegistry:
    return StatementRegistry()


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
