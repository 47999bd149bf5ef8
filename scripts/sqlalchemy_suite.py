#!/usr/bin/env python3
"""Run part of SQLAlchemy's own test suite with asyncpg and with Wirepool's driver, side by side.

    python3 scripts/sqlalchemy_suite.py                      # asyncpg, wirepool (TCP), wirepool via ws
    python3 scripts/sqlalchemy_suite.py --modes asyncpg,wirepool test/sql/test_types.py

What it does, the way SQLAlchemy's maintainers run their suite (README.unittests.rst):

1. fetches the sdist of the *installed* SQLAlchemy version with
   ``pip download --no-binary sqlalchemy --no-deps sqlalchemy==X`` into a cache
   directory (``--cache``, default ``$WIREPOOL_SQLA_CACHE`` or
   ``~/.cache/wirepool/sqlalchemy``) and unpacks it there, once;
2. starts a private PostgreSQL cluster (tests/pgcluster.py) set up as
   SQLAlchemy's README asks (schemas ``test_schema`` and ``test_schema_2``,
   extensions ``hstore`` and ``citext``, ``max_prepared_transactions = 10``;
   plus an ICU ``"en_US"`` collation, which a ``LC_ALL=C`` cluster lacks),
   with one such database per mode (``test_asyncpg``, ``test_wirepool``...) so
   that ``--jobs N`` can run modes at the same time;
3. runs ``pytest --dburi URL FILES`` in the unpacked source once per mode:
   ``asyncpg`` (``postgresql+asyncpg://``, real asyncpg), ``wirepool``
   (``postgresql+wirepool://``, the driver over TCP) and ``wirepool-ws``
   (``postgresql+wirepool://...?transport=ws`` through a gateway started for the
   run, ``pool_mode = "transaction"``);
4. prints passed/failed/skipped per mode side by side, the tests that fail only
   with the driver, and whether the target holds: the driver's failures are at
   most asyncpg's plus 0.5% of the tests run.  Exit status 1 when it does not.

``--json PATH`` writes the counts and the per-mode failure lists.  Run logs and
JUnit files go to ``--out`` (default: a temporary directory, printed).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.pgcluster import PgCluster, free_port  # noqa: E402

DEFAULT_FILES = (
    "test/dialect/postgresql/test_types.py",
    "test/sql/test_types.py",
    "test/orm/test_query.py",
    "test/dialect/postgresql/test_query.py",
    "test/dialect/postgresql/test_dialect.py",
)
MODES = ("asyncpg", "wirepool", "wirepool-ws")
#: the driver may fail at most this fraction of the tests run more than asyncpg
TOLERANCE = 0.005
GATEWAY_USER, GATEWAY_PASSWORD = "scott", "tiger"


def default_cache_dir() -> Path:
    env = os.environ.get("WIREPOOL_SQLA_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wirepool" / "sqlalchemy"


def fetch_sqlalchemy_source(cache: Path, version: str | None = None) -> Path:
    """The unpacked sdist of SQLAlchemy ``version`` (default: the installed one) under ``cache``."""
    version = version or importlib.metadata.version("sqlalchemy")
    cache.mkdir(parents=True, exist_ok=True)
    src = cache / f"sqlalchemy-{version}"
    if (src / "test" / "conftest.py").is_file():
        return src
    archives = sorted(cache.glob(f"[sS][qQ][lL][aA]lchemy-{version}.tar.gz"))
    if not archives:
        # --no-binary sqlalchemy (not :all:): the build requirements pip installs to read
        # the sdist's metadata may come as wheels, which takes seconds instead of minutes.
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                        "--no-binary", "sqlalchemy", f"sqlalchemy=={version}", "-d", str(cache)],
                       check=True)
        archives = sorted(cache.glob(f"[sS][qQ][lL][aA]lchemy-{version}.tar.gz"))
    if not archives:
        raise SystemExit(f"pip download left no sqlalchemy-{version}.tar.gz in {cache}")
    tmp = Path(tempfile.mkdtemp(prefix="unpack-", dir=cache))
    with tarfile.open(archives[0]) as tf:
        tf.extractall(tmp, filter="data")
    (tmp / src.name).rename(src) if not src.exists() else None
    return src


def db_name(mode: str) -> str:
    """Each mode gets its own database, so modes can run at the same time."""
    return "test_" + mode.replace("-", "_")


def prepare_cluster(modes: Sequence[str]) -> PgCluster:
    """A private cluster configured as SQLAlchemy's README.unittests.rst asks, one database per mode."""
    pg = PgCluster({"max_prepared_transactions": 10, "max_connections": 150})
    for mode in modes:
        pg.create_database(db_name(mode))
        pg.psql("CREATE SCHEMA test_schema; CREATE SCHEMA test_schema_2;"
                " CREATE EXTENSION hstore; CREATE EXTENSION citext;"
                # test_array_str_collation names the "en_US" collation, which a cluster
                # initialised with LC_ALL=C lacks: the ICU one, for both drivers alike
                " CREATE COLLATION \"en_US\" (provider = icu, locale = 'en-US');",
                db=db_name(mode))
    return pg


@dataclass
class Result:
    mode: str
    passed: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    #: CPU time of the pytest process (the client side; independent of other load)
    cpu_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    returncode: int = 0

    @property
    def run(self) -> int:
        return self.passed + self.failed


def parse_junit(path: Path, mode: str) -> Result:
    res = Result(mode)
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        tags = {child.tag for child in case}
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if "failure" in tags or "error" in tags:
            res.failed += 1
            res.failures.append(name)
        elif "skipped" in tags:
            res.skipped += 1
        else:
            res.passed += 1
    return res


def run_suite(src: Path, mode: str, dburi: str, files: Sequence[str], out: Path,
              extra_args: Sequence[str] = ()) -> Result:
    """One pytest run of SQLAlchemy's suite in ``src`` against ``dburi``."""
    junit = out / f"{mode}.xml"
    log = out / f"{mode}.log"
    env = dict(os.environ)
    # PYTHONNOUSERSITE=1, as SQLAlchemy's tox/nox sessions set it: the suite then tests the
    # *installed* SQLAlchemy (with its compiled extensions) instead of the sdist's lib/.
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), str(REPO / "scripts")] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    env.pop("PYTEST_ADDOPTS", None)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio",
           "-p", "no:randomly", "-p", "sqla_suite_register", "--maxfail=1000000",
           "--junitxml", str(junit), "--dburi", dburi, *extra_args, *files]
    t0 = time.monotonic()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=src, env=env, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = rc = os.waitstatus_to_exitcode(status)
    elapsed = time.monotonic() - t0
    if not junit.exists():
        raise SystemExit(f"{mode}: pytest wrote no JUnit file (exit {rc}); see {log}")
    res = parse_junit(junit, mode)
    res.seconds, res.returncode = elapsed, rc
    res.cpu_seconds = usage.ru_utime + usage.ru_stime
    return res


class Gateway:
    """``wirepool serve`` in a subprocess, transaction pooling in front of ``pg``'s ``test``."""

    def __init__(self, pg: PgCluster, workdir: Path, modes: Sequence[str],
                 pool_mode: str = "transaction") -> None:
        self.port = free_port()
        cfg = workdir / "gateway.toml"
        databases = "".join(f"""
[databases.{db_name(m)}]
host = "{pg.host}"
port = {pg.port}
user = "{pg.SUPERUSER}"
password = "{pg.SUPERUSER_PASSWORD}"
""" for m in modes)
        cfg.write_text(f"""
[gateway]
listen = "127.0.0.1:{self.port}"
pg_listen = ""
auth_type = "password"
pool_mode = "{pool_mode}"
default_pool_size = 20
log_level = "warning"

{databases}
[users.{GATEWAY_USER}]
password = "{GATEWAY_PASSWORD}"
""")
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.log = open(workdir / "gateway.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from gateway.cli import main; sys.exit(main())",
             "serve", "--config", str(cfg)], cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise SystemExit(f"the gateway did not start; see {workdir / 'gateway.log'}")
            time.sleep(0.1)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def dburi(mode: str, pg: PgCluster, gateway: Gateway | None) -> str:
    db = db_name(mode)
    if mode in ("asyncpg", "wirepool"):
        return f"postgresql+{mode}://{pg.SUPERUSER}:{pg.SUPERUSER_PASSWORD}@{pg.host}:{pg.port}/{db}"
    assert gateway is not None
    transport = mode.split("-", 1)[1]
    return (f"postgresql+wirepool://{GATEWAY_USER}:{GATEWAY_PASSWORD}@127.0.0.1:{gateway.port}"
            f"/{db}?transport={transport}")


def allowed_failures(baseline: Result) -> float:
    return baseline.failed + TOLERANCE * baseline.run


def report(results: Sequence[Result]) -> str:
    lines = [f"{'mode':<14}{'passed':>8}{'failed':>8}{'skipped':>9}{'run':>8}{'seconds':>9}{'cpu s':>7}"]
    for r in results:
        lines.append(f"{r.mode:<14}{r.passed:>8}{r.failed:>8}{r.skipped:>9}{r.run:>8}{r.seconds:>9.0f}"
                     f"{r.cpu_seconds:>7.0f}")
    base = next((r for r in results if r.mode == "asyncpg"), None)
    if base is not None:
        for r in results:
            if r is base:
                continue
            only = sorted(set(r.failures) - set(base.failures))
            verdict = "OK" if r.failed <= allowed_failures(base) else "OVER TARGET"
            lines.append(f"\n{r.mode}: {r.failed} failed vs asyncpg {base.failed} "
                         f"(allowed {allowed_failures(base):.1f}): {verdict}; "
                         f"{len(only)} fail only with {r.mode}:")
            lines.extend(f"  {name}" for name in only[:400])
            if len(only) > 400:
                lines.append(f"  ... and {len(only) - 400} more")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="*", default=list(DEFAULT_FILES),
                    help="test files of SQLAlchemy's suite (default: the five of issue 9)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, from {', '.join(MODES)} and wirepool-http")
    ap.add_argument("--cache", type=Path, default=default_cache_dir())
    ap.add_argument("--out", type=Path, help="directory for logs and JUnit files")
    ap.add_argument("--json", type=Path, help="write counts and failure lists here")
    ap.add_argument("--pytest-arg", action="append", default=[], help="extra pytest argument")
    ap.add_argument("--jobs", "-j", type=int, default=1,
                    help="modes run at the same time (each has its own database)")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES + ("wirepool-http", "wirepool-wss", "wirepool-https"):
            ap.error(f"unknown mode {m!r}")
    out = args.out or Path(tempfile.mkdtemp(prefix="sqla-suite-"))
    out.mkdir(parents=True, exist_ok=True)
    src = fetch_sqlalchemy_source(args.cache)
    print(f"SQLAlchemy source: {src}\nlogs: {out}", flush=True)
    results = run_modes(src, modes, args.files, out, args.pytest_arg, args.jobs)
    text = report(results)
    print(text)
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=1))
    base = next((r for r in results if r.mode == "asyncpg"), None)
    if base is None:
        return 0
    return 0 if all(r.failed <= allowed_failures(base) for r in results) else 1


def run_modes(src: Path, modes: Sequence[str], files: Sequence[str], out: Path,
              extra_args: Sequence[str] = (), jobs: int = 1) -> list[Result]:
    """Start a cluster (and a gateway when a mode needs one), run the modes (``jobs`` at a
    time, each in its own database), clean up.  Results in the order of ``modes``."""
    pg = prepare_cluster(modes)
    gateway = None
    try:
        gw_modes = [m for m in modes if m.startswith("wirepool-")]
        if gw_modes:
            gateway = Gateway(pg, out, gw_modes)

        def one(mode: str) -> Result:
            print(f"running {mode} ...", flush=True)
            res = run_suite(src, mode, dburi(mode, pg, gateway), files, out, extra_args)
            print(f"  {mode}: {res.passed} passed, {res.failed} failed, {res.skipped} skipped "
                  f"in {res.seconds:.0f}s", flush=True)
            return res

        with ThreadPoolExecutor(max(1, jobs)) as ex:
            return list(ex.map(one, modes))
    finally:
        if gateway is not None:
            gateway.close()
        pg.cleanup()


if __name__ == "__main__":
    sys.exit(main())
