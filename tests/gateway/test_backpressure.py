"""A client that stops reading a large result stops its server: the gateway
pauses reading the server once the client's transport buffer is above its
high-water mark, so the gateway holds at most about one buffer of the result
and PostgreSQL blocks writing (wait_event ClientWrite) instead of running to
the end (docs/pooling-semantics.md, "Read-ahead of a slow client")."""

from __future__ import annotations

import asyncio
import socket

import asyncpg
import pytest

from driver.protocol import messages as m
from gateway.tcp import WRITE_HIGH_WATER
from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import RawClient, eventually
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(90)

ROWS = 3_000_000  # about 39 MB of CopyData: far more than all the socket buffers on the way


@pytest.mark.parametrize("mode", ["transaction"])
async def test_slow_client_blocks_its_server(gateway_app, pg: PgCluster, mode: str) -> None:
    app = await gateway_app(databases={"app": {"pool_mode": mode, "pool_size": 2}})
    adm = await asyncpg.connect(host=pg.host, port=pg.port, user=pg.SUPERUSER, password=pg.SUPERUSER_PASSWORD,
                                database="postgres")
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        await c.send(m.query(f"COPY (SELECT generate_series(1, {ROWS})) TO STDOUT"))
        # the client now reads nothing (its StreamReader buffers at most ~128 kB, then stops)
        state: dict[str, int] = {"last": -1, "same": 0}

        async def blocked() -> bool:
            row = await adm.fetchrow(
                "SELECT a.wait_event, p.tuples_processed FROM pg_stat_activity a "
                "JOIN pg_stat_progress_copy p USING (pid) WHERE a.query LIKE 'COPY (SELECT generate_series%'")
            if row is None or row["wait_event"] != "ClientWrite":
                state["same"] = 0
                return False
            same = row["tuples_processed"] == state["last"]
            state["last"] = row["tuples_processed"]
            state["same"] = state["same"] + 1 if same else 0
            return state["same"] >= 3  # no progress over three polls: blocked on the socket
        await eventually(blocked, timeout=60, what="the server to block writing to the gateway")
        assert 0 < state["last"] < ROWS * 0.6, state  # stopped early, not run to the end
        sessions = [s for s in app.gateway._all_sessions if s.server is not None]
        assert len(sessions) == 1
        s = sessions[0]
        assert s._paused is s.server  # the gateway stopped reading the server ...
        buffered = s.stream.transport.get_write_buffer_size() + s._out_bytes
        assert buffered <= WRITE_HIGH_WATER + (1 << 18), buffered  # ... holding about one buffer
        # reading again: every byte arrives, then ReadyForQuery, and the session goes on
        expect = sum(5 + len(str(i)) + 1 for i in range(1, ROWS + 1))  # the CopyData messages
        expect += 10 + 5 + 5 + len(f"COPY {ROWS}") + 1 + 6  # CopyOutResponse, CopyDone, CommandComplete, Z
        got, tail = 0, b""
        while not tail.endswith(b"Z\x00\x00\x00\x05I"):  # no 'Z' byte inside digits/headers
            data = await asyncio.wait_for(c.r.read(1 << 20), 30)
            assert data, f"closed after {got} bytes"
            got += len(data)
            tail = (tail + data)[-6:]
        assert got == expect
        await c.send(m.query("SELECT 1"))
        assert any(isinstance(x, m.DataRow) for x in await c.until(m.ReadyForQuery))
    finally:
        await c.close()
        await adm.close()


async def test_tcp_socket_buffer_fixes_both_sockets(gateway_app) -> None:
    """``tcp_socket_buffer`` (PgBouncer's key) sets SO_SNDBUF/SO_RCVBUF of the
    client's and the server's socket: no autotuning, so the kernel holds at
    most that much for a slow client (Linux reports twice the value set)."""
    size = 200_000  # above the defaults (tcp_wmem 16 kB, tcp_rmem 128 kB initial)
    app = await gateway_app(tcp_socket_buffer=size, databases={"app": {"pool_mode": "session"}})
    c = await RawClient.connect(app.pg_port)
    try:
        await c.login("alice", ALICE_PASSWORD, "app")
        (s,) = [s for s in app.gateway._all_sessions if s.server is not None]
        for transport in (s.stream.transport, s.server.transport):
            sock = transport.get_extra_info("socket")
            for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
                assert size <= sock.getsockopt(socket.SOL_SOCKET, opt) <= 2 * size
    finally:
        await c.close()
