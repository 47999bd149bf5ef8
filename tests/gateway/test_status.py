"""``GET /status`` (gateway/status.py): admin-only HTML, checked in headless Chromium
(Debian's ``chromium``) during a burst that leaves a client waiting."""

from __future__ import annotations

import asyncio
import base64
import re
import shutil
from pathlib import Path
from typing import Any

import asyncpg

from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.pool_helpers import eventually
from tests.gateway.test_metrics import _http

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run",
                  "--disable-dev-shm-usage", "--window-size=1200,800"]


def _basic(user: str, password: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def _chromium(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "Debian's chromium package is required (apt-get install chromium; .ci/run installs it)"
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    proc = await asyncio.create_subprocess_exec(exe, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    return proc.returncode or 0, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


ALICE_TOKEN = "alice-admin-token-" + "a" * 16
BOB_TOKEN = "bob-plain-token-" + "b" * 16


async def test_status_requires_admin(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(admin_users=["alice"], databases={"app": {"dbname": pg_db}},
                            users={"alice": {"password": ALICE_PASSWORD, "tokens": [ALICE_TOKEN]},
                                   "bob": {"password": BOB_PASSWORD, "tokens": [BOB_TOKEN]}})
    for headers in ({}, _basic("alice", "wrong"), _basic("bob", BOB_PASSWORD), {"authorization": "Basic %%%"},
                    {"authorization": "Bearer nope"}, {"authorization": f"Bearer {BOB_TOKEN}"}):
        status, body = await _http(app.http_port, "GET", "/status", headers=headers)
        assert status == 401, (headers, status, body)
    for headers in (_basic("alice", ALICE_PASSWORD), {"authorization": f"Bearer {ALICE_TOKEN}"}):
        status, body = await _http(app.http_port, "GET", "/status", headers=headers)
        assert status == 200 and b"<table id=\"pools\">" in body, body[:300]


async def test_status_in_chromium_shows_waiting_client(gateway_app: Any, pg_db: str, tmp_path: Path) -> None:
    app = await gateway_app(admin_users=["alice"], databases={"app": {"dbname": pg_db, "pool_size": 1}})
    dsn = app.pg_dsn("alice", ALICE_PASSWORD, "app")
    holder = await asyncpg.connect(dsn, statement_cache_size=0)
    waiter = await asyncpg.connect(dsn, statement_cache_size=0)
    try:
        # a burst: the only server is held in a transaction, one more client queues for it
        tx = holder.transaction()
        await tx.start()
        await holder.execute("select 1")
        waiting = asyncio.ensure_future(waiter.fetchval("select 2"))
        pool = app.gateway.pools["app"]
        await eventually(lambda: len(pool.cl_waiting) == 1, what="a waiting client")
        url = f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/status"
        rc, dom, err = await _chromium(tmp_path, "--dump-dom", url)
        assert rc == 0, err[-2000:]
        row = re.search(r"<tr class=\"waiting\"><td>app</td>.*?</tr>", dom, re.S)
        assert row, dom[:3000]
        assert '<td class="cl_waiting">1</td>' in row.group(0), row.group(0)
        assert "<svg" in dom and "<polyline" in dom, dom[:3000]
        shot = tmp_path / "status.png"
        rc, _, err = await _chromium(tmp_path, f"--screenshot={shot}", url)
        assert rc == 0, err[-2000:]
        assert shot.exists() and shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 5000
        await tx.commit()
        assert await waiting == 2
    finally:
        await holder.close()
        await waiter.close()
    # after the burst: nobody waits, and the wait was observed (percentiles are no longer empty)
    status, body = await _http(app.http_port, "GET", "/status", headers=_basic("alice", ALICE_PASSWORD))
    assert status == 200
    assert b'<td class="cl_waiting">0</td>' in body
    assert pool.obs.wait.count >= 1 and b"wait p99" in body
