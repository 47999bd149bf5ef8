"""pytest plugin for scripts/sqlalchemy_suite.py: make ``postgresql+wirepool://`` resolvable.

An installed wirepool registers the dialect through its ``sqlalchemy.dialects``
entry point.  When that entry point is missing (the repository is on
``PYTHONPATH`` but not installed), register the same class by name so the suite
can still run; the lookup stays lazy (nothing is imported before SQLAlchemy's
own plugin starts).
"""

from __future__ import annotations

import importlib.metadata


def _entry_point_installed() -> bool:
    eps = importlib.metadata.entry_points(group="sqlalchemy.dialects")
    return any(ep.name == "postgresql.wirepool" for ep in eps)


if not _entry_point_installed():
    from sqlalchemy.dialects import registry

    registry.register("postgresql.wirepool", "driver.sqlalchemy_dialect", "PGDialect_wirepool")
