"""Run psycopg 3's own test suite three ways and print the counts side by side.

1. ``direct``       -- against PostgreSQL;
2. ``session``      -- through the gateway's ``pg_listen``, a session-mode pool;
3. ``transaction``  -- through ``pg_listen``, a transaction-mode pool with
   ``max_prepared_statements`` on (the default, 200).

As psycopg's maintainers run it: the tests are copied from
/work/shared/third_party/psycopg-3.3.4 into a temporary directory, a venv gets
``psycopg[binary,pool]==3.3.4 pytest pytest-timeout anyio pproxy``, and
``python -m pytest --test-dsn DSN -p no:randomly tests/...`` runs there.

Targets (issue 10): session mode fails no test that passes direct;
transaction mode fails only tests listed in docs/pooling-semantics.md (the
``psycopg-transaction-mode`` block).  Exit status 1 when a target is missed.

Usage: ``scripts/psycopg_suite.sh [--files 'tests/test_copy.py ...'] [--keep]``.
A short slice runs in CI: tests/gateway/test_psycopg_slice.py.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SRC = Path("/work/shared/third_party/psycopg-3.3.4")
PACKAGES = ["psycopg[binary,pool]==3.3.4", "pytest", "pytest-timeout", "anyio", "pproxy"]
FILES = ["tests/test_connection*.py", "tests/test_cursor*.py", "tests/test_copy*.py",
         "tests/test_transaction*.py", "tests/test_prepared*.py", "tests/pq/", "tests/types/"]
USER, PASSWORD = "suite", "suite-secret"
#: tests that create the cluster-wide role "ashesh": the three modes share one cluster, so these
#: run after the parallel runs, one mode at a time (in parallel they break each other)
SERIAL = ("tests/pq/test_pgconn.py::test_change_password_error", "tests/pq/test_pgconn.py::test_change_password")
DOC = ROOT / "docs" / "pooling-semantics.md"


def documented_failures(doc: Path = DOC, block: str = "psycopg-transaction-mode") -> dict[str, str]:
    """node id -> reason, from the ``block`` (``psycopg-transaction-mode`` or ``psycopg-any-mode``) of
    the doc (lines ``- `tests/x.py::test_y` -- reason``; a trailing ``*`` matches a prefix)."""
    text = doc.read_text() if doc.exists() else ""
    m = re.search(rf"<!-- {block} -->(.*?)<!-- /{block} -->", text, re.S)
    out: dict[str, str] = {}
    for line in (m.group(1) if m else "").splitlines():
        lm = re.match(r"\s*-\s*`([^`]+)`\s*(?:--|—|:)?\s*(.*)", line)
        if lm:
            out[lm.group(1)] = lm.group(2).strip()
    return out


def is_documented(nodeid: str, doc: dict[str, str]) -> bool:
    for pat, _ in doc.items():
        if pat.endswith("*") and nodeid.startswith(pat[:-1]):
            return True
        if nodeid == pat or nodeid.split("[")[0] == pat:
            return True
    return False


def make_venv(base: Path) -> Path:
    """A venv with psycopg's test requirements (reused if present)."""
    venv = base / "venv"
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PACKAGES], check=True)
    return py


def copy_tests(base: Path) -> Path:
    dst = base / "psycopg-3.3.4"
    if not dst.exists():
        shutil.copytree(SRC, dst)
    return dst


def wait_port(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"gateway did not open port {port}")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return int(port)


def start_gateway(pg: object, dbs: dict[str, str], base: Path, extra: str = "") -> tuple[subprocess.Popen[bytes], int]:
    """``wirepool serve`` with two databases: ``sess`` (session mode) and ``txn`` (transaction mode)."""
    http, pgl = free_port(), free_port()

    def up(db: str) -> str:
        return (f'host = "{pg.host}"\nport = {pg.port}\ndbname = "{db}"\n'  # type: ignore[attr-defined]
                f'user = "{pg.SUPERUSER}"\npassword = "{pg.SUPERUSER_PASSWORD}"\n')  # type: ignore[attr-defined]
    cfg = base / "wirepool.toml"
    cfg.write_text(
        f'[gateway]\nlisten = "127.0.0.1:{http}"\npg_listen = "127.0.0.1:{pgl}"\nauth_type = "scram-sha-256"\n'
        # idle_transaction_timeout: PostgreSQL has none by default (nor PgBouncer); the gateway's 60 s
        # ended psycopg's test_copy_big_size_* under load (10 MB of random text built in Python, in a transaction)
        f'default_pool_size = 10\nmax_prepared_statements = 200\nlog_level = "warning"\n'
        f'{"" if "idle_transaction_timeout" in extra else "idle_transaction_timeout = 0"}\n{extra}\n'
        f'[databases.sess]\n{up(dbs["session"])}pool_mode = "session"\n'
        f'[databases.txn]\n{up(dbs["transaction"])}pool_mode = "transaction"\n'
        # tests/pq/test_pgconn.py::test_change_password creates a role and logs in as it to "postgres":
        # looked up with auth_query, logged in upstream as itself (docs/auth-query.md)
        f'[databases.postgres]\nhost = "{pg.host}"\nport = {pg.port}\npool_mode = "session"\n'  # type: ignore[attr-defined]
        f'auth_user = "{pg.SUPERUSER}"\npassword = "{pg.SUPERUSER_PASSWORD}"\n'  # type: ignore[attr-defined]
        f'[users.{USER}]\npassword = "{PASSWORD}"\n')
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "gateway.cli", "serve", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=open(base / "gateway.log", "wb"))
    wait_port(pgl, time.monotonic() + 30)
    return proc, pgl


def expand(tree: Path, files: list[str]) -> list[str]:
    import glob
    paths: list[str] = []
    for f in files:
        paths += sorted(os.path.relpath(p, tree) for p in glob.glob(str(tree / f)))
    return paths


def start_pytest(py: Path, tree: Path, dsn: str, files: list[str], xml: Path, timeout: int,
                 extra: list[str] | None = None) -> subprocess.Popen[bytes]:
    """psycopg's pytest on ``files`` against ``dsn``, in the background (output in ``xml`` + .log)."""
    paths = expand(tree, files)
    cache = tree / f".cache-{xml.stem}"  # one per parallel run (psycopg's conftest keeps a segfault flag there)
    shutil.rmtree(cache, ignore_errors=True)
    cmd = [str(py), "-m", "pytest", "-v", "-p", "no:randomly", "-o", f"cache_dir={cache}", "--test-dsn", dsn,
           f"--timeout={timeout}", f"--junitxml={xml}", *(extra or []), *paths]
    if xml.exists():
        xml.unlink()
    log = open(xml.with_suffix(".log"), "wb")
    return subprocess.Popen(cmd, cwd=tree, stdout=log, stderr=subprocess.STDOUT,
                            env={k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "PYTHONPATH"})


def parse_junit(xml: Path, tree: Path) -> dict[str, str]:
    """pytest's junit XML -> nodeid -> outcome (passed/failed/error/skipped/xfailed)."""
    out: dict[str, str] = {}
    if not xml.exists():
        return out
    for case in ET.parse(xml).getroot().iter("testcase"):
        cls = case.get("classname", "")
        name = case.get("name", "")
        parts = cls.split(".")  # "tests.test_copy" or "tests.test_copy.TestX"
        mod = cls.replace(".", "/")
        for i in range(len(parts), 0, -1):
            if (tree / ("/".join(parts[:i]) + ".py")).exists():
                mod = "/".join(parts[:i]) + ".py" + "".join("::" + p for p in parts[i:])
                break
        nodeid = f"{mod}::{name}"
        kids = {c.tag for c in case}
        if "failure" in kids:
            res = "failed"
        elif "error" in kids:
            res = "error"
        elif "skipped" in kids:
            sk = case.find("skipped")
            res = "xfailed" if sk is not None and sk.get("type") == "pytest.xfail" else "skipped"
        else:
            res = "passed"
        out[nodeid] = res
    return out


_VLINE = re.compile(r"^(tests/\S+::\S+(?:\[.*?\])?) (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b")


def parse_verbose(log: Path) -> dict[str, str]:
    """The ``-v`` log of a run, possibly cut short -> nodeid -> outcome, for
    the tests that finished (a teardown ERROR after PASSED counts as error)."""
    out: dict[str, str] = {}
    if not log.exists():
        return out
    names = {"PASSED": "passed", "FAILED": "failed", "ERROR": "error", "SKIPPED": "skipped",
             "XFAIL": "xfailed", "XPASS": "passed"}
    for line in log.read_text(errors="replace").splitlines():
        lm = _VLINE.match(line)
        if lm:
            node, res = lm.group(1), names[lm.group(2)]
            if out.get(node) not in ("failed", "error"):
                out[node] = res
    return out


def counts(res: dict[str, str]) -> dict[str, int]:
    c = {k: 0 for k in ("passed", "failed", "error", "skipped", "xfailed")}
    for v in res.values():
        c[v] = c.get(v, 0) + 1
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", default=" ".join(FILES), help="test paths/globs inside the psycopg tree")
    ap.add_argument("--workdir", help="reuse this directory (venv + copied tests)")
    ap.add_argument("--timeout", type=int, default=60, help="pytest-timeout per test")
    ap.add_argument("--modes", default="direct,session,transaction")
    ap.add_argument("--pytest-args", default="", help="more arguments for psycopg's pytest, e.g. \"-m 'not slow'\"")
    ap.add_argument("--gateway-extra", default="", help="more [gateway] lines for the gateway's TOML")
    ap.add_argument("--max-minutes", type=float, default=0,
                    help="stop the runs after this long and compare the tests all modes finished (0: no limit)")
    args = ap.parse_args(argv)

    from tests.pgcluster import PgCluster

    base = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="psycopg-suite-"))
    base.mkdir(parents=True, exist_ok=True)
    py = make_venv(base)
    tree = copy_tests(base)
    files = args.files.split()
    modes = args.modes.split(",")
    pg = PgCluster()
    proc = None
    running: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, dict[str, str]] = {}
    try:
        # one database per mode: the three runs go in parallel
        dbs = {mode: f"psycopg_{mode}" for mode in ("direct", "session", "transaction")}
        for db in dbs.values():
            pg.create_database(db)
            pg.psql("CREATE EXTENSION IF NOT EXISTS hstore", db=db, check=False)
        proc, pgl = start_gateway(pg, dbs, base, args.gateway_extra.replace("\\n", "\n"))
        dsns = {
            "direct": f"postgresql://{pg.SUPERUSER}:{pg.SUPERUSER_PASSWORD}@{pg.host}:{pg.port}/{dbs['direct']}",
            "session": f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{pgl}/sess",
            "transaction": f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{pgl}/txn",
        }
        t0 = time.monotonic()
        serial = [n for n in SERIAL if n.split("::")[0] in expand(tree, files)]
        for mode in modes:
            running[mode] = start_pytest(py, tree, dsns[mode], files, base / f"{mode}.xml", args.timeout,
                                         shlex.split(args.pytest_args)
                                         + [a for n in serial for a in ("--deselect", n)])
        limit = t0 + args.max_minutes * 60 if args.max_minutes else None
        for mode, p in running.items():
            try:
                p.wait(None if limit is None else max(1.0, limit - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"# {mode}: stopped after {time.monotonic() - t0:.0f}s (--max-minutes)", file=sys.stderr)
                p.terminate()
                p.wait(30)
            results[mode] = parse_junit(base / f"{mode}.xml", tree) or parse_verbose(base / f"{mode}.log")
            print(f"# {mode}: done after {time.monotonic() - t0:.0f}s", file=sys.stderr)
        for mode in modes if serial else ():
            xml = base / f"{mode}-serial.xml"
            p = running[f"{mode}-serial"] = start_pytest(py, tree, dsns[mode], [], xml, args.timeout,
                                                         shlex.split(args.pytest_args) + serial)
            p.wait()
            results[mode].update(parse_junit(xml, tree) or parse_verbose(xml.with_suffix(".log")))
    finally:
        for p in running.values():
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        if proc is not None:
            proc.terminate()
            proc.wait(10)
        pg.cleanup()

    partial = len({len(r) for r in results.values()}) > 1
    if partial:  # cut short: compare only the tests every mode finished
        common = set.intersection(*(set(r) for r in results.values()))
        results = {mode: {n: v for n, v in r.items() if n in common} for mode, r in results.items()}
        print(f"PARTIAL RUN (--max-minutes): {len(common)} tests finished in every mode")
    cols = ["passed", "failed", "error", "skipped", "xfailed"]
    print(f"psycopg 3.3.4 test suite ({' '.join(files)})")
    print(f"{'mode':<12}" + "".join(f"{c:>9}" for c in cols) + f"{'total':>9}")
    for mode, res in results.items():
        c = counts(res)
        print(f"{mode:<12}" + "".join(f"{c[k]:>9}" for k in cols) + f"{len(res):>9}")
    ok = all(results.values())  # a run that collected nothing is a failure (see the .log next to its .xml)
    direct = results.get("direct", {})
    bad = ("failed", "error")
    anymode = documented_failures(block="psycopg-any-mode")  # inherent to any pooler: both modes
    if "session" in results:
        reg = sorted(n for n, r in results["session"].items() if r in bad and direct.get(n) == "passed")
        undoc = [n for n in reg if not is_documented(n, anymode)]
        print(f"\nsession mode: {len(reg)} test(s) fail that pass direct, "
              f"{len(reg) - len(undoc)} documented in {DOC.relative_to(ROOT)}, {len(undoc)} not:")
        for n in reg:
            print("  ", "documented" if n not in undoc else "UNDOCUMENTED", n)
        ok &= not undoc
    if "transaction" in results:
        doc = {**anymode, **documented_failures()}
        fails = sorted(n for n, r in results["transaction"].items() if r in bad and direct.get(n) == "passed")
        undoc = [n for n in fails if not is_documented(n, doc)]
        print(f"\ntransaction mode: {len(fails)} test(s) fail that pass direct, "
              f"{len(fails) - len(undoc)} documented in {DOC.relative_to(ROOT)}, {len(undoc)} not:")
        for n in fails:
            print("  ", "documented" if n not in undoc else "UNDOCUMENTED", n)
        ok &= not undoc
    print(f"\nworkdir: {base}")
    return 0 if ok else 1


if __name__ == "__main__":
    import signal
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup (finally) on SIGTERM
    sys.exit(main())
