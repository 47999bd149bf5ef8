"""The quotes API as a Cloudflare Python Worker, talking to PostgreSQL through a wirepool gateway.

Routes:

* ``GET /quotes``            -> 200 ``{"quotes": [...], "limit": n, "offset": n}``
  (``?limit=`` 1..100, default 20; ``?offset=``; ``?author=`` exact match)
* ``GET /quotes/<id>``       -> 200 ``{"id", "text", "author", "created_at"}`` or 404
* ``POST /quotes``           -> 201 with the new quote (JSON body ``{"text", "author"}``), 400 if invalid

The database is reached with the wirepool driver (``driver/``, pure Python,
bundled with the worker) over the gateway's WebSocket or HTTP endpoint --
the Workers runtime has no raw TCP for Python.  ``DATABASE_URL`` (a secret)
is e.g. ``wss://gw.example.com/quotes?token=<api token>&lazy_connect=true&describe_first=false``:
an API token logs in without a password exchange, ``lazy_connect`` sends
the login together with the first query and ``describe_first=false`` skips
the Describe round trip, so each request costs ONE round trip to the
gateway after the WebSocket handshake.  ``https://...`` works too (JS fetch).

The same code runs under the local runner (``deploy/worker/local/``), which
provides a ``workers`` module with the same ``Response`` / ``WorkerEntrypoint``.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import parse_qs, urlsplit

from workers import Response, WorkerEntrypoint

import driver
from driver import exceptions as db_errors

MAX_TEXT = 500
MAX_AUTHOR = 100
_ID = re.compile(r"^/quotes/(\d{1,18})/?$")

_COLUMNS = "id, text, author, created_at"


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    h = {"content-type": "application/json; charset=utf-8", "cache-control": "no-store"}
    h.update(headers or {})
    return Response(json.dumps(data, ensure_ascii=False), status=status, headers=h)


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _quote(row: Any) -> dict[str, Any]:
    return {"id": row["id"], "text": row["text"], "author": row["author"],
            "created_at": row["created_at"].isoformat()}


def _int_param(qs: dict[str, list[str]], name: str, default: int, lo: int, hi: int) -> int:
    raw = qs.get(name, [str(default)])[-1]
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer") from None
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return value


async def _connect(env: Any) -> Any:
    return await driver.connect(str(env.DATABASE_URL), statement_cache_size=0, timeout=15,
                                command_timeout=10)


async def list_quotes(env: Any, qs: dict[str, list[str]]) -> Response:
    try:
        limit = _int_param(qs, "limit", 20, 1, 100)
        offset = _int_param(qs, "offset", 0, 0, 10_000_000)
    except ValueError as e:
        return _error(400, str(e))
    author = qs.get("author", [None])[-1]
    conn = await _connect(env)
    try:
        if author is None:
            rows = await conn.fetch(f"select {_COLUMNS} from quotes order by id limit $1 offset $2",
                                    limit, offset)
        else:
            rows = await conn.fetch(f"select {_COLUMNS} from quotes where author = $1 "
                                    "order by id limit $2 offset $3", author, limit, offset)
    finally:
        await conn.close()
    return _json({"quotes": [_quote(r) for r in rows], "limit": limit, "offset": offset})


async def get_quote(env: Any, quote_id: int) -> Response:
    conn = await _connect(env)
    try:
        row = await conn.fetchrow(f"select {_COLUMNS} from quotes where id = $1", quote_id)
    finally:
        await conn.close()
    if row is None:
        return _error(404, f"quote {quote_id} not found")
    return _json(_quote(row))


async def create_quote(env: Any, request: Any) -> Response:
    try:
        body = json.loads(await request.text())
    except ValueError:
        return _error(400, "the body must be JSON")
    if not isinstance(body, dict):
        return _error(400, "the body must be a JSON object")
    text, author = body.get("text"), body.get("author")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        return _error(400, f"text must be a non-empty string of at most {MAX_TEXT} characters")
    if not isinstance(author, str) or not author.strip() or len(author) > MAX_AUTHOR:
        return _error(400, f"author must be a non-empty string of at most {MAX_AUTHOR} characters")
    conn = await _connect(env)
    try:
        row = await conn.fetchrow(f"insert into quotes (text, author) values ($1, $2) returning {_COLUMNS}",
                                  text.strip(), author.strip())
    finally:
        await conn.close()
    q = _quote(row)
    return _json(q, 201, {"location": f"/quotes/{q['id']}"})


async def handle(request: Any, env: Any) -> Response:
    """Route one request (shared by ``on_fetch`` and ``Default.fetch``)."""
    url = urlsplit(str(request.url))
    path = url.path.rstrip("/") or "/"
    method = str(request.method).upper()
    try:
        if path == "/quotes":
            if method == "GET":
                return await list_quotes(env, parse_qs(url.query))
            if method == "POST":
                return await create_quote(env, request)
            return _error(405, f"{method} not allowed on /quotes")
        m = _ID.match(path)
        if m:
            if method == "GET":
                return await get_quote(env, int(m.group(1)))
            return _error(405, f"{method} not allowed on {path}")
        return _error(404, f"no route for {path}")
    except db_errors.PostgresError as e:
        return _json({"error": "database error", "sqlstate": e.sqlstate}, 500)
    except (db_errors.InterfaceError, OSError) as e:
        return _json({"error": f"database unavailable: {type(e).__name__}"}, 503)


class Default(WorkerEntrypoint):  # type: ignore[misc]
    """Cloudflare's class-based entry point (``self.env`` holds the bindings)."""

    async def fetch(self, request: Any) -> Response:
        return await handle(request, self.env)


async def on_fetch(request: Any, env: Any) -> Response:
    """The older module-level handler style; same behaviour."""
    return await handle(request, env)
