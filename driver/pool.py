"""A connection pool with asyncpg's basic semantics.

::

    pool = await create_pool(dsn, min_size=2, max_size=10)
    async with create_pool(dsn) as pool:               # same, closed on exit
        async with pool.acquire() as conn:               # or: conn = await pool.acquire()
            await conn.fetch("SELECT 1")                 #     ... await pool.release(conn)
        await pool.fetchval("SELECT 1")                  # shortcuts acquire + release

* ``min_size`` connections are opened by ``await pool``; up to ``max_size``
  are opened on demand.  ``acquire()`` waits (up to ``timeout``, then
  ``asyncio.TimeoutError``) for a free connection; waiters are served in order.
* ``acquire()`` hands out a :class:`PoolConnectionProxy`: it forwards to the
  connection until it is released, after which using it raises
  ``InterfaceError`` (as asyncpg does).
* On release the session is reset: ``reset(conn)`` if given, else
  ``Connection.reset()`` (ROLLBACK when in a transaction, then
  ``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``).  A
  connection that is closed, fails to reset, or does not reset within the
  release ``timeout`` is terminated; a fresh one is opened on the next acquire.
* ``init(conn)`` runs once per new connection, ``setup(proxy)`` on every acquire.
* A connection is replaced after ``max_queries`` queries (counted as calls of
  the query methods through the proxy and the pool shortcuts), after
  ``expire_connections()``, and closed after ``max_inactive_connection_lifetime``
  idle seconds (0 disables).
* ``close()`` waits for acquired connections to be released, then closes
  everything; ``terminate()`` closes everything at once.  Pending and later
  ``acquire()`` calls raise ``InterfaceError``.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any, Awaitable, Callable, Generator, Iterable, Sequence

from . import exceptions as exc

__all__ = ["Pool", "PoolConnectionProxy", "PoolAcquireContext", "create_pool"]

# Proxy attribute names that count as one query towards max_queries.
_QUERY_METHODS = frozenset({
    "execute", "executemany", "fetch", "fetchrow", "fetchval", "fetchmany", "prepare", "cursor",
    "copy_from_table", "copy_from_query", "copy_to_table", "copy_records_to_table",
})


def _default_connect() -> Callable[..., Awaitable[Any]]:
    from .connection import connect

    return connect


class PoolConnectionProxy:
    """What :meth:`Pool.acquire` returns: forwards to the pooled connection until
    it is released."""

    __slots__ = ("_con", "_holder", "__weakref__")

    def __init__(self, holder: _Holder, con: Any) -> None:
        self._holder: _Holder | None = holder
        self._con: Any = con

    def __getattr__(self, name: str) -> Any:
        con = self._con
        if con is None:
            raise exc.InterfaceError(
                f"cannot call Connection.{name}(): connection has been released back to the pool")
        if name in _QUERY_METHODS and self._holder is not None:
            self._holder.queries += 1
        return getattr(con, name)

    def _detach(self) -> Any:
        con, self._con, self._holder = self._con, None, None
        return con

    def __repr__(self) -> str:
        if self._con is None:
            return f"<{type(self).__name__} [released] {id(self):#x}>"
        return f"<{type(self).__name__} {self._con!r} {id(self):#x}>"


class _Holder:
    """One slot of the pool: at most one connection, in use or idle."""

    __slots__ = ("pool", "con", "proxy", "in_use", "generation", "queries", "timer")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.con: Any = None
        self.proxy: PoolConnectionProxy | None = None
        self.in_use: asyncio.Future[None] | None = None
        self.generation = -1
        self.queries = 0
        self.timer: asyncio.TimerHandle | None = None

    def has_open_connection(self) -> bool:
        return self.con is not None and not self.con.is_closed()

    async def connect(self) -> None:
        self.con = await self.pool._new_connection()
        self.generation = self.pool._generation
        self.queries = 0

    def _cancel_timer(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def start_idle_timer(self) -> None:
        self._cancel_timer()
        lifetime = self.pool._max_inactive
        if lifetime and self.con is not None:
            self.timer = asyncio.get_running_loop().call_later(lifetime, self._expire_idle)

    def _expire_idle(self) -> None:
        self.timer = None
        if self.in_use is None and self.con is not None:
            con, self.con = self.con, None
            self.pool._spawn(_close_quietly(con))

    async def acquire(self) -> PoolConnectionProxy:
        self._cancel_timer()
        pool = self.pool
        if self.con is not None and (self.con.is_closed() or self.generation != pool._generation):
            con, self.con = self.con, None
            await _close_quietly(con)
        if self.con is None:
            await self.connect()
        # Nothing can fail after this point: the caller owns the slot from here on.
        self.in_use = asyncio.get_running_loop().create_future()
        proxy = self.proxy = PoolConnectionProxy(self, self.con)
        return proxy

    async def release(self, timeout: float | None) -> None:
        """Reset (or discard) the connection, then put the slot back in the pool."""
        pool = self.pool
        try:
            if self.proxy is not None:
                self.proxy._detach()
                self.proxy = None
            con = self.con
            if con is None:
                return
            if con.is_closed():
                con.terminate()
                self.con = None
            elif self.queries >= pool._max_queries or self.generation != pool._generation:
                self.con = None
                await _close_quietly(con, timeout)
            else:
                try:
                    if pool._reset is not None:
                        await asyncio.wait_for(pool._reset(con), timeout)
                    else:
                        await con.reset(timeout=timeout)
                except BaseException:
                    # The session is in an unknown state: do not reuse it.
                    self.con = None
                    con.terminate()
                    raise
        finally:
            fut, self.in_use = self.in_use, None
            if fut is not None and not fut.done():
                fut.set_result(None)
            if pool._closing:
                if self.con is not None and pool._closed:
                    self.con.terminate()
                    self.con = None
            else:
                self.start_idle_timer()
            pool._put(self)

    async def close(self) -> None:
        self._cancel_timer()
        con, self.con = self.con, None
        if con is not None:
            await _close_quietly(con)

    def terminate(self) -> None:
        self._cancel_timer()
        if self.proxy is not None:
            self.proxy._detach()
            self.proxy = None
        con, self.con = self.con, None
        if con is not None:
            con.terminate()
        fut, self.in_use = self.in_use, None
        if fut is not None and not fut.done():
            fut.set_result(None)


async def _close_quietly(con: Any, timeout: float | None = None) -> None:
    try:
        await con.close(timeout=timeout)
    except Exception:
        con.terminate()


class PoolAcquireContext:
    """``pool.acquire()``: ``await`` it, or use it as ``async with``."""

    __slots__ = ("pool", "timeout", "proxy", "done")

    def __init__(self, pool: Pool, timeout: float | None) -> None:
        self.pool = pool
        self.timeout = timeout
        self.proxy: PoolConnectionProxy | None = None
        self.done = False

    async def __aenter__(self) -> PoolConnectionProxy:
        if self.proxy is not None or self.done:
            raise exc.InterfaceError("a connection is already acquired")
        self.proxy = await self.pool._acquire(self.timeout)
        return self.proxy

    async def __aexit__(self, *exc_info: object) -> None:
        self.done = True
        proxy, self.proxy = self.proxy, None
        if proxy is not None:
            await self.pool.release(proxy)

    def __await__(self) -> Generator[Any, None, PoolConnectionProxy]:
        self.done = True
        return self.pool._acquire(self.timeout).__await__()


class Pool:
    """A pool of connections (create it with :func:`create_pool`)."""

    def __init__(
        self,
        *connect_args: Any,
        min_size: int,
        max_size: int,
        max_queries: int,
        max_inactive_connection_lifetime: float,
        setup: Callable[[Any], Awaitable[None]] | None,
        init: Callable[[Any], Awaitable[None]] | None,
        reset: Callable[[Any], Awaitable[None]] | None,
        connect: Callable[..., Awaitable[Any]] | None,
        connection_class: type | None,
        record_class: type | None,
        **connect_kwargs: Any,
    ) -> None:
        if max_size <= 0:
            raise ValueError("max_size is expected to be greater than zero")
        if min_size < 0:
            raise ValueError("min_size is expected to be greater or equal to zero")
        if min_size > max_size:
            raise ValueError("min_size is greater than max_size")
        if max_queries <= 0:
            raise ValueError("max_queries is expected to be greater than zero")
        if max_inactive_connection_lifetime < 0:
            raise ValueError("max_inactive_connection_lifetime is expected to be greater or equal to zero")
        self._min_size = min_size
        self._max_size = max_size
        self._max_queries = max_queries
        self._max_inactive = max_inactive_connection_lifetime
        self._setup = setup
        self._init = init
        self._reset = reset
        self._connect_fn = connect
        self._connection_class = connection_class
        self._record_class = record_class
        self._connect_args = connect_args
        self._connect_kwargs = connect_kwargs
        self._holders = [_Holder(self) for _ in range(max_size)]
        self._idle: list[_Holder] = []  # LIFO: the most recently used connection first
        self._waiters: collections.deque[asyncio.Future[_Holder]] = collections.deque()
        self._generation = 0
        self._initialized = False
        self._initializing = False
        self._closing = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- initialisation ------------------------------------------------------------
    async def _async_init(self) -> Pool:
        if self._initialized:
            return self
        if self._initializing:
            raise exc.InterfaceError("the pool is being initialized in another task")
        if self._closed:
            raise exc.InterfaceError("the pool is closed")
        self._initializing = True
        try:
            # Connect the first one alone (fail fast on bad credentials), then the rest together.
            to_connect = self._holders[: self._min_size]
            if to_connect:
                await to_connect[0].connect()
                if len(to_connect) > 1:
                    results = await asyncio.gather(*(h.connect() for h in to_connect[1:]),
                                                   return_exceptions=True)
                    errors = [r for r in results if isinstance(r, BaseException)]
                    if errors:
                        raise errors[0]
            # Unconnected slots at the bottom of the stack, connected ones on top.
            for h in self._holders[self._min_size:]:
                self._idle.append(h)
            for h in to_connect:
                h.start_idle_timer()
                self._idle.append(h)
            self._initialized = True
        except BaseException:
            for h in self._holders:
                h.terminate()
            self._idle.clear()
            raise
        finally:
            self._initializing = False
        return self

    def __await__(self) -> Generator[Any, None, Pool]:
        return self._async_init().__await__()

    async def __aenter__(self) -> Pool:
        await self._async_init()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def _new_connection(self) -> Any:
        kwargs = dict(self._connect_kwargs)
        if self._connect_fn is not None:
            con = await self._connect_fn(*self._connect_args, connection_class=self._connection_class,
                                         record_class=self._record_class, **kwargs)
        else:
            if self._connection_class is not None:
                kwargs["connection_class"] = self._connection_class
            if self._record_class is not None:
                kwargs["record_class"] = self._record_class
            con = await _default_connect()(*self._connect_args, **kwargs)
            if self._record_class is not None and getattr(con, "_record_cls", None) is None:
                # (a connect function that ignored record_class=): set the connection's default.
                con._record_cls = self._record_class
        if self._connection_class is not None and not isinstance(con, self._connection_class):
            con.terminate()
            raise exc.InterfaceError(
                f"expected pool connect callback to return an instance of {self._connection_class.__name__!r},"
                f" got {type(con).__name__!r}")
        if self._init is not None:
            try:
                await self._init(con)
            except BaseException:
                await _close_quietly(con)
                raise
        return con

    def set_connect_args(self, dsn: str | None = None, **connect_kwargs: Any) -> None:
        """Change the arguments of connections opened from now on (as asyncpg)."""
        self._connect_args = (dsn,)
        self._connect_kwargs = connect_kwargs

    # -- slots ---------------------------------------------------------------------
    def _put(self, holder: _Holder) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(holder)
                return
        self._idle.append(holder)

    @property
    def _waiting(self) -> int:
        """Number of acquire() calls waiting for a free slot."""
        return sum(1 for f in self._waiters if not f.done())

    async def _get(self) -> _Holder:
        if self._idle and not self._waiters:
            return self._idle.pop()
        fut: asyncio.Future[_Holder] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._put(fut.result())  # woken and cancelled at once: pass the slot on
            else:
                try:
                    self._waiters.remove(fut)
                except ValueError:
                    pass
            raise

    def _check_usable(self) -> None:
        if self._closing or self._closed:
            raise exc.InterfaceError("pool is closing" if not self._closed else "pool is closed")
        if not self._initialized:
            if self._initializing:
                raise exc.InterfaceError(
                    "pool is being initialized, but not yet ready: likely there is a race between "
                    "creating a pool and using it")
            raise exc.InterfaceError("pool is not initialized")

    # -- acquire / release -------------------------------------------------------
    def acquire(self, *, timeout: float | None = None) -> PoolAcquireContext:
        """Acquire a connection: ``async with pool.acquire() as conn`` or
        ``conn = await pool.acquire()`` (then :meth:`release` it)."""
        return PoolAcquireContext(self, timeout)

    async def _acquire(self, timeout: float | None) -> PoolConnectionProxy:
        self._check_usable()
        if timeout is None:
            return await self._acquire_impl()
        return await asyncio.wait_for(self._acquire_impl(), timeout)

    async def _acquire_impl(self) -> PoolConnectionProxy:
        holder = await self._get()
        try:
            self._check_usable()
            proxy = await holder.acquire()
        except BaseException:
            self._put(holder)  # not handed out: give the slot to the next waiter
            raise
        if self._setup is not None:
            try:
                await self._setup(proxy)
            except BaseException:
                await self.release(proxy)
                raise
        return proxy

    async def release(self, connection: Any, *, timeout: float | None = None) -> None:
        """Give ``connection`` back (reset, or replaced when broken)."""
        if not isinstance(connection, PoolConnectionProxy):
            raise exc.InterfaceError(
                f"Pool.release() received invalid connection: {connection!r} is not a member of this pool")
        holder = connection._holder
        if holder is None:
            return  # already released
        if holder.pool is not self:
            raise exc.InterfaceError(
                f"Pool.release() received invalid connection: {connection!r} is not a member of this pool")
        # Shield the reset from the caller's cancellation so the slot always returns.
        await asyncio.shield(holder.release(timeout))

    # -- shortcuts -----------------------------------------------------------------
    async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:
        async with self.acquire() as con:
            result: str = await con.execute(query, *args, timeout=timeout)
            return result

    async def executemany(self, command: str, args: Iterable[Sequence[Any]], *,
                          timeout: float | None = None) -> None:
        async with self.acquire() as con:
            await con.executemany(command, args, timeout=timeout)

    async def fetch(self, query: str, *args: Any, timeout: float | None = None,
                    record_class: type | None = None) -> list[Any]:
        async with self.acquire() as con:
            if record_class is None:
                rows: list[Any] = await con.fetch(query, *args, timeout=timeout)
            else:
                rows = await con.fetch(query, *args, timeout=timeout, record_class=record_class)
            return rows

    async def fetchrow(self, query: str, *args: Any, timeout: float | None = None,
                       record_class: type | None = None) -> Any:
        async with self.acquire() as con:
            if record_class is None:
                return await con.fetchrow(query, *args, timeout=timeout)
            return await con.fetchrow(query, *args, timeout=timeout, record_class=record_class)

    async def fetchval(self, query: str, *args: Any, column: int = 0, timeout: float | None = None) -> Any:
        async with self.acquire() as con:
            return await con.fetchval(query, *args, column=column, timeout=timeout)

    # -- introspection ---------------------------------------------------------------
    def get_size(self) -> int:
        """Number of open connections (idle or in use)."""
        return sum(1 for h in self._holders if h.has_open_connection())

    def get_idle_size(self) -> int:
        """Number of open connections not in use."""
        return sum(1 for h in self._holders if h.in_use is None and h.has_open_connection())

    def get_min_size(self) -> int:
        return self._min_size

    def get_max_size(self) -> int:
        return self._max_size

    def is_closing(self) -> bool:
        return self._closing or self._closed

    def expire_connections(self) -> None:
        """Replace every open connection: idle ones on their next acquire, busy
        ones when released."""
        self._generation += 1

    # -- shutdown --------------------------------------------------------------------
    def _fail_waiters(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc.InterfaceError("pool is closing"))

    def _spawn(self, aw: Awaitable[Any]) -> None:
        async def run() -> None:
            await aw

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Wait until every acquired connection is released, then close all connections."""
        if self._closed:
            return
        self._closing = True
        self._fail_waiters()
        try:
            busy = [h.in_use for h in self._holders if h.in_use is not None]
            if busy:
                await asyncio.gather(*busy)
            await asyncio.gather(*(h.close() for h in self._holders))
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
        except BaseException:
            self.terminate()
            raise
        finally:
            self._closed = True
            self._idle.clear()

    def terminate(self) -> None:
        """Close every connection now, acquired ones included."""
        if self._closed:
            return
        self._closing = True
        self._closed = True
        self._fail_waiters()
        for h in self._holders:
            h.terminate()
        self._idle.clear()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "closing" if self._closing else "open"
        return (f"<driver.Pool {state} size={self.get_size()} idle={self.get_idle_size()}"
                f" min={self._min_size} max={self._max_size}>")


def create_pool(
    dsn: str | None = None,
    *,
    min_size: int = 10,
    max_size: int = 10,
    max_queries: int = 50000,
    max_inactive_connection_lifetime: float = 300.0,
    setup: Callable[[Any], Awaitable[None]] | None = None,
    init: Callable[[Any], Awaitable[None]] | None = None,
    reset: Callable[[Any], Awaitable[None]] | None = None,
    connect: Callable[..., Awaitable[Any]] | None = None,
    loop: Any = None,
    connection_class: type | None = None,
    record_class: type | None = None,
    **connect_kwargs: Any,
) -> Pool:
    """Create a :class:`Pool` (``await`` it, or ``async with`` it). ``loop`` is ignored."""
    return Pool(
        dsn,
        min_size=min_size, max_size=max_size, max_queries=max_queries,
        max_inactive_connection_lifetime=max_inactive_connection_lifetime,
        setup=setup, init=init, reset=reset, connect=connect,
        connection_class=connection_class, record_class=record_class,
        **connect_kwargs,
    )
