"""``GET /status``: a server-rendered HTML page of the pools (no JavaScript, no build step).

Access: HTTP Basic auth for a user listed in ``[gateway] admin_users`` (password
checked like any client's, throttled), or ``Authorization: Bearer <API token>``
of such a user.  Shows each pool's SHOW POOLS counts, client wait percentiles
(from the histograms of gateway/observe.py) and an inline SVG chart of the last
minutes (the janitor's samples in ``GatewayObs.history``).
"""

from __future__ import annotations

import base64
import binascii
import time
from html import escape
from typing import Any

from gateway.auth import AuthFailed
from gateway.http import HttpRequest, HttpResponse
from gateway.observe import SAMPLE_EVERY

_CHALLENGE = [("www-authenticate", 'Basic realm="wirepool status", charset="UTF-8"'),
              ("cache-control", "no-store")]
#: series of the chart: (index in a history sample, colour, legend)
_SERIES = ((0, "#2b6cb0", "clients active"), (2, "#c53030", "clients waiting"),
           (3, "#2f855a", "servers active"), (1, "#a0aec0", "servers idle"))


def register(app: Any) -> None:
    async def status(req: HttpRequest) -> HttpResponse:
        gw = app.gateway
        if not await _authorized(gw, req):
            return HttpResponse(401, b"admin credentials required\n", headers=_CHALLENGE)
        return HttpResponse(200, render(gw).encode(), "text/html; charset=utf-8",
                            headers=[("cache-control", "no-store")])
    assert app.http is not None
    app.http.add_route("GET", "/status", status)


async def _authorized(gw: Any, req: HttpRequest) -> bool:
    admins = set(gw.settings.admin_users)
    if not admins:
        return False
    auth = gw.authenticator
    value = req.header("authorization") or ""
    scheme, _, cred = value.partition(" ")
    scheme = scheme.lower()
    try:
        if scheme == "bearer" and cred:
            user = await auth.authenticate_token(cred.strip(), None, req.peer)
            return user in admins
        if scheme == "basic" and cred:
            user, sep, password = base64.b64decode(cred.strip(), validate=True).decode("utf-8").partition(":")
            if not sep:
                return False
            # the same work for every user name (no timing hint of who is an admin)
            return bool(await auth.verify_password(user, password, req.peer)) and user in admins
    except (AuthFailed, binascii.Error, UnicodeDecodeError, ValueError):
        return False
    return False


def _ms(v: float | None) -> str:
    return "–" if v is None else f"{v * 1000:.1f} ms"


def _chart(name: str, history: list[tuple[float, dict[str, tuple[int, int, int, int]]]]) -> str:
    pts = [(t, s[name]) for t, s in history if name in s]
    w, h, pad = 480, 120, 4
    if not pts:
        return f'<svg class="chart" width="{w}" height="{h}" role="img"><text x="8" y="20">no samples yet</text></svg>'
    top = max(1, max(max(v) for _, v in pts))
    t0 = pts[0][0]
    span = max(pts[-1][0] - t0, SAMPLE_EVERY)
    lines = []
    for i, colour, label in _SERIES:
        coords = " ".join(f"{pad + (t - t0) / span * (w - 2 * pad):.1f},{h - pad - v[i] / top * (h - 2 * pad):.1f}"
                          for t, v in pts)
        lines.append(f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}">'
                     f'<title>{escape(label)}</title></polyline>')
    return (f'<svg class="chart" width="{w}" height="{h}" viewBox="0 0 {w} {h}" role="img" '
            f'aria-label="pool {escape(name)}, last {span:.0f} s">'
            f'<rect width="{w}" height="{h}" fill="#f7fafc" stroke="#e2e8f0"/>'
            f'<text x="{w - pad}" y="14" text-anchor="end" font-size="11">max {top}</text>'
            + "".join(lines) + "</svg>")


def render(gw: Any) -> str:
    obs = gw.obs
    now = time.time()
    live = {name: (len(p.cl_active), len(p.sv_idle), len(p.cl_waiting), len(p.sv_active))
            for name, p in gw.pools.items()}
    history = list(obs.history) + [(now, live)]
    rows = []
    charts = []
    for name, p in gw.pools.items():
        st = p.stats()
        wait = p.obs.wait
        waiting_cls = ' class="waiting"' if st["cl_waiting"] else ""
        rows.append(
            f"<tr{waiting_cls}><td>{escape(name)}</td><td>{escape(p.user)}</td><td>{escape(p.mode)}</td>"
            f"<td>{st['pool_size']}</td><td>{st['cl_active']}</td><td class=\"cl_waiting\">{st['cl_waiting']}</td>"
            f"<td>{st['sv_active']}</td><td>{st['sv_idle']}</td><td>{st['sv_used'] + st['sv_login']}</td>"
            f"<td>{st['maxwait']:.2f} s</td><td>{_ms(wait.quantile(0.5))}</td><td>{_ms(wait.quantile(0.95))}</td>"
            f"<td>{_ms(wait.quantile(0.99))}</td><td>{wait.count}</td><td>{p.xact_count}</td>"
            f"<td>{'paused' if p.paused else ('disabled' if p.disabled else 'running')}</td></tr>")
        charts.append(f"<figure><figcaption>{escape(name)}</figcaption>{_chart(name, history)}</figure>")
    legend = " ".join(f'<span style="color:{c}">&#9632; {escape(label)}</span>' for _, c, label in _SERIES)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>wirepool status</title>
<style>
body{{font:13px system-ui,sans-serif;margin:1.5em;color:#1a202c}}
table{{border-collapse:collapse}}th,td{{padding:.3em .5em;border-bottom:1px solid #e2e8f0;text-align:right}}
th:nth-child(-n+3),td:nth-child(-n+3){{text-align:left}}tr.waiting td.cl_waiting{{color:#c53030;font-weight:bold}}
figure{{display:inline-block;margin:1em 1em 0 0}}figcaption{{font-weight:bold}}
</style></head><body>
<h1>wirepool</h1>
<p>{gw.n_clients} clients logged in · {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(now))} UTC ·
client wait percentiles since start (estimated from the <code>wirepool_client_wait_seconds</code> buckets)</p>
<table id="pools"><thead><tr><th>database</th><th>user</th><th>mode</th><th>size</th><th>cl_active</th>
<th>cl_waiting</th><th>sv_active</th><th>sv_idle</th><th>sv_used+login</th><th>maxwait</th><th>wait p50</th>
<th>wait p95</th><th>wait p99</th><th>waits</th><th>transactions</th><th>state</th></tr></thead>
<tbody>{''.join(rows)}</tbody></table>
<h2>Last minutes</h2><p>{legend}</p>
{''.join(charts)}
</body></html>
"""
