"""Results: percentiles, progress bars, the terminal table, JSON and PNG charts."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Sequence


def percentile(sorted_vals: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence (None when empty)."""
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, math.ceil(p / 100.0 * len(sorted_vals)) - 1))
    return sorted_vals[k]


def pct_ms(values: Iterable[float]) -> dict[str, float | None]:
    s = sorted(values)
    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000.0, 3)
    return {"p50_ms": ms(percentile(s, 50)), "p95_ms": ms(percentile(s, 95)),
            "p99_ms": ms(percentile(s, 99)), "max_ms": ms(s[-1] if s else None)}


def cdf_points(values: Iterable[float], max_points: int = 400) -> list[float]:
    """Sorted values in ms, thinned to at most ``max_points`` (keeps both ends)."""
    s = sorted(values)
    if len(s) > max_points:
        step = (len(s) - 1) / (max_points - 1)
        s = [s[round(i * step)] for i in range(max_points)]
    return [round(v * 1000.0, 3) for v in s]


class Progress:
    """Plain-text progress bar on stderr: ``[#####.....] 3/10 label (detail)``."""

    def __init__(self, total: int, stream: Any = None, width: int = 24) -> None:
        self.total = max(1, total)
        self.done = 0
        self.width = width
        self.stream = stream or sys.stderr
        self.label = ""
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self._last = 0.0

    def _bar(self, frac: float) -> str:
        n = int(round(self.width * max(0.0, min(1.0, frac))))
        return "[" + "#" * n + "." * (self.width - n) + "]"

    def start(self, label: str) -> None:
        self.label = label
        self.update("")

    def update(self, detail: str, frac_in_step: float = 0.0, force: bool = False) -> None:
        now = time.monotonic()
        if not force and not self.tty and now - self._last < 2.0 and detail:
            return
        self._last = now
        frac = (self.done + frac_in_step) / self.total
        line = f"{self._bar(frac)} {self.done}/{self.total} {self.label}"
        if detail:
            line += f"  {detail}"
        if self.tty:
            self.stream.write("\r\x1b[2K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def step_done(self, summary: str = "") -> None:
        self.done += 1
        self.update(summary, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v >= 1000:
            return f"{v:,.0f}"
        if v >= 100:
            return f"{v:.1f}"
        return f"{v:.2f}"
    if isinstance(v, dict):
        return ",".join(f"{k}:{n}" for k, n in v.items()) or "0"
    return str(v)


COLUMNS = [
    ("scenario", "scenario"), ("target", "target"), ("case", "case"), ("completed", "ok"), ("failed", "failed"),
    ("failed_by_sqlstate", "failed by"), ("sessions_per_s", "sess/s"), ("tps", "tps"),
    ("ops_per_s", "ops/s"), ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"), ("p99_ms", "p99 ms"),
    ("peak_backends", "backends"), ("pooler_peak_rss_mb", "RSS MB"), ("pooler_cpu_s", "pooler CPU s"),
    ("client_cpu_s", "client CPU s"), ("postgres_cpu_s", "PG CPU s"),
    ("kb_per_session", "KB/sess"), ("mean_us", "mean us"), ("round_trips_p50", "RTTs p50"),
    ("connect_ms", "connect ms"), ("ratio", "ratio"), ("note", "note"),
]


def _clip(s: str, n: int = 110) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 3] + "..."


def _columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(k, h) for k, h in COLUMNS
            if k in ("scenario", "target") or (k == "note" and any(r.get("absent") for r in rows))
            or any(r.get(k) not in (None, "", {}) and not r.get("absent") for r in rows)]


def _groups(rows: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """Rows grouped by scenario family (pgbench rows go with steady, driver-* together)."""
    def fam(r: dict[str, Any]) -> str:
        sc = str(r.get("scenario", ""))
        return "driver" if sc.startswith("driver-") else "steady" if sc.startswith("pgbench") else sc
    order: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        order.setdefault(fam(r), []).append(r)
    return list(order.values())


def table(rows: list[dict[str, Any]]) -> str:
    """One aligned block per scenario family, each with only the columns it uses."""
    return "\n\n".join(_table1(g) for g in _groups(rows))


def _table1(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows)
    body = []
    for r in rows:
        if r.get("absent"):
            cells = {k: "" for k, _ in cols}
            cells["scenario"] = r.get("scenario", "")
            cells["target"] = r.get("target", "")
            cells["note"] = _clip("ABSENT: " + str(r.get("absent_reason", "")))
            body.append([cells.get(k, "") for k, _ in cols])
        else:
            body.append([_clip(_fmt(r.get(k))) for k, _ in cols])
    heads = [h for _, h in cols]
    widths = [max(len(heads[i]), *(len(b[i]) for b in body)) if body else len(heads[i])
              for i in range(len(cols))]
    # never let the free-text note column explode the table width
    out = [" | ".join(h.ljust(widths[i]) for i, h in enumerate(heads)).rstrip(),
           "-+-".join("-" * w for w in widths)]
    for b in body:
        out.append(" | ".join(c.ljust(widths[i]) for i, c in enumerate(b)).rstrip())
    return "\n".join(out)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    return "\n\n".join(_md1(g) for g in _groups(rows))


def _md1(rows: list[dict[str, Any]]) -> str:
    cols = _columns(rows)
    lines = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        if r.get("absent"):
            cells = [r.get("scenario", ""), r.get("target", "")] + [""] * (len(cols) - 3) + \
                ["absent: " + str(r.get("absent_reason", ""))]
        else:
            cells = [_fmt(r.get(k)) for k, _ in cols]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def write_json(out: Path, rows: list[dict[str, Any]], cdfs: dict[str, dict[str, list[float]]],
               meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    (out / "latencies.json").write_text(json.dumps(cdfs, default=str))
    (out / "machine.json").write_text(json.dumps(meta, indent=1, default=str))


def charts(out: Path, rows: list[dict[str, Any]], cdfs: dict[str, dict[str, list[float]]]) -> list[Path]:
    """PNG charts: latency CDF per target for each scenario that has latencies,
    sessions/s per target (burst) and TPS per target (steady, pgbench)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[Path] = []
    out.mkdir(parents=True, exist_ok=True)
    for scenario, per_target in cdfs.items():
        if not any(per_target.values()):
            continue
        fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
        for target, pts in per_target.items():
            if not pts:
                continue
            ys = [(i + 1) / len(pts) for i in range(len(pts))]
            ax.step(pts, ys, where="post", label=f"{target} (n={len(pts)})")
        ax.set_xlabel("time to first row (ms)" if scenario != "steady" else "query latency (ms)")
        ax.set_ylabel("fraction of sessions" if scenario != "steady" else "fraction of queries")
        ax.set_title(f"{scenario}: latency CDF per target")
        if all(p for p in per_target.values() if p) and max((max(p) for p in per_target.values() if p),
                                                            default=1) / max(1e-3, min((min(p) for p in per_target.values() if p), default=1)) > 50:
            ax.set_xscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"latency_cdf_{scenario.replace(' ', '_')}.png"
        fig.savefig(path)
        plt.close(fig)
        made.append(path)

    def bars(metric: str, scenarios: tuple[str, ...], title: str, fname: str) -> None:
        sel = [r for r in rows if r.get("scenario") in scenarios and not r.get("absent")
               and r.get(metric) is not None]
        if not sel:
            return
        labels = [r["target"] if len(scenarios) == 1 else f"{r['scenario']}\n{r['target']}" for r in sel]
        vals = [float(r[metric]) for r in sel]
        fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(sel)), 4.2), dpi=100)
        colors = ["#d62728" if r.get("failed") else "#1f77b4" for r in sel]
        bs = ax.bar(range(len(sel)), vals, color=colors)
        for b, r, v in zip(bs, sel, vals):
            txt = f"{v:,.0f}"
            if r.get("failed"):
                txt += f"\n{r['failed']} failed"
            ax.annotate(txt, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                        fontsize=7)
        ax.set_xticks(range(len(sel)))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_ylabel(metric.replace("_", " "))
        ax.set_title(title)
        ax.grid(True, axis="y", alpha=0.3)
        fig.tight_layout()
        path = out / fname
        fig.savefig(path)
        plt.close(fig)
        made.append(path)

    bars("sessions_per_s", ("burst",), "burst: sessions/s per target (red = some failed)", "sessions_per_s.png")
    bars("tps", ("steady", "pgbench-S", "pgbench-S-C"), "steady: transactions/s per target", "tps.png")
    return made
