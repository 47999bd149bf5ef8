"""``GET /listen``: LISTEN over Server-Sent Events, for runtimes that only have ``fetch``.

``GET /listen?channel=a&channel=b`` on the ``listen`` port, authenticated like
``POST /sql`` / ``POST /pg``: ``Neon-Connection-String: postgresql://user:pw@host/db``,
``Authorization: Basic`` (user:password) or ``Authorization: Bearer <API token>``;
the database from the connection string, else ``?database=`` or
``Wirepool-Database``, else the user's name.  The answer is ``200
text/event-stream`` with (docs/listen.md)::

    : wirepool listen                       (a comment: the stream is open)
    id: <epoch>-<seq>
    event: notification
    data: {"channel": "a", "payload": "...", "pid": 1234}

    event: gap
    data: {"reason": "..."}                  (notifications may be missing)

    : heartbeat                              (every listen_heartbeat seconds)

    event: error
    data: {"code": "53400", "message": "..."}   (then the stream ends)

``Last-Event-ID`` (or ``?last_event_id=``) resumes: what the per-channel
backlog (``listen_backlog`` entries, ``listen_backlog_bytes``) still holds
after that id is sent first, preceded by a ``gap`` event when it no longer
covers everything since.  Errors before the stream starts are 4xx JSON
``{"message", "code"}`` (401/404/429 for credentials, 403 for an API token on a
database without ``user``, 400 for bad channels).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Callable
from urllib.parse import parse_qsl, unquote, urlsplit

from .auth import AuthFailed
from .http import HttpRequest, HttpResponse
from .http_exec import HttpExecError, get_executor
from .http_protocol import parse_basic
from .listen import hub_for
from .listen_core import MAX_CHANNEL, ListenLimit, Notification
from .neon_sql import NeonError, parse_connection_string

log = logging.getLogger("wirepool.gateway.listen")

PATH = "/listen"
_HEADERS = [("cache-control", "no-store"), ("x-accel-buffering", "no"), ("access-control-allow-origin", "*")]
_CORS = [("access-control-allow-origin", "*"),
         ("access-control-allow-headers", "authorization, neon-connection-string, wirepool-database, last-event-id"),
         ("access-control-allow-methods", "GET, OPTIONS"), ("access-control-max-age", "86400")]


def _error(status: int, code: str, message: str) -> HttpResponse:
    body = json.dumps({"message": message, "code": code}).encode()
    hdrs = list(_HEADERS)
    if status == 401:
        hdrs.append(("www-authenticate", 'Basic realm="wirepool", charset="UTF-8"'))
    return HttpResponse(status, body, "application/json", hdrs)


def _credentials(req: HttpRequest, query: list[tuple[str, str]]) -> tuple[str | None, str | None, str | None, str]:
    """(user, password, token, database)."""
    q = dict(query)
    database = q.get("database") or unquote(req.header("wirepool-database") or "")
    cs = req.header("neon-connection-string")
    auth = (req.header("authorization") or "").strip()
    scheme, _, value = auth.partition(" ")
    scheme = scheme.lower()
    if cs is not None:
        user, password, db = parse_connection_string(cs)
        return user, password, None, db or database
    if scheme == "basic":
        user, password = parse_basic(value)
        return user, password, None, database
    if scheme == "bearer" and value.strip():
        return req.header("wirepool-user"), None, value.strip(), database
    raise HttpExecError(401, "28000", "missing credentials: Neon-Connection-String, Authorization: Basic "
                                      "or Authorization: Bearer <API token>")


def _sse(event: str, data: Any, ident: str | None = None) -> bytes:
    head = f"id: {ident}\n" if ident is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()


class SseSubscriber:
    """One ``GET /listen`` stream, as a hub subscriber."""

    def __init__(self, hub: Any, write: Callable[[bytes], None], transport: Any, epoch: str, limit: int) -> None:
        self.hub = hub
        self.batch: list[bytes] = []
        self.batch_bytes = 0
        self.write = write
        self.transport = transport
        self.epoch = epoch
        self.limit = limit
        self.last = 0  # seq of the last event sent (no duplicates between backlog and live)
        self.done = asyncio.get_running_loop().create_future()

    def event(self, n: Notification) -> bytes:
        return _sse("notification", {"channel": n.channel, "payload": n.payload, "pid": n.pid},
                    f"{self.epoch}-{n.seq}")

    def deliver(self, n: Notification) -> bool:
        """Batched per upstream chunk (the hub calls :meth:`flush`; backlog replays flush themselves)."""
        if self.done.done() or n.seq <= self.last:
            return True
        self.last = n.seq
        ev = self.event(n)
        if not self.batch:
            self.hub.touched.append(self)
        self.batch.append(ev)
        self.batch_bytes += len(ev)
        if self.batch_bytes >= 16384:
            self.flush()
        tr = self.transport
        return tr is None or bool(tr.get_write_buffer_size() + self.batch_bytes <= self.limit)

    def flush(self) -> None:
        if self.batch:
            data = b"".join(self.batch)
            self.batch.clear()
            self.batch_bytes = 0
            if not self.done.done():
                self.write(data)

    def gap(self, message: str) -> None:
        if not self.done.done():
            self.flush()
            self.write(_sse("gap", {"reason": message}))

    def overflow(self) -> None:
        self.batch.clear()
        if not self.done.done():
            self.write(_sse("error", {"code": "53400", "message": "the client did not read its events (more than "
                                                                  f"listen_queue_bytes = {self.limit} bytes unsent)"}))
            self.done.set_result(None)


class ListenEndpoint:
    def __init__(self, app: Any) -> None:
        self.app = app
        self.streams = 0

    async def options(self, req: HttpRequest) -> HttpResponse:
        return HttpResponse(204, b"", None, list(_CORS))

    async def handle(self, req: HttpRequest) -> HttpResponse:
        gw = self.app.gateway
        query = parse_qsl(urlsplit(req.target).query, keep_blank_values=True)
        channels = list(dict.fromkeys(v for k, v in query if k == "channel"))
        if not channels:
            return _error(400, "42601", "no channel: GET /listen?channel=name[&channel=other...]")
        bad = [c for c in channels if not c or len(c.encode()) > MAX_CHANNEL or "\x00" in c]
        if bad:
            return _error(400, "42602", f"invalid channel name {bad[0]!r} (1 to {MAX_CHANNEL} bytes)")
        last_id = req.header("last-event-id") or dict(query).get("last_event_id")
        try:
            user, password, token, database = _credentials(req, query)
            principal = await get_executor(gw).authenticate(database, user, password, token, req.peer)
        except NeonError as exc:
            return _error(exc.status, str(exc.body.get("code", "08P01")), str(exc.body.get("message", exc)))
        except HttpExecError as exc:
            return _error(exc.status, exc.sqlstate, exc.message)
        pool = gw.pools.get(principal.database)
        if pool is None:  # pragma: no cover - authenticate checked it
            return _error(404, "3D000", f'database "{principal.database}" does not exist')
        try:  # a database without `user`: the client's own pool, whose hub logs in upstream as it
            pool = gw.auth_query.pool_for(pool, principal.user)
        except AuthFailed as exc:  # e.g. an API token: no secret to log in upstream with
            return _error(403, exc.sqlstate, exc.message)
        hub = hub_for(pool)
        if len(channels) > hub.registry.max_channels > 0:
            return _error(400, "53400", f"too many channels ({len(channels)} > listen_max_channels_per_client = "
                                        f"{hub.registry.max_channels})")
        settings = gw.settings

        async def stream(write: Callable[[bytes], None], transport: Any) -> None:
            sub = SseSubscriber(hub, write, transport, hub.registry.epoch, settings.listen_queue_bytes)
            self.streams += 1
            try:
                await self._run(hub, sub, channels, last_id, settings.listen_heartbeat)
            finally:
                self.streams -= 1
                hub.unsubscribe_all(sub)

        return HttpResponse(200, b"", "text/event-stream; charset=utf-8", list(_HEADERS), stream=stream)

    @staticmethod
    async def _run(hub: Any, sub: SseSubscriber, channels: list[str], last_id: str | None,
                   heartbeat: float) -> None:
        write = sub.write
        write(b": wirepool listen\nretry: 1000\n\n")
        futs = []
        try:
            for c in channels:
                f = hub.subscribe(sub, c)
                if f is not None:
                    futs.append(f)
        except ListenLimit as exc:
            write(_sse("error", {"code": exc.sqlstate, "message": exc.message}))
            return
        if last_id:
            epoch, _, seq = last_id.strip().rpartition("-")
            last = int(seq) if seq.isdigit() and epoch == hub.registry.epoch else -1
            if last < 0:
                write(_sse("gap", {"reason": "Last-Event-ID is from another gateway process: "
                                             "notifications since may be missing"}))
            else:
                missed, gap = hub.registry.since(channels, last)
                if gap:
                    write(_sse("gap", {"reason": "the backlog no longer holds every notification since "
                                                 f"{last_id}"}))
                for n in missed:
                    sub.deliver(n)
                if sub in hub.touched:  # replayed here, not in an upstream chunk: write now
                    hub.touched.remove(sub)
                sub.flush()
        if futs:
            try:
                await asyncio.wait_for(asyncio.gather(*futs), hub.settings.server_connect_timeout)
            except asyncio.TimeoutError:
                write(_sse("error", {"code": "08006", "message": "the gateway's listener connection to the "
                                                                 f"database is not available ({hub.last_error})"}))
                return
        write(b": listening\n\n")
        while not sub.done.done():
            try:
                await asyncio.wait_for(asyncio.shield(sub.done), heartbeat)
            except asyncio.TimeoutError:
                write(b": heartbeat\n\n")


def register(app: Any) -> ListenEndpoint:
    ep = ListenEndpoint(app)
    app.http.add_route("GET", PATH, ep.handle)
    app.http.add_route("OPTIONS", PATH, ep.options)
    return ep
