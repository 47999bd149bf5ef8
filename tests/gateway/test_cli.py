"""The ``wirepool`` command line, run as a real subprocess."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import tomllib
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "wirepool.example.toml"


def wirepool(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    e = dict(os.environ if env is None else env)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "gateway.cli", *args], capture_output=True, text=True,
                          cwd=ROOT, env=e, timeout=timeout)


def test_check_example_ok_and_masked() -> None:
    r = wirepool("check", "--config", str(EXAMPLE))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for secret in ("app-secret", "alice-secret", "SCRAM-SHA-256$4096"):
        assert secret not in out
        assert secret not in r.stderr
    shown = tomllib.loads(out)
    assert shown["gateway"]["listen"] == "127.0.0.1:8432"
    assert shown["gateway"]["pg_listen"] == "127.0.0.1:6432"
    assert shown["gateway"]["query_wait_timeout"] == 120.0   # defaults are filled in
    assert shown["databases"]["app"]["password"] == "***"
    assert shown["databases"]["app"]["pool_size"] == 5
    assert shown["users"]["alice"]["password"] == "***"


def test_check_error_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[gateway]\ndefault_pool_size = -3\n[databases.app]\nuser = "app"\npassword = "topsecret"\n')
    r = wirepool("check", "--config", str(p))
    assert r.returncode == 2
    assert r.stderr.strip() == "error: gateway.default_pool_size: must be >= 1, got -3"
    assert "topsecret" not in r.stdout + r.stderr


def test_check_unknown_key_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[databases.app]\nuser = "app"\nport = 5432\nsize = 3\n')
    r = wirepool("check", "--config", str(p))
    assert r.returncode == 2
    assert r.stderr.startswith("error: databases.app.size: unknown key")
    r = wirepool("check", "--config", str(tmp_path / "nope.toml"))
    assert r.returncode == 2 and "not found" in r.stderr


def test_check_invalid_toml(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("[gateway]\nlisten = \n")
    r = wirepool("check", "--config", str(p))
    assert r.returncode == 2 and r.stderr.startswith("error: invalid TOML")


def test_serve_bad_config_exit_2(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text('[gateway]\nauth_type = "plain"\n[databases.app]\nuser = "app"\n')
    r = wirepool("serve", "--config", str(p))
    assert r.returncode == 2
    assert r.stderr.strip().startswith("error: gateway.auth_type: unknown value 'plain'")


# --------------------------------------------------------------------------- embedded mode



async def _read_until(stream: asyncio.StreamReader, marker: str, timeout: float) -> str:
    out = ""
    async def go() -> str:
        nonlocal out
        while marker not in out:
            line = await stream.readline()
            if not line:
                raise AssertionError(f"process output ended before {marker!r}:\n{out}")
            out += line.decode()
        return out
    return await asyncio.wait_for(go(), timeout)


async def _serve_embedded_once(home: Path) -> tuple[str, str]:
    """Start ``wirepool serve`` (no config), check it, SIGTERM it; return (psql url, stderr)."""
    env = dict(os.environ)
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"),
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    for k in list(env):
        if k.startswith("PG"):
            del env[k]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "serve", "--listen", "127.0.0.1:0", "--pg-listen", "127.0.0.1:0",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = await _read_until(proc.stdout, "SIGTERM", 120)
        m = re.search(r"psql (postgresql://app:\S+@127\.0\.0\.1:(\d+)/app)", out)
        assert m, out
        psql_url = m.group(1)
        ws = re.search(r"driver:\s+(ws://app:\S+@127\.0\.0\.1:(\d+)/app)", out)
        assert ws, out
        assert "neonConfig.wsProxy" in out and "@neondatabase/serverless" in out
        http_port = int(ws.group(2))
        health = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10).status)
        assert health == 200
        r = await asyncio.to_thread(
            subprocess.run, ["psql", "-X", "-A", "-t", "-c", "select 40 + 2", psql_url],
            capture_output=True, text=True, timeout=60, env=env)
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == "42"
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 60)
        err = (await proc.stderr.read()).decode()
        assert rc == 0, err
        return psql_url, err
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_serve_embedded() -> None:
    # Not pytest's tmp_path: its parents are 0700 and, as root, the postgres
    # user must be able to reach the data directory.
    home = Path(tempfile.mkdtemp(prefix="wirepool-embedded-"))
    os.chmod(home, 0o755)
    try:
        url1, err = await _serve_embedded_once(home)
        base = home / "data" / "wirepool"
        assert (base / "pgdata" / "PG_VERSION").exists()
        creds = base / "credentials.json"
        assert stat.S_IMODE(creds.stat().st_mode) == 0o600
        password = url1.split(":")[2].split("@")[0]
        assert password not in err                       # secrets are not logged
        assert not (base / "pgdata" / "postmaster.pid").exists()   # PostgreSQL stopped cleanly
        # A second run reuses the data and the generated credentials.
        url2, _ = await _serve_embedded_once(home)
        assert url2.split("@")[0] == url1.split("@")[0]
        assert not (base / "pgdata" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
