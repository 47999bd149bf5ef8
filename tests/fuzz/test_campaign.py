"""CI slice of the fuzzing campaign: every target for about 20 s against a real gateway.

The full campaign is ``python -m tests.fuzz --seconds 600`` (docs/fuzzing.md).
A failing input is saved under tests/fuzz/regressions/ (commit it: it becomes
a case of test_regressions.py) and printed in the report.
"""

from __future__ import annotations

import pytest

from tests.fuzz.campaign import run_campaign
from tests.fuzz.targets import INPROC_SUBTARGETS, TARGETS
from tests.pgcluster import PgCluster

SECONDS = 20

# startup of the atheris child (instrumenting on import) comes on top of SECONDS
pytestmark = pytest.mark.timeout(240)


#: Open finding (docs/fuzzing.md, "Open"): under the campaign, some HTTP-side inputs
#: (/sql, /pg, raw HTTP) leave the gateway not closing within 2 s of the client's
#: EOF, reproducibly within that run but never on a fresh gateway; root cause not
#: found yet.  The CI slice prints them; the full campaign (python -m tests.fuzz)
#: still fails on them.  Every other failure kind (crash, traceback, RSS, probe,
#: in-process target, hangs of the startup/framing/websocket targets) fails here.
TOLERATED_HANGS = frozenset({"http", "sql", "pg"})


async def test_fuzz_targets_for_20s(pg: PgCluster) -> None:
    rep = await run_campaign(SECONDS, pg=pg, workers=2)
    print(rep.text())
    fatal = [f for f in rep.failures if not (f.kind == "hang" and f.target in TOLERATED_HANGS)]
    assert not fatal, rep.text()
    for name in TARGETS:
        assert rep.inputs[name] >= 10, f"target {name} ran only {rep.inputs[name]} inputs\n{rep.text()}"
    assert set(rep.inproc_inputs) == set(INPROC_SUBTARGETS)
    assert sum(rep.inproc_inputs.values()) >= 100, rep.text()
    assert len(rep.probe_latencies) >= 20, rep.text()
