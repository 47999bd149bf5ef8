"""Running the real JavaScript clients (tests/js, npm) from pytest.

node is installed on every machine of this project and .ci/run runs
``npm install`` in tests/js, so a missing one is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent.parent / "js"


async def run_node_json(script: str, *args: str, timeout: float = 60,
                        env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``node tests/js/<script> args...`` without blocking the event loop
    (the gateway under test runs in it) and return the last JSON line it prints.
    ``env``: extra environment (e.g. NODE_EXTRA_CA_CERTS for a test CA)."""
    node = shutil.which("node")
    assert node is not None, "node is required for this test (it is installed on every project machine)"
    assert (JS_DIR / "node_modules" / "@neondatabase" / "serverless").is_dir(), \
        "run `npm install` in tests/js (.ci/run does)"
    proc = await asyncio.create_subprocess_exec(
        node, str(JS_DIR / script), *args,
        cwd=str(JS_DIR), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "NODE_NO_WARNINGS": "1", **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode == 0, f"node exited {proc.returncode}: {err.decode(errors='replace')}"
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    assert lines, f"no JSON from the script: {out!r} {err!r}"
    result: dict[str, Any] = json.loads(lines[-1])
    return result
