"""The time-bounded fuzzing campaign: ``python -m tests.fuzz --seconds 600 [--target NAME]``.

Starts a private cluster (tests/pgcluster.py) and a real gateway in a child
process (tests/gatewayproc.py, settings ``targets.GATEWAY_SETTINGS``), then
for ``--seconds`` runs at the same time:

* every network target (tests/fuzz/targets.py), ``--workers`` connections each,
  mutating a corpus seeded from captured client traffic and grown with inputs
  whose reply had a new shape;
* the in-process atheris run over the sans-I/O code (tests/fuzz/inproc.py),
  restarted after a crash with the crashing input left out;
* a health probe: an asyncpg client on pg_listen running ``select 1`` every
  50 ms, and ``GET /healthz`` every second;
* a monitor: gateway alive, new ``Traceback`` in its log, RSS.

It fails on a gateway crash, a traceback in the gateway log, an in-process
crash, a hang (a target connection not closed within 2 s of EOF, a probe
query over 2 s), a probe error, or RSS growth over ``--rss-limit-mb``.  Every
input that failed is saved (after a serial replay to find which of the recent
inputs reproduces a traceback) under ``<dir>/<target>/``: a fresh temporary
directory, printed in the report -- or, with ``--save-regressions``,
tests/fuzz/regressions/ in the checkout, whose inputs
tests/fuzz/test_regressions.py replays.  Tests never write into the checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.fuzz.targets import GATEWAY_SETTINGS, INPROC_SUBTARGETS, PASSWORD, REGRESSIONS, TARGETS, USER, Target, send_input
from tests.fuzz.known import known_hang, known_reason
from tests.gatewayproc import GatewayProcess
from tests.pgcluster import PgCluster

INPROC = "inproc"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Record:
    target: str
    data: bytes
    start: float
    end: float | None = None
    port: int = 0


@dataclass
class Failure:
    kind: str                 # crash | traceback | hang | probe | rss | inproc
    target: str
    detail: str
    inputs: list[tuple[str, bytes]] = field(default_factory=list)   # (target, input)
    saved: list[str] = field(default_factory=list)
    confirmed: bool = True    # the inputs reproduce the failure on their own


@dataclass
class Report:
    seconds: float = 0.0
    inputs: dict[str, int] = field(default_factory=dict)
    corpus: dict[str, int] = field(default_factory=dict)
    inproc_inputs: dict[str, int] = field(default_factory=dict)
    inproc_runs: int = 0
    probe_latencies: list[float] = field(default_factory=list)
    probe_errors: int = 0
    healthz_fail: int = 0
    rss_before: int = 0
    rss_peak: int = 0
    rss_after: int = 0
    tracebacks: int = 0
    failures: list[Failure] = field(default_factory=list)
    known: list[Failure] = field(default_factory=list)
    slow: dict[str, int] = field(default_factory=dict)     # hangs that did not happen again when replayed
    load: tuple[float, float] = (0.0, 0.0)                  # 1-minute load average at the start, at the end
    load_samples: list[float] = field(default_factory=list)  # 1-minute load average, sampled by the monitor
    saved_to: str = ""                                      # directory the failing inputs were written to

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, kind: str) -> int:
        return sum(1 for f in self.failures if f.kind == kind)

    def text(self) -> str:
        mb = 1 << 20
        lines = [f"campaign: {self.seconds:.0f} s"]
        ls = self.load_samples
        during = f", mean {sum(ls) / len(ls):.1f} and max {max(ls):.1f} during the run" if ls else ""
        lines.append(f"  load average {self.load[0]:.1f} at the start, {self.load[1]:.1f} at the end{during} "
                     f"({os.cpu_count()} cores)")
        lines.append(f"  {'target':12s} {'inputs':>8s} {'corpus':>7s} {'hangs':>6s} {'slow':>5s}")
        for name, n in self.inputs.items():
            hangs = sum(1 for f in self.failures if f.kind == "hang" and f.target == name)
            lines.append(f"  {name:12s} {n:8d} {self.corpus.get(name, 0):7d} {hangs:6d} {self.slow.get(name, 0):5d}")
        for name in ("probe", "healthz"):
            if self.slow.get(name):
                lines.append(f"  {name:12s} {'':8s} {'':7s} {'':6s} {self.slow[name]:5d}")
        for name, n in self.inproc_inputs.items():
            lines.append(f"  {INPROC + ':' + name:12s} {n:8d}")
        lat = sorted(self.probe_latencies)
        if lat:
            def q(p: float) -> float:
                return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000
            lines.append(f"  probe: {len(lat)} x select 1, p50 {q(0.5):.1f} ms, p99 {q(0.99):.1f} ms, "
                         f"max {lat[-1] * 1000:.1f} ms, errors {self.probe_errors}, /healthz failures {self.healthz_fail}")
        lines.append(f"  RSS before {self.rss_before / mb:.1f} MB, peak {self.rss_peak / mb:.1f} MB, "
                     f"after {self.rss_after / mb:.1f} MB")
        lines.append(f"  crashes {self.count('crash') + self.count('inproc')} (gateway {self.count('crash')}, "
                     f"in-process {self.count('inproc')}), tracebacks {self.tracebacks} "
                     f"({self.count('traceback')} distinct unknown, {len(self.known)} distinct known), "
                     f"hangs {self.count('hang') + self.count('probe-hang')}, other {self.count('probe') + self.count('rss')}")
        for f in self.failures:
            lines.append(f"  FAIL {f.kind} [{f.target}] {f.detail[:300]}")
            for s in f.saved:
                lines.append(f"       saved {s}")
        for f in self.known:
            lines.append(f"  known {f.kind} [{f.target}] {f.detail[:300]}")
            for s in f.saved:
                lines.append(f"       saved {s}")
        if any(f.saved for f in self.failures + self.known):
            lines.append(f"  failing inputs saved under {self.saved_to}")
        lines.append("RESULT: " + ("PASS" if self.ok else "FAIL"))
        return "\n".join(lines)


_PEER = re.compile(r"127\.0\.0\.1:(\d+)")
_FRAME = re.compile(r'File "([^"]+)", line (\d+), in (\S+)')


def tb_signature(tb: str) -> str:
    """Exception type + the innermost frame in the project's code: one per distinct bug."""
    lines = [ln for ln in tb.splitlines() if ln.strip()]
    exc = next((ln.split(":")[0] for ln in reversed(lines) if not ln.startswith((" ", "\t"))
                and re.match(r"^[\w.]+(Error|Exception|error|Exit|Interrupt)\b", ln)), "?")
    frames = [mo for mo in _FRAME.finditer(tb) if str(ROOT) in mo.group(1) or "/gateway/" in mo.group(1)
              or "/driver/" in mo.group(1)]
    where = f"{Path(frames[-1].group(1)).name}:{frames[-1].group(2)} {frames[-1].group(3)}" if frames else "?"
    return f"{exc} at {where}"


def _hint(tb: str) -> tuple[str, ...]:
    """The targets most likely behind a traceback, from the code it went through."""
    if "neon_sql" in tb:
        return ("sql", "http")
    if "Session http" in tb or "http_exec" in tb or "http_protocol" in tb:
        return ("pg", "http")
    if "gateway/http.py" in tb:
        return ("http", "websocket")
    return ("framing", "startup", "websocket")


def mark_known(paths: list[str], reason: str) -> None:
    kf = REGRESSIONS / "known.json"
    known = json.loads(kf.read_text()) if kf.exists() else {}
    for p in paths:
        known[str(Path(p).relative_to(REGRESSIONS.relative_to(ROOT)))] = reason
    kf.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")


def save_regression(target: str, data: bytes, root: Path = REGRESSIONS) -> str:
    """Write a failing input to <root>/<target>/ (gzipped when over 16 KB); returns
    its path (relative to the checkout when it is in it)."""
    d = root / target
    d.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    if len(data) > 16384:
        p = d / f"{name}.bin.gz"
        p.write_bytes(gzip.compress(data, mtime=0))
    else:
        p = d / f"{name}.bin"
        p.write_bytes(data)
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


class Campaign:
    def __init__(self, gw: GatewayProcess, *, seconds: float, targets: list[str], workers: int = 2,
                 inproc: bool = True, rss_limit_mb: float = 64.0, seed: int | None = None,
                 save_dir: Path | None = None, log: Any = None) -> None:
        self.gw = gw
        self.seconds = seconds
        self.targets = [TARGETS[t] for t in targets]
        self.workers = workers
        self.inproc = inproc
        self.rss_limit = rss_limit_mb * (1 << 20)
        self.rng_seed = seed if seed is not None else random.randrange(1 << 30)
        #: where failing inputs are written: REGRESSIONS (the checkout) only when asked;
        #: None: a temporary directory made when there is something to write
        self.save_dir = save_dir
        self.log = log or (lambda s: print(s, file=sys.stderr, flush=True))
        self.report = Report()
        self.recent: deque[Record] = deque(maxlen=400)
        self.suspects: list[tuple[str, str, list[Record]]] = []
        self.signatures: dict[str, int] = {}
        self.known_hangs: dict[str, int] = {}
        self.stop = asyncio.Event()

    # -- the parts ------------------------------------------------------------
    async def _worker(self, t: Target, corpus: list[bytes], sigs: set[bytes], rng: random.Random, end: float) -> None:
        port = self.gw.pg_port if t.port == "pg" else self.gw.http_port
        assert port is not None
        while time.monotonic() < end and not self.stop.is_set():
            base = rng.choice(corpus)
            data = base if rng.random() < 0.03 else t.mutate(base, corpus, rng)
            rec = Record(t.name, data, time.monotonic())
            self.recent.append(rec)
            out = await send_input(self.gw.host, port, t.wrap(data), on_connect=lambda p: setattr(rec, "port", p))
            rec.end = time.monotonic()
            self.report.inputs[t.name] += 1
            if out.hung:
                if not self.gw.alive():
                    return  # the monitor reports the crash
                reason = known_hang(t.name, data)
                if reason is None:
                    # replayed once more on its own: on a loaded machine a slow moment is not a hang
                    again = await send_input(self.gw.host, port, t.wrap(data))
                    if again.hung is None:
                        self.report.slow[t.name] = self.report.slow.get(t.name, 0) + 1
                        self.log(f"slow [{t.name}] {out.hung}, not when replayed ({again.seconds:.1f} s): {data[:60]!r}")
                        continue
                pools = await self._pool_metrics()  # a server or a waiter left behind shows here
                self.log(f"hang [{t.name}] {out.hung}: {data[:80]!r}" + (f" -- KNOWN: {reason}" if reason else "")
                         + f"; pool: {pools}")
                if reason is None:
                    self.report.failures.append(Failure("hang", t.name, f"{out.hung}; pool: {pools}",
                                                        [(t.name, data)]))
                elif self.known_hangs.get(reason, 0) < 3:  # a few examples are enough
                    self.known_hangs[reason] = self.known_hangs.get(reason, 0) + 1
                    self.report.known.append(Failure("hang", t.name, f"{out.hung} -- KNOWN: {reason}",
                                                     [(t.name, data)], confirmed=False))
            elif out.signature not in sigs and len(corpus) < 2000:
                sigs.add(out.signature)
                corpus.append(data)

    async def _target(self, t: Target, end: float) -> None:
        corpus = t.seeds()
        assert corpus, f"no seeds for target {t.name} (run python -m tests.fuzz.capture)"
        sigs: set[bytes] = set()
        rng = random.Random(f"{self.rng_seed}-{t.name}")
        await asyncio.gather(*(self._worker(t, corpus, sigs, random.Random(rng.random()), end)
                               for _ in range(self.workers)))
        self.report.corpus[t.name] = len(corpus)

    async def _probe(self, end: float) -> None:
        import asyncpg
        dsn = self.gw.pg_dsn(USER, PASSWORD)
        conn = None
        next_health = 0.0
        while time.monotonic() < end and not self.stop.is_set():
            t0 = time.monotonic()
            step = "connect"
            try:
                if conn is None:
                    conn = await asyncio.wait_for(asyncpg.connect(dsn), 5)
                    t0 = time.monotonic()
                step = "select 1"
                await asyncio.wait_for(conn.fetchval("select 1"), 5)
                dt = time.monotonic() - t0
                self.report.probe_latencies.append(dt)
                if dt > 2.0:
                    # as for the targets: a stall that does not happen again at once is
                    # counted as slow (on a loaded machine it can be the machine's)
                    t1 = time.monotonic()
                    await asyncio.wait_for(conn.fetchval("select 1"), 5)
                    again = time.monotonic() - t1
                    if again > 2.0:
                        self.report.failures.append(Failure("probe-hang", "probe",
                                                            f"select 1 took {dt:.2f} s, then {again:.2f} s"))
                    else:
                        self.report.slow["probe"] = self.report.slow.get("probe", 0) + 1
                        self.log(f"slow [probe] select 1 took {dt:.2f} s, then {again * 1000:.0f} ms")
            except (Exception, asyncio.TimeoutError) as e:
                if not self.gw.alive():
                    return
                self.report.probe_errors += 1
                pools = await self._pool_metrics()
                # a query that never came back: what every backend does (state, wait, last statement)
                seen = f"; backends: {await self._backends()}" if isinstance(e, asyncio.TimeoutError) else ""
                self.report.failures.append(Failure("probe", "probe", f"{step} failed: {e!r}; pool: {pools}{seen}"))
                if conn is not None:
                    conn.terminate()
                conn = None
            if time.monotonic() >= next_health:
                next_health = time.monotonic() + 1.0
                if not await self._healthz() and not await self._healthz_again():
                    self.report.healthz_fail += 1
                    self.report.failures.append(Failure("probe", "healthz", "GET /healthz did not answer 200 in 2 s"))
            await asyncio.sleep(0.05)
        if conn is not None:
            await conn.close()

    async def _backends(self) -> str:
        """What each client backend does (state, wait, last statement): where a probe query stalled
        (a server idle in ``ClientRead`` never got it; docs/fuzzing.md, "probe stall")."""
        pg = self.gw.pg
        sql = ("select pid, state, wait_event, left(regexp_replace(query, '\\s+', ' ', 'g'), 40), "
               "round(extract(epoch from now() - state_change)::numeric, 1) "
               "from pg_stat_activity where backend_type = 'client backend' and pid <> pg_backend_pid()")
        try:
            out = await asyncio.to_thread(pg.psql, sql, check=False)
        except Exception as e:  # the evidence is best effort
            return repr(e)
        return out.replace("\n", " / ")

    async def _pool_metrics(self) -> str:
        """The pool's list lengths from /metrics (why a probe had to wait)."""
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(self.gw.host, self.gw.http_port), 2)
            w.write(b"GET /metrics HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            data = (await asyncio.wait_for(r.read(), 2)).decode(errors="replace")
            w.close()
        except (OSError, asyncio.TimeoutError) as e:
            return f"/metrics failed: {e!r}"
        keep = [ln for ln in data.splitlines() if re.match(r"wirepool_\w*(cl|sv)_\w+\{", ln)]
        return ", ".join(ln.split("{")[0].replace("wirepool_", "") + "=" + ln.rsplit(" ", 1)[-1] for ln in keep)

    async def _healthz_again(self) -> bool:
        """A /healthz that did not answer in 2 s, asked once more: slow if it answers now."""
        if await self._healthz():
            self.report.slow["healthz"] = self.report.slow.get("healthz", 0) + 1
            self.log("slow [healthz] no answer within 2 s, answered when asked again")
            return True
        return False

    async def _healthz(self) -> bool:
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(self.gw.host, self.gw.http_port), 2)
            w.write(b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
            data = await asyncio.wait_for(r.read(), 2)
            w.close()
            return data.startswith(b"HTTP/1.1 200")
        except (OSError, asyncio.TimeoutError):
            return False

    async def _monitor(self, end: float) -> None:
        offset = self.gw.log_size()
        last = time.monotonic()
        while not self.stop.is_set():
            await asyncio.sleep(0.5)
            now = time.monotonic()
            self.report.load_samples.append(os.getloadavg()[0])
            try:
                self.report.rss_peak = max(self.report.rss_peak, self.gw.rss())
            except Exception:
                pass
            tbs, offset = self.gw.read_tracebacks(offset)
            for tb in tbs:
                self.report.tracebacks += 1
                sig = tb_signature(tb)
                if sig in self.signatures:
                    self.signatures[sig] += 1
                    continue
                self.signatures[sig] = 1
                window = [r for r in self.recent if r.end is None or r.end >= last - 1.0]
                self.suspects.append((sig, tb, window))
                self.log(f"new traceback in the gateway log ({len(window)} suspect inputs):\n{tb}")
            if not self.gw.alive():
                window = [r for r in self.recent if r.end is None or r.end >= last - 2.0]
                self.report.failures.append(Failure(
                    "crash", "gateway", f"gateway exited with {self.gw.proc.returncode}:\n{self.gw.log_tail(20)}",
                    [(r.target, r.data) for r in window]))
                self.stop.set()
                return
            last = now
            if now >= end:
                return

    async def _inproc(self, end: float) -> None:
        work = Path(tempfile.mkdtemp(prefix="wp-inproc-"))
        known = REGRESSIONS / INPROC
        totals: dict[str, int] = {}
        known_counts: dict[str, int] = {}
        known_files: dict[str, str] = {}
        try:
            while not self.stop.is_set():
                left = int(end - time.monotonic())
                if left < 2:
                    break
                self.report.inproc_runs += 1
                env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tests.fuzz.inproc", "--seconds", str(left), "--workdir", str(work),
                    "--skip", str(known), "--skip", str(work / "artifacts"), f"-seed={self.rng_seed}",
                    cwd=str(ROOT), env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
                assert proc.stderr is not None
                err = (await proc.stderr.read()).decode(errors="replace")
                await proc.wait()
                counts_file = work / "counts.json"
                if counts_file.exists():
                    stats = json.loads(counts_file.read_text())
                    for k, v in stats["counts"].items():
                        totals[k] = totals.get(k, 0) + v
                    for reason, n in stats["known"].items():
                        known_counts[reason] = known_counts.get(reason, 0) + n
                    known_files.update(stats["known_inputs"])
                    counts_file.unlink()
                arts = sorted((work / "artifacts").glob("*")) if (work / "artifacts").is_dir() else []
                new = [a for a in arts if not a.name.startswith("done-")]
                for a in new:
                    data = a.read_bytes()
                    detail = _exception_of(err)
                    f = Failure("inproc", _sub_of(data), f"{a.name.split('-')[0]}: {detail}", [(INPROC, data)])
                    self.report.failures.append(f)
                    self.log(f"in-process {f.detail}")
                    a.rename(a.with_name("done-" + a.name))
                if proc.returncode not in (0, None) and not new:
                    self.report.failures.append(Failure("inproc", "?", f"atheris exited {proc.returncode}: "
                                                        f"{err[-2000:]}"))
                    break
                if proc.returncode == 0:
                    break
        finally:
            self.report.inproc_inputs = totals
            for reason, n in known_counts.items():
                inputs = [(INPROC, (work / "known" / f).read_bytes()) for f, r in known_files.items()
                          if r == reason and (work / "known" / f).exists()]
                self.report.known.append(Failure("inproc", _sub_of(inputs[0][1]) if inputs else "?",
                                                 f"x{n} KNOWN: {reason}", inputs[:1]))
            shutil.rmtree(work, ignore_errors=True)

    # -- triage ----------------------------------------------------------------
    async def _confirm_known_hangs(self) -> None:
        for f in self.report.known:
            if f.kind == "hang":
                t = TARGETS[f.target]
                port = self.gw.pg_port if t.port == "pg" else self.gw.http_port
                assert port is not None
                out = await send_input(self.gw.host, port, t.wrap(f.inputs[0][1]))
                f.confirmed = out.hung is not None

    async def _triage(self, budget: float = 60.0) -> None:
        """Which input caused each distinct traceback?  The one whose connection
        the traceback names (the gateway logs the peer's port); else the first of
        the suspects (newest first, at most 15) that reproduces it replayed alone."""
        deadline = time.monotonic() + budget
        for sig, tb, window in self.suspects:
            ports = {int(p) for p in _PEER.findall(tb)}
            culprits = [r for r in window if r.port in ports]
            how = "its connection is named in the traceback"
            if not culprits:
                how = "reproduced alone"
                hint = _hint(tb)
                order = sorted(reversed(window), key=lambda r: r.target not in hint)
                for rec in order[:15]:
                    if time.monotonic() > deadline:
                        break
                    t = TARGETS[rec.target]
                    port = self.gw.pg_port if t.port == "pg" else self.gw.http_port
                    assert port is not None
                    off = self.gw.log_size()
                    await send_input(self.gw.host, port, t.wrap(rec.data))
                    await asyncio.sleep(0.2)
                    if any(tb_signature(x) == sig for x in self.gw.tracebacks(off)):
                        culprits = [rec]
                        break
            if not culprits:
                culprits = window[-5:]
                how = f"not reproduced alone; kept the last {len(culprits)} inputs"
            reason = known_reason(tb)
            f = Failure("traceback", culprits[0].target if culprits else "?",
                        f"x{self.signatures.get(sig, 1)} {sig} ({how})" + (f" -- KNOWN: {reason}" if reason else ""),
                        [(r.target, r.data) for r in culprits], confirmed=not how.startswith("not"))
            (self.report.known if reason else self.report.failures).append(f)

    # -- the whole run ---------------------------------------------------------
    async def run(self) -> Report:
        rep = self.report
        rep.inputs = {t.name: 0 for t in self.targets}
        # warm up: one probe round trip, so "before" includes a pooled server
        import asyncpg
        c = await asyncpg.connect(self.gw.pg_dsn(USER, PASSWORD))
        await c.fetchval("select 1")
        await c.close()
        rep.rss_before = rep.rss_peak = self.gw.rss()
        load0 = os.getloadavg()[0]
        t0 = time.monotonic()
        end = t0 + self.seconds
        parts = [self._monitor(end), self._probe(end)] + [self._target(t, end) for t in self.targets]
        if self.inproc:
            parts.append(self._inproc(end))
        await asyncio.gather(*parts)
        self.stop.set()
        rep.seconds = time.monotonic() - t0
        rep.load = (load0, os.getloadavg()[0])
        if self.gw.alive():
            await self._triage()
            await self._confirm_known_hangs()
            await asyncio.sleep(1.0)  # let closed connections be released
            rep.rss_after = self.gw.rss()
            rep.rss_peak = max(rep.rss_peak, rep.rss_after)
            if rep.rss_after - rep.rss_before > self.rss_limit:
                rep.failures.append(Failure("rss", "gateway",
                                            f"RSS grew by {(rep.rss_after - rep.rss_before) / (1 << 20):.1f} MB "
                                            f"(limit {self.rss_limit / (1 << 20):.0f} MB)"))
        if rep.failures or rep.known:
            if self.save_dir is None:  # not the checkout: tests must leave no files in it
                self.save_dir = Path(tempfile.mkdtemp(prefix="wp-fuzz-failures-"))
            rep.saved_to = str(self.save_dir)
            in_repo = self.save_dir.resolve() == REGRESSIONS.resolve()
            kf = REGRESSIONS / "known.json"
            represented = set(json.loads(kf.read_text()).values()) if kf.exists() else set()
            for f in rep.failures + rep.known:
                reason = f.detail.split("KNOWN: ", 1)[-1] if f in rep.known else None
                if reason is not None and (reason in represented or not f.confirmed):
                    continue  # a known failure already has its regression inputs
                if reason is not None:
                    represented.add(reason)
                seen: set[bytes] = set()
                for target, data in f.inputs:
                    if data not in seen:
                        seen.add(data)
                        f.saved.append(save_regression(target, data, self.save_dir))
                if f in rep.known and f.confirmed and in_repo:
                    mark_known(f.saved, f.detail.split("KNOWN: ", 1)[-1])
        return rep


def _exception_of(stderr: str) -> str:
    lines = stderr.splitlines()
    for i, ln in enumerate(lines):
        if "Uncaught Python exception" in ln and i + 1 < len(lines):
            return lines[i + 1].strip()[:300]
        if "ERROR: libFuzzer: timeout" in ln or "ERROR: libFuzzer: out-of-memory" in ln:
            return ln.strip()[:300]
    return "?"


def _sub_of(data: bytes) -> str:
    return INPROC_SUBTARGETS[data[0] % len(INPROC_SUBTARGETS)] if data else "?"


async def run_campaign(seconds: float, targets: list[str] | None = None, *, pg: PgCluster | None = None,
                       inproc: bool = True, workers: int = 2, rss_limit_mb: float = 64.0, seed: int | None = None,
                       save_dir: Path | None = None) -> Report:
    """Run a campaign; failing inputs go to ``save_dir`` (default: a new temporary
    directory, named in the report; the checkout only when passed REGRESSIONS)."""
    names = targets or list(TARGETS)
    own = pg is None
    cluster = pg if pg is not None else PgCluster({"max_connections": 60})
    try:
        gw = GatewayProcess(cluster, GATEWAY_SETTINGS)
        try:
            camp = Campaign(gw, seconds=seconds, targets=[n for n in names if n != INPROC],
                            inproc=inproc and (targets is None or INPROC in targets), workers=workers,
                            rss_limit_mb=rss_limit_mb, seed=seed, save_dir=save_dir)
            return await camp.run()
        finally:
            gw.stop()
    finally:
        if own:
            cluster.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--target", action="append", choices=[*TARGETS, INPROC],
                    help="run only this target (repeatable); default: all")
    ap.add_argument("--workers", type=int, default=2, help="concurrent connections per network target")
    ap.add_argument("--rss-limit-mb", type=float, default=64.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--save-regressions", action="store_true",
                    help="write failing inputs to tests/fuzz/regressions/ in the checkout (to commit them as "
                         "regression tests); default: a temporary directory named in the report")
    args = ap.parse_args(argv)
    rep = asyncio.run(run_campaign(args.seconds, args.target, workers=args.workers,
                                   rss_limit_mb=args.rss_limit_mb, seed=args.seed,
                                   save_dir=REGRESSIONS if args.save_regressions else None))
    print(rep.text(), flush=True)
    return 0 if rep.ok else 1
