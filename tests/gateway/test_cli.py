"""The ``wirepool`` command line, run as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
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
