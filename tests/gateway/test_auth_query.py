"""auth_query / auth_user (gateway/auth_query.py, docs/auth-query.md) against real
PostgreSQL: users created by SQL log in through the gateway, a database without
``user`` logs in upstream as each client with no plaintext password (SCRAM
pass-through), password changes apply, every failure looks the same."""

from __future__ import annotations

import secrets
import socket
from typing import Any

import asyncpg
import pytest

from tests.gateway.test_neon_sql import http_client  # noqa: F401 (fixture)

from tests.pgcluster import PgCluster


def _role() -> tuple[str, str]:
    return f"aq_{secrets.token_hex(4)}", f"pw-{secrets.token_hex(6)}"


def _dbs(pg: PgCluster, **extra: Any) -> dict[str, dict[str, Any]]:
    """``pt``: pass-through (no ``user``; auth_user = the superuser, its password in the section)."""
    return {"pt": {"auth_user": PgCluster.SUPERUSER, "password": PgCluster.SUPERUSER_PASSWORD,
                   "dbname": PgCluster.DATABASE, **extra}}


async def _app(gateway_app: Any, pg: PgCluster, *, databases: dict[str, Any] | None = None,
               users: dict[str, Any] | None = None, **gateway: Any) -> Any:
    from gateway.config import parse_config
    raw: dict[str, Any] = {
        "gateway": {"listen": "127.0.0.1:0", "pg_listen": "127.0.0.1:0", "shutdown_timeout": 5.0, **gateway},
        "databases": {"app": {"host": pg.host, "port": pg.port, "user": PgCluster.SCRAM_USER,
                              "password": PgCluster.SCRAM_PASSWORD, "dbname": PgCluster.DATABASE}},
        "users": users or {"alice": {"password": "alice-secret"}}}
    for name, over in (databases or _dbs(pg)).items():
        raw["databases"][name] = {"host": pg.host, "port": pg.port, **over}
    return await gateway_app(config=parse_config(raw))


async def _connect(app: Any, user: str, password: str, database: str = "pt") -> asyncpg.Connection:
    return await asyncpg.connect(app.pg_dsn(user, password, database), statement_cache_size=0)


async def _fails(app: Any, user: str, password: str, database: str = "pt") -> asyncpg.PostgresError:
    with pytest.raises(asyncpg.PostgresError) as ei:
        await _connect(app, user, password, database)
    return ei.value


@pytest.fixture
def role(pg: PgCluster) -> Any:
    made: list[str] = []

    def make(password_encryption: str = "scram-sha-256") -> tuple[str, str]:
        name, pw = _role()
        pg.psql(f"SET password_encryption = '{password_encryption}'; CREATE ROLE {name} LOGIN PASSWORD '{pw}';"
                f"GRANT ALL ON DATABASE {PgCluster.DATABASE} TO {name};", db="postgres")
        made.append(name)
        return name, pw

    yield make
    for name in made:
        pg.psql(f"DROP ROLE IF EXISTS {name}", db="postgres", check=False)


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_sql_created_user_logs_in_as_itself_without_plaintext(gateway_app: Any, pg: PgCluster,
                                                                    role: Any, mode: str) -> None:
    app = await _app(gateway_app, pg, databases=_dbs(pg, pool_mode=mode))
    name, pw = role()
    conn = await _connect(app, name, pw)
    try:
        # the server connection is the client's own role (pass-through), not auth_user
        assert await conn.fetchval("SELECT current_user") == name
        assert await conn.fetchval("SELECT session_user") == name
    finally:
        await conn.close()
    creds = app.gateway.auth_query._creds[("pt", name)]
    assert creds.password is None and creds.keys is not None  # only the ClientKey: no plaintext
    # a [users] user on a forced-user database is unaffected by auth_query
    conn = await _connect(app, "alice", "alice-secret", "app")
    assert await conn.fetchval("SELECT current_user") == PgCluster.SCRAM_USER
    await conn.close()


async def test_alter_password_through_the_gateway_applies_at_once(gateway_app: Any, pg: PgCluster,
                                                                  role: Any) -> None:
    app = await _app(gateway_app, pg, auth_query_cache_ttl=60.0)
    name, old = role()
    conn = await _connect(app, name, old)
    await conn.close()
    new = old + "-new"
    conn = await _connect(app, name, old)
    await conn.execute(f"ALTER USER {name} PASSWORD '{new}'")  # through the gateway: cache dropped
    await conn.close()
    err = await _fails(app, name, old)
    assert err.sqlstate == "28P01"
    conn = await _connect(app, name, new)
    assert await conn.fetchval("SELECT current_user") == name
    await conn.close()


async def test_alter_password_in_a_transaction_applies_at_its_commit(gateway_app: Any, pg: PgCluster,
                                                                     role: Any) -> None:
    """ALTER USER inside a transaction: a login before the COMMIT still sees the old
    password (as PostgreSQL does) and its lookup is cached; the COMMIT must make that
    entry stale too, or the old password keeps working for auth_query_cache_ttl."""
    app = await _app(gateway_app, pg, auth_query_cache_ttl=60.0, auth_failure_delay=0)
    name, old = role()
    new = old + "-new"
    conn = await _connect(app, name, old)
    try:
        tx = conn.transaction()
        await tx.start()
        await conn.execute(f"ALTER USER {name} PASSWORD '{new}'")
        (await _connect(app, name, old)).terminate()  # not committed yet: the old one is right
        await tx.commit()
    finally:
        await conn.close()
    assert (await _fails(app, name, old)).sqlstate == "28P01"
    conn = await _connect(app, name, new)
    assert await conn.fetchval("SELECT current_user") == name
    await conn.close()


async def test_alter_password_outside_the_gateway(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    """Changed directly in PostgreSQL: the cached lookup answers within the TTL, but the
    first failed login drops it, so the new password works on the next attempt."""
    app = await _app(gateway_app, pg, auth_query_cache_ttl=60.0, auth_failure_delay=0)
    name, old = role()
    (await _connect(app, name, old)).terminate()
    new = old + "-direct"
    pg.psql(f"ALTER USER {name} PASSWORD '{new}'", db="postgres")
    assert (await _fails(app, name, new)).sqlstate == "28P01"  # the stale cached verifier
    conn = await _connect(app, name, new)                       # looked up again
    assert await conn.fetchval("SELECT current_user") == name
    await conn.close()
    assert (await _fails(app, name, old)).sqlstate == "28P01"


async def test_failures_look_the_same_and_are_throttled(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    dbs = _dbs(pg)
    dbs["badq"] = {**dbs["pt"], "auth_query": "SELECT usename, passwd FROM no_such_table WHERE usename=$1"}
    app = await _app(gateway_app, pg, databases=dbs, auth_failure_free=3, auth_failure_delay=0.05)
    name, pw = role()
    wrong = await _fails(app, name, "wrong")
    unknown = await _fails(app, "aq_nobody", "whatever")
    query_error = await _fails(app, name, pw, "badq")
    nologin = await _fails(app, PgCluster.TRUST_USER, "x")  # exists, NULL password
    for err, user in ((wrong, name), (unknown, "aq_nobody"), (query_error, name), (nologin, PgCluster.TRUST_USER)):
        assert (err.sqlstate, str(err)) == ("28P01", f'password authentication failed for user "{user}"')
    th = app.gateway.authenticator.throttle
    assert th.admit("127.0.0.1", None) != 0  # four failures from this address: the next one waits
    conn = await _connect(app, name, pw)  # a good login still works
    await conn.close()


async def test_lookup_is_cached_and_shared(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    app = await _app(gateway_app, pg, auth_query_cache_ttl=60.0)
    aq = app.gateway.auth_query
    name, pw = role()
    import asyncio
    conns = await asyncio.gather(*(_connect(app, name, pw) for _ in range(4)))
    for c in conns:
        await c.close()
    assert aq.lookups == 1


async def test_upstream_outage_during_lookup_is_08006(gateway_app: Any, pg: PgCluster) -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there
    app = await _app(gateway_app, pg, databases={"down": {**_dbs(pg)["pt"], "port": dead}})
    err = await _fails(app, "someone", "pw", "down")
    assert err.sqlstate == "08006"
    assert "authentication lookup failed" in str(err) and str(dead) in str(err)
    assert app.gateway.authenticator.throttle.admit("127.0.0.1", "someone") == 0  # not counted


async def test_md5_user_passes_through_with_its_hash(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    """auth_type md5: an md5-hashed role logs in (upstream md5 answered from the hash); a
    SCRAM role gets a SCRAM exchange, as PostgreSQL's md5 method does."""
    app = await _app(gateway_app, pg, auth_type="md5")
    conn = await _connect(app, PgCluster.MD5_USER, PgCluster.MD5_PASSWORD)
    assert await conn.fetchval("SELECT current_user") == PgCluster.MD5_USER
    await conn.close()
    creds = app.gateway.auth_query._creds[("pt", PgCluster.MD5_USER)]
    assert creds.password is None and creds.md5 is not None
    name, pw = role()
    conn = await _connect(app, name, pw)
    assert await conn.fetchval("SELECT current_user") == name
    await conn.close()


async def test_forced_user_database_checks_the_client_with_auth_query(gateway_app: Any, pg: PgCluster,
                                                                      role: Any) -> None:
    app = await _app(gateway_app, pg, auth_user=PgCluster.SUPERUSER, databases={
        "forced": {"user": PgCluster.SCRAM_USER, "password": PgCluster.SCRAM_PASSWORD,
                   "dbname": PgCluster.DATABASE}},
        users={"alice": {"password": "alice-secret"}, "wp_admin": {"password": PgCluster.SUPERUSER_PASSWORD}})
    name, pw = role()
    conn = await _connect(app, name, pw, "forced")
    assert await conn.fetchval("SELECT current_user") == PgCluster.SCRAM_USER
    await conn.close()
    assert (await _fails(app, name, "wrong", "forced")).sqlstate == "28P01"


async def test_http_token_on_a_database_without_user_is_a_clear_error(gateway_app: Any, pg: PgCluster,
                                                                      http_client: Any) -> None:
    """An API token login (/sql) leaves no secret to pass through: an error at once
    (no upstream login attempted as user "", no hang until query_wait_timeout)."""
    from tests.gateway.test_neon_sql import cs_for
    token = "wp_tok_" + secrets.token_hex(8)
    app = await _app(gateway_app, pg, query_wait_timeout=30.0,
                     users={"alice": {"password": "alice-secret", "tokens": [token]}})
    status, _, body = await http_client(app.http_port).sql(
        {"query": "select 1", "params": []}, cs=cs_for(password=None, db="pt"),
        headers={"authorization": f"Bearer {token}"})
    assert 400 <= status < 500 and "logs in as each client's own user" in body["message"], (status, body)
    pool = app.gateway.pools["pt"]
    assert pool.last_login_error is None and pool.total_servers() == 0
    assert not app.gateway.auth_query.user_pools


async def test_http_sql_and_pg_log_in_users_found_by_auth_query(gateway_app: Any, pg: PgCluster, role: Any,
                                                                http_client: Any) -> None:
    """/sql (Neon-Connection-String) and /pg (Basic, the driver's http:// transport) check a
    user not in [users] with auth_query, as pg_listen does: on a database without ``user``
    the queries run as that role (its password passed through), on one with ``user`` as
    that user; wrong passwords are 28P01; a repeated request runs neither the lookup nor
    PBKDF2 again; a password changed in PostgreSQL is checked afresh once looked up."""
    import driver
    from tests.gateway.test_neon_sql import cs_for
    dbs = _dbs(pg)
    dbs["forced"] = {"user": PgCluster.SCRAM_USER, "password": PgCluster.SCRAM_PASSWORD,
                     "dbname": PgCluster.DATABASE, "auth_user": PgCluster.SUPERUSER}
    app = await _app(gateway_app, pg, databases=dbs, auth_query_cache_ttl=60.0, auth_failure_delay=0,
                     users={"alice": {"password": "alice-secret"},
                            PgCluster.SUPERUSER: {"password": PgCluster.SUPERUSER_PASSWORD}})
    name, pw = role()
    http = http_client(app.http_port)
    q = {"query": "select current_user", "params": []}
    auth, aq = app.gateway.authenticator, app.gateway.auth_query
    for db, expect in (("pt", name), ("forced", PgCluster.SCRAM_USER)):
        status, _, body = await http.sql(q, cs=cs_for(name, pw, db=db))
        assert status == 200 and body["rows"] == [[expect]], (db, status, body)
        lookups, derivations = aq.lookups, auth.derivations
        status, _, body = await http.sql(q, cs=cs_for(name, pw, db=db))
        assert status == 200 and (aq.lookups, auth.derivations) == (lookups, derivations)
        status, _, body = await http.sql(q, cs=cs_for(name, pw + "x", db=db))
        assert status == 400 and body["code"] == "28P01", (db, status, body)

    conn = await driver.connect(f"http://{name}:{pw}@127.0.0.1:{app.http_port}/pt")
    try:
        assert await conn.fetchval("select current_user") == name
    finally:
        await conn.close()
    with pytest.raises(driver.PostgresError) as ei:
        await driver.connect(f"http://{name}:wrong@127.0.0.1:{app.http_port}/pt")
    assert ei.value.sqlstate == "28P01"

    new = pw + "-new"
    pg.psql(f"ALTER USER {name} PASSWORD '{new}'", db="postgres")  # outside the gateway
    aq._cache.clear()  # as once auth_query_cache_ttl has passed
    status, _, body = await http.sql(q, cs=cs_for(name, pw, db="pt"))
    assert status == 400 and body["code"] == "28P01", (status, body)  # the remembered success no longer applies
    status, _, body = await http.sql(q, cs=cs_for(name, new, db="pt"))
    assert status == 200 and body["rows"] == [[name]], (status, body)


async def test_http_lookup_upstream_outage_is_503_08006(gateway_app: Any, pg: PgCluster,
                                                        http_client: Any) -> None:
    from driver.protocol.http_envelope import basic_authorization
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there
    app = await _app(gateway_app, pg, databases={"down": {**_dbs(pg)["pt"], "port": dead}})
    status, _, body = await http_client(app.http_port).request(
        "POST", "/pg", b"", {"authorization": basic_authorization("someone", "pw"), "wirepool-database": "down"})
    assert status == 503 and b"08006" in body and b"authentication lookup failed" in body, (status, body)
    assert app.gateway.authenticator.throttle.admit("127.0.0.1", "someone") == 0  # not counted


async def test_admin_console_lists_per_user_pools(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    """SHOW POOLS has a row per (database, user) as PgBouncer's: the per-user pools of a
    database without ``user`` (not its own pool, which never serves); SHOW DATABASES counts
    their servers on the database's row, SHOW SERVERS lists them, PAUSE/RESUME of the
    database reach them (psql, and psycopg's simple protocol, against the console)."""
    from tests.gateway.pool_helpers import eventually
    from tests.gateway.test_admin import console, parse_psql, psql
    app = await _app(gateway_app, pg, admin_users=["alice"])
    (r1, p1), (r2, p2) = role(), role()
    conns = [await _connect(app, r1, p1), await _connect(app, r2, p2)]
    admin = await console(app.pg_port, "alice", "alice-secret")
    try:
        for c, name in zip(conns, (r1, r2)):
            assert await c.fetchval("SELECT current_user") == name

        async def show(what: str) -> list[dict[str, Any]]:
            cur = await admin.execute(what)
            names = [d.name for d in cur.description or []]
            return [dict(zip(names, r)) for r in await cur.fetchall()]

        rc, out, err = await psql(app.pg_port, "alice", "alice-secret", "SHOW POOLS")
        assert rc == 0, err
        header, rows = parse_psql(out)
        pools = {(r["database"], r["user"]): r for r in (dict(zip(header, row)) for row in rows)}
        assert ("pt", "") not in pools and ("app", PgCluster.SCRAM_USER) in pools, sorted(pools)
        for name in (r1, r2):
            row = pools[("pt", name)]
            assert (row["cl_active"], row["sv_idle"], row["sv_active"], row["paused"]) == ("1", "1", "0", "0"), row
        db = next(r for r in await show("SHOW DATABASES") if r["name"] == "pt")
        assert db["force_user"] == "" and db["current_connections"] == 2, db
        servers = {(r["database"], r["user"]) for r in await show("SHOW SERVERS")}
        assert {("pt", r1), ("pt", r2)} <= servers, servers
        users = {r["name"]: r for r in await show("SHOW USERS")}
        assert users[r1]["current_client_connections"] == 1 and "alice" in users, users
        lists = {r["list"]: r["items"] for r in await show("SHOW LISTS")}
        assert lists["pools"] == 4, lists  # app, (pt, r1), (pt, r2), the console

        # SHOW STATS: the database's row counts its per-user pools' transactions
        stats = next(r for r in await show("SHOW STATS") if r["database"] == "pt")
        assert stats["total_xact_count"] >= 2, stats

        await admin.execute("PAUSE pt")
        assert [r["paused"] for r in await show("SHOW POOLS") if r["database"] == "pt"] == [1, 1]
        await admin.execute("RESUME pt")
        assert await conns[0].fetchval("SELECT 1") == 1  # not held: the per-user pool resumed too
        # a per-user pool with neither clients nor servers goes; its counts stay in the database's
        await conns[1].close()
        await admin.execute("RECONNECT pt")  # its idle server closes
        aq = app.gateway.auth_query
        await eventually(lambda: ("pt", r2) not in aq.user_pools, timeout=30)
        stats = next(r for r in await show("SHOW STATS") if r["database"] == "pt")
        assert stats["total_xact_count"] >= 3, stats
        assert ("pt", r2) not in {(r["database"], r["user"]) for r in await show("SHOW POOLS")}
    finally:
        await admin.close()
        for c in conns:
            await c.close()


async def test_http_checks_an_md5_hash_found_by_auth_query(gateway_app: Any, pg: PgCluster, role: Any,
                                                           http_client: Any) -> None:
    """A role whose password PostgreSQL stores as an md5 hash: an HTTP password login is
    checked against that hash (after the same PBKDF2 as everyone), remembered once right,
    and a wrong password is 28P01."""
    from tests.gateway.test_neon_sql import cs_for
    dbs = {"forced": {"user": PgCluster.SCRAM_USER, "password": PgCluster.SCRAM_PASSWORD,
                      "dbname": PgCluster.DATABASE, "auth_user": PgCluster.SUPERUSER}}
    app = await _app(gateway_app, pg, databases=dbs, auth_query_cache_ttl=60.0, auth_failure_delay=0,
                     users={"alice": {"password": "alice-secret"},
                            PgCluster.SUPERUSER: {"password": PgCluster.SUPERUSER_PASSWORD}})
    name, pw = role("md5")
    http = http_client(app.http_port)
    q = {"query": "select current_user", "params": []}
    auth = app.gateway.authenticator
    status, _, body = await http.sql(q, cs=cs_for(name, pw, db="forced"))
    assert status == 200 and body["rows"] == [[PgCluster.SCRAM_USER]], (status, body)
    derivations = auth.derivations
    status, _, body = await http.sql(q, cs=cs_for(name, pw, db="forced"))
    assert status == 200 and auth.derivations == derivations  # remembered
    status, _, body = await http.sql(q, cs=cs_for(name, pw + "x", db="forced"))
    assert status == 400 and body["code"] == "28P01", (status, body)
    assert auth.derivations == derivations + 1  # a wrong password costs the same PBKDF2


async def test_http_listen_on_a_database_without_user(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    """GET /listen on a database without ``user`` listens as the client's own role (its
    per-user pool's hub; the database's own pool logged in upstream as user "" and never
    listened; SHOW LISTENERS lists it as SHOW POOLS does), the stream keeps that pool from
    being dropped as empty, and an API token
    (no secret to log in upstream with) is a 403 at once."""
    import asyncio
    from tests.gateway.pool_helpers import admin
    from tests.gateway.test_listen_sse import Curl
    token = "wp_tok_" + secrets.token_hex(8)
    app = await _app(gateway_app, pg, auth_failure_delay=0, server_connect_timeout=5.0, admin_users=["alice"],
                     users={"alice": {"password": "alice-secret", "tokens": [token]}})
    name, pw = role()
    aq = app.gateway.auth_query
    adm = await admin(pg)
    c = await Curl.start(f"http://127.0.0.1:{app.http_port}/listen?channel=aq_sse",
                         f"Neon-Connection-String: postgresql://{name}:{pw}@h/pt")
    try:
        await c.until_comment("listening")
        aq.tick(app.gateway.loop.time())  # the janitor: the pool holding the stream's hub stays
        assert ("pt", name) in aq.user_pools
        await adm.execute("notify aq_sse, 'hi'")
        ev = await c.next()
        assert ev is not None and ev["event"] == "notification" and ev["data"]["payload"] == "hi", ev
        listener = await adm.fetchval("SELECT usename FROM pg_stat_activity WHERE query LIKE 'LISTEN%aq_sse%'")
        assert listener == name, listener
        from tests.gateway.test_admin import console
        async with await console(app.pg_port, "alice", "alice-secret") as cons:  # SHOW LISTENERS lists it
            cur = await cons.execute("SHOW LISTENERS")
            assert [r[:3] for r in await cur.fetchall()] == [("pt", name, "aq_sse")]
    finally:
        await c.stop()
        await adm.close()
    t = await Curl.start(f"http://127.0.0.1:{app.http_port}/listen?channel=aq_sse&database=pt",
                         f"Authorization: Bearer {token}")
    try:
        assert t.proc.stdout is not None
        body = await asyncio.wait_for(t.proc.stdout.read(), 10)
    finally:
        await t.stop()
    assert b"logs in as each client's own user" in body and b"28000" in body, body


async def test_reload_removing_a_database_without_user_ends_its_clients(gateway_app: Any, pg: PgCluster,
                                                                       role: Any) -> None:
    """docs/reload.md: a database removed by a reload ends its clients and closes its
    pools -- the per-user pools of a database without ``user`` too (their clients went
    on querying the removed database, their pools stayed, unlisted)."""
    from gateway.config import parse_config
    from gateway.reload import apply_config
    from tests.gateway.pool_helpers import eventually
    app = await _app(gateway_app, pg, auth_failure_delay=0)
    name, pw = role()
    conn = await _connect(app, name, pw)
    assert await conn.fetchval("SELECT current_user") == name
    gw = app.gateway
    raw = {"gateway": {"listen": "127.0.0.1:0", "pg_listen": "127.0.0.1:0", "shutdown_timeout": 5.0,
                       "auth_failure_delay": 0},
           "databases": {"app": {"host": pg.host, "port": pg.port, "user": PgCluster.SCRAM_USER,
                                 "password": PgCluster.SCRAM_PASSWORD, "dbname": PgCluster.DATABASE}},
           "users": {"alice": {"password": "alice-secret"}}}
    try:
        assert "database -pt" in apply_config(gw, parse_config(raw))
        await eventually(lambda: conn.is_closed(), what="the removed database's client is ended", timeout=20)
        await eventually(lambda: not gw.auth_query.user_pools, what="its per-user pool is gone", timeout=20)
    finally:
        await conn.close()
    await _fails(app, name, pw)  # (28P01: no auth_query for it any more)


async def test_md5_auth_type_does_not_tell_which_users_exist(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    """auth_type = "md5" with auth_query: a role stored as a SCRAM verifier gets a SCRAM
    exchange (as PostgreSQL's md5 method does); a user that does not exist, or has no
    password, must get the same first request -- PostgreSQL picks SCRAM for them under
    its default password_encryption -- not an md5 challenge that names them unknown."""
    from driver.protocol import messages as m
    from tests.gateway.pool_helpers import RawClient, errors
    app = await _app(gateway_app, pg, auth_type="md5", auth_failure_delay=0)
    name, pw = role()
    seen = {}
    for user in (name, "aq_nobody", PgCluster.TRUST_USER):
        c = await RawClient.connect(app.pg_port)
        try:
            msgs = await c.login(user, "wrong-password", "pt")
        finally:
            await c.close()
        seen[user] = next(x.code for x in msgs if isinstance(x, m.AuthenticationRequest))
        assert [(e.sqlstate, e.message) for e in errors(msgs)] == [
            ("28P01", f'password authentication failed for user "{user}"')], msgs
    assert seen == {name: m.AUTH_SASL, "aq_nobody": m.AUTH_SASL, PgCluster.TRUST_USER: m.AUTH_SASL}, seen
    (await _connect(app, name, pw)).terminate()  # the role itself still logs in


async def test_expired_password_is_refused_as_postgres_does(gateway_app: Any, pg: PgCluster, role: Any,
                                                            http_client: Any) -> None:
    """A role whose password is past VALID UNTIL cannot log in to PostgreSQL (28P01); on a
    database with a fixed ``user`` only the gateway checks it, so the default auth_query
    must not return that password (pg_shadow's valuntil was not looked at)."""
    from tests.gateway.test_neon_sql import cs_for
    dbs = {"forced": {"user": PgCluster.SCRAM_USER, "password": PgCluster.SCRAM_PASSWORD,
                      "dbname": PgCluster.DATABASE, "auth_user": PgCluster.SUPERUSER}}
    app = await _app(gateway_app, pg, databases=dbs, auth_failure_delay=0,
                     users={"alice": {"password": "alice-secret"},
                            PgCluster.SUPERUSER: {"password": PgCluster.SUPERUSER_PASSWORD}})
    name, pw = role()
    (await _connect(app, name, pw, "forced")).terminate()
    pg.psql(f"ALTER ROLE {name} VALID UNTIL '2001-01-01'", db="postgres")
    app.gateway.auth_query._cache.clear()  # as once auth_query_cache_ttl has passed
    assert (await _fails(app, name, pw, "forced")).sqlstate == "28P01"
    status, _, body = await http_client(app.http_port).sql({"query": "select 1", "params": []},
                                                          cs=cs_for(name, pw, db="forced"))
    assert status == 400 and body["code"] == "28P01", (status, body)
    pg.psql(f"ALTER ROLE {name} VALID UNTIL 'infinity'", db="postgres")
    app.gateway.auth_query._cache.clear()
    (await _connect(app, name, pw, "forced")).terminate()


async def test_min_pool_size_of_a_database_without_user(gateway_app: Any, pg: PgCluster, role: Any) -> None:
    """min_pool_size on a database without ``user`` holds servers only for a per-user pool
    with a client connected (PgBouncer's rule for pools without a forced user): the
    database's own pool does not even start a login slot, and a per-user pool
    whose clients left lets its idle servers go and is dropped -- not one pool and
    min_pool_size upstream connections kept forever per user ever seen."""
    from tests.gateway.pool_helpers import eventually
    app = await _app(gateway_app, pg, databases=_dbs(pg, min_pool_size=2))
    gw = app.gateway
    aq, own = gw.auth_query, gw.pools["pt"]
    own.tick(gw.loop.time())
    assert own.total_servers() == 0 and own.last_login_error is None
    name, pw = role()
    conn = await _connect(app, name, pw)
    try:
        pool = aq.user_pools[("pt", name)]
        pool.tick(gw.loop.time())  # a client is connected: min_pool_size applies
        assert pool.total_servers() == 2
        await eventually(lambda: not pool.sv_login, what="its second server logged in")
    finally:
        await conn.close()
    await eventually(lambda: not pool.cl_active, what="the client left its pool")
    aq.tick(gw.loop.time() + gw.settings.server_idle_timeout + 1)  # its idle servers are past server_idle_timeout
    assert ("pt", name) not in aq.user_pools and pool.total_servers() == 0


async def test_healthz_with_only_databases_without_user(gateway_app: Any, pg: PgCluster, http_client: Any) -> None:
    """/healthz of a gateway whose databases have no ``user`` (docs/auth-query.md's
    example): ready when the upstream answers its lookup connection (as auth_user) --
    the database's own pool, which would log in as user "", cannot say -- and 503
    when the upstream is down."""
    from gateway.config import parse_config
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = s.getsockname()[1]
    s.close()  # nothing listens there
    for port, expect in ((pg.port, 200), (dead, 503)):
        raw = {"gateway": {"listen": "127.0.0.1:0", "pg_listen": "", "shutdown_timeout": 5.0,
                           "server_connect_timeout": 3.0},
               "databases": {"pt": {"host": pg.host, "port": port, **_dbs(pg)["pt"]}},
               "users": {"alice": {"password": "alice-secret"}}}
        app = await gateway_app(config=parse_config(raw))
        status, _, body = await http_client(app.http_port).request("GET", "/healthz", b"", {})
        assert status == expect, (port, status, body)
        assert app.gateway.pools["pt"].total_servers() == 0


async def test_lookup_cache_keys_stay_small_for_huge_user_names(gateway_app: Any, pg: PgCluster) -> None:
    """The lookup cache counts entries: a 16 KiB user name (HTTP allows it) is
    kept as a digest; the answer (no such role) is cached all the same."""
    app = await _app(gateway_app, pg, auth_query_cache_ttl=60.0)
    aq = app.gateway.auth_query
    names = ["n" * 16000 + str(i) for i in range(3)]
    for name in names:
        assert await aq.secret("pt", name) is None
    before = aq.lookups
    assert await aq.secret("pt", names[0]) is None and aq.lookups == before  # cached
    assert max(len(user) for _db, user in aq._cache) <= 65
