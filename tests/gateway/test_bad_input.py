"""Client mistakes over HTTP get a 4xx with a clear error, never a 500 or a
traceback; client-facing errors name no upstream host, port or role
(issue 11 F6-F10)."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import socket
from typing import Any

import asyncpg
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD, CAROL_PASSWORD
from tests.pgcluster import PgCluster


async def _http(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    h = {"host": "x", "content-length": str(len(body)), "connection": "close", **headers}
    w.write(f"POST {path} HTTP/1.1\r\n".encode() + b"".join(f"{k}: {v}\r\n".encode("latin-1") for k, v in h.items())
            + b"\r\n" + body)
    await w.drain()
    data = await asyncio.wait_for(r.read(), 30)
    w.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), hdrs, rest


def _sql_headers(user: str = "alice", password: str = ALICE_PASSWORD) -> dict[str, str]:
    return {"content-type": "application/json",
            "neon-connection-string": f"postgresql://{user}:{password}@ignored/app"}


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def no_tracebacks(caplog: Any) -> Any:
    caplog.set_level(logging.WARNING)
    yield caplog
    assert not [r for r in caplog.records if r.exc_info], "a client mistake logged a traceback"


# ------------------------------------------------------------------ F6: JSON depth, in and out

async def test_sql_deeply_nested_json_is_400(gateway_app, no_tracebacks):
    app = await gateway_app()
    body = b'{"query":"select 1","params":[' + b"[" * 1000 + b"]" * 1000 + b"]}"
    status, _, data = await _http(app.http_port, "/sql", body, _sql_headers())
    assert status == 400, data
    err = json.loads(data)
    assert "nested deeper" in err["message"] and err["code"] == "54000"


async def test_sql_deep_json_value_in_a_result(gateway_app, no_tracebacks):
    """A json column nested 2,000 deep: returned (as its text), not a 500."""
    app = await gateway_app()
    body = json.dumps({"query": "select (repeat('[', 2000) || repeat(']', 2000))::json as j, '[1]'::json as k",
                       "params": []}).encode()
    status, _, data = await _http(app.http_port, "/sql", body, _sql_headers())
    assert status == 200, data[:300]
    row = json.loads(data)["rows"][0]
    assert row["j"] == "[" * 2000 + "]" * 2000 and row["k"] == [1]


# ------------------------------------------------------------------ F7: up to 65,535 parameters

async def test_sql_40000_parameters(gateway_app, no_tracebacks):
    app = await gateway_app()
    n = 40000
    sql = "select cardinality(array[" + ",".join(f"${i}::int" for i in range(1, n + 1)) + "]) as n"
    body = json.dumps({"query": sql, "params": [str(i) for i in range(n)]}).encode()
    status, _, data = await _http(app.http_port, "/sql", body, _sql_headers())
    assert status == 200, data[:300]
    assert json.loads(data)["rows"] == [{"n": n}]


async def test_sql_too_many_parameters_is_400(gateway_app, no_tracebacks):
    app = await gateway_app()
    body = json.dumps({"query": "select 1", "params": ["1"] * 65536}).encode()
    status, _, data = await _http(app.http_port, "/sql", body, _sql_headers())
    assert status == 400 and "65535" in json.loads(data)["message"], data[:300]


def test_bind_counts_are_unsigned_16_bit():
    values = [b"%d" % i for i in range(65535)]
    msg = m.bind("", "s", [0], values, [0])
    decoded = m.decode_frontend(msg[0], msg[5:])
    assert isinstance(decoded, m.Bind) and len(decoded.params) == 65535 and decoded.params[-1] == b"65534"
    with pytest.raises(ValueError, match="65535"):
        m.bind("", "s", [], values + [b"x"], [])
    p = m.parse("", "q", [23] * 40000)
    assert len(m.decode_frontend(p[0], p[5:]).param_oids) == 40000


# ------------------------------------------------------------------ F8: NUL in Wirepool-Params

async def test_pg_nul_in_wirepool_params_is_400(gateway_app, no_tracebacks):
    app = await gateway_app()
    status, hdrs, data = await _http(app.http_port, "/pg", m.query("select 1"), {
        "authorization": _basic("alice", ALICE_PASSWORD), "wirepool-database": "app",
        "wirepool-params": "application_name=a%00b"})
    assert status == 400, data
    assert hdrs.get("wirepool-error") == "08P01" and b"NUL" in data


async def test_pg_nul_in_an_unknown_database_name_is_404(gateway_app, no_tracebacks):
    """Found by the fuzz campaign: the 404 message quotes the database name, and
    a NUL in it (percent-encoded in Wirepool-Database) made building the
    ErrorResponse raise: a 500 and a traceback."""
    app = await gateway_app()
    status, hdrs, data = await _http(app.http_port, "/pg", m.query("select 1"), {
        "authorization": _basic("alice", ALICE_PASSWORD), "wirepool-database": "a%00b"})
    assert status == 404, data
    assert hdrs.get("wirepool-error") == "3D000", hdrs
    assert b'database "a\\0b" does not exist' in data, data


# ------------------------------------------------------------------ F9: no upstream details

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_upstream_unreachable_error_names_no_host_port_or_role(gateway_app, caplog):
    port = _free_port()
    app = await gateway_app(databases={"app": {"host": "127.0.0.1", "port": port, "user": "hidden_role_x"}})
    caplog.set_level(logging.WARNING)
    with pytest.raises(asyncpg.PostgresError) as ei:
        await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), timeout=20)
    text = str(ei.value) + str(getattr(ei.value, "detail", "")) + str(getattr(ei.value, "hint", ""))
    assert ei.value.sqlstate == "08006"
    for secret in (str(port), "127.0.0.1", "hidden_role_x"):
        assert secret not in text, text
    assert any(str(port) in r.getMessage() for r in caplog.records), "the details belong in the log"
    # the same over HTTP
    body = json.dumps({"query": "select 1", "params": []}).encode()
    status, _, data = await _http(app.http_port, "/sql", body, _sql_headers())
    assert status == 400 and str(port).encode() not in data and b"hidden_role_x" not in data, data


async def test_upstream_login_refused_names_no_role(gateway_app):
    app = await gateway_app(databases={"app": {"password": "wrong-upstream-password"}})
    with pytest.raises(asyncpg.PostgresError) as ei:
        await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), timeout=20)
    assert PgCluster.SCRAM_USER not in str(ei.value), str(ei.value)
    assert ei.value.sqlstate.startswith("08")


# ------------------------------------------------------------------ F10: a session token is its owner's

async def test_pg_session_token_with_another_users_credentials_is_403(gateway_app, no_tracebacks):
    app = await gateway_app()
    status, hdrs, data = await _http(app.http_port, "/pg", m.query("begin; select 1"), {
        "authorization": _basic("alice", ALICE_PASSWORD), "wirepool-database": "app"})
    assert status == 200 and hdrs["wirepool-status"] == "T", (status, hdrs, data)
    token = hdrs["wirepool-session"]
    status, hdrs, data = await _http(app.http_port, "/pg", m.query("select current_user"), {
        "wirepool-session": token, "authorization": _basic("carol", CAROL_PASSWORD)})
    assert status == 403, (status, data)
    # the owner's own credentials with the token still work (the token was not consumed by the 403)
    status, hdrs, data = await _http(app.http_port, "/pg", m.query("rollback"), {
        "wirepool-session": token, "authorization": _basic("alice", ALICE_PASSWORD)})
    assert status == 200 and hdrs["wirepool-status"] == "I", (status, hdrs, data)
