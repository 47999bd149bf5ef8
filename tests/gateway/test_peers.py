"""Cancel keys name their owner; a CancelRequest landing on another instance reaches it
(gateway/peers.py, PgBouncer 1.23's peering).

Two instances with ``peer_id`` 1 and 2 and the same ``[gateway.peers]`` (those of
tests/gateway/test_forwarding.py, which calls :func:`cancels_land_on_another_instance`): a
``pg_sleep(30)`` started through one of them is cancelled by a CancelRequest
that lands on the other -- libpq's (psycopg) through a round-robin TCP proxy in
front of both ``pg_listen`` ports, and an HTTP ``/pg/cancel`` sent to the other
instance for an HTTP session of the first.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import time
from typing import Any

import psycopg
import pytest

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway.cluster import _http
from gateway.config import ConfigError, parse_config
from gateway.peers import MARK, key_layout, key_owner
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import admin, eventually
from tests.gateway.test_forwarding import BASIC, SECRET
from tests.gateway.test_takeover import cancel_from_a_new_connection
from tests.pgcluster import PgCluster


def test_key_layout_names_peer_and_worker() -> None:
    for peer, count in ((0, 2), (1, 1), (255, 3), (17, 64), (3, 256), (16383, 1), (8192, 256), (12345, 5)):
        for index in sorted({0, count - 1, count // 2}):
            prefix, mask, kprefix, kmask = key_layout(peer, index, count)
            for rnd in (0, mask, mask // 3):
                pid = prefix | rnd
                assert MARK <= pid < 1 << 31  # above any real pid (pid_max <= 2**22)
                for krnd in (0, kmask, kmask // 7):
                    secret = kprefix | krnd
                    assert 0 <= secret < 1 << 32
                    assert key_owner(pid, secret, count, peered=peer > 0) == (peer, index)
                    signed = secret - (1 << 32) if secret >= 1 << 31 else secret  # as BackendKeyData carries it
                    assert key_owner(pid, signed, count, peered=peer > 0) == (peer, index)
            assert mask >= (1 << 22) - 1  # room for the sessions of one worker: the pid is the session table's key
            assert kmask == (0xFFFFFFFF if peer == 0 else (1 << 18) - 1)  # >= 40 random bits in all
    assert key_owner(12345, 7, 2, True) is None  # a real backend pid (session mode) names no owner
    assert key_owner((1 << 30) - 1, 7, 2, True) is None


def test_peer_settings_are_validated() -> None:
    def cfg(**g: Any) -> Any:
        return parse_config({"gateway": g, "databases": {"app": {"user": "u"}}, "users": {"a": {"password": "p"}}})
    ok = cfg(peer_id=2, cluster_secret=SECRET, peers={"1": "http://h1:8432", "2": "https://h2:443/"})
    assert ok.gateway.peers == ((1, "http://h1:8432"), (2, "https://h2:443"))
    top = cfg(peer_id=16383, cluster_secret=SECRET, peers={"16383": "http://h1:8432", "1": "http://h2:8432"})
    assert top.gateway.peer_id == 16383 and dict(top.gateway.peers)[16383] == "http://h1:8432"
    for bad, msg in (({"peer_id": 3, "peers": {"1": "http://h:1"}}, "gateway.peer_id: 3 is not in [gateway.peers]"),
                     ({"peers": {"1": "http://h:1"}}, "gateway.peer_id: required with [gateway.peers]"),
                     ({"peer_id": 1, "peers": {"1": "http://h:1"}, "cluster_secret": None}, "cluster_secret"),
                     ({"peer_id": 1, "peers": {"x": "http://h:1"}}, "gateway.peers.x: peer ids are numbers"),
                     ({"peer_id": 1, "peers": {"1": "h:1"}}, "gateway.peers.1: invalid URL"),
                     ({"peer_id": 1, "peers": {"16384": "http://h:1"}}, "peer ids are numbers 1..16383"),
                     ({"peer_id": 1, "peers": {"0": "http://h:1"}}, "peer ids are numbers 1..16383"),
                     ({"peer_id": 16384}, "gateway.peer_id"),
                     ({"peer_id": -1}, "gateway.peer_id")):
        g = {"cluster_secret": SECRET, **bad}
        if g["cluster_secret"] is None:
            del g["cluster_secret"]
        with pytest.raises(ConfigError) as e:
            cfg(**g)
        assert msg in str(e.value), (bad, str(e.value))


class RoundRobinTcp:
    """TCP relay: each new connection goes to the next port."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.next = itertools.count()
        self.sent: list[int] = []
        self.server: asyncio.base_events.Server | None = None
        self.tasks: set[asyncio.Task[Any]] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for t in self.tasks:
            t.cancel()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.ports[next(self.next) % len(self.ports)]
        self.sent.append(port)
        ur, uw = await asyncio.open_connection("127.0.0.1", port)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()
        tasks = [asyncio.ensure_future(pipe(reader, uw)), asyncio.ensure_future(pipe(ur, writer))]
        self.tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.difference_update(tasks)


def _key_of(body: bytes) -> tuple[int, int]:
    r = MessageReader()
    r.feed(body)
    for t, payload in r.read():
        if t == ord("K"):
            pid, key = struct.unpack("!ii", payload[:8])
            return pid, key
    raise AssertionError(f"no BackendKeyData in {body[:200]!r}")


#: the peer_ids of the instances :func:`peer_settings` configures: PgBouncer's largest (all 14
#: bits set: the secret key is negative as an int32) and another above 8 bits
PEER_IDS = (16383, 12345, 1)


def peer_settings(ports: list[int]) -> list[dict[str, Any]]:
    """[gateway] keys of instances listening on ``ports``, peered (peer_id from PEER_IDS)."""
    peers = {f"peers.{PEER_IDS[i]}": f"http://127.0.0.1:{p}" for i, p in enumerate(ports)}
    return [{"peer_id": PEER_IDS[i], **peers} for i in range(len(ports))]


async def cancels_land_on_another_instance(pg: PgCluster, pg_db: str, a: Any, b: Any) -> None:
    """The proof, run by tests/gateway/test_forwarding.py on its two instances
    (``peer_settings``; starting two more here would cost as much again)."""
    # pg_listen: the query runs through a, libpq's CancelRequest lands on b
    proxy = RoundRobinTcp([a.pg_port, b.pg_port])
    port = await proxy.start()
    try:
        conn = await psycopg.AsyncConnection.connect(host="127.0.0.1", port=port, user="alice",
                                                     password=ALICE_PASSWORD, dbname="app", autocommit=True)
        try:
            await cancel_from_a_new_connection(conn, pg, pg_db)
        finally:
            await conn.close()
    finally:
        await proxy.close()
    assert proxy.sent[:2] == [a.pg_port, b.pg_port], proxy.sent
    # /pg/cancel: an HTTP session of b, its statement cancelled by a request to a
    url_a, url_b = f"http://127.0.0.1:{a.http_port}", f"http://127.0.0.1:{b.http_port}"
    st, rh, body = await _http(url_b, "POST", "/pg", [BASIC, ("wirepool-database", "app"),
                                                      ("wirepool-session", "new")], b"")
    assert st == 200, body
    pid, key = _key_of(body)
    assert key_owner(pid, key, 1, True) == (PEER_IDS[1], 0), (pid, key)  # b's key names b
    token = dict(rh)["wirepool-session"]
    t0 = time.monotonic()
    sleep = asyncio.ensure_future(_http(url_b, "POST", "/pg", [("wirepool-session", token)],
                                        m.query("SELECT pg_sleep(30)")))
    watcher = await admin(pg, pg_db)
    try:
        await eventually(lambda: watcher.fetchval("SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                                                  "AND query = 'SELECT pg_sleep(30)'"), timeout=20,
                         what="the statement running")
    finally:
        await watcher.close()
    st, _, _ = await _http(url_a, "POST", "/pg/cancel", [], m.cancel_request(pid, key))
    assert st == 204
    st, rh, body = await asyncio.wait_for(sleep, 20)
    assert st == 200 and b"57014" in body, body[:300]  # canceling statement due to user request
    assert time.monotonic() - t0 < 15
    # a wrong secret cancels nothing, and is not an error either
    st, _, _ = await _http(url_a, "POST", "/pg/cancel", [], m.cancel_request(pid, key ^ 1))
    assert st == 204
