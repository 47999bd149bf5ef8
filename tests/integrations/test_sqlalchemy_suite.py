"""SQLAlchemy's own type tests, with real asyncpg and with ``postgresql+wirepool://``, side by side.

The CI slice of scripts/sqlalchemy_suite.py (which runs five files in full, and
through the gateway too): ``test/sql/test_types.py`` and
``test/dialect/postgresql/test_types.py`` of the installed SQLAlchemy's sdist
(downloaded with pip into a cache directory, ``$WIREPOOL_SQLA_CACHE`` or
``<tmp>/wirepool-sqla-cache``, never into the repository), once per driver, both
drivers at the same time (two pytest processes) against a private cluster.

The two files hold ~12,500 tests, ~9,000 of them parametrizations of the same
range/multirange test functions; all of them take ~25 min of CPU, far over CI's
budget.  So the slice is deterministic and covers every test function of both
files: ``--wp-sample 3`` (scripts/sqla_suite_register.py) keeps at most three
parametrizations of each function (the first, the middle, the last), ~1,340
tests per driver.  The full files run in scripts/sqlalchemy_suite.py
(docs/asyncpg-compat.md has the counts).

Fails when a test fails with the driver and not with asyncpg, unless it is in
:data:`KNOWN_DIFFERENCES` (documented in docs/asyncpg-compat.md).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
FILES = ("test/sql/test_types.py", "test/dialect/postgresql/test_types.py")
#: parametrizations kept per test function (see the module doc)
SAMPLE = 3
#: tests allowed to fail with the driver only (each one listed in docs/asyncpg-compat.md)
KNOWN_DIFFERENCES: frozenset[str] = frozenset()

pytestmark = pytest.mark.timeout(1800)


def _suite_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("sqlalchemy_suite",
                                                  REPO / "scripts" / "sqlalchemy_suite.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("sqlalchemy_suite", mod)
    spec.loader.exec_module(mod)
    return mod


def test_sqlalchemy_type_suites_driver_vs_asyncpg(tmp_path: Path) -> None:
    suite = _suite_module()
    cache = Path(os.environ.get("WIREPOOL_SQLA_CACHE")
                 or Path(tempfile.gettempdir()) / "wirepool-sqla-cache")
    src = suite.fetch_sqlalchemy_source(cache)
    asyncpg_res, wirepool_res = suite.run_modes(src, ["asyncpg", "wirepool"], FILES, tmp_path,
                                                [f"--wp-sample={SAMPLE}"], jobs=2)
    text = suite.report([asyncpg_res, wirepool_res])
    print(text)
    # the files really ran, asyncpg-only tests (ranges, BitString...) included, same tests
    assert asyncpg_res.run > 1_000, text
    assert wirepool_res.run == asyncpg_res.run, text
    only_driver = set(wirepool_res.failures) - set(asyncpg_res.failures)
    assert only_driver <= KNOWN_DIFFERENCES, text
    assert wirepool_res.failed <= asyncpg_res.failed + len(KNOWN_DIFFERENCES), text
