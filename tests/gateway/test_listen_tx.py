"""LISTEN/NOTIFY and transactions (issue 13), compared with a direct connection:
savepoints, notifications held until the transaction ends, PREPARE TRANSACTION
after LISTEN, and no window after COMMIT (gateway/listen_tx.py, listen_session.py)."""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest

from driver.protocol import messages as m
from gateway.listen import hub_for
from gateway.listen_tx import TxWatch, ops_of, split_statements, tx_op
from tests.driver.test_round_trips import RoundTripProxy
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, admin, eventually
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(120)


def test_statements_and_their_transaction_ops() -> None:
    text = (b"select 'a;b', \"x;\" -- ;\n; savepoint \"S 1\"; do $f$ begin; end $f$; select E'\\';', $1; "
            b"/* ; /* ; */ */ rollback work to savepoint s; release s2; commit prepared 'g'; abort; "
            b"prepare transaction 'g'; prepare p as select 1; end")
    assert len(split_statements(text)) == 11
    assert ops_of(text) == [("sp", "S 1"), ("to", "s"), ("rel", "s2"), ("x", None), ("prep", None), ("x", None)]
    assert tx_op(b"ROLLBACK PREPARED 'g'") is None and tx_op(b"endless") is None
    assert tx_op(b"rollback to a") == ("to", "a") and tx_op(b"ROLLBACK") == ("x", None)
    w = TxWatch()
    w.savepoint("a", 1)
    w.savepoint("b", 2)
    w.savepoint("a", 3)
    assert w.rollback_to("a") == 3 and len(w.saves) == 3  # the latest "a"; it stays
    w.release("a")
    assert w.saves == [("a", 1), ("b", 2)]
    assert w.rollback_to("zz") == 0 and w.saves == []  # unknown: set before any pending action


Notify = Callable[[str, str, bool], Awaitable[None]]


async def _script(c: RawClient, notify: Notify) -> list[Any]:
    """The same steps on a direct connection and through the gateway: every
    message each query gets (notifications where they arrive), and the
    notifications received while idle."""
    log: list[Any] = []
    section = ""

    def fmt(msg: Any) -> Any:
        if isinstance(msg, m.NotificationResponse):
            return ("A", msg.channel, msg.payload)
        if isinstance(msg, m.CommandComplete):
            return ("C", msg.tag)
        if isinstance(msg, m.ReadyForQuery):
            return ("Z", msg.status)
        if isinstance(msg, m.ErrorResponse):
            return ("E", msg.sqlstate, msg.message)
        return type(msg).__name__

    async def q(*sqls: str) -> None:
        for sql in sqls:
            got = [fmt(x) for x in await c.query(sql) if not isinstance(x, (m.ParameterStatus, m.NoticeResponse))]
            log.append((section, sql, got))

    async def idle(mark: str) -> None:
        """Notifications received while idle, up to the sentinel ``mark``."""
        await notify("sent", mark, False)
        got = []
        while True:
            msg = await c.recv_message(10)
            assert msg is not None
            if isinstance(msg, m.NotificationResponse):
                got.append(fmt(msg))
                if msg.payload == mark:
                    break
        log.append((section, "idle", got))

    await q("LISTEN sent")
    section = "savepoints"  # ROLLBACK TO undoes LISTEN/UNLISTEN issued after it, RELEASE keeps them
    await q("BEGIN", "SAVEPOINT s", "LISTEN e1", "ROLLBACK TO s", "COMMIT")
    await notify("e1", "after rollback to", False)
    await q("BEGIN", "SAVEPOINT s", "LISTEN e2", "RELEASE s", "COMMIT")
    await notify("e2", "after release", False)
    await idle("1")
    await q("BEGIN", "SAVEPOINT s", "UNLISTEN e2", "SELECT 1/0", "ROLLBACK TO SAVEPOINT s", "COMMIT")
    await notify("e2", "unlisten rolled back", True)
    await q("BEGIN", "LISTEN n1", "SAVEPOINT a", "LISTEN n2", "savepoint b; select 1", "LISTEN n3",
            "rollback to a; select 2", "LISTEN n4", "SAVEPOINT a", "UNLISTEN n4", "release a", "COMMIT")
    for ch in ("n1", "n2", "n3", "n4"):
        await notify(ch, "nested", False)
    await idle("2")
    section = "held"  # delivered only between transactions: held in a transaction (also a failed one)
    await q("BEGIN")
    await notify("sent", "in transaction", True)
    await q("SELECT 1", "COMMIT")
    await q("BEGIN", "SELECT 1/0")
    await notify("sent", "in failed transaction", True)
    await q("SELECT 1", "ROLLBACK")
    section = "commit"  # a listening session's LISTEN in a transaction: what was sent during it comes after COMMIT
    await q("BEGIN", "LISTEN r1")
    await notify("r1", "during", True)
    await q("COMMIT")
    await q("BEGIN", "UNLISTEN r1")
    await notify("r1", "during unlisten, committed", True)
    await q("COMMIT", "LISTEN r1", "BEGIN", "UNLISTEN r1")
    await notify("r1", "during unlisten, rolled back", True)
    await q("ROLLBACK")
    # a session listening to nothing: its first LISTEN skips what was committed before it
    await q("UNLISTEN *", "BEGIN", "LISTEN u1")
    await notify("u1", "during first listen", True)
    await q("COMMIT")
    await notify("u1", "after first listen", True)
    await q("LISTEN sent")
    await idle("3")
    section = "prepare"  # PREPARE TRANSACTION after LISTEN/UNLISTEN is refused (the transaction is over)
    await q("BEGIN", "LISTEN p1", "PREPARE TRANSACTION 'wp_listen'", "SELECT 1")
    await q("BEGIN", "UNLISTEN p1", "prepare transaction 'wp_listen' ;", "SELECT 1")
    await q("BEGIN", "SAVEPOINT a", "LISTEN p1", "ROLLBACK TO a", "PREPARE TRANSACTION 'wp_listen'",
            "ROLLBACK PREPARED 'wp_listen'")
    await notify("p1", "never listened", False)
    await idle("4")
    return log


async def test_transactions_match_a_direct_connection(gateway_app: Any, pg: PgCluster) -> None:
    app = await gateway_app(databases={"app": {"pool_size": 2}})
    hub = hub_for(app.gateway.pools["app"])
    adm = await admin(pg)

    def notifier(via: bool) -> Notify:
        async def notify(ch: str, payload: str, wait: bool) -> None:
            seen = hub.registry.received
            await adm.execute("select pg_notify($1, $2)", ch, payload)
            if via and wait and ch in hub.listening:  # (Postgres has it once NOTIFY commits; we once it is back)
                await eventually(lambda: hub.registry.received > seen, 10, "the hub received it")
        return notify

    try:
        direct = await RawClient.connect(pg.port)
        await direct.login(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE)
        want = await _script(direct, notifier(False))
        await direct.close()
        via = await RawClient.connect(app.pg_port)
        await via.login("alice", ALICE_PASSWORD, "app")
        got = await _script(via, notifier(True))
        await via.close()
        differ: dict[str, Any] = {}
        for w, g in zip(want, got):
            if w != g:
                differ.setdefault(w[0], (w[1:], g[1:]))
        assert not differ, "\n".join(f"{k}: {v}" for k, v in differ.items())  # first difference per section
        assert len(got) == len(want)
        # (the script tests what it means to)
        flat = repr(want)
        assert "('A', 'sent', 'in transaction'), ('Z', 'I')" in flat and "('A', 'r1', 'during')" in flat
        assert "0A000" in flat and "after rollback to" not in flat and "unlisten rolled back" in flat
    finally:
        await adm.close()


async def test_no_window_after_commit(gateway_app: Any, pg: PgCluster) -> None:
    """Once COMMIT of a LISTEN returns, a NOTIFY is delivered, even when the
    gateway's listener connection is slow (a 0.1 s proxy in front of Postgres)."""
    proxy = RoundTripProxy(pg.port, delay=0.0)
    await proxy.start()
    app = await gateway_app(databases={"app": {"pool_size": 1, "port": proxy.port}})
    adm = await admin(pg)
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        assert [type(x) for x in await c.query("LISTEN other")][-1] is m.ReadyForQuery  # the hub is up
        await c.query("BEGIN")
        proxy.delay = 0.1  # from now on the gateway's upstream traffic is slow
        await c.query("LISTEN w")
        assert [getattr(x, "tag", None) for x in await c.query("COMMIT")][0] == "COMMIT"
        await adm.execute("select pg_notify('w', 'after commit')")
        msg = await c.recv_message(10)
        assert isinstance(msg, m.NotificationResponse) and msg.payload == "after commit", msg
    finally:
        await c.close()
        await adm.close()
        await proxy.close()


async def test_psycopg_extended_protocol_savepoints_match_a_direct_connection(gateway_app: Any, pg: PgCluster) -> None:
    """psycopg 3 sends ``execute()`` with the extended protocol (SAVEPOINT and
    ROLLBACK TO included), its transaction blocks with simple Queries."""
    import psycopg

    app = await gateway_app(databases={"app": {"pool_size": 1}})
    adm = await admin(pg)

    async def run(dsn: str) -> list[str]:
        conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            await conn.execute("LISTEN x_done")
            async with conn.transaction():
                await conn.execute("LISTEN x_a")
                await conn.execute("SAVEPOINT s")
                await conn.execute("LISTEN x_b")
                await conn.execute("ROLLBACK TO SAVEPOINT s")
                async with conn.transaction():  # psycopg's own SAVEPOINT / RELEASE (simple Query)
                    await conn.execute("LISTEN x_c")
                with pytest.raises(psycopg.errors.DivisionByZero):
                    async with conn.transaction():  # ... and ROLLBACK TO
                        await conn.execute("LISTEN x_d")
                        await conn.execute("select 1/0")
            for ch in ("x_a", "x_b", "x_c", "x_d", "x_done"):
                await adm.execute(f"notify {ch}, '{ch}'")
            got = []
            async for n in conn.notifies(timeout=10):
                got.append(n.payload)
                if n.payload == "x_done":
                    break
            return got
        finally:
            await conn.close()

    try:
        want = await run(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD))
        got = await run(f"postgresql://alice:{ALICE_PASSWORD}@127.0.0.1:{app.pg_port}/app")
        assert want == ["x_a", "x_c", "x_done"]
        assert got == want
    finally:
        await adm.close()
