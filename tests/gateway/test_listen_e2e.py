"""LISTEN/NOTIFY through the transaction pool (issue 13), with real clients:
asyncpg over pg_listen, this project's driver over WebSocket, the Neon
driver's Client over WebSocket (node), raw protocol clients compared with a
direct connection to Postgres."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from typing import Any

import asyncpg
import pytest

import driver
from driver.protocol import messages as m
from gateway.listen import hub_for
from gateway.listen_core import Registry
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.node_helpers import JS_DIR
from prometheus_client.parser import text_string_to_metric_families

from tests.gateway.pool_helpers import RawClient, admin, eventually, rows
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(120)


class NodeListener:
    """tests/js/neon_listen.mjs: the Neon driver's Client LISTENing over WebSocket."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, app: Any, channel: str, count: int) -> "NodeListener":
        node = shutil.which("node")
        assert node is not None, "node is required (installed on every project machine)"
        assert (JS_DIR / "node_modules" / "@neondatabase" / "serverless").is_dir(), "npm install in tests/js"
        cs = f"postgresql://alice:{ALICE_PASSWORD}@127.0.0.1:5432/app"
        proc = await asyncio.create_subprocess_exec(
            node, str(JS_DIR / "neon_listen.mjs"), f"127.0.0.1:{app.http_port}", cs, channel, str(count),
            cwd=str(JS_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "NODE_NO_WARNINGS": "1"})
        self = cls(proc)
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if line.strip() != b"ready":
            rest = await proc.stdout.read()
            err = await proc.stderr.read() if proc.stderr else b""
            raise AssertionError(f"neon_listen.mjs did not get ready: {line!r} {rest!r} {err!r}")
        return self

    async def result(self, timeout: float = 90) -> dict[str, Any]:
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        assert self.proc.returncode == 0, err
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        assert lines, (out, err)
        res: dict[str, Any] = json.loads(lines[-1])
        return res


async def _http_get(port: int, path: str) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(f"GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode())
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    return data.partition(b"\r\n\r\n")[2]


def _dsn(app: Any) -> str:
    return app.pg_dsn("alice", ALICE_PASSWORD, "app")


def _ws_dsn(app: Any) -> str:
    return f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app"


async def test_delivery_to_every_client_while_50_others_work(gateway_app: Any) -> None:
    """Pool of 2, transaction mode: asyncpg (pg_listen), the driver (WebSocket
    and HTTP: GET /listen) and the Neon Client (WebSocket) each get 1,000 notifications in order with
    the right payload and the notifying backend's pid, while 50 other clients
    run transactions."""
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    n = 1000
    pg_got: list[tuple[int, str]] = []
    ws_got: list[tuple[int, str]] = []
    a = await asyncpg.connect(_dsn(app))
    await a.add_listener("fan", lambda _c, pid, _ch, payload: pg_got.append((pid, payload)))
    d = await driver.connect(_ws_dsn(app))
    await d.add_listener("fan", lambda _c, pid, _ch, payload: ws_got.append((pid, payload)))
    http_got: list[tuple[int, str]] = []
    h = await driver.connect(f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app")  # GET /listen (SSE)
    await h.add_listener("fan", lambda _c, pid, _ch, payload: http_got.append((pid, payload)))
    node = await NodeListener.start(app, "fan", n)
    pool = app.gateway.pools["app"]
    assert pool.total_servers() <= 2 and hub_for(pool).listening == {"fan"}

    stop = asyncio.Event()
    done = [0] * 50

    async def worker(i: int) -> None:
        conn = await asyncpg.connect(_dsn(app))
        try:
            while not stop.is_set() or not done[i]:
                async with conn.transaction():
                    assert await conn.fetchval("select $1::int + 1", i) == i + 1
                    await conn.execute("select pg_sleep(0)")
                done[i] += 1
                await asyncio.sleep(0.01)  # load shape (not a synchronisation)
        finally:
            await conn.close()

    workers = [asyncio.create_task(worker(i)) for i in range(50)]
    sender = await asyncpg.connect(_dsn(app))
    try:
        for i in range(0, n, 50):  # 20 statements of 50 NOTIFYs each
            await sender.execute("select pg_notify('fan', i || ':' || pg_backend_pid()) "
                                 "from generate_series($1::int, $1::int + 49) i", i)
        stop.set()
        await asyncio.gather(*workers)
        assert all(done) and sum(done) >= 50
        await eventually(lambda: min(len(pg_got), len(ws_got), len(http_got)) >= n, 30, "1,000 notifications")
        for got in (pg_got, ws_got, http_got):
            assert [p.split(":")[0] for _pid, p in got] == [str(i) for i in range(n)]
            assert all(pid == int(p.split(":")[1]) for pid, p in got)  # the notifying backend's pid
        res = await node.result()
        assert res.get("command") == "LISTEN" and not res.get("fatal") and not res.get("timeout"), res
        assert [p.split(":")[0] for p in res["payloads"]] == [str(i) for i in range(n)]
        assert res["pids"] == [int(p.split(":")[1]) for p in res["payloads"]]
        assert pool.total_servers() <= 2  # the listener connection is not a pool server
    finally:
        stop.set()
        for w in workers:
            w.cancel()
        await sender.close()
        await a.close()
        await d.close()
        await h.close()
        if node.proc.returncode is None:
            node.proc.kill()
            await node.proc.wait()


# ------------------------------------------------------------------ semantics

async def _script(listener: RawClient, notify: Any, arrived: Any = None) -> tuple[list[Any], list[tuple[str, str]]]:
    """The same steps on a direct connection and through the gateway: replies
    (type, tag/status) per query, and the notifications received, in order.
    ``arrived(payload)``: waits until the gateway's listener connection has
    received that notification (the gateway's run), where the order matters."""
    replies: list[Any] = []
    notes: list[tuple[str, str]] = []

    async def q(sql: str) -> None:
        out = []
        for msg in await listener.query(sql):
            if isinstance(msg, m.NotificationResponse):
                notes.append((msg.channel, msg.payload))
            elif isinstance(msg, m.CommandComplete):
                out.append(("C", msg.tag))
            elif isinstance(msg, m.ReadyForQuery):
                out.append(("Z", msg.status))
            elif isinstance(msg, m.ErrorResponse):
                out.append(("E", msg.sqlstate))
            elif not isinstance(msg, (m.ParameterStatus, m.NoticeResponse)):
                out.append((type(msg).__name__,))
        replies.append((sql, out))

    async def until(channel: str, payload: str) -> None:
        while (channel, payload) not in notes:
            msg = await listener.recv_message(10)
            assert msg is not None
            if isinstance(msg, m.NotificationResponse):
                notes.append((msg.channel, msg.payload))

    await q("BEGIN")
    await q("LISTEN t_rb")
    await notify("t_rb", "inside")
    await q("ROLLBACK")
    await notify("t_rb", "after rollback")
    await q("LISTEN t_un")
    await notify("t_un", "one")
    await until("t_un", "one")
    await q("UNLISTEN t_un")
    await notify("t_un", "two")
    await q("BEGIN")
    await q("LISTEN t_c")
    await notify("t_c", "before commit")
    if arrived is not None:
        # Held (and dropped at this first LISTEN's COMMIT) is what reached the gateway before
        # the COMMIT; one still on its way from Postgres when the COMMIT returns is delivered
        # (docs/listen.md, "first LISTEN"): wait for it, so that the case tested is the first.
        await arrived("before commit")
    await q("UNLISTEN t_nothing")
    await q("COMMIT")
    await notify("t_c", "after commit")
    await q("begin; listen t_multi; commit")  # mixed with other statements: not the gateway's (docs/listen.md)
    await q("LISTEN a1; LISTEN \"A2\"")
    await q("UNLISTEN *")
    await notify("a1", "gone")
    await q("BEGIN")
    await q("SELECT 1/0")
    await q("LISTEN t_failed")
    await q("ROLLBACK")
    await q("LISTEN t_end")
    await notify("t_end", "end")
    await until("t_end", "end")
    return replies, notes


async def test_transaction_semantics_match_a_direct_connection(gateway_app: Any, pg: PgCluster,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    adm = await admin(pg)

    async def notify(ch: str, payload: str) -> None:
        await adm.execute("select pg_notify($1, $2)", ch, payload)

    try:
        direct = await RawClient.connect(pg.port)
        await direct.login(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE)
        via = await RawClient.connect(app.pg_port)
        await via.login("alice", ALICE_PASSWORD, "app")
        want = await _script(direct, notify)
        seen: list[str] = []
        dispatch = Registry.dispatch

        def spy(self: Registry, channel: str, payload: str, pid: int) -> Any:  # what reaches the gateway
            seen.append(payload)
            return dispatch(self, channel, payload, pid)
        monkeypatch.setattr(Registry, "dispatch", spy)

        async def arrived(payload: str) -> None:
            await eventually(lambda: payload in seen, 10, f"{payload!r} at the listener connection")
        got = await _script(via, notify, arrived)
        assert got[0] == want[0]  # the same replies, query by query
        assert want[1] == [("t_un", "one"), ("t_c", "after commit"), ("t_end", "end")]
        assert got[1] == want[1]
        await direct.close()
        await via.close()
    finally:
        await adm.close()


async def test_extended_protocol_and_named_statements(gateway_app: Any, pg: PgCluster) -> None:
    """asyncpg sends LISTEN as a (named, cached) prepared statement; psycopg-style
    unnamed Parse/Bind/Execute/Sync too: both answered and applied."""
    app = await gateway_app(databases={"app": {"pool_size": 1}})
    adm = await admin(pg)
    got: list[str] = []
    c = await asyncpg.connect(_dsn(app))  # statement cache on: named statements
    c0 = await asyncpg.connect(_dsn(app), statement_cache_size=0)  # unnamed
    try:
        await c.add_listener("ext", lambda *a: got.append("named:" + a[3]))
        await c0.add_listener("ext", lambda *a: got.append("unnamed:" + a[3]))
        await c.remove_listener("ext", got.append)  # no such callback: no-op
        # the connections still run their own statements (nothing stale left behind)
        assert await c.fetchval("select $1::int", 5) == 5 and await c0.fetchval("select 7") == 7
        await adm.execute("notify ext, 'p'")
        await eventually(lambda: sorted(got) == ["named:p", "unnamed:p"], 5, "both")
        hub = hub_for(app.gateway.pools["app"])
        async with c.transaction():
            await c.execute("listen ext2")  # in a transaction: pending until COMMIT...
            assert "ext2" in hub.listening  # ... but upstream already LISTENs (no window after COMMIT)
            (sub,) = hub.registry.channels["ext2"].subs
            assert "ext2" not in sub.channels
        assert "ext2" in sub.channels
    finally:
        await c.close()
        await c0.close()
        await adm.close()


async def test_listener_connection_killed_delivery_resumes_with_gap_notice(gateway_app: Any, pg: PgCluster) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    adm = await admin(pg)
    got: list[str] = []
    notices: list[str] = []
    c = await asyncpg.connect(_dsn(app))
    c.add_log_listener(lambda _c, msg: notices.append(msg.message))
    await c.add_listener("rec", lambda *a: got.append(a[3]))
    hub = hub_for(app.gateway.pools["app"])
    try:
        await adm.execute("notify rec, 'before'")
        await eventually(lambda: got == ["before"], 5, "before")
        old = hub.backend_pid
        assert await adm.fetchval("select pg_terminate_backend($1)", old)
        t0 = time.monotonic()
        i = 0
        while not got[1:]:  # NOTIFY until one arrives: that is when delivery resumed
            assert time.monotonic() - t0 < 5, "delivery did not resume"
            await adm.execute("select pg_notify('rec', $1)", f"after{i}")
            i += 1
            await asyncio.sleep(0.02)
        assert time.monotonic() - t0 < 1.0
        assert hub.backend_pid not in (0, old)
        await eventually(lambda: len(notices) >= 2, 5, "gap notices")
        assert "was lost" in notices[0] and "is back" in notices[1], notices
        assert got[1].startswith("after")
    finally:
        await c.close()
        await adm.close()


async def test_slow_consumer_disconnected_others_keep_receiving(gateway_app: Any, pg: PgCluster) -> None:
    limit = 65536
    app = await gateway_app(databases={"app": {"pool_size": 2}}, listen_queue_bytes=limit, admin_users=["alice"])
    adm = await admin(pg)
    good: list[str] = []
    g = await asyncpg.connect(_dsn(app))
    await g.add_listener("slow", lambda *a: good.append(a[3]))
    # the slow client: logs in, LISTENs, then does not read (until the end of the test)
    slow = await RawClient.connect(app.pg_port)
    await slow.login("alice", ALICE_PASSWORD, "app")
    assert [type(x) for x in await slow.query("LISTEN slow")] == [m.CommandComplete, m.ReadyForQuery]
    hub = hub_for(app.gateway.pools["app"])
    try:
        sent = 0
        while hub.registry.overflows == 0:
            assert sent < 20000, "the slow client was never disconnected"
            await adm.execute("select pg_notify('slow', i || repeat('x', 7000)) "
                              "from generate_series($1::int, $1::int + 99) i", sent)
            sent += 100
        await adm.execute("select pg_notify('slow', 'tail')")
        sent += 1
        await eventually(lambda: len(good) == sent, 30, "the good listener gets everything")
        assert good[-1] == "tail"
        assert hub.registry.subscribers("slow") == 1
        # what the slow client finally reads: notifications, then FATAL 53400 saying why, then EOF
        msgs = await slow.read_to_eof(timeout=20)
        assert isinstance(msgs[-1], m.ErrorResponse) and msgs[-1].sqlstate == "53400", msgs[-1:]
        assert "listen_queue_bytes" in msgs[-1].message
        assert all(isinstance(x, m.NotificationResponse) for x in msgs[:-1])
        assert 1 < len(msgs) - 1 < sent
        # visible to operators: SHOW LISTENERS and /metrics
        adm_c = await RawClient.connect(app.pg_port)
        await adm_c.login("alice", ALICE_PASSWORD, "pgbouncer")
        listed = rows(await adm_c.query("SHOW LISTENERS"))
        await adm_c.close()
        assert listed == [("app", PgCluster.SCRAM_USER, "slow", "listening", "1", "64", str(hub.backend_pid))]
        text = (await _http_get(app.http_port, "/metrics")).decode()
        got = {(s.name, s.labels.get("database")): s.value for f in text_string_to_metric_families(text)
               for s in f.samples if s.name.startswith("wirepool_listen_")}
        assert got[("wirepool_listen_notifications_dropped_total", "app")] == 1
        assert got[("wirepool_listen_notifications_received_total", "app")] == sent
        assert got[("wirepool_listen_notifications_delivered_total", "app")] >= sent
        assert got[("wirepool_listen_subscribers", "app")] == 1 and got[("wirepool_listen_channels", "app")] == 1
    finally:
        await g.close()
        await slow.close()
        await adm.close()
