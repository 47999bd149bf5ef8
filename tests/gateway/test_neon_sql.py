"""Neon-compatible SQL over HTTP (``POST /sql``, gateway/neon_sql.py).

The real ``neon()`` of ``@neondatabase/serverless`` 1.2.0 runs under Node
(tests/js/neon_http.mjs) with ``neonConfig.fetchEndpoint`` pointing at the
gateway; the rest are raw HTTP requests checking status codes and JSON shapes.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from typing import Any

import h11
import pytest

import driver
from gateway.tokens import hash_token
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.node_helpers import JS_DIR, run_node_json

pytestmark = pytest.mark.timeout(120)

TABLE_SQL = "CREATE TABLE neon_http_t (id int primary key, v text); GRANT ALL ON neon_http_t TO PUBLIC;"
TOKEN = "wp_test_token_for_alice_0123456789"


async def run_neon_http(endpoint: str, connection_string: str, token: str = "", scenario: str = "") -> dict[str, Any]:
    return await run_node_json("neon_http.mjs", endpoint, connection_string, token, scenario)


class Http:
    """A minimal keep-alive HTTP/1.1 client (h11) for raw requests."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.conn = h11.Connection(h11.CLIENT)

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if self.writer is None or self.conn.our_state is h11.MUST_CLOSE or self.conn.their_state is h11.CLOSED:
            if self.writer is not None:
                self.writer.close()
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.conn = h11.Connection(h11.CLIENT)
        elif self.conn.our_state is h11.DONE:
            self.conn.start_next_cycle()
        assert self.reader is not None and self.writer is not None
        hdrs = [("host", f"127.0.0.1:{self.port}"), ("content-length", str(len(body)))]
        hdrs += list((headers or {}).items())
        data = self.conn.send(h11.Request(method=method, target=path, headers=hdrs)) or b""
        if body:
            data += self.conn.send(h11.Data(data=body)) or b""
        data += self.conn.send(h11.EndOfMessage()) or b""
        self.writer.write(data)
        status = 0
        rhdrs: dict[str, str] = {}
        parts: list[bytes] = []
        while True:
            ev = self.conn.next_event()
            if ev is h11.NEED_DATA:
                chunk = await asyncio.wait_for(self.reader.read(1 << 16), 30)
                self.conn.receive_data(chunk)
                continue
            if isinstance(ev, h11.Response):
                status = ev.status_code
                rhdrs = {k.decode().lower(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h11.Data):
                parts.append(bytes(ev.data))
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return status, rhdrs, b"".join(parts)

    async def sql(self, payload: Any, *, cs: str | None = None, headers: dict[str, str] | None = None,
                  raw_body: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        h = {"content-type": "text/plain;charset=UTF-8", "neon-raw-text-output": "true", "neon-array-mode": "true"}
        if cs is not None:
            h["neon-connection-string"] = cs
        h.update(headers or {})
        body = raw_body if raw_body is not None else json.dumps(payload).encode()
        status, rh, data = await self.request("POST", "/sql", body, h)
        try:
            obj = json.loads(data) if data else None
        except ValueError:
            obj = data
        return status, rh, obj

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass


def cs_for(user: str = "alice", password: str | None = ALICE_PASSWORD, db: str = "app",
           host: str = "db.invalid:5432") -> str:
    auth = user + (f":{password}" if password is not None else "")
    return f"postgresql://{auth}@{host}/{db}?sslmode=require"


@pytest.fixture
async def http_client() -> Any:
    clients: list[Http] = []

    def make(port: int) -> Http:
        c = Http(port)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


# --------------------------------------------------------------------------- the real neon()

@pytest.mark.parametrize("auth_type", ["scram-sha-256", "password"])
async def test_neon_http_driver(gateway_app: Any, pg: Any, pg_db: str, auth_type: str) -> None:
    pg.psql(TABLE_SQL, db=pg_db)
    app = await gateway_app(auth_type=auth_type, databases={"app": {"dbname": pg_db, "pool_size": 2}})
    out = await run_neon_http(app.http_url + "/sql", cs_for())
    assert "fatal" not in out, out
    assert out["typed"] == {"i": 42, "t": "héllo \"q\" 'x'", "b": "000102ff", "ts": "2024-01-02T03:04:05.678Z",
                            "j": {"a": [1, 2]}, "n": None, "arr": [1, 2, 3], "tarr": ["a b", None, "c,\"d\""],
                            "bo": True, "num": "12345.678901234567890", "big": "9007199254740993"}
    assert out["template"] == [{"v": 21, "s": "xy"}]
    am = out["arrayMode"]
    assert am["rows"] == [[1, "two"], [3, None]] and am["rowCount"] == 2 and am["command"] == "SELECT"
    assert am["rowAsArray"] is True
    assert am["fields"] == [
        {"name": "a", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4, "dataTypeModifier": -1,
         "format": "text"},
        {"name": "b", "dataTypeID": 25, "tableID": 0, "columnID": 0, "dataTypeSize": -1, "dataTypeModifier": -1,
         "format": "text"}]
    assert out["objectMode"] == {"rows": [{"five": 5}], "rowAsArray": False, "command": "SELECT", "rowCount": 1}
    assert out["insert"] == {"command": "INSERT", "rowCount": 2, "rows": []}
    # batch transaction: committed; then rolled back on error (42P01 reaches NeonDbError)
    assert out["commit"] == {"inside": 2, "after": 2}
    err = out["rollback"]["error"]
    assert err["isNeonDbError"] and err["code"] == "42P01" and "no_such_table_neon_http" in err["message"]
    assert err["severity"] == "ERROR" and err["position"] == "15"
    assert out["afterRollback"] == 2
    # read-only batch
    assert out["readOnly"]["error"]["code"] == "25006", out["readOnly"]
    assert out["isolation"] == {"iso": "serializable", "ro": "on", "de": "on"}
    assert out["isolation2"] == "repeatable read"
    assert out["mixed"] == [[{"a": 1}], [[2]]]
    assert out["divZero"]["error"]["code"] == "22012"
    uq = out["unique"]["error"]
    assert uq["code"] == "23505" and uq["constraint"] == "neon_http_t_pkey" and uq["table"] == "neon_http_t"
    assert uq["schema"] == "public" and uq["detail"] == "Key (id)=(1) already exists."
    assert out["syntax"]["error"]["code"] == "42601" and out["syntax"]["error"]["position"] == "1"
    assert out["final"] == 2
    # Only what the committed batch wrote is in the table.
    admin = await driver.connect(pg.dsn("wp_admin", pg.SUPERUSER_PASSWORD, pg_db), statement_cache_size=0)
    try:
        assert await admin.fetch("select id from neon_http_t order by id") == [(1,), (2,)]
    finally:
        await admin.close()
    # Same pools as WebSocket sessions, and every server went back.
    pool = app.gateway.pools["app"]
    assert pool.total_servers() <= 2
    assert pool.stats()["sv_active"] == 0


async def test_neon_http_driver_token_and_auth_errors(gateway_app: Any, pg_db: str) -> None:
    users = {"alice": {"password": ALICE_PASSWORD, "tokens": [hash_token(TOKEN)]},
             "bob": {"password": BOB_PASSWORD}}
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, users=users)
    url = app.http_url + "/sql"
    out = await run_neon_http(url, cs_for(password=None), TOKEN, "token")
    assert out["token"] == {"ok": {"u": "scram_user", "v": 42}} or out["token"]["ok"]["v"] == 42, out
    assert out["badToken"]["error"]["code"] == "28P01", out
    out = await run_neon_http(url, cs_for(password="wrong"), "", "auth")
    assert out["result"]["error"]["code"] == "28P01" and out["result"]["error"]["isNeonDbError"], out
    out = await run_neon_http(url, cs_for(db="nope"), "", "auth")
    assert out["result"]["error"]["code"] == "3D000", out


# --------------------------------------------------------------------------- raw HTTP

async def test_single_query_shape_and_cors(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    c = http_client(app.http_port)
    status, h, obj = await c.sql({"query": "select $1::int + 1 as a, $2::text as b", "params": ["1", None]},
                                 cs=cs_for())
    assert status == 200, obj
    assert h["content-type"] == "application/json"
    assert h["access-control-allow-origin"] == "*"
    assert obj == {"command": "SELECT", "rowCount": 1, "rowAsArray": True,
                   "fields": [{"name": "a", "dataTypeID": 23, "tableID": 0, "columnID": 0, "dataTypeSize": 4,
                               "dataTypeModifier": -1, "format": "text"},
                              {"name": "b", "dataTypeID": 25, "tableID": 0, "columnID": 0, "dataTypeSize": -1,
                               "dataTypeModifier": -1, "format": "text"}],
                   "rows": [["2", None]]}
    # Batch shape, object rows when Neon-Array-Mode is false.
    status, _, obj = await c.sql({"queries": [{"query": "select 1 as x", "params": []},
                                              {"query": "select $1 as y", "params": ["é"]}]},
                                 cs=cs_for(), headers={"neon-array-mode": "false"})
    assert status == 200, obj
    assert [r["rows"] for r in obj["results"]] == [[{"x": "1"}], [{"y": "é"}]]
    assert [r["rowAsArray"] for r in obj["results"]] == [False, False]
    # CORS preflight
    status, h, body = await c.request("OPTIONS", "/sql", headers={
        "origin": "https://example.org", "access-control-request-method": "POST",
        "access-control-request-headers": "neon-connection-string, neon-array-mode, authorization"})
    assert status == 204 and body == b""
    assert h["access-control-allow-origin"] == "*"
    assert "POST" in h["access-control-allow-methods"]
    allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "neon-connection-string", "neon-raw-text-output", "neon-array-mode",
            "neon-batch-isolation-level", "neon-batch-read-only", "neon-batch-deferrable"} <= allowed


async def test_typed_output_when_not_raw_text(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    c = http_client(app.http_port)
    q = ("select 1::int2 as s, 2::int4 as i, 3::int8 as b, 1.5::float8 as f, 'NaN'::float4 as nan, true as t, "
         "'{\"k\": [1, null]}'::jsonb as j, array[1, null, 3]::int[] as ia, array['a b', null, 'c\"d']::text[] as ta, "
         "'{{t,f},{f,t}}'::bool[] as ba, 1.25::numeric as n, null::int as z")
    status, _, obj = await c.sql({"query": q, "params": []}, cs=cs_for(),
                                 headers={"neon-raw-text-output": "false", "neon-array-mode": "false"})
    assert status == 200, obj
    assert obj["rows"] == [{"s": 1, "i": 2, "b": "3", "f": 1.5, "nan": "NaN", "t": True, "j": {"k": [1, None]},
                            "ia": [1, None, 3], "ta": ["a b", None, 'c"d'], "ba": [[True, False], [False, True]],
                            "n": "1.25", "z": None}]


async def test_params_of_other_json_types(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    c = http_client(app.http_port)
    status, _, obj = await c.sql({"query": "select $1::int, $2::bool, $3::int[], $4::jsonb, $5::text[]",
                                  "params": [5, True, [1, 2], {"a": 1}, ["x,y", None]]}, cs=cs_for())
    assert status == 200, obj
    assert obj["rows"] == [["5", "t", "{1,2}", '{"a": 1}', '{"x,y",NULL}']]


async def test_auth_failures(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    users = {"alice": {"password": ALICE_PASSWORD, "tokens": [TOKEN]}, "bob": {"password": BOB_PASSWORD}}
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, users=users)
    c = http_client(app.http_port)
    q = {"query": "select 1", "params": []}
    wrong = await c.sql(q, cs=cs_for(password="wrong"))
    unknown = await c.sql(q, cs=cs_for(user="mallory", password="wrong"))
    assert wrong[0] == unknown[0] == 400
    assert wrong[2]["code"] == unknown[2]["code"] == "28P01"
    assert wrong[2]["message"].replace("alice", "X") == unknown[2]["message"].replace("mallory", "X")
    nopw = await c.sql(q, cs=cs_for(password=None))
    assert nopw[0] == 400 and nopw[2]["code"] == "28P01"
    nodb = await c.sql(q, cs=cs_for(db="nope"))
    assert nodb[0] == 400 and nodb[2]["code"] == "3D000" and "nope" in nodb[2]["message"]
    bad_tok = await c.sql(q, cs=cs_for(password=None), headers={"authorization": "Bearer nope"})
    assert bad_tok[0] == 400 and bad_tok[2]["code"] == "28P01"
    other_user = await c.sql(q, cs=cs_for(user="bob", password=None), headers={"authorization": f"Bearer {TOKEN}"})
    assert other_user[0] == 400 and other_user[2]["code"] == "28P01"
    not_bearer = await c.sql(q, cs=cs_for(), headers={"authorization": f"Basic {TOKEN}"})
    assert not_bearer[0] == 400
    missing = await c.sql(q)
    assert missing[0] == 400 and "Neon-Connection-String" in missing[2]["message"]
    badcs = await c.sql(q, cs="mysql://x@y/z")
    assert badcs[0] == 400
    # the token works with and without a connection string
    ok = await c.sql(q, cs=cs_for(password=None), headers={"authorization": f"Bearer {TOKEN}"})
    assert ok[0] == 200 and ok[2]["rows"] == [["1"]]
    ok = await c.sql(q, headers={"authorization": f"Bearer {TOKEN}"})
    assert ok[0] == 400 and ok[2]["code"] == "3D000"  # database defaults to the user's name
    ok = await c.sql(q, cs="postgresql://db.invalid/app", headers={"authorization": f"Bearer {TOKEN}"})
    assert ok[0] == 200, ok


async def test_bad_requests(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    c = http_client(app.http_port)
    for body in (b"not json", b"[1]", b'{"query": 1}', b'{"query": "select 1", "params": "x"}',
                 b'{"queries": {}}', b'{"queries": [1]}'):
        status, h, obj = await c.sql(None, cs=cs_for(), raw_body=body)
        assert status == 400, (body, obj)
        assert isinstance(obj, dict) and obj["message"] and obj["code"], obj
        assert h["access-control-allow-origin"] == "*"
    status, _, obj = await c.sql({"queries": [{"query": "select 1"}]}, cs=cs_for(),
                                 headers={"neon-batch-isolation-level": "Chaotic"})
    assert status == 400 and "Isolation" in obj["message"]
    status, _, obj = await c.sql({"query": "select 1"}, cs=cs_for(), headers={"neon-array-mode": "maybe"})
    assert status == 400
    # wrong parameter count: the server's own error
    status, _, obj = await c.sql({"query": "select $1::int, $2::int", "params": ["1"]}, cs=cs_for())
    assert status == 400 and obj["code"] == "08P01", obj
    # an empty batch is an empty (committed) transaction
    status, _, obj = await c.sql({"queries": []}, cs=cs_for())
    assert status == 200 and obj == {"results": []}


async def test_request_and_response_limits(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}},
                            sql_max_request_size=4096, sql_max_response_size=8192)
    c = http_client(app.http_port)
    big = "x" * 5000
    status, h, obj = await c.sql({"query": "select $1", "params": [big]}, cs=cs_for())
    assert status == 413, obj
    assert h["access-control-allow-origin"] == "*"
    status, _, obj = await c.sql({"query": "select repeat('x', 10000)", "params": []}, cs=cs_for())
    assert status == 507, obj
    status, _, obj = await c.sql({"query": "select g from generate_series(1, 200000) g", "params": []}, cs=cs_for())
    assert status == 507, obj
    # the (only) server is still usable afterwards
    status, _, obj = await c.sql({"query": "select 41 + 1", "params": []}, cs=cs_for())
    assert status == 200 and obj["rows"] == [["42"]], obj
    # just under both limits works
    status, _, obj = await c.sql({"query": "select repeat('y', 6000) as r", "params": []}, cs=cs_for())
    assert status == 200 and len(obj["rows"][0][0]) == 6000


async def test_open_transaction_is_never_kept(gateway_app: Any, pg_db: str, pg: Any, http_client: Any) -> None:
    pg.psql(TABLE_SQL, db=pg_db)
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    c = http_client(app.http_port)
    status, _, obj = await c.sql({"query": "begin", "params": []}, cs=cs_for())
    assert status == 200 and obj["command"] == "BEGIN"
    # With one server, a kept transaction would block this request (or see the insert).
    status, _, obj = await c.sql({"query": "insert into neon_http_t values (1, 'a')", "params": []}, cs=cs_for())
    assert status == 200 and obj["rowCount"] == 1
    status, _, obj = await c.sql({"query": "select pg_current_xact_id_if_assigned() is null as fresh, "
                                           "(select count(*) from neon_http_t)::int", "params": []}, cs=cs_for())
    assert obj["rows"] == [["t", "1"]], obj
    assert app.gateway.pools["app"].stats()["sv_active"] == 0


async def test_concurrent_requests_share_the_pool(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    clients = [http_client(app.http_port) for _ in range(20)]

    async def one(i: int) -> Any:
        status, _, obj = await clients[i].sql({"query": "select $1::int * 2, pg_sleep(0.01)", "params": [str(i)]},
                                              cs=cs_for())
        assert status == 200, obj
        return int(obj["rows"][0][0])

    assert await asyncio.gather(*(one(i) for i in range(20))) == [2 * i for i in range(20)]
    assert app.gateway.pools["app"].total_servers() <= 2


async def test_host_in_connection_string_is_never_dialled(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    dialled = 0

    async def on_conn(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        nonlocal dialled
        dialled += 1
        w.close()

    trap = await asyncio.start_server(on_conn, "127.0.0.1", 0)
    port = trap.sockets[0].getsockname()[1]
    try:
        app = await gateway_app(databases={"app": {"dbname": pg_db}})
        c = http_client(app.http_port)
        for db in ("app", "nope"):
            status, _, obj = await c.sql({"query": "select 1", "params": []},
                                         cs=cs_for(host=f"127.0.0.1:{port}", db=db))
            assert status in (200, 400), obj
        assert dialled == 0
    finally:
        trap.close()
        await trap.wait_closed()


async def test_batch_isolation_headers_raw(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    c = http_client(app.http_port)
    q = {"queries": [{"query": "select current_setting('transaction_isolation'), "
                               "current_setting('transaction_read_only'), current_setting('transaction_deferrable')",
                      "params": []}]}
    status, _, obj = await c.sql(q, cs=cs_for(), headers={"neon-batch-isolation-level": "ReadCommitted",
                                                        "neon-batch-read-only": "false",
                                                        "neon-batch-deferrable": "false"})
    assert status == 200 and obj["results"][0]["rows"] == [["read committed", "off", "off"]]
    status, _, obj = await c.sql(q, cs=cs_for(), headers={"neon-batch-isolation-level": "Serializable",
                                                        "neon-batch-read-only": "true"})
    assert obj["results"][0]["rows"] == [["serializable", "on", "off"]]
    # Single queries ignore the batch headers (as Neon does).
    status, _, obj = await c.sql({"query": "create temp table tt (x int)", "params": []}, cs=cs_for(),
                                 headers={"neon-batch-read-only": "true"})
    assert status == 200 and obj["command"] == "CREATE" and obj["rowCount"] is None


# --------------------------------------------------------------------------- Prisma (PrismaNeonHttp)

async def _generate_prisma_client() -> None:
    """``prisma generate`` for tests/js/prisma/schema.prisma, offline: pointing
    PRISMA_SCHEMA_ENGINE_BINARY at any existing file skips the engine download."""
    node = shutil.which("node")
    assert node is not None
    cli = JS_DIR / "node_modules" / "prisma" / "build" / "index.js"
    assert cli.is_file(), "run `npm install` in tests/js (.ci/run does)"
    proc = await asyncio.create_subprocess_exec(
        node, str(cli), "generate", "--schema", str(JS_DIR / "prisma" / "schema.prisma"),
        cwd=str(JS_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PRISMA_SCHEMA_ENGINE_BINARY": node, "CHECKPOINT_DISABLE": "1",
             "PRISMA_HIDE_UPDATE_MESSAGE": "1", "NODE_NO_WARNINGS": "1"})
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, (out + err).decode(errors="replace")


async def test_prisma_neon_http_adapter(gateway_app: Any, pg: Any, pg_db: str) -> None:
    pg.psql('CREATE TABLE "Quote" (id serial PRIMARY KEY, text text NOT NULL UNIQUE, author text, '
            'likes int NOT NULL DEFAULT 0, created timestamptz(3) NOT NULL DEFAULT now()); '
            'GRANT ALL ON ALL TABLES IN SCHEMA public TO PUBLIC; '
            'GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO PUBLIC;', db=pg_db)
    await _generate_prisma_client()
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    node = shutil.which("node")
    assert node is not None
    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / "prisma_neon_http.mjs"), app.http_url + "/sql", cs_for(),
        cwd=str(JS_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1"})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode(errors="replace")
    res = json.loads([ln for ln in out.decode().splitlines() if ln.startswith("{")][-1])
    assert "fatal" not in res, json.dumps(res)
    assert res["createdId"] == "number" and res["createdIsDate"] is True
    assert res["byAuthor"] == [{"text": "Simplicity is prerequisite for reliability.", "author": "Dijkstra"},
                               {"text": "Talk is cheap.", "author": "Torvalds"}]
    assert res["updated"] == 5 and res["count"] == 3
    assert res["nulls"] == 1 and res["updatedMany"] == 1
    assert res["raw"] == [{"v": 42}]
    # PrismaNeonHttp passes neon()'s NeonDbError through unconverted (its performIO
    # has no error mapping, unlike the WebSocket adapter): the SQLSTATE arrives.
    assert res["unique"] is not None and res["unique"]["code"] == "23505", json.dumps(res)
    assert res["final"] == 2


async def test_sql_timeout_cancels_the_statement(gateway_app: Any, pg_db: str, http_client: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}}, sql_timeout=0.3)
    c = http_client(app.http_port)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    status, _, obj = await c.sql({"query": "select pg_sleep(30)", "params": []}, cs=cs_for())
    assert status == 400 and obj["code"] == "57014", obj
    assert loop.time() - t0 < 10
    # the pool's only server is free again
    status, _, obj = await c.sql({"query": "select 1", "params": []}, cs=cs_for())
    assert status == 200 and obj["rows"] == [["1"]]
