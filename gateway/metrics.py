"""Prometheus exposition for ``GET /metrics``, built at scrape time.

Nothing is counted on the hot path here: each scrape calls ``gateway.stats()``
(plain ints / list lengths kept by the pool code) and the listeners' own
counters, and turns them into gauges in a private registry.

``stats()`` shapes understood (the pool engineer owns the exact content):

* top-level numbers -> ``wirepool_<key>``
* top-level lists/sets -> ``wirepool_<key>`` = their length
* a list of dicts under ``key`` (e.g. ``"pools": [{"database": "app", "user": "app",
  "cl_active": 3, ...}]``) -> ``wirepool_<key>_<field>{database=...,user=...}``;
  string fields become labels, numbers (and list lengths) become values
* a dict of dicts under ``key`` (e.g. ``"pools": {"app/app": {...}}``) -> the same,
  with the inner key as label ``name`` (unless the entry carries string labels)
"""

from __future__ import annotations

import logging
import re
from typing import Any, Callable, Iterable, Iterator, Mapping

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
PREFIX = "wirepool_"

_name_re = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(*parts: str) -> str:
    name = PREFIX + "_".join(_name_re.sub("_", p) for p in parts if p)
    return name


def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, (list, tuple, set, frozenset, dict)) and not _is_records(v):
        return float(len(v))
    return None


def _is_records(v: Any) -> bool:
    if isinstance(v, (list, tuple)) and v and all(isinstance(x, Mapping) for x in v):
        return True
    if isinstance(v, Mapping) and v and all(isinstance(x, Mapping) for x in v.values()):
        return True
    return False


def _records(v: Any) -> Iterator[tuple[dict[str, str], Mapping[str, Any]]]:
    if isinstance(v, Mapping):
        for k, rec in v.items():
            labels = {lk: str(lv) for lk, lv in rec.items() if isinstance(lv, str)}
            if not labels:
                labels = {"name": "/".join(map(str, k)) if isinstance(k, tuple) else str(k)}
            yield labels, rec
    else:
        for rec in v:
            yield {lk: str(lv) for lk, lv in rec.items() if isinstance(lv, str)}, rec


def stats_to_metrics(stats: Mapping[str, Any], source: str = "Gateway.stats()") -> list[Metric]:
    out: list[Metric] = []
    for key, value in stats.items():
        if _is_records(value):
            families: dict[str, GaugeMetricFamily] = {}
            label_names: dict[str, list[str]] = {}
            for labels, rec in _records(value):
                for field, fv in rec.items():
                    n = _number(fv)
                    if n is None:
                        continue
                    mname = _metric_name(key, field)
                    fam = families.get(mname)
                    if fam is None:
                        names = sorted(labels)
                        label_names[mname] = names
                        fam = families[mname] = GaugeMetricFamily(mname, f"{key}.{field} from {source}",
                                                                  labels=names)
                    fam.add_metric([labels.get(ln, "") for ln in label_names[mname]], n)
            out.extend(families.values())
        else:
            n = _number(value)
            if n is not None:
                out.append(GaugeMetricFamily(_metric_name(key), f"{key} from {source}", value=n))
    return out


class StatsCollector(Collector):
    def __init__(self, stats: Callable[[], Mapping[str, Any]],
                 extra: Callable[[], Mapping[str, Any]] | None = None,
                 families: Callable[[], list[Metric]] | None = None) -> None:
        self._stats = stats
        self._extra = extra
        self._families = families

    def collect(self) -> Iterable[Metric]:
        try:
            s = self._stats()
        except Exception:  # a broken stats() must not break the scrape
            s = {}
        metrics = stats_to_metrics(s if isinstance(s, Mapping) else {})
        if self._extra is not None:
            metrics.extend(stats_to_metrics(self._extra(), "the listeners"))
        if self._families is not None:  # histograms and counters (gateway/observe.py)
            try:
                metrics.extend(self._families())
            except Exception:  # a bug there must not break the scrape
                logging.getLogger("wirepool").exception("metrics: collecting histograms failed")
        return metrics


def make_registry(stats: Callable[[], Mapping[str, Any]],
                  extra: Callable[[], Mapping[str, Any]] | None = None,
                  families: Callable[[], list[Metric]] | None = None) -> CollectorRegistry:
    reg = CollectorRegistry(auto_describe=False)
    reg.register(StatsCollector(stats, extra, families))
    return reg


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
