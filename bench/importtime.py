"""``python -m bench importtime``: cold import time of the driver vs asyncpg.

Each sample is a fresh interpreter (``python -c``) timing, with
``time.perf_counter`` and ``time.process_time`` around the import, one of:

- ``driver``: ``import driver`` (the package; everything else loads on use);
- ``driver+connect``: ``import driver; driver.connect`` (what a program needs
  before its first connection: the connection machinery, protocol, codecs);
- ``asyncpg``: ``import asyncpg`` (its package loads everything up front).

asyncio is part of every figure (asyncpg and ``driver.connect`` import it).
Samples alternate between the cases so load on the machine hits all alike;
prints median, min and max (the spread) in ms and each median's ratio to
asyncpg's.  ``--pyodide`` also times ``import driver`` / ``driver.connect``
inside Pyodide under Node (needs tests/js/node_modules with pyodide).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CASES = {
    "driver": "import driver",
    "driver+connect": "import driver; driver.connect",
    "asyncpg": "import asyncpg",
}

_PROBE = ("import time; w = time.perf_counter(); c = time.process_time(); {stmt}; "
          "print(time.perf_counter() - w, time.process_time() - c)")


def sample(stmt: str) -> tuple[float, float]:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", _PROBE.format(stmt=stmt)], cwd=REPO, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]) * 1000, float(out[1]) * 1000


def pyodide_samples(runs: int) -> dict[str, list[float]] | None:
    node_modules = REPO / "tests" / "js" / "node_modules" / "pyodide"
    if not node_modules.exists():
        return None
    script = r"""
const { loadPyodide } = require("pyodide");
(async () => {
  const py = await loadPyodide();
  py.mountNodeFS("/repo", process.argv[2]);
  py.runPython("import sys; sys.path.insert(0, '/repo'); import asyncio, json");
  const src = process.argv[3];
  console.log(py.runPython(src));
})();
"""
    js = REPO / "tests" / "js" / "_bench_importtime.cjs"
    js.write_text(script)
    out: dict[str, list[float]] = {"driver": [], "driver+connect": []}
    try:
        for _ in range(runs):
            for name, stmt in (("driver", "import driver"),
                               ("driver+connect", "import driver; driver.connect")):
                src = ("import time\nw = time.perf_counter()\n" + stmt.replace("; ", "\n")
                       + "\nstr((time.perf_counter() - w) * 1000)")
                r = subprocess.run(["node", str(js), str(REPO), src], capture_output=True,
                                   text=True, cwd=REPO / "tests" / "js", timeout=120)
                out[name].append(float(r.stdout.strip().splitlines()[-1]))
    finally:
        js.unlink()
    return out


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench importtime", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="fresh interpreters per case")
    ap.add_argument("--pyodide", action="store_true", help="also time it inside Pyodide")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    a = ap.parse_args(argv)
    wall: dict[str, list[float]] = {k: [] for k in CASES}
    cpu: dict[str, list[float]] = {k: [] for k in CASES}
    for name, stmt in CASES.items():
        sample(stmt)  # warm the OS file cache and the .pyc files
    for _ in range(a.runs):
        for name, stmt in CASES.items():
            w, c = sample(stmt)
            wall[name].append(w)
            cpu[name].append(c)
    result = {name: {"wall": summary(wall[name]), "cpu": summary(cpu[name])} for name in CASES}
    pyo = pyodide_samples(max(3, a.runs // 3)) if a.pyodide else None
    if a.json:
        print(json.dumps({"cpython": result, "pyodide": pyo and
                          {k: summary(v) for k, v in pyo.items()}}, indent=2))
        return 0
    base = result["asyncpg"]["wall"]["median"]
    base_cpu = result["asyncpg"]["cpu"]["median"]
    print(f"CPython {sys.version.split()[0]}, {a.runs} fresh interpreters per case (ms)")
    print(f"{'case':16} {'wall median':>11} {'min':>7} {'max':>7} {'cpu median':>11} "
          f"{'vs asyncpg':>10}")
    for name in CASES:
        w, c = result[name]["wall"], result[name]["cpu"]
        print(f"{name:16} {w['median']:11.1f} {w['min']:7.1f} {w['max']:7.1f} "
              f"{c['median']:11.1f} {w['median'] / base:9.2f}x (cpu {c['median'] / base_cpu:.2f}x)")
    if pyo is not None:
        print(f"Pyodide under Node, {len(pyo['driver'])} runs (ms)")
        for name, values in pyo.items():
            s = summary(values)
            print(f"{name:16} {s['median']:11.1f} {s['min']:7.1f} {s['max']:7.1f}")
    elif a.pyodide:
        print("Pyodide: tests/js/node_modules/pyodide is missing (see tests/pyodide)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
