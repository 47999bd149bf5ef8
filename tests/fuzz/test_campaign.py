"""CI slice of the fuzzing campaign: every target for about 20 s against a real gateway.

The full campaign is ``python -m tests.fuzz --seconds 600`` (docs/fuzzing.md).
A failing input is written to a temporary directory named in the report
(never into the checkout: ``python -m tests.fuzz --save-regressions`` does
that, to commit it as a case of test_regressions.py).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from tests.fuzz.campaign import run_campaign
from tests.fuzz.targets import (GATEWAY_SETTINGS, HANG_SECONDS, INPROC_SUBTARGETS, PASSWORD, TARGETS,
                                wrap_sql)
from tests.gatewayproc import GatewayProcess
from tests.pgcluster import PgCluster

SECONDS = 20
ROOT = Path(__file__).resolve().parents[2]

# startup of the atheris child (instrumenting on import) comes on top of SECONDS
pytestmark = pytest.mark.timeout(240)


def _untracked() -> set[str]:
    """Untracked files under tests/fuzz (empty outside a git checkout)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all", "--", "tests/fuzz"],
                             cwd=ROOT, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return set()
    return {ln[3:] for ln in out.splitlines() if ln.startswith("??")}


async def test_fuzz_targets_for_20s(pg: PgCluster) -> None:
    before = _untracked()
    rep = await run_campaign(SECONDS, pg=pg, workers=2)
    print(rep.text())
    assert not rep.failures, rep.text()
    for name in TARGETS:
        assert rep.inputs[name] >= 10, f"target {name} ran only {rep.inputs[name]} inputs\n{rep.text()}"
    assert set(rep.inproc_inputs) == set(INPROC_SUBTARGETS)
    assert sum(rep.inproc_inputs.values()) >= 100, rep.text()
    assert len(rep.probe_latencies) >= 20, rep.text()
    assert _untracked() == before, "the campaign wrote files into the checkout"


async def test_a_throttled_source_is_answered_within_the_hang_limit(pg: PgCluster) -> None:
    """The campaign's gateway settings vs the failed-login throttle: all targets
    connect from one address (TARGET_SOURCE) and some send wrong passwords, so that address is
    throttled for the whole run; a request with the right password must still
    be answered within HANG_SECONDS (with auth_failure_max_delay = 5 s, the
    default, it waited up to 5 s: the campaigns' "HTTP-side hangs", docs/fuzzing.md)."""
    bad = wrap_sql(b'{"query": "select 1"}').replace(PASSWORD.encode(), b"wrong-secret")
    assert bad != wrap_sql(b'{"query": "select 1"}')
    with GatewayProcess(pg, GATEWAY_SETTINGS) as gw:
        async def post(payload: bytes) -> bytes:
            r, w = await asyncio.open_connection(gw.host, gw.http_port)
            try:
                w.write(payload)
                return await asyncio.wait_for(r.read(), 30)
            finally:
                w.close()
        # one at a time (each one counted before the next is admitted): 11 failures
        # make the next attempt from this address wait 3.2 s before the default cap
        replies = [await post(bad) for _ in range(11)]
        codes = [x.rpartition(b'"code":"')[2][:5] for x in replies]
        assert codes == [b"28P01"] * 11, replies[:3]
        # the right password from that address: answered in time (the target's EOF is
        # not seen while the request is served when its bytes came in two segments)
        t0 = time.monotonic()
        reply = await post(wrap_sql(b'{"query": "select 1"}'))
        took = time.monotonic() - t0
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        assert took < HANG_SECONDS, f"answered after {took:.1f} s (HANG_SECONDS {HANG_SECONDS})"
