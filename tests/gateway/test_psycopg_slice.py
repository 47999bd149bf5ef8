"""A short, deterministic slice of psycopg 3's own test suite, run as its
maintainers run it (``pytest --test-dsn``), three ways side by side: directly
against PostgreSQL, through the gateway's pg_listen in session mode, and in
transaction mode with ``max_prepared_statements`` on.  Fails on any test that
passes directly but not through the gateway, unless docs/pooling-semantics.md
lists it for that mode (the same rule as scripts/psycopg_suite.py, which runs
the whole file set of issue 10)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]
SRC = Path("/work/shared/third_party/psycopg-3.3.4")
#: sync files only (no anyio / psycopg_pool needed), no timing-based tests
FILES = ["tests/test_transaction.py", "tests/test_prepared.py", "tests/types/test_bool.py",
         "tests/types/test_uuid.py", "tests/types/test_none.py"]
USER, PASSWORD = "suite", "suite-secret"

pytestmark = pytest.mark.timeout(240)


def _suite() -> Any:
    spec = importlib.util.spec_from_file_location("psycopg_suite", ROOT / "scripts" / "psycopg_suite.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def _pytest(tree: Path, dsn: str, xml: Path) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "PYTHONPATH"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pytest", "-q", "-p", "no:asyncio", "-p", "no:randomly",
        "-o", f"cache_dir={xml.with_suffix('.cache')}", "--timeout=60", "--test-dsn", dsn,
        f"--junitxml={xml}", *FILES, cwd=tree, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


async def test_psycopg_suite_slice_three_modes(pg: PgCluster, gateway_app, tmp_path: Path) -> None:
    suite = _suite()
    assert SRC.is_dir(), f"psycopg's test suite is missing: {SRC}"
    tree = tmp_path / "psycopg"
    shutil.copytree(SRC / "tests", tree / "tests")
    dbs = {mode: f"wp_psy_{os.getpid()}_{mode}" for mode in ("direct", "session", "transaction")}
    for db in dbs.values():
        pg.create_database(db)
    try:
        up = {"host": pg.host, "port": pg.port, "user": pg.SUPERUSER, "password": pg.SUPERUSER_PASSWORD}
        app = await gateway_app(
            max_prepared_statements=200,
            databases={"sess": {**up, "dbname": dbs["session"], "pool_mode": "session"},
                       "txn": {**up, "dbname": dbs["transaction"], "pool_mode": "transaction"}},
            users={USER: {"password": PASSWORD}})
        dsns = {"direct": f"postgresql://{pg.SUPERUSER}:{pg.SUPERUSER_PASSWORD}@{pg.host}:{pg.port}/"
                          f"{dbs['direct']}",
                "session": app.pg_dsn(USER, PASSWORD, "sess"),
                "transaction": app.pg_dsn(USER, PASSWORD, "txn")}
        runs = await asyncio.gather(*(_pytest(tree, dsns[mode], tmp_path / f"{mode}.xml") for mode in dsns))
        results = {mode: suite.parse_junit(tmp_path / f"{mode}.xml", tree) for mode in dsns}
    finally:
        for db in dbs.values():
            pg.drop_database(db)

    cols = ["passed", "failed", "error", "skipped", "xfailed"]
    print(f"\npsycopg 3.3.4 suite slice ({' '.join(FILES)})")
    print(f"{'mode':<12}" + "".join(f"{c:>9}" for c in cols) + f"{'total':>9}")
    for mode, res in results.items():
        c = suite.counts(res)
        print(f"{mode:<12}" + "".join(f"{c[k]:>9}" for k in cols) + f"{len(res):>9}")
    for (mode, res), (rc, out) in zip(results.items(), runs):
        assert len(res) > 100, f"{mode}: psycopg's pytest ran nothing (rc {rc}):\n{out[-3000:]}"
    direct = results["direct"]
    assert suite.counts(direct)["passed"] > 100
    anymode = suite.documented_failures(block="psycopg-any-mode")
    txn_doc = {**anymode, **suite.documented_failures()}
    bad = ("failed", "error")
    problems = []
    for mode, doc in (("session", anymode), ("transaction", txn_doc)):
        res = results[mode]
        assert set(res) == set(direct), f"{mode}: not the same tests as direct"
        for node, outcome in sorted(res.items()):
            if outcome in bad and direct.get(node) == "passed" and not suite.is_documented(node, doc):
                problems.append(f"{mode}: {node} {outcome} (passes direct; not in docs/pooling-semantics.md)")
    assert not problems, "\n".join(problems) + "\n\n" + "\n".join(out[-2000:] for _, out in runs[1:])
