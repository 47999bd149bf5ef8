"""gateway/prepared_general.py: the rewriter's general, message-by-message
client side, driven directly (its shortcuts in gateway/prepared.py off)."""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from gateway.prepared import Rewriter, ServerStatements, StatementRegistry
from gateway.prepared_general import FAIL_MESSAGE, GeneralRewrite
from tests.gateway.prepared_helpers import B, Client, E, P, S, fchunk


@pytest.fixture(autouse=True)
def _general_loop_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Rewriter, "FAST", False)


def test_rewriter_is_the_general_loop_plus_shortcuts() -> None:
    assert issubclass(Rewriter, GeneralRewrite) and Rewriter.__slots__ == () == GeneralRewrite.__slots__


def test_names_are_mapped_and_a_missing_statement_is_created_first() -> None:
    c = Client(StatementRegistry())
    sv = ServerStatements(10)
    c.link(sv)
    to_server, now = c.send(P("mine"), B("mine", b"1"), E, S)
    assert now == b"" and b"mine" not in to_server
    gname = next(iter(sv.lru))
    assert gname.startswith(b"__wp_")
    # Parse creates the gateway name; Bind (unnamed portal) uses it
    assert to_server.startswith(m.parse(gname.decode(), "select $1::int + 1", (23,)))
    assert b"B\x00\x00\x00\x19\x00" + gname + b"\x00" in to_server
    # a second server: the Bind alone makes the gateway send the Parse first
    other = ServerStatements(10)
    c.rw.unlink()
    c.link(other)
    to_server, _ = c.send(B("mine", b"2"), E, S)
    assert to_server.index(b"P") == 0 and gname in to_server and b"mine" not in to_server
    assert list(other.lru) == [gname]


def test_an_unknown_name_is_refused_in_order_on_the_server() -> None:
    c = Client(StatementRegistry())
    c.link(ServerStatements(10))
    to_server, now = c.send(B("nosuch", b"1"), E, S)
    assert to_server.startswith(FAIL_MESSAGE) and b"nosuch" not in to_server
    # the server skips to Sync after the refused Describe: nothing of the Bind/Execute is sent
    chunk, idx = fchunk(FAIL_MESSAGE, m.SYNC)
    assert to_server == chunk, (to_server, chunk, idx)
    assert now == b""
