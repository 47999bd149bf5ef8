"""The result cache's operator surface: ``POST /cache/invalidate``, the admin
console's ``SHOW CACHE`` / ``CACHE_INVALIDATE``, and the ``/metrics`` families.

``POST /cache/invalidate`` with ``{"tags": ["quotes", ...]}`` (optionally
``"database": "<[databases] name>"``) drops the entries carrying any of the
tags; access as ``GET /status``: HTTP Basic auth of an ``admin_users`` user,
or ``Authorization: Bearer <API token>`` of one.  Answers
``{"invalidated": <entries dropped>}``; 400 JSON for a malformed body, 401
without admin credentials.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .cache_upstream import get_cache, invalidate
from .http import HttpRequest, HttpResponse

PATH = "/cache/invalidate"
_NO_STORE = ("cache-control", "no-store")
_MAX_TAGS = 1000


def _json(status: int, obj: Any) -> HttpResponse:
    return HttpResponse(status, json.dumps(obj).encode(), "application/json", [_NO_STORE])


def parse_request(body: bytes) -> tuple[list[str], str | None]:
    """``(tags, database)`` from a request body; raises ValueError with the reason."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("tags"), list):
        raise ValueError('expected {"tags": ["tag", ...]}')
    tags = obj["tags"]
    if not tags or len(tags) > _MAX_TAGS or not all(isinstance(t, str) and t and len(t) <= 128 for t in tags):
        raise ValueError(f"tags must be 1 to {_MAX_TAGS} non-empty strings of at most 128 characters")
    db = obj.get("database")
    if db is not None and not isinstance(db, str):
        raise ValueError('"database" must be a string')
    unknown = set(obj) - {"tags", "database"}
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
    return tags, db


def register(app: Any) -> None:
    from .status import _authorized

    async def handler(req: HttpRequest) -> HttpResponse:
        gw = app.gateway
        if not await _authorized(gw, req):
            return _json(401, {"error": "admin credentials required (admin_users, or one's API token)"})
        try:
            tags, db = parse_request(req.body)
        except ValueError as exc:
            return _json(400, {"error": str(exc)})
        if db is not None and db not in gw.pools:
            return _json(404, {"error": f"no such database: {db}"})
        return _json(200, {"invalidated": invalidate(gw, tags, db)})

    assert app.http is not None
    app.http.add_route("POST", PATH, handler)


# ---------------------------------------------------------------- admin console

#: SHOW CACHE columns
COLUMNS = ("entries", "bytes", "max_bytes", "hits", "misses", "stale", "shared", "stores", "evictions",
           "invalidations", "refreshes", "too_large", "filling")


def show_rows(gw: Any) -> list[tuple[str, int]]:
    snap = get_cache(gw).snapshot()
    return [(k, snap[k]) for k in COLUMNS]


def admin_invalidate(gw: Any, args: Sequence[str]) -> int:
    """``CACHE_INVALIDATE tag [tag ...]`` (``*``: everything); returns the count dropped."""
    tags = [t for a in args for t in a.strip("'\"").split(",") if t]
    if tags == ["*"]:
        return get_cache(gw).clear()
    return invalidate(gw, tags)


# ---------------------------------------------------------------- metrics

def collect(gw: Any) -> list[Metric]:
    """Cache families for ``/metrics`` (zeros when no database uses the cache)."""
    rc = getattr(gw, "result_cache", None)
    snap = rc.snapshot() if rc is not None else {k: 0 for k in COLUMNS}
    out: list[Metric] = []
    for name, key, doc in (("wirepool_cache_hits", "hits", "Replies served fresh from the result cache"),
                           ("wirepool_cache_misses", "misses", "Cacheable statements run on Postgres (fills)"),
                           ("wirepool_cache_stale", "stale", "Replies served stale (ttl passed, within swr)"),
                           ("wirepool_cache_evictions", "evictions", "Entries evicted by the byte budget"),
                           ("wirepool_cache_invalidations", "invalidations",
                            "Entries dropped by tag, notification or DDL"),
                           ("wirepool_cache_shared", "shared",
                            "Misses answered by another session's identical query (single flight)"),
                           ("wirepool_cache_refreshes", "refreshes", "Background refreshes of stale entries"),
                           ("wirepool_cache_too_large", "too_large",
                            "Results not stored: over cache_max_entry_bytes or cache_max_bytes")):
        c = CounterMetricFamily(name, doc)
        c.add_metric([], snap[key])
        out.append(c)
    g = GaugeMetricFamily("wirepool_cache_bytes", "Bytes held by result cache entries")
    g.add_metric([], snap["bytes"])
    e = GaugeMetricFamily("wirepool_cache_entries", "Result cache entries")
    e.add_metric([], snap["entries"])
    return out + [g, e]
