"""The edge demo (deploy/worker): the quotes API inside Pyodide under Node against a live gateway.

The seed script loads quotes.json through the gateway (CPython driver, ws://),
then deploy/worker/local/run_local.cjs serves the worker's handler code
(deploy/worker/src/entry.py, unchanged) and this test drives all three
routes over HTTP: the worker connects to the gateway with an API token,
lazy_connect and describe_first=false (WebSocket), or over http:// (fetch).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.gateway.conftest import ALICE_PASSWORD
from tests.pyodide.conftest import ROOT, pyodide_available

pytestmark = pytest.mark.timeout(120)

WORKER = ROOT / "deploy" / "worker"
TOKEN = "quotes-worker-token-7f3a"


def _load_seed() -> Any:
    spec = importlib.util.spec_from_file_location("wp_worker_seed", WORKER / "seed.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Runner:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, load_ms: int) -> None:
        self.proc, self.port, self.load_ms = proc, port, load_ms

    async def call(self, method: str, path: str, body: Any = None,
                   raw: bytes | None = None) -> tuple[int, dict[str, str], Any]:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)

        def do() -> tuple[int, dict[str, str], bytes]:
            req = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", data=data, method=method,
                                         headers={"content-type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
            except urllib.error.HTTPError as e:
                return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

        status, headers, payload = await asyncio.to_thread(do)
        return status, headers, json.loads(payload) if payload else None


@pytest.fixture
async def start_runner() -> AsyncIterator[Any]:
    reason = pyodide_available()
    if reason is not None:
        pytest.skip(reason)
    procs: list[asyncio.subprocess.Process] = []

    async def start(database_url: str, *extra: str) -> Runner:
        proc = await asyncio.create_subprocess_exec(
            "node", str(WORKER / "local" / "run_local.cjs"), "--port", "0", "--database-url", database_url,
            *extra, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=str(ROOT))
        procs.append(proc)
        assert proc.stdout is not None and proc.stderr is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        if not line:
            err = await proc.stderr.read()
            raise AssertionError(f"runner failed: {err.decode()[-3000:]}")
        info = json.loads(line)
        return Runner(proc, info["port"], info["load_ms"])

    yield start
    for p in procs:
        if p.returncode is None:
            p.terminate()
        await p.wait()


@pytest.mark.parametrize("transport", ["ws", "http"])
async def test_quotes_worker_routes(gateway_app: Any, pg_db: str, start_runner: Any, transport: str) -> None:
    users = {"alice": {"password": ALICE_PASSWORD, "tokens": [TOKEN]}}
    app = await gateway_app(pg_listen=None, users=users, databases={"quotes": {"dbname": pg_db}})
    seed = _load_seed()
    n = await seed.seed(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/quotes")
    assert n == len(json.loads((WORKER / "quotes.json").read_text())) >= 450
    # idempotent unless --reset
    assert await seed.seed(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/quotes") == n

    if transport == "ws":
        url = f"ws://127.0.0.1:{app.http_port}/quotes?token={TOKEN}&lazy_connect=true&describe_first=false"
        runner = await start_runner(url)
    else:
        url = f"http://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/quotes?describe_first=false"
        runner = await start_runner(url, "--on-fetch")

    status, _, page = await runner.call("GET", "/quotes?limit=5&offset=10")
    assert status == 200, page
    assert [q["id"] for q in page["quotes"]] == [11, 12, 13, 14, 15]
    quotes = json.loads((WORKER / "quotes.json").read_text())
    assert [q["text"] for q in page["quotes"]] == [q["text"] for q in quotes[10:15]]
    status, _, default_page = await runner.call("GET", "/quotes")
    assert status == 200 and len(default_page["quotes"]) == 20 and default_page["limit"] == 20
    author = quotes[0]["author"]
    status, _, by_author = await runner.call("GET", "/quotes?author=" + urllib.request.quote(author) + "&limit=100")
    assert status == 200 and by_author["quotes"]
    assert all(q["author"] == author for q in by_author["quotes"])
    assert len(by_author["quotes"]) == min(100, sum(1 for q in quotes if q["author"] == author))

    status, _, one = await runner.call("GET", "/quotes/42")
    assert status == 200
    assert (one["id"], one["text"], one["author"]) == (42, quotes[41]["text"], quotes[41]["author"])
    assert one["created_at"].endswith("+00:00")
    status, _, missing = await runner.call("GET", f"/quotes/{n + 1000}")
    assert status == 404 and "not found" in missing["error"]

    new = {"text": "Ship it, then measure it — twice.", "author": "Wirepool Tests"}
    status, headers, created = await runner.call("POST", "/quotes", new)
    assert status == 201, created
    assert created["text"] == new["text"] and created["author"] == new["author"]
    assert created["id"] == n + 1 and headers["location"] == f"/quotes/{n + 1}"
    status, _, again = await runner.call("GET", f"/quotes/{created['id']}")
    assert status == 200 and again == created

    # validation and routing errors
    assert (await runner.call("POST", "/quotes", {"text": "", "author": "x"}))[0] == 400
    assert (await runner.call("POST", "/quotes", {"text": "x" * 501, "author": "x"}))[0] == 400
    assert (await runner.call("POST", "/quotes", raw=b"{not json"))[0] == 400
    assert (await runner.call("GET", "/quotes?limit=0"))[0] == 400
    assert (await runner.call("DELETE", "/quotes/1"))[0] == 405
    assert (await runner.call("GET", "/nope"))[0] == 404

    # what the database holds now (checked directly, not through the worker)
    import driver

    conn = await driver.connect(f"ws://alice:{ALICE_PASSWORD}@127.0.0.1:{app.http_port}/quotes",
                                statement_cache_size=0)
    try:
        assert await conn.fetchval("select count(*) from quotes") == n + 1
        assert await conn.fetchval("select author from quotes where id = $1", n + 1) == "Wirepool Tests"
    finally:
        await conn.close()
    print(f"\nworker runner ({transport}): Pyodide load {runner.load_ms} ms")


def test_worker_files_exist() -> None:
    for rel in ("wrangler.toml", "src/entry.py", "seed.py", "quotes.json", "README.md",
                "local/run_local.cjs", "local/workers.py"):
        assert (WORKER / rel).is_file(), rel
    toml = (WORKER / "wrangler.toml").read_text()
    assert 'main = "src/entry.py"' in toml and "python_workers" in toml
    assert isinstance(Path, type)
