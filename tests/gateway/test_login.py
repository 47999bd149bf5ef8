"""gateway/login.py: messages a client sends together during login are
handed out one at a time (:class:`Pipelined`, sans-I/O), and what login did
not consume reaches the pooling loop."""

from __future__ import annotations

from typing import Any

import pytest

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway.login import Pipelined
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, rows

_MSGS = [m.password_message("pw"), m.query("SELECT 1"), m.sync(), m.query("SELECT 'two'")]


def _framed(data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    r = MessageReader()
    r.feed(data)
    return r.read_raw()


def test_pipelined_hands_out_messages_in_order() -> None:
    chunk, idx = _framed(b"".join(_MSGS))
    p = Pipelined(chunk, idx)
    assert len(p) == 4
    got = []
    while (msg := p.next()) is not None:
        got.append(msg)
    assert got == [(t, b) for t, b in _framed_bodies(b"".join(_MSGS))]
    assert len(p) == 0 and not p and p.next() is None
    assert p.rest() == (b"", [])


def _framed_bodies(data: bytes) -> list[tuple[int, bytes]]:
    chunk, idx = _framed(data)
    return [(t, chunk[s:e]) for t, s, e in idx]


@pytest.mark.parametrize("taken", [0, 1, 2, 3])
def test_pipelined_rest_is_the_untaken_messages_as_read_raw_frames_them(taken: int) -> None:
    chunk, idx = _framed(b"".join(_MSGS))
    p = Pipelined(chunk, idx)
    for _ in range(taken):
        assert p.next() is not None
    rest = p.rest()
    assert rest == _framed(b"".join(_MSGS[taken:]))  # the same bytes and offsets, rebased
    assert len(p) == 0 and p.rest() == (b"", [])


async def test_a_login_and_queries_in_one_write_are_all_served(gateway_app: Any) -> None:
    app = await gateway_app(auth_type="password")
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"user": "alice", "database": "app"}) + m.password_message(ALICE_PASSWORD)
                     + m.query("SELECT 1") + m.query("SELECT 'two'"))
        got = await c.until(m.ReadyForQuery)  # the login's
        assert not errors(got)
        got = await c.until(m.ReadyForQuery)
        got += await c.until(m.ReadyForQuery)
        assert rows(got) == [("1",), ("two",)]
        (s,) = app.gateway._all_sessions
        assert s._pipelined is None  # all handed on
    finally:
        await c.close()
