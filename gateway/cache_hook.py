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

Background work (stale refresh, the volatility catalog), the notification
channel, invalidation and live settings: :mod:`gateway.cache_upstream`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Hashable

from driver.protocol.framing import ProtocolError

from . import cache_policy as cp
from .cache import MISS, Entry, ResultCache
from .cache_upstream import (
    INTERNAL,
    _ensure_channel,
    _refresh,
    apply_settings,
    catalog,
    get_cache,
    invalidate,
    listening,
    on_ddl,
    parse_result,
)
from .schema import database_key
from .tracking import stateful

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

__all__ = ["SessionCache", "apply_settings", "attach", "get_cache", "invalidate", "on_ddl", "parse_result"]

_T, _DROW, _C, _Z, _SUSP = 84, 68, 67, 90, 115
_PC, _BC = 49, 50  # ParseComplete, BindComplete
_IDLE = 73
_MAX_PARK = 1 << 20  # bytes a session may send while it waits for a shared query


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
                 "held", "_held_timer", "_decisions", "_epoch", "_fast")

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
        #: the start of a cacheable unit whose Sync has not arrived yet (a unit split
        #: across reads): held back, not yet forwarded
        self.held: tuple[bytes, list[tuple[int, int, int]]] | None = None
        self._held_timer: Any = None  # (a held unit ending in Flush waits only _FLUSH_WAIT for its Sync)
        self._decisions: dict[bytes, tuple[float, float, tuple[str, ...]] | None] = {}
        self._epoch = 0  # the database's schema epoch the decisions were made in
        #: hot path: chunk bytes -> (key, unit, statement) of units seen since the session last
        #: sent anything to Postgres (the only way its settings or statement names change)
        self._fast: dict[bytes, tuple[Hashable, cp.Unit, bytes]] = {}

    # ------------------------------------------------------------ client side
    def intercept(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool | None:
        """True/False: the chunk was answered or kept here (what
        ``Session._from_client`` returns); None: forward it as usual."""
        if self.parked is not None:
            self.parked.append((chunk, idx))
            self.park_bytes += len(chunk)
            if self.park_bytes > _MAX_PARK:
                self.s._abort("54000", "too much input while waiting for a shared query result")
            return True
        if self.bypass:
            self.bypass = False
            if self._fast:
                self._fast.clear()
            return None
        held = self.held
        if held is None and self._fast:
            got = self._fast.get(chunk)
            if got is not None and self._hit(*got):
                return True
        if held is not None:  # the rest of a unit that began in an earlier read
            self.held = None
            if self._held_timer is not None:
                self._held_timer.cancel()
                self._held_timer = None
            hc, hi = held
            n = len(hc)
            chunk, idx = hc + chunk, hi + [(t, st + n, e + n) for t, st, e in idx]
        r = self._serve(chunk, idx)
        if r is _HOLD or r is _HOLD_BRIEFLY:
            self.held = (chunk, idx)
            if r is _HOLD_BRIEFLY:
                self._held_timer = self.s.loop.call_later(_FLUSH_WAIT, self._release_held)
            return True
        if r is None:
            if self._fast:
                self._fast.clear()  # it goes to Postgres: settings or names may change
            if held is not None:  # not a unit after all: forward all of it, in order
                self.bypass = True
                return self.s._from_client(chunk, idx)
        return r  # type: ignore[no-any-return]

    def _hit(self, key: Hashable, unit: cp.Unit, text: bytes) -> bool:
        """The hot path for a unit seen before: answered if the entry is there
        and nothing that the full path checks has changed."""
        s = self.s
        acc = s.acc
        if (s.server is not None or s._pending or acc.outstanding or acc.dirty or self.disabled
                or s.pool.db is not self.db  # type: ignore[union-attr]
                or s.gw.statements.marks.get(self.dbkey, 0) != self._epoch):
            return False
        now = s.loop.time()
        state, e, refresh = self.rc.lookup(key, now)
        if e is None:
            return False
        self.state = state
        s.last_activity = now
        self._deliver(cp.replay(unit.shape, e.rowdesc, e.body))
        if refresh:
            tk = s.track
            s.gw.spawn(_refresh(s.gw, e, s.user, s.database, dict(s.params),
                                dict(tk.settings) if tk is not None else {}, unit.shape, text, unit.bind, unit.exe))
        return True

    def _serve(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> Any:
        s = self.s
        acc = s.acc
        if s.server is not None or s._pending or acc.outstanding or acc.dirty or self.disabled:
            return None
        db = s.pool.db  # type: ignore[union-attr]
        if db is not self.db:  # RELOAD changed the database's settings
            self.db, self.dbkey = db, database_key(db)
            self._decisions.clear()
        if db.cache == "off":
            return None
        unit = cp.unit_of(chunk, idx)
        if unit is None:
            return self._could_be_unit(chunk, idx)
        self.state = MISS
        tk = s.track
        if tk is not None and tk.marked:
            return None
        rw = s.prepared
        if unit.stmt:
            st = rw.client.names.get(unit.stmt) if rw is not None else None
            if st is None:
                return None
            text = st.key
        else:
            text = unit.text
            if unit.pname and not self._can_register(unit.pname, text):
                return None
        decision = self._decide(text, unit.shape)
        if decision is None:
            return None
        ttl, swr, tags = decision
        key = cp.cache_key(self.db.name, self.db.user, s.user, unit, text, s.sig,
                           tk.settings if tk is not None else {})
        if not unit.pname and len(chunk) <= _FAST_CHUNK:
            fast = self._fast
            if len(fast) >= _FAST_MAX:
                fast.clear()
            fast[chunk] = (key, unit, text)
        now = s.loop.time()
        state, e, refresh = self.rc.lookup(key, now)
        if e is not None:
            self.state = state
            s.last_activity = now
            if unit.pname:
                self._register(unit.pname, text)
            self._deliver(cp.replay(unit.shape, e.rowdesc, e.body))
            if refresh:
                s.gw.spawn(_refresh(s.gw, e, s.user, s.database, dict(s.params),
                                    dict(tk.settings) if tk is not None else {}, unit.shape, text, unit.bind, unit.exe))
            return True
        if not self.rc.filling(key) and not listening(s.gw, s.pool):
            return None  # until the invalidation channel is up, a write could go unheard: no fill
        if self.rc.begin_fill(key, self.dbkey, tags):
            self.cap = _Capture(key, unit.shape, ttl, swr, tags, self.dbkey)
            return None
        self.parked = [(chunk, idx)]
        self.park_bytes = len(chunk)

        def filled(entry: Entry | None) -> None:  # later, not inside the filler's data callback
            s.loop.call_soon(self._filled, entry, unit)
        self.rc.wait(key, filled)
        return True

    def _could_be_unit(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> Any:
        """The chunk is the start of a cacheable unit (no Sync yet): worth
        holding back until the rest arrives (_HOLD), or, when it ends in a
        Flush, for at most _FLUSH_WAIT (_HOLD_BRIEFLY: a client that waits for
        the Flush's output gets it that much later).  Only for a statement
        that would be cached; anything that does not continue the unit sends
        it all on at once.  None: not a start."""
        kind = cp.unit_prefix(bytes(t for t, _s, _e in idx))
        if kind == cp.NOT_PREFIX or len(chunk) > _MAX_PARK:
            return None
        t, st, e = idx[0]
        if t == 80:  # Parse: name, text
            ne = chunk.find(b"\x00", st, e)
            if ne < 0:
                return None
            text = chunk[ne + 1:e]
            if ne > st and not self._can_register(chunk[st:ne], text):
                return None
        else:  # Bind of a named statement (of the unnamed portal)
            if chunk.find(b"\x00", st, e) != st:
                return None
            k = chunk.find(b"\x00", st + 1, e)
            rw = self.s.prepared
            got = rw.client.names.get(chunk[st + 1:k]) if rw is not None and k > st + 1 else None
            if got is None:
                return None
            text = got.key
        if self._decide(text, bytes((t,))) is None:
            return None
        return _HOLD if kind == cp.PREFIX else _HOLD_BRIEFLY

    def _release_held(self) -> None:
        """The Sync did not follow the Flush in time: send the held messages on."""
        self._held_timer = None
        held, self.held = self.held, None
        s = self.s
        if held is None or s._finished or s._aborted:
            return
        self.bypass = True
        try:
            if not s._from_client(*held):
                s._abort(None, None)
        except ProtocolError as exc:
            s._abort(exc.sqlstate, str(exc))
        except Exception as exc:  # PoolError and the like: as the session loop would
            s._abort(getattr(exc, "sqlstate", "XX000"), getattr(exc, "message", str(exc)))

    def _can_register(self, name: bytes, text: bytes) -> bool:
        """May a Parse of client statement ``name`` be answered here?  Only
        when the gateway renames statements (transaction mode) and Postgres
        would accept it: a new name, within the client's caps."""
        rw = self.s.prepared
        return rw is not None and name not in rw.client.names and rw.client.check_caps(len(text)) is None

    def _register(self, name: bytes, text: bytes) -> None:
        """What the Parse would have done: the client's name maps to the statement."""
        rw = self.s.prepared
        assert rw is not None
        c = rw.client
        c.add(name, c.registry.get(text, c.db))

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
        auto = db.cache == "auto"
        if hint is None and not auto:
            return None
        if stateful(sql):
            return None
        ro = cp.read_only(sql)
        if ro is None:
            return None
        tags: tuple[str, ...] = hint.tags if hint is not None else ()
        if auto:
            if hint is None:  # only with every function IMMUTABLE and every relation a known table
                vol = catalog(self.s.gw, self.s, self.dbkey)
                if vol is None:
                    return _UNSURE
                if not vol.certain(ro):
                    return None
            # the tables read are tags too: a trigger's NOTIFY of its table name reaches them
            tags = tuple(dict.fromkeys(tags + tuple(sorted(ro.relations - ro.ctes))))
        ttl = hint.ttl if hint is not None and hint.ttl is not None else db.cache_ttl
        swr = hint.swr if hint is not None and hint.swr is not None else db.cache_swr
        if ttl <= 0:
            return None
        return ttl, swr, tags

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

    def _filled(self, entry: Entry | None, unit: cp.Unit) -> None:
        """The shared query ended: answer from its result, or run our own."""
        parked = self.parked or []
        self.parked = None
        self.park_bytes = 0
        s = self.s
        if s._finished or s._aborted or not parked:
            return
        try:
            first, rest = parked[0], parked[1:]
            if entry is not None and (not unit.pname or self._can_register(unit.pname, unit.text)):
                self.state = "hit"
                if unit.pname:
                    self._register(unit.pname, unit.text)
                self._deliver(cp.replay(unit.shape, entry.rowdesc, entry.body))
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
        self.held = None
        if self._held_timer is not None:
            self._held_timer.cancel()
            self._held_timer = None


_UNSURE = object()
_HOLD = object()
_FAST_CHUNK, _FAST_MAX = 4096, 256  # hot-path memo: chunk size, entries per session
_HOLD_BRIEFLY = object()
#: seconds a unit held after its Flush waits for the Sync (node-postgres sends them back to back)
_FLUSH_WAIT = 0.02
