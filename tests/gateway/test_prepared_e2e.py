"""Named prepared statements through a real gateway in transaction mode (issue 5).

Real Postgres, real gateway (``gateway_app``), real clients: a raw-protocol
client (byte-exact control over pipelines, over TCP and WebSocket), asyncpg
with its default statement cache, our own driver's ``prepare()`` and
``pgbench -M prepared``.
"""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import subprocess
from typing import Any

import asyncpg
import pytest
import websockets

import driver
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from tests.gateway.conftest import ALICE_PASSWORD
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(120)

Msg = tuple[str, Any]  # (type char, decoded message)


class RawClient:
    """Minimal protocol client over pg_listen (TCP) or /v2 (WebSocket):
    sends encoded messages, returns decoded replies up to ReadyForQuery."""

    def __init__(self) -> None:
        self.reader = MessageReader()
        self._tcp: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._ws: Any = None
        self.msgs: list[tuple[int, bytes]] = []

    @classmethod
    async def connect(cls, app: Any, kind: str = "tcp", user: str = "alice",
                      password: str = ALICE_PASSWORD) -> "RawClient":
        c = cls()
        if kind == "tcp":
            c._tcp = await asyncio.open_connection("127.0.0.1", app.pg_port)
        else:
            c._ws = await websockets.connect(app.ws_url)
        await c.send(m.startup_message({"user": user, "database": "app"}))
        auth = await c._next()
        assert auth[0] == m.B.AUTHENTICATION
        await c.send(m.password_message(password))
        replies = await c.until_ready()
        assert replies[0] == ("R", m.AuthenticationRequest(0, b"")), replies
        return c

    @classmethod
    async def direct(cls, pg: PgCluster) -> "RawClient":
        """Straight to Postgres (trust role), for differential tests."""
        c = cls()
        c._tcp = await asyncio.open_connection(pg.host, pg.port)
        await c.send(m.startup_message({"user": PgCluster.TRUST_USER, "database": PgCluster.DATABASE}))
        replies = await c.until_ready()
        assert replies[0] == ("R", m.AuthenticationRequest(0, b"")), replies
        return c

    async def send(self, *msgs: bytes) -> None:
        data = b"".join(msgs)
        if self._tcp is not None:
            self._tcp[1].write(data)
            await self._tcp[1].drain()
        else:
            await self._ws.send(data)

    async def _next(self) -> tuple[int, bytes]:
        while not self.msgs:
            if self._tcp is not None:
                data = await self._tcp[0].read(65536)
            else:
                data = await self._ws.recv()
            assert data, "gateway closed the connection"
            self.reader.feed(data)
            self.msgs.extend(self.reader.read())
        return self.msgs.pop(0)

    async def until_ready(self, count: int = 1) -> list[Msg]:
        """Replies up to and including the ``count``-th ReadyForQuery."""
        out: list[Msg] = []
        while count:
            t, body = await asyncio.wait_for(self._next(), 20)
            out.append((chr(t), m.decode_backend(t, body)))
            if t == m.B.READY_FOR_QUERY:
                count -= 1
        return out

    async def run(self, *msgs: bytes, syncs: int | None = None) -> list[Msg]:
        await self.send(*msgs)
        n = syncs if syncs is not None else sum(1 for x in msgs if x[:1] in (b"S", b"Q"))
        return await self.until_ready(n)

    async def query(self, sql: str) -> list[Msg]:
        return await self.run(m.query(sql))

    async def close(self) -> None:
        try:
            await self.send(m.TERMINATE)
        except Exception:
            pass
        if self._tcp is not None:
            self._tcp[1].close()
        else:
            await self._ws.close()


def types(replies: list[Msg]) -> str:
    return "".join(t for t, _ in replies if t not in "NS")


def rows(replies: list[Msg]) -> list[tuple[bytes | None, ...]]:
    return [r.values for t, r in replies if t == "D"]


def errors(replies: list[Msg]) -> list[tuple[str, str]]:
    return [(r.sqlstate, r.message) for t, r in replies if t == "E"]


def P(name: str, sql: str, oids: tuple[int, ...] = ()) -> bytes:
    return m.parse(name, sql, oids)


def BE(name: str, *params: bytes) -> bytes:
    return m.bind("", name, [0] * len(params), list(params), []) + m.execute()


S = m.SYNC


async def backend_pid(c: RawClient) -> int:
    r = await c.query("select pg_backend_pid()")
    return int(rows(r)[0][0] or b"0")


@pytest.fixture
async def app(gateway_app: Any) -> Any:
    return await gateway_app(auth_type="password", databases={"app": {"pool_size": 2}})


@pytest.fixture
def table(pg: PgCluster) -> Any:
    names: list[str] = []

    def make(sql: str) -> str:
        name = f"prep_{os.getpid()}_{len(names)}_{random.randrange(1 << 30)}"
        pg.psql(f"CREATE TABLE {name} {sql}; GRANT ALL ON {name} TO {PgCluster.SCRAM_USER};")
        names.append(name)
        return name

    yield make
    for n in names:
        pg.psql(f"DROP TABLE IF EXISTS {n}")


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_statement_follows_the_client_to_another_server(app: Any, kind: str) -> None:
    a = await RawClient.connect(app, kind)
    holder = await RawClient.connect(app, kind)
    try:
        r = await a.run(P("s1", "select $1::int * 10", (23,)), BE("s1", b"4"), S,
                        m.query("select pg_backend_pid()"))
        assert types(r) == "12DCZTDCZ"
        assert rows(r)[0] == (b"40",)
        pid_a = int(rows(r)[1][0] or b"0")
        # hold that server inside a transaction: a's next transaction gets the other one
        await holder.query("begin")
        pid_h = await backend_pid(holder)
        assert pid_h == pid_a  # LIFO: the server a just released
        r = await a.run(BE("s1", b"5"), S, m.query("select pg_backend_pid()"))
        assert types(r) == "2DCZTDCZ" and rows(r)[0] == (b"50",)
        assert int(rows(r)[1][0] or b"0") not in (0, pid_a)
        # and Describe on yet another link
        await holder.query("commit")
        r = await a.run(m.describe("S", "s1"), S)
        assert types(r) == "tTZ" and r[0][1].type_oids == (23,)
    finally:
        await a.close()
        await holder.close()


async def test_many_clients_share_one_gateway_statement(app: Any, pg: PgCluster) -> None:
    clients = [await RawClient.connect(app) for _ in range(6)]
    try:
        for i, c in enumerate(clients):
            r = await c.run(P(f"own_{i}", "select $1::int + 1000", (23,)), BE(f"own_{i}", str(i).encode()), S)
            assert types(r) == "12DCZ" and rows(r) == [(str(1000 + i).encode(),)]
        r = await clients[0].query(
            "select count(*) from pg_prepared_statements where name like '\\_\\_wp\\_%'")
        assert int(rows(r)[0][0] or b"0") <= 1  # one gateway name per server, not per client
    finally:
        for c in clients:
            await c.close()


async def test_pipeline_with_an_error_in_the_middle(app: Any, table: Any) -> None:
    t = table("(v int)")
    c = await RawClient.connect(app)
    try:
        r = await c.run(P("ins", f"insert into {t} values ($1::int)", (23,)), BE("ins", b"1"),
                        P("div", "select 10 / $1::int", (23,)), BE("div", b"0"),
                        P("later", "select 1"), BE("later"), S)
        assert types(r) == "12C1EZ"  # 10/0 is folded when Bind plans it
        assert errors(r)[0][0] == "22012"
        # the implicit transaction was rolled back; "later" was never created
        r = await c.query(f"select count(*) from {t}")
        assert rows(r) == [(b"0",)]
        r = await c.run(BE("later"), S)
        assert errors(r) == [("26000", 'prepared statement "later" does not exist')]
        # the statements created before the error work on any server
        r = await c.run(BE("ins", b"2"), BE("div", b"5"), P("later", "select 1"), BE("later"), S)
        assert types(r) == "2C2DC12DCZ" and rows(r) == [(b"2",), (b"1",)]
    finally:
        await c.close()


async def test_reused_name_gets_42P05_with_postgres_semantics(app: Any, table: Any) -> None:
    t = table("(v int)")
    c = await RawClient.connect(app)
    try:
        assert types(await c.run(P("s", "select 1"), S)) == "1Z"
        # implicit transaction: the insert before the failing Parse is rolled back
        r = await c.run(P("", f"insert into {t} values (1)"), BE(""), P("s", "select 2"), BE("s"), S)
        assert types(r) == "12CEZ"
        assert errors(r) == [("42P05", 'prepared statement "s" already exists')]
        assert r[-1][1].status == "I"
        assert rows(await c.query(f"select count(*) from {t}")) == [(b"0",)]
        # explicit transaction: it is aborted, exactly as Postgres would do
        r = await c.run(m.query("begin"), P("s", "select 3"), S)
        assert errors(r)[0][0] == "42P05" and r[-1][1].status == "E"
        assert types(await c.query("rollback")) == "CZ"
        # the original statement is untouched
        r = await c.run(BE("s"), S)
        assert rows(r) == [(b"1",)]
    finally:
        await c.close()


async def test_close_is_local_and_frees_the_name(app: Any) -> None:
    c = await RawClient.connect(app)
    try:
        r = await c.run(P("s", "select 'a'"), BE("s"), m.close("S", "s"), P("s", "select 'b'"), BE("s"), S)
        assert types(r) == "12DC312DCZ" and rows(r) == [(b"a",), (b"b",)]
        r = await c.run(m.close("S", "never-prepared"), S)
        assert types(r) == "3Z"
    finally:
        await c.close()


async def test_deallocate_all_and_discard_all_clear_the_mapping(app: Any) -> None:
    c = await RawClient.connect(app)
    try:
        for sql in ("DEALLOCATE ALL", "DISCARD ALL"):
            assert types(await c.run(P("s", "select 7"), S)) == "1Z"
            r = await c.query(sql)
            assert errors(r) == []
            r = await c.run(BE("s"), S)
            assert errors(r) == [("26000", 'prepared statement "s" does not exist')]
            # the server's own statements were dropped too: re-creating works
            r = await c.run(P("s", "select 7"), BE("s"), S)
            assert types(r) == "12DCZ" and rows(r) == [(b"7",)]
            assert types(await c.run(m.close("S", "s"), S)) == "3Z"
    finally:
        await c.close()


async def test_lru_eviction_keeps_statements_usable(gateway_app: Any) -> None:
    app = await gateway_app(auth_type="password", max_prepared_statements=3,
                            databases={"app": {"pool_size": 1}})
    c = await RawClient.connect(app)
    try:
        for i in range(8):
            r = await c.run(P(f"s{i}", f"select {i}"), BE(f"s{i}"), S)
            assert rows(r) == [(str(i).encode(),)]
        r = await c.query("select count(*) from pg_prepared_statements")
        assert int(rows(r)[0][0] or b"0") <= 3
        # all of them still work, in one pipeline (evictions in between)
        r = await c.run(*[BE(f"s{i}") for i in range(8)], S)
        assert rows(r) == [(str(i).encode(),) for i in range(8)]
    finally:
        await c.close()


async def test_schema_change_surfaces_the_error_once_and_does_not_poison(app: Any, pg: PgCluster,
                                                                        table: Any) -> None:
    t = table("(a int)")
    pg.psql(f"INSERT INTO {t} VALUES (1)")
    a = await RawClient.connect(app)
    b = await RawClient.connect(app)
    try:
        sql = f"select * from {t}"
        assert rows(await a.run(P("sa", sql), BE("sa"), S)) == [(b"1",)]
        assert rows(await b.run(P("sb", sql), BE("sb"), S)) == [(b"1",)]
        pg.psql(f"ALTER TABLE {t} ADD COLUMN b int DEFAULT 2")
        r = await a.run(BE("sa"), S)
        assert [e[0] for e in errors(r)] == ["0A000"]  # Postgres' own error, to the client that hit it
        # other clients (and a's next try) get a freshly prepared statement
        assert rows(await b.run(BE("sb"), S)) == [(b"1", b"2")]
        assert rows(await b.run(P("sb2", sql), BE("sb2"), S)) == [(b"1", b"2")]
        assert rows(await a.run(BE("sa"), S)) == [(b"1", b"2")]
    finally:
        await a.close()
        await b.close()


async def test_disabled_with_zero(gateway_app: Any) -> None:
    app = await gateway_app(auth_type="password", max_prepared_statements=0,
                            databases={"app": {"pool_size": 1}})
    c = await RawClient.connect(app)
    try:
        # within one transaction named statements work; names reach the server as sent
        r = await c.run(m.query("begin"), P("mine", "select 1"), BE("mine"), S)
        assert rows(r) == [(b"1",)]
        r = await c.query("select name from pg_prepared_statements")
        assert rows(r) == [(b"mine",)]
        await c.query("commit")
    finally:
        await c.close()


async def test_asyncpg_statement_cache_50_clients_pool_2(app: Any, table: Any) -> None:
    t = table("(id int primary key, v text)")
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    queries = [
        ("select $1::int + 1", lambda i: (i,), lambda i: i + 1),
        ("select $1::text || 'x'", lambda i: (str(i),), lambda i: f"{i}x"),
        ("select $1::int * $2::int", lambda i: (i, 3), lambda i: i * 3),
        ("select count(*) from generate_series(1, $1::int)", lambda i: (i % 7 + 1,), lambda i: i % 7 + 1),
    ]

    async def worker(w: int) -> int:
        conn = await asyncpg.connect(dsn)  # default statement_cache_size (100)
        done = 0
        try:
            for i in range(12):
                sql, args, want = queries[(w + i) % len(queries)]
                assert await conn.fetchval(sql, *args(w * 100 + i)) == want(w * 100 + i)
                if i % 4 == 0:
                    async with conn.transaction():
                        await conn.execute(f"insert into {t} values ($1, $2)", w * 100 + i, "v")
                        assert await conn.fetchval(f"select v from {t} where id = $1", w * 100 + i) == "v"
                done += 1
        finally:
            await conn.close()
        return done

    results = await asyncio.gather(*(worker(w) for w in range(50)), return_exceptions=True)
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert sum(results) == 50 * 12  # type: ignore[arg-type]
    c = await RawClient.connect(app)
    try:
        assert rows(await c.query(f"select count(*) from {t}")) == [(b"150",)]
    finally:
        await c.close()


@pytest.mark.parametrize("kind", ["tcp", "ws"])
async def test_own_driver_prepare_reused_across_transactions(app: Any, kind: str) -> None:
    if kind == "tcp":
        dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    else:
        try:
            from driver.transport import get_connector
            get_connector("ws")
        except (ImportError, ValueError):
            pytest.skip("the driver has no WebSocket transport in this checkout yet")
        dsn = app.ws_dsn("alice", ALICE_PASSWORD, "app")
    conns = [await driver.connect(dsn) for _ in range(3)]
    holder = await RawClient.connect(app)
    try:
        stmts = [await c.prepare("select $1::int * 2, pg_backend_pid()") for c in conns]
        pids = set()
        for i in range(10):
            if i == 5:  # take the server used so far: the rest runs on the other one
                await holder.query("begin")
            for j, (c, st) in enumerate(zip(conns, stmts)):
                if (i + j) % 3 == 0:
                    async with c.transaction():
                        row = await st.fetchrow(i)
                else:
                    row = await st.fetchrow(i)
                assert row[0] == 2 * i
                pids.add(row[1])
        assert len(pids) == 2  # the statements really ran on both servers
    finally:
        await holder.close()
        for c in conns:
            await c.close()


@pytest.mark.skipif(shutil.which("pgbench") is None, reason="pgbench not installed")
async def test_pgbench_prepared_select_only(gateway_app: Any, pg: PgCluster, pg_db: str) -> None:
    env = dict(os.environ, PGPASSWORD=PgCluster.SUPERUSER_PASSWORD)
    subprocess.run(["pgbench", "-i", "-s", "1", "-q", "-h", pg.host, "-p", str(pg.port),
                    "-U", PgCluster.SUPERUSER, pg_db], check=True, env=env, capture_output=True)
    pg.psql("GRANT SELECT ON ALL TABLES IN SCHEMA public TO scram_user", db=pg_db)
    app = await gateway_app(auth_type="password", databases={"app": {"pool_size": 2, "dbname": pg_db}})
    env["PGPASSWORD"] = ALICE_PASSWORD
    proc = await asyncio.create_subprocess_exec(
        "pgbench", "-M", "prepared", "-S", "-n", "-c", "8", "-j", "2", "-t", "200",
        "-h", "127.0.0.1", "-p", str(app.pg_port), "-U", "alice", "app",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    text = out.decode() + err.decode()
    assert proc.returncode == 0, text
    assert "number of transactions actually processed: 1600/1600" in text, text
    assert "number of failed transactions: 0" in text or "failed" not in text, text


def _summary(replies: list[Msg]) -> list[Any]:
    out: list[Any] = []
    for t, r in replies:
        if t in "NS":
            continue
        if t == "E":
            out.append(("E", r.sqlstate, r.message))
        elif t == "D":
            out.append(("D", r.values))
        elif t == "Z":
            out.append(("Z", r.status))
        else:
            out.append(t)
    return out


@pytest.mark.parametrize("seed,limit", [(1, 200), (2, 200), (3, 2), (4, 1)])
async def test_random_pipelines_match_postgres(gateway_app: Any, pg: PgCluster, seed: int,
                                               limit: int) -> None:
    """Random pipelines of named Parse/Bind/Execute/Describe/Close (with errors,
    reused names, unknown names, explicit transactions) give exactly the replies
    Postgres gives on one direct connection -- while the gateway client jumps
    between two server connections (and, with a tiny LRU, evicts constantly)."""
    app = await gateway_app(auth_type="password", max_prepared_statements=limit,
                            databases={"app": {"pool_size": 2}})
    rnd = random.Random(seed)
    queries = ["select $1::int + 1", "select 10 / ($1::int + (random() * 0)::int)",
               "select $1::int * 2, 'x'", "select $1::int - 1"]
    names = ["a", "b", "c"]
    direct = await RawClient.direct(pg)
    gw = await RawClient.connect(app)
    noise = await RawClient.connect(app)
    holding = False
    try:
        for round_ in range(40):
            msgs: list[bytes] = []
            if rnd.random() < 0.15:
                msgs.append(m.query("begin"))
            # one to three Sync-terminated segments sent at once (pipelined).  A
            # name created or closed in one segment is not used in a later
            # segment of the same send (documented limitation of gateway.prepared)
            locked: set[str] = set()
            for _seg in range(rnd.choice([1, 1, 1, 2, 3])):
                if rnd.random() < 0.05:
                    msgs.append(m.query("select 1"))
                touched: set[str] = set()
                for _ in range(rnd.randint(1, 6)):
                    op = rnd.random()
                    free = [n for n in names if n not in locked]
                    if not free:
                        break
                    name = rnd.choice(free)
                    if op < 0.3:
                        msgs.append(P(name, rnd.choice(queries), (23,)))
                        touched.add(name)
                    elif op < 0.75:
                        msgs.append(BE(name, rnd.choice([b"0", b"1", b"5"])))
                    elif op < 0.85:
                        msgs.append(m.describe("S", name))
                    else:
                        msgs.append(m.close("S", name))
                        touched.add(name)
                msgs.append(S)
                locked |= touched
            if msgs[0] == m.query("begin"):
                msgs.append(m.query("commit"))
            if rnd.random() < 0.04:
                # (not pipelined with later messages: see the module's limitations)
                msgs.append(m.query(rnd.choice(["DEALLOCATE ALL", "DISCARD ALL"])))
            want = _summary(await direct.run(*msgs))
            # make the gateway client change servers now and then
            if rnd.random() < 0.5:
                await noise.query("commit" if holding else "begin")
                holding = not holding
            got = _summary(await gw.run(*msgs))
            assert got == want, f"round {round_}: {msgs}"
    finally:
        await direct.close()
        await gw.close()
        await noise.close()


NEON_NAMED = r"""
import { Pool, neonConfig } from "@neondatabase/serverless";
import ws from "ws";
const [gateway, connectionString] = process.argv.slice(1);
neonConfig.webSocketConstructor = ws;
neonConfig.wsProxy = (host, port) => `${gateway}/v2?address=${host}:${port}`;
neonConfig.useSecureWebSocket = false;
neonConfig.pipelineTLS = false;
neonConfig.pipelineConnect = "password";
const out = { values: [], pids: [] };
const pool = new Pool({ connectionString, max: 3 });
try {
  for (let round = 0; round < 8; round++) {
    const rs = await Promise.all([1, 2, 3].map((n) => pool.query(
      { name: "square_pid", text: "select $1::int * $1::int as v, pg_backend_pid() as pid", values: [round * 3 + n] })));
    for (const r of rs) { out.values.push(r.rows[0].v); out.pids.push(r.rows[0].pid); }
  }
  const client = await pool.connect();
  try {
    await client.query("begin");
    const a = await client.query({ name: "square_pid", text: "select $1::int * $1::int as v, pg_backend_pid() as pid", values: [12] });
    await client.query("commit");
    out.inTx = a.rows[0].v;
  } finally {
    client.release();
  }
} catch (e) {
  out.fatal = { code: e.code, message: String(e && e.message) };
} finally {
  await pool.end().catch(() => {});
}
console.log(JSON.stringify(out));
"""


async def test_neon_driver_named_queries(app: Any) -> None:
    import json
    import shutil as _sh
    from pathlib import Path

    node = _sh.which("node")
    js_dir = Path(__file__).resolve().parent.parent / "js"
    assert node is not None and (js_dir / "node_modules" / "@neondatabase" / "serverless").is_dir()
    cs = f"postgresql://alice:{ALICE_PASSWORD}@db.invalid:5432/app"
    proc = await asyncio.create_subprocess_exec(
        node, "--input-type=module", "-e", NEON_NAMED, f"127.0.0.1:{app.http_port}", cs,
        cwd=str(js_dir), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    result = json.loads([ln for ln in out.decode().splitlines() if ln.startswith("{")][-1])
    assert "fatal" not in result, result
    assert sorted(result["values"]) == [n * n for n in range(1, 25)]
    assert len(set(result["pids"])) == 2  # the named statement ran on both servers
    assert result["inTx"] == 144
