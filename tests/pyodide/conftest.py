"""Helpers for running Python inside Pyodide under Node (see run_pyodide.cjs).

``run_pyodide(script, args, mounts=...)`` runs node as an asyncio subprocess
(the gateway under test lives in this event loop: never block it) and returns
the runner's JSON document.  Tests skip when node or the npm ``pyodide``
package is missing (``npm install`` in tests/js).
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

from tests.gateway.conftest import gateway_app  # noqa: F401  (re-exported fixture)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
RUNNER = HERE / "run_pyodide.cjs"
PYODIDE_PKG = ROOT / "tests" / "js" / "node_modules" / "pyodide" / "pyodide.asm.wasm"


def pyodide_available() -> str | None:
    """Why Pyodide cannot run here (None when it can)."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not PYODIDE_PKG.exists():
        return "npm package pyodide missing: run `npm install` in tests/js"
    return None


async def run_pyodide(script: Path | str, args: Any = None, *, mounts: dict[str, str] | None = None,
                      timeout: float = 90.0) -> dict[str, Any]:
    """Run ``script`` (a path, or Python source) in Pyodide; return the runner's JSON."""
    cmd = ["node", str(RUNNER)]
    if args is not None:
        cmd += ["--args", json.dumps(args)]
    for host_dir, mnt in (mounts or {}).items():
        cmd += ["--mount", f"{host_dir}={mnt}"]
    stdin = None
    if isinstance(script, Path):
        cmd.append(str(script))
    else:
        cmd.append("-")
        stdin = script.encode()
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    # (a Node crash prints the minified source line of Pyodide: drop such lines)
    err = b"\n".join(line if len(line) < 2000 else line[:200] + b" [...]" for line in err.splitlines())
    text = out.decode().strip().splitlines()
    if not text:
        raise AssertionError(f"pyodide runner printed nothing (rc={proc.returncode}); stderr:\n{err.decode()[-4000:]}")
    doc: dict[str, Any] = json.loads(text[-1])
    doc["stderr"] = err.decode()[-4000:]
    return doc


@pytest.fixture
def pyodide() -> Callable[..., Awaitable[dict[str, Any]]]:
    reason = pyodide_available()
    if reason is not None:
        pytest.skip(reason)
    return run_pyodide
