"""The ``python -m bench`` harness: scenarios × targets, see bench/README.md."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import psutil

from . import env as E
from .cold_start import CASES as COLD_START_CASES, relay, relay_dsn, token_dsn
from .loadgen import Workers, merge
from .report import Progress, cdf_points, charts, markdown_table, pct_ms, table, write_json

SCENARIOS = ("driver", "burst", "steady", "latency", "hold", "micro")
TARGETS = ("direct", "pgbouncer", "gateway-tcp", "gateway-ws", "gateway-http", "gateway-sql")
#: gateway targets served by a client that needs a probe first: target -> URL scheme
DRIVER_TARGETS = {"gateway-ws": "ws", "gateway-http": "http", "gateway-sql": "sql"}
DRIVER_CONNECT_KWARGS: dict[str, Any] = {"statement_cache_size": 0}


@dataclass
class Sizes:
    sessions: int = 1000          # burst
    burst_procs: int = 2
    clients: int = 50             # steady
    duration: float = 10.0
    steady_procs: int = 2
    pgbench_duration: int = 10
    pgbench: bool = True
    pgbench_scale: int = 10
    pgbench_clients: int = 50
    delay: float = 0.025          # latency: one-way
    latency_samples: int = 20
    hold: int = 10_000
    hold_procs: int = 2
    hold_pool: int = 20
    timeout: float = 60.0
    scram_iterations: int = 4096
    profile: bool = False         # py-spy the pooler/gateway during burst and steady
    micro_quick: bool = False
    driver_quick: bool = False

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(sessions=100, clients=10, duration=2.0, pgbench_duration=2, pgbench_clients=10, delay=0.01,
                   latency_samples=3, hold=100, timeout=30.0, micro_quick=True, driver_quick=True)


@dataclass
class Run:
    sizes: Sizes
    targets: tuple[str, ...]
    out: Path
    progress: Progress
    rows: list[dict[str, Any]] = field(default_factory=list)
    cdfs: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    cluster: E.BenchCluster | None = None
    dsn: str | None = None
    #: keyword arguments of every bench.env.Gateway this run starts (bench/workers_curve.py: workers)
    gateway_kw: dict[str, Any] = field(default_factory=dict)
    _ws_probe: tuple[bool, str] | None = None
    _last: float = field(default_factory=time.monotonic)

    def add(self, row: dict[str, Any], latencies: list[float] | None = None) -> None:
        if row.get("absent_reason"):
            row["absent_reason"] = " ".join(str(row["absent_reason"]).split())
        if str(row.get("target", "")).startswith("gateway") and not row.get("absent") \
                and row.get("scenario") not in ("micro",):
            row["gateway_loop"] = "uvloop" if E.Gateway.use_uvloop else "asyncio"
            if E.Gateway.fallback_note:
                row["note"] = E.Gateway.fallback_note
        now = time.monotonic()
        row.setdefault("step_s", round(now - self._last, 2))  # wall time of the step, set-up included
        self._last = now
        self.rows.append(row)
        if latencies is not None:
            self.cdfs.setdefault(row["scenario"], {})[row["target"]] = cdf_points(latencies)


def absent(scenario: str, target: str, reason: str) -> dict[str, Any]:
    return {"scenario": scenario, "target": target, "absent": True, "absent_reason": reason,
            "completed": 0, "failed": 0}


# ----------------------------------------------------------------- services
def target_absent_reason(target: str) -> str | None:
    if target == "pgbouncer" and not E.PgBouncer.available():
        return f"{E.PGBOUNCER_BIN} missing; {E.PGBOUNCER_HINT}"
    if target.startswith("gateway"):
        ok, why = E.gateway_available()
        if not ok:
            return why
    if target in ("gateway-ws", "gateway-http"):
        why = driver_absent_reason()
        if why:
            return why
    if target in _PROBES and not _PROBES[target][0]:
        return _PROBES[target][1]
    return None


def driver_absent_reason() -> str | None:
    import importlib.util
    if importlib.util.find_spec("driver") is None:
        return "driver package missing"
    import driver
    if not hasattr(driver, "connect"):
        return "driver.connect not in this checkout yet"
    return None


@contextlib.contextmanager
def service_for(run: Run, target: str, **gw: Any) -> Iterator[tuple[Any, dict[str, Any]]]:
    """Start what ``target`` needs; yield (service or None, client spec fragment)."""
    c = run.cluster
    assert c is not None
    if target == "direct":
        yield None, {"client": "asyncpg", "kwargs": c.conn_kwargs()}
    elif target == "pgbouncer":
        with E.PgBouncer(c) as b:
            yield b, {"client": "asyncpg", "kwargs": b.conn_kwargs(), "statement_cache_size": 0}
    elif target.startswith("gateway-"):
        g = E.Gateway(c, **{**run.gateway_kw, **gw})  # gateway_kw: e.g. workers (bench/workers_curve.py)
        with g:
            if target == "gateway-tcp":
                yield g, {"client": "asyncpg", "kwargs": g.tcp_kwargs(), "statement_cache_size": 0}
            else:
                yield g, client_for(target, g, g.port)
    else:
        raise ValueError(target)
    c.wait_backends_gone()


def client_for(target: str, g: E.Gateway, port: int) -> dict[str, Any]:
    """Load-generator client spec for a driver/HTTP gateway target reaching ``port``."""
    scheme = DRIVER_TARGETS[target]
    if scheme == "sql":
        return {"client": "neon-sql", "host": g.host, "port": port,
                "conn_str": f"postgresql://{E.BENCH_USER}:{E.BENCH_PASSWORD}@{g.host}/{E.BENCH_DB}"}
    # like asyncpg via PgBouncer/pg_listen: no named statements (statement_cache_size=0)
    return {"client": "driver", "dsn": g.url(scheme, port), "connect_kwargs": dict(DRIVER_CONNECT_KWARGS)}


_PROBES: dict[str, tuple[bool, str]] = {}


def _probe(run: Run, target: str, g: E.Gateway) -> tuple[bool, str]:
    """Can ``target``'s client run the bench query against ``g``? (checked once per run, in a
    separate process; the gateway is then restarted so the measurement starts with a cold pool)"""
    if target not in _PROBES:
        spec = dict(client_for(target, g, g.port), mode="latency", n=1, timeout=15, nitems=1, uvloop=False)
        code = ("import sys, json; sys.path.insert(0, %r)\n"
                "from bench.loadgen import probe\n"
                "probe(json.loads(sys.argv[1]))\n") % (str(E.REPO),)
        r = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True,
                           timeout=60, cwd=str(E.REPO))
        if r.returncode == 0:
            _PROBES[target] = (True, "")
            g.restart_cold()
        else:
            last = (r.stderr.strip().splitlines() or ["?"])[-1]
            _PROBES[target] = (False, f"{target}: a probe query failed: {last[:200]}")
    return _PROBES[target]


def _drive(run: Run, w: Workers, sampler: E.BackendSampler | None, label: str, expect_s: float) -> list[dict[str, Any]]:
    """Wait for the workers' results while updating the progress bar."""
    t0 = time.monotonic()
    results: list[dict[str, Any] | None] = [None] * len(w.pipes)
    deadline = t0 + max(900.0, expect_s * 5)
    while any(r is None for r in results):
        for i, p in enumerate(w.pipes):
            if results[i] is None and p.poll(0.2):
                results[i] = w._recv(p, 1)[1]
        el = time.monotonic() - t0
        detail = f"{label} {el:5.1f}s"
        if sampler is not None:
            detail += f" backends(peak)={sampler.peak}"
        run.progress.update(detail, min(0.99, el / max(expect_s, 0.1)))
        if time.monotonic() > deadline:
            raise TimeoutError(f"{label}: workers did not finish")
    for p in w.procs:
        p.join(10)
    return [r for r in results if r is not None]


@contextlib.contextmanager
def profiled(run: Run, svc: Any, scenario: str, target: str) -> Iterator[dict[str, Any]]:
    """With ``--profile``: ``py-spy record`` the gateway process while the block runs, then write
    a collapsed-stack file and a text summary (top functions by own and by total samples)."""
    info: dict[str, Any] = {}
    if not run.sizes.profile or svc is None or not isinstance(svc, E.Gateway) or svc.pid is None:
        yield info
        return
    import shutil
    exe = shutil.which("py-spy")
    if exe is None:
        info["profile"] = "py-spy not installed (pip install py-spy)"
        yield info
        return
    raw = run.out / f"profile-{scenario}-{target}.txt"
    p = subprocess.Popen([exe, "record", "--pid", str(svc.pid), "--rate", "250", "--nonblocking",
                          "--format", "raw", "--output", str(raw)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)  # let py-spy attach
    try:
        yield info
    finally:
        p.send_signal(__import__("signal").SIGINT)
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
        if raw.exists():
            top = run.out / f"profile-{scenario}-{target}.top.txt"
            top.write_text(summarize_profile(raw.read_text()))
            info["profile"] = top.name


def summarize_profile(collapsed: str, n: int = 25) -> str:
    """Top functions by own (leaf) and total samples from py-spy's collapsed stacks."""
    own: dict[str, int] = {}
    total: dict[str, int] = {}
    samples = 0
    for line in collapsed.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        c = int(count)
        samples += c
        frames = stack.split(";")
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            total[f] = total.get(f, 0) + c
    out = [f"{samples} samples (active time only)", "", "own %  function (file:line)"]
    for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]:
        out.append(f"{100 * c / max(samples, 1):5.1f}  {f}")
    out += ["", "total %  function"]
    for f, c in sorted(total.items(), key=lambda kv: -kv[1])[:n]:
        out.append(f"{100 * c / max(samples, 1):5.1f}  {f}")
    return "\n".join(out) + "\n"


def _watch_row(watch: E.ProcWatch | None) -> dict[str, Any]:
    if watch is None or watch.pid is None:
        return {"pooler_peak_rss_mb": None, "pooler_cpu_s": None}
    return {"pooler_peak_rss_mb": round(watch.peak_rss / 2**20, 1), "pooler_cpu_s": round(watch.cpu_seconds(), 2)}


# ---------------------------------------------------------------- scenarios
def scenario_burst(run: Run) -> None:
    s = run.sizes
    for target in run.targets:
        run.progress.start(f"burst {target} ({s.sessions} sessions)")
        why = target_absent_reason(target)
        if why:
            run.add(absent("burst", target, why))
            run.progress.step_done("absent")
            continue
        try:
            with service_for(run, target) as (svc, client):
                if target in DRIVER_TARGETS:
                    ok, why = _probe(run, target, svc)
                    if not ok:
                        run.add(absent("burst", target, why))
                        run.progress.step_done("absent")
                        continue
                assert run.cluster is not None
                run.cluster.wait_backends_gone()
                spec = dict(client, mode="burst", n=s.sessions, timeout=s.timeout, nitems=E.ITEMS)
                with Workers(spec, s.burst_procs) as w:
                    w.wait_ready()
                    watch = E.ProcWatch(svc.pid if svc else None)
                    pgcpu = E.PostgresCpu(run.cluster)
                    with profiled(run, svc, "burst", target) as prof, \
                            E.BackendSampler(run.cluster, watch) as sampler:
                        w.go()
                        res = merge(_drive(run, w, sampler, "burst", 5.0))
                    pg_cpu = pgcpu.seconds()
                completed = len(res["ttfr"])
                wall = max(res["end"]) if res["end"] else None
                failed = sum(res["failed"].values())
                row = {"scenario": "burst", "target": target, "sessions": s.sessions,
                       "load_procs": s.burst_procs, "completed": completed, "failed": failed,
                       "failed_by_sqlstate": dict(res["failed"]),
                       "sessions_per_s": round(completed / wall, 1) if wall else 0.0,
                       "wall_s": round(wall, 3) if wall else None,
                       **pct_ms(res["ttfr"]), "peak_backends": sampler.peak,
                       "backend_samples": sampler.samples, **_watch_row(watch),
                       "client_cpu_s": res["client_cpu_s"], "postgres_cpu_s": pg_cpu, **prof}
                run.add(row, res["ttfr"])
                run.progress.step_done(f"{completed} ok, {failed} failed, {row['sessions_per_s']} sess/s")
        except Exception as e:  # noqa: BLE001 - a target that breaks is reported, the run goes on
            run.add(absent("burst", target, f"error: {type(e).__name__}: {e}"[:300]))
            run.progress.step_done("error")


def scenario_steady(run: Run) -> None:
    s = run.sizes
    for target in run.targets:
        run.progress.start(f"steady {target} ({s.clients} clients, {s.duration}s)")
        why = target_absent_reason(target)
        if why:
            run.add(absent("steady", target, why))
            run.progress.step_done("absent")
            continue
        try:
            with service_for(run, target) as (svc, client):
                if target in DRIVER_TARGETS:
                    ok, why = _probe(run, target, svc)
                    if not ok:
                        run.add(absent("steady", target, why))
                        run.progress.step_done("absent")
                        continue
                spec = dict(client, mode="steady", n=s.clients, duration=s.duration, timeout=s.timeout,
                            nitems=E.ITEMS)
                with Workers(spec, s.steady_procs) as w:
                    info = w.wait_ready()
                    watch = E.ProcWatch(svc.pid if svc else None)
                    assert run.cluster is not None
                    pgcpu = E.PostgresCpu(run.cluster)
                    with profiled(run, svc, "steady", target) as prof, \
                            E.BackendSampler(run.cluster, watch, interval=0.05) as sampler:
                        w.go()
                        res = merge(_drive(run, w, sampler, "steady", s.duration))
                    pg_cpu = pgcpu.seconds()
                n = len(res["latencies"])
                el = res["elapsed"] or s.duration
                failed = sum(res["failed"].values()) + sum(res["open_failed"].values())
                row = {"scenario": "steady", "target": target, "clients": s.clients, "duration_s": s.duration,
                       "load_procs": s.steady_procs, "connected": sum(i.get("opened", 0) for i in info),
                       "completed": n, "failed": failed,
                       "failed_by_sqlstate": dict(res["failed"] + res["open_failed"]),
                       "tps": round(n / el, 1), **pct_ms(res["latencies"]), "peak_backends": sampler.peak,
                       **_watch_row(watch), "client_cpu_s": res["client_cpu_s"], "postgres_cpu_s": pg_cpu,
                       **prof}
                run.add(row, res["latencies"])
                run.progress.step_done(f"{row['tps']} tps")
        except Exception as e:  # noqa: BLE001
            run.add(absent("steady", target, f"error: {type(e).__name__}: {e}"[:300]))
            run.progress.step_done("error")
    if s.pgbench:
        scenario_pgbench(run)


_PGB_TPS = re.compile(r"^tps = ([\d.]+)", re.M)
_PGB_LAT = re.compile(r"^latency average = ([\d.]+) ms", re.M)
_PGB_CONN = re.compile(r"^(?:average )?(?:initial )?connection time = ([\d.]+) ms", re.M)
_PGB_TX = re.compile(r"^number of transactions actually processed: (\d+)", re.M)
_PGB_FAIL = re.compile(r"^number of failed transactions: (\d+)", re.M)


def scenario_pgbench(run: Run) -> None:
    """pgbench -S (select-only), with and without -C, through direct / pgbouncer / gateway-tcp."""
    s = run.sizes
    c = run.cluster
    assert c is not None
    targets = [t for t in run.targets if t in ("direct", "pgbouncer", "gateway-tcp")]
    if not targets:
        return
    if not _which("pgbench"):
        for t in targets:
            run.add(absent("pgbench-S", t, "pgbench not on PATH (apt-get install postgresql-client)"))
        return
    run.progress.start(f"pgbench -i -s {s.pgbench_scale}")
    c.pgbench_init(s.pgbench_scale)
    run.progress.step_done("initialised")
    clients = s.pgbench_clients
    for target in targets:
        for scen, extra in (("pgbench-S", []), ("pgbench-S-C", ["-C"]),
                            ("pgbench-S-extended", ["-M", "extended"]), ("pgbench-S-prepared", ["-M", "prepared"])):
            run.progress.start(f"{scen} {target}")
            why = target_absent_reason(target)
            if why is None and target == "pgbouncer" and scen == "pgbench-S-prepared":
                why = _pgbouncer_prepared_absent()
            if why:
                run.add(absent(scen, target, why))
                run.progress.step_done("absent")
                continue
            try:
                with service_for(run, target) as (svc, client):
                    kw = client["kwargs"]
                    cmd = ["pgbench", "-n", "-S", *extra, "-c", str(clients), "-j", "2", "-T",
                           str(s.pgbench_duration), "-h", kw["host"], "-p", str(kw["port"]), "-U", kw["user"],
                           kw["database"]]
                    envv = dict(os.environ, PGPASSWORD=kw["password"])
                    watch = E.ProcWatch(svc.pid if svc else None)
                    with E.BackendSampler(c, watch, interval=0.05) as sampler:
                        p = subprocess.Popen(cmd, env=envv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                             text=True)
                        t0 = time.monotonic()
                        while p.poll() is None:
                            el = time.monotonic() - t0
                            run.progress.update(f"{el:4.1f}s backends(peak)={sampler.peak}",
                                                min(0.99, el / max(1, s.pgbench_duration)))
                            time.sleep(0.25)
                        out, err = p.communicate()
                    m = _PGB_TPS.search(out)
                    if p.returncode != 0 or not m:
                        raise RuntimeError(f"pgbench exited {p.returncode}: {(err or out)[-300:]}")
                    lat = _PGB_LAT.search(out)
                    conn = _PGB_CONN.search(out)
                    tx = _PGB_TX.search(out)
                    fails = _PGB_FAIL.search(out)
                    row = {"scenario": scen, "target": target,
                           "command": " ".join(cmd[:cmd.index("-h")]),
                           "tps": float(m.group(1)), "completed": int(tx.group(1)) if tx else None,
                           "failed": int(fails.group(1)) if fails else 0,
                           "latency_avg_ms": float(lat.group(1)) if lat else None,
                           "connect_ms": float(conn.group(1)) if conn else None,
                           "peak_backends": sampler.peak, **_watch_row(watch)}
                    run.add(row)
                    run.progress.step_done(f"{row['tps']} tps")
            except Exception as e:  # noqa: BLE001
                run.add(absent(scen, target, f"error: {type(e).__name__}: {e}"[:300]))
                run.progress.step_done("error")


def _pgbouncer_prepared_absent() -> str | None:
    """Protocol-level prepared statements in transaction mode need PgBouncer >= 1.21
    (max_prepared_statements); older versions fail with 'prepared statement ... does not exist'."""
    try:
        out = subprocess.run([E.PGBOUNCER_BIN, "--version"], capture_output=True, text=True, timeout=10).stdout
        ver = tuple(int(x) for x in re.search(r"PgBouncer (\d+)\.(\d+)", out).groups())  # type: ignore[union-attr]
    except Exception:  # noqa: BLE001
        return "PgBouncer version unknown"
    if ver < (1, 21):
        return f"PgBouncer {ver[0]}.{ver[1]} has no max_prepared_statements (1.21+); compare with pgbench-S-extended"
    return None


def _which(name: str) -> bool:
    import shutil
    return shutil.which(name) is not None


@contextlib.contextmanager
def child_port(args: list[str], what: str) -> Iterator[int]:
    """Run ``python -m <args>`` (a bench helper that prints its port first); yield that port."""
    p = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                         text=True, cwd=str(E.REPO))
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        if not line.strip():
            raise RuntimeError(f"{what} did not start")
        yield int(line)
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def delay_proxy(target_port: int, delay: float) -> contextlib.AbstractContextManager[int]:
    return child_port(["bench.proxy", "--target", f"127.0.0.1:{target_port}", "--delay", str(delay)],
                      "delay proxy")


LATENCY_CASES = (
    # (row target, needs, description)
    ("direct", "direct", "asyncpg, TCP + SCRAM straight to Postgres"),
    ("pgbouncer", "pgbouncer", "asyncpg via PgBouncer, TCP + SCRAM"),
    ("gateway-tcp", "gateway-tcp", "asyncpg via pg_listen, TCP + SCRAM"),
    ("gateway-ws", "gateway-ws", "driver over WebSocket, SCRAM"),
    ("gateway-ws-pipelined", "gateway-ws", "driver over WebSocket, auth_type=password, pipelined startup"),
    ("gateway-http", "gateway-http", "driver over HTTP (POST /pg): hello request, then the query"),
    ("gateway-sql", "gateway-sql", "HTTP one-shot: POST /sql as Neon's neon() sends it (new TCP connection)"),
) + COLD_START_CASES


def scenario_latency(run: Run) -> None:
    s = run.sizes
    for name, needs, desc in LATENCY_CASES:
        if needs not in run.targets:
            continue
        run.progress.start(f"latency {name} (+{s.delay * 1000:.0f} ms each way)")
        why = target_absent_reason(needs)
        if why:
            run.add(absent("latency", name, why))
            run.progress.step_done("absent")
            continue
        try:
            gw: dict[str, Any] = {"auth_type": "password"} if name == "gateway-ws-pipelined" else {}
            with service_for(run, needs, **gw) as (svc, client):
                if needs in DRIVER_TARGETS:
                    ok, why = _probe(run, needs, svc)
                    if not ok:
                        run.add(absent("latency", name, why))
                        run.progress.step_done("absent")
                        continue
                    upstream = svc.port
                else:
                    upstream = client["kwargs"]["port"]
                # ws-relay-pgbouncer: client -> delay proxy -> WebSocket-to-TCP relay -> PgBouncer
                rl = relay(upstream) if name == "ws-relay-pgbouncer" else contextlib.nullcontext(upstream)
                with rl as upstream, delay_proxy(upstream, s.delay) as pport:
                    client = dict(client)
                    if name == "gateway-ws-token":
                        client = client_for(needs, svc, pport)
                        client["dsn"] = token_dsn(pport)
                    elif name == "ws-relay-pgbouncer":
                        client = {"client": "driver", "dsn": relay_dsn(pport),
                                  "connect_kwargs": dict(DRIVER_CONNECT_KWARGS)}
                    elif client["client"] == "asyncpg":
                        client["kwargs"] = dict(client["kwargs"], port=pport)
                    else:
                        client = client_for(needs, svc, pport)
                        if name == "gateway-ws-pipelined":
                            client["connect_kwargs"].update(pipelined_connect_kwargs())
                    spec = dict(client, mode="latency", n=s.latency_samples, timeout=s.timeout, nitems=E.ITEMS)
                    with Workers(spec, 1) as w:
                        w.wait_ready()
                        w.go(0.05)
                        res = merge(_drive(run, w, None, "latency", s.latency_samples * 0.3))
            rtt_ms = 2 * s.delay * 1000
            p = pct_ms(res["ttfr"])
            row = {"scenario": "latency", "target": name, "description": desc, "one_way_delay_ms": s.delay * 1000,
                   "completed": len(res["ttfr"]), "failed": sum(res["failed"].values()),
                   "failed_by_sqlstate": dict(res["failed"]), **p,
                   "round_trips_p50": round(p["p50_ms"] / rtt_ms, 2) if p["p50_ms"] else None}
            run.add(row, res["ttfr"])
            run.progress.step_done(f"p50 {p['p50_ms']} ms")
        except Exception as e:  # noqa: BLE001
            run.add(absent("latency", name, f"error: {type(e).__name__}: {e}"[:300]))
            run.progress.step_done("error")


def pipelined_connect_kwargs() -> dict[str, Any]:
    """How to ask our driver for the pipelined (password) startup, if it has a knob for it."""
    import inspect
    try:
        import driver
        params = inspect.signature(driver.connect).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return {}
    for name, val in (("pipeline_connect", "password"), ("pipelineConnect", "password")):
        if name in params:
            return {name: val}
    return {}


HOLD_TARGETS = ("gateway-ws", "gateway-tcp", "pgbouncer")


def scenario_hold(run: Run) -> None:
    s = run.sizes
    for target in HOLD_TARGETS:
        if target not in run.targets:
            continue
        run.progress.start(f"hold {target} ({s.hold} idle sessions, pool {s.hold_pool})")
        why = target_absent_reason(target)
        if why:
            run.add(absent("hold", target, why))
            run.progress.step_done("absent")
            continue
        try:
            gw = {"pool_size": s.hold_pool, "max_client_conn": s.hold + 1000}
            cm = service_for(run, target, **gw) if target.startswith("gateway") else service_for(run, target)
            with cm as (svc, client):
                if target in DRIVER_TARGETS:
                    ok, why = _probe(run, target, svc)
                    if not ok:
                        run.add(absent("hold", target, why))
                        run.progress.step_done("absent")
                        continue
                watch = E.ProcWatch(svc.pid)
                rss0 = watch.sample()
                spec = dict(client, mode="hold", n=s.hold, timeout=s.timeout, nitems=E.ITEMS,
                            open_concurrency=200)
                with Workers(spec, s.hold_procs) as w:
                    t0 = time.monotonic()
                    info = w.wait_ready(timeout=1800)
                    open_s = time.monotonic() - t0
                    opened = sum(i.get("opened", 0) for i in info)
                    open_failed: dict[str, int] = {}
                    for i in info:
                        for k, v in i.get("open_failed", {}).items():
                            open_failed[k] = open_failed.get(k, 0) + v
                    time.sleep(0.5)  # let the pooler settle its buffers
                    rss1 = watch.sample()
                    assert run.cluster is not None
                    with E.BackendSampler(run.cluster, watch) as sampler:
                        w.go()
                        res = merge(_drive(run, w, sampler, "hold: all run one query", 5.0))
                completed = len(res["ttfr"])
                wall = max(res["end"]) if res["end"] else None
                failed_by = dict(res["failed"])
                for k, v in open_failed.items():
                    failed_by["open:" + k] = v
                row = {"scenario": "hold", "target": target, "sessions": s.hold, "pool_size": s.hold_pool,
                       "opened": opened, "open_s": round(open_s, 2), "completed": completed,
                       "failed": sum(failed_by.values()), "failed_by_sqlstate": failed_by,
                       "rss_idle_before_mb": round(rss0 / 2**20, 1), "rss_held_mb": round(rss1 / 2**20, 1),
                       "kb_per_session": round((rss1 - rss0) / 1024 / opened, 1) if opened else None,
                       "sessions_per_s": round(completed / wall, 1) if wall else 0.0,
                       **pct_ms(res["ttfr"]), "peak_backends": sampler.peak, **_watch_row(watch)}
                run.add(row, res["ttfr"])
                run.progress.step_done(f"{row['kb_per_session']} KB/session, {completed} ok")
        except Exception as e:  # noqa: BLE001
            run.add(absent("hold", target, f"error: {type(e).__name__}: {e}"[:300]))
            run.progress.step_done("error")


def scenario_micro(run: Run) -> None:
    run.progress.start("micro (pytest-benchmark bench/test_micro.py)")
    js = run.out / "micro_benchmark.json"
    cmd = [sys.executable, "-m", "pytest", str(E.REPO / "bench" / "test_micro.py"), "-q", "-p", "no:cacheprovider",
           "--rootdir", str(E.REPO / "bench"), "-o", "addopts=", "--benchmark-json", str(js),
           "--benchmark-columns=ops,mean,rounds"]
    if run.sizes.micro_quick:
        cmd += ["--benchmark-min-rounds=1", "--benchmark-max-time=0.02", "--benchmark-warmup=off",
                "--benchmark-min-time=0.0001"]
    run.out.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=str(E.REPO), timeout=900)
    if not js.exists():
        run.add(absent("micro", "all", f"pytest-benchmark failed ({r.returncode}): {r.stdout[-300:]}"))
        run.progress.step_done("error")
        return
    data = json.loads(js.read_text())
    for b in data.get("benchmarks", []):
        extra = b.get("extra_info", {})
        st = b["stats"]
        run.add({"scenario": "micro", "target": extra.get("library", b.get("group") or "?"),
                 "case": b["name"].removeprefix("test_"), "group": b.get("group"), "ops_per_s": round(st["ops"], 1),
                 "mean_us": round(st["mean"] * 1e6, 3), "rounds": st["rounds"],
                 "completed": st["rounds"], "failed": 0})
    run.progress.step_done(f"{len(data.get('benchmarks', []))} cases (exit {r.returncode})")


def scenario_driver(run: Run) -> None:
    from . import driver_bench
    run.progress.start("driver (decode 10,000 rows; sequential fetchval)")
    assert run.cluster is not None or run.dsn
    dsn = run.dsn or run.cluster.pg.dsn(E.BENCH_USER, E.BENCH_PASSWORD, E.BENCH_DB)  # type: ignore[union-attr]
    rows = driver_bench.run_subprocess(dsn, quick=run.sizes.driver_quick)
    for r in rows:
        run.add(r)
    run.progress.step_done("done")


RUNNERS = {"burst": scenario_burst, "steady": scenario_steady, "latency": scenario_latency,
           "hold": scenario_hold, "micro": scenario_micro, "driver": scenario_driver}


def machine_info() -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "when": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu, "cores": psutil.cpu_count(), "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "os": platform.platform(), "python": platform.python_version(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        info["pgbouncer"] = subprocess.run([E.PGBOUNCER_BIN, "--version"], capture_output=True,
                                           text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        info["pgbouncer"] = "absent"
    try:
        import asyncpg
        info["asyncpg"] = asyncpg.__version__
    except ImportError:
        pass
    try:
        r = subprocess.run(["git", "-C", str(E.REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        info["commit"] = r.stdout.strip()
    except OSError:
        pass
    return info


def expected_steps(scenarios: list[str], targets: tuple[str, ...], sizes: Sizes) -> int:
    n = 0
    for sc in scenarios:
        if sc in ("burst", "steady"):
            n += len(targets)
        if sc == "steady" and sizes.pgbench:
            n += 1 + 2 * len([t for t in targets if t in ("direct", "pgbouncer", "gateway-tcp")])
        if sc == "latency":
            n += len([c for c in LATENCY_CASES if c[1] in targets])
        if sc == "hold":
            n += len([t for t in HOLD_TARGETS if t in targets])
        if sc in ("micro", "driver"):
            n += 1
    return n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                    help="any of " + ", ".join(SCENARIOS) + " or all (default: all)")
    ap.add_argument("--quick", action="store_true", help="small sizes; the whole run finishes in < 2 minutes")
    ap.add_argument("--out", default=str(E.REPO / "bench" / "results" / "latest"), help="output folder")
    ap.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of " + ",".join(TARGETS))
    ap.add_argument("--dsn", help="driver scenario only: use this server instead of a private cluster")
    ap.add_argument("--sessions", type=int, help="burst: sessions launched at once (default 1000)")
    ap.add_argument("--procs", type=int, help="load-generator processes for burst/steady/hold (default 2)")
    ap.add_argument("--clients", type=int, help="steady: concurrent clients (default 50)")
    ap.add_argument("--duration", type=float, help="steady: seconds (default 10)")
    ap.add_argument("--pgbench-duration", type=int, help="pgbench -T (default 10)")
    ap.add_argument("--pgbench-clients", type=int, help="pgbench -c (default 50)")
    ap.add_argument("--pgbench-scale", type=int, help="pgbench -i -s (default 10)")
    ap.add_argument("--no-pgbench", action="store_true", help="steady: skip the pgbench rows")
    ap.add_argument("--delay", type=float, help="latency: one-way delay in ms (default 25)")
    ap.add_argument("--samples", type=int, help="latency: sessions per target (default 20)")
    ap.add_argument("--hold", type=int, help="hold: idle sessions (default 10000)")
    ap.add_argument("--timeout", type=float, help="per-session timeout in seconds")
    ap.add_argument("--profile", action="store_true", help="burst/steady: py-spy the gateway; writes "
                    "profile-<scenario>-<target>.txt (collapsed stacks) and .top.txt summaries to --out")
    ap.add_argument("--scram-iterations", type=int, help="PBKDF2 iterations of the bench role's SCRAM verifier "
                    "(default 4096 = Postgres'); only the client-side cost of a login depends on it")
    a = ap.parse_args(argv)

    sizes = Sizes.quick() if a.quick else Sizes()
    for attr, val in (("sessions", a.sessions), ("clients", a.clients), ("duration", a.duration),
                      ("pgbench_duration", a.pgbench_duration), ("pgbench_scale", a.pgbench_scale),
                      ("pgbench_clients", a.pgbench_clients), ("latency_samples", a.samples),
                      ("hold", a.hold), ("timeout", a.timeout),
                      ("scram_iterations", a.scram_iterations)):
        if val is not None:
            setattr(sizes, attr, val)
    if a.delay is not None:
        sizes.delay = a.delay / 1000.0
    if a.procs is not None:
        sizes.burst_procs = sizes.steady_procs = sizes.hold_procs = a.procs
    if a.no_pgbench:
        sizes.pgbench = False
    sizes.profile = a.profile
    unknown = [x for x in a.scenarios if x not in SCENARIOS and x != "all"]
    if unknown:
        ap.error(f"unknown scenario(s) {unknown}; choose from {', '.join(SCENARIOS)} or all")
    scenarios = list(SCENARIOS) if not a.scenarios or "all" in a.scenarios else list(dict.fromkeys(a.scenarios))
    targets = tuple(t.strip() for t in a.targets.split(",") if t.strip())
    bad = [t for t in targets if t not in TARGETS]
    if bad:
        ap.error(f"unknown targets {bad}; choose from {TARGETS}")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)

    run = Run(sizes=sizes, targets=targets, out=out,
              progress=Progress(expected_steps(scenarios, targets, sizes)), dsn=a.dsn)
    meta = machine_info()
    meta.update({"argv": ["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])],
                 "sizes": sizes.__dict__, "targets": targets, "scenarios": scenarios})
    needs_cluster = any(sc != "micro" and not (sc == "driver" and a.dsn) for sc in scenarios)
    t0 = time.monotonic()
    try:
        if needs_cluster:
            run.progress.start("starting private PostgreSQL (max_connections=100)")
            run.cluster = E.BenchCluster(scram_iterations=sizes.scram_iterations)
            meta["postgres"] = run.cluster.pg.psql("SHOW server_version", db="postgres")
            meta["max_connections"] = 100
            run.progress.update("ready", force=True)
            if run.progress.tty:
                sys.stderr.write("\n")
        for sc in scenarios:
            RUNNERS[sc](run)
    finally:
        if run.cluster is not None:
            run.cluster.close()
        meta["elapsed_s"] = round(time.monotonic() - t0, 1)
        meta["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        write_json(out, run.rows, run.cdfs, meta)
        try:
            pngs = charts(out, run.rows, run.cdfs)
        except Exception as e:  # noqa: BLE001
            pngs = []
            print(f"charts failed: {e}", file=sys.stderr)
        (out / "results.md").write_text(markdown_table(run.rows) + "\n")
    print()
    print(table(run.rows))
    print()
    print(f"machine: {meta['cpu']}, {meta['cores']} cores, {meta['ram_gb']} GB; python {meta['python']}; "
          f"elapsed {meta['elapsed_s']} s; load average at start {meta['loadavg_at_start']}, "
          f"at end {meta['loadavg_at_end']}")
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}" + "".join(f", {p.name}" for p in pngs))
    return 0
