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
asyncpg's.  ``--pyodide`` also times ``import driver`` / ``driver.connect`` /
what a first ``ws://`` connect and query import (``PYODIDE_CONNECT_PATH``)
inside Pyodide under Node (needs tests/js/node_modules with pyodide), with
the driver installed in Pyodide's in-memory file system and compiled to
bytecode there, as a wheel install would (``--pyodide-source``: no
bytecode); wall and CPU time of the Node process.
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


#: What the first ``await driver.connect("ws://...")`` and its first query
#: import inside Pyodide beyond ``driver.connect`` (pipelined password or API
#: token; a SCRAM login adds driver.protocol.auth and hashlib/hmac).
PYODIDE_CONNECT_PATH = ("driver.dsn", "driver.transport.pyodide", "driver.codecs")

PYODIDE_CASES = {
    "driver": "import driver",
    "driver+connect": "import driver; driver.connect",
    "ws connect+query": "import driver; driver.connect; "
                        + "; ".join(f"import {m}" for m in PYODIDE_CONNECT_PATH),
}

_PYODIDE_JS = r"""
const { loadPyodide } = require("pyodide");
(async () => {
  const py = await loadPyodide();
  py.mountNodeFS("/repo", process.argv[2]);
  console.log(py.runPython(process.argv[3]));
})();
"""

# Installed as a wheel would be: copied into Pyodide's in-memory file system
# (not read through the NODEFS mount), with bytecode compiled by Pyodide's own
# Python (a pip/micropip install with --compile; the host's .pyc files are for
# another Python version) unless --pyodide-source.
_PYODIDE_SETUP = """
import compileall, importlib, shutil, sys
shutil.copytree('/repo/driver', '/home/pyodide/site/driver',
                ignore=shutil.ignore_patterns('__pycache__'))
if {compile}:
    compileall.compile_dir('/home/pyodide/site/driver', quiet=1)
sys.path.insert(0, '/home/pyodide/site')
importlib.invalidate_caches()
import js, time
def _cpu():
    u = js.process.cpuUsage()
    return (u.user + u.system) / 1000
"""


def pyodide_samples(runs: int, compile_bytecode: bool = True) -> dict[str, list[float]] | None:
    """Per case, wall and CPU milliseconds (``<case>`` / ``<case> cpu``) in
    fresh Pyodide instances under Node; CPU is the Node process's
    (``process.cpuUsage``), steadier than wall time on a loaded machine."""
    node_modules = REPO / "tests" / "js" / "node_modules" / "pyodide"
    if not node_modules.exists():
        return None
    js = REPO / "tests" / "js" / "_bench_importtime.cjs"
    js.write_text(_PYODIDE_JS)
    out: dict[str, list[float]] = {}
    try:
        for _ in range(runs):
            for name, stmt in PYODIDE_CASES.items():
                src = (_PYODIDE_SETUP.format(compile=compile_bytecode)
                       + "w = time.perf_counter(); c = _cpu()\n" + stmt.replace("; ", "\n")
                       + "\nf'{(time.perf_counter() - w) * 1000} {_cpu() - c}'")
                r = subprocess.run(["node", str(js), str(REPO), src], capture_output=True,
                                   text=True, cwd=REPO / "tests" / "js", timeout=120)
                if r.returncode:
                    raise RuntimeError(f"Pyodide run failed: {r.stderr[-2000:]}")
                wall, cpu = r.stdout.strip().splitlines()[-1].split()
                out.setdefault(name, []).append(float(wall))
                out.setdefault(f"{name} cpu", []).append(float(cpu))
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
    ap.add_argument("--pyodide-source", action="store_true",
                    help="in Pyodide, import from sources (no bytecode compiled first)")
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
    pyo = (pyodide_samples(max(3, a.runs // 3), not a.pyodide_source)
           if a.pyodide else None)
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
        kind = "sources" if a.pyodide_source else "bytecode compiled in Pyodide"
        print(f"Pyodide under Node, {len(pyo['driver'])} runs, {kind} (ms)")
        print(f"{'case':18} {'wall median':>11} {'min':>7} {'max':>7} {'cpu median':>11} "
              f"{'min':>7} {'max':>7}")
        for name in PYODIDE_CASES:
            w, c = summary(pyo[name]), summary(pyo[f"{name} cpu"])
            print(f"{name:18} {w['median']:11.1f} {w['min']:7.1f} {w['max']:7.1f} "
                  f"{c['median']:11.1f} {c['min']:7.1f} {c['max']:7.1f}")
    elif a.pyodide:
        print("Pyodide: tests/js/node_modules/pyodide is missing (see tests/pyodide)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
