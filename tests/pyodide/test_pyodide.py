"""The driver inside Pyodide (WebAssembly CPython under Node) against a live gateway.

One Node process runs tests/pyodide/suite_driver.py inside Pyodide: connect
over the JS WebSocket (SCRAM with the pure-Python PBKDF2, and a pipelined
cleartext-password login), a parameterised query per codec family,
committed and rolled-back transactions, errors with their SQLSTATE, a bad
password, and the clear error for ``postgresql://``; over HTTP (JS fetch)
too when the gateway has the protocol-over-HTTP endpoint.

No raw TCP from the Pyodide side: the gateway runs without ``pg_listen``,
every WebSocket upgrade and HTTP request it receives is recorded (Emscripten's
fake ``socket.connect`` would arrive as a WebSocket on ``/`` with subprotocol
``binary``), and the script also records any ``socket.connect`` call.  A
negative control proves the check works: the script opens one raw socket to a
separate control gateway, which must see exactly that bridge.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from bench.importtime import PYODIDE_CONNECT_PATH
from tests.gateway.conftest import ALICE_PASSWORD, CAROL_PASSWORD
from tests.pgcluster import PgCluster
from tests.pyodide.conftest import HERE

pytestmark = pytest.mark.timeout(120)


class UpgradeLog:
    """Wraps a GatewayApp's WebSocket and HTTP handlers to record what arrives."""

    def __init__(self, app: Any) -> None:
        self.upgrades: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str]] = []
        http = app.http
        for path, handler in list(http.ws_routes.items()):
            http.ws_routes[path] = self._wrap_ws(handler)
        if http.ws_default is not None:
            http.ws_default = self._wrap_ws(http.ws_default)
        for key, handler in list(http.routes.items()):
            http.routes[key] = self._wrap_http(key, handler)

    def _wrap_ws(self, handler: Any) -> Any:
        async def on_stream(stream: Any) -> None:
            self.upgrades.append({"path": stream.path, "kind": stream.kind,
                                  "subprotocol": stream.subprotocol})
            await handler(stream)
        return on_stream

    def _wrap_http(self, key: tuple[str, str], handler: Any) -> Any:
        async def on_request(req: Any) -> Any:
            self.requests.append(key)
            return await handler(req)
        return on_request


async def test_driver_in_pyodide(gateway_app: Any, pyodide: Any) -> None:
    # pg_listen disabled: the only way in is WebSocket/HTTP.
    app = await gateway_app(pg_listen=None)
    pw_app = await gateway_app(pg_listen=None, auth_type="password")
    control = await gateway_app(pg_listen=None)  # receives one deliberate raw socket
    logs = [UpgradeLog(app), UpgradeLog(pw_app)]
    control_log = UpgradeLog(control)
    table = f"pyo_{time.monotonic_ns()}"
    setup = await _admin(app)
    await setup.execute(f"create table {table} (id serial primary key, tag text not null, n int)")
    try:
        args = {
            "ws_dsn": f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app",
            "password": ALICE_PASSWORD,
            "ws_pipelined_dsn": f"ws://carol:{CAROL_PASSWORD}@127.0.0.1:{pw_app.http_port}/app",
            "tcp_dsn": f"postgresql://alice:{ALICE_PASSWORD}@127.0.0.1:5432/app",
            "http_dsn": f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app",
            "table": table,
            "control_port": control.http_port,
        }
        t0 = time.perf_counter()
        doc = await pyodide(HERE / "suite_driver.py", args)
        elapsed = time.perf_counter() - t0
        assert doc["ok"], doc.get("error", "") + "\n" + doc.get("stderr", "")
        res = doc["result"]
        if os.environ.get("WP_PYODIDE_DUMP"):
            print(json.dumps(res, indent=1))
        print("pyodide timings", doc["timings"], "wall", round(elapsed, 1), "s;",
              {k: res["ws"][k] for k in ("connect_ms", "first_query_ms", "select1_ms")})
        assert res["platform"] == "emscripten"
        ws = res["ws"]
        assert ws["transport"] == "JsWebSocketTransport"
        # the first ws:// connect + query loads what that transport needs, no more
        # (and bench/importtime's PYODIDE_CONNECT_PATH is part of what it loads)
        loaded = set(ws["modules"])
        assert set(PYODIDE_CONNECT_PATH) <= loaded, loaded
        for unneeded in ("driver.transport.tcp", "driver.transport.websocket",
                         "driver.transport.http", "driver.protocol.backend_encoders",
                         "driver.protocol.frontend_messages", "driver.protocol.http_envelope",
                         "driver.copy", "driver.pool", "urllib.parse"):
            assert unneeded not in loaded, (unneeded, sorted(loaded))
        assert ws["first_query"] == PgCluster.SCRAM_USER  # the pool's upstream role
        bad = {k: v["got"] for k, v in ws["codecs"].items() if not v["ok"]}
        assert not bad, bad
        assert len(ws["codecs"]) >= 25
        assert ws["tx"] == {"in_tx_during": True, "committed": 1, "seen_inside": 1,
                            "rolled_back": 0, "in_tx_after": False}
        assert ws["errors"]["undefined_table"] == {"class": "UndefinedTableError", "sqlstate": "42P01"}
        assert ws["errors"]["division"] == {"class": "DivisionByZeroError", "sqlstate": "22012"}
        assert ws["errors"]["unique"]["sqlstate"] == "23505"
        assert ws["errors"]["unique"]["class"] == "UniqueViolationError"
        assert ws["errors"]["usable_after"] == 42
        assert ws["big_len"] == 1_000_000 and ws["rows_5000"] == 5000 * 5001 // 2
        assert res["ws_pipelined"]["one"] == 1
        assert res["bad_password"] == {"class": "InvalidPasswordError", "sqlstate": "28P01"}
        assert res["tcp"]["class"] == "ClientConfigurationError"
        assert "Pyodide" in res["tcp"]["message"] and "ws://" in res["tcp"]["message"]
        http = res["http"]
        print("pyodide http:", {k: http[k] for k in ("connect_ms", "first_query_ms", "select1_ms")},
              "suite ms: ws", res["ws_ms"], "http", res["http_ms"])
        assert (http["transport"], http["client"]) == ("HttpTransport", "FetchClient")
        assert http["first_query"] == PgCluster.DATABASE
        bad = {k: v["got"] for k, v in http["codecs"].items() if not v["ok"]}
        assert not bad, bad
        assert http["tx"] == ws["tx"]
        assert http["errors"] == ws["errors"]
        assert http["interactive"] == {"same_backend": True, "seen_inside": 1, "after": 1}
        assert http["listen"]["sqlstate"] == "0A000"  # LISTEN is not possible over HTTP
        # what the database sees from the Pyodide side
        rows = await setup.fetch(f"select tag from {table} order by id")
        assert [r["tag"] for r in rows] == ["ws-base", "ws-commit", "http-base", "http-commit", "http-inter"]
        # No raw TCP: nothing called socket.connect, and the gateways saw only
        # WebSocket upgrades on /v2 (no Emscripten socket bridge on "/").
        assert res["socket_connects"] == []
        upgrades = [u for log in logs for u in log.upgrades]
        assert upgrades and all(u["path"] == "/v2" and u["subprotocol"] is None for u in upgrades), upgrades
        assert app.listener_stats()["tcp_connections_accepted"] == 0
        # ... and the check does catch a raw socket: the control gateway saw it
        assert res["control_socket"] == "opened"
        assert control_log.upgrades == [{"path": "/", "kind": "ws", "subprotocol": "binary"}]
        # HTTP: only POSTs to the protocol endpoint
        posts = [r for log in logs for r in log.requests]
        assert posts and set(posts) == {("POST", "/pg")}, set(posts)
        assert len(posts) >= http["requests"]
        # admin connection (1) + suite + bad password; pipelined one on pw_app
        assert len(logs[0].upgrades) >= 3 and len(logs[1].upgrades) == 1
    finally:
        await setup.execute(f"drop table if exists {table}")
        await setup.close()


async def _admin(app: Any) -> Any:
    import driver

    return await driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app",
                                statement_cache_size=0)
