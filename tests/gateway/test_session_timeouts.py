"""gateway/session_timeouts.py: the partial-message clock kept as client bytes
arrive (``note_partial``), and the janitor's checks on it (``check_idle``),
called directly with the time they would see."""

from __future__ import annotations

from typing import Any

import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, eventually, rows

pytestmark = pytest.mark.timeout(60)


async def _only_session(app: Any) -> Any:
    await eventually(lambda: len(app.gateway._all_sessions) == 1, what="one session")
    return next(iter(app.gateway._all_sessions))


async def test_the_partial_message_clock_runs_while_a_message_is_incomplete(gateway_app: Any) -> None:
    app = await gateway_app(client_message_timeout=600)  # (never fires by itself here)
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        assert s._partial_since == 0.0
        q = m.query("SELECT 3")
        await c.send(q[:7])
        await eventually(lambda: s._partial_since > 0, what="the clock to start")
        started = s._partial_since
        s.check_idle(started + 599)  # not yet
        assert not s._aborted
        await c.send(q[7:])
        assert rows(await c.until(m.ReadyForQuery)) == [("3",)]
        assert s._partial_since == 0.0  # the message is whole: no clock
    finally:
        await c.close()


async def test_check_idle_ends_a_client_whose_message_does_not_complete(gateway_app: Any) -> None:
    app = await gateway_app(client_message_timeout=600)
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        s = await _only_session(app)
        await c.send(m.query("SELECT 4")[:3])
        await eventually(lambda: s._partial_since > 0, what="the clock to start")
        s._holding = True  # while the gateway holds the client's reading, its clock does not count
        s.check_idle(s._partial_since + 601)
        assert not s._aborted
        s._holding = False
        s.check_idle(s._partial_since + 601)
        (err,) = errors(await c.read_to_eof())
        assert err.sqlstate == "08P01" and "client_message_timeout" in err.message
    finally:
        await c.close()
