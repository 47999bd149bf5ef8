"""LISTEN fan-out's operator surface: the admin console's ``SHOW LISTENERS``
and the ``/metrics`` families (docs/metrics.md, docs/listen.md)."""

from __future__ import annotations

from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

COLUMNS = ("database", "user", "channel", "state", "subscribers", "backlog", "listener_pid")


def show_rows(gw: Any) -> list[tuple[Any, ...]]:
    """One row per channel a pool's hub keeps: ``state`` is ``listening``
    (confirmed upstream) or ``pending``, with `` (linger)`` when nobody
    subscribes any more (kept listen_linger seconds for SSE resumes).  Pools as
    SHOW POOLS lists them (with the per-user pools of databases without ``user``)."""
    from .admin_show import listed_pools
    out: list[tuple[Any, ...]] = []
    for pool in listed_pools(gw):
        hub = getattr(pool, "listen_hub", None)
        if hub is None or hub.closed:
            continue
        for channel, state, subs, backlog in hub.rows():
            out.append((pool.name, pool.user, channel, state, subs, backlog, hub.backend_pid))
    return out


def collect(gw: Any) -> list[Metric]:
    lab = ["database", "user"]
    ch = GaugeMetricFamily("wirepool_listen_channels", "Channels the LISTEN hub's upstream connection listens to",
                           labels=lab)
    su = GaugeMetricFamily("wirepool_listen_subscribers", "LISTEN subscribers (sessions, SSE streams, internal)",
                           labels=lab)
    bb = GaugeMetricFamily("wirepool_listen_backlog_bytes", "Bytes of notifications kept for SSE resumes",
                           labels=lab)
    rc = CounterMetricFamily("wirepool_listen_notifications_received", "Notifications received from upstream",
                             labels=lab)
    dl = CounterMetricFamily("wirepool_listen_notifications_delivered", "Notifications handed to subscribers",
                             labels=lab)
    dr = CounterMetricFamily("wirepool_listen_notifications_dropped",
                             "Notifications not delivered: the subscriber was too slow and was disconnected",
                             labels=lab)
    re = CounterMetricFamily("wirepool_listen_reconnects", "Upstream listener connections re-established",
                             labels=lab)
    for pool in gw.pools.values():
        lv = [pool.name, pool.user]
        hub = getattr(pool, "listen_hub", None)
        st = hub.registry.stats() if hub is not None else {}
        ch.add_metric(lv, len(hub.listening) if hub is not None else 0)
        su.add_metric(lv, st.get("subscribers", 0))
        bb.add_metric(lv, st.get("backlog_bytes", 0))
        rc.add_metric(lv, st.get("received", 0))
        dl.add_metric(lv, st.get("delivered", 0))
        dr.add_metric(lv, st.get("dropped", 0))
        re.add_metric(lv, hub.reconnects if hub is not None else 0)
    return [ch, su, bb, rc, dl, dr, re]
