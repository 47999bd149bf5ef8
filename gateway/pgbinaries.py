"""Locating PostgreSQL server binaries and running them as an unprivileged user.

Shared by the embedded mode (:mod:`gateway.embedded`) and the test suite's
private clusters (``tests/pgcluster.py``).  PostgreSQL refuses to run as
root, so when we are root every server program runs as the ``postgres``
system user through ``runuser``; the binaries shipped inside the ``pgserver``
wheel usually live under ``/root`` where that user cannot reach them, so they
are copied once to a shared, cached location.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
#: system user that owns clusters when we are root
RUN_AS = "postgres"


def is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def has_server_binaries(d: Path) -> bool:
    return all(os.access(d / b, os.X_OK) for b in SERVER_BINARIES)


def pgserver_bin_dir() -> Path | None:
    """The ``bin`` directory of the PostgreSQL build shipped in the pgserver wheel.

    Located through the package's import spec, without importing pgserver (its
    import has side effects).  ``None`` if pgserver is not installed.
    """
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "pginstall" / "bin"
        if has_server_binaries(d):
            return d
    return None


def runuser_prefix() -> list[str]:
    """Command prefix that runs a program as :data:`RUN_AS` (we are root)."""
    for cand in (shutil.which("runuser"), "/usr/sbin/runuser", "/sbin/runuser", "/usr/bin/runuser"):
        if cand and os.access(cand, os.X_OK):
            return [cand, "-u", RUN_AS, "--"]
    raise RuntimeError("running as root but runuser(1) was not found")


def postgres_user_can(test: str, path: Path) -> bool:
    """``test <test> path`` (e.g. ``-x``) evaluated as the postgres user."""
    r = subprocess.run(runuser_prefix() + ["/bin/sh", "-c", f'test {test} "$0"', str(path)],
                       capture_output=True)
    return r.returncode == 0


def shared_copy_of_install(bin_dir: Path) -> Path:
    """Copy an install tree the postgres user cannot reach (e.g. under /root) to /tmp.

    Keeps the wheel layout ``<pkg>/pginstall/bin`` + ``<pkg>.libs`` so the
    binaries' ``$ORIGIN``-relative RPATH still finds the bundled libraries.
    The copy is cached across runs (keyed by the source path) and created
    atomically (rename), so concurrent callers are safe.
    """
    install = bin_dir.parent
    pkg = install.parent
    libs = pkg.parent / (pkg.name + ".libs")
    key = hashlib.sha1(str(install).encode()).hexdigest()[:12]
    dest = Path(tempfile.gettempdir()) / ("wirepool-pginstall-" + key)
    dest_bin = dest / pkg.name / install.name / bin_dir.name
    if not has_server_binaries(dest_bin):
        tmp = Path(tempfile.mkdtemp(prefix="wirepool-pginstall-tmp-"))
        root = tmp / "x"
        shutil.copytree(install, root / pkg.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, root / libs.name, symlinks=True)
        for d in (root, root / pkg.name):
            os.chmod(d, 0o755)
        try:
            os.rename(root, dest)
        except OSError:
            if not has_server_binaries(dest_bin):
                raise
        shutil.rmtree(tmp, ignore_errors=True)
    return dest_bin


def runnable_bin_dir(bin_dir: Path) -> Path:
    """``bin_dir``, or a shared copy of it when we are root and the postgres
    user cannot execute the original."""
    if is_root() and not postgres_user_can("-x", bin_dir / "postgres"):
        return shared_copy_of_install(bin_dir)
    return bin_dir
