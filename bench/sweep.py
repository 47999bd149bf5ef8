"""``python -m bench sweep --pool-sizes 2,5,10,20,40``: pool sizing (docs/tuning.md).

For each pool size a fresh gateway (``default_pool_size = N``) runs the
steady workload (``--clients`` clients, point selects for ``--duration``
seconds) and then the burst workload (``--sessions`` sessions connecting at
once, one query each) of ``python -m bench`` (bench/loadgen.py), ``--repeat``
times.  Client wait for a server comes from the gateway's own
``wirepool_client_wait_seconds`` histogram (/metrics) over the steady run,
with the transactions that did not wait counted as zero.

Writes ``sweep.json``, ``sweep.md`` and ``sweep.svg`` (TPS, p99 latency and
client wait against pool size) to ``--out`` and prints the table and one
sentence recommending the smallest size within 5% of the best TPS.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import env as E
from .harness import DRIVER_TARGETS, Sizes, client_for, machine_info
from .loadgen import Workers, merge
from .report import pct_ms

TARGETS = ("gateway-tcp", "gateway-ws")
WITHIN = 0.05
_LINE = re.compile(r'^(wirepool_client_wait_seconds_(?:bucket|sum|count))\{([^}]*)\}\s+(\S+)$')
_LE = re.compile(r'le="([^"]+)"')


# ------------------------------------------------------------------ analysis
def scrape_wait(text: str) -> dict[str, Any]:
    """``{"sum": s, "count": n, "buckets": {le: cumulative}}`` summed over pools."""
    out: dict[str, Any] = {"sum": 0.0, "count": 0.0, "buckets": {}}
    for line in text.splitlines():
        mt = _LINE.match(line.strip())
        if not mt:
            continue
        name, labels, value = mt.groups()
        v = float(value)
        if name.endswith("_sum"):
            out["sum"] += v
        elif name.endswith("_count"):
            out["count"] += v
        else:
            le = _LE.search(labels)
            if le:
                key = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
                out["buckets"][key] = out["buckets"].get(key, 0.0) + v
    return out


def wait_stats(before: dict[str, Any], after: dict[str, Any], transactions: int) -> dict[str, float | None]:
    """Mean and p99 client wait (ms) over ``transactions``; those not observed waited 0."""
    waited = after["count"] - before["count"]
    total = after["sum"] - before["sum"]
    n = max(transactions, int(waited))
    if n <= 0:
        return {"wait_mean_ms": None, "wait_p99_ms": None}
    rank = 0.99 * n
    p99 = 0.0
    zeros = n - waited
    if rank > zeros:
        bounds = sorted(after["buckets"])
        for le in bounds:
            cum = after["buckets"][le] - before["buckets"].get(le, 0.0)
            if zeros + cum >= rank:
                p99 = le if le != float("inf") else (bounds[-2] if len(bounds) > 1 else 0.0)
                break
    return {"wait_mean_ms": round(1000.0 * total / n, 3), "wait_p99_ms": round(1000.0 * p99, 3)}


def recommend(rows: list[dict[str, Any]], within: float = WITHIN) -> tuple[int | None, str]:
    """The smallest pool size whose median steady TPS is within ``within`` of the best."""
    by_size: dict[int, list[float]] = {}
    for r in rows:
        if r.get("tps") is not None and not r.get("failed"):
            by_size.setdefault(int(r["pool_size"]), []).append(float(r["tps"]))
    if not by_size:
        return None, "no pool size completed the steady workload without errors: no recommendation."
    med = {k: statistics.median(v) for k, v in by_size.items()}
    best_size = max(med, key=lambda k: med[k])
    best = med[best_size]
    pick = min(k for k, v in med.items() if v >= (1.0 - within) * best)
    return pick, (f"Recommended default_pool_size = {pick}: the smallest pool within {int(within * 100)}% of the "
                  f"best steady throughput ({med[pick]:.0f} vs {best:.0f} TPS at pool size {best_size}).")


def summarize(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One line per pool size: medians, and the TPS spread over the repeats."""
    out = []
    for size in sorted({int(r["pool_size"]) for r in rows}):
        rs = [r for r in rows if int(r["pool_size"]) == size]

        def med(key: str) -> float | None:
            vals = [float(r[key]) for r in rs if r.get(key) is not None]
            return round(statistics.median(vals), 3) if vals else None
        tps = [float(r["tps"]) for r in rs if r.get("tps") is not None]
        out.append({"pool_size": size, "repeats": len(rs), "tps": med("tps"),
                    "tps_min": min(tps) if tps else None, "tps_max": max(tps) if tps else None,
                    "p99_ms": med("p99_ms"), "burst_p99_ms": med("burst_p99_ms"),
                    "burst_sessions_per_s": med("burst_sessions_per_s"),
                    "wait_mean_ms": med("wait_mean_ms"), "wait_p99_ms": med("wait_p99_ms"),
                    "peak_backends": max((r.get("peak_backends") or 0) for r in rs),
                    "failed": sum(int(r.get("failed") or 0) + int(r.get("burst_failed") or 0) for r in rs)})
    return out


def markdown(summary: list[dict[str, Any]], sentence: str) -> str:
    cols = ("pool_size", "tps", "tps_min", "tps_max", "p99_ms", "burst_p99_ms", "burst_sessions_per_s",
            "wait_mean_ms", "wait_p99_ms", "failed")
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summary:
        lines.append("| " + " | ".join("" if s.get(c) is None else str(s[c]) for c in cols) + " |")
    return "\n".join(lines) + "\n\n" + sentence + "\n"


def chart(summary: list[dict[str, Any]], path: Path, pick: int | None, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    xs = [s["pool_size"] for s in summary]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))

    def series(ax: Any, key: str, label: str) -> None:
        pts = [(x, s[key]) for x, s in zip(xs, summary) if s.get(key) is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax = axes[0]
    series(ax, "tps", "steady TPS (median)")
    lo = [(x, s["tps_min"], s["tps_max"]) for x, s in zip(xs, summary) if s.get("tps_min") is not None]
    if lo:
        ax.fill_between([p[0] for p in lo], [p[1] for p in lo], [p[2] for p in lo], alpha=0.2, label="min..max")
    ax.set_title("throughput")
    ax.set_ylabel("transactions/s")
    series(axes[1], "p99_ms", "steady p99")
    series(axes[1], "burst_p99_ms", "burst p99 (connect+query)")
    axes[1].set_title("latency p99")
    axes[1].set_yscale("log")
    axes[1].set_ylabel("ms")
    series(axes[2], "wait_mean_ms", "mean")
    series(axes[2], "wait_p99_ms", "p99")
    axes[2].set_title("client wait for a server (steady)")
    axes[2].set_ylabel("ms")
    for ax in axes:
        ax.set_xscale("log")
        ax.minorticks_off()
        ax.set_xticks(xs)
        ax.set_xticklabels([str(x) for x in xs])
        ax.set_xlabel("default_pool_size")
        if pick is not None:
            ax.axvline(pick, color="grey", linestyle=":", linewidth=1)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------ running
def _metrics(g: E.Gateway) -> str:
    with urllib.request.urlopen(f"http://{g.host}:{g.port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def _client(target: str, g: E.Gateway) -> dict[str, Any]:
    if target == "gateway-tcp":
        return {"client": "asyncpg", "kwargs": g.tcp_kwargs(), "statement_cache_size": 0}
    return client_for(target, g, g.port)


def measure(cluster: E.BenchCluster, target: str, size: int, s: Sizes) -> dict[str, Any]:
    g = E.Gateway(cluster, pool_size=size)
    with g:
        client = _client(target, g)
        spec = dict(client, mode="steady", n=s.clients, duration=s.duration, timeout=s.timeout, nitems=E.ITEMS)
        with Workers(spec, s.steady_procs) as w:
            w.wait_ready()
            before = scrape_wait(_metrics(g))
            with E.BackendSampler(cluster, None, interval=0.05) as sampler:
                w.go()
                res = merge(w.results())
            after = scrape_wait(_metrics(g))
        n = len(res["latencies"])
        el = res["elapsed"] or s.duration
        row: dict[str, Any] = {"pool_size": size, "target": target, "clients": s.clients, "duration_s": s.duration,
                               "completed": n, "tps": round(n / el, 1),
                               "failed": sum(res["failed"].values()) + sum(res["open_failed"].values()),
                               **pct_ms(res["latencies"]), **wait_stats(before, after, n),
                               "peak_backends": sampler.peak}
        spec = dict(client, mode="burst", n=s.sessions, timeout=s.timeout, nitems=E.ITEMS)
        with Workers(spec, s.burst_procs) as w:
            w.wait_ready()
            w.go()
            b = merge(w.results())
        wall = max(b["end"]) if b["end"] else None
        bp = pct_ms(b["ttfr"])
        row.update(burst_sessions=s.sessions, burst_completed=len(b["ttfr"]),
                   burst_failed=sum(b["failed"].values()), burst_p99_ms=bp["p99_ms"],
                   burst_sessions_per_s=round(len(b["ttfr"]) / wall, 1) if wall else None)
    cluster.wait_backends_gone()
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench sweep", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pool-sizes", default="2,5,10,20,40", help="comma-separated default_pool_size values")
    ap.add_argument("--target", default="gateway-tcp", choices=TARGETS)
    ap.add_argument("--clients", type=int, help="steady: concurrent clients (default 50)")
    ap.add_argument("--duration", type=float, help="steady: seconds per pool size (default 10)")
    ap.add_argument("--sessions", type=int, help="burst: sessions at once (default 1000)")
    ap.add_argument("--repeat", type=int, default=2, help="runs per pool size (default 2; spread reported)")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    ap.add_argument("--out", default=str(E.REPO / "bench" / "results" / "sweep"), help="output folder")
    a = ap.parse_args(argv)
    try:
        sizes_list = [int(x) for x in a.pool_sizes.split(",") if x.strip()]
    except ValueError:
        ap.error("--pool-sizes: comma-separated integers")
    if not sizes_list or min(sizes_list) < 1:
        ap.error("--pool-sizes: positive integers")
    s = Sizes.quick() if a.quick else Sizes()
    for attr, val in (("clients", a.clients), ("duration", a.duration), ("sessions", a.sessions)):
        if val is not None:
            setattr(s, attr, val)
    ok, why = E.gateway_available()
    if not ok:
        print(f"error: {why}", file=sys.stderr)
        return 1
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = machine_info()
    meta.update(argv=["python", "-m", "bench", "sweep", *(argv if argv is not None else sys.argv[2:])],
                clients=s.clients, duration=s.duration, sessions=s.sessions, repeat=a.repeat, target=a.target)
    rows: list[dict[str, Any]] = []
    t0 = time.monotonic()
    cluster = E.BenchCluster(scram_iterations=s.scram_iterations)
    try:
        for rep in range(a.repeat):
            for size in sizes_list:  # interleaved: a drift of the machine hits every size alike
                print(f"[{time.monotonic() - t0:6.1f}s] pool size {size}, run {rep + 1}/{a.repeat} ...",
                      file=sys.stderr, flush=True)
                row = measure(cluster, a.target, size, s)
                row["repeat"] = rep
                rows.append(row)
                print(f"    {row['tps']} tps, p99 {row['p99_ms']} ms, wait mean {row['wait_mean_ms']} ms, "
                      f"burst p99 {row['burst_p99_ms']} ms, failed {row['failed'] + row['burst_failed']}",
                      file=sys.stderr, flush=True)
    finally:
        cluster.close()
    meta["elapsed_s"] = round(time.monotonic() - t0, 1)
    summary = summarize(rows)
    pick, sentence = recommend(rows)
    title = (f"{a.target}: {s.clients} steady clients x {s.duration:g}s, burst {s.sessions} sessions; "
             f"{meta.get('cores')} cores; {a.repeat} runs per size")
    chart(summary, out / "sweep.svg", pick, title)
    (out / "sweep.json").write_text(json.dumps({"meta": meta, "rows": rows, "summary": summary,
                                                "recommended_pool_size": pick, "recommendation": sentence},
                                               indent=2, default=str))
    md = markdown(summary, sentence)
    (out / "sweep.md").write_text(f"# Pool size sweep\n\n{title}\n\n{md}")
    print(md)
    print(f"wrote {out / 'sweep.svg'}, {out / 'sweep.md'}, {out / 'sweep.json'} in {meta['elapsed_s']} s")
    return 0


__all__ = ["main", "recommend", "scrape_wait", "wait_stats", "DRIVER_TARGETS"]
