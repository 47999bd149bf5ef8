"""Abandoned HTTP work is cancelled (issue 10, item 5): when the client of a
``POST /sql`` or ``POST /pg`` request disconnects before the reply, the running
query gets a CancelRequest and its server goes back to the pool (rolled back
if needed) -- instead of running until it ends or ``sql_timeout`` fires."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

from driver.protocol import messages as m
from gateway.http_exec import get_executor
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import admin, backends, eventually, pool_stats
from tests.gateway.test_neon_sql import cs_for

pytestmark = pytest.mark.timeout(60)


def _request(path: str, body: bytes, headers: dict[str, str]) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return head.encode() + b"\r\n" + body


def _sql_request(sql: str) -> bytes:
    return _request("/sql", json.dumps({"query": sql, "params": []}).encode(),
                    {"content-type": "application/json", "neon-connection-string": cs_for()})


def _pg_request(*sqls: str) -> bytes:
    body = b"".join(m.parse("", s) + m.bind("", "", [], [], []) + m.execute() for s in sqls) + m.sync()
    auth = base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()
    return _request("/pg", body, {"authorization": f"Basic {auth}", "wirepool-database": "app"})


@pytest.mark.parametrize("kind", ["sql", "pg", "pg-transaction"])
async def test_aborted_request_cancels_its_query(gateway_app: Any, pg: Any, pg_db: str, kind: str) -> None:
    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 1, "dbname": pg_db}})
    adm = await admin(pg, pg_db)
    try:
        if kind == "sql":
            req = _sql_request("select pg_sleep(30)")
        elif kind == "pg":
            req = _pg_request("select pg_sleep(30)")
        else:  # inside an explicit transaction: the server must be rolled back
            req = _pg_request("begin", "create temp table t_abort(x int)", "select pg_sleep(30)")
        r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
        w.write(req)
        await w.drain()

        async def sleeping() -> list[Any]:
            return [b for b in await backends(adm, pg_db, "active") if "pg_sleep" in b["query"]]

        await eventually(sleeping, what="the query to run")
        pid = (await sleeping())[0]["pid"]
        w.close()  # the HTTP client goes away before the reply
        t0 = time.monotonic()
        await eventually(lambda: _gone(sleeping), timeout=1.0, what="the query to be cancelled")
        elapsed = time.monotonic() - t0
        # the server is back in the pool, idle and clean (not closed)
        await eventually(lambda: pool_stats(app)["sv_idle"] == 1 and pool_stats(app)["sv_active"] == 0,
                         timeout=5, what="the server back in the pool")
        idle = [b["pid"] for b in await backends(adm, pg_db, "idle")]
        assert pid in idle, (pid, idle)
        assert get_executor(app.gateway).abandoned == 1
        # the next request gets that same server, outside any transaction
        r2, w2 = await asyncio.open_connection("127.0.0.1", app.http_port)
        w2.write(_sql_request("select pg_backend_pid() as pid, to_regclass('pg_temp.t_abort') is null as no_temp"))
        data = await asyncio.wait_for(r2.read(65536), 10)
        w2.close()
        assert b"200 OK" in data.split(b"\r\n", 1)[0], data
        payload = json.loads(data.split(b"\r\n\r\n", 1)[1])
        assert payload["rows"] == [{"pid": pid, "no_temp": True}], (payload, elapsed)
    finally:
        await adm.close()


async def _gone(sleeping: Any) -> bool:
    return not await sleeping()
