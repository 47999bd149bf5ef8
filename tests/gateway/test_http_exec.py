"""gateway.http_exec: the HttpExecutor primitive under the HTTP endpoints (a
batch in, the raw replies out; credentials checked like any client's),
against a real gateway and a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from driver.protocol import messages as m
from gateway.http_exec import HttpAuthError, get_executor
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.http_helpers import rows, types
from tests.gateway.pool_helpers import eventually, pool_stats


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    await eventually(cond, timeout=timeout)


async def test_executor_one_shot(gateway_app: Any) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    ex = get_executor(app.gateway)
    p = await ex.authenticate("app", "alice", ALICE_PASSWORD, None)
    res = await ex.run(p, m.query("select 1 as a, 'x' as b"), timeout=10)
    assert res.status == "I" and res.session_token is None and res.fatal is None
    assert rows(res.data) == [("1", "x")]
    assert types(res.data) == "TDCZ"
    # extended protocol pipeline: two Syncs -> two ReadyForQuery in one call
    batch = (m.parse("", "select $1::int + 1") + m.bind("", "", [0], [b"41"], [0]) + m.execute() + m.sync()
             + m.parse("", "select $1::text") + m.bind("", "", [0], [b"hi"], [0]) + m.describe("P") + m.execute()
             + m.sync())
    res = await ex.run(p, batch, timeout=10)
    assert res.ready_count == 2 and rows(res.data) == [("42",), ("hi",)]
    await wait_for(lambda: pool_stats(app)["sv_active"] == 0 and pool_stats(app)["cl_active"] == 0)


async def test_executor_auth(gateway_app: Any) -> None:
    app = await gateway_app()
    ex = get_executor(app.gateway)
    for user, pw in (("alice", "wrong"), ("nobody", "x"), ("alice", None)):
        with pytest.raises(HttpAuthError) as ei:
            await ex.authenticate("app", user, pw, None)
        assert ei.value.sqlstate == "28P01" and ei.value.status == 401
    with pytest.raises(HttpAuthError) as ei:
        await ex.authenticate("nodb", "alice", ALICE_PASSWORD, None)
    assert ei.value.sqlstate == "3D000"
