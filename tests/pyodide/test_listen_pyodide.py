"""The driver in Pyodide (JS fetch streaming) listens through GET /listen: events
arrive, and a reconnect with Last-Event-ID gets what was sent while away."""

from __future__ import annotations

from typing import Any

import pytest

from tests.gateway.conftest import ALICE_PASSWORD

pytestmark = pytest.mark.timeout(120)

SCRIPT = r'''
import asyncio, sys
import driver

async def wait_for(pred, what):
    for _ in range(500):
        if pred():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out: " + what)

got, notes = [], []
conn = await driver.connect(ARGS["http_dsn"])
conn.add_log_listener(lambda c, msg: notes.append(str(msg)))
cb = lambda c, pid, ch, payload: got.append([pid, ch, payload])
await conn.add_listener("pyo", cb)
other = await driver.connect(ARGS["http_dsn"])  # the sender: another client
sender = await other.fetchval("select pg_backend_pid()")
for i in range(3):
    await other.execute("select pg_notify('pyo', $1)", f"p{i}")
await wait_for(lambda: len(got) == 3, "3 notifications")
last_id = conn._sse.last_id
await conn.remove_listener("pyo", cb)  # the stream ends; sent meanwhile: kept in the gateway's backlog
for i in range(3, 5):
    await other.execute("select pg_notify('pyo', $1)", f"p{i}")
await conn.add_listener("pyo", cb)  # reconnects with Last-Event-ID
await wait_for(lambda: len(got) == 5, "the missed two")
await other.execute("select pg_notify('pyo', 'live')")
await wait_for(lambda: len(got) == 6, "live after resume")
result = {"platform": sys.platform, "got": got, "sender": sender, "last_id": last_id, "notes": notes,
          "opener": type(conn._sse).__module__}
await conn.close()
await other.close()
'''


async def test_driver_in_pyodide_listens_over_sse(gateway_app: Any, pyodide: Any) -> None:
    app = await gateway_app(pg_listen=None, databases={"app": {"pool_size": 1}})
    doc = await pyodide(SCRIPT, {"http_dsn": f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app"})
    assert doc["ok"], doc.get("error", "") + "\n" + doc.get("stderr", "")
    res = doc["result"]
    assert res["platform"] == "emscripten"
    pid = res["sender"]
    assert res["got"] == [[pid, "pyo", p] for p in ("p0", "p1", "p2", "p3", "p4", "live")]
    assert res["last_id"] and not res["notes"]
