"""The result cache's work upstream and across sessions (for
:mod:`gateway.cache_hook`): the gateway's one :class:`ResultCache`, the
notification channel each pool LISTENs to (through its LISTEN hub), the
background refresh of a stale entry and the ``pg_proc``/``pg_class`` catalog
of each database for ``"auto"`` (gateway-internal HTTP-executor sessions,
:mod:`gateway.http_exec`, with the client's user, tracked parameters and
session settings: same pool, hygiene and timeouts), invalidation entry points,
and live settings (RELOAD / ``SET``)."""

from __future__ import annotations

import logging
from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader

from . import cache_policy as cp
from .cache import Entry, ResultCache
from .schema import database_key
from .tracking import apply_sql, data_row_values

log = logging.getLogger("wirepool.gateway.cache")

_T, _DROW, _C, _Z, _SUSP = 84, 68, 67, 90, 115
_PC, _BC = 49, 50  # ParseComplete, BindComplete
INTERNAL = "internal"  # Principal.method of the gateway's own sessions (never use the cache)


def get_cache(gw: Any) -> ResultCache:
    rc: ResultCache | None = getattr(gw, "result_cache", None)
    if rc is None:
        s = gw.settings
        rc = gw.result_cache = ResultCache(s.cache_max_bytes, s.cache_max_entry_bytes)
        gw.cache_catalogs = {}
    return rc


def _ensure_channel(gw: Any, pool: Any) -> None:
    """Subscribe (once per pool) to ``cache_channel`` through the pool's
    LISTEN hub (gateway/listen.py): each notification's payload is a tag (or
    several, comma-separated) whose entries are dropped; a gap in the
    notifications drops the whole database's entries.  A subscription whose
    hub closed (the pool was replaced) is made again."""
    channel = gw.settings.cache_channel
    subs: dict[str, Any] = gw.__dict__.setdefault("cache_subscriptions", {})
    if not channel:
        return
    cur = subs.get(pool.name)
    if cur is not None and (isinstance(cur, _Pending) or not (cur.closed or cur.hub.closed)):
        return  # subscribed, or a subscription under way
    token = subs[pool.name] = _Pending(channel)
    gw.spawn(_subscribe(gw, pool, channel, subs, token))


def listening(gw: Any, pool: Any) -> bool:
    """Is the pool's ``cache_channel`` subscription live (or is there no
    channel)?  Entries are stored only then: a notification sent before the
    LISTEN took effect would be lost, and the entry could outlive the write."""
    channel = gw.settings.cache_channel
    if not channel:
        return True
    sub = gw.__dict__.get("cache_subscriptions", {}).get(pool.name)
    if sub is None or isinstance(sub, _Pending) or sub.closed or sub.hub.closed:
        _ensure_channel(gw, pool)  # (again, if it failed or its hub went)
        return False
    return True


class _Pending:
    """A subscription under way (its place in ``gw.cache_subscriptions``)."""

    __slots__ = ("channel",)

    def __init__(self, channel: str) -> None:
        self.channel = channel


async def _subscribe(gw: Any, pool: Any, channel: str, subs: dict[str, Any], token: _Pending) -> None:
    from .listen import hub_for
    dbkey = database_key(pool.db)
    rc = get_cache(gw)

    def notified(payload: str, _pid: int) -> None:
        tags = [t.strip() for t in payload.split(",") if t.strip()]
        if tags:
            rc.invalidate_tags(tags, dbkey)

    def gap() -> None:
        rc.invalidate_db(dbkey)

    try:
        sub = await hub_for(pool).subscribe_internal(channel, notified, gap)
    except Exception as exc:
        log.warning("cache: LISTEN %s on %s failed (%s); retried at the next session", channel, pool.name, exc)
        if subs.get(pool.name) is token:
            del subs[pool.name]
        return
    if subs.get(pool.name) is token:
        subs[pool.name] = sub
    else:  # the channel changed (RELOAD / SET) meanwhile: apply_settings subscribed anew
        sub.close()


def apply_settings(gw: Any, g: Any) -> None:
    """New [gateway] settings (RELOAD, SIGHUP, admin ``SET``): the byte
    budgets apply at once (a shrink evicts, least recently used first); a
    changed ``cache_channel`` replaces every pool's subscription."""
    rc: ResultCache | None = getattr(gw, "result_cache", None)
    if rc is not None and (rc.max_bytes, rc.max_entry) != (g.cache_max_bytes, g.cache_max_entry_bytes):
        n = rc.resize(g.cache_max_bytes, g.cache_max_entry_bytes)
        if n:
            log.info("cache: %d entries evicted for the new byte budget", n)
    subs: dict[str, Any] | None = gw.__dict__.get("cache_subscriptions")
    if not subs:
        return
    if any(sub.channel != g.cache_channel for sub in subs.values()):
        for sub in subs.values():
            if not isinstance(sub, _Pending):
                sub.close()
        subs.clear()
        for pool in list(gw.pools.values()):
            if pool.transaction_mode and getattr(pool.db, "cache", "off") != "off":
                _ensure_channel(gw, pool)


def _principal(user: str, database: str) -> Any:
    from .http_exec import Principal
    return Principal(user, database, INTERNAL)


def parse_result(data: bytes, skip: int) -> tuple[bytes, bytes] | None:
    """(RowDescription, DataRows + CommandComplete) of the last reply in
    ``data`` after ``skip`` ReadyForQuery messages, when it is one SELECT
    result ending idle; else None."""
    r = MessageReader(1 << 30)
    r.feed(data)
    rowdesc = b""
    parts: list[bytes] = []
    done = False
    zs = 0
    for t, body in r.read():
        if zs < skip:
            if t == _Z:
                zs += 1
            continue
        raw = bytes([t]) + (len(body) + 4).to_bytes(4, "big") + body
        if t == _Z:
            return (rowdesc, b"".join(parts)) if done and body == b"I" else None
        if t in (_PC, _BC):
            continue
        if t == _T and not rowdesc:
            rowdesc = raw
        elif t == _DROW and not done:
            parts.append(raw)
        elif not done and ((t == _C and body.startswith(b"SELECT ")) or t == _SUSP):
            parts.append(raw)
            done = True
        else:
            return None
    return None


async def _refresh(gw: Any, old: Entry, user: str, database: str, params: dict[str, str],
                   settings: dict[str, str], shape: bytes, text: bytes, bind: bytes, exe: bytes) -> None:
    """Re-run a stale entry's statement (once: the entry is marked refreshing)."""
    from .http_exec import get_executor
    rc = get_cache(gw)
    gens = rc.begin_refresh_gens(old.db, old.tags)
    prefix = b"".join(m.query(q) for q in apply_sql(settings, {}))
    skip = len(apply_sql(settings, {}))
    try:
        res = await get_executor(gw).run(_principal(user, database), prefix + cp.refresh_batch(shape, text, bind, exe),
                                         params=params, timeout=gw.settings.query_timeout or 60.0)
        got = parse_result(res.data, skip) if res.status == "I" else None
    except Exception as exc:  # the refresh is best effort: the entry just expires
        log.info("cache refresh failed: %s", exc)
        got = None
    if got is None or len(got[0]) + len(got[1]) > rc.max_entry:
        rc.refresh_failed(old.key)
        return
    rowdesc, body = got
    if shape != b"Q" and b"D" not in shape:
        rowdesc = old.rowdesc
    rc.put(Entry(old.key, old.db, rowdesc, body, gw.loop.time(), old.ttl, old.swr, old.tags), gens)


def catalog(gw: Any, session: Any, dbkey: str) -> cp.Volatility | None:
    """The volatility catalog of an upstream database, or None while it is
    (re)fetched (first use, or a DDL since: the schema epoch moved)."""
    cats: dict[Any, Any] = gw.cache_catalogs
    epoch = gw.statements.marks.get(dbkey, 0)
    vol = cats.get(dbkey)
    if isinstance(vol, cp.Volatility) and vol.epoch == epoch:
        return vol
    if cats.get(("fetching", dbkey)) != epoch:
        cats[("fetching", dbkey)] = epoch
        gw.spawn(_fetch_catalog(gw, session.user, session.database, dbkey, epoch))
    return None


async def _fetch_catalog(gw: Any, user: str, database: str, dbkey: str, epoch: int) -> None:
    from .http_exec import get_executor
    cats = gw.cache_catalogs
    try:
        res = await get_executor(gw).run(_principal(user, database), m.query(cp.CATALOG_SQL), timeout=60.0,
                                         max_response=64 << 20)
        rows: list[tuple[str, str]] = []
        r = MessageReader(1 << 30)
        r.feed(res.data)
        for t, body in r.read():
            if t == _DROW:
                a, b = data_row_values(body)
                if a is not None and b is not None:
                    rows.append((a.decode("utf-8", "replace"), b.decode("ascii", "replace")))
        ok = res.status == "I" and bool(rows)
    except Exception as exc:
        log.warning("cache: could not read the function catalog of %s: %s", dbkey, exc)
        ok = False
    if ok and gw.statements.marks.get(dbkey, 0) == epoch:
        cats[dbkey] = cp.Volatility(rows, epoch)
    if cats.get(("fetching", dbkey)) == epoch:
        del cats[("fetching", dbkey)]


def invalidate(gw: Any, tags: list[str], database: str | None = None) -> int:
    """Drop the entries tagged with any of ``tags``: in the upstream database
    of config database ``database``, or everywhere."""
    rc = get_cache(gw)
    if database is None:
        return rc.invalidate_tags(tags)
    pool = gw.pools.get(database)
    if pool is None:
        return 0
    return rc.invalidate_tags(tags, database_key(pool.db))


def on_ddl(gw: Any, dbkey: str) -> None:
    rc: ResultCache | None = getattr(gw, "result_cache", None)
    if rc is not None:
        rc.invalidate_db(dbkey)
