"""The query result cache's store (sans-I/O): entries, byte budget, TTL/SWR,
single flight, tags.

One :class:`ResultCache` per gateway.  It knows nothing of sockets or
sessions: keys are opaque hashable values built by
:func:`gateway.cache_policy.cache_key`, values are the backend messages of a
result, byte for byte (:class:`Entry`: the RowDescription, and the DataRows +
CommandComplete).  Time is passed in (``now``: the loop's clock).

- **Budget**: ``max_bytes`` over all entries (value bytes + key text), least
  recently used evicted first; an entry larger than ``max_entry`` is never
  stored.
- **Freshness** (:meth:`ResultCache.lookup`): ``FRESH`` while
  ``now < stored + ttl``; ``STALE`` until ``stored + ttl + swr`` -- the first
  caller to see it stale is told to refresh it (``refresh=True``), the others
  are served the stale value without refreshing (single flight); past that it
  is a ``MISS`` and the entry is dropped.
- **Single flight for misses**: :meth:`begin_fill` makes the first caller the
  filler; the others :meth:`wait` with a callback that gets the entry (or
  ``None`` when the fill produced nothing cacheable: then each waiter runs its
  own query).  Every :meth:`begin_fill` must end in :meth:`finish_fill`.
- **Invalidation**: by tag (per upstream database), by database (a DDL), or
  everything.  A fill that began before an invalidation touching its tags or
  database does not store its result (it may predate the write).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Hashable, Iterable

FRESH, STALE, MISS = "hit", "stale", "miss"

#: bytes counted per entry on top of its value and key text (dict slots, objects)
OVERHEAD = 200


@dataclass(eq=False)
class Entry:
    """One cached result."""

    key: Hashable
    db: str
    #: the RowDescription message ('T'), b"" if the statement's reply had none
    rowdesc: bytes
    #: the DataRow messages and the CommandComplete, as the server sent them
    body: bytes
    stored: float
    ttl: float
    swr: float
    tags: frozenset[str] = frozenset()
    size: int = 0
    refreshing: bool = False

    def state(self, now: float) -> str:
        age = now - self.stored
        if age < self.ttl:
            return FRESH
        if age < self.ttl + self.swr:
            return STALE
        return MISS


Waiter = Callable[["Entry | None"], None]


@dataclass(eq=False)
class _Flight:
    db: str
    tags: frozenset[str]
    gens: tuple[int, ...]
    waiters: list[Waiter] = field(default_factory=list)


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    stale: int = 0
    stores: int = 0
    evictions: int = 0
    invalidations: int = 0
    refreshes: int = 0
    too_large: int = 0
    shared: int = 0  # misses answered by another session's query (single flight)


class ResultCache:
    """See the module docstring."""

    def __init__(self, max_bytes: int, max_entry: int) -> None:
        self.max_bytes = max_bytes
        self.max_entry = max_entry
        self.bytes = 0
        self.entries: OrderedDict[Hashable, Entry] = OrderedDict()
        self.stats = CacheStats()
        self._flights: dict[Hashable, _Flight] = {}
        #: invalidation generations: (db, tag) and (db, "") for the whole database
        self._gen: dict[tuple[str, str], int] = {}
        self._by_tag: dict[tuple[str, str], set[Hashable]] = {}

    def __len__(self) -> int:
        return len(self.entries)

    # ------------------------------------------------------------ lookups
    def lookup(self, key: Hashable, now: float) -> tuple[str, Entry | None, bool]:
        """``(state, entry, refresh)``: FRESH/STALE with the entry, or MISS with
        None.  ``refresh`` is True for the one caller that should refresh a
        stale entry (the entry is then marked ``refreshing``)."""
        e = self.entries.get(key)
        if e is None:
            return MISS, None, False
        st = e.state(now)
        if st is MISS:
            self._drop(e)
            return MISS, None, False
        self.entries.move_to_end(key)
        if st is FRESH:
            self.stats.hits += 1
            return FRESH, e, False
        self.stats.stale += 1
        if e.refreshing:
            return STALE, e, False
        e.refreshing = True
        self.stats.refreshes += 1
        return STALE, e, True

    def refresh_failed(self, key: Hashable) -> None:
        """A background refresh gave nothing: the next stale reader tries again."""
        e = self.entries.get(key)
        if e is not None:
            e.refreshing = False

    # ------------------------------------------------------------ single flight
    def filling(self, key: Hashable) -> bool:
        return key in self._flights

    def begin_fill(self, key: Hashable, db: str, tags: Iterable[str]) -> bool:
        """True: the caller runs the query and must call :meth:`finish_fill`.
        False: a fill for ``key`` is under way (:meth:`wait` for it)."""
        if key in self._flights:
            return False
        t = frozenset(tags)
        self._flights[key] = _Flight(db, t, self._gens(db, t))
        self.stats.misses += 1
        return True

    def wait(self, key: Hashable, waiter: Waiter) -> None:
        self._flights[key].waiters.append(waiter)
        self.stats.shared += 1

    def finish_fill(self, key: Hashable, entry: Entry | None) -> Entry | None:
        """End a fill: store ``entry`` (unless invalidated meanwhile or too
        large) and hand it to the waiters.  Returns the entry stored, if any."""
        flight = self._flights.pop(key, None)
        stored = None
        if entry is not None and flight is not None and self._gens(flight.db, flight.tags) == flight.gens:
            stored = self.put(entry)
        if flight is not None:
            for w in flight.waiters:
                w(entry)
        return stored

    def begin_refresh_gens(self, db: str, tags: Iterable[str]) -> tuple[int, ...]:
        """Invalidation generations to hand back to :meth:`put` after a background refresh."""
        return self._gens(db, frozenset(tags))

    def put(self, entry: Entry, gens: tuple[int, ...] | None = None) -> Entry | None:
        """Store ``entry`` (replacing one with its key); None when it is too
        large, or when ``gens`` (from :meth:`begin_refresh_gens`) shows an
        invalidation since the query began."""
        if gens is not None and self._gens(entry.db, entry.tags) != gens:
            old = self.entries.get(entry.key)
            if old is not None:
                old.refreshing = False
            return None
        size = len(entry.rowdesc) + len(entry.body) + _key_size(entry.key) + OVERHEAD
        old = self.entries.get(entry.key)
        if old is not None:
            self._drop(old)
        if size > self.max_entry or size > self.max_bytes:
            self.stats.too_large += 1
            return None
        entry.size = size
        self.entries[entry.key] = entry
        self.bytes += size
        for t in entry.tags:
            self._by_tag.setdefault((entry.db, t), set()).add(entry.key)
        self.stats.stores += 1
        while self.bytes > self.max_bytes:
            _k, victim = next(iter(self.entries.items()))
            self._drop(victim)
            self.stats.evictions += 1
        return entry

    def resize(self, max_bytes: int, max_entry: int) -> int:
        """New budgets (RELOAD, admin ``SET``): entries over the new entry cap
        go, then the least recently used until the total fits.  Returns how
        many were evicted."""
        self.max_bytes, self.max_entry = max_bytes, max_entry
        n = 0
        for e in [e for e in self.entries.values() if e.size > max_entry]:
            self._drop(e)
            n += 1
        while self.bytes > max_bytes and self.entries:
            self._drop(next(iter(self.entries.values())))
            n += 1
        self.stats.evictions += n
        return n

    # ------------------------------------------------------------ invalidation
    def invalidate_tags(self, tags: Iterable[str], db: str | None = None) -> int:
        """Drop the entries carrying any of ``tags`` (in database ``db``, or in
        every database); returns how many were dropped."""
        n = 0
        tags = [t for t in tags if t]
        dbs = {db} if db is not None else {d for d, _t in self._by_tag} | {f.db for f in self._flights.values()}
        for d in dbs:
            for t in tags:
                k = (d, t)
                self._gen[k] = self._gen.get(k, 0) + 1
                for key in list(self._by_tag.get(k, ())):
                    e = self.entries.get(key)
                    if e is not None:
                        self._drop(e)
                        n += 1
        if db is None:
            # a fill in a database never seen before must not store either
            for t in tags:
                self._gen[("*", t)] = self._gen.get(("*", t), 0) + 1
        self.stats.invalidations += n
        return n

    def invalidate_db(self, db: str) -> int:
        """A schema change: drop every entry of upstream database ``db``."""
        k = (db, "")
        self._gen[k] = self._gen.get(k, 0) + 1
        victims = [e for e in self.entries.values() if e.db == db]
        for e in victims:
            self._drop(e)
        self.stats.invalidations += len(victims)
        return len(victims)

    def clear(self) -> int:
        n = len(self.entries)
        for db in {e.db for e in self.entries.values()} | {f.db for f in self._flights.values()}:
            k = (db, "")
            self._gen[k] = self._gen.get(k, 0) + 1
        self.entries.clear()
        self._by_tag.clear()
        self.bytes = 0
        self.stats.invalidations += n
        return n

    # ------------------------------------------------------------ internals
    def _gens(self, db: str, tags: frozenset[str]) -> tuple[int, ...]:
        g = self._gen
        return (g.get((db, ""), 0),) + tuple(g.get((db, t), 0) + g.get(("*", t), 0) for t in sorted(tags))

    def _drop(self, e: Entry) -> None:
        if self.entries.get(e.key) is not e:
            return
        del self.entries[e.key]
        self.bytes -= e.size
        for t in e.tags:
            s = self._by_tag.get((e.db, t))
            if s is not None:
                s.discard(e.key)
                if not s:
                    del self._by_tag[(e.db, t)]

    def snapshot(self) -> dict[str, int]:
        """Counters for SHOW CACHE, /metrics and tests."""
        s = self.stats
        return {"entries": len(self.entries), "bytes": self.bytes, "max_bytes": self.max_bytes,
                "hits": s.hits, "misses": s.misses, "stale": s.stale, "shared": s.shared,
                "stores": s.stores, "evictions": s.evictions, "invalidations": s.invalidations,
                "refreshes": s.refreshes, "too_large": s.too_large, "filling": len(self._flights)}


def _key_size(key: Hashable) -> int:
    """Bytes of the variable parts of a key (its bytes/str members)."""
    if isinstance(key, (bytes, str)):
        return len(key)
    if isinstance(key, tuple):
        return sum(_key_size(k) for k in key)
    return 8
