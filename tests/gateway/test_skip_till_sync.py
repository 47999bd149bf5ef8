"""Query/FunctionCall messages sent after extended-protocol messages before
their Sync: Postgres discards them (no ReadyForQuery) when one of those
messages fails (skip-till-Sync), and answers them otherwise.  The gateway must
count exactly the ReadyForQuery that will come, or it never releases the
server (transaction mode) -- checked with pool_size=1 and a second client.
Every sequence is also sent to Postgres directly: the replies must match."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors, pool_stats
from tests.pgcluster import PgCluster

SENTINEL = "SELECT 'sentinel-7f3'"


def P(sql: str) -> bytes:
    return m.parse("", sql, [])


BEX = m.bind("", "", [], [], []) + m.execute("")  # Bind + Execute of the unnamed statement


def _shape(msgs: list[Any]) -> list[str]:
    return [f"E:{x.sqlstate}" if isinstance(x, m.ErrorResponse) else
            f"Z:{x.status}" if isinstance(x, m.ReadyForQuery) else type(x).__name__
            for x in msgs if not isinstance(x, (m.NoticeResponse, m.ParameterStatus))]


async def _run(c: RawClient, steps: list[bytes | tuple[bytes, int]]) -> list[Any]:
    """Send each step (the last one followed by the sentinel Query, after a
    Sync) and read every reply up to the sentinel's ReadyForQuery.  An
    intermediate step ``(bytes, n)`` ends with Flush: its replies are read up
    to the n-th CommandComplete/ErrorResponse."""
    out: list[Any] = []
    for step in steps:
        if isinstance(step, tuple):
            await c.send(step[0])
            n = step[1]
            while n:
                msg = await c.recv_message()
                assert msg is not None
                out.append(msg)
                n -= isinstance(msg, (m.ErrorResponse, m.CommandComplete))
        else:
            await c.send(step + m.query(SENTINEL))
    while True:
        msg = await c.recv_message()
        assert msg is not None
        out.append(msg)
        if isinstance(msg, m.DataRow) and msg.values == (b"sentinel-7f3",):
            return out + await c.until(m.ReadyForQuery)


CASES: dict[str, list[bytes | tuple[bytes, int]]] = {
    # an extended message before the Query fails: the Query is skipped
    "error_before_query": [P("SELEC broken") + m.query("SELECT 1") + m.sync()],
    "execute_error_before_query": [P("SELECT 1/0") + BEX + m.query("SELECT 1") + m.sync()],
    # the Query itself fails: both ReadyForQuery come
    "error_in_query": [P("SELECT 1") + BEX + m.query("SELECT 1/0") + m.sync()],
    "error_in_query_after_rows": [P("SELECT 1") + BEX + m.query("SELECT 2; SELECT 1/0; SELECT 3") + m.sync()],
    "no_error": [P("SELECT 1") + m.describe("S", "") + BEX + m.query("SELECT 2") + m.sync()],
    # two at-risk Queries (and a plain one between them)
    "two_queries_error_first": [P("SELECT 1/0") + BEX + m.query("SELECT 1") + m.query("SELECT 2")
                                + P("SELECT 3") + BEX + m.query("SELECT 4") + m.sync()],
    "two_queries_error_between": [P("SELECT 1") + BEX + m.query("SELECT 2") + P("SELEC broken") + BEX
                                  + m.query("SELECT 4") + m.sync()],
    "two_queries_error_after": [P("SELECT 1") + BEX + m.query("SELECT 2") + P("SELECT 3") + BEX
                                + m.query("SELECT 4") + P("SELECT 1/0") + BEX + m.sync()],
    "query_error_then_extended_error": [P("SELECT 1") + BEX + m.query("SELECT 1/0") + P("SELEC x")
                                        + m.query("SELECT 5") + m.sync()],
    # pipelines across several Syncs
    "pipeline_error_first_segment": [P("SELEC broken") + m.query("SELECT 1") + m.sync()
                                     + P("SELECT 2") + BEX + m.query("SELECT 3") + m.sync()],
    "pipeline_error_second_segment": [P("SELECT 1") + BEX + m.query("SELECT 2") + m.sync()
                                      + m.query("SELECT 3") + P("SELECT 1/0") + BEX + m.query("SELECT 4")
                                      + m.query("SELECT 5") + m.sync() + P("SELECT 6") + BEX
                                      + m.query("SELECT 7") + m.sync()],
    "pipeline_in_transaction": [m.query("BEGIN") + P("SELECT 1/0") + BEX + m.query("SELECT 1") + m.sync()
                                + m.query("ROLLBACK")],
    # the error reaches the gateway before the Query is sent (Flush)
    "error_flushed_before_query": [(P("SELEC broken") + m.flush(), 1),
                                   m.query("SELECT 1") + m.query("SELECT 2") + m.sync()],
    "replies_flushed_before_query": [(P("SELECT 1") + BEX + m.flush(), 1),
                                     (m.query("SELECT 2") + P("SELECT 1/0") + BEX + m.flush(), 2),
                                     m.query("SELECT 3") + m.sync()],
    "replies_flushed_then_query_error": [(P("SELECT 1") + BEX + m.flush(), 1),
                                         m.query("SELECT 1/0") + m.sync()],
}


@pytest.mark.parametrize("limit", [0, 200], ids=["no-rewriter", "rewriter"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_query_after_extended_messages(gateway_app: Any, pg: PgCluster, pg_db: str,
                                             case: str, limit: int) -> None:
    steps = CASES[case]
    direct = await RawClient.connect(pg.port, pg.host)
    await direct.send(m.startup_message({"user": PgCluster.TRUST_USER, "database": PgCluster.DATABASE}))
    assert not errors(await direct.until(m.ReadyForQuery))
    try:
        want = _shape(await _run(direct, steps))
    finally:
        await direct.close()

    app = await gateway_app(query_wait_timeout=5.0, max_prepared_statements=limit,
                            databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await RawClient.connect(app.pg_port)
    assert not errors(await a.login("alice", ALICE_PASSWORD, "app"))
    try:
        got = _shape(await _run(a, steps))
        assert got == want
        assert got[-1] == "Z:I"
        # a is idle outside a transaction: the server went back to the pool...
        session = next(iter(app.gateway.pools["app"].cl_active), None)
        assert session is None or (session.acc.outstanding == 0 and session.server is None), session
        # ...so a second client is served, and a keeps working
        b = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
        try:
            assert await asyncio.wait_for(b.fetchval("SELECT 42"), 10) == 42
        finally:
            await b.close()
        assert _shape(await a.query("SELECT 1")) == ["RowDescription", "DataRow", "CommandComplete", "Z:I"]
        assert pool_stats(app)["sv_active"] == 0
    finally:
        await a.close()


# A client that leaves while the server still skips to a Sync it never sent: the
# server must not go back to the pool as it is (it would discard the next
# client's Parse/Bind/Execute and answer only its Sync -- the fuzz campaign's
# probe stall, docs/fuzzing.md).  The error reaches the gateway before the
# client leaves (Flush), with or without a Query the server then discards.
LEAVING: dict[str, list[tuple[bytes, int]]] = {  # (bytes, ReadyForQuery or ErrorResponse replies to read)
    "error_then_leave": [(P("SELEC broken") + m.flush(), 1)],
    "error_query_then_leave": [(P("SELEC broken") + m.flush(), 1), (m.query("SELECT 1") + m.flush(), 0)],
    "after_commit": [(m.query("BEGIN;") + m.query("COMMIT;"), 2), (P("SELEC broken") + m.flush(), 1),
                     (m.query("SELECT 1") + m.flush(), 0)],
}


async def _next_client_is_answered(app: Any, limit: int) -> None:
    """The next client (asyncpg: Parse/Bind/Execute/Sync; named statements with the rewriter) is answered."""
    b = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=100 if limit else 0)
    try:
        for i in range(3):
            assert await asyncio.wait_for(b.fetchval("SELECT $1::int", i), 5) == i
    finally:
        await b.close()


@pytest.mark.parametrize("limit", [0, 200], ids=["no-rewriter", "rewriter"])
@pytest.mark.parametrize("case", sorted(LEAVING))
async def test_client_leaving_while_the_server_skips_to_sync(gateway_app: Any, pg_db: str,
                                                              case: str, limit: int) -> None:
    app = await gateway_app(query_wait_timeout=5.0, max_prepared_statements=limit,
                            databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await RawClient.connect(app.pg_port)
    assert not errors(await a.login("alice", ALICE_PASSWORD, "app"))
    for data, n in LEAVING[case]:
        await a.send(data)
        while n:
            msg = await a.recv_message()
            assert msg is not None
            n -= isinstance(msg, (m.ErrorResponse, m.ReadyForQuery))
    await a.close()
    await _next_client_is_answered(app, limit)


# A Query, a message that fails, a Query Postgres then discards -- and no Sync
# yet.  The first Query's ReadyForQuery must not end the link: the server now
# discards everything up to a Sync the client has not sent.  Released at that
# ReadyForQuery, it ignored the next client's Parse/Bind/Execute and answered
# only its Sync (a ReadyForQuery the rewriter then took for the reply to its
# injected Parse): that client hung, its server idle in Postgres -- the fuzz
# campaign's probe stall (docs/fuzzing.md).  "refused": with the rewriter the
# unknown name is refused by the gateway (26000, a failing Describe sent in its
# place); without it Postgres refuses it.
PENDING_SYNC: dict[str, bytes] = {
    "refused_then_query": m.query("SELECT 1") + m.describe("S", "nosuch") + m.query("SELECT 2"),
    "error_then_query": m.query("SELECT 1") + P("SELEC broken") + m.query("SELECT 2"),
}


@pytest.mark.parametrize("then", ["leave", "sync"])
@pytest.mark.parametrize("limit", [0, 200], ids=["no-rewriter", "rewriter"])
@pytest.mark.parametrize("case", sorted(PENDING_SYNC))
async def test_server_skipping_to_a_sync_not_sent_stays_linked(gateway_app: Any, pg: PgCluster, pg_db: str,
                                                               case: str, limit: int, then: str) -> None:
    direct = await RawClient.connect(pg.port, pg.host)
    await direct.send(m.startup_message({"user": PgCluster.TRUST_USER, "database": PgCluster.DATABASE}))
    assert not errors(await direct.until(m.ReadyForQuery))
    try:
        await direct.send(PENDING_SYNC[case])
        want = _shape(await direct.until(m.ErrorResponse))
        await direct.send(m.sync())
        want_sync = _shape(await direct.until(m.ReadyForQuery))
    finally:
        await direct.close()
    assert want[3] == "Z:I" and want[-1].startswith("E:") and want_sync == ["Z:I"], (want, want_sync)

    app = await gateway_app(query_wait_timeout=5.0, max_prepared_statements=limit,
                            databases={"app": {"dbname": pg_db, "pool_size": 1}})
    a = await RawClient.connect(app.pg_port)
    assert not errors(await a.login("alice", ALICE_PASSWORD, "app"))
    await a.send(PENDING_SYNC[case])
    assert _shape(await a.until(m.ErrorResponse, timeout=5)) == want
    # the server waits for a's Sync: it is still a's, not back in the pool
    st = pool_stats(app)
    assert (st["sv_active"], st["sv_idle"]) == (1, 0), st
    if then == "sync":
        await a.send(m.sync())
        assert _shape(await a.until(m.ReadyForQuery, timeout=5)) == want_sync
        assert _shape(await a.query("SELECT 3")) == ["RowDescription", "DataRow", "CommandComplete", "Z:I"]
    else:
        await a.close()
    try:
        await _next_client_is_answered(app, limit)
    finally:
        await a.close()
