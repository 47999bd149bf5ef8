"""GET /listen: LISTEN as Server-Sent Events (curl -N, resume with Last-Event-ID, errors)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
from typing import Any

import pytest

from tests.gateway.conftest import ALICE_PASSWORD
from tests.gateway.pool_helpers import admin
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(60)

BASIC = "Basic " + base64.b64encode(f"alice:{ALICE_PASSWORD}".encode()).decode()


class Curl:
    """``curl -N`` reading the event stream; events parsed as they come."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.events: list[dict[str, Any]] = []
        self.comments: list[str] = []

    @classmethod
    async def start(cls, url: str, *headers: str) -> "Curl":
        curl = shutil.which("curl")
        assert curl is not None, "curl is required"
        args = [curl, "-sN", url]
        for h in headers:
            args += ["-H", h]
        proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
        return cls(proc)

    async def next(self, timeout: float = 10) -> dict[str, Any] | None:
        """The next event (fields id/event/data), or None at the end of the stream."""
        assert self.proc.stdout is not None
        ev: dict[str, Any] = {}
        while True:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode()
            if not line:
                return None
            line = line.rstrip("\n")
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            if not line:
                if "event" in ev:
                    if "data" in ev:
                        ev["data"] = json.loads(ev["data"])
                    self.events.append(ev)
                    return ev
                ev = {}  # e.g. only "retry:"
                continue
            k, _, v = line.partition(": ")
            ev[k] = v

    async def until_comment(self, text: str, timeout: float = 10) -> None:
        assert self.proc.stdout is not None
        while text not in self.comments:
            line = (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode()
            assert line, "stream ended"
            if line.startswith(":"):
                self.comments.append(line[1:].strip())

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def test_curl_receives_and_resumes_from_backlog(gateway_app: Any, pg: PgCluster) -> None:
    app = await gateway_app(listen_backlog=3, listen_heartbeat=0.2)
    url = f"http://127.0.0.1:{app.http_port}/listen?database=app&channel=sse_a&channel=sse_b"
    adm = await admin(pg)
    c = await Curl.start(url, f"Authorization: {BASIC}")
    try:
        await c.until_comment("listening")
        sender = await adm.fetchval("select pg_backend_pid()")
        for i in range(4):
            await adm.execute("select pg_notify($1, $2)", "sse_a" if i % 2 == 0 else "sse_b", f"p{i}\nline")
        evs = [await c.next() for _ in range(4)]
        assert [e["event"] for e in evs] == ["notification"] * 4
        assert [e["data"] for e in evs] == [{"channel": "sse_a" if i % 2 == 0 else "sse_b", "payload": f"p{i}\nline",
                                            "pid": sender} for i in range(4)]
        ids = [e["id"] for e in evs]
        assert len(set(ids)) == 4
        await c.until_comment("heartbeat", timeout=5)
        await c.stop()
        # missed while away: the backlog (3 per channel) covers it
        for i in range(4, 6):
            await adm.execute("select pg_notify('sse_a', $1)", f"p{i}")
        r = await Curl.start(url, f"Authorization: {BASIC}", f"Last-Event-ID: {ids[1]}")
        got = [await r.next() for _ in range(4)]
        assert [e["data"]["payload"] for e in got] == ["p2\nline", "p3\nline", "p4", "p5"]
        assert got[0]["id"] == ids[2]
        await r.stop()
        # too far back: p2 left the backlog of sse_a -> a gap event first, then what is kept
        await adm.execute("select pg_notify('sse_a', 'p6')")
        g = await Curl.start(url, f"Authorization: {BASIC}", f"Last-Event-ID: {ids[1]}")
        first = await g.next()
        assert first is not None and first["event"] == "gap" and "backlog" in first["data"]["reason"]
        kept = [await g.next() for _ in range(4)]
        assert [e["data"]["payload"] for e in kept] == ["p3\nline", "p4", "p5", "p6"]
        await g.stop()
    finally:
        await c.stop()
        await adm.close()


async def _get(port: int, target: str, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    hdr = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    w.write(f"GET {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{hdr}\r\n".encode())
    data = await asyncio.wait_for(r.read(), 10)
    w.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


@pytest.mark.parametrize("target,headers,status,code", [
    ("/listen?channel=x&database=app", {}, 401, "28000"),
    ("/listen?channel=x", {"authorization": "Basic " + base64.b64encode(b"alice:wrong").decode()}, 401, "28P01"),
    ("/listen?channel=x", {"authorization": "Basic !!"}, 401, "28000"),
    ("/listen", {"authorization": BASIC}, 400, "42601"),
    ("/listen?channel=" + "x" * 64, {"authorization": BASIC}, 400, "42602"),
    ("/listen?channel=x&database=nope", {"authorization": BASIC}, 404, "3D000"),
    ("/listen?channel=x", {"neon-connection-string": "mysql://a@b/c"}, 400, "08P01"),
])
async def test_errors_are_4xx_json(gateway_app: Any, target: str, headers: dict[str, str], status: int,
                                   code: str) -> None:
    app = await gateway_app()
    st, body = await _get(app.http_port, target, headers)
    assert (st, body["code"]) == (status, code), body
    assert body["message"]


async def test_neon_connection_string_auth(gateway_app: Any, pg: PgCluster) -> None:
    app = await gateway_app()
    adm = await admin(pg)
    c = await Curl.start(f"http://127.0.0.1:{app.http_port}/listen?channel=sse_n",
                         f"Neon-Connection-String: postgresql://alice:{ALICE_PASSWORD}@h/app")
    try:
        await c.until_comment("listening")
        await adm.execute("notify sse_n, 'hello'")
        ev = await c.next()
        assert ev is not None and ev["data"]["payload"] == "hello"
    finally:
        await c.stop()
        await adm.close()
