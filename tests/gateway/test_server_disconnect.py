"""A client that loses its server mid-session (pg_terminate_backend, crash) through
the gateway's pg_listen sees what direct Postgres gives: the server's error class,
then a closed connection."""

from __future__ import annotations

import psycopg
import psycopg.errors as e
import pytest

from tests.gateway.conftest import ALICE_PASSWORD


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_terminate_own_backend(gateway_app, mode):
    app = await gateway_app(databases={"app": {"pool_mode": mode}})
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    async with await psycopg.AsyncConnection.connect(dsn) as conn:
        with pytest.raises(e.AdminShutdown):
            await conn.execute("select pg_terminate_backend(pg_backend_pid())")
        assert conn.closed
        assert conn.broken


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_server_killed_by_another_client(gateway_app, mode):
    """Killing the client's real backend from another client gives the killed
    client what direct Postgres gives.  In transaction mode ``conn.pgconn.backend_pid``
    is the gateway's pid; in session mode it is the real one (see
    docs/pooling-semantics.md and test_session_backend_key.py)."""
    app = await gateway_app(databases={"app": {"pool_mode": mode}})
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    async with await psycopg.AsyncConnection.connect(dsn) as killer:
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            await conn.execute("begin")  # pins the server in transaction mode too
            pid = (await (await conn.execute("select pg_backend_pid()")).fetchone())[0]
            assert (pid == conn.pgconn.backend_pid) == (mode == "session")  # BackendKeyData's pid
            row = await (await killer.execute("select pg_terminate_backend(%s)", [pid])).fetchone()
            assert row == (True,)
            with pytest.raises(psycopg.OperationalError):
                await conn.execute("select 1")
            assert conn.broken
