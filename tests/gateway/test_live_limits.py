"""Connection caps changed on a running gateway (the admin ``SET`` and
``RELOAD``): ``max_login_clients``, ``max_http_conn``, ``max_client_conn``
apply to the next connection; connections already open stay."""

from __future__ import annotations

import socket
from pathlib import Path

import asyncpg
import psycopg
import pytest

from gateway.config import load_config
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import eventually
from tests.gateway.served import write_config
from tests.pgcluster import PgCluster


async def admin(port: int, sql: str) -> list[tuple[object, ...]]:
    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, dbname="pgbouncer",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as conn:
        cur = await conn.execute(sql)
        return await cur.fetchall() if cur.description else []


async def config_value(port: int, key: str) -> str:
    rows = await admin(port, "SHOW CONFIG")
    return next(str(r[1]) for r in rows if r[0] == key)


async def connect(port: int) -> asyncpg.Connection:
    return await asyncpg.connect(host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, database="app",
                                 ssl=False)


def raw(port: int) -> socket.socket:
    """A connection that sends nothing (logging in / waiting for a request)."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(5)
    return s


def closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        s.recv(65536)  # EOF, or what is sent before closing (a 503 / an error)
        return True
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.setblocking(True)


async def test_set_max_login_clients_live(gateway_app):
    app = await gateway_app(admin_users=["alice"], client_login_timeout=30)
    port = app.pg_port
    assert await config_value(port, "max_login_clients") == "0"
    await admin(port, "SET max_login_clients = 2")
    assert await config_value(port, "max_login_clients") == "2"
    stalled = [raw(port), raw(port)]  # two connections still logging in
    await eventually(lambda: app.gateway.limits.logging_in == 2, what="two clients logging in")
    with pytest.raises(asyncpg.PostgresError, match="too many clients are logging in") as exc:
        await connect(port)
    assert exc.value.sqlstate == "53300"
    for s in stalled:
        s.close()
    await eventually(lambda: app.gateway.limits.logging_in == 0, what="stalled logins gone")
    conn = await connect(port)
    assert await conn.fetchval("SELECT 1") == 1
    await conn.close()


async def test_set_max_http_conn_live(gateway_app):
    app = await gateway_app(admin_users=["alice"])
    await admin(app.pg_port, "SET max_http_conn = 2")
    first, second = raw(app.http_port), raw(app.http_port)
    await eventually(lambda: app.gateway.limits.http_open == 2, what="two HTTP connections open")
    third = raw(app.http_port)  # at the cap: the longest-waiting one makes room
    await eventually(lambda: closed_by_server(first), what="oldest idle HTTP connection closed")
    assert not closed_by_server(second) and not closed_by_server(third)
    assert any("max_http_conn (2)" in r for r in app.gateway.limits.shed_log.totals)
    await admin(app.pg_port, "SET max_http_conn = 50")
    more = [raw(app.http_port) for _ in range(4)]
    await eventually(lambda: app.gateway.limits.http_open == 6, what="six HTTP connections open")
    assert not any(closed_by_server(s) for s in [second, third, *more])
    for s in [first, second, third, *more]:
        s.close()


async def test_set_max_client_conn_live(gateway_app):
    app = await gateway_app(admin_users=["alice"])
    port = app.pg_port
    held = [await connect(port) for _ in range(3)]
    await admin(port, "SET max_client_conn = 3")  # the admin session itself counts
    with pytest.raises(asyncpg.PostgresError, match="too many clients already"):
        await connect(port)
    for c in held:  # connections already open stay
        assert await c.fetchval("SELECT 2") == 2
    await held.pop().close()
    await eventually(lambda: app.gateway.n_clients == 2, what="a client left")
    extra = await connect(port)
    held.append(extra)
    for c in held:
        await c.close()


def _toml(path: Path, pg: PgCluster, dbname: str, pg_port: int, max_login: int, max_http: int) -> None:
    write_config(path, pg, dbname, {"listen": "127.0.0.1:0", "pg_listen": f"127.0.0.1:{pg_port}",
                                    "admin_users": ["alice"], "max_login_clients": max_login,
                                    "max_http_conn": max_http, "client_login_timeout": 30})


async def test_reload_applies_connection_caps(gateway_app, pg, pg_db, tmp_path):
    cfg = tmp_path / "wirepool.toml"
    _toml(cfg, pg, pg_db, 0, 100, 100)
    app = await gateway_app(config=load_config(cfg))
    app.gateway.config_path = str(cfg)
    port = app.pg_port
    _toml(cfg, pg, pg_db, port, 1, 3)
    await admin(port, "RELOAD")
    assert (await config_value(port, "max_login_clients"), await config_value(port, "max_http_conn")) == ("1", "3")
    stalled = raw(port)
    await eventually(lambda: app.gateway.limits.logging_in == 1, what="one client logging in")
    with pytest.raises(asyncpg.PostgresError, match="too many clients are logging in"):
        await connect(port)
    stalled.close()
    await eventually(lambda: app.gateway.limits.logging_in == 0, what="stalled login gone")
    conn = await connect(port)
    await conn.close()


async def test_set_http_read_deadlines_live(gateway_app):
    """client_login_timeout (HTTP request head) and http_min_body_rate (body)
    changed by SET apply to the next request: before, the HTTP listener kept
    the values it started with."""
    from tests.gateway.test_limits import _trickle
    app = await gateway_app(admin_users=["alice"], client_login_timeout=60, http_min_body_rate=1)
    await admin(app.pg_port, "SET client_login_timeout = 0.5")
    took, got = await _trickle(app.http_port, b"GET /healthz HTTP/1.1\r\n",
                               b"x-slow: " + b"a" * 400, interval=0.1, limit=10)
    assert took < 4 and got.startswith(b"HTTP/1.1 408"), (took, got)
    await admin(app.pg_port, "SET http_min_body_rate = 1000")
    head = b"POST /sql HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n"
    took, got = await _trickle(app.http_port, head, b"{" * 1000, interval=0.05, limit=10)
    assert took < 4 and got.startswith(b"HTTP/1.1 408"), (took, got)
    assert await config_value(app.pg_port, "client_login_timeout") == "0.5"
