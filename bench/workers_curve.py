"""``python -m bench workers``: the gateway with 1 vs 2 (or more) workers, burst and steady.

    python -m bench workers [--workers 1,2] [--targets gateway-tcp,gateway-ws] [--repeat 2] [--quick] [--out DIR]

Runs bench/harness.py's ``burst`` and ``steady`` scenarios (same load generator,
same private PostgreSQL with max_connections = 100, same pool_size) once per
worker count, ``--repeat`` times, alternating the worker counts so drift
(thermal, other load) hits both alike.  Prints each figure's median and spread
(min..max over the repeats), and the ratio of N workers to 1 worker, with the
machine's core count: on a 2-core machine the load generator and PostgreSQL
share the cores with the gateway, so 2 workers can at best absorb the CPU the
single process left idle.  ``pooler_cpu_s`` sums the supervisor and its workers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from . import env as E
from .harness import Run, Sizes, machine_info, scenario_burst, scenario_steady
from .report import Progress, write_json

#: figure per scenario: (key, higher is better)
FIGURES = {"burst": [("sessions_per_s", True), ("p50_ms", False), ("p99_ms", False), ("pooler_cpu_s", False)],
           "steady": [("tps", True), ("p50_ms", False), ("p99_ms", False), ("pooler_cpu_s", False)]}


def _cpu_per_unit(row: dict[str, Any]) -> float | None:
    cpu = row.get("pooler_cpu_s")
    n = row.get("completed")
    if not cpu or not n:
        return None
    return 1000.0 * cpu / n  # ms of gateway CPU per session (burst) / per transaction (steady)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench workers", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare (default 1,2)")
    ap.add_argument("--targets", default="gateway-tcp,gateway-ws")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sessions", type=int)
    ap.add_argument("--clients", type=int)
    ap.add_argument("--duration", type=float)
    ap.add_argument("--out", default=str(E.REPO / "bench" / "results" / "workers"))
    a = ap.parse_args(argv)
    counts = [int(x) for x in a.workers.split(",")]
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    sizes = Sizes.quick() if a.quick else Sizes()
    sizes.pgbench = False
    for attr, val in (("sessions", a.sessions), ("clients", a.clients), ("duration", a.duration)):
        if val is not None:
            setattr(sizes, attr, val)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    steps = a.repeat * len(counts) * len(targets) * 2
    run = Run(sizes=sizes, targets=targets, out=out, progress=Progress(steps))
    meta = machine_info()
    meta.update({"argv": ["python", "-m", "bench", "workers", *(argv if argv is not None else sys.argv[1:])],
                 "sizes": sizes.__dict__, "workers": counts})
    t0 = time.monotonic()
    try:
        run.cluster = E.BenchCluster(scram_iterations=sizes.scram_iterations)
        for rep in range(a.repeat):
            for n in (counts if rep % 2 == 0 else list(reversed(counts))):
                run.gateway_kw = {"extra": {"workers": n}, "pool_size": E.POOL_SIZE}
                for scenario in (scenario_burst, scenario_steady):
                    first = len(run.rows)
                    scenario(run)
                    for row in run.rows[first:]:
                        row.update(workers=n, repeat=rep)
    finally:
        if run.cluster is not None:
            run.cluster.close()
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    write_json(out, run.rows, {}, meta)
    text = report(run.rows, counts, meta)
    (out / "results.md").write_text(text)
    print(text)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}")
    return 0


def report(rows: list[dict[str, Any]], counts: list[int], meta: dict[str, Any]) -> str:
    lines = [f"machine: {meta.get('cpu')}, {meta.get('cores')} cores; load average at start "
             f"{meta.get('loadavg_at_start')}, at end {meta.get('loadavg_at_end')}", "",
             "| scenario | target | figure | " + " | ".join(f"{n} worker{'s' if n > 1 else ''}" for n in counts)
             + f" | {counts[-1]}w / {counts[0]}w |",
             "|---|---|---|" + "---|" * (len(counts) + 1)]
    for scen, figs in FIGURES.items():
        for target in dict.fromkeys(r["target"] for r in rows if r.get("scenario") == scen):
            got = {n: [r for r in rows if r.get("scenario") == scen and r["target"] == target
                       and r.get("workers") == n and not r.get("absent_reason")] for n in counts}
            if not all(got.values()):
                why = next((r.get("absent_reason") for r in rows if r.get("scenario") == scen
                            and r["target"] == target and r.get("absent_reason")), "no rows")
                lines.append(f"| {scen} | {target} | absent: {why} |" + " |" * (len(counts) + 1))
                continue
            series = [(k, hib, {n: [r.get(k) for r in got[n]] for n in counts}) for k, hib in figs]
            series.append(("gateway_cpu_ms_per_unit", False, {n: [_cpu_per_unit(r) for r in got[n]] for n in counts}))
            for key, _hib, vals in series:
                cells = []
                med: dict[int, float | None] = {}
                for n in counts:
                    v = [x for x in vals[n] if isinstance(x, (int, float))]
                    med[n] = statistics.median(v) if v else None
                    cells.append(f"{med[n]:.3g} ({min(v):.3g}..{max(v):.3g})" if v else "-")
                lo, hi = med[counts[0]], med[counts[-1]]
                ratio = f"{hi / lo:.2f}x" if lo and hi is not None else "-"
                lines.append(f"| {scen} | {target} | {key} | " + " | ".join(cells) + f" | {ratio} |")
    lines.append("")
    lines.append("median (min..max) over the repeats; failed sessions: "
                 + json.dumps({f"{r['scenario']}/{r['target']}/w{r.get('workers')}": r.get("failed")
                               for r in rows if r.get("failed")}))
    return "\n".join(lines) + "\n"
