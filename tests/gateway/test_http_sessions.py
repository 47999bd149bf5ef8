"""gateway.http_sessions: HTTP session tokens (single use, signed) keep an
interactive transaction on its server, through the executor, against a real
gateway and a real PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest

from driver.protocol import messages as m
from gateway.http_exec import HttpExecError, get_executor
from tests.gateway.conftest import BOB_PASSWORD
from tests.gateway.http_helpers import rows


async def test_executor_interactive_transaction(gateway_app: Any, pg: Any) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 1}})
    ex = get_executor(app.gateway)
    p = await ex.authenticate("app", "bob", BOB_PASSWORD, None)  # SCRAM verifier user
    r1 = await ex.run(p, m.query("begin; select pg_backend_pid()"), timeout=10)
    assert r1.status == "T" and r1.session_token
    pid = rows(r1.data)[0][0]
    r2 = await ex.run(None, m.query("select pg_backend_pid()"), session_token=r1.session_token, timeout=10)
    assert rows(r2.data)[0][0] == pid and r2.status == "T" and r2.session_token != r1.session_token
    # replay of the first token
    with pytest.raises(HttpExecError) as ei:
        await ex.run(None, m.query("select 1"), session_token=r1.session_token, timeout=10)
    assert ei.value.status == 409 and ei.value.sqlstate == "08P01"
    # forgery: flip one character of the signature
    t = r2.session_token
    assert t is not None
    forged = t[:-2] + ("A" if t[-2] != "A" else "B") + t[-1]
    with pytest.raises(HttpExecError) as ei:
        await ex.run(None, m.query("select 1"), session_token=forged, timeout=10)
    assert ei.value.status == 401 and ei.value.sqlstate == "08P01"
    r3 = await ex.run(None, m.query("commit"), session_token=t, timeout=10)
    assert r3.status == "I" and r3.session_token is None
    with pytest.raises(HttpExecError) as ei:
        await ex.run(None, m.query("select 1"), session_token=t, timeout=10)
    assert ei.value.status == 409
    with pytest.raises(HttpExecError) as ei:
        await ex.run(None, m.query("select 1"), session_token=r3.session_token or t[:-1], timeout=10)
