"""Postgres protocol over HTTP: the ``POST /pg`` endpoint, against a real gateway
and a real PostgreSQL (the executor under it: test_http_exec.py, test_http_sessions.py)."""

from __future__ import annotations

from typing import Any

import pytest

from driver.protocol import messages as m
from gateway.http_exec import get_executor
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.http_helpers import backend, errors, rows, types
from tests.gateway.pool_helpers import eventually, pool_stats


async def wait_for(cond: Any, timeout: float = 5.0) -> None:
    await eventually(cond, timeout=timeout)


# --------------------------------------------------------------------------- POST /pg (raw HTTP)

from driver.protocol.http_envelope import basic_authorization  # noqa: E402
from driver.transport.http import HttpClient  # noqa: E402
from gateway.tokens import hash_token  # noqa: E402

TOKEN = "wp_test_token_for_http_protocol"


class Raw:
    """A kept-alive raw HTTP client for POST /pg (counts requests)."""

    def __init__(self, app: Any) -> None:
        self.client = HttpClient("127.0.0.1", app.http_port)
        self.requests = 0

    async def post(self, body: bytes, *, user: str | None = "alice", password: str | None = ALICE_PASSWORD,
                   database: str = "app", session: str | None = None, bearer: str | None = None,
                   path: str = "/pg", extra: list[tuple[str, str]] | None = None) -> tuple[int, dict[str, str], bytes]:
        h: list[tuple[str, str]] = []
        if session is not None and session != "new":
            h.append(("Wirepool-Session", session))
        else:
            if session == "new":
                h.append(("Wirepool-Session", "new"))
            if bearer is not None:
                h.append(("Authorization", "Bearer " + bearer))
            elif user is not None and password is not None:
                h.append(("Authorization", basic_authorization(user, password)))
            h.append(("Wirepool-Database", database))
        h.extend(extra or [])
        self.requests += 1
        status, headers, data = await self.client.request("POST", path, h, body)
        return status, dict(headers), data

    def close(self) -> None:
        self.client.close()


def pipeline(*sqls: str) -> bytes:
    out = b""
    for s in sqls:
        out += m.parse("", s) + m.bind("", "", [], [], []) + m.execute()
    return out + m.sync()


async def count_rows(pg: Any, table: str) -> int:
    import asyncpg
    c = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE))
    try:
        return int(await c.fetchval(f"select count(*) from {table}"))
    finally:
        await c.close()


async def idle_in_xact(pg: Any) -> int:
    import asyncpg
    c = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE))
    try:
        return int(await c.fetchval("select count(*) from pg_stat_activity where usename = 'scram_user' "
                                    "and state like 'idle in transaction%'"))
    finally:
        await c.close()


@pytest.fixture
async def table(pg: Any) -> Any:
    import secrets

    import asyncpg
    name = "http_t_" + secrets.token_hex(4)
    c = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE))
    await c.execute(f"create table {name} (x int); grant all on {name} to scram_user")
    try:
        yield name
    finally:
        await c.execute(f"drop table {name}")
        await c.close()


async def test_one_shot_and_pipeline_one_round_trip(gateway_app: Any, pg: Any, table: str) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    raw = Raw(app)
    try:
        status, h, data = await raw.post(m.query("select 1 as a, 'x' as b"))
        assert status == 200 and h["wirepool-status"] == "I" and "wirepool-session" not in h
        assert h["content-type"] == "application/vnd.wirepool.pg-backend"
        assert rows(data) == [("1", "x")] and types(data) == "TDCZ"
        # A whole transaction as a pipeline: one request, one server, committed.
        body = pipeline("begin", f"insert into {table} values (1)", f"insert into {table} values (2)",
                        f"select count(*) from {table}", "commit")
        status, h, data = await raw.post(body)
        assert status == 200 and h["wirepool-status"] == "I"
        assert rows(data) == [("2",)] and types(data).count("Z") == 1
        # several Syncs / Queries in one batch: answered up to the LAST ReadyForQuery
        status, h, data = await raw.post(m.query("select 1") + pipeline("select 2") + m.query("select 3; select 4"))
        assert rows(data) == [("1",), ("2",), ("3",), ("4",)] and types(data).count("Z") == 3
        assert raw.requests == 3 and raw.client.connections_opened == 1  # kept alive
        assert await count_rows(pg, table) == 2
        await wait_for(lambda: pool_stats(app)["sv_active"] == 0 and pool_stats(app)["cl_active"] == 0)
    finally:
        raw.close()


async def test_hello_and_cancel_key(gateway_app: Any) -> None:
    app = await gateway_app()
    raw = Raw(app)
    try:
        status, h, data = await raw.post(b"", session="new", extra=[("Wirepool-Params", "application_name=hx")])
        assert status == 200 and h["wirepool-status"] == "I" and h["wirepool-session"]
        msgs = backend(data)
        assert [chr(t) for t, _ in msgs][0] == "R" and chr(msgs[-1][0]) == "Z" and chr(msgs[-2][0]) == "K"
        params = {}
        for t, b in msgs:
            if t == ord("S"):
                ps = m.decode_backend(t, b)
                params[ps.name] = ps.value  # type: ignore[attr-defined]
        assert params["application_name"] == "hx" and "server_version" in params
        st, h2, d2 = await raw.post(m.query("select current_setting('application_name')"), session=h["wirepool-session"])
        assert rows(d2) == [("hx",)] and h2["wirepool-session"]  # a kept session gets a token even when idle
        # a malformed cancel body
        st, h3, d3 = await raw.post(b"xx", path="/pg/cancel")
        assert st == 400 and h3["wirepool-error"] == "08P01"
    finally:
        raw.close()


async def test_interactive_transaction_same_server(gateway_app: Any, pg: Any, table: str) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 3}})
    raw = Raw(app)
    try:
        st, h, d = await raw.post(m.query(f"begin; insert into {table} values (1); select pg_backend_pid()"))
        assert st == 200 and h["wirepool-status"] == "T"
        token, pid = h["wirepool-session"], rows(d)[0][0]
        # other clients meanwhile do not get this server
        for _ in range(3):
            _s, _h, d2 = await raw.post(m.query("select pg_backend_pid()"))
            assert rows(d2)[0][0] != pid
        for i in range(3):
            st, h, d = await raw.post(pipeline(f"insert into {table} values ({i + 2})", "select pg_backend_pid()"),
                                      session=token)
            assert st == 200 and h["wirepool-status"] == "T" and rows(d) == [(pid,)]
            assert h["wirepool-session"] != token
            token = h["wirepool-session"]
        # an error leaves the transaction aborted ('E'): still the same session
        st, h, d = await raw.post(m.query("select 1/0"), session=token)
        assert h["wirepool-status"] == "E" and errors(d)[0]["C"] == "22012"
        token = h["wirepool-session"]
        st, h, d = await raw.post(m.query("rollback"), session=token)
        assert h["wirepool-status"] == "I" and "wirepool-session" not in h
        assert await count_rows(pg, table) == 0
        await wait_for(lambda: pool_stats(app)["sv_active"] == 0)
    finally:
        raw.close()


async def test_token_replay_forgery_expiry(gateway_app: Any, pg: Any, table: str) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}}, http_session_timeout=2.0)
    raw = Raw(app)
    ex = get_executor(app.gateway)
    try:
        st, h, d = await raw.post(m.query(f"begin; insert into {table} values (1)"))
        t1 = h["wirepool-session"]
        st, h, d = await raw.post(m.query(f"insert into {table} values (2)"), session=t1)
        t2 = h["wirepool-session"]
        assert st == 200 and h["wirepool-status"] == "T"
        # linked to its server while idle in the transaction (checked before the timeout can fire)
        assert pool_stats(app)["sv_active"] == 1 and await idle_in_xact(pg) == 1
        # replay
        st, h, d = await raw.post(m.query("commit"), session=t1)
        assert st == 409 and h["wirepool-error"] == "08P01"
        assert errors(d)[0]["C"] == "08P01" and "already used" in errors(d)[0]["M"]
        # forgery: a token for the same session id with a higher sequence and a made-up MAC
        import base64
        import struct
        payload = base64.urlsafe_b64decode(t2.split(".")[0] + "==")
        fake = payload[:16] + struct.pack("!QQ", 99, 0)
        forged = base64.urlsafe_b64encode(fake).rstrip(b"=").decode() + "." + t2.split(".")[1]
        for bad in (forged, "garbage", t2 + "x"):
            st, h, d = await raw.post(m.query("commit"), session=bad)
            assert st == 401 and h["wirepool-error"] == "08P01", (bad, st, d)
        # expiry: rolled back, server released
        await wait_for(lambda: ex.sessions_expired == 1, timeout=15)
        await wait_for(lambda: pool_stats(app)["sv_active"] == 0 and pool_stats(app)["sv_idle"] >= 1)
        assert await idle_in_xact(pg) == 0
        st, h, d = await raw.post(m.query("commit"), session=t2)
        assert st == 410 and h["wirepool-error"] == "08003"
        assert "expired" in errors(d)[0]["M"] and "rolled back" in errors(d)[0]["M"]
        assert errors(d)[0]["S"] == "FATAL"
        assert await count_rows(pg, table) == 0
    finally:
        raw.close()


async def test_terminate_rolls_back(gateway_app: Any, pg: Any, table: str) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 1}})
    raw = Raw(app)
    try:
        st, h, d = await raw.post(m.query(f"begin; insert into {table} values (1)"))
        st, h, d = await raw.post(m.TERMINATE, session=h["wirepool-session"])
        assert st == 200 and h["wirepool-status"] == "closed" and d == b""
        await wait_for(lambda: pool_stats(app)["sv_active"] == 0)
        st, h, d = await raw.post(m.query(f"select count(*) from {table}"))
        assert rows(d) == [("0",)]
    finally:
        raw.close()


async def test_limits(gateway_app: Any) -> None:
    app = await gateway_app(http_max_batch_messages=5, http_request_timeout=0.5, http_max_response_size=4096)
    raw = Raw(app)
    try:
        # batch size
        st, h, d = await raw.post(pipeline("select 1", "select 2"))  # 2*3 + 1 = 7 messages
        assert st == 413 and h["wirepool-error"] == "54000" and "http_max_batch_messages" in errors(d)[0]["M"]
        # malformed batches
        st, h, d = await raw.post(m.parse("", "select 1"))
        assert st == 400 and "must end with Sync" in errors(d)[0]["M"]
        st, h, d = await raw.post(m.query("select 1")[:-2])
        assert st == 400 and "incomplete" in errors(d)[0]["M"]
        # time: cancelled, the error reaches the client in-band, the server is reusable
        st, h, d = await raw.post(m.query("select pg_sleep(30)"))
        assert st == 200 and h.get("wirepool-timeout") == "1" and errors(d)[0]["C"] == "57014"
        assert h["wirepool-status"] == "I"
        # response size: cancelled, 507
        st, h, d = await raw.post(m.query("select repeat('x', 1000) from generate_series(1, 1000)"))
        assert st == 507 and h["wirepool-error"] == "54000" and "http_max_response_size" in errors(d)[0]["M"]
        st, h, d = await raw.post(m.query("select 42"))
        assert rows(d) == [("42",)]
        # body size: the listener's cap (10 MiB)
        big = m.query("select '" + "x" * (11 << 20) + "'")
        st, h, d = await raw.post(big)
        assert st == 413
        await wait_for(lambda: pool_stats(app)["sv_active"] == 0)
    finally:
        raw.close()


async def test_auth_failures_and_tokens(gateway_app: Any) -> None:
    users = {"alice": {"password": ALICE_PASSWORD, "tokens": [hash_token(TOKEN)]},
             "bob": {"password": BOB_PASSWORD}}
    app = await gateway_app(users=users)
    raw = Raw(app)
    try:
        q = m.query("select current_user")
        for kw in ({"password": "wrong"}, {"user": "nobody", "password": "x"}, {"user": None},
                   {"bearer": "not-a-token"}):
            st, h, d = await raw.post(q, **kw)  # type: ignore[arg-type]
            assert st == 401 and h["wirepool-error"] in ("28P01", "28000"), (kw, st, d)
            assert errors(d)[0]["S"] == "FATAL"
        st, h, d = await raw.post(q, extra=[("Authorization", "Digest x")], user=None)
        assert st == 401
        st, h, d = await raw.post(q, database="nosuchdb")
        assert st == 404 and h["wirepool-error"] == "3D000"
        st, h, d = await raw.post(q, bearer=TOKEN)
        assert st == 200 and rows(d) == [("scram_user",)]
        st, h, d = await raw.post(q, extra=[("Wirepool-Params", "work_mem=1MB")])
        assert st == 400 and "unsupported startup parameter" in errors(d)[0]["M"]
    finally:
        raw.close()


async def test_copy_from_stdin_refused(gateway_app: Any, table: str) -> None:
    app = await gateway_app()
    raw = Raw(app)
    try:
        st, h, d = await raw.post(m.query(f"copy {table} from stdin"))
        assert st == 200 and h["wirepool-status"] == "I"
        assert "not supported over HTTP" in errors(d)[0]["M"]
        st, h, d = await raw.post(m.query("copy (select 1 union all select 2) to stdout"))
        assert st == 200 and types(d).count("d") == 2
    finally:
        raw.close()
