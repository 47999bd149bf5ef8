"""COPY through the gateway: both directions over the WebSocket (transaction
pooling), a clear error over HTTP."""

from __future__ import annotations

import io
import secrets
from typing import Any, AsyncIterator

import asyncpg
import pytest

import driver
from driver import exceptions as exc
from tests.driver.test_copy import COLS, N, digest, records
from tests.gateway.conftest import ALICE_PASSWORD, gateway_app  # noqa: F401 (fixture)
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
async def tables(pg: PgCluster) -> AsyncIterator[tuple[str, str, Any]]:
    """Two empty tables of the gateway's database, and an asyncpg connection to it."""
    a, b = "cp_" + secrets.token_hex(4), "cp_" + secrets.token_hex(4)
    c = await asyncpg.connect(pg.dsn(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, pg.DATABASE))
    await c.execute(f"CREATE TABLE {a} ({COLS}); CREATE TABLE {b} ({COLS}); "
                    f"GRANT ALL ON {a}, {b} TO scram_user")
    try:
        yield a, b, c
    finally:
        await c.execute(f"DROP TABLE {a}, {b}")
        await c.close()


async def test_copy_both_directions_over_websocket(gateway_app: Any,  # noqa: F811
                                                   tables: tuple[str, str, Any]) -> None:
    mine, theirs, apg = tables
    app = await gateway_app()
    conn = await driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app",
                                statement_cache_size=0)
    try:
        recs = records()
        assert await conn.copy_records_to_table(mine, records=recs) == f"COPY {N}"
        await apg.copy_records_to_table(theirs, records=recs)
        assert await digest(conn, mine) == await digest(apg, theirs)

        out_ws, out_pg = io.BytesIO(), io.BytesIO()
        assert await conn.copy_from_table(mine, output=out_ws, format="binary") == f"COPY {N}"
        await apg.copy_from_table(theirs, output=out_pg, format="binary")
        assert out_ws.getvalue() == out_pg.getvalue()

        await conn.execute(f"TRUNCATE {mine}")
        out_ws.seek(0)
        assert await conn.copy_to_table(mine, source=out_ws, format="binary") == f"COPY {N}"
        assert await digest(conn, mine) == await digest(apg, theirs)
        with pytest.raises(exc.InvalidTextRepresentationError):  # and it survives an error
            await conn.copy_to_table(mine, source=bytearray(b"nope\n"))
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()


async def test_copy_over_http_is_a_clear_error(gateway_app: Any,  # noqa: F811
                                               tables: tuple[str, str, Any]) -> None:
    mine, _, _ = tables
    app = await gateway_app()
    conn = await driver.connect(f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/app",
                                statement_cache_size=0)
    try:
        calls: list[Any] = [
            conn.copy_records_to_table(mine, records=[]),
            conn.copy_to_table(mine, source=bytearray(b"")),
            conn.copy_from_table(mine, output=io.BytesIO()),
            conn.copy_from_query("SELECT 1", output=io.BytesIO()),
        ]
        for call in calls:
            with pytest.raises(exc.UnsupportedClientFeatureError, match="use ws:// .*|http://"):
                await call
        assert await conn.fetchval("SELECT 1") == 1
    finally:
        await conn.close()
