"""pytest plugin for scripts/sqlalchemy_suite.py: make ``postgresql+wirepool://`` resolvable.

An installed wirepool registers the dialect through its ``sqlalchemy.dialects``
entry point.  When that entry point is missing (the repository is on
``PYTHONPATH`` but not installed), register the same class by name so the suite
can still run; the lookup stays lazy (nothing is imported before SQLAlchemy's
own plugin starts).
"""

from __future__ import annotations

import importlib.metadata
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pytest


def _entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="sqlalchemy.dialects")
    return any(ep.name == "postgresql.wirepool" for ep in eps)


if not _entry_point_installed():
    from sqlalchemy.dialects import registry

    registry.register("postgresql.wirepool", "driver.sqlalchemy_dialect", "PGDialect_wirepool")


def pytest_addoption(parser: "pytest.Parser") -> None:
    parser.addoption(
        "--wp-sample", type=int, default=0, metavar="N",
        help="keep at most N parametrizations of each test function (evenly spread, the first "
             "and the last included): every test function still runs, deterministically")


def pytest_collection_modifyitems(config: "pytest.Config", items: "list[pytest.Item]") -> None:
    n = config.getoption("--wp-sample")
    if not n:
        return
    groups: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        groups.setdefault(item.nodeid.split("[", 1)[0], []).append(i)
    keep: set[int] = set()
    for idx in groups.values():
        if len(idx) <= n:
            keep.update(idx)
        elif n == 1:
            keep.add(idx[0])
        else:
            keep.update(idx[round(k * (len(idx) - 1) / (n - 1))] for k in range(n))
    deselected = [it for i, it in enumerate(items) if i not in keep]
    if deselected:
        items[:] = [it for i, it in enumerate(items) if i in keep]
        config.hook.pytest_deselected(items=deselected)
