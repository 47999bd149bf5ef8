"""Test helpers for the pooling/auth/fault tests: a raw protocol client over
pg_listen (built on the driver's sans-I/O core) and pg_stat_activity probes."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import asyncpg

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from tests.pgcluster import PgCluster


class RawClient:
    """Speaks bytes to the gateway's pg_listen; decodes replies with the driver core."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.r = reader
        self.w = writer
        self.mr = MessageReader()
        self.msgs: list[Any] = []

    @classmethod
    async def connect(cls, port: int, host: str = "127.0.0.1") -> "RawClient":
        r, w = await asyncio.open_connection(host, port)
        return cls(r, w)

    async def send(self, data: bytes) -> None:
        self.w.write(data)
        await self.w.drain()

    async def recv_message(self, timeout: float = 10.0) -> Any:
        """Next decoded backend message; None at EOF."""
        while not self.msgs:
            data = await asyncio.wait_for(self.r.read(65536), timeout)
            if not data:
                return None
            self.mr.feed(data)
            self.msgs.extend(m.decode_backend(t, b) for t, b in self.mr.read())
        return self.msgs.pop(0)

    async def until(self, kind: type, timeout: float = 10.0) -> list[Any]:
        """Messages up to and including the first of type ``kind`` (or an
        ErrorResponse / EOF when ``kind`` never comes)."""
        out: list[Any] = []
        while True:
            msg = await self.recv_message(timeout)
            if msg is None:
                return out
            out.append(msg)
            if isinstance(msg, kind):
                return out

    async def read_to_eof(self, timeout: float = 10.0) -> list[Any]:
        out = []
        while True:
            msg = await self.recv_message(timeout)
            if msg is None:
                return out
            out.append(msg)

    async def login(self, user: str, password: str | None, database: str,
                    **params: str) -> list[Any]:
        """Startup + password/SCRAM/md5 login; returns messages up to ReadyForQuery."""
        from driver.protocol import auth as pg_auth

        await self.send(m.startup_message({"user": user, "database": database, **params}))
        scram = None
        out: list[Any] = []
        while True:
            msg = await self.recv_message()
            if msg is None:
                return out
            out.append(msg)
            if isinstance(msg, m.AuthenticationRequest):
                if msg.code == m.AUTH_CLEARTEXT_PASSWORD:
                    await self.send(m.password_message(password or ""))
                elif msg.code == m.AUTH_MD5_PASSWORD:
                    await self.send(m.password_message(pg_auth.md5_password(user, password or "", msg.data[:4])))
                elif msg.code == m.AUTH_SASL:
                    scram = pg_auth.ScramClient(user, password or "")
                    await self.send(m.sasl_initial_response(scram.mechanism, scram.client_first()))
                elif msg.code == m.AUTH_SASL_CONTINUE:
                    assert scram is not None
                    await self.send(m.sasl_response(scram.handle_server_first(msg.data)))
            elif isinstance(msg, (m.ReadyForQuery, m.ErrorResponse)):
                return out

    async def query(self, sql: str) -> list[Any]:
        await self.send(m.query(sql))
        return await self.until(m.ReadyForQuery)

    def abort(self) -> None:
        """Vanish without a Terminate (RST)."""
        self.w.transport.abort()

    async def close(self) -> None:
        self.w.close()
        try:
            await self.w.wait_closed()
        except (OSError, ConnectionError):
            pass


def errors(msgs: list[Any]) -> list[m.ErrorResponse]:
    return [x for x in msgs if isinstance(x, m.ErrorResponse)]


def rows(msgs: list[Any]) -> list[tuple[str | None, ...]]:
    return [tuple(None if v is None else v.decode() for v in x.values) for x in msgs if isinstance(x, m.DataRow)]


async def admin(pg: PgCluster, database: str = PgCluster.DATABASE) -> asyncpg.Connection:
    """A direct superuser connection (not through the gateway)."""
    return await asyncpg.connect(**pg.connect_kwargs(pg.SUPERUSER, pg.SUPERUSER_PASSWORD, database))


async def backends(conn: asyncpg.Connection, datname: str, state: str | None = None) -> list[asyncpg.Record]:
    sql = ("SELECT pid, state, query FROM pg_stat_activity WHERE datname = $1 "
           "AND backend_type = 'client backend' AND pid <> pg_backend_pid()")
    args: list[Any] = [datname]
    if state is not None:
        sql += " AND state = $2"
        args.append(state)
    return await conn.fetch(sql, *args)


async def eventually(pred: Callable[[], Awaitable[bool] | bool], timeout: float = 10.0,
                     what: str = "condition") -> None:
    """Poll an observable state until true (bounded): used only to wait for
    effects the gateway performs asynchronously (rollback, reconnect...)."""
    deadline = time.monotonic() + timeout
    while True:
        r = pred()
        if asyncio.iscoroutine(r) or isinstance(r, Awaitable):
            r = await r  # type: ignore[misc]
        if r:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def pool_stats(app: Any, db: str = "app") -> dict[str, Any]:
    return app.gateway.stats()["pools"][db]
