"""Session state never crosses clients in transaction mode (issue 10, item 2).

20 clients under two ``[users]`` identities (alice, bob), half over TCP
(asyncpg through pg_listen, statement cache on: named statements through the
gateway's registry) and half over WebSocket (the driver), share a pool of 2
servers.  Each does, at random, session-level SETs (RESET, set_config, a
custom parameter, a SET rolled back, SET LOCAL), temp tables, session advisory
locks, SQL PREPARE, a WITH HOLD cursor and LISTEN, and after every step checks
-- in one statement, so on one server -- that it sees exactly its own
settings and none of anybody's temp tables, locks, prepared statements,
cursors or LISTEN registrations.
"""

from __future__ import annotations

import asyncio
import random
from typing import Any

import asyncpg
import pytest

import driver
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.pool_helpers import admin

pytestmark = pytest.mark.timeout(240)

#: Settings, then what of *other* clients' state is visible (the client's own
#: temp tables, locks... may still be there while it stays on the same server).
CHECK = (
    "SELECT current_setting('statement_timeout'), current_setting('wp.cid', true),"
    " current_setting('search_path'), current_setting('default_transaction_read_only'),"
    " (SELECT count(*) FROM pg_class WHERE relnamespace = pg_my_temp_schema()"
    "  AND relname NOT LIKE 'tmp\\_{cid}\\_%' AND relkind = 'r')::int,"
    " (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
    "  AND objid <> {cid})::int,"
    " (SELECT count(*) FROM pg_prepared_statements WHERE from_sql AND name NOT LIKE 'p\\_{cid}\\_%')::int,"
    " (SELECT count(*) FROM pg_cursors WHERE is_holdable AND name NOT LIKE 'h\\_{cid}\\_%')::int,"
    " (SELECT count(*) FROM pg_listening_channels() c WHERE c <> 'chan_{cid}')::int,"
    " (SELECT string_agg(objid::text, ',') FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()),"
    " pg_backend_pid()"
)
ROUNDS = 12


class Client:
    def __init__(self, cid: int, conn: Any) -> None:
        self.cid = cid
        self.conn = conn
        self.rng = random.Random(1000 + cid)
        self.timeout = "0"
        self.custom: str | None = None
        self.path = '"$user", public'
        self.read_only = "off"
        self.steps: list[str] = []
        self.seen: list[Any] = []

    async def step(self, r: int) -> None:
        c, cid = self.conn, self.cid
        kind = self.rng.choice(["set", "set_config", "custom", "reset", "rollback", "local", "path",
                                "read_only", "temp", "lock", "prepare", "hold", "listen", "plain"])
        self.steps.append(kind)
        if kind == "set":
            ms = 100000 + cid * 100 + r
            await c.execute(f"SET statement_timeout = {ms}")
            self.timeout = f"{ms}ms"
        elif kind == "set_config":
            ms = 200000 + cid * 100 + r
            await c.execute(f"SELECT set_config('statement_timeout', '{ms}', false)")
            self.timeout = f"{ms}ms"
        elif kind == "custom":
            self.custom = f"c{cid}-r{r}"
            await c.execute(f"SET wp.cid = '{self.custom}'")
        elif kind == "reset":
            await c.execute("RESET statement_timeout")
            self.timeout = "0"
        elif kind == "rollback":  # a SET in a transaction that rolls back does not stick
            tr = c.transaction()
            await tr.start()
            await c.execute(f"SET statement_timeout = {300000 + cid}")
            await tr.rollback()
        elif kind == "local":  # SET LOCAL ends with its transaction
            async with c.transaction():
                await c.execute(f"SET LOCAL statement_timeout = {400000 + cid}")
        elif kind == "path":
            self.path = f"s{cid}_{r}, public"
            await c.execute(f"SET search_path = s{cid}_{r}, public")
        elif kind == "read_only":
            self.read_only = "on" if self.read_only == "off" else "off"
            await c.execute(f"SELECT set_config('default_transaction_read_only', '{self.read_only}', false)")
        elif kind == "temp":
            if self.read_only == "on":  # its own read-only default would refuse CREATE
                self.read_only = "off"
                await c.execute("SET default_transaction_read_only = off")
            await c.execute(f"CREATE TEMP TABLE tmp_{cid}_{r} (a int)")
        elif kind == "lock":
            assert await c.fetchval(f"SELECT pg_try_advisory_lock({cid})") is True
        elif kind == "prepare":
            await c.execute(f"PREPARE p_{cid}_{r} AS SELECT {cid}")
        elif kind == "hold":
            async with c.transaction():
                await c.execute(f"DECLARE h_{cid}_{r} CURSOR WITH HOLD FOR SELECT {cid}")
        elif kind == "listen":
            await c.execute(f"LISTEN chan_{cid}")
        else:
            assert await c.fetchval("SELECT $1::int", cid) == cid

    async def check(self) -> None:
        row = tuple(await self.conn.fetchrow(CHECK.format(cid=self.cid)))
        self.seen.append((self.steps[-1], row[-1]))
        locks, row = row[-2], row[:-2]
        want = (self.timeout, self.custom or "", self.path, self.read_only, 0, 0, 0, 0, 0)
        got = row[:1] + ((row[1] or ""),) + row[2:]
        assert got == want, f"client {self.cid} after {self.steps}: {got} != {want}; locks {locks}; {self.seen}"


async def _run_client(cl: Client) -> None:
    for r in range(ROUNDS):
        await cl.step(r)
        await cl.check()


async def test_isolation_two_users_tcp_and_websocket(gateway_app: Any, pg_db: str, pg: Any) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 2}})
    conns: list[Any] = []
    clients = []
    try:
        for cid in range(20):
            user, pw = ("alice", ALICE_PASSWORD) if cid % 2 == 0 else ("bob", BOB_PASSWORD)
            if cid % 4 < 2:
                conn = await asyncpg.connect(app.pg_dsn(user, pw, "app"))
            else:
                conn = await driver.connect(f"ws://{user}:{pw}@127.0.0.1:{app.http_port}/app")
            conns.append(conn)
            clients.append(Client(cid, conn))
        try:
            await asyncio.gather(*(_run_client(c) for c in clients))
        except AssertionError:
            for c in clients:
                print(c.cid, list(zip(c.steps, [x[1] for x in c.seen])))
            raise
        kinds = {k for c in clients for k in c.steps}
        assert {"set", "custom", "temp", "lock", "prepare", "rollback"} <= kinds, kinds
    finally:
        for conn in conns:
            await conn.close()
    # every server went back clean: nothing left on any backend of the pool
    a = await admin(pg, pg_db)
    try:
        left = await a.fetchval(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity s USING (pid)"
            " WHERE l.locktype = 'advisory' AND s.datname = $1", pg_db)
        assert left == 0
    finally:
        await a.close()


@pytest.mark.parametrize("other", ["bob", "alice"])
async def test_set_does_not_leak_to_the_next_client(gateway_app: Any, pg_db: str, other: str) -> None:
    """The issue's repro: alice's SETs and temp table, then bob on the same
    server (DISCARD ALL between identities), or another alice connection (the
    tracking alone)."""
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}})
    alice = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    bob = await asyncpg.connect(app.pg_dsn(other, BOB_PASSWORD if other == "bob" else ALICE_PASSWORD, "app"))
    try:
        pid = await alice.fetchval("SELECT pg_backend_pid()")
        # (the repro used 50 ms; 30 s keeps alice's own next statements clear of it on a loaded machine)
        await alice.execute("SET statement_timeout = 30000")
        await alice.execute("SET search_path = alice_schema, public")
        await alice.execute("CREATE TEMP TABLE secret (a text)")
        await alice.execute("SELECT set_config('default_transaction_read_only', 'on', false)")
        assert await bob.fetchval("SELECT pg_backend_pid()") == pid  # the same server
        assert await bob.fetchval("SHOW statement_timeout") == "0"
        assert await bob.fetchval("SHOW search_path") == '"$user", public'
        await bob.execute("CREATE TABLE IF NOT EXISTS bob_t (a int)")  # not read-only
        assert await bob.fetchval("SELECT count(*) FROM pg_class WHERE relname = 'secret'"
                                  " AND relpersistence = 't'") == 0
        # alice still has her settings (re-applied), but not her temp table (documented)
        assert await alice.fetchval("SHOW statement_timeout") == "30s"
        assert await alice.fetchval("SHOW search_path") == "alice_schema, public"
        assert await alice.fetchval("SHOW default_transaction_read_only") == "on"
    finally:
        await alice.close()
        await bob.close()


async def test_server_reset_query_always(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db, "pool_size": 1}},
                            server_reset_query_always=True, server_reset_query="DISCARD ALL")
    a = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"))
    try:
        for _ in range(3):  # named statements survive the reset (the registry is told)
            assert await a.fetchval("SELECT $1::int + 1", 1) == 2
        await a.execute("SET statement_timeout = 70")
        assert await a.fetchval("SHOW statement_timeout") == "70ms"  # re-applied after the reset
    finally:
        await a.close()
