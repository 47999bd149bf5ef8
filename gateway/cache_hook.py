"""The result cache inside a client session (the glue between
:class:`gateway.session.Session` and the sans-I/O parts
:mod:`gateway.cache` and :mod:`gateway.cache_policy`).

A session of a database whose ``cache`` is ``"hint"`` or ``"auto"`` gets a
:class:`SessionCache` (:func:`attach`).  The session calls:

- :meth:`SessionCache.intercept` first for every framed client chunk: when
  the session holds no server (transaction mode, outside any transaction,
  nothing owed) and the chunk is exactly one cacheable unit
  (:func:`gateway.cache_policy.unit_of`), the reply comes from the cache
  (fresh, or stale with one background refresh), or the session waits for
  another session's identical query (single flight), or it becomes the
  filler: the chunk goes to Postgres as usual and the reply is captured;
- :meth:`SessionCache.captured` for the server chunks while a capture runs:
  a reply of RowDescription, DataRows and one ``SELECT n`` CommandComplete
  ending in ReadyForQuery ``I`` is stored; anything else is not;
- :meth:`SessionCache.close` when the session ends.

Background work (stale refresh, the ``pg_proc`` volatility catalog of each
database for ``"auto"``) runs as gateway-internal HTTP-executor sessions
(:mod:`gateway.http_exec`) with the client's user, tracked parameters and
session settings, so it gets the same pool, hygiene and timeouts.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Hashable

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader, ProtocolError

from . import cache_policy as cp
from .cache import MISS, Entry, ResultCache
from .schema import database_key
from .tracking import apply_sql, data_row_values, stateful

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

log = logging.getLogger("wirepool.gateway.cache")

_T, _DROW, _C, _Z, _SUSP = 84, 68, 67, 90, 115
_PC, _BC = 49, 50  # ParseComplete, BindComplete
_IDLE = 73
INTERNAL = "internal"  # Principal.method of the gateway's own sessions (never use the cache)
_MAX_PARK = 1 << 20  # bytes a session may send while it waits for a shared query


def get_cache(gw: Any) -> ResultCache:
    rc: ResultCache | None = getattr(gw, "result_cache", None)
    if rc is None:
        s = gw.settings
        rc = gw.result_cache = ResultCache(s.cache_max_bytes, s.cache_max_entry_bytes)
        gw.cache_catalogs = {}
    return rc


def attach(session: "Session") -> "SessionCache | None":
    """The session's cache, or None (cache off, session mode, internal session)."""
    pool = session.pool
    if pool is None or not session.transaction_mode or getattr(pool.db, "cache", "off") == "off":
        return None
    principal = getattr(session, "_principal", None)
    if principal is not None and principal.method == INTERNAL:
        return None
    rc = get_cache(session.gw)
    _ensure_channel(session.gw, pool)
    return SessionCache(session, rc)


def _ensure_channel(gw: Any, pool: Any) -> None:
    """Subscribe (once per pool) to ``cache_channel`` through the pool's
    LISTEN hub (gateway/listen.py): each notification's payload is a tag (or
    several, comma-separated) whose entries are dropped; a gap in the
    notifications drops the whole database's entries."""
    channel = gw.settings.cache_channel
    subs: dict[str, Any] = gw.__dict__.setdefault("cache_subscriptions", {})
    if not channel or pool.name in subs:
        return
    subs[pool.name] = None
    gw.spawn(_subscribe(gw, pool, channel, subs))


async def _subscribe(gw: Any, pool: Any, channel: str, subs: dict[str, Any]) -> None:
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
        subs[pool.name] = await hub_for(pool).subscribe_internal(channel, notified, gap)
    except Exception as exc:
        log.warning("cache: LISTEN %s on %s failed (%s); retried at the next session", channel, pool.name, exc)
        subs.pop(pool.name, None)


class _Capture:
    __slots__ = ("key", "shape", "ttl", "swr", "tags", "db", "rowdesc", "parts", "size", "ok", "done")

    def __init__(self, key: Hashable, shape: bytes, ttl: float, swr: float, tags: tuple[str, ...],
                 db: str) -> None:
        self.key, self.shape, self.ttl, self.swr, self.tags, self.db = key, shape, ttl, swr, tags, db
        self.rowdesc = b""
        self.parts: list[bytes] = []
        self.size = 0
        self.ok = True
        self.done = False


class SessionCache:
    """One session's use of the gateway's :class:`ResultCache`."""

    __slots__ = ("s", "rc", "db", "dbkey", "cap", "parked", "park_bytes", "bypass", "state", "disabled",
                 "_decisions", "_epoch")

    def __init__(self, session: "Session", rc: ResultCache) -> None:
        self.s = session
        self.rc = rc
        assert session.pool is not None
        self.db = session.pool.db
        self.dbkey = database_key(self.db)
        self.cap: _Capture | None = None
        #: waiting for another session's identical query: (chunk, idx) received meanwhile
        self.parked: list[tuple[bytes, list[tuple[int, int, int]]]] | None = None
        self.park_bytes = 0
        self.bypass = False
        #: what the last cacheable unit got: "hit" / "stale" / "miss" (the HTTP response header)
        self.state: str | None = None
        #: the client made temp objects: names may resolve to them, nothing is cached
        self.disabled = False
        self._decisions: dict[bytes, tuple[float, float, tuple[str, ...]] | None] = {}
        self._epoch = 0  # the database's schema epoch the decisions were made in

    # ------------------------------------------------------------ client side
    def intercept(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        """True when the chunk was answered or kept here (not to be forwarded)."""
        if self.parked is not None:
            self.parked.append((chunk, idx))
            self.park_bytes += len(chunk)
            if self.park_bytes > _MAX_PARK:
                self.s._abort("54000", "too much input while waiting for a shared query result")
            return True
        if self.bypass:
            self.bypass = False
            return False
        s = self.s
        acc = s.acc
        if s.server is not None or s._pending or acc.outstanding or acc.dirty or self.disabled:
            return False
        unit = cp.unit_of(chunk, idx)
        if unit is None:
            return False
        self.state = MISS
        tk = s.track
        if tk is not None and tk.marked:
            return False
        if unit.stmt:
            rw = s.prepared
            st = rw.client.names.get(unit.stmt) if rw is not None else None
            if st is None:
                return False
            text = st.key
        else:
            text = unit.text
        decision = self._decide(text, unit.shape)
        if decision is None:
            return False
        ttl, swr, tags = decision
        key = cp.cache_key(self.db.name, self.db.user, s.user, unit, text, s.sig,
                           tk.settings if tk is not None else {})
        now = s.loop.time()
        state, e, refresh = self.rc.lookup(key, now)
        if e is not None:
            self.state = state
            s.last_activity = now
            self._deliver(cp.replay(unit.shape, e.rowdesc, e.body))
            if refresh:
                s.gw.spawn(_refresh(s.gw, e, s.user, s.database, dict(s.params),
                                    dict(tk.settings) if tk is not None else {}, unit.shape, text, unit.bind, unit.exe))
            return True
        if self.rc.begin_fill(key, self.dbkey, tags):
            self.cap = _Capture(key, unit.shape, ttl, swr, tags, self.dbkey)
            return False
        self.parked = [(chunk, idx)]
        self.park_bytes = len(chunk)
        shape = unit.shape

        def filled(entry: Entry | None) -> None:  # later, not inside the filler's data callback
            s.loop.call_soon(self._filled, entry, shape)
        self.rc.wait(key, filled)
        return True

    def _decide(self, text: bytes, shape: bytes) -> tuple[float, float, tuple[str, ...]] | None:
        """(ttl, swr, tags) for a statement, or None: not cacheable."""
        epoch = self.s.gw.statements.marks.get(self.dbkey, 0)
        if epoch != self._epoch:  # a DDL since: functions may have changed volatility
            self._decisions.clear()
            self._epoch = epoch
        dkey = shape[:1] + text
        if dkey in self._decisions:
            return self._decisions[dkey]
        res = self._classify(cp.sql_of(text, shape))
        if res is _UNSURE:
            return None  # not remembered: the catalog may come
        if len(self._decisions) > 256:
            self._decisions.clear()
        decision: tuple[float, float, tuple[str, ...]] | None = res
        self._decisions[dkey] = decision
        return decision

    def _classify(self, sql: bytes) -> Any:
        db = self.db
        hint = cp.parse_hint(sql)
        if hint is None and db.cache != "auto":
            return None
        if stateful(sql):
            return None
        ro = cp.read_only(sql)
        if ro is None:
            return None
        if hint is None:  # "auto": only with every function known IMMUTABLE
            vol = catalog(self.s.gw, self.s, self.dbkey)
            if vol is None:
                return _UNSURE
            if not vol.certain(ro):
                return None
        ttl = hint.ttl if hint is not None and hint.ttl is not None else db.cache_ttl
        swr = hint.swr if hint is not None and hint.swr is not None else db.cache_swr
        if ttl <= 0:
            return None
        return ttl, swr, hint.tags if hint is not None else ()

    def _deliver(self, data: bytes) -> None:
        s = self.s
        direct = s._direct
        if direct is not None and not s._out:
            try:
                direct(data)
            except Exception:
                s._abort(None, None)
        else:
            s._send_or_queue(data)

    def _filled(self, entry: Entry | None, shape: bytes) -> None:
        """The shared query ended: answer from its result, or run our own."""
        parked = self.parked or []
        self.parked = None
        self.park_bytes = 0
        s = self.s
        if s._finished or s._aborted or not parked:
            return
        try:
            first, rest = parked[0], parked[1:]
            if entry is not None:
                self.state = "hit"
                self._deliver(cp.replay(shape, entry.rowdesc, entry.body))
            else:
                self.bypass = True
                if not s._from_client(*first):
                    s._abort(None, None)
                    return
            for chunk, idx in rest:
                if not s._from_client(chunk, idx):
                    s._abort(None, None)
                    return
        except ProtocolError as exc:
            s._abort(exc.sqlstate, str(exc))
        except Exception as exc:  # PoolError and the like: as the session loop would
            s._abort(getattr(exc, "sqlstate", "XX000"), getattr(exc, "message", str(exc)))

    # ------------------------------------------------------------ server side
    def captured(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> None:
        """Server messages going to the client while a capture runs (after the
        accounting and the statement rewriter)."""
        cap = self.cap
        assert cap is not None
        limit = self.rc.max_entry
        for t, st, e in idx:
            if t == _Z:
                self.cap = None
                entry = None
                if cap.ok and cap.done and chunk[st] == _IDLE and (cap.rowdesc or b"D" not in cap.shape):
                    entry = Entry(cap.key, cap.db, cap.rowdesc, b"".join(cap.parts), self.s.loop.time(),
                                  cap.ttl, cap.swr, frozenset(cap.tags))
                self.rc.finish_fill(cap.key, entry)
                return
            if not cap.ok:
                continue
            if t == _DROW:
                cap.size += e - st + 5
                if cap.size > limit:
                    self.rc.stats.too_large += 1
                    cap.ok = False
                    cap.parts = []
                else:
                    cap.parts.append(chunk[st - 5:e])
            elif t == _T and not cap.rowdesc and not cap.parts:
                cap.rowdesc = chunk[st - 5:e]
            elif (t == _C and not cap.done and chunk.startswith(b"SELECT ", st, e)) or (
                    t == _SUSP and not cap.done and cap.shape != b"Q"):  # Execute's row limit reached
                cap.parts.append(chunk[st - 5:e])
                cap.done = True
            elif (t == _PC and cap.shape[0] == 80) or t == _BC:
                pass
            else:  # an error, notice, NoData, ParameterStatus, a notification, another command...
                cap.ok = False
                cap.parts = []

    def close(self) -> None:
        cap = self.cap
        if cap is not None:
            self.cap = None
            self.rc.finish_fill(cap.key, None)
        self.parked = None


_UNSURE = object()


# ---------------------------------------------------------------- background work

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
