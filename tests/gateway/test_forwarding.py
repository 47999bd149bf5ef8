"""``/pg`` session tokens name their owner; other workers/instances forward to it.

Proof of issue 14: 200 interactive ``/pg`` transactions through the real
driver (``http://`` DSN), spread over 2 workers and over 2 separate instances
behind a round-robin HTTP proxy (every request goes to the next backend on a
fresh connection, so consecutive requests of one transaction land on different
processes); each transaction commits exactly once (counted in the database),
and forged or replayed tokens are refused when they land on a non-owner.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import re
from typing import Any

import h11

import driver
from driver.protocol import messages as m
from gateway.cluster import _http, token_secret
from tests.gateway.pool_helpers import admin
from tests.gateway.served import Served
from tests.pgcluster import PgCluster

SECRET = "forwarding-test-secret-0123456789"
TRANSACTIONS = 200
CONNECTIONS = 10


class RoundRobinProxy:
    """HTTP/1.1 proxy: each request goes to the next backend port, on a new connection."""

    def __init__(self, ports: list[int]) -> None:
        self.ports = ports
        self.next = itertools.count()
        self.server: asyncio.base_events.Server | None = None
        self.sent: dict[int, int] = {p: 0 for p in ports}

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                req, body = None, b""
                while True:
                    ev = conn.next_event()
                    if ev is h11.NEED_DATA:
                        data = await reader.read(65536)
                        conn.receive_data(data)
                        if not data and req is None:
                            return
                    elif isinstance(ev, h11.Request):
                        req = ev
                    elif isinstance(ev, h11.Data):
                        body += bytes(ev.data)
                    elif isinstance(ev, h11.EndOfMessage):
                        break
                    elif isinstance(ev, h11.ConnectionClosed):
                        return
                assert req is not None
                port = self.ports[next(self.next) % len(self.ports)]
                self.sent[port] += 1
                headers = [(k.decode(), v.decode("latin-1")) for k, v in req.headers
                           if k.lower() not in (b"host", b"content-length", b"connection")]
                status, rh, rbody = await _http(f"http://127.0.0.1:{port}", req.method.decode(),
                                                req.target.decode(), headers, body)
                out = [(k, v) for k, v in rh if k not in ("content-length", "connection", "transfer-encoding")]
                writer.write(conn.send(h11.Response(status_code=status,
                                                    headers=out + [("content-length", str(len(rbody)))])))
                writer.write(conn.send(h11.Data(data=rbody)) + conn.send(h11.EndOfMessage()))
                await writer.drain()
                conn.start_next_cycle()
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()


async def _transactions(pg: PgCluster, pg_db: str, proxy_port: int) -> None:
    """TRANSACTIONS interactive transactions over CONNECTIONS driver connections; each commits once."""
    dsn = f"http://alice:{'alice-secret'}@127.0.0.1:{proxy_port}/app"

    async def worker(w: int) -> None:
        conn = await driver.connect(dsn)
        try:
            for k in range(w, TRANSACTIONS, CONNECTIONS):
                async with conn.transaction():  # BEGIN + INSERT, UPDATE, COMMIT: three requests, one token each
                    await conn.execute("INSERT INTO fwd(k, w) VALUES ($1, $2)", k, w)
                    await conn.execute("UPDATE fwd SET n = n + 1 WHERE k = $1", k)
        finally:
            await conn.close()

    await asyncio.gather(*(worker(w) for w in range(CONNECTIONS)))
    a = await admin(pg, pg_db)
    try:
        rows = await a.fetch("SELECT k, count(*) AS c, sum(n) AS n FROM fwd GROUP BY k ORDER BY k")
    finally:
        await a.close()
    assert [(r["k"], r["c"], r["n"]) for r in rows] == [(k, 1, 1) for k in range(TRANSACTIONS)]


async def _raw_pg(port: int, body: bytes, headers: list[tuple[str, str]]) -> tuple[int, dict[str, str], bytes]:
    status, rh, data = await _http(f"http://127.0.0.1:{port}", "POST", "/pg", headers, body)
    return status, dict(rh), data


BASIC = ("authorization", "Basic YWxpY2U6YWxpY2Utc2VjcmV0")  # alice:alice-secret


async def _forgery_and_replay(owner_port: int, other_port: int) -> None:
    """A token issued by ``owner_port`` presented at ``other_port``: forwarded once, then a replay (409);
    a token whose MAC is altered, or signed with another cluster secret: 401 at the edge."""
    st, h, _ = await _raw_pg(owner_port, m.query("BEGIN; INSERT INTO fwd(k, w) VALUES (-1, -1)"),
                             [BASIC, ("wirepool-database", "app")])
    assert st == 200 and h["wirepool-status"] == "T", (st, h)
    token = h["wirepool-session"]
    payload, _, mac = token.partition(".")
    forged = payload + "." + ("A" if mac[0] != "A" else "B") + mac[1:]
    st, h2, body = await _raw_pg(other_port, m.query("SELECT 1"), [("wirepool-session", forged)])
    assert st == 401 and h2["wirepool-error"] == "08P01", (st, body)
    st, h2, body = await _raw_pg(other_port, m.query("COMMIT"), [("wirepool-session", token)])
    assert st == 200 and h2["wirepool-status"] == "I", (st, body)  # forwarded to the owner and committed
    st, h3, body = await _raw_pg(other_port, m.query("COMMIT"), [("wirepool-session", token)])
    assert st == 409 and h3["wirepool-error"] == "08P01" and b"already used" in body, (st, body)  # replay
    # the same payload (owner field intact) signed with another secret, as another cluster would
    st, h, _ = await _raw_pg(owner_port, m.query("BEGIN"), [BASIC, ("wirepool-database", "app")])
    live = h["wirepool-session"]
    raw = base64.urlsafe_b64decode(live.partition(".")[0] + "==")
    mac = hmac.new(token_secret(b"another-cluster-secret-0123456789"), raw, hashlib.sha256).digest()[:16]
    foreign = live.partition(".")[0] + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    st, _, body = await _raw_pg(other_port, m.query("COMMIT"), [("wirepool-session", foreign)])
    assert st == 401 and b"invalid HTTP session token" in body, (st, body)
    st, h, _ = await _raw_pg(other_port, m.query("ROLLBACK"), [("wirepool-session", live)])
    assert st == 200 and h["wirepool-status"] == "I"  # the real token still works (nothing consumed it)


def _forwarded(text: str) -> float:
    return sum(float(v) for v in re.findall(r"^wirepool_http_forwarded(?:\{[^}]*\})? (\S+)$", text, re.M))


def _prepare(pg: PgCluster, pg_db: str) -> None:
    pg.psql("CREATE TABLE fwd (k int, w int, n int NOT NULL DEFAULT 0); GRANT ALL ON fwd TO scram_user", db=pg_db)


async def test_pg_transactions_spread_over_two_workers(pg: PgCluster, pg_db: str) -> None:
    _prepare(pg, pg_db)
    with Served(pg, pg_db, {"workers": 2, "default_pool_size": 4}) as gw:
        await gw.wait_ready()
        proxy = RoundRobinProxy([gw.http_port, gw.http_port])  # a new connection per request: either worker
        port = await proxy.start()
        try:
            await _transactions(pg, pg_db, port)
        finally:
            await proxy.close()
        assert _forwarded(await gw.metrics()) > 0
        # which worker a connection reaches is the kernel's choice: try until the token's owner is the other
        for _ in range(40):
            st, h, _ = await _raw_pg(gw.http_port, m.query("BEGIN"), [BASIC, ("wirepool-database", "app")])
            before = _forwarded(await gw.metrics())
            st, h2, _ = await _raw_pg(gw.http_port, m.query("ROLLBACK"), [("wirepool-session", h["wirepool-session"])])
            assert st == 200
            if _forwarded(await gw.metrics()) > before:
                break
        else:
            raise AssertionError("no request reached the other worker in 40 tries")
        await _forgery_and_replay(gw.http_port, gw.http_port)


async def test_pg_transactions_spread_over_two_instances(pg: PgCluster, pg_db: str) -> None:
    _prepare(pg, pg_db)
    from tests.gateway.test_peers import cancels_land_on_another_instance, peer_settings
    from tests.pgcluster import free_port
    ports = [free_port(), free_port()]
    settings: list[dict[str, Any]] = [
        {"listen": f"127.0.0.1:{p}", "advertise_url": f"http://127.0.0.1:{p}", "cluster_secret": SECRET,
         "default_pool_size": 3, **peers} for p, peers in zip(ports, peer_settings(ports))]
    with Served(pg, pg_db, settings[0]) as a, Served(pg, pg_db, settings[1]) as b:
        for gw in (a, b):
            await gw.wait_ready()
        proxy = RoundRobinProxy([a.http_port, b.http_port])
        port = await proxy.start()
        try:
            await _transactions(pg, pg_db, port)
        finally:
            await proxy.close()
        assert proxy.sent[a.http_port] > TRANSACTIONS and proxy.sent[b.http_port] > TRANSACTIONS
        assert _forwarded(await a.metrics()) > 0 and _forwarded(await b.metrics()) > 0
        await _forgery_and_replay(a.http_port, b.http_port)
        # CancelRequests landing on the other instance (peer_id: gateway/peers.py)
        await cancels_land_on_another_instance(pg, pg_db, a, b)
