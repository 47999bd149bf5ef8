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


async def test_fuzz_targets_for_20s(pg: PgCluster) -> None:
    rep = await run_campaign(SECONDS, pg=pg, workers=2)
    print(rep.text())
    assert rep.ok, rep.text()
    for name in TARGETS:
        assert rep.inputs[name] >= 10, f"target {name} ran only {rep.inputs[name]} inputs\n{rep.text()}"
    assert set(rep.inproc_inputs) == set(INPROC_SUBTARGETS)
    assert sum(rep.inproc_inputs.values()) >= 100, rep.text()
    assert len(rep.probe_latencies) >= 20, rep.text()
