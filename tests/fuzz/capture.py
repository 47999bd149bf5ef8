"""Record what real clients send through the gateway: the seed corpora of the fuzz targets.

``python -m tests.fuzz.capture [--out tests/fuzz/seeds]`` starts a private
cluster and a gateway (``auth_type = "password"``, so a recorded login replays
byte for byte: no SCRAM nonce), puts a recording TCP proxy in front of its
``pg_listen`` and HTTP ports, and runs real clients through the proxies:

* asyncpg, psql and the driver over ``pg_listen``;
* the driver over WebSocket and over HTTP (``POST /pg``);
* the Neon serverless driver under Node over WebSocket and over HTTP (``POST /sql``).

The client-to-gateway bytes of every connection are then cut into seeds, one
file each (``<target>/<client>-<n>.bin``):

``startup``    the login phase of a pg_listen connection (SSLRequest, StartupMessage, PasswordMessage);
``framing``    what follows the login (queries, extended protocol, Terminate);
``websocket``  the WebSocket frames after the upgrade request;
``http``       each complete HTTP request (head + body);
``sql`` / ``pg``  the body of each ``POST /sql`` / ``POST /pg`` request.

Only seeds of at most ``MAX_SEED`` bytes are kept.  Re-run it when a client's
traffic changes; the seeds are small test data and are committed.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h11

from driver.protocol.framing import FrontendReader
from tests.gatewayproc import GatewayProcess
from tests.pgcluster import PgCluster

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
MAX_SEED = 8192
USER, PASSWORD = "alice", "alice-secret"


class RecordingProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; keeps each connection's client bytes."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.label = "?"
        self.recorded: list[tuple[str, bytearray]] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _conn(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        buf = bytearray()
        self.recorded.append((self.label, buf))
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def pump(r: asyncio.StreamReader, w: asyncio.StreamWriter, rec: bytearray | None) -> None:
            try:
                while data := await r.read(65536):
                    if rec is not None:
                        rec += data
                    w.write(data)
                    await w.drain()
            except ConnectionError:
                pass
            finally:
                try:
                    w.close()
                except Exception:
                    pass

        await asyncio.gather(pump(cr, uw, buf), pump(ur, cw, None))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


# --------------------------------------------------------------------------- clients

async def _asyncpg(dsn: str) -> None:
    import asyncpg
    c = await asyncpg.connect(dsn)
    await c.fetch("select $1::int + 1 as v, $2::text as t", 41, "héllo")
    st = await c.prepare("select generate_series(1, $1::int) as n")
    await st.fetch(3)
    async with c.transaction():
        await c.execute("create temp table fz(a int, b text)")
        await c.executemany("insert into fz values ($1, $2)", [(1, "a"), (2, None)])
    try:
        await c.execute("select * from no_such_table_fz")
    except asyncpg.PostgresError:
        pass
    await c.close()


def _psql(dsn: str) -> None:
    psql = shutil.which("psql")
    assert psql, "psql is required (postgresql-client)"
    subprocess.run([psql, dsn, "-X", "-q", "-c", "select 1 as one, 'x'::text as t", "-c",
                    "begin; select now(); commit;"], check=True, capture_output=True, timeout=30,
                   env={k: v for k, v in os.environ.items() if not k.startswith("PG")} | {"PGSSLMODE": "prefer"})


async def _driver(dsn: str) -> None:
    import driver
    c = await driver.connect(dsn)
    await c.fetch("select $1::int as i, $2::text as t, $3::bytea as b", 7, "x", b"\x00\xff")
    async with c.transaction():
        await c.execute("select 1")
    try:
        await c.fetch("select 1/0")
    except Exception:
        pass
    await c.close()


async def _node(script: str, *args: str) -> None:
    from tests.gateway.node_helpers import run_node_json
    out = await run_node_json(script, *args)
    assert "fatal" not in out, out


async def run_clients(pg: PgCluster, gw: GatewayProcess, pgp: RecordingProxy, httpp: RecordingProxy) -> None:
    pg.psql("CREATE TABLE IF NOT EXISTS neon_rb (x int); GRANT ALL ON neon_rb TO PUBLIC;"
            "CREATE TABLE IF NOT EXISTS neon_http_t (id int primary key, v text); "
            "GRANT ALL ON neon_http_t TO PUBLIC;", db=PgCluster.DATABASE)
    pg_dsn = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{pgp.port}/app"
    steps = [
        ("asyncpg", lambda: _asyncpg(pg_dsn + "?sslmode=disable")),
        ("psql", lambda: asyncio.to_thread(_psql, pg_dsn)),
        ("driver-tcp", lambda: _driver(pg_dsn + "?sslmode=disable")),
        ("driver-ws", lambda: _driver(f"ws://{USER}:{PASSWORD}@127.0.0.1:{httpp.port}/v2?dbname=app")),
        ("driver-http", lambda: _driver(f"http://{USER}:{PASSWORD}@127.0.0.1:{httpp.port}/app")),
        ("neon-ws", lambda: _node("neon_ws.mjs", f"127.0.0.1:{httpp.port}",
                                  f"postgresql://{USER}:{PASSWORD}@db.example/app", "password")),
        ("neon-http", lambda: _node("neon_http.mjs", f"http://127.0.0.1:{httpp.port}/sql",
                                    f"postgresql://{USER}:{PASSWORD}@db.example/app")),
    ]
    for label, step in steps:
        pgp.label = httpp.label = label
        await step()
        await asyncio.sleep(0.2)  # let the proxy see the last bytes of closing connections


# --------------------------------------------------------------------------- cutting seeds

def split_pg(stream: bytes) -> tuple[bytes, bytes]:
    """(login part, post-login part) of a pg_listen client stream: the untyped
    startup-phase messages and the PasswordMessages ('p') that follow them."""
    pos = 0
    while len(stream) - pos >= 8:  # untyped: int32 length, int32 code
        length = int.from_bytes(stream[pos:pos + 4], "big")
        code = int.from_bytes(stream[pos + 4:pos + 8], "big")
        pos += length
        if code not in (FrontendReader.SSL_REQUEST_CODE, FrontendReader.GSSENC_REQUEST_CODE):
            break
    while len(stream) - pos >= 5 and stream[pos] == ord("p"):
        pos += 1 + int.from_bytes(stream[pos + 1:pos + 5], "big")
    return stream[:pos], stream[pos:]


def split_http(stream: bytes) -> list[tuple[bytes, str, bytes]]:
    """[(raw request, path, body)] of one HTTP connection; a WebSocket upgrade
    yields (frames, "ws", b"")."""
    head_end = stream.find(b"\r\n\r\n")
    if head_end >= 0 and b"upgrade: websocket" in stream[:head_end].lower():
        return [(stream[head_end + 4:], "ws", b"")]
    out: list[tuple[bytes, str, bytes]] = []
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(stream)
    start = 0
    while True:
        path, body = "", bytearray()
        while True:
            ev = conn.next_event()
            if isinstance(ev, h11.Request):
                path = ev.target.decode(errors="replace").split("?")[0]
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                break
            else:
                return out
        end = len(stream) - len(conn.trailing_data[0])
        out.append((stream[start:end], path, bytes(body)))
        start = end
        conn.send(h11.Response(status_code=200, headers=[("content-length", "0")]))
        conn.send(h11.EndOfMessage())
        try:
            conn.start_next_cycle()
        except h11.LocalProtocolError:
            return out


def write_seeds(out_dir: Path, pgp: RecordingProxy, httpp: RecordingProxy) -> dict[str, int]:
    seeds: dict[str, dict[bytes, str]] = {t: {} for t in ("startup", "framing", "websocket", "http", "sql", "pg")}

    def add(target: str, label: str, data: bytes) -> None:
        if data and len(data) <= MAX_SEED and data not in seeds[target]:
            seeds[target][data] = label

    for label, buf in pgp.recorded:
        login, rest = split_pg(bytes(buf))
        add("startup", label, login)
        add("framing", label, rest)
    for label, buf in httpp.recorded:
        for raw, path, body in split_http(bytes(buf)):
            if path == "ws":
                add("websocket", label, raw)
                continue
            add("http", label, raw)
            if path == "/sql":
                add("sql", label, body)
            elif path.startswith("/pg") and not path.startswith("/pg/cancel"):
                add("pg", label, body)
    counts = {}
    for target, items in seeds.items():
        d = out_dir / target
        d.mkdir(parents=True, exist_ok=True)
        for old in d.glob("*.bin"):
            old.unlink()
        for data, label in items.items():
            (d / f"{label}-{hashlib.sha1(data).hexdigest()[:10]}.bin").write_bytes(data)
        counts[target] = len(items)
    return counts


async def capture(out_dir: Path) -> dict[str, int]:
    pg = PgCluster()
    try:
        with GatewayProcess(pg, {"auth_type": "password"}) as gw:
            assert gw.pg_port is not None
            pgp, httpp = RecordingProxy(gw.pg_port), RecordingProxy(gw.http_port)
            await pgp.start()
            await httpp.start()
            try:
                await run_clients(pg, gw, pgp, httpp)
            finally:
                await pgp.close()
                await httpp.close()
            return write_seeds(out_dir, pgp, httpp)
    finally:
        pg.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.capture", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=SEEDS)
    args = ap.parse_args(argv)
    counts = asyncio.run(capture(args.out))
    for target, n in counts.items():
        print(f"{target:10s} {n} seeds")
    return 0 if all(counts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
