"""Build deploy/Dockerfile and run the image against a real PostgreSQL (docs/scaling.md).

    python scripts/docker_smoke.py                       # base: python:3.11-slim if present, else built
    python scripts/docker_smoke.py --base my/python:3.11 # any image with python3 (+ venv) and useradd

Needs a running Docker daemon.  Without a registry that serves ``python:3.11-slim``
the base is built from Debian's own archive: ``debootstrap --variant=minbase
bookworm`` with python3 and python3-venv, plus this machine's extra CA
certificates (``/usr/local/share/ca-certificates``: a TLS-inspecting proxy in
front of PyPI), imported with ``docker import`` (needs root and ``debootstrap``).  The image is built with
``--network host`` (pip reaches PyPI as the host does), then:

1. started with ``--network host`` on free ports in front of a private
   PostgreSQL cluster (tests/pgcluster.py), config mounted read-only;
2. checked: it runs as uid 10001, ``/healthz`` answers 200, Docker's
   HEALTHCHECK turns ``healthy``, asyncpg over ``pg_listen`` and the driver over
   WebSocket run queries;
3. ``docker stop`` (SIGTERM): exit status 0 after the graceful shutdown.

Exit status 0 when every step passed; the container is removed either way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEBIAN_BASE = "wirepool-base:bookworm"


def sh(*argv: str, check: bool = True, quiet: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
    if not quiet:
        print("+", " ".join(argv), flush=True)
    return subprocess.run(argv, check=check, text=True, **kw)  # type: ignore[call-overload,no-any-return]


def have_image(name: str) -> bool:
    return subprocess.run(["docker", "image", "inspect", name], capture_output=True).returncode == 0


def build_debian_base(mirror: str) -> str:
    """A python3 base image from Debian's archive (no registry involved)."""
    if have_image(DEBIAN_BASE):
        return DEBIAN_BASE
    if shutil.which("debootstrap") is None:
        raise SystemExit("no base image and no debootstrap (apt-get install debootstrap)")
    root = Path(tempfile.mkdtemp(prefix="wirepool-rootfs-"))
    try:
        sh("debootstrap", "--variant=minbase", "--include=python3,python3-venv,ca-certificates",
           "bookworm", str(root), mirror)
        sh("chroot", str(root), "apt-get", "clean")
        # this machine's extra CA certificates (a TLS-inspecting egress proxy in front of PyPI)
        extra = sorted(Path("/usr/local/share/ca-certificates").glob("*.crt"))
        for crt in extra:
            shutil.copy(crt, root / "usr/local/share/ca-certificates" / crt.name)
        if extra:
            sh("chroot", str(root), "update-ca-certificates")
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        sh("docker", "import", "--change", 'CMD ["python3"]', "-", DEBIAN_BASE, stdin=tar.stdout)
        tar.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return DEBIAN_BASE


async def smoke(image: str) -> None:
    import asyncpg

    import driver
    from tests.gateway.conftest import ALICE_PASSWORD
    from tests.gateway.served import write_config
    from tests.pgcluster import PgCluster, free_port

    with PgCluster() as pg:
        pg.create_database("smoke")
        d = Path(tempfile.mkdtemp(prefix="wirepool-docker-"))
        http_port, pg_port = free_port(), free_port()
        cfg = write_config(d / "wirepool.toml", pg, "smoke", {
            "listen": f"127.0.0.1:{http_port}", "pg_listen": f"127.0.0.1:{pg_port}", "auth_type": "password",
            "shutdown_timeout": 5, "default_pool_size": 2})
        os.chmod(d, 0o755)
        os.chmod(cfg, 0o644)
        name = f"wirepool-smoke-{os.getpid()}"
        sh("docker", "run", "-d", "--name", name, "--network", "host",
           "-e", f"WIREPOOL_HEALTH_URL=http://127.0.0.1:{http_port}/healthz",
           "-v", f"{cfg}:/etc/wirepool/wirepool.toml:ro", image, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=2) as r:
                        assert r.status == 200
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            uid = sh("docker", "exec", name, "id", "-u", capture_output=True).stdout.strip()
            assert uid == "10001", uid
            print("ok: /healthz 200, uid", uid)
            conn = await asyncpg.connect(host="127.0.0.1", port=pg_port, user="alice", password=ALICE_PASSWORD,
                                         database="app")
            assert await conn.fetchval("SELECT 40 + 2") == 42
            await conn.close()
            ws = await driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{http_port}/v2?dbname=app")
            assert await ws.fetchval("SELECT current_database()") == "smoke"
            await ws.close()
            print("ok: asyncpg over pg_listen, the driver over WebSocket")
            deadline = time.monotonic() + 90
            while True:
                state = json.loads(sh("docker", "inspect", "--format", "{{json .State.Health}}", name,
                                      capture_output=True, quiet=True).stdout)
                if state and state.get("Status") == "healthy":
                    break
                if time.monotonic() > deadline:
                    raise AssertionError(f"HEALTHCHECK: {state}")
                await asyncio.sleep(1)
            print("ok: HEALTHCHECK healthy")
            sh("docker", "stop", "-t", "30", name, stdout=subprocess.DEVNULL)
            code = sh("docker", "inspect", "--format", "{{.State.ExitCode}}", name, capture_output=True).stdout
            logs = sh("docker", "logs", name, capture_output=True)
            assert code.strip() == "0", (code, logs.stderr[-2000:])
            assert "SIGTERM: shutting down" in logs.stderr, logs.stderr[-2000:]
            print("ok: docker stop -> graceful shutdown, exit status 0")
        finally:
            sh("docker", "rm", "-f", name, check=False, capture_output=True)
            shutil.rmtree(d, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", help="base image (default: python:3.11-slim if present, else built from Debian)")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--tag", default="wirepool:smoke")
    args = ap.parse_args()
    if subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        print("no Docker daemon answers (start dockerd)", file=sys.stderr)
        return 2
    base = args.base or ("python:3.11-slim" if have_image("python:3.11-slim") else build_debian_base(args.mirror))
    sh("docker", "build", "--network", "host", "--build-arg", f"BASE={base}", "-f", "deploy/Dockerfile",
       "-t", args.tag, ".", cwd=str(ROOT))
    asyncio.run(smoke(args.tag))
    print(f"docker smoke test passed (base {base})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
