"""TLS on every hop (issue 11): https:// and wss:// on ``listen``, SSLRequest on
``pg_listen`` (psql sslmode=verify-full), TLS to an upstream that only accepts
``hostssl``, and certificate reloads without a restart.

Certificates are generated at test time (tests/tls_certs.py, openssl CLI).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import pytest

import driver
from gateway.server import ServerError, open_server
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD, build_config
from tests.gateway.node_helpers import run_node_json
from tests.pgcluster import PgCluster, free_port
from tests.tls_certs import Pki, issue, make_pki

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def pki() -> Iterator[Pki]:
    # Not tmp_path: as root, the postgres user must be able to read the files.
    d = Path(tempfile.mkdtemp(prefix="wirepool-pki-"))
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _tls_app(gateway_app: Any, pki: Pki, **kw: Any) -> Any:
    return await gateway_app(tls_cert_file=str(pki.cert), tls_key_file=str(pki.key), **kw)


async def _peer_cert(port: int, ctx: ssl.SSLContext, host: str = "localhost") -> bytes:
    """DER of the certificate the server presents on ``port`` (TLS directly)."""
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=host)
    try:
        der = w.get_extra_info("ssl_object").getpeercert(binary_form=True)
        assert der
        return bytes(der)
    finally:
        w.close()


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


async def _https_get(port: int, path: str, ctx: ssl.SSLContext) -> tuple[int, bytes]:
    r, w = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        raw = await asyncio.wait_for(r.read(), 10)
    finally:
        w.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


# ------------------------------------------------------------------ listen: https + wss

async def test_wss_and_https_with_the_driver(gateway_app: Any, pki: Pki) -> None:
    app = await _tls_app(gateway_app, pki)
    port = app.http_port
    assert app.ws_url.startswith("wss://") and app.http_url.startswith("https://")
    ca = str(pki.ca)
    for scheme in ("wss", "https"):
        # verify-full (the default for wss/https) against the test CA via the DSN's sslrootcert
        dsn = f"{scheme}://alice:{ALICE_PASSWORD}@localhost:{port}/app?sslrootcert={ca}"
        conn = await driver.connect(dsn, statement_cache_size=0)
        try:
            assert conn.transport.secure
            assert await conn.fetchval("select $1::text", f"over {scheme}") == f"over {scheme}"
            async with conn.transaction():
                assert await conn.fetchval("select 2") == 2
        finally:
            await conn.close()
        # an ssl= context works too (bob: SCRAM verifier user)
        conn = await driver.connect(f"{scheme}://bob:{BOB_PASSWORD}@localhost:{port}/app",
                                    ssl=pki.client_context(), statement_cache_size=0)
        try:
            assert await conn.fetchval("select 3") == 3
        finally:
            await conn.close()
        # the system trust store does not know the test CA: refused, nothing leaks
        with pytest.raises(Exception, match="(?i)certificate|ssl"):
            await driver.connect(f"{scheme}://alice:{ALICE_PASSWORD}@localhost:{port}/app", timeout=10)
    # /healthz over https; a plaintext request on the TLS port is not served
    status, body = await _https_get(port, "/healthz", pki.client_context())
    assert (status, body) == (200, b"ok\n")
    r, w = await asyncio.open_connection("127.0.0.1", port)
    w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    got = await asyncio.wait_for(r.read(), 10)
    w.close()
    assert b"200" not in got


async def test_neon_driver_over_wss(gateway_app: Any, pg: Any, pg_db: str, pki: Pki) -> None:
    pg.psql("CREATE TABLE neon_rb (x int); GRANT ALL ON neon_rb TO PUBLIC;", db=pg_db)
    app = await _tls_app(gateway_app, pki, databases={"app": {"dbname": pg_db, "pool_size": 2}})
    out = await run_node_json("neon_ws.mjs", f"localhost:{app.http_port}",
                              f"postgresql://alice:{ALICE_PASSWORD}@db.invalid:5432/app", "false", "secure",
                              env={"NODE_EXTRA_CA_CERTS": str(pki.ca)})
    assert "fatal" not in out, out
    assert out["typed"]["i"] == 42 and out["rollback"] == {"inside": 1, "after": 0}
    assert out["concurrent"] == [2, 4, 6, 8, 10]
    assert out["error"]["code"] == "42P01"
    # without the CA, Node refuses the certificate
    bad = await run_node_json("neon_ws.mjs", f"localhost:{app.http_port}",
                              f"postgresql://alice:{ALICE_PASSWORD}@db.invalid:5432/app", "false", "secure")
    assert "fatal" in bad, bad


# ----------------------------------------------------------------- pg_listen: SSLRequest

def _psql(app: Any, pki: Pki, sslmode: str, host: str = "localhost",
          sql: str = "\\conninfo") -> subprocess.CompletedProcess[str]:
    conninfo = (f"host={host} port={app.pg_port} dbname=app user=alice sslmode={sslmode} "
                f"sslrootcert={pki.ca}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGPASSWORD"] = ALICE_PASSWORD
    return subprocess.run(["psql", "-X", "-A", "-t", "-c", sql, conninfo], capture_output=True, text=True,
                          timeout=60, env=env)


async def test_psql_verify_full_through_pg_listen(gateway_app: Any, pki: Pki) -> None:
    app = await _tls_app(gateway_app, pki, auth_type="scram-sha-256")
    r = await asyncio.to_thread(_psql, app, pki, "verify-full")
    assert r.returncode == 0, r.stderr
    assert "SSL connection" in r.stdout, r.stdout
    r = await asyncio.to_thread(_psql, app, pki, "verify-full", "localhost", "select 40 + 2")
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
    # the certificate names localhost and 127.0.0.1, not other names
    r = await asyncio.to_thread(_psql, app, pki, "verify-full", "127.0.0.1")
    assert r.returncode == 0, r.stderr
    # sslmode=disable still works on pg_listen (TLS offered, not forced)
    r = await asyncio.to_thread(_psql, app, pki, "disable")
    assert r.returncode == 0 and "SSL connection" not in r.stdout, (r.stdout, r.stderr)


async def test_psql_verify_full_rejects_a_foreign_ca(gateway_app: Any, pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    app = await gateway_app(tls_cert_file=str(other.cert), tls_key_file=str(other.key))
    r = await asyncio.to_thread(_psql, app, pki, "verify-full")
    assert r.returncode != 0 and "certificate verify failed" in r.stderr, r.stderr


# ------------------------------------------------------------------------ upstream TLS

@pytest.fixture(scope="module")
def ssl_cluster(pki: Pki) -> Iterator[PgCluster]:
    cluster = PgCluster({"ssl": "on", "ssl_cert_file": str(pki.cert), "ssl_key_file": str(pki.key)},
                        hostssl_only=True)
    try:
        yield cluster
    finally:
        cluster.cleanup()


async def _upstream_ssl(gateway_app: Any, cluster: PgCluster, **db: Any) -> tuple[Any, str]:
    cfg = build_config(cluster, databases={"app": db})
    app = await gateway_app(config=cfg)
    conn = await driver.connect(app.ws_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    try:
        return app, str(await conn.fetchval(
            "select ssl::text || ' ' || version from pg_stat_ssl where pid = pg_backend_pid()"))
    finally:
        await conn.close()


async def test_upstream_hostssl_only(gateway_app: Any, ssl_cluster: PgCluster, pki: Pki) -> None:
    # verify-full: chain against sslrootcert and the host name (localhost)
    _, got = await _upstream_ssl(gateway_app, ssl_cluster, host="localhost", sslmode="verify-full",
                                 sslrootcert=str(pki.ca))
    assert got.startswith("true TLSv1."), got
    # 127.0.0.1 is in the certificate too
    _, got = await _upstream_ssl(gateway_app, ssl_cluster, sslmode="verify-full", sslrootcert=str(pki.ca))
    assert got.startswith("true"), got
    for mode in ("require", "prefer", "verify-ca"):
        _, got = await _upstream_ssl(gateway_app, ssl_cluster, sslmode=mode, sslrootcert=str(pki.ca))
        assert got.startswith("true"), (mode, got)


async def test_upstream_tls_failures_are_clean_errors(gateway_app: Any, ssl_cluster: PgCluster, pg: PgCluster,
                                                      pki: Pki, tmp_path: Path) -> None:
    other = make_pki(tmp_path / "other")
    cases = [
        (ssl_cluster, {"sslmode": "disable"}, "no pg_hba.conf entry"),  # hostssl only: refused in clear
        (ssl_cluster, {"sslmode": "verify-full", "sslrootcert": str(other.ca)}, "CERTIFICATE_VERIFY_FAILED"),
        (ssl_cluster, {"sslmode": "verify-full"}, "CERTIFICATE_VERIFY_FAILED"),  # the system store
        (pg, {"sslmode": "require"}, "does not support TLS"),  # a server without ssl
    ]
    for cluster, db, expect in cases:
        app = await gateway_app(config=build_config(cluster, databases={"app": {**db, "pool_size": 1}},
                                                    server_login_retry=0.1, query_wait_timeout=5))
        pool = app.gateway.pools["app"]
        d = pool.db
        with pytest.raises(ServerError) as ei:
            await open_server(pool, d.host, d.port, d.user, d.password, d.dbname, d.sslmode, d.sslrootcert)
        assert ei.value.sqlstate in ("08006", "28000") and expect in ei.value.message, (db, ei.value.message)
        # a client gets an error, not a hang
        with pytest.raises(driver.PostgresError):
            conn = await driver.connect(app.ws_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0,
                                        timeout=30)
            try:
                await conn.fetchval("select 1")
            finally:
                await conn.close()


# --------------------------------------------------------------------- certificate reload

async def _eventually_cert(port: int, want: bytes, ctx: ssl.SSLContext, timeout: float = 15) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = await _peer_cert(port, ctx)
        if got == want or loop.time() > deadline:
            return got
        await asyncio.sleep(0.05)


def _install(src: tuple[Path, Path], dst: tuple[Path, Path]) -> None:
    """Replace the served files the way deploy tools do (write + rename)."""
    for s, d in zip(src, dst):
        tmp = d.with_suffix(".tmp")
        shutil.copyfile(s, tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, d)


async def test_certificate_reloads_when_the_files_change(gateway_app: Any, pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    _install((pki.cert, pki.key), (cert, key))
    app = await gateway_app(tls_cert_file=str(cert), tls_key_file=str(key), tls_reload_interval=0.1)
    ctx = pki.client_context()
    assert await _peer_cert(app.http_port, ctx) == _der(pki.cert)
    # an open connection keeps working across the reload
    conn = await driver.connect(f"wss://alice:{ALICE_PASSWORD}@localhost:{app.http_port}/app?sslrootcert={pki.ca}",
                                statement_cache_size=0)
    new = issue(pki, "second")
    _install(new, (cert, key))
    assert await _eventually_cert(app.http_port, _der(new[0]), ctx) == _der(new[0])
    assert app.tls.reloads == 1
    assert await conn.fetchval("select 1") == 1
    await conn.close()
    # pg_listen serves the new certificate too
    r = await asyncio.to_thread(_psql, app, pki, "verify-full")
    assert r.returncode == 0 and "SSL connection" in r.stdout, r.stderr
    # a broken pair (key of another certificate) is refused; the previous one stays
    bad_cert, _ = issue(pki, "third")
    _install((bad_cert, pki.key), (cert, key))
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15
    while app.tls.reload_errors == 0 and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert app.tls.reload_errors == 1
    assert await _peer_cert(app.http_port, ctx) == _der(new[0])
    status, _ = await _https_get(app.http_port, "/healthz", ctx)
    assert status == 200


async def test_sighup_reloads_the_certificate_of_wirepool_serve(pg: PgCluster, pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    _install((pki.cert, pki.key), (cert, key))
    port, pg_port = free_port(), free_port()
    conf = tmp_path / "wirepool.toml"
    conf.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{port}"\npg_listen = "127.0.0.1:{pg_port}"\n'
        f'tls_cert_file = "{cert}"\ntls_key_file = "{key}"\ntls_reload_interval = 0\n'
        f'[databases.app]\nhost = "{pg.host}"\nport = {pg.port}\nuser = "{PgCluster.SCRAM_USER}"\n'
        f'password = "{PgCluster.SCRAM_PASSWORD}"\ndbname = "{PgCluster.DATABASE}"\n'
        f'[users.alice]\npassword = "{ALICE_PASSWORD}"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway.cli", "serve", "--config", str(conf),
                                                cwd=ROOT, env=env, stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.PIPE)
    ctx = pki.client_context()
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while True:
            try:
                first = await _peer_cert(port, ctx)
                break
            except OSError:
                assert loop.time() < deadline and proc.returncode is None, "wirepool serve did not start"
                await asyncio.sleep(0.1)
        assert first == _der(pki.cert)
        new = issue(pki, "hup")
        _install(new, (cert, key))
        proc.send_signal(signal.SIGHUP)
        assert await _eventually_cert(port, _der(new[0]), ctx) == _der(new[0])
        assert proc.returncode is None  # SIGHUP did not stop it
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 60) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_cancel_reaches_a_hostssl_only_upstream(gateway_app: Any, ssl_cluster: PgCluster, pki: Pki) -> None:
    app = await gateway_app(config=build_config(ssl_cluster, databases={"app": {
        "host": "localhost", "sslmode": "verify-full", "sslrootcert": str(pki.ca)}}))
    conn = await driver.connect(app.ws_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
    try:
        with pytest.raises(asyncio.TimeoutError):
            await conn.fetchval("select pg_sleep(30)", timeout=0.5)
        assert await conn.fetchval("select 5") == 5
    finally:
        await conn.close()


async def test_stalled_tls_handshake_is_cut_at_client_login_timeout(gateway_app: Any, pki: Pki) -> None:
    app = await _tls_app(gateway_app, pki, client_login_timeout=1.0)
    r, w = await asyncio.open_connection("127.0.0.1", app.http_port)
    try:
        w.write(b"\x16\x03\x01")  # the first bytes of a ClientHello, then nothing
        got = await asyncio.wait_for(r.read(), 15)  # EOF well before the 15 s
        assert got == b""
    finally:
        w.close()


@pytest.mark.parametrize("db, key, reason", [
    ({"sslmode": "verify"}, "databases.app.sslmode", "unknown value"),
    ({"sslmode": "require", "sslrootcert": "/nonexistent/ca.pem"}, "databases.app.sslrootcert", "not found"),
])
def test_upstream_tls_config_errors(db: dict[str, Any], key: str, reason: str) -> None:
    from gateway.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as ei:
        parse_config({"databases": {"app": {"user": "u", **db}}})
    assert ei.value.key == key and reason in ei.value.reason


def test_upstream_tls_config_defaults_and_relative_paths(tmp_path: Path) -> None:
    from gateway.config import load_config

    (tmp_path / "ca.pem").write_text("x")
    p = tmp_path / "w.toml"
    p.write_text('[databases.a]\nuser = "u"\n[databases.b]\nuser = "u"\nsslmode = "verify-full"\n'
                 'sslrootcert = "ca.pem"\n')
    cfg = load_config(p)
    assert (cfg.databases["a"].sslmode, cfg.databases["a"].sslrootcert) == ("prefer", None)
    assert (cfg.databases["b"].sslmode, cfg.databases["b"].sslrootcert) == ("verify-full", str(tmp_path / "ca.pem"))
