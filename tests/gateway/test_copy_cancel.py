"""An error in the client in the middle of a COPY OUT it stopped reading (psycopg's
test_copy_out_error_with_copy_not_finished): its CancelRequest reaches the server
through the gateway, the 57014 comes back after the rows already sent, the
transaction is INERROR, and the server is clean for the next client."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest
from psycopg import pq

ROWS = 3_000_000  # ~36 MB of CopyData: more than every socket buffer on the way can hold


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_error_during_copy_out_not_read(gateway_app: Any, mode: str) -> None:
    app = await gateway_app(databases={"app": {"pool_mode": mode, "pool_size": 1}})
    aconn = await psycopg.AsyncConnection.connect(app.pg_dsn("alice", "alice-secret", "app"))
    try:
        cur = aconn.cursor()
        with pytest.raises(ZeroDivisionError):
            async with cur.copy(f"copy (select generate_series(1, {ROWS})) to stdout") as copy:
                assert await copy.read_row() == ("1",)
                1 / 0
        assert aconn.info.transaction_status == pq.TransactionStatus.INERROR
        await aconn.rollback()
        await cur.execute("select 41 + 1")
        assert await cur.fetchone() == (42,)
    finally:
        await aconn.close()
    # the pool's one server serves the next client, idle
    other = await psycopg.AsyncConnection.connect(app.pg_dsn("carol", "carol-secret", "app"))
    try:
        cur = other.cursor()
        await cur.execute("select count(*) from pg_stat_activity where query like 'copy (select generate_series%'"
                          " and state <> 'idle'")
        assert await cur.fetchone() == (0,)
    finally:
        await other.close()
