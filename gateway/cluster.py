"""The internal channel between a gateway's workers and instances (docs/scaling.md).

Every worker of a ``workers = N`` gateway serves its HTTP routes a second time
on a unix socket in the supervisor's private runtime directory
(``worker-<i>.sock``, gateway/workers.py); instances reach each other on the
``advertise_url`` they name in their ``/pg`` session tokens.  Requests on this
channel carry ``Wirepool-Internal: <HMAC-SHA256(cluster secret, "wirepool-internal-v1")>``
(the secret: ``cluster_secret`` in the TOML, or a random one the supervisor
gives its workers); without the right value a request is an ordinary client's.

What travels on it:

* ``POST /pg`` with a session token owned by another worker or instance: the
  token's MAC is checked here first (a forged token is refused, 401, and never
  forwarded), then the request is forwarded as it came, with
  ``Wirepool-Forwarded-For: <client address>``; the owner checks the token
  again and answers, and the answer is relayed unchanged.  A forwarded request
  is never forwarded again (a token its owner did not issue: 401).
* ``GET /metrics``: the worker answering a scrape adds the others' samples,
  each labelled ``worker="<i>"`` (per-worker labels, not prometheus_client's
  multiprocess mode: the gauges are computed at scrape time from each
  process's own lists, which that mode cannot share).
* ``GET /status``: the page shows one section per worker.
* the admin console: ``SHOW`` answers every worker's rows with a ``worker``
  column added; commands (PAUSE, RESUME, RELOAD, SET, KILL, SHUTDOWN...) run
  on every worker.
* CancelRequests (pg_listen, ``/pg/cancel``) that land on a worker or an
  instance that does not hold the session are passed to the one that does
  (the cancel key names it: gateway/peers.py).
* After a takeover (gateway/handover.py), requests for the predecessor's
  sessions go to its unix sockets while it drains (``predecessor``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import struct
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Awaitable, Callable
from urllib.parse import urlsplit

import h11

from .http import HttpConnection, HttpListener, HttpRequest, HttpResponse
from .peers import CancelRouter
from .takeover import Predecessor

if TYPE_CHECKING:  # pragma: no cover
    from .workers import WorkerContext

log = logging.getLogger("wirepool.cluster")

H_INTERNAL = "wirepool-internal"
H_FORWARDED_FOR = "wirepool-forwarded-for"
H_WORKER = "wirepool-worker"
_HOP = frozenset({"host", "content-length", "connection", "transfer-encoding", "keep-alive", "te",
                  "upgrade", H_INTERNAL, H_FORWARDED_FOR})
_RELAY_SKIP = frozenset({"content-length", "connection", "transfer-encoding", "date", "server", "content-type"})
PEER_TIMEOUT = 5.0
CONSOLE_TIMEOUT = 600.0


def token_secret(secret: bytes) -> bytes:
    """The key of the /pg session-token MACs, derived from the shared secret."""
    return hmac.new(secret, b"wirepool-pg-session-tokens-v1", hashlib.sha256).digest()


def owner_bytes(index: int, url: str | None, incarnation: bytes = b"\0\0\0\0") -> bytes:
    """What a token names: worker index, 4 bytes of incarnation -- the
    supervisor's generation (2 bytes, shared by its workers) and 2 random ones
    per process (so a restarted or taken-over process does not claim its
    predecessor's tokens) -- and advertise_url."""
    return struct.pack("!H", index) + incarnation + (url or "").encode("utf-8")


def parse_owner(owner: bytes) -> tuple[int, str]:
    """(worker index, advertise_url) of a token's owner."""
    if len(owner) < 6:
        return 0, ""
    return struct.unpack("!H", owner[:2])[0], owner[6:].decode("utf-8", "replace")


class Cluster:
    """One per worker (or per instance with ``advertise_url``), as ``gateway.cluster``."""

    def __init__(self, app: Any, ctx: "WorkerContext") -> None:
        from .http_exec import get_executor
        self.app = app
        self.gw = app.gateway
        self.ctx = ctx
        self.index = ctx.index
        self.count = ctx.count
        g = app.config.gateway
        self.url = g.advertise_url or dict(g.peers).get(g.peer_id, "")
        self.generation = ctx.generation
        self.owner = owner_bytes(self.index, self.url, ctx.generation + secrets.token_bytes(2))
        self._auth = hmac.new(ctx.secret, b"wirepool-internal-v1", hashlib.sha256).hexdigest()
        ex = get_executor(self.gw)
        ex.set_identity(token_secret(ctx.secret), self.owner)
        self.gw.cluster = self
        self._internal: HttpListener | None = None
        self._server: asyncio.base_events.Server | None = None
        self.forwarded = 0
        #: the gateway this one took over, while it drains (gateway/takeover.py)
        self.predecessor: Predecessor | None = Predecessor(ctx.predecessor) if ctx.predecessor else None
        self.cancels = CancelRouter(self)  # cancel keys name their owner (gateway/peers.py)

    # ------------------------------------------------------------ lifecycle
    def register(self) -> None:
        """Internal routes, and the wrappers that make /metrics and /status whole."""
        http = self.app.http
        assert http is not None
        http.add_route("POST", "/internal/admin", self._admin_route)
        http.add_route("POST", "/internal/cancel", self.cancels.route)
        for key, wrap in ((("GET", "/metrics"), self._metrics), (("GET", "/status"), self._status)):
            orig = http.routes.get(key)
            if orig is not None and self.count > 1:
                http.routes[key] = (lambda o, w: (lambda req: w(req, o)))(orig, wrap)

    async def start(self) -> None:
        if self.count <= 1:
            return
        http = self.app.http
        internal = HttpListener("unix", 0, max_body_size=http.max_body_size)
        internal.routes = http.routes  # the same routes; internal ones check the header
        internal.header_timeout = http.header_timeout
        self._internal = internal
        path = self.ctx.socket_path(self.index)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(lambda: HttpConnection(internal), path)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._internal is not None:
            await self._internal.close()

    # ------------------------------------------------------------ trust
    def is_internal(self, req: HttpRequest) -> bool:
        v = req.header(H_INTERNAL)
        return v is not None and hmac.compare_digest(v.encode("latin-1", "replace"), self._auth.encode())

    def _peers(self) -> list[int]:
        return [i for i in range(self.count) if i != self.index]

    async def request(self, target: str, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes = b"", timeout: float | None = PEER_TIMEOUT) -> tuple[int, list[tuple[str, str]], bytes]:
        """One HTTP/1.1 request to a worker's unix socket (``target`` starting with "/")
        or another instance (``http(s)://host:port``); returns (status, headers, body)."""
        coro = _http(target, method, path, [(H_INTERNAL, self._auth), *headers], body)
        return await (asyncio.wait_for(coro, timeout) if timeout else coro)

    async def _gather(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"",
                      timeout: float | None = PEER_TIMEOUT
                      ) -> dict[int, tuple[int, list[tuple[str, str]], bytes] | None]:
        peers = self._peers()
        res = await asyncio.gather(*(self.request(self.ctx.socket_path(i), method, path, headers, body, timeout)
                                     for i in peers), return_exceptions=True)
        out: dict[int, Any] = {}
        for i, r in zip(peers, res):
            if isinstance(r, BaseException):
                log.warning("worker %d did not answer %s %s: %s", i, method, path, r)
                out[i] = None
            else:
                out[i] = r
        return out

    # ------------------------------------------------------------ /pg forwarding
    async def route_pg(self, req: HttpRequest, token: str) -> HttpResponse | None:
        """Forward a /pg request whose session another worker/instance owns; None: serve it here."""
        from .http_exec import HttpExecError, get_executor
        from .http_protocol import error_response
        if req.header(H_INTERNAL) is not None:
            if not self.is_internal(req):
                return error_response(HttpExecError(401, "28000", "invalid internal credentials"))
            fwd = req.header(H_FORWARDED_FOR)
            if fwd:
                req.peer = fwd
            return None  # forwarded once: never again (http_exec answers 401 if not ours)
        pred = self.predecessor
        try:
            owner = get_executor(self.gw).token_owner(token)  # 401 for a forged token: nothing is forwarded
        except HttpExecError:
            # signed with another secret: the predecessor's random one (it checks the MAC)
            if pred is not None and pred.alive:
                resp = await pred.forward(req, pred.owner_index(token))
                if resp is not None:
                    return resp
            raise
        if owner == self.owner:
            return None
        index, url = parse_owner(owner)
        if url == self.url:
            if owner[2:4] != self.generation:  # an earlier generation at this address: the predecessor's
                resp = await pred.forward(req, index) if pred is not None and pred.alive else None
                return resp  # None: gone with it (401 below)
            if index >= self.count or index == self.index:
                return None  # an earlier process of this worker: 401
            target = self.ctx.socket_path(index)
            where = f"worker {index}"
        elif url:
            target, where = url, url
        else:
            return None
        headers = [(k, v) for k, v in req.headers if k not in _HOP] + [(H_FORWARDED_FOR, req.peer)]
        s = self.gw.settings
        timeout = s.http_request_timeout * 2 + 30 if s.http_request_timeout else None
        try:
            status, rh, body = await self.request(target, "POST", req.target, headers, req.body, timeout)
        except (OSError, asyncio.TimeoutError, h11.ProtocolError, ValueError) as e:
            log.warning("forwarding /pg to %s failed: %s", where, e)
            return error_response(HttpExecError(410, "08003", f"HTTP session is gone: its owner ({where}) "
                                                "cannot be reached"))
        self.forwarded += 1
        ctype = next((v for k, v in rh if k == "content-type"), None)
        return HttpResponse(status, body, ctype, [(k, v) for k, v in rh if k not in _RELAY_SKIP])

    # ------------------------------------------------------------ /metrics
    async def _metrics(self, req: HttpRequest, local: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> HttpResponse:
        mine = await local(req)
        if self.is_internal(req):
            return mine
        peers = await self._gather("GET", "/metrics", [])
        texts = {self.index: mine.body.decode()}
        for i, r in peers.items():
            if r is not None and r[0] == 200:
                texts[i] = r[2].decode()
        return HttpResponse(200, merge_metrics(texts, self.count), mine.content_type)

    # ------------------------------------------------------------ /status
    async def _status(self, req: HttpRequest, local: Callable[[HttpRequest], Awaitable[HttpResponse]]) -> HttpResponse:
        if self.is_internal(req):
            from .status import render
            return HttpResponse(200, render(self.gw).encode(), "text/html; charset=utf-8")
        mine = await local(req)  # checks the admin credentials
        if mine.status != 200:
            return mine
        peers = await self._gather("GET", "/status", [])
        pages = {self.index: mine.body.decode()}
        for i, r in peers.items():
            pages[i] = r[2].decode() if r is not None and r[0] == 200 else \
                f"<body><h1>wirepool</h1><p>worker {i} did not answer</p></body>"
        return HttpResponse(200, merge_status(pages).encode(), mine.content_type, mine.headers)

    # ------------------------------------------------------------ admin console
    async def console(self, console: Any, sql: str) -> bytes:
        """Run an admin command on every worker; SHOW rows get a ``worker`` column."""
        mine = asyncio.ensure_future(console.execute_local(sql))  # every worker at once (PAUSE waits on each)
        role = [("wirepool-admin-role", "admin" if console.admin else "stats")]
        try:
            peers = await self._gather("POST", "/internal/admin", role, sql.encode(), timeout=CONSOLE_TIMEOUT)
        finally:
            local = await mine
        replies = {self.index: local}
        for i, r in peers.items():
            replies[i] = r[2] if r is not None and r[0] == 200 else None
        return merge_console(replies, local)

    async def _admin_route(self, req: HttpRequest) -> HttpResponse:
        if not self.is_internal(req):
            return HttpResponse(404, b"not found\n")
        from .admin import Console
        admin = req.header("wirepool-admin-role") == "admin"
        console = Console(SimpleNamespace(gw=self.gw), admin)  # type: ignore[arg-type]
        out = await console.execute_local(req.body.decode("utf-8", "replace"))
        return HttpResponse(200, out, "application/octet-stream")


# --------------------------------------------------------------------------- merging

def merge_metrics(texts: dict[int, str], count: int) -> bytes:
    """Prometheus texts of the workers -> one exposition, samples labelled ``worker``."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.metrics_core import Metric
    from prometheus_client.parser import text_string_to_metric_families
    from prometheus_client.samples import Sample

    fams: dict[str, Metric] = {}
    up = Metric("wirepool_worker_up", "1 for each worker that answered this scrape", "gauge")
    for i in range(count):
        up.samples.append(Sample("wirepool_worker_up", {"worker": str(i)}, 1.0 if i in texts else 0.0))
    for i in sorted(texts):
        for fam in text_string_to_metric_families(texts[i]):
            out = fams.get(fam.name)
            if out is None:
                out = fams[fam.name] = Metric(fam.name, fam.documentation, fam.type, fam.unit)
            for s in fam.samples:
                out.samples.append(Sample(s.name, {**s.labels, "worker": str(i)}, s.value, s.timestamp, s.exemplar))

    class _Merged:
        def collect(self) -> list[Metric]:
            return [up, *fams.values()]

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Merged())
    return generate_latest(reg)


def merge_status(pages: dict[int, str]) -> str:
    first = pages[min(pages)]
    head, _, _ = first.partition("<body>")
    parts = []
    for i in sorted(pages):
        body = pages[i].partition("<body>")[2].rpartition("</body>")[0]
        parts.append(body.replace("<h1>wirepool</h1>", f"<h1>wirepool · worker {i}</h1>", 1))
    return head + "<body>\n" + "\n<hr>\n".join(parts) + "\n</body></html>\n"


def _messages(data: bytes) -> list[tuple[int, bytes]]:
    from driver.protocol.framing import MessageReader
    r = MessageReader()
    r.feed(data)
    return r.read()


def _frame(t: int, body: bytes) -> bytes:
    return bytes([t]) + struct.pack("!I", len(body) + 4) + body


def merge_console(replies: dict[int, bytes | None], local: bytes) -> bytes:
    """SHOW replies of every worker -> one result with a trailing ``worker`` column;
    a command's reply: the first error any worker gave, else the local reply."""
    msgs = {i: _messages(r) for i, r in replies.items() if r is not None}
    local_msgs = _messages(local)
    if not local_msgs or local_msgs[0][0] != ord("T"):
        for i in sorted(msgs):
            if any(t == ord("E") for t, _ in msgs[i]):
                return replies[i] or local
        return local
    t_body = local_msgs[0][1]
    (n,) = struct.unpack("!h", t_body[:2])
    field = b"worker\x00" + struct.pack("!IhIhih", 0, 0, 25, -1, -1, 0)
    out = [_frame(ord("T"), struct.pack("!h", n + 1) + t_body[2:] + field)]
    rows = 0
    for i in sorted(msgs):
        label = str(i).encode()
        for t, body in msgs[i]:
            if t == ord("D"):
                (k,) = struct.unpack("!h", body[:2])
                out.append(_frame(t, struct.pack("!h", k + 1) + body[2:] + struct.pack("!i", len(label)) + label))
                rows += 1
    out.append(_frame(ord("C"), b"SHOW\x00"))
    return b"".join(out)


async def _http(target: str, method: str, path: str, headers: list[tuple[str, str]], body: bytes
                ) -> tuple[int, list[tuple[str, str]], bytes]:
    if target.startswith("/"):
        reader, writer = await asyncio.open_unix_connection(target)
        host = "localhost"
    else:
        u = urlsplit(target)
        ctx = ssl.create_default_context() if u.scheme == "https" else None
        reader, writer = await asyncio.open_connection(u.hostname, u.port, ssl=ctx)
        host = u.netloc
    try:
        conn = h11.Connection(h11.CLIENT)
        hdrs = [("host", host), ("content-length", str(len(body))), ("connection", "close"), *headers]
        writer.write(conn.send(h11.Request(method=method, target=path, headers=hdrs)) +
                     (conn.send(h11.Data(data=body)) if body else b"") + conn.send(h11.EndOfMessage()))
        status, rh, chunks = 0, [], []
        while True:
            ev = conn.next_event()
            if ev is h11.NEED_DATA:
                data = await reader.read(65536)
                conn.receive_data(data)
                if not data and conn.their_state is not h11.DONE:
                    if conn.their_state is h11.SEND_BODY and status:
                        break
                    raise ConnectionError("connection closed before the response")
            elif isinstance(ev, h11.Response):
                status = ev.status_code
                rh = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers]
            elif isinstance(ev, h11.Data):
                chunks.append(bytes(ev.data))
            elif isinstance(ev, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
        return status, rh, b"".join(chunks)
    finally:
        writer.close()
