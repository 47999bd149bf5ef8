"""A real gateway in a child process, for tests that watch it from outside.

The fuzzing campaign and the resource proofs need what an in-process
``gateway_app`` cannot give: the gateway's own RSS, its own fd limit
(``RLIMIT_NOFILE``), its log on its own stream (to scan for tracebacks), and
a crash that does not take the test runner with it::

    with GatewayProcess(pg, {"auth_type": "plain"}, nofile=1024) as gw:
        gw.http_port, gw.pg_port, gw.ws_url, gw.pg_dsn("alice", "alice-secret")
        gw.rss(), gw.tracebacks(), gw.alive()

The child builds its config with ``tests.gateway.conftest.build_config``
(the same defaults as ``gateway_app``: database ``app`` on ``pg``, users
alice/bob/carol) and runs ``gateway.app.run_forever`` -- what
``wirepool serve`` runs.  Ports are ephemeral; the child writes them to a
file once it listens.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import psutil

from tests.gateway.served import ChildGateway, cli_env
from tests.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parent.parent


class GatewayProcess(ChildGateway):
    def __init__(self, pg: PgCluster, settings: Mapping[str, Any] | None = None, *,
                 databases: Mapping[str, Any] | None = None, users: Mapping[str, Any] | None = None,
                 nofile: int | None = None, start_timeout: float = 60.0) -> None:
        self.pg = pg
        self.dir = Path(tempfile.mkdtemp(prefix="wp-gwproc-"))
        self.log_path = self.dir / "gateway.log"
        self.ready_path = self.dir / "ready.json"
        spec = {"pg": {"host": pg.host, "port": pg.port},
                "settings": dict(settings or {}), "databases": dict(databases or {}),
                "users": dict(users) if users is not None else None}
        (self.dir / "spec.json").write_text(json.dumps(spec))

        def limit() -> None:  # runs in the child before exec
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "tests.gatewayproc", str(self.dir)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         env=cli_env({"PYTHONUNBUFFERED": "1"}),
                                         cwd=str(ROOT), preexec_fn=limit)
        self._ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + start_timeout
        while not self.ready_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"gateway did not start:\n{self.log_tail()}")
            time.sleep(0.05)
        info = json.loads(self.ready_path.read_text())
        self.host: str = info["host"]
        self.http_port: int = info["http_port"]
        self.pg_port: int | None = info["pg_port"]

    # -- observation (addresses, log, stop: ChildGateway) ----------------------
    def rss(self) -> int:
        """Resident set size of the gateway process, bytes."""
        return int(self._ps.memory_info().rss)

    def num_fds(self) -> int:
        return int(self._ps.num_fds())

    def log_size(self) -> int:
        return self.log_path.stat().st_size

    def tracebacks(self, since: int = 0) -> list[str]:
        """Every complete ``Traceback`` block in the log after byte offset ``since``."""
        return self.read_tracebacks(since)[0]

    def read_tracebacks(self, since: int = 0) -> tuple[list[str], int]:
        """``(blocks, offset)``: the complete ``Traceback`` blocks after byte
        offset ``since`` (each with the log line before it, which names the
        connection), and the offset to continue from (a block still being
        written is left for the next call)."""
        with open(self.log_path, "rb") as f:
            f.seek(since)
            raw = f.read()
        cut = raw.rfind(b"\n") + 1
        lines = raw[:cut].decode(errors="replace").splitlines(keepends=True)
        out: list[str] = []
        pos = 0          # characters consumed (complete lines / blocks)
        consumed = 0
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("Traceback"):
                j = i + 1
                while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                    j += 1
                if j >= len(lines):
                    break  # the exception line is not written yet
                out.append("".join(lines[max(0, i - 1): j + 1]))
                pos += sum(len(x) for x in lines[i: j + 1])
                i = j + 1
            else:
                pos += len(line)
                i += 1
            consumed = pos
        return out, since + len("".join(lines)[:consumed].encode(errors="replace"))

    def __enter__(self) -> "GatewayProcess":
        return self


def _child(directory: str) -> int:
    import logging

    from gateway import app as gwapp
    from tests.gateway.conftest import build_config

    d = Path(directory)
    spec = json.loads((d / "spec.json").read_text())

    class _Pg:  # what build_config reads from a PgCluster
        host = spec["pg"]["host"]
        port = spec["pg"]["port"]

    cfg = build_config(_Pg(), databases=spec["databases"] or None, users=spec["users"],  # type: ignore[arg-type]
                       **spec["settings"])
    logging.basicConfig(level=getattr(logging, cfg.gateway.log_level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    def ready(app: Any) -> None:
        tmp = d / "ready.tmp"
        tmp.write_text(json.dumps({"host": app.http_host, "http_port": app.http_port,
                                   "pg_port": app.pg_port}))
        tmp.rename(d / "ready.json")

    return gwapp.run_forever(cfg, ready_callback=ready)


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))
