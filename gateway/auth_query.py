"""auth_query: users looked up in PostgreSQL (PgBouncer's ``auth_user``,
``auth_query``, ``auth_dbname``; docs/auth-query.md).

A client whose user is not in ``[users]`` is looked up with ``auth_query``
(default ``SELECT usename, CASE WHEN valuntil < now() THEN NULL ELSE passwd END
FROM pg_shadow WHERE usename=$1``: no password past VALID UNTIL) over a
connection as ``auth_user`` to ``auth_dbname`` (default: the client's
database) on that database's upstream.  The password column -- a
``SCRAM-SHA-256$...`` verifier or an ``md5...`` hash -- is what the
:class:`~gateway.auth.Authenticator` checks the client against.

* **One connection per lookup target** (host, port, database, auth_user),
  opened on first use, lookups on it one at a time; concurrent lookups of the
  same user share one query (single flight).
* **Cache**: results (found or not) are kept ``auth_query_cache_ttl`` seconds
  (0: none).  An entry goes at once when a login with it fails, and every
  entry goes when a ``CREATE/ALTER/DROP ROLE`` completes through the gateway
  and again when its transaction ends (:func:`note_role_tag`, called by the
  accounting scan), so
  ``ALTER USER ... PASSWORD`` through the gateway takes effect for the next
  login; one run elsewhere, within the TTL or at the first failed login.
* **Errors**: no row, a NULL or unusable password, an SQL error of the query
  or a failed login of auth_user itself all look like a wrong password to the
  client (28P01, throttled; the cause is logged), so user names cannot be
  enumerated.  An unreachable upstream (connect refused or timed out, the
  server starting up or shutting down) is :class:`LookupUnavailable`, which the
  client gets as 08006 naming the upstream.

Databases without ``user`` (pass-through): :meth:`AuthQuery.pool_for` gives
each client user its own pool, which logs in as that user with the
:class:`~gateway.auth_passthrough.Credentials` of its last login.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader, ProtocolError

from .auth_passthrough import Credentials
from .ratelimit import compact_name
from .server import ServerConnection, ServerError, open_server

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway
    from .pool import Pool

__all__ = ["AuthQuery", "LookupUnavailable", "Secret", "note_role_end", "note_role_tag", "parse_secret"]

log = logging.getLogger("wirepool.gateway.auth_query")

_D, _E, _Z = 68, 69, 90
#: most cached lookups / remembered pass-through credentials
CACHE_SIZE = 10000
#: CommandComplete bodies of role changes (ALTER USER's tag is ALTER ROLE)
_ROLE_TAGS = (b"ALTER ROLE\x00", b"CREATE ROLE\x00", b"DROP ROLE\x00")
#: bumped by :func:`note_role_tag`; cache entries of an older value are stale
_role_epoch = [0]


def note_role_tag(chunk: bytes, s: int, e: int) -> bool:
    """The accounting scan saw CommandComplete ``chunk[s:e]``: a role change
    makes every cached lookup stale (in every gateway of this process).  True
    for a role change: the scan calls :func:`note_role_end` when its
    transaction ends, as lookups made before the COMMIT still saw the old role."""
    if chunk[s:e] in _ROLE_TAGS:
        _role_epoch[0] += 1
        return True
    return False


def note_role_end() -> None:
    """The transaction of a role change ended: lookups made during it are stale."""
    _role_epoch[0] += 1


class LookupUnavailable(Exception):
    """The lookup could not reach PostgreSQL (the client gets 08006)."""


class Secret:
    """A looked-up password: a SCRAM verifier or a stored md5 hash."""

    __slots__ = ("verifier", "md5")

    def __init__(self, verifier: pg_auth.ScramVerifier | None = None, md5: str | None = None) -> None:
        self.verifier = verifier
        self.md5 = md5

    def __repr__(self) -> str:
        return f"<Secret {'scram' if self.verifier else 'md5'}>"


def parse_secret(text: str | None) -> Secret | None:
    """``SCRAM-SHA-256$...`` or ``md5<32 hex>`` -> :class:`Secret`; anything
    else (NULL, a plaintext password, garbage) -> None: nobody can log in."""
    if not text:
        return None
    if text.startswith("SCRAM-SHA-256$"):
        try:
            return Secret(verifier=pg_auth.ScramVerifier.parse(text))
        except ValueError:
            return None
    if text.startswith("md5") and len(text) == 35 and all(c in "0123456789abcdef" for c in text[3:]):
        return Secret(md5=text)
    return None


class _Target:
    """One lookup connection (as auth_user); lookups on it run one at a time.
    Stands in for the pool of its ServerConnection (``settings``, ``server_lost``)
    and for its client (``on_server_data``)."""

    def __init__(self, aq: "AuthQuery", db: Any, dbname: str, user: str, password: str | None) -> None:
        self.aq = aq
        self.db = db
        self.dbname = dbname
        self.user = user
        self.password = password
        self.settings = aq.gw.settings
        self.conn: ServerConnection | None = None
        self.lock = asyncio.Lock()
        self.reader = MessageReader()
        self.rows: list[tuple[bytes | None, ...]] = []
        self.error: str | None = None
        self.done: asyncio.Future[None] | None = None
        self.last_used = 0.0

    async def run(self, sql: str, name: str) -> tuple[bytes | None, ...] | None:
        """The first row of ``sql`` with ``$1 = name`` (None: no row).
        :class:`LookupUnavailable` or :class:`ServerError` (non-08) on failure."""
        s = self.aq.gw.settings
        timeout = s.server_connect_timeout
        async with self.lock:
            loop = asyncio.get_running_loop()
            if self.conn is None or self.conn.closed:
                db = self.db
                try:
                    conn = await asyncio.wait_for(
                        open_server(self, db.host, db.port, self.user, self.password, self.dbname,  # type: ignore[arg-type]
                                    db.sslmode, db.sslrootcert), timeout=timeout)
                except asyncio.TimeoutError:
                    raise LookupUnavailable(f"could not connect to server {db.host}:{db.port}: "
                                            f"timeout after {timeout:g}s") from None
                except ServerError as exc:
                    if exc.sqlstate[:2] in ("08", "57"):  # unreachable, starting up, shutting down
                        raise LookupUnavailable(exc.message) from None
                    raise
                conn.client = self
                self.conn = conn
            conn = self.conn
            self.rows, self.error = [], None
            self.done = loop.create_future()
            conn.write(m.parse("", sql) + m.bind("", "", (), [name.encode("utf-8")], ())
                       + m.execute("", 2) + m.sync())
            try:
                await asyncio.wait_for(asyncio.shield(self.done), timeout=timeout)
            except asyncio.TimeoutError:
                conn.close()
                raise LookupUnavailable(f"the lookup query did not answer within {timeout:g}s") from None
            finally:
                self.last_used = loop.time()
            if self.error is not None:
                raise ServerError("XX000", self.error)
            return self.rows[0] if self.rows else None

    # -- as the ServerConnection's client and pool
    def on_server_data(self, server: ServerConnection, data: bytes) -> None:
        self.reader.feed(data)
        try:
            msgs = self.reader.read()
        except ProtocolError:
            server.close()
            return
        for mtype, body in msgs:
            if mtype == _D:
                self.rows.append(m.decode_data_row(body))
            elif mtype == _E:
                f = m.decode_fields(body)
                self.error = f"{f.get('C')}: {f.get('M')}"
            elif mtype == _Z and self.done is not None and not self.done.done():
                self.done.set_result(None)

    def server_lost(self, server: ServerConnection) -> None:
        if server is self.conn:
            self.conn = None
            self.reader = MessageReader()
            if self.done is not None and not self.done.done():
                self.error = "08006: the lookup connection was closed"
                self.done.set_result(None)

    def on_server_lost(self, server: ServerConnection) -> None:  # pragma: no cover - not pooled
        self.server_lost(server)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


class AuthQuery:
    """The gateway's lookups, their cache, and the pass-through pools."""

    def __init__(self, gw: "Gateway") -> None:
        self.gw = gw
        self._targets: dict[tuple[Any, ...], _Target] = {}
        #: (database, user) -> (expires, role epoch, secret)
        self._cache: OrderedDict[tuple[str, str], tuple[float, int, Secret | None]] = OrderedDict()
        self._inflight: dict[tuple[str, str], asyncio.Task[Secret | None]] = {}
        self._creds: OrderedDict[tuple[str, str], Credentials] = OrderedDict()
        #: pass-through pools, (database, user) -> Pool (not in gw.pools: gw.pools is per database)
        self.user_pools: dict[tuple[str, str], "Pool"] = {}
        #: queries run (tests count them: cache hits and shared lookups run none)
        self.lookups = 0

    # ------------------------------------------------------------ lookups
    def enabled(self, database: str) -> bool:
        db = self.gw.config.databases.get(database)
        return db is not None and bool(db.auth_user or self.gw.settings.auth_user)

    async def secret(self, database: str, user: str) -> Secret | None:
        """The password of ``user`` for logins to ``database`` (None: unknown,
        or lookups not configured, or the lookup failed -- logged).
        :class:`LookupUnavailable` when PostgreSQL cannot be reached."""
        if not self.enabled(database):
            return None
        key = (database, compact_name(user))  # (bounded: a client-given name)
        loop = asyncio.get_running_loop()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > loop.time() and hit[1] == _role_epoch[0]:
            return hit[2]
        task = self._inflight.get(key)
        if task is None:  # single flight: one query, in its own task (a leaving client does not cancel it)
            task = self._inflight[key] = loop.create_task(self._lookup(database, user))
            task.add_done_callback(lambda t: self._done(key, t))
        return await asyncio.shield(task)

    def _done(self, key: tuple[str, str], task: "asyncio.Task[Secret | None]") -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled():
            task.exception()  # retrieved (the waiters, if any, got it too)

    def _target(self, database: str) -> _Target:
        """The lookup connection of ``database`` (one per upstream, auth_dbname and auth_user)."""
        g = self.gw.settings
        db = self.gw.config.databases[database]
        auth_user = db.auth_user or g.auth_user
        dbname = db.auth_dbname or g.auth_dbname or db.dbname
        tkey = (db.host, db.port, dbname, auth_user, db.sslmode, db.sslrootcert)
        target = self._targets.get(tkey)
        if target is None:
            target = self._targets[tkey] = _Target(self, db, dbname, auth_user, self._password_of(db, auth_user))
        return target

    async def probe(self, database: str) -> bool:
        """/healthz for a database without ``user`` (its own pool never logs in): one
        of its per-user pools holds a server, or its lookup connection (as auth_user)
        gets an answer from PostgreSQL."""
        for (name, _user), pool in list(self.user_pools.items()):
            if name == database and (pool.sv_idle or pool.sv_active or pool.sv_used):
                return True
        if not self.enabled(database):
            return False
        try:
            await self._target(database).run("SELECT $1", "")
        except (LookupUnavailable, ServerError):
            return False
        return True

    async def _lookup(self, database: str, user: str) -> Secret | None:
        gw = self.gw
        g = gw.settings
        db = gw.config.databases[database]
        auth_user = db.auth_user or g.auth_user
        sql = db.auth_query or g.auth_query
        target = self._target(database)
        epoch = _role_epoch[0]
        self.lookups += 1
        try:
            row = await target.run(sql, user)
        except LookupUnavailable as exc:
            log.warning("auth_query for user %r (database %s) failed: upstream unreachable: %s",
                        user, database, exc)
            raise
        except ServerError as exc:
            log.warning("auth_query for user %r (database %s, as %s) failed: %s %s",
                        user, database, auth_user, exc.sqlstate, exc.message)
            return None  # not cached: the next attempt asks again
        secret = None
        if row is not None:
            if len(row) < 2:
                log.warning("auth_query returned %d column(s); it must return (user name, password)", len(row))
                return None
            raw = row[1]
            secret = parse_secret(raw.decode("utf-8", "replace") if raw is not None else None)
        ttl = gw.settings.auth_query_cache_ttl
        if ttl > 0:
            key = (database, compact_name(user))
            self._cache[key] = (asyncio.get_running_loop().time() + ttl, epoch, secret)
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return secret

    def _password_of(self, db: Any, auth_user: str) -> str | None:
        """auth_user's upstream password: the database's ``password`` when auth_user
        is its ``user`` or it has none (pass-through), else ``[users.<auth_user>]``'s
        plaintext (as PgBouncer takes it from auth_file), else none (trust)."""
        if db.user in (auth_user, ""):
            return db.password  # type: ignore[no-any-return]
        u = self.gw.config.users.get(auth_user)
        if u is not None and u.password and not u.is_scram_verifier:
            return str(u.password)
        return None

    def forget(self, database: str, user: str) -> None:
        """A login with the cached secret failed: ask PostgreSQL next time."""
        self._cache.pop((database, compact_name(user)), None)

    # ------------------------------------------------------ pass-through
    def remember(self, database: str, user: str, *, password: str | None = None,
                 keys: tuple[bytes, bytes] | None = None, md5: str | None = None) -> None:
        """A client logged in: keep what lets the gateway log in upstream as it
        (only for databases without ``user``)."""
        db = self.gw.config.databases.get(database)
        if db is None or db.user:
            return
        key = (database, user)
        creds = self._creds.get(key)
        if creds is None:
            creds = self._creds[key] = Credentials()
            while len(self._creds) > CACHE_SIZE:
                self._creds.popitem(last=False)
        self._creds.move_to_end(key)
        creds.set(password=password, keys=keys, md5=md5)

    def pool_for(self, pool: "Pool", user: str) -> "Pool":
        """``pool`` itself, or for a database without ``user`` the pool of
        (database, ``user``), which logs in upstream as ``user``."""
        if pool.db.user:
            return pool
        key = (pool.name, user)
        creds = self._creds.get(key)
        if not creds:  # e.g. an API token login (/sql, /pg, WebSocket): no password to pass through
            from .auth import AuthFailed
            raise AuthFailed("28000", f'database "{pool.name}" logs in as each client\'s own user, and this '
                                      f'login gave no secret to log in upstream as "{user}" with '
                                      "(a password login does; an API token does not, docs/auth-query.md)")
        up = self.user_pools.get(key)
        if up is None or up.closed:
            from .pool import Pool
            up = self.user_pools[key] = Pool(self.gw, replace(pool.db, user=user, password=creds), self.gw.settings)
            up.paused = pool.paused  # the admin console's PAUSE/KILL of the database holds it too
            up.per_user = True  # min_pool_size only while a client is connected (gateway/pool.py)
        return up

    def tick(self, now: float) -> None:
        """The janitor: pass-through pools see reloaded settings, run their
        timeouts, and go when empty; idle lookup connections close."""
        from .reload import _update_pool
        from .stats_period import fold_counters
        gw = self.gw
        for key, pool in list(self.user_pools.items()):
            base = gw.config.databases.get(key[0])
            if base is not None and (pool.settings is not gw.settings or
                                     replace(base, password=None) != replace(pool.db, user="", password=None)):
                _update_pool(pool, replace(base, user=key[1], password=pool.db.password), gw.settings)
            pool.tick(now)
            hub = getattr(pool, "listen_hub", None)  # GET /listen streams (gateway/listen_sse.py) hold it
            if not pool.cl_active and not pool.cl_waiting and pool.total_servers() == 0 and \
                    (hub is None or hub.closed or not hub.registry.channels):
                del self.user_pools[key]
                own = gw.pools.get(key[0])
                if own is not None:
                    fold_counters(own, pool)  # SHOW STATS totals of the database stay monotonic
                gw.spawn(pool.close())
        idle = gw.settings.server_idle_timeout
        for target in self._targets.values():
            if target.conn is not None and idle > 0 and not target.lock.locked() and \
                    now - target.last_used >= idle:
                target.close()

    async def close(self) -> None:
        for target in self._targets.values():
            target.close()
        pools = list(self.user_pools.values())
        self.user_pools.clear()
        for pool in pools:
            await pool.close()
