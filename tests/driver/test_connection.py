"""driver.connect / Connection against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import uuid
from typing import Any, Awaitable, Callable

import pytest

import driver
from driver import exceptions as exc
from driver.protocol import messages as m
from driver.transport import Endpoint, get_connector
from tests.pgcluster import PgCluster

Connect = Callable[..., Awaitable[driver.Connection]]


# ---------------------------------------------------------------------------
# Connecting and authentication
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("user,password", [
    (PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD),
    (PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD),
    (PgCluster.MD5_USER, PgCluster.MD5_PASSWORD),
    (PgCluster.PLAIN_USER, PgCluster.PLAIN_PASSWORD),
    (PgCluster.TRUST_USER, None),
])
async def test_auth_methods(pg: PgCluster, user: str, password: str | None) -> None:
    c = await driver.connect(pg.dsn(user, password))
    try:
        assert await c.fetchval("SELECT current_user") == user
        method = await c.fetchval(
            "SELECT CASE WHEN $1 THEN 'ok' END", True)
        assert method == "ok"
    finally:
        await c.close()
    assert c.is_closed()


@pytest.mark.parametrize("user", [PgCluster.SCRAM_USER, PgCluster.MD5_USER, PgCluster.PLAIN_USER])
async def test_wrong_password(pg: PgCluster, user: str) -> None:
    with pytest.raises(exc.InvalidPasswordError) as ei:
        await driver.connect(pg.dsn(user, "not-the-password"))
    assert ei.value.sqlstate == "28P01"
    assert user in str(ei.value)


async def test_missing_password(pg: PgCluster) -> None:
    with pytest.raises(exc.InterfaceError, match="no password"):
        await driver.connect(**pg.connect_kwargs(PgCluster.SCRAM_USER, None))


async def test_keyword_arguments(pg: PgCluster) -> None:
    c = await driver.connect(host=pg.host, port=pg.port, user=PgCluster.MD5_USER,
                             password=PgCluster.MD5_PASSWORD, database=PgCluster.DATABASE,
                             server_settings={"application_name": "kw-test"})
    try:
        assert await c.fetchval("SHOW application_name") == "kw-test"
        assert c.get_settings().application_name == "kw-test"
    finally:
        await c.close()


async def test_unknown_database(pg: PgCluster) -> None:
    with pytest.raises(exc.InvalidCatalogNameError):
        await driver.connect(pg.dsn(PgCluster.SUPERUSER, PgCluster.SUPERUSER_PASSWORD, "nope_db"))


async def test_pipelined_cleartext_login(pg: PgCluster) -> None:
    """Startup + password + first query could share one write: the server accepts it."""
    c = await driver.connect(pg.dsn(PgCluster.PLAIN_USER, PgCluster.PLAIN_PASSWORD),
                             pipeline_password=True)
    try:
        assert await c.fetchval("SELECT 1") == 1
    finally:
        await c.close()


async def test_pipelined_password_against_scram_falls_back(pg: PgCluster) -> None:
    c = await driver.connect(pg.dsn(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD),
                             pipeline_password=True)
    try:
        assert await c.fetchval("SELECT current_user") == PgCluster.SCRAM_USER
    finally:
        await c.close()


async def test_ssl_modes_without_server_ssl(pg: PgCluster) -> None:
    for mode in ("disable", "prefer", "allow"):
        c = await driver.connect(pg.dsn(PgCluster.TRUST_USER) + f"?sslmode={mode}")
        assert not c.transport.secure
        await c.close()
    with pytest.raises(OSError, match="does not support SSL"):
        await driver.connect(pg.dsn(PgCluster.TRUST_USER) + "?sslmode=require")


async def test_unknown_scheme_is_a_configuration_error() -> None:
    with pytest.raises(exc.ClientConfigurationError):
        await driver.connect("ftp://u:p@127.0.0.1:1/db")


async def test_connect_timeout_from_the_dsn() -> None:
    """A server that accepts but never answers: the DSN's connect_timeout caps
    connect()'s timeout argument (default 60 s), and vice versa."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    dsn = f"postgresql://u:p@127.0.0.1:{port}/db?sslmode=disable"
    loop = asyncio.get_running_loop()
    try:
        for kwargs, url in (({}, dsn + "&connect_timeout=0.3"),
                            ({"timeout": 0.3}, dsn + "&connect_timeout=30")):
            t0 = loop.time()
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(driver.connect(url, **kwargs), 20)
            assert loop.time() - t0 < 10, kwargs  # not the 20 s guard
        with pytest.raises(exc.ClientConfigurationError, match="timeout"):
            await driver.connect(dsn, timeout=-1)
    finally:
        server.close()
        for w in held:
            w.close()


async def test_connect_refused() -> None:
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    with pytest.raises(OSError):
        await driver.connect(f"postgresql://u@127.0.0.1:{port}/db")


async def test_server_info(conn: driver.Connection, pg: PgCluster) -> None:
    v = conn.get_server_version()
    assert isinstance(v, driver.ServerVersion)
    num = int(await conn.fetchval("SHOW server_version_num"))
    assert (v.major, v.minor, v.micro) == (num // 10000, 0, num % 10000)  # as asyncpg
    assert v.releaselevel == "final"
    assert conn.get_server_pid() == await conn.fetchval("SELECT pg_backend_pid()")
    assert conn.get_settings().server_encoding == "UTF8"
    assert conn.get_settings().client_encoding == "UTF8"


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


async def test_execute_simple_and_status(conn: driver.Connection) -> None:
    assert await conn.execute("CREATE TABLE t (a int PRIMARY KEY, b text)") == "CREATE TABLE"
    status = await conn.execute("INSERT INTO t VALUES (1, 'x'); INSERT INTO t VALUES (2, 'y'), (3, 'z')")
    assert status == "INSERT 0 2"
    assert await conn.execute("UPDATE t SET b = $1 WHERE a > $2", "w", 1) == "UPDATE 2"
    assert await conn.execute("DELETE FROM t WHERE a = $1", 3) == "DELETE 1"
    assert await conn.execute("SELECT * FROM t") == "SELECT 2"
    assert await conn.execute("") == ""


async def test_fetch_records(conn: driver.Connection) -> None:
    rows = await conn.fetch("SELECT g AS n, g::text AS s FROM generate_series(1, $1) g", 3)
    assert len(rows) == 3
    r = rows[1]
    assert r["n"] == 2 and r[1] == "2" and r.get("s") == "2"
    assert dict(r) == {"n": 2, "s": "2"}
    assert list(r.keys()) == ["n", "s"]
    assert tuple(r) == (2, "2")
    row = await conn.fetchrow("SELECT 1 AS a, NULL::int AS b")
    assert row is not None and row["a"] == 1 and row["b"] is None
    assert await conn.fetchrow("SELECT 1 WHERE false") is None
    assert await conn.fetchval("SELECT 1 WHERE false") is None
    assert await conn.fetchval("SELECT 1, 2, 3", column=2) == 3
    assert await conn.fetch("SELECT 1 WHERE false") == []


async def test_many_types_round_trip(conn: driver.Connection) -> None:
    values: list[tuple[str, Any]] = [
        ("int2", 7), ("int4", -5), ("int8", 2**40), ("float8", 1.5), ("bool", True),
        ("text", "héllo"), ("bytea", b"\x00\xff"), ("numeric", decimal.Decimal("12.345")),
        ("date", datetime.date(2024, 2, 29)),
        ("timestamp", datetime.datetime(2024, 1, 2, 3, 4, 5, 6)),
        ("timestamptz", datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)),
        ("interval", datetime.timedelta(days=1, seconds=2)),
        ("uuid", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("int4[]", [1, 2, None]), ("text[]", ["a", "b c"]), ("jsonb", '{"a": 1}'),
    ]
    for typ, value in values:
        got = await conn.fetchval(f"SELECT $1::{typ}", value)
        assert got == value, typ


async def test_server_errors_class_and_fields(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE u (id int CONSTRAINT u_pk PRIMARY KEY, v int CHECK (v > 0))")
    await conn.execute("INSERT INTO u VALUES (1, 1)")
    with pytest.raises(exc.UniqueViolationError) as ei:
        await conn.execute("INSERT INTO u VALUES ($1, $2)", 1, 1)
    e = ei.value
    assert e.sqlstate == "23505"
    assert e.constraint_name == "u_pk" and e.table_name == "u" and e.schema_name == "public"
    assert e.detail == "Key (id)=(1) already exists."
    with pytest.raises(exc.CheckViolationError):
        await conn.execute("INSERT INTO u VALUES (2, -1)")
    with pytest.raises(exc.PostgresSyntaxError) as se:
        await conn.execute("SELEC 1")
    assert se.value.position == "1"
    with pytest.raises(exc.UndefinedColumnError) as ue:
        await conn.fetch("SELECT nope FROM u WHERE id = $1", 1)
    assert ue.value.position is not None
    with pytest.raises(exc.RaiseError) as re_:
        await conn.execute("DO $$BEGIN RAISE EXCEPTION 'boom' USING DETAIL = 'dd', HINT = 'hh'; END$$")
    assert (re_.value.detail, re_.value.hint) == ("dd", "hh")
    assert str(re_.value).startswith("boom")
    # The connection is still usable after every error.
    assert await conn.fetchval("SELECT count(*) FROM u") == 1


async def test_argument_errors(conn: driver.Connection) -> None:
    with pytest.raises(exc.DataError, match=r"invalid input for query argument \$1"):
        await conn.fetchval("SELECT $1::int", "not an int")
    with pytest.raises(exc.InterfaceError, match="expects 1 argument"):
        await conn.fetchval("SELECT $1::int", 1, 2)
    assert await conn.fetchval("SELECT $1::int", 3) == 3


async def test_executemany_is_one_batch(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE e (a int PRIMARY KEY, b text)")
    await conn.executemany("INSERT INTO e VALUES ($1, $2)", [(i, str(i)) for i in range(200)])
    assert await conn.fetchval("SELECT count(*) FROM e") == 200
    # All in one implicit transaction (one Sync): a failure inserts nothing.
    with pytest.raises(exc.UniqueViolationError):
        await conn.executemany("INSERT INTO e VALUES ($1, $2)", [(1000, "a"), (1001, "b"), (5, "dup")])
    assert await conn.fetchval("SELECT count(*) FROM e") == 200
    await conn.executemany("INSERT INTO e VALUES ($1, $2)", [])
    # A bad argument mid-batch: asyncpg's DataError naming the element; nothing sent.
    with pytest.raises(exc.DataError, match=r"^invalid input for query argument \$1 in element #2 "
                       r"of executemany\(\) sequence: 'x' "):
        await conn.executemany("INSERT INTO e VALUES ($1, $2)", [(300, "a"), (301, "b"), ("x", "c")])
    with pytest.raises(exc.DataError, match=r"^invalid input for query argument \$1: 'x' "):
        await (await conn.prepare("SELECT $1::int")).fetchval("x")
    assert await conn.fetchval("SELECT count(*) FROM e") == 200


async def test_prepared_statement(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE p (id int, name text)")
    ps = await conn.prepare("SELECT id, name FROM p WHERE id > $1 ORDER BY id")
    params = ps.get_parameters()
    assert [(t.oid, t.name, t.kind) for t in params] == [(23, "int4", "scalar")]
    attrs = ps.get_attributes()
    assert [(a.name, a.type.oid, a.type.name) for a in attrs] == [("id", 23, "int4"), ("name", 25, "text")]
    assert ps.get_name().startswith("__wp_stmt_")
    ins = await conn.prepare("INSERT INTO p VALUES ($1, $2)")
    await ins.executemany([(1, "a"), (2, "b"), (3, "c")])
    assert ins.get_statusmsg() is None  # asyncpg: executemany sets no status
    assert [tuple(r) for r in await ps.fetch(1)] == [(2, "b"), (3, "c")]
    assert ps.get_statusmsg() == "SELECT 2"
    r = await ps.fetchrow(2)
    assert r is not None and r["name"] == "c"
    assert await ps.fetchval(0, column=1) == "a"
    n = await conn.fetchval("SELECT count(*) FROM pg_prepared_statements WHERE name = $1", ps.get_name())
    assert n == 1


async def test_statement_cache_reuses_named_statements(conn: driver.Connection) -> None:
    q = "SELECT $1::int + 1"
    for i in range(5):
        assert await conn.fetchval(q, i) == i + 1
    rows = await conn.fetch("SELECT statement FROM pg_prepared_statements")
    assert [r[0] for r in rows].count(q) == 1


async def test_statement_cache_lru_eviction(connect: Connect) -> None:
    c = await connect(statement_cache_size=3)
    for i in range(6):
        assert await c.fetchval(f"SELECT {i} + $1::int", 0) == i
    await c.fetchval("SELECT 1 + $1::int", 0)  # flushes pending Close messages
    names = await c.fetch("SELECT statement FROM pg_prepared_statements")
    stmts = {r[0] for r in names}
    assert len(stmts) <= 4
    assert "SELECT 5 + $1::int" in stmts and "SELECT 0 + $1::int" not in stmts


async def test_statement_cache_disabled_uses_unnamed(connect: Connect) -> None:
    c = await connect(statement_cache_size=0)
    await c.execute("CREATE TABLE s0 (a int)")
    await c.executemany("INSERT INTO s0 VALUES ($1)", [(1,), (2,)])
    assert await c.fetchval("SELECT sum(a) FROM s0 WHERE a > $1", 0) == 3
    rows = await c.fetch("SELECT $1::text AS x", "y")
    assert rows[0]["x"] == "y"
    assert await c.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0


async def test_cached_statement_survives_schema_change(conn: driver.Connection) -> None:
    await conn.execute("CREATE TABLE sc (a int)")
    await conn.execute("INSERT INTO sc VALUES (1)")
    q = "SELECT * FROM sc WHERE a = $1"
    assert len((await conn.fetchrow(q, 1)) or ()) == 1
    await conn.execute("ALTER TABLE sc ADD COLUMN b text DEFAULT 'x'")
    row = await conn.fetchrow(q, 1)
    assert row is not None and tuple(row) == (1, "x")
    await conn.execute("DEALLOCATE ALL")  # the server forgets the cached statements
    assert await conn.fetchval(q, 1) == 1


async def test_concurrent_use_is_refused(conn: driver.Connection) -> None:
    t = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(0.2)"))
    await asyncio.sleep(0)  # let it start
    with pytest.raises(exc.InterfaceError, match="another operation is in progress"):
        await conn.fetchval("SELECT 1")
    await t
    assert await conn.fetchval("SELECT 1") == 1


async def test_notices_reach_log_listeners(conn: driver.Connection) -> None:
    got: asyncio.Queue[Any] = asyncio.Queue()
    cb = lambda c, msg: got.put_nowait((c, msg))  # noqa: E731
    conn.add_log_listener(cb)
    await conn.execute("DO $$BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END$$")
    c1, msg1 = await asyncio.wait_for(got.get(), 5)
    c2, msg2 = await asyncio.wait_for(got.get(), 5)
    assert c1 is conn and msg1.message == "hello 42" and msg1.severity == "NOTICE"
    assert isinstance(msg2, exc.PostgresWarning) and msg2.message == "careful"
    conn.remove_log_listener(cb)
    await conn.execute("DO $$BEGIN RAISE NOTICE 'unheard'; END$$")
    await conn.fetchval("SELECT 1")
    assert got.empty()


async def test_connection_loss(conn: driver.Connection, connect: Connect) -> None:
    other = await connect()
    pid = conn.get_server_pid()
    assert await other.fetchval("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises((exc.ConnectionDoesNotExistError, exc.InterfaceError,
                        exc.AdminShutdownError)):
        for _ in range(100):  # the FATAL arrives asynchronously
            await conn.fetchval("SELECT 1")
    assert conn.is_closed()
    with pytest.raises(exc.InterfaceError, match="connection is closed"):
        await conn.fetchval("SELECT 1")


async def test_loss_during_query_raises_connection_does_not_exist(conn: driver.Connection,
                                                                   connect: Connect) -> None:
    other = await connect()
    pid = conn.get_server_pid()
    t = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(10)"))
    for _ in range(200):
        if await other.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND "
                                "query LIKE '%pg_sleep(10)%'", pid):
            break
    await other.fetchval("SELECT pg_terminate_backend($1)", pid)
    with pytest.raises(exc.ConnectionDoesNotExistError):
        await asyncio.wait_for(t, 10)
    assert conn.is_closed()


async def test_close_and_terminate(connect: Connect) -> None:
    c = await connect()
    await c.close()
    assert c.is_closed()
    await c.close()  # idempotent
    c2 = await connect()
    c2.terminate()
    assert c2.is_closed()
    with pytest.raises(exc.InterfaceError):
        await c2.execute("SELECT 1")


async def test_reset(conn: driver.Connection) -> None:
    await conn.execute("SET application_name = 'dirty'")
    await conn.add_listener("resetchan", lambda *a: None)
    await conn.execute("BEGIN")
    await conn.reset()
    assert not conn.is_in_transaction()
    assert await conn.fetchval("SHOW application_name") == ""
    assert await conn.fetchval("SELECT count(*) FROM pg_listening_channels()") == 0


async def test_cancel_request_over_transport(conn: driver.Connection, pg: PgCluster) -> None:
    """The transport's cancel path works on its own (new TCP connection)."""
    t = asyncio.ensure_future(conn.fetchval("SELECT pg_sleep(10)"))
    connector = get_connector("postgresql")
    # A cancel that reaches the server before the query starts cancels nothing:
    # repeat it until the query is cancelled (bounded), rather than guess a delay.
    for _ in range(100):
        await connector.cancel(Endpoint(host=pg.host, port=pg.port), conn.get_server_pid(),
                               conn.protocol.backend_secret or 0)
        done, _pending = await asyncio.wait({t}, timeout=0.1)
        if done:
            break
    with pytest.raises(exc.QueryCanceledError):
        await asyncio.wait_for(t, 10)
    assert m.CANCEL_REQUEST_CODE == 80877102
    assert await conn.fetchval("SELECT 2") == 2


async def test_large_result(conn: driver.Connection) -> None:
    rows = await conn.fetch("SELECT g, repeat('x', 100) FROM generate_series(1, 20000) g")
    assert len(rows) == 20000 and rows[-1][0] == 20000
    big = await conn.fetchval("SELECT repeat('y', 3000000)")
    assert len(big) == 3000000


# ---------------------------------------------------------------------------
# Pipelining at the protocol level, against the real server
# ---------------------------------------------------------------------------


async def test_protocol_pipelining_against_server(pg: PgCluster) -> None:
    """Several requests queued in ONE write; an error fails only its own request."""
    from driver.protocol.client import ClientProtocol, ExtendedQuery, RequestDone, SimpleQuery
    from driver import codecs

    transport = await get_connector("postgresql").connect(Endpoint(host=pg.host, port=pg.port,
                                                                   sslmode="disable"))
    proto = ClientProtocol(PgCluster.PLAIN_USER, PgCluster.DATABASE, password=PgCluster.PLAIN_PASSWORD,
                           row_decoder_factory=codecs.build_row_decoder)
    try:
        startup = proto.start(pipeline_password=True)
        reqs: list[Any] = []
        for value in (b"1", b"oops", b"3"):
            req = ExtendedQuery().parse("", "SELECT $1::int4 * 10", [23]).bind("", "", [0], [value], [1])
            req.describe_portal("")
            req.execute("", 0)
            reqs.append(proto.submit(req))
        reqs.append(proto.submit(SimpleQuery("SELECT 'four'", keep_rows=True)))
        await transport.send(proto.data_to_send())  # startup + password + 4 requests
        done: list[Any] = []
        while len(done) < 5:
            data = await asyncio.wait_for(transport.recv(), 10)
            assert data
            proto.receive_data(data)
            done += [e.request for e in proto.next_events() if isinstance(e, RequestDone)]
        assert done == [startup] + reqs
        assert not startup.failed
        assert reqs[0].results[0].rows == [(10,)]
        assert reqs[1].error is not None and reqs[1].error["C"] == "22P02"
        assert reqs[2].results[0].rows == [(30,)]
        assert reqs[3].results[0].rows == [("four",)]
        proto.terminate()
        await transport.send(proto.data_to_send())
    finally:
        transport.close()


# ---------------------------------------------------------------------------
# TLS
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_cluster() -> Any:
    import os
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = Path(tempfile.mkdtemp(prefix="wirepool-tls-"))  # readable by the postgres user
    os.chmod(d, 0o755)
    crt, key = d / "server.crt", d / "server.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-keyout", str(key), "-out", str(crt), "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost"], check=True, capture_output=True)
    os.chmod(key, 0o600)
    os.chmod(crt, 0o644)
    if os.geteuid() == 0:
        shutil.chown(key, "postgres")
        shutil.chown(crt, "postgres")
    cluster = PgCluster({"ssl": "on", "ssl_cert_file": str(crt), "ssl_key_file": str(key)})
    try:
        yield cluster, str(crt)
    finally:
        cluster.cleanup()
        shutil.rmtree(d, ignore_errors=True)


async def test_tls_modes(tls_cluster: Any) -> None:
    import ssl

    cluster, cafile = tls_cluster
    dsn = cluster.dsn(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD)
    for mode, secure in (("disable", False), ("prefer", True), ("require", True)):
        c = await driver.connect(dsn + f"?sslmode={mode}")
        try:
            assert c.transport.secure is secure
            assert await c.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is secure
        finally:
            await c.close()
    # verify-full with the system CA store: the self-signed certificate is refused.
    with pytest.raises(OSError, match="SSL handshake"):
        await driver.connect(dsn + "?sslmode=verify-full")
    # Trusting the certificate: host name checked (the cert names "localhost" only).
    ctx = ssl.create_default_context(cafile=cafile)
    with pytest.raises(OSError, match="SSL handshake"):
        await driver.connect(dsn, ssl=ctx)  # 127.0.0.1 does not match
    c = await driver.connect(dsn.replace("127.0.0.1", "localhost"), ssl=ctx)
    try:
        assert c.transport.secure and await c.fetchval("SELECT 1") == 1
        # cancel over a fresh TLS connection works too
        with pytest.raises(asyncio.TimeoutError):
            await c.fetchval("SELECT pg_sleep(30)", timeout=0.2)
        assert await c.fetchval("SELECT 2") == 2
    finally:
        await c.close()
