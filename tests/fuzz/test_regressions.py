"""Every input that ever failed a fuzz campaign, replayed (tests/fuzz/regressions/<target>/).

Network inputs go to a real gateway (child process, the campaign's settings)
in front of the session cluster: the gateway must close the connection in
time, log no traceback, stay up and keep serving a normal client.  In-process
inputs (``inproc/``) are replayed through tests/fuzz/inproc.py in a child
process.  Inputs listed in ``regressions/known.json`` fail until a fix made
elsewhere lands: their replay is ``xfail`` (not strict, so that the fix's
merge does not turn this suite red; an XPASS says the entry should go).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import asyncpg
import pytest

from tests.fuzz.targets import (GATEWAY_SETTINGS, PASSWORD, REGRESSIONS, TARGETS, USER, read_input,
                                regression_files, send_input)
from tests.gatewayproc import GatewayProcess
from tests.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]
KNOWN: dict[str, str] = (json.loads((REGRESSIONS / "known.json").read_text())
                         if (REGRESSIONS / "known.json").exists() else {})


def _cases(targets: list[str]) -> list[Any]:
    out = []
    for target in targets:
        for p in regression_files(target):
            rel = f"{target}/{p.name}"
            # not strict: the fix lands in another branch, whose merge must not turn this suite red;
            # an XPASS here means the entry in known.json (and tests/fuzz/known.py) should go
            marks = [pytest.mark.xfail(strict=False, reason=KNOWN[rel])] if rel in KNOWN else []
            out.append(pytest.param(target, p, id=rel, marks=marks))
    return out


@pytest.fixture(scope="module")
def fuzz_gateway(pg: PgCluster) -> Iterator[GatewayProcess]:
    with GatewayProcess(pg, GATEWAY_SETTINGS) as gw:
        yield gw


NETWORK = _cases(list(TARGETS))


@pytest.mark.skipif(not NETWORK, reason="no network regression inputs saved yet")
@pytest.mark.parametrize("target,path", NETWORK)
async def test_network_input_replays_cleanly(fuzz_gateway: GatewayProcess, target: str, path: Path) -> None:
    gw = fuzz_gateway
    t = TARGETS[target]
    port = gw.pg_port if t.port == "pg" else gw.http_port
    assert port is not None
    offset = gw.log_size()
    out = await send_input(gw.host, port, t.wrap(read_input(path)))
    assert out.hung is None, f"{target}: {out.hung}"
    # a normal client is served after it (and the gateway has handled the input's connection by then)
    conn = await asyncpg.connect(gw.pg_dsn(USER, PASSWORD))
    try:
        assert await conn.fetchval("select 41 + 1") == 42
    finally:
        await conn.close()
    assert gw.alive()
    tbs = gw.tracebacks(offset)
    assert not tbs, "the gateway logged a traceback:\n" + "\n".join(tbs)


INPROC = _cases(["inproc"])


@pytest.fixture(scope="module")
def inproc_results() -> dict[str, str]:
    paths = [str(p.values[1]) for p in INPROC]
    if not paths:
        return {}
    out = subprocess.run([sys.executable, "-m", "tests.fuzz.inproc", "--replay", *paths],
                         capture_output=True, cwd=str(ROOT), timeout=300,
                         env=dict(os.environ, PYTHONPATH=str(ROOT), WIREPOOL_FUZZ_REPLAY="1"))
    assert out.returncode == 0, out.stderr.decode(errors="replace")[-3000:]
    return json.loads(out.stdout.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


@pytest.mark.skipif(not INPROC, reason="no in-process regression inputs saved yet")
@pytest.mark.parametrize("target,path", INPROC)
def test_inproc_input_replays_cleanly(inproc_results: dict[str, str], target: str, path: Path) -> None:
    assert inproc_results[str(path)] == "ok", inproc_results[str(path)]
