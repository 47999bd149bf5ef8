"""The driver and the gateway are typed: ``mypy --strict`` (configured in pyproject.toml) passes on both."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_mypy_strict_on_driver_and_gateway(tmp_path: Path) -> None:
    # One run for both packages: the gateway imports the driver, so checking it alone costs the same.
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "driver", "gateway"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success" in r.stdout
