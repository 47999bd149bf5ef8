"""The driver over WebSocket through a real gateway and a real PostgreSQL.

``driver.connect("ws://alice:secret@127.0.0.1:<port>/app")``: the URL path is
the database; the gateway endpoint is /v2.  statement_cache_size=0 everywhere
(named prepared statements across a transaction pool are a later issue).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from typing import Any, AsyncIterator

import pytest
from websockets.asyncio.server import serve

import driver
from driver import exceptions as exc
from driver.dsn import parse_dsn
from driver.transport import TransportError, get_connector
from driver.transport.websocket import WebSocketConnector, WebSocketTransport
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD

pytestmark = pytest.mark.timeout(60)


def ws_dsn(app: Any, user: str = "alice", password: str = ALICE_PASSWORD, db: str = "app",
           query: str = "") -> str:
    return f"ws://{user}:{password}@127.0.0.1:{app.http_port}/{db}{query}"


class WireLog:
    """Records, in order, every WebSocket message the driver sends and receives
    and every WebSocket it opens (by wrapping the transport's methods)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[tuple[str, bytes]] = []
        self.opened = 0
        orig_send, orig_recv = WebSocketTransport.send, WebSocketTransport.recv
        orig_connect = WebSocketConnector.connect
        log = self

        async def send(self: WebSocketTransport, data: bytes) -> None:
            log.events.append(("send", bytes(data)))
            await orig_send(self, data)

        async def recv(self: WebSocketTransport) -> bytes:
            data = await orig_recv(self)
            log.events.append(("recv", data))
            return data

        async def connect(self: WebSocketConnector, endpoint: Any) -> Any:
            log.opened += 1
            return await orig_connect(self, endpoint)

        monkeypatch.setattr(WebSocketTransport, "send", send)
        monkeypatch.setattr(WebSocketTransport, "recv", recv)
        monkeypatch.setattr(WebSocketConnector, "connect", connect)

    def sends(self) -> list[bytes]:
        return [d for kind, d in self.events if kind == "send"]

    def sends_before_first_recv(self) -> list[bytes]:
        out = []
        for kind, d in self.events:
            if kind == "recv":
                break
            out.append(d)
        return out


def message_types(data: bytes) -> list[str]:
    """Frontend message types in one chunk ('startup' for the untyped StartupMessage)."""
    out, i = [], 0
    if data[4:8] == (196608).to_bytes(4, "big"):
        out.append("startup")
        i = int.from_bytes(data[:4], "big")
    while i < len(data):
        out.append(chr(data[i]))
        i += 1 + int.from_bytes(data[i + 1:i + 5], "big")
    return out


# ----------------------------------------------------------------------------- DSN


def test_ws_dsn_path_is_the_database() -> None:
    c = parse_dsn("ws://alice:secret@127.0.0.1:8432/app")
    assert (c.host, c.port, c.user, c.password, c.database) == ("127.0.0.1", 8432, "alice", "secret", "app")
    assert c.url() == "ws://127.0.0.1:8432/v2" and c.sslmode == "disable"
    c = parse_dsn("wss://alice:pw@gw.example/my%20db?endpoint=/custom/ws&token=tok&pipeline_connect=password")
    assert c.database == "my db" and c.url() == "wss://gw.example:443/custom/ws"
    assert c.sslmode == "verify-full"
    assert c.query == {"token": "tok", "pipeline_connect": "password"}
    # an explicit dbname query parameter still wins (older DSNs: ws://h/v2?dbname=app)
    assert parse_dsn("ws://u@h/v2?dbname=app").database == "app"
    assert parse_dsn("ws://u@h:1").database == "u"
    with pytest.raises(exc.ClientConfigurationError, match="endpoint"):
        parse_dsn("ws://u@h/app?endpoint=v2")
    assert isinstance(get_connector("ws"), WebSocketConnector)
    assert isinstance(get_connector("wss"), WebSocketConnector)


# ------------------------------------------------------------------ SCRAM, queries


async def test_scram_fetch_execute_transactions_prepare(gateway_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app = await gateway_app()  # auth_type scram-sha-256
    wire = WireLog(monkeypatch)
    conn = await driver.connect(ws_dsn(app, "bob", BOB_PASSWORD), statement_cache_size=0)
    try:
        assert conn.transport.secure is False
        # SCRAM: StartupMessage, SASLInitialResponse, SASLResponse = 3 messages to log in
        assert [message_types(d) for d in wire.sends()] == [["startup"], ["p"], ["p"]]
        assert await conn.fetchval("select current_database()") == "wirepool_test"
        assert await conn.fetchval("select $1::int + $2::int", 40, 2) == 42
        ts = datetime.datetime(2024, 1, 2, 3, 4, 5, 678000, tzinfo=datetime.timezone.utc)
        row = await conn.fetchrow("select $1::text t, $2::bytea b, $3::timestamptz ts, $4::int[] a",
                                  "héllo", b"\x00\xff", ts, [1, None, 3])
        assert (row["t"], row["b"], row["ts"], row["a"]) == ("héllo", b"\x00\xff", ts, [1, None, 3])
        big = await conn.fetchval("select repeat('x', 3000000)")  # many chunks from the gateway
        assert len(big) == 3000000
        rows = await conn.fetch("select g from generate_series(1, 5000) g")
        assert [r[0] for r in rows] == list(range(1, 5001))

        tbl = f"ws_drv_{id(conn)}"
        await conn.execute(f"create table {tbl} (x int primary key)")
        try:
            async with conn.transaction():
                await conn.execute(f"insert into {tbl} values ($1)", 1)
                assert conn.is_in_transaction()
                # a named prepared statement works inside one transaction (one server)
                st = await conn.prepare(f"select count(*) from {tbl} where x = $1")
                assert await st.fetchval(1) == 1
            with pytest.raises(ZeroDivisionError):
                async with conn.transaction():
                    await conn.execute(f"insert into {tbl} values (2)")
                    raise ZeroDivisionError
            assert await conn.fetchval(f"select array_agg(x) from {tbl}") == [1]
            with pytest.raises(exc.UniqueViolationError):
                await conn.execute(f"insert into {tbl} values (1)")
            await conn.executemany(f"insert into {tbl} values ($1)", [(10,), (11,), (12,)])
            assert await conn.fetchval(f"select count(*) from {tbl}") == 4
            with pytest.raises(exc.UndefinedTableError):
                await conn.execute("select * from no_such_table_ws")
            assert await conn.fetchval("select 1") == 1  # still usable
        finally:
            await conn.execute(f"drop table {tbl}")
    finally:
        await conn.close()
    assert conn.is_closed()


async def test_wrong_password_and_unknown_database(gateway_app: Any) -> None:
    app = await gateway_app()
    with pytest.raises(exc.InvalidPasswordError):
        await driver.connect(ws_dsn(app, password="nope"), statement_cache_size=0)
    with pytest.raises(exc.InvalidCatalogNameError):
        await driver.connect(ws_dsn(app, db="nosuchdb"), statement_cache_size=0)


# --------------------------------------------------------------- pipelined connect


async def test_pipelined_password_connect_is_one_round_trip(gateway_app: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    app = await gateway_app(auth_type="password")
    wire = WireLog(monkeypatch)
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0, pipeline_connect="password")
    try:
        # Login: ONE client->server message (StartupMessage + PasswordMessage) before
        # the server's first reply, and nothing more until the session is ready.
        assert [message_types(d) for d in wire.sends()] == [["startup", "p"]]
        assert wire.sends_before_first_recv() == wire.sends()
        assert conn.get_server_pid() != 0
        n_login = len(wire.sends())
        assert await conn.execute("select 1") == "SELECT 1"
        # ... and the first result after exactly one more message (one round trip).
        assert len(wire.sends()) == n_login + 1
        assert message_types(wire.sends()[-1]) == ["Q"]
    finally:
        await conn.close()
    assert wire.opened == 1

    # Same through the DSN parameter; and a wrong password still fails cleanly.
    wire.events.clear()
    conn = await driver.connect(ws_dsn(app, query="?pipeline_connect=password"), statement_cache_size=0)
    try:
        assert [message_types(d) for d in wire.sends()] == [["startup", "p"]]
    finally:
        await conn.close()
    with pytest.raises(exc.InvalidPasswordError):
        await driver.connect(ws_dsn(app, password="wrong"), statement_cache_size=0, pipeline_connect="password")


async def test_without_pipelining_password_auth_costs_two_messages(gateway_app: Any,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    app = await gateway_app(auth_type="password")
    wire = WireLog(monkeypatch)
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0)
    try:
        assert [message_types(d) for d in wire.sends()] == [["startup"], ["p"]]
        assert await conn.fetchval("select 7") == 7
    finally:
        await conn.close()


async def test_pipelined_connect_falls_back_when_the_server_wants_scram(gateway_app: Any,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    app = await gateway_app()  # scram-sha-256: the pipelined cleartext password is refused
    wire = WireLog(monkeypatch)
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0, pipeline_connect="password")
    try:
        assert wire.opened == 2  # the pipelined attempt, then a normal SCRAM login
        kinds = [message_types(d) for d in wire.sends()]
        assert kinds[0] == ["startup", "p"] and kinds[-3:] == [["startup"], ["p"], ["p"]]
        assert await conn.fetchval("select $1::text", "ok") == "ok"
    finally:
        await conn.close()
    with pytest.raises(exc.InvalidPasswordError):
        await driver.connect(ws_dsn(app, password="wrong"), statement_cache_size=0, pipeline_connect="password")


@pytest.mark.parametrize("auth_type", ["trust", "md5"])
async def test_pipelined_connect_falls_back_for_trust_and_md5(gateway_app: Any, auth_type: str,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    app = await gateway_app(auth_type=auth_type)
    wire = WireLog(monkeypatch)
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0, pipeline_connect="password")
    try:
        assert wire.opened == 2
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


async def test_pipeline_connect_validation(gateway_app: Any) -> None:
    with pytest.raises(exc.ClientConfigurationError, match="pipeline_connect"):
        await driver.connect("ws://a:b@127.0.0.1:1/app", pipeline_connect="always")


# ------------------------------------------------------------------------- cancel


async def test_timeout_cancels_through_the_gateway(gateway_app: Any, pg: Any) -> None:
    app = await gateway_app(auth_type="password")
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0, pipeline_connect="password")
    admin = await driver.connect(pg.dsn("wp_admin", pg.SUPERUSER_PASSWORD), statement_cache_size=0)
    try:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("select pg_sleep(30)", timeout=0.5)
        assert loop.time() - t0 < 10  # the backend was cancelled, not waited for
        # the session is usable and nothing still sleeps on the server
        assert await conn.fetchval("select 5") == 5
        assert await admin.fetchval(
            "select count(*) from pg_stat_activity where query = 'select pg_sleep(30)' and state = 'active'") == 0
        # cancelling a running statement inside a transaction: the transaction is aborted
        await conn.execute("begin")
        with pytest.raises(asyncio.TimeoutError):
            await conn.execute("select pg_sleep(30)", timeout=0.3)
        with pytest.raises(exc.InFailedSQLTransactionError):
            await conn.execute("select 1")
        await conn.execute("rollback")
        assert not conn.is_in_transaction()
        assert await conn.fetchval("select 6") == 6
    finally:
        await admin.close()
        await conn.close()


# ---------------------------------------------------------------- transport edges


@pytest.fixture
async def text_server() -> AsyncIterator[int]:
    async def handler(ws: Any) -> None:
        await ws.recv()
        await ws.send("a text frame")
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        yield list(server.sockets)[0].getsockname()[1]


async def test_text_message_is_a_transport_error(text_server: int) -> None:
    with pytest.raises((exc.ConnectionDoesNotExistError, exc.InterfaceError)) as info:
        await driver.connect(f"ws://u:p@127.0.0.1:{text_server}/db", timeout=10)
    chain, e = [], info.value
    seen: BaseException | None = e
    while seen is not None:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    assert any(isinstance(x, TransportError) and "text" in str(x) for x in chain), chain


async def test_connect_errors() -> None:
    with pytest.raises((OSError, exc.InterfaceError)):
        await driver.connect("ws://u:p@127.0.0.1:1/db", timeout=5)


async def test_refused_handshake_is_raised_as_such(gateway_app: Any) -> None:
    """The upgrade is pipelined (the StartupMessage follows it before the 101),
    so a refusal is read with the first reply: connect() still raises the
    handshake error (eagerly), a lazy connection at its first operation."""
    app = await gateway_app(auth_type="password")
    dsn = ws_dsn(app, query="?endpoint=/healthz")  # an HTTP route: answered 200, not 101
    with pytest.raises(TransportError, match="handshake") as info:
        await driver.connect(dsn, statement_cache_size=0, timeout=10)
    assert "200" in str(info.value)
    conn = await driver.connect(dsn, statement_cache_size=0, pipeline_connect="password", lazy_connect=True)
    with pytest.raises(TransportError, match="handshake"):
        await conn.fetchval("select 1")
    assert conn.is_closed()
    # the gateway serves the next client as usual
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0)
    try:
        assert await conn.fetchval("select 1") == 1
    finally:
        await conn.close()


async def test_one_websocket_message_per_batch(gateway_app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """executemany() = Parse + n*(Bind/Execute) + Sync in ONE WebSocket message."""
    app = await gateway_app(auth_type="password")
    conn = await driver.connect(ws_dsn(app), statement_cache_size=0, pipeline_connect="password")
    wire = WireLog(monkeypatch)
    try:
        await conn.executemany("select $1::int", [(i,) for i in range(50)])
        last = message_types(wire.sends()[-1])
        assert last.count("B") == 50 and last.count("E") == 50 and last[-1] == "S"
    finally:
        await conn.close()


async def test_wss_with_tls(gateway_app: Any, tmp_path: Any) -> None:
    """wss://: verification on by default (a self-signed gateway is refused);
    an explicit SSLContext trusting its certificate works.  A tiny TLS
    terminator in front of the gateway stands in for a TLS-configured listener."""
    import subprocess

    app = await gateway_app(auth_type="password")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def terminate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", app.http_port)
        await asyncio.gather(pipe(reader, uw), pipe(ur, writer))

    server = await asyncio.start_server(terminate, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    dsn = f"wss://alice:{ALICE_PASSWORD}@127.0.0.1:{port}/app"
    try:
        with pytest.raises((OSError, exc.InterfaceError)):
            await driver.connect(dsn, statement_cache_size=0, timeout=10)
        client_ctx = ssl.create_default_context(cafile=str(cert))
        conn = await driver.connect(dsn, statement_cache_size=0, ssl=client_ctx, pipeline_connect="password")
        try:
            assert conn.transport.secure is True
            assert await conn.fetchval("select $1::text", "over tls") == "over tls"
        finally:
            await conn.close()
        conn = await driver.connect(dsn + "?sslmode=require", statement_cache_size=0)
        try:
            assert await conn.fetchval("select 3") == 3
        finally:
            await conn.close()
    finally:
        server.close()


async def test_compression_is_off_by_default_and_can_be_enabled(gateway_app: Any) -> None:
    app = await gateway_app(auth_type="password")
    for query, expected in (("", []), ("?compression=deflate", ["permessage-deflate"])):
        conn = await driver.connect(ws_dsn(app, query=query), statement_cache_size=0, pipeline_connect="password")
        try:
            ws = conn.transport.websocket  # type: ignore[attr-defined]
            assert [e.name for e in ws.extensions] == expected
            assert await conn.fetchval("select repeat($1::text, 100000)", "ab") == "ab" * 100000
        finally:
            await conn.close()
