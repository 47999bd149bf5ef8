"""Transaction/session pooling through pg_listen against a real PostgreSQL."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD, CAROL_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, backends, errors, eventually, pool_stats, rows


async def _connect(app, user="alice", password=ALICE_PASSWORD, **kw):
    return await asyncpg.connect(app.pg_dsn(user, password, "app"), statement_cache_size=0, **kw)


async def test_many_clients_share_pool_size_backends(gateway_app, pg, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    seen: list[int] = []
    pids: set[int] = set()

    async def client(i: int) -> None:
        conn = await _connect(app)
        try:
            for _ in range(3):
                async with conn.transaction():
                    pids.add(await conn.fetchval("SELECT pg_backend_pid()"))
                    # Observed from inside a transaction: how many backends serve this role+db.
                    seen.append(await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                        "AND usename = current_user AND backend_type = 'client backend'"))
                    await conn.execute("SELECT pg_sleep(0.005)")
                    assert await conn.fetchval("SELECT $1::int * 2", i) == 2 * i
        finally:
            await conn.close()

    await asyncio.gather(*(client(i) for i in range(30)))
    assert max(seen) <= 2
    assert len(pids) <= 2
    st = pool_stats(app)
    assert st["sv_active"] + st["sv_idle"] + st["sv_used"] + st["sv_login"] <= 2
    assert st["wait_count"] > 0  # clients really queued
    assert st["xact_count"] >= 90


async def test_transaction_holds_its_server(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    b = await _connect(app)
    try:
        tr = a.transaction()
        await tr.start()
        pid_a = await a.fetchval("SELECT pg_backend_pid()")
        await a.execute("CREATE TABLE t_hold (x int)")
        task = asyncio.ensure_future(b.fetchval("SELECT pg_backend_pid()"))
        await eventually(lambda: pool_stats(app)["cl_waiting"] == 1, what="b to queue")
        assert not task.done()
        await tr.commit()
        assert await asyncio.wait_for(task, 10) == pid_a
        # b sees a's committed work, on the same (only) backend
        assert await b.fetchval("SELECT count(*) FROM t_hold") == 0
    finally:
        await a.close()
        await b.close()


async def test_rollback_and_errors_release_cleanly(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    b = await _connect(app)
    try:
        await a.execute("CREATE TABLE t_rb (x int)")
        with pytest.raises(asyncpg.DivisionByZeroError):
            async with a.transaction():
                await a.execute("INSERT INTO t_rb VALUES (1)")
                await a.execute("SELECT 1/0")
        with pytest.raises(asyncpg.UndefinedTableError):
            await a.execute("SELECT * FROM no_such_table")
        assert await b.fetchval("SELECT count(*) FROM t_rb") == 0
        assert pool_stats(app)["sv_idle"] == 1
    finally:
        await a.close()
        await b.close()


async def test_tracked_parameters_follow_each_client(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app, server_settings={"application_name": "client-a", "TimeZone": "UTC"})
    b = await _connect(app, server_settings={"application_name": "client-b", "TimeZone": "Asia/Tokyo",
                                             "DateStyle": "SQL, DMY"})
    try:
        for _ in range(3):
            assert await a.fetchval("SELECT current_setting('application_name')") == "client-a"
            assert await b.fetchval("SELECT current_setting('application_name')") == "client-b"
            assert await a.fetchval("SHOW TimeZone") == "UTC"
            assert await b.fetchval("SHOW TimeZone") == "Asia/Tokyo"
            assert await b.fetchval("SHOW DateStyle") == "SQL, DMY"
            assert await a.fetchval("SHOW DateStyle") == "ISO, MDY"
        # A session-level SET (outside a transaction) is remembered for that client only.
        await a.execute("SET TimeZone = 'Europe/Paris'")
        assert await b.fetchval("SHOW TimeZone") == "Asia/Tokyo"
        assert await a.fetchval("SHOW TimeZone") == "Europe/Paris"
        assert a.get_server_pid() != 0 and a.get_settings().TimeZone == "Europe/Paris"
    finally:
        await a.close()
        await b.close()


async def test_startup_reports_upstream_parameters(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db}})
    c = await RawClient.connect(app.pg_port)
    try:
        msgs = await c.login("alice", ALICE_PASSWORD, "app", application_name="raw")
        assert not errors(msgs)
        ps = {x.name: x.value for x in msgs if isinstance(x, m.ParameterStatus)}
        assert ps["server_version"].startswith("15")
        assert ps["application_name"] == "raw"
        assert ps["integer_datetimes"] == "on"
        keys = [x for x in msgs if isinstance(x, m.BackendKeyData)]
        assert len(keys) == 1
        assert isinstance(msgs[-1], m.ReadyForQuery) and msgs[-1].status == "I"
        # no server was taken for the login itself
        assert pool_stats(app)["sv_active"] == 0
    finally:
        await c.close()


async def test_backend_keys_are_unique_and_not_upstream(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    conns = [await _connect(app) for _ in range(5)]
    try:
        pids = {c.get_server_pid() for c in conns}
        assert len(pids) == 5
        real = await conns[0].fetchval("SELECT pg_backend_pid()")
        assert real not in pids
    finally:
        for c in conns:
            await c.close()


async def test_pipelined_startup_password_and_query(gateway_app, pg_db):
    """Neon's pipelineConnect: StartupMessage + PasswordMessage + Query in one send."""
    app = await gateway_app(auth_type="password", databases={"app": {"dbname": pg_db}})
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"user": "alice", "database": "app"})
                     + m.password_message(ALICE_PASSWORD) + m.query("SELECT 40 + 2"))
        msgs = await c.until(m.ReadyForQuery)  # login's RFQ
        assert not errors(msgs)
        assert [x for x in msgs if isinstance(x, m.AuthenticationRequest)][-1].code == m.AUTH_OK
        msgs = await c.until(m.ReadyForQuery)  # the query's
        assert rows(msgs) == [("42",)]
    finally:
        await c.close()


async def test_extended_pipeline_stays_linked_until_sync(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await RawClient.connect(app.pg_port)
    b = await _connect(app)
    try:
        assert not errors(await a.login("alice", ALICE_PASSWORD, "app"))
        await a.send(m.parse("", "SELECT pg_backend_pid()") + m.bind("", "", [], [], [])
                     + m.execute("") + m.flush())
        msgs = await a.until(m.CommandComplete)
        pid = int(rows(msgs)[0][0])
        # No Sync yet: the server stays with a even though it is not in a transaction.
        task = asyncio.ensure_future(b.fetchval("SELECT pg_backend_pid()"))
        await eventually(lambda: pool_stats(app)["cl_waiting"] == 1, what="b to queue")
        assert pool_stats(app)["sv_active"] == 1
        await a.send(m.sync())
        msgs = await a.until(m.ReadyForQuery)
        assert msgs[-1].status == "I"
        assert await asyncio.wait_for(task, 10) == pid
    finally:
        await a.close()
        await b.close()


async def test_named_prepared_statements_never_leak(gateway_app, pg_db):
    # With statement tracking disabled (max_prepared_statements = 0) the
    # pooler still never lets one client's named statement reach another.
    app = await gateway_app(max_prepared_statements=0, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await RawClient.connect(app.pg_port)
    b = await RawClient.connect(app.pg_port)
    try:
        assert not errors(await a.login("alice", ALICE_PASSWORD, "app"))
        assert not errors(await b.login("carol", CAROL_PASSWORD, "app"))
        # Within one transaction (Parse..Sync) a named statement works.
        await a.send(m.parse("s1", "SELECT 'from-a'") + m.bind("", "s1", [], [], []) + m.execute("")
                     + m.sync())
        assert rows(await a.until(m.ReadyForQuery)) == [("from-a",)]
        # Another client on the same (only) backend never sees it...
        await b.send(m.parse("s1", "SELECT 'from-b'") + m.bind("", "s1", [], [], []) + m.execute("")
                     + m.sync())
        msgs = await b.until(m.ReadyForQuery)
        assert not errors(msgs) and rows(msgs) == [("from-b",)]
        # ...and the owner gets PostgreSQL's own error in a later transaction.
        await a.send(m.bind("", "s1", [], [], []) + m.execute("") + m.sync())
        msgs = await a.until(m.ReadyForQuery)
        assert [e.sqlstate for e in errors(msgs)] == ["26000"]
        assert not rows(msgs)
    finally:
        await a.close()
        await b.close()


async def test_asyncpg_prepare_fails_with_postgres_error(gateway_app, pg_db):
    app = await gateway_app(max_prepared_statements=0, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    try:
        async with a.transaction():
            stmt = await a.prepare("SELECT 1", name="wp_named")
            assert await stmt.fetchval() == 1
        with pytest.raises(asyncpg.InvalidSQLStatementNameError):
            await stmt.fetchval()
        assert await a.fetchval("SELECT 2") == 2
    finally:
        await a.close()


async def test_session_mode_keeps_server_and_resets(gateway_app, pg_db):
    app = await gateway_app(pool_mode="session", databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    try:
        await a.execute("SET wp.custom = 'kept'")
        await a.execute("CREATE TEMP TABLE tmp_s (x int)")
        pid = await a.fetchval("SELECT pg_backend_pid()")
        assert await a.fetchval("SELECT current_setting('wp.custom')") == "kept"
        assert pool_stats(app)["sv_active"] == 1  # still linked while idle
    finally:
        await a.close()
    b = await _connect(app)
    try:
        assert await b.fetchval("SELECT pg_backend_pid()") == pid
        assert await b.fetchval("SELECT current_setting('wp.custom', true)") in (None, "")
        assert await b.fetchval("SELECT count(*) FROM pg_tables WHERE tablename = 'tmp_s'") == 0
    finally:
        await b.close()


async def test_copy_in_and_out(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    try:
        await a.execute("CREATE TABLE t_copy (x int, y text)")
        await a.copy_records_to_table("t_copy", records=[(i, f"r{i}") for i in range(1000)])
        assert await a.fetchval("SELECT count(*) FROM t_copy") == 1000
        out = []
        await a.copy_from_query("SELECT * FROM t_copy ORDER BY x", output=lambda d: _append(out, d))
        assert b"".join(out).count(b"\n") == 1000
        assert pool_stats(app)["sv_idle"] == 1
    finally:
        await a.close()


async def _append(lst, data):
    lst.append(data)


async def test_large_result_through_small_pool(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    b = await _connect(app)
    try:
        r1, r2 = await asyncio.gather(
            a.fetch("SELECT g, repeat('x', 200) FROM generate_series(1, 50000) g"),
            b.fetch("SELECT g FROM generate_series(1, 30000) g"))
        assert len(r1) == 50000 and r1[-1][0] == 50000
        assert len(r2) == 30000
    finally:
        await a.close()
        await b.close()


async def test_min_pool_size_and_idle_timeout(gateway_app, pg, pg_db):
    app = await gateway_app(min_pool_size=2, server_idle_timeout=0.2,
                            databases={"app": {"dbname": pg_db, "pool_size": 4}})
    await eventually(lambda: pool_stats(app)["sv_idle"] == 2, what="min_pool_size warm-up")
    conns = [await _connect(app) for _ in range(4)]
    try:
        trs = [c.transaction() for c in conns]
        for c, t in zip(conns, trs):
            await t.start()
            await c.execute("SELECT 1")
        assert pool_stats(app)["sv_active"] == 4
        for t in trs:
            await t.commit()
    finally:
        for c in conns:
            await c.close()
    # Idle ones past server_idle_timeout close, min_pool_size stay.
    await eventually(lambda: pool_stats(app)["sv_idle"] == 2 and pool_stats(app)["sv_active"] == 0,
                     what="idle servers to close down to min_pool_size")
    adm = await admin(pg, pg_db)
    try:
        await eventually(lambda: _count(adm, pg_db, 2), what="backends to close")
    finally:
        await adm.close()


async def _count(adm, db, n):
    return len(await backends(adm, db)) == n


async def test_reserve_pool(gateway_app, pg_db):
    app = await gateway_app(reserve_pool_size=1, reserve_pool_timeout=0.2,
                            databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    b = await _connect(app)
    try:
        tr = a.transaction()
        await tr.start()
        await a.execute("SELECT 1")
        # b waits reserve_pool_timeout, then gets a reserve connection
        pid_b = await asyncio.wait_for(b.fetchval("SELECT pg_backend_pid()"), 10)
        assert pid_b != await a.fetchval("SELECT pg_backend_pid()")
        await tr.commit()
    finally:
        await a.close()
        await b.close()


async def test_server_lifetime(gateway_app, pg_db):
    app = await gateway_app(server_lifetime=0.1, databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await _connect(app)
    try:
        p1 = await a.fetchval("SELECT pg_backend_pid()")
        await asyncio.sleep(0.15)  # the setting under test is a duration
        await a.fetchval("SELECT 1")  # released past its lifetime: closed
        p2 = await a.fetchval("SELECT pg_backend_pid()")
        assert p1 != p2
    finally:
        await a.close()


async def test_graceful_shutdown_lets_transactions_finish(gateway_app, pg_db):
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    busy = await _connect(app)
    idle = await _connect(app)
    try:
        tr = busy.transaction()
        await tr.start()
        await busy.execute("CREATE TABLE t_shut (x int)")
        t0 = asyncio.get_running_loop().time()
        shutdown = asyncio.ensure_future(app.gateway.shutdown(10.0))
        await eventually(lambda: idle.is_closed() or _probe_closed(idle), what="idle client to be closed")
        assert not shutdown.done()
        await busy.execute("INSERT INTO t_shut VALUES (1)")
        await tr.commit()  # the running transaction finishes...
        await asyncio.wait_for(shutdown, 10)  # ...and then the gateway stops, well before the timeout
        assert asyncio.get_running_loop().time() - t0 < 5
        assert not app.gateway.is_ready()
    finally:
        busy.terminate()
        idle.terminate()


async def _probe_closed(conn) -> bool:
    try:
        await conn.fetchval("SELECT 1")
    except (asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError):
        return True
    return False
