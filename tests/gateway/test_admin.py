"""The admin console (gateway/admin.py) with real clients: psql and asyncpg
through pg_listen, compared with a real PgBouncer on the same workload."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import AsyncIterator

import asyncpg
import psycopg
import pytest

from tests.gateway.conftest import ALICE_PASSWORD, CAROL_PASSWORD
from tests.gateway.pool_helpers import eventually
from tests.pgcluster import PgCluster, free_port

PSQL = shutil.which("psql") or "/usr/bin/psql"
PGBOUNCER = "/usr/sbin/pgbouncer"
ADMIN = {"admin_users": ["alice"], "stats_users": ["carol"]}


async def psql(port: int, user: str, password: str, sql: str, db: str = "pgbouncer") -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGCONNECT_TIMEOUT="10")
    proc = await asyncio.create_subprocess_exec(
        PSQL, "-X", "-A", "-F", "|", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", db, "-c", sql,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    return proc.returncode or 0, out.decode(), err.decode()


def parse_psql(out: str) -> tuple[list[str], list[list[str]]]:
    lines = [x for x in out.splitlines() if x and not x.startswith("(")]
    header = lines[0].split("|")
    return header, [r.split("|") for r in lines[1:]]


async def console(port: int, user: str = "alice", password: str = ALICE_PASSWORD):
    """A psycopg connection to the admin console.  ClientCursor: the simple
    query protocol, which is all PgBouncer's console speaks."""
    return await psycopg.AsyncConnection.connect(host="127.0.0.1", port=port, user=user, password=password,
                                                 dbname="pgbouncer", autocommit=True,
                                                 cursor_factory=psycopg.AsyncClientCursor)


async def show(port: int, sql: str) -> tuple[list[tuple[str, int]], list[tuple]]:
    """(column name, type OID) and rows of an admin-console answer."""
    async with await console(port) as conn:
        cur = await conn.execute(sql)
        cols = [(d.name, d.type_code) for d in cur.description or []]
        return cols, await cur.fetchall() if cur.description else []


async def test_show_pools_psql_and_access(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 3}}, **ADMIN)
    # some workload first
    conn = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    assert await conn.fetchval("SELECT 1") == 1
    rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, "SHOW POOLS")
    assert rc == 0, err
    header, rows = parse_psql(out)
    assert header[:3] == ["database", "user", "cl_active"]
    app_row = dict(zip(header, next(r for r in rows if r[0] == "app")))
    assert app_row["cl_active"] == "1" and app_row["sv_idle"] == "1" and app_row["pool_mode"] == "transaction"
    # stats user: SHOW yes, commands no
    rc, out, err = await psql(app.pg_port, "carol", CAROL_PASSWORD, "SHOW STATS")
    assert rc == 0, err
    header, rows = parse_psql(out)
    stats = dict(zip(header, next(r for r in rows if r[0] == "app")))
    assert int(stats["total_xact_count"]) >= 1 and int(stats["total_query_count"]) >= 1
    rc, out, err = await psql(app.pg_port, "carol", CAROL_PASSWORD, "PAUSE")
    assert rc != 0 and "admin access needed" in err
    # not listed: refused at login
    rc, out, err = await psql(app.pg_port, "bob", "bob-secret", "SHOW POOLS", db="wirepool")
    assert rc != 0 and "not allowed to use the admin console" in err
    # alias + every SHOW answers
    for what in ("STATS", "DATABASES", "LISTS", "CLIENTS", "SERVERS", "CONFIG", "VERSION", "USERS",
                 "STATS_TOTALS", "STATS_AVERAGES", "MEM", "STATE"):
        rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, f"SHOW {what}")
        assert rc == 0 and ("(1 row)" in out or "rows)" in out), (what, err)
    rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, "SHOW HELP")
    assert rc == 0 and "SHOW HELP" in err, err
    rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, "SHOW NONSENSE")
    assert rc != 0 and "unknown SHOW command" in err
    # SHOW CLIENTS lists the app client over tcp with its id; KILL_CLIENT ends it
    rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, "SHOW CLIENTS")
    header, rows = parse_psql(out)
    client = dict(zip(header, next(r for r in rows if r[2] == "app")))
    assert client["user"] == "alice" and client["transport"] == "tcp"
    rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, f"KILL_CLIENT {client['id']}")
    assert rc == 0, err
    with pytest.raises((asyncpg.PostgresError, ConnectionError, asyncpg.InterfaceError)):
        await conn.fetchval("SELECT 1")
    await conn.close()


async def test_pause_holds_resume_releases(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}}, **ADMIN)
    adm = await console(app.pg_port)
    conns = [await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app")) for _ in range(3)]
    # a running transaction: PAUSE waits for it to finish
    tx = conns[0].transaction()
    await tx.start()
    await conns[0].execute("SELECT 1")
    pause = asyncio.ensure_future(adm.execute("PAUSE app"))
    await eventually(lambda: app.gateway.pools["app"].paused, what="pool paused")
    assert not pause.done()
    await tx.commit()
    await asyncio.wait_for(pause, 10)
    # new transactions are held
    held = [asyncio.ensure_future(c.fetchval("SELECT 42")) for c in conns[1:]]
    await eventually(lambda: len(app.gateway.pools["app"].cl_waiting) == 2, what="clients held")
    assert not any(h.done() for h in held)
    rc, out, err = await psql(app.pg_port, "alice", ALICE_PASSWORD, "SHOW POOLS")
    header, rows = parse_psql(out)
    row = dict(zip(header, next(r for r in rows if r[0] == "app")))
    assert row["cl_waiting"] == "2"
    await adm.execute("RESUME app")
    assert await asyncio.wait_for(asyncio.gather(*held), 10) == [42, 42]
    with pytest.raises(psycopg.Error, match="not paused"):
        await adm.execute("RESUME")
    for c in conns:
        await c.close()
    await adm.close()


# ------------------------------------------------------------------ PgBouncer side by side
def _start_pgbouncer(pg: PgCluster, dbname: str, tmp: Path, port: int) -> subprocess.Popen:
    users = tmp / "userlist.txt"
    users.write_text(f'"alice" "{ALICE_PASSWORD}"\n"{pg.SCRAM_USER}" "{pg.SCRAM_PASSWORD}"\n')
    ini = tmp / "pgbouncer.ini"
    ini.write_text(f"""[databases]
app = host={pg.host} port={pg.port} dbname={dbname} user={pg.SCRAM_USER}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {users}
admin_users = alice
pool_mode = transaction
default_pool_size = 3
ignore_startup_parameters = extra_float_digits
logfile = {tmp / 'pgbouncer.log'}
pidfile = {tmp / 'pgbouncer.pid'}
""")
    kw: dict = {}
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        shutil.chown(tmp, user="postgres")
        for f in (ini, users):
            shutil.chown(f, user="postgres")
            os.chmod(f, 0o600)
        kw = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
    return subprocess.Popen([PGBOUNCER, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


@contextlib.asynccontextmanager
async def side_by_side(gateway_app, pg: PgCluster, pg_db: str) -> AsyncIterator[tuple[int, int]]:
    """A real PgBouncer and the gateway on the same upstream, after the same
    workload: yields (pgbouncer port, gateway pg_listen port)."""
    assert os.access(PGBOUNCER, os.X_OK), f"{PGBOUNCER} missing: apt-get install pgbouncer"
    tmp = Path(tempfile.mkdtemp(prefix="wirepool-test-pgbouncer-"))
    port = free_port()
    proc = _start_pgbouncer(pg, pg_db, tmp, port)
    try:
        from bench.env import wait_port
        wait_port("127.0.0.1", port, proc=proc)
        app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 3}}, **ADMIN)
        for p in (port, app.pg_port):  # the same workload on both
            c = await asyncpg.connect(host="127.0.0.1", port=p, user="alice", password=ALICE_PASSWORD,
                                      database="app", statement_cache_size=0)
            for _ in range(3):
                async with c.transaction():
                    await c.execute("SELECT 1")
            await c.close()
        yield port, app.pg_port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def _scrape(port: int) -> dict[str, int]:
    """prometheus-pgbouncer-exporter's collector (the code its HTTP endpoint runs)
    against the console at ``port``: metric family -> number of samples."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_pgbouncer_exporter.collector import PgbouncersMetricsCollector
    from prometheus_pgbouncer_exporter.config import PgbouncerConfig
    dsn = f"postgresql://alice:{ALICE_PASSWORD}@127.0.0.1:{port}/pgbouncer"
    registry = CollectorRegistry()
    registry.register(PgbouncersMetricsCollector([PgbouncerConfig({"dsn": dsn})]))
    text = generate_latest(registry).decode()
    return {f.name: len(f.samples) for f in text_string_to_metric_families(text)}


async def test_prometheus_pgbouncer_exporter(gateway_app, pg, pg_db):
    async with side_by_side(gateway_app, pg, pg_db) as (bouncer_port, our_port):
        theirs = await asyncio.to_thread(_scrape, bouncer_port)
        ours = await asyncio.to_thread(_scrape, our_port)
    assert theirs.get("pgbouncer_up") == 1 and len(theirs) > 10, theirs
    assert set(ours) == set(theirs), (sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs)))
    assert all(n > 0 for n in ours.values()), ours
    assert ours == theirs  # same families, same number of series (41 against PgBouncer 1.18 here)


async def test_columns_match_pgbouncer(gateway_app, pg, pg_db):
    async with side_by_side(gateway_app, pg, pg_db) as (port, our_port):
        app_port = our_port
        problems: list[str] = []
        for what in ("POOLS", "STATS", "DATABASES", "LISTS", "CLIENTS", "SERVERS", "CONFIG", "USERS",
                     "STATS_TOTALS", "STATS_AVERAGES", "VERSION", "MEM", "STATE"):
            ours, our_rows = await show(app_port, f"SHOW {what}")
            assert our_rows, what
            try:
                theirs, their_rows = await show(port, f"SHOW {what}")
            except psycopg.errors.ProtocolViolation:  # newer than the installed PgBouncer (STATE: 1.19+)
                continue
            ours_d = dict(ours)
            missing = [(n, oid) for n, oid in theirs if n not in ours_d]
            if what == "POOLS":
                missing = [x for x in missing if x[0] != "cl_cancel_req"] if "cl_cancel_req" in ours_d else missing
            if missing:
                problems.append(f"SHOW {what}: PgBouncer columns missing from ours: {missing}")
            wrong = [(n, oid, ours_d[n]) for n, oid in theirs if n in ours_d and ours_d[n] != oid]
            if wrong:
                problems.append(f"SHOW {what}: type OIDs differ (name, theirs, ours): {wrong}")
        assert not problems, "\n".join(problems)




async def test_console_over_websocket(gateway_app, pg_db):
    """The console through WebSocket /v2 with our driver (simple protocol: execute without args)."""
    import driver
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, **ADMIN)
    conn = await driver.connect(app.ws_dsn("alice", ALICE_PASSWORD, "wirepool"))
    try:
        assert await conn.execute("SHOW POOLS") == "SHOW"
        assert await conn.execute("PAUSE app") == "PAUSE"
        assert app.gateway.pools["app"].paused
        assert await conn.execute("RESUME app") == "RESUME"
        assert not app.gateway.pools["app"].paused
        cols, rows = await show(app.pg_port, "SHOW CLIENTS")
        names = [c for c, _ in cols]
        mine = [dict(zip(names, r)) for r in rows if r[names.index("transport")] == "websocket"]
        assert len(mine) == 1 and mine[0]["database"] == "wirepool" and mine[0]["user"] == "alice"
    finally:
        await conn.close()


async def test_commands_set_disable_reconnect_kill(gateway_app, pg, pg_db):
    from tests.gateway.pool_helpers import admin
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, default_pool_size=2, **ADMIN)
    pool = app.gateway.pools["app"]
    adm = await console(app.pg_port)
    # SET a live setting: SHOW CONFIG follows, the pool size too
    await adm.execute("SET default_pool_size = 4")
    assert pool.size == 4
    cur = await adm.execute("SHOW CONFIG")
    assert ("default_pool_size", "4", "20", "yes") in await cur.fetchall()
    for bad, code in (("SET listen = '1.2.3.4:5'", "55P02"), ("SET default_pool_size = lots", "22023"),
                      ("SET default_pool_size = -1", "22023"), ("FROB", "42601"), ("PAUSE nosuchdb", "3D000")):
        with pytest.raises(psycopg.Error) as ei:
            await adm.execute(bad)
        assert ei.value.sqlstate == code, bad
    # extended protocol: an error, and the connection stays usable
    async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=app.pg_port, user="alice",
                                                     password=ALICE_PASSWORD, dbname="pgbouncer",
                                                     autocommit=True) as ext:
        with pytest.raises(psycopg.Error, match="simple query protocol"):
            await ext.execute("SHOW %s", ["POOLS"])  # parameters: the extended protocol
        ccur = psycopg.AsyncClientCursor(ext)
        await ccur.execute("SHOW VERSION")  # still usable after the error
        assert "PgBouncer" in (await ccur.fetchone())[0]
    # DISABLE refuses new logins, ENABLE accepts them again
    await adm.execute("DISABLE app")
    with pytest.raises(asyncpg.PostgresError) as e2:
        await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    assert e2.value.sqlstate == "3D000"
    await adm.execute("ENABLE app")
    c = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    before = await c.fetchval("SELECT pg_backend_pid()")
    # RECONNECT: the idle server is closed, the next transaction gets a new backend
    await adm.execute("RECONNECT app")
    assert await c.fetchval("SELECT pg_backend_pid()") != before
    # KILL ends the clients; new transactions then wait for RESUME
    await adm.execute("KILL app")
    await eventually(lambda: c.is_closed() or not pool.cl_active, what="client ended by KILL")
    with pytest.raises(Exception):  # asyncpg reports the FATAL it got while idle in its own ways
        await asyncio.wait_for(c.fetchval("SELECT 1"), 10)
    superuser = await admin(pg)
    try:
        await eventually(lambda: _no_backends(superuser, pg_db), what="servers closed by KILL")
    finally:
        await superuser.close()
    c2 = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    held = asyncio.ensure_future(c2.fetchval("SELECT 7"))
    await eventually(lambda: len(pool.cl_waiting) == 1, what="held by KILL's pause")
    await adm.execute("RESUME app")
    assert await asyncio.wait_for(held, 10) == 7
    await c2.close()
    await adm.close()


async def _no_backends(conn: asyncpg.Connection, dbname: str) -> bool:
    from tests.gateway.pool_helpers import backends
    return not await backends(conn, dbname)
