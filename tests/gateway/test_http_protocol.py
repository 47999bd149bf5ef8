"""Postgres protocol over HTTP: the HttpExecutor primitive and the ``POST /pg``
endpoint, against a real gateway and a real PostgreSQL."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway.http_exec import HttpAuthError, HttpExecError, get_executor
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD


def backend(data: bytes) -> list[tuple[int, bytes]]:
    r = MessageReader()
    r.feed(data)
    msgs = r.read()
    assert r.buffered == 0
    return msgs


def rows(data: bytes) -> list[tuple[Any, ...]]:
    return [tuple(None if v is None else v.decode() for v in m.decode_data_row(b))
            for t, b in backend(data) if t == ord("D")]


def errors(data: bytes) -> list[dict[str, str]]:
    return [m.decode_fields(b) for t, b in backend(data) if t == ord("E")]


def types(data: bytes) -> str:
    return "".join(chr(t) for t, _ in backend(data))


def pool_stats(app: Any, db: str = "app") -> dict[str, Any]:
    return app.gateway.stats()["pools"][db]


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.01)


# --------------------------------------------------------------------------- executor

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
