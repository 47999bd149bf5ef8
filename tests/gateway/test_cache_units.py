"""The result cache's harder cases (gateway/cache_hook.py, docs/cache.md),
against real Postgres and real clients:

- psql (simple Query) with a hint;
- a named Parse inside the unit (node-postgres ``{name}`` through the Neon
  driver) and a unit split across WebSocket frames (``coalesceWrites = false``);
- ``"auto"`` mode: the tables read are the entry's tags (a trigger's NOTIFY of
  its table name invalidates), hint tags still count, a name the catalog does
  not know as a table is not cached;
- ``cache_max_bytes`` / ``cache_max_entry_bytes`` changed by the admin ``SET``
  and by ``RELOAD``: a shrink evicts at once, least recently used first."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import psycopg

from gateway.cache_hook import get_cache
from gateway.config import load_config
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.node_helpers import run_node_json
from tests.gateway.pool_helpers import eventually
from tests.gateway.test_cache_e2e import _direct, _setup, cache_ready

HINT = "/* wirepool:cache ttl=60 tags=quotes */ "


def _rc(app: Any) -> Any:
    return get_cache(app.gateway)


async def test_named_parse_and_split_unit_through_the_neon_driver(gateway_app: Any, pg: Any, pg_db: str) -> None:
    _setup(pg, pg_db)
    app = await gateway_app(databases={"app": {"dbname": pg_db, "cache": "hint"}})
    await cache_ready(app)
    rc = _rc(app)
    args = (f"127.0.0.1:{app.http_port}", f"postgresql://alice:{ALICE_PASSWORD}@db.invalid:5432/app")
    first = await run_node_json("neon_cache_units.mjs", *args, "1 ")  # fills: named (x2), split
    assert "fatal" not in first, first
    assert (first["named"], first["split"], first["plain"]) == (["a", "a", "a"], ["x", "x"], "a"), first
    # both shapes were recognised as units and stored; the named statement's Bind-only second use
    # and the split unit's second read were hits
    assert (len(rc), rc.stats.hits) == (3, 2), rc.snapshot()
    hits = rc.stats.hits
    await _direct(pg, pg_db, "UPDATE quotes SET text = 'b' WHERE id = 1; UPDATE quotes SET text = 'y' WHERE id = 2")
    # new connections: the named Parse is answered from the cache (and its name then works for the
    # Bind-only second query), the split unit too; the unhinted read shows the UPDATE happened
    second = await run_node_json("neon_cache_units.mjs", *args, " 1")
    assert "fatal" not in second, second
    # the third use binds the name the cache registered; it is a miss, so the gateway parses the
    # statement on the server it gets (a fresh 'b')
    assert (second["named"], second["split"], second["plain"]) == (["a", "a", "b"], ["x", "x"], "b"), second
    assert rc.stats.hits == hits + 4


async def test_hint_through_psql(gateway_app: Any, pg: Any, pg_db: str) -> None:
    """psql (simple Query) through pg_listen: the second run is a hit, even after a direct UPDATE."""
    _setup(pg, pg_db)
    app = await gateway_app(databases={"app": {"dbname": pg_db, "cache": "hint"}})
    await cache_ready(app)
    rc = _rc(app)

    async def psql() -> str:
        proc = await asyncio.create_subprocess_exec(
            pg.psql_bin, "-X", "-A", "-t", "-h", "127.0.0.1", "-p", str(app.pg_port), "-U", "alice", "-d", "app",
            "-c", HINT + "SELECT text FROM quotes WHERE id = 1", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PGPASSWORD": ALICE_PASSWORD})
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err
        return out.decode().strip()
    assert await psql() == "a" and len(rc) == 1
    await _direct(pg, pg_db, "UPDATE quotes SET text = 'b' WHERE id = 1")
    assert await psql() == "a" and rc.stats.hits == 1


async def test_auto_mode_tags_are_the_tables_read(gateway_app: Any, pg: Any, pg_db: str) -> None:
    _setup(pg, pg_db)
    pg.psql("CREATE FUNCTION inval() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "PERFORM pg_notify('wirepool_invalidate', TG_TABLE_NAME); RETURN NULL; END $$;"
            "CREATE TRIGGER quotes_inval AFTER INSERT OR UPDATE OR DELETE ON quotes "
            "FOR EACH STATEMENT EXECUTE FUNCTION inval();", db=pg_db)
    app = await gateway_app(databases={"app": {"dbname": pg_db, "cache": "auto", "cache_ttl": 60}},
                            admin_users=["alice"])
    await cache_ready(app)
    rc = _rc(app)
    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=app.pg_port, user="alice", password=ALICE_PASSWORD, dbname="app",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as c:
        async def read(sql: str) -> Any:
            return (await (await c.execute(sql)).fetchone())[0]  # type: ignore[index]

        plain = "SELECT text FROM quotes WHERE id = 1"
        hinted = "/* wirepool:cache tags=custom */ SELECT q.text FROM public.quotes q WHERE id = 2"

        async def cached() -> bool:  # the catalog is read in the background first
            return (await read(plain), await read(hinted)) == ("a", "x") and len(rc) == 2
        await eventually(cached, what="both reads cached")
        assert sorted(sorted(e.tags) for e in rc.entries.values()) == [["custom", "quotes"], ["quotes"]]
        await eventually(lambda: getattr(app.gateway.cache_subscriptions.get("app"), "closed", True) is False,
                         what="LISTEN")
        # a write behind the gateway's back: the trigger's NOTIFY 'quotes' reaches the unhinted entry
        await _direct(pg, pg_db, "UPDATE quotes SET text = 'b' WHERE id = 1")
        t0 = time.monotonic()
        while await read(plain) != "b":
            assert time.monotonic() - t0 < 0.1, "the table's notification did not invalidate within 100 ms"
        # hint tags still count in "auto" (the entry went too: it read quotes)
        assert await read(hinted) == "x"
        await _direct(pg, pg_db, "ALTER TABLE quotes DISABLE TRIGGER quotes_inval; UPDATE quotes SET text = 'y' WHERE id = 2")
        assert await read(hinted) == "x"
        async with await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=app.pg_port, user="alice", password=ALICE_PASSWORD, dbname="pgbouncer",
                autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as admin:
            await admin.execute("CACHE_INVALIDATE custom")
        assert await read(hinted) == "y"
        # a table created behind the gateway's back (not in its catalog): its tags cannot be certain
        await _direct(pg, pg_db, "CREATE TABLE fresh (x int); INSERT INTO fresh VALUES (1); GRANT ALL ON fresh TO PUBLIC")
        n = len(rc)
        assert [await read("SELECT x FROM fresh") for _ in range(3)] == [1, 1, 1]
        assert len(rc) == n


def _toml(path: Path, pg: Any, dbname: str, port: int, max_bytes: int, max_entry: int) -> None:
    path.write_text(f"""
[gateway]
listen = "127.0.0.1:0"
pg_listen = "127.0.0.1:{port}"
auth_type = "scram-sha-256"
admin_users = ["alice"]
cache_max_bytes = {max_bytes}
cache_max_entry_bytes = {max_entry}

[databases.app]
host = "{pg.host}"
port = {pg.port}
dbname = "{dbname}"
user = "{pg.SCRAM_USER}"
password = "{pg.SCRAM_PASSWORD}"
cache = "hint"

[users.alice]
password = "{ALICE_PASSWORD}"
""")


async def test_cache_budget_changed_live(gateway_app: Any, pg: Any, pg_db: str, tmp_path: Path) -> None:
    _setup(pg, pg_db)
    pg.psql("INSERT INTO quotes VALUES (3, 'z')", db=pg_db)
    cfg = tmp_path / "wirepool.toml"
    _toml(cfg, pg, pg_db, 0, 1 << 20, 1 << 16)
    app = await gateway_app(config=load_config(cfg))
    await cache_ready(app)
    app.gateway.config_path = str(cfg)
    rc = _rc(app)
    port = app.pg_port
    sqls = {i: f"{HINT}SELECT text FROM quotes WHERE id = {i}" for i in (1, 2, 3)}

    async def admin(sql: str) -> None:
        async with await psycopg.AsyncConnection.connect(
                host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, dbname="pgbouncer",
                autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as a:
            await a.execute(sql)

    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=port, user="alice", password=ALICE_PASSWORD, dbname="app",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as c:
        for i in (1, 2, 3, 1):  # 1 is used again: 2 is now the least recently used
            await c.execute(sqls[i])
        assert len(rc) == 3 and rc.stats.hits == 1
        size = {e.key[4]: e.size for e in rc.entries.values()}
        s1, s3 = (size[sqls[i].encode()] for i in (1, 3))
        # the admin SET: room for two entries -> the least recently used (2) goes
        await admin(f"SET cache_max_bytes = {s1 + s3}")
        assert (rc.max_bytes, rc.bytes) == (s1 + s3, s1 + s3)
        assert sorted(e.key[4] for e in rc.entries.values()) == sorted(sqls[i].encode() for i in (1, 3))
        assert rc.stats.evictions == 1
        # RELOAD: room for one -> 3 (less recently used than 1) goes; then an entry cap below 1's size
        _toml(cfg, pg, pg_db, port, s1 + 1, 1 << 16)
        await admin("RELOAD")
        assert [e.key[4] for e in rc.entries.values()] == [sqls[1].encode()] and rc.bytes == s1
        _toml(cfg, pg, pg_db, port, s1 + 1, s1 - 1)
        await admin("RELOAD")
        assert len(rc) == 0 and rc.bytes == 0 and rc.max_entry == s1 - 1
        await c.execute(sqls[1])
        assert len(rc) == 0 and rc.stats.too_large >= 1  # the new cap holds for new entries too


async def test_nothing_stored_while_the_channel_is_down(gateway_app: Any, pg: Any, pg_db: str) -> None:
    """A notification sent while the gateway does not LISTEN would be lost: no entry is stored
    until the subscription is back (made again by the next cacheable miss)."""
    _setup(pg, pg_db)
    app = await gateway_app(databases={"app": {"dbname": pg_db, "cache": "hint"}})
    await cache_ready(app)
    rc = _rc(app)
    subs = app.gateway.cache_subscriptions
    async with await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=app.pg_port, user="alice", password=ALICE_PASSWORD, dbname="app",
            autocommit=True, cursor_factory=psycopg.AsyncClientCursor) as c:
        subs["app"].close()  # as when the pool's LISTEN hub goes away
        sql = HINT + "SELECT text FROM quotes WHERE id = 1"
        assert (await (await c.execute(sql)).fetchone()) == ("a",)
        assert len(rc) == 0 and rc.stats.misses == 0, (list(rc.entries), rc.snapshot(), subs)
        await cache_ready(app)  # subscribed again
        assert not subs["app"].closed
        for _ in range(2):
            assert (await (await c.execute(sql)).fetchone()) == ("a",)
        assert (len(rc), rc.stats.hits) == (1, 1)
