"""Load generator processes.

The orchestrating process (``python -m bench``) only starts services, samples
``pg_stat_activity`` and collects results; the load itself comes from
``procs`` worker processes (``fork``), so a single
Python process (one core) is never what limits the numbers on a 2-core
machine. Each worker:

1. receives a spec, imports the client library, prepares (``steady``/``hold``:
   opens its connections), and reports ``ready``;
2. receives a common start instant (``time.monotonic()`` is system-wide on
   Linux), sleeps until then, and runs;
3. sends its raw measurements back (lists of seconds), which the parent merges.

Client kinds: ``asyncpg`` (``kwargs`` for ``asyncpg.connect``) and ``driver``
(``dsn`` for ``driver.connect``, e.g. ``ws://user:pw@host:port/db``).
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent

QUERY = "SELECT val FROM items WHERE id = $1"


def error_code(e: BaseException) -> str:
    """SQLSTATE when the error carries one, else a short class name."""
    state = getattr(e, "sqlstate", None)
    if isinstance(state, str) and state:
        return state
    if isinstance(e, (asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "ECONNREFUSED"
    if isinstance(e, OSError) and e.errno is not None:
        import errno as _errno
        return _errno.errorcode.get(e.errno, type(e).__name__)
    return type(e).__name__


def make_connect(spec: dict[str, Any]) -> Callable[[], Any]:
    client = spec["client"]
    timeout = float(spec.get("timeout", 60.0))
    if client == "asyncpg":
        import asyncpg
        kw = dict(spec["kwargs"])
        kw.setdefault("timeout", timeout)
        if "statement_cache_size" in spec:
            kw["statement_cache_size"] = spec["statement_cache_size"]

        def connect() -> Any:
            return asyncpg.connect(**kw)
        return connect
    if client == "driver":
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        import driver
        dsn = spec["dsn"]
        kw2: dict[str, Any] = dict(spec.get("connect_kwargs", {}))
        kw2.setdefault("timeout", timeout)

        def connect() -> Any:
            return driver.connect(dsn, **kw2)
        return connect
    if client == "neon-sql":
        host, port, conn_str = spec["host"], int(spec["port"]), spec["conn_str"]

        async def connect_sql() -> Any:
            return NeonSqlSession(host, port, conn_str, timeout)
        return connect_sql
    raise ValueError(f"unknown client {client!r}")


class SqlHttpError(Exception):
    def __init__(self, status: int, body: dict[str, Any]) -> None:
        super().__init__(f"HTTP {status}: {body.get('message', body)}")
        self.sqlstate = body.get("code") or f"HTTP{status}"


class NeonSqlSession:
    """One-shot SQL over HTTP as Neon's ``neon()`` sends it: every query is one
    ``POST /sql`` on a new TCP connection, credentials in ``Neon-Connection-String``.
    "Connecting" does nothing; ``fetchval`` does everything (connect + auth + query)."""

    def __init__(self, host: str, port: int, conn_str: str, timeout: float) -> None:
        self.host, self.port, self.conn_str, self.timeout = host, port, conn_str, timeout

    async def fetchval(self, query: str, *args: Any) -> Any:
        import json
        body = json.dumps({"query": query, "params": [str(a) for a in args]}).encode()
        head = (f"POST /sql HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
                f"Content-Type: application/json\r\nNeon-Connection-String: {self.conn_str}\r\n"
                "Neon-Raw-Text-Output: true\r\nNeon-Array-Mode: true\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(head + body)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            length = None
            chunked = False
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b"\n", b""):
                    break
                k, _, v = line.decode("latin-1").partition(":")
                if k.strip().lower() == "content-length":
                    length = int(v)
                elif k.strip().lower() == "transfer-encoding" and "chunked" in v.lower():
                    chunked = True
            if chunked:
                parts = []
                while True:
                    size = int((await reader.readline()).split(b";")[0], 16)
                    if size == 0:
                        break
                    parts.append(await reader.readexactly(size))
                    await reader.readline()
                data = b"".join(parts)
            elif length is not None:
                data = await reader.readexactly(length)
            else:
                data = await reader.read()
        finally:
            writer.close()
        doc = json.loads(data) if data else {}
        if status != 200:
            raise SqlHttpError(status, doc)
        rows = doc.get("rows") or []
        return rows[0][0] if rows else None

    async def close(self) -> None:
        return None

    def terminate(self) -> None:
        return None


def probe(spec: dict[str, Any]) -> None:
    """Run the bench query once with ``spec``'s client (raises on failure)."""
    async def go() -> None:
        connect = make_connect(spec)
        c = await connect()
        try:
            v = await c.fetchval(QUERY, 1)
            assert v == "item-1", v
        finally:
            await c.close()
    asyncio.run(go())


async def _sleep_until(t: float) -> None:
    d = t - time.monotonic()
    if d > 0:
        await asyncio.sleep(d)


async def _burst_one(connect: Callable[[], Any], start: float, timeout: float, nitems: int) -> tuple[Any, ...]:
    conn = None
    try:
        async def go() -> float:
            nonlocal conn
            conn = await connect()
            await conn.fetchval(QUERY, random.randint(1, nitems))
            return time.monotonic()
        t_row = await asyncio.wait_for(go(), timeout)
        await conn.close()  # type: ignore[union-attr]
        return (True, t_row - start, time.monotonic() - start, "")
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        if conn is not None:
            try:
                conn.terminate()
            except Exception:  # noqa: BLE001
                pass
        return (False, None, time.monotonic() - start, error_code(e))


async def _open_many(connect: Callable[[], Any], n: int, concurrency: int,
                     failed: Counter[str]) -> list[Any]:
    sem = asyncio.Semaphore(max(1, concurrency))
    conns: list[Any] = []

    async def one() -> None:
        async with sem:
            try:
                conns.append(await connect())
            except Exception as e:  # noqa: BLE001
                failed[error_code(e)] += 1
    await asyncio.gather(*(one() for _ in range(n)))
    return conns


async def _close_all(conns: list[Any]) -> None:
    async def close(c: Any) -> None:
        try:
            await asyncio.wait_for(c.close(), 10)
        except Exception:  # noqa: BLE001
            try:
                c.terminate()
            except Exception:  # noqa: BLE001
                pass
    await asyncio.gather(*(close(c) for c in conns))


_CPU_AT_GO: list[float] = []  # this worker's CPU time when the start instant was received


async def _run(spec: dict[str, Any], pipe: Any) -> dict[str, Any]:
    mode = spec["mode"]
    n = int(spec.get("n", 1))
    timeout = float(spec.get("timeout", 60.0))
    nitems = int(spec.get("nitems", 10_000))
    connect = make_connect(spec)
    failed: Counter[str] = Counter()
    conns: list[Any] = []
    info: dict[str, Any] = {}
    loop = asyncio.get_running_loop()

    if mode in ("steady", "hold"):
        conns = await _open_many(connect, n, int(spec.get("open_concurrency", 100)), failed)
        info = {"opened": len(conns), "open_failed": dict(failed)}
        failed.clear()

    pipe.send(("ready", info))
    start = await loop.run_in_executor(None, pipe.recv)
    _CPU_AT_GO[:] = [time.process_time()]
    await _sleep_until(start)

    if mode == "burst":
        res = await asyncio.gather(*(_burst_one(connect, start, timeout, nitems) for _ in range(n)))
        out = {"ttfr": [r[1] for r in res if r[0]], "end": [r[2] for r in res if r[0]],
               "failed": dict(Counter(r[3] for r in res if not r[0]))}
        return out

    if mode == "steady":
        deadline = start + float(spec["duration"])
        lat: list[float] = []

        async def client(c: Any) -> None:
            mono = time.monotonic
            rnd = random.randint
            while True:
                t0 = mono()
                if t0 >= deadline:
                    return
                try:
                    await c.fetchval(QUERY, rnd(1, nitems))
                except Exception as e:  # noqa: BLE001
                    failed[error_code(e)] += 1
                    return
                lat.append(mono() - t0)
        await asyncio.gather(*(client(c) for c in conns))
        elapsed = time.monotonic() - start
        await _close_all(conns)
        return {"latencies": lat, "elapsed": elapsed, "failed": dict(failed), **info}

    if mode == "hold":
        async def one(c: Any) -> tuple[Any, ...]:
            try:
                await asyncio.wait_for(c.fetchval(QUERY, random.randint(1, nitems)), timeout)
                return (True, time.monotonic() - start, "")
            except Exception as e:  # noqa: BLE001
                return (False, None, error_code(e))
        res = await asyncio.gather(*(one(c) for c in conns))
        await _close_all(conns)
        return {"ttfr": [r[1] for r in res if r[0]], "end": [r[1] for r in res if r[0]],
                "failed": dict(Counter(r[2] for r in res if not r[0])), **info}

    if mode == "latency":
        # sequential fresh sessions: time to first row (connect + auth + query)
        ttfr: list[float] = []
        for _ in range(n):
            t0 = time.monotonic()
            c = None
            try:
                c = await asyncio.wait_for(connect(), timeout)
                await asyncio.wait_for(c.fetchval(QUERY, random.randint(1, nitems)), timeout)
                ttfr.append(time.monotonic() - t0)
            except Exception as e:  # noqa: BLE001
                failed[error_code(e)] += 1
            finally:
                if c is not None:
                    try:
                        await asyncio.wait_for(c.close(), 10)
                    except Exception:  # noqa: BLE001
                        pass
        return {"ttfr": ttfr, "end": [], "failed": dict(failed)}

    raise ValueError(f"unknown mode {mode!r}")


def worker_entry(pipe: Any, spec: dict[str, Any]) -> None:
    try:
        if spec.get("uvloop", True):
            try:
                import uvloop
                uvloop.install()
            except ImportError:
                pass
        result = asyncio.run(_run(spec, pipe))
        result["cpu_s"] = time.process_time() - _CPU_AT_GO[0] if _CPU_AT_GO else None
        pipe.send(("done", result))
    except BaseException as e:  # noqa: BLE001
        try:
            pipe.send(("error", f"{type(e).__name__}: {e}"))
        except Exception:  # noqa: BLE001
            pass


class Workers:
    """``procs`` worker processes sharing one spec (``n`` is split between them)."""

    def __init__(self, spec: dict[str, Any], procs: int) -> None:
        self.spec = spec
        total = int(spec.get("n", 1))
        procs = max(1, min(procs, total)) if total > 0 else 1
        shares = [total // procs + (1 if i < total % procs else 0) for i in range(procs)]
        # fork where available (starts in milliseconds; the orchestrator has no running event
        # loop and no sampler thread when workers are created), else spawn.
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
        self.pipes: list[Any] = []
        self.procs: list[Any] = []
        for share in shares:
            parent, child = ctx.Pipe()
            s = dict(spec, n=share)
            p = ctx.Process(target=worker_entry, args=(child, s), daemon=True)
            p.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(p)

    def _recv(self, pipe: Any, timeout: float) -> tuple[str, Any]:
        if not pipe.poll(timeout):
            raise TimeoutError("worker did not answer in time")
        try:
            msg = pipe.recv()
        except EOFError:
            raise RuntimeError("worker died")
        if msg[0] == "error":
            raise RuntimeError(f"worker failed: {msg[1]}")
        return msg  # type: ignore[no-any-return]

    def wait_ready(self, timeout: float = 600.0) -> list[dict[str, Any]]:
        return [self._recv(p, timeout)[1] for p in self.pipes]

    def go(self, delay: float = 0.3) -> float:
        start = time.monotonic() + delay
        for p in self.pipes:
            p.send(start)
        return start

    def results(self, timeout: float = 900.0) -> list[dict[str, Any]]:
        out = [self._recv(p, timeout)[1] for p in self.pipes]
        for p in self.procs:
            p.join(10)
        return out

    def kill(self) -> None:
        for p in self.procs:
            if p.is_alive():
                p.kill()
                p.join(5)

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def merge(results: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"ttfr": [], "end": [], "latencies": [], "failed": Counter(), "elapsed": 0.0,
                           "opened": 0, "open_failed": Counter(), "client_cpu_s": 0.0}
    for r in results:
        out["ttfr"] += r.get("ttfr", [])
        out["end"] += r.get("end", [])
        out["latencies"] += r.get("latencies", [])
        out["failed"].update(r.get("failed", {}))
        out["open_failed"].update(r.get("open_failed", {}))
        out["opened"] += r.get("opened", 0)
        out["elapsed"] = max(out["elapsed"], r.get("elapsed", 0.0))
        out["client_cpu_s"] += r.get("cpu_s") or 0.0
    out["client_cpu_s"] = round(out["client_cpu_s"], 2)
    return out
