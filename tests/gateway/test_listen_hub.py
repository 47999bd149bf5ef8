"""gateway/listen.py: the per-pool listener connection and its internal
subscriber API (used by the result cache), against a real Postgres."""

from __future__ import annotations

import time
from typing import Any

import asyncpg
import pytest

from gateway.listen import hub_for
from tests.gateway.pool_helpers import eventually
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(60)


async def test_internal_subscriber_receives_in_order_and_survives_a_kill(gateway_app: Any, pg: PgCluster) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    pool = app.gateway.pools["app"]
    hub = hub_for(pool)
    got: list[tuple[str, int]] = []
    gaps: list[float] = []
    sub = await hub.subscribe_internal("hub_inv", lambda payload, pid: got.append((payload, pid)),
                                       on_gap=lambda: gaps.append(time.monotonic()))
    assert hub.backend_pid and "hub_inv" in hub.listening
    assert pool.total_servers() == 0  # not a pool server
    direct = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD))
    try:
        sender = await direct.fetchval("select pg_backend_pid()")
        for i in range(200):
            await direct.execute("select pg_notify('hub_inv', $1)", f"m{i}")
        await eventually(lambda: len(got) == 200, 10, "200 notifications")
        assert got == [(f"m{i}", sender) for i in range(200)]
        # the listener connection is killed: re-established, re-LISTENed, gap reported
        old = hub.backend_pid
        assert await direct.fetchval("select pg_terminate_backend($1)", old)
        t0 = time.monotonic()
        await eventually(lambda: hub.backend_pid not in (0, old) and "hub_inv" in hub.listening, 5, "reconnect")
        assert time.monotonic() - t0 < 1.0
        assert len(gaps) == 2  # lost, and back
        await direct.execute("notify hub_inv, 'after'")
        await eventually(lambda: got[-1:] == [("after", sender)], 5, "delivery after the kill")
        # closed subscriptions get nothing; the channel lingers (listen_linger) then is UNLISTENed
        sub.close()
        await direct.execute("notify hub_inv, 'closed'")
        got_n = len(got)  # 'closed' precedes 'x' on the listener connection: seen by then if delivered
        other: list[str] = []
        sub2 = await hub.subscribe_internal("hub_other", lambda p, _pid: other.append(p))
        await direct.execute("notify hub_other, 'x'")
        await eventually(lambda: other == ["x"], 5, "other channel")
        assert len(got) == got_n == 201 and got[-1][0] == "after"
        sub2.close()
    finally:
        await direct.close()


async def test_linger_zero_unlistens_upstream(gateway_app: Any, pg: PgCluster) -> None:
    app = await gateway_app(listen_linger=0)
    hub = hub_for(app.gateway.pools["app"])
    sub = await hub.subscribe_internal("gone_soon", lambda p, pid: None)
    direct = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD))
    try:
        pid = hub.backend_pid
        assert sorted(hub.listening) == ["gone_soon"]
        sub.close()
        await eventually(lambda: not hub.listening, 5, "UNLISTEN upstream")
        assert pid == hub.backend_pid  # same connection, kept
    finally:
        await direct.close()
