"""Shared gateway fixtures.

* ``gateway_app``: factory starting a real :class:`gateway.app.GatewayApp`
  (real ``gateway.core.Gateway``) in-process against the session ``pg``
  cluster, with a config built in code; ports are ephemeral::

      async def test_x(gateway_app):
          app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 2}})
          app.ws_url, app.http_port, app.pg_port, app.pg_dsn("alice", ALICE_PASSWORD, "app")

  Keyword arguments are [gateway] settings; ``databases`` entries are merged
  over the default ``app`` database (upstream ``scram_user`` on ``pg``'s
  ``wirepool_test``); ``users`` replaces the default users (alice, bob, carol).
  All apps are shut down after the test.

* ``echo_app``: the same listeners around :class:`EchoGateway`, a tiny test
  helper that echoes bytes (no Postgres) -- for transport-level tests.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest

from gateway.app import GatewayApp
from gateway.config import Config, parse_config
from gateway.streams import TransportError
from tests.pgcluster import PgCluster

#: edge users of the default config: name -> plaintext password
ALICE_PASSWORD = "alice-secret"
BOB_PASSWORD = "bob-secret"        # stored in the config as a SCRAM verifier
CAROL_PASSWORD = "carol-secret"
USERS_PLAIN = {"alice": ALICE_PASSWORD, "bob": BOB_PASSWORD, "carol": CAROL_PASSWORD}
#: SCRAM-SHA-256 verifier of BOB_PASSWORD
BOB_VERIFIER = ("SCRAM-SHA-256$4096:d2lyZXBvb2wtZXhhbXBsZQ==$xnxODH2sqUSvraA8iTcA6TJrRjZuEdSSvj0vg+8plq0="
                ":pt3B/OND57RrBvHdS/YFvj2CRWbluYGGPpmQk98drnA=")


def build_config(pg: PgCluster | None, *, databases: dict[str, dict[str, Any]] | None = None,
                 users: dict[str, dict[str, Any]] | None = None, **gateway: Any) -> Config:
    """A validated Config for tests: ephemeral listen + pg_listen ports unless overridden."""
    g: dict[str, Any] = {"listen": "127.0.0.1:0", "pg_listen": "127.0.0.1:0", "shutdown_timeout": 5.0}
    g.update(gateway)
    if g.get("pg_listen") is None:
        g["pg_listen"] = ""
    dbs: dict[str, dict[str, Any]] = {}
    default_db: dict[str, Any] = {"user": PgCluster.SCRAM_USER, "password": PgCluster.SCRAM_PASSWORD,
                                  "dbname": PgCluster.DATABASE}
    if pg is not None:
        default_db.update(host=pg.host, port=pg.port)
    dbs["app"] = dict(default_db)
    for name, over in (databases or {}).items():
        base = dict(dbs.get(name, default_db))
        base.update(over)
        dbs[name] = base
    if users is None:
        auth = g.get("auth_type", "scram-sha-256")
        users = {"alice": {"password": ALICE_PASSWORD},
                 "bob": {"password": BOB_PASSWORD if auth == "md5" else BOB_VERIFIER},
                 "carol": {"password": CAROL_PASSWORD}}
    return parse_config({"gateway": g, "databases": dbs, "users": users})


@pytest.fixture
async def gateway_app(pg: PgCluster) -> AsyncIterator[Callable[..., Awaitable[GatewayApp]]]:
    apps: list[GatewayApp] = []

    async def make(*, config: Config | None = None, **kw: Any) -> GatewayApp:
        cfg = config if config is not None else build_config(pg, **kw)
        app = GatewayApp(cfg)
        await app.start()
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            await app.shutdown(timeout=2.0)


class EchoGateway:
    """Test helper with the Gateway interface: echoes every received chunk.

    A TransportError is answered with ``ERR:<message>`` and the stream closed,
    mirroring what a session does (ErrorResponse 08P01 + close).  ``hold`` (an
    Event) makes sessions wait before reading, to exercise backpressure.
    """

    def __init__(self) -> None:
        self.ready = True
        self.streams: list[Any] = []
        self.hold: asyncio.Event | None = None
        self.received: dict[int, int] = {}
        self.closed_sessions = 0
        self.shutdown_called_with: float | None = None
        self._new_stream: asyncio.Queue[Any] | None = None

    @property
    def new_stream(self) -> "asyncio.Queue[Any]":
        if self._new_stream is None:
            self._new_stream = asyncio.Queue()
        return self._new_stream

    async def start(self) -> None:
        pass

    async def handle_client(self, stream: Any) -> None:
        self.streams.append(stream)
        self.new_stream.put_nowait(stream)
        key = id(stream)
        self.received[key] = 0
        try:
            if self.hold is not None:
                await self.hold.wait()
            while True:
                try:
                    data = await stream.recv()
                except TransportError as e:
                    await stream.send(b"ERR:" + str(e).encode())
                    return
                if not data:
                    return
                self.received[key] += len(data)
                await stream.send(data)
        except ConnectionError:
            return
        finally:
            self.closed_sessions += 1
            await stream.close()

    async def handle_cancel(self, process_id: int, secret_key: int) -> None:
        pass

    def is_ready(self) -> bool:
        return self.ready

    def stats(self) -> dict[str, Any]:
        return {"pools": [{"database": "app", "user": "app", "cl_active": len(self.streams),
                           "sv_idle": [1, 2, 3]}]}

    async def shutdown(self, timeout: float) -> None:
        self.shutdown_called_with = timeout
        for s in self.streams:
            await s.close()

    async def close(self) -> None:
        pass


@pytest.fixture
async def echo_app() -> AsyncIterator[tuple[GatewayApp, EchoGateway]]:
    fake = EchoGateway()
    app = GatewayApp(build_config(None), gateway=fake)
    await app.start()
    try:
        yield app, fake
    finally:
        await app.shutdown(timeout=1.0)
