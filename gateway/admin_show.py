"""The admin console's SHOW commands (gateway/admin.py runs the console) and
the encoding of their answers: RowDescription (text format, PgBouncer's type
OIDs), DataRows, CommandComplete ``SHOW``.  Column names and meanings follow
PgBouncer 1.21; our own concepts are extra columns at the end (docs/admin.md).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import fields as dc_fields
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from driver.protocol import messages as m

from . import cache_admin, listen_admin
from .config import GatewaySettings
from .stats_period import counters

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway
    from .pool import Pool

ADMIN_DATABASES = frozenset({"pgbouncer", "wirepool"})
#: The PgBouncer release whose console columns we follow.
PGBOUNCER_VERSION = "1.21.0"
try:
    from importlib.metadata import version as _pkg_version
    WIREPOOL_VERSION = _pkg_version("wirepool")
except Exception:  # pragma: no cover - not installed
    WIREPOOL_VERSION = "dev"

TEXT, INT4, NUMERIC = 25, 23, 1700
_SIZE = {TEXT: -1, INT4: 4, NUMERIC: -1}
S, I, Q = TEXT, INT4, NUMERIC  # PgBouncer's 's', 'i', 'q' column kinds (its 64-bit counters are numeric)
#: [gateway] settings SET can change on a running gateway (all others need RELOAD or a restart)
LIVE_SETTINGS = frozenset({
    "default_pool_size", "min_pool_size", "reserve_pool_size", "reserve_pool_timeout", "query_wait_timeout",
    "server_idle_timeout", "server_lifetime", "server_connect_timeout", "server_login_retry",
    "idle_transaction_timeout", "query_timeout", "client_idle_timeout", "max_client_conn",
    "max_login_clients", "max_http_conn", "stats_period", "client_login_timeout", "http_min_body_rate",
    "max_prepared_statements", "server_check_delay", "server_check_query", "pool_mode", "log_level",
    "cache_max_bytes", "cache_max_entry_bytes", "cache_channel"})
_STATE_CODE = {"cl_active": "active", "cl_waiting": "waiting", "sv_active": "active",
               "sv_idle": "idle", "sv_used": "used", "sv_login": "login"}
HELP = """Console usage
\tSHOW HELP|CONFIG|USERS|DATABASES|POOLS|CLIENTS|SERVERS|VERSION
\tSHOW STATS|STATS_TOTALS|STATS_AVERAGES|LISTS|MEM|STATE|CACHE
\tSET key = arg
\tRELOAD
\tPAUSE [<db>]
\tRESUME [<db>]
\tDISABLE <db>
\tENABLE <db>
\tRECONNECT [<db>]
\tKILL <db>
\tKILL_CLIENT <id>
\tWAIT_CLOSE [<db>]
\tCACHE_INVALIDATE <tag> [<tag> ...] | *
\tSHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]"""


def _cell(v: Any) -> bytes | None:
    if v is None:
        return None
    if isinstance(v, bool):
        return b"1" if v else b"0"
    return str(v).encode("utf-8")


def result(cols: Sequence[tuple[str, int]], rows: Iterable[Sequence[Any]], tag: str = "SHOW") -> bytes:
    """RowDescription + DataRows + CommandComplete, all text format."""
    out = [m.row_description([m.FieldDescription(name, type_oid=oid, type_size=_SIZE[oid]) for name, oid in cols])]
    out.extend(m.data_row([_cell(v) for v in row]) for row in rows)
    out.append(m.command_complete(tag))
    return b"".join(out)


def _ts(loop_time: float, loop: asyncio.AbstractEventLoop) -> str:
    """A loop.time() instant as PgBouncer prints timestamps."""
    wall = time.time() - (loop.time() - loop_time)
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(wall))


def _split_addr(peer: str) -> tuple[str, int]:
    host, _, port = peer.rpartition(":")
    return host.strip("[]") or peer, int(port) if port.isdigit() else 0


def _transport(stream: Any) -> str:
    name = type(stream).__name__
    return "websocket" if "WebSocket" in name else "http" if "Http" in name else "tcp"


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, tuple) and v and isinstance(v[0], tuple):  # gateway.peers
        return ",".join(f"{a}={b}" for a, b in v)
    if isinstance(v, tuple):
        return ",".join(str(x) for x in v) if not (len(v) == 2 and isinstance(v[1], int)) else f"{v[0]}:{v[1]}"
    if isinstance(v, float) and v == int(v):
        return str(int(v))
    return str(v)


def listed_pools(gw: "Gateway") -> list["Pool"]:
    """Every pool, one per (database, user) as PgBouncer lists them: a database's
    own pool, or for a database without ``user`` (each client logs in upstream as
    itself, gateway/auth_query.py) the pool of each user connected to it -- its
    own pool never logs in or serves anyone, so it is not a row."""
    per_user: dict[str, list["Pool"]] = {}
    for (name, _user), p in gw.auth_query.user_pools.items():
        per_user.setdefault(name, []).append(p)
    out: list["Pool"] = []
    for name, p in gw.pools.items():
        if p.db.user:
            out.append(p)
        out.extend(sorted(per_user.get(name, ()), key=lambda q: q.user))
    return out


def database_pools(gw: "Gateway", name: str) -> list["Pool"]:
    """The pools of database ``name``: its own, then its per-user pools."""
    own = gw.pools.get(name)
    users = [p for (db, _u), p in gw.auth_query.user_pools.items() if db == name]
    return ([own] if own is not None else []) + sorted(users, key=lambda q: q.user)


class ShowCommands:
    """``SHOW <what>`` as ``show_<what>()`` methods (mixed into admin.Console)."""

    gw: "Gateway"

    def show_help(self) -> bytes:
        return m.notice_response({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": HELP}) + m.command_complete("SHOW")

    def show_version(self) -> bytes:
        return result([("version", S)], [(f"PgBouncer {PGBOUNCER_VERSION} compatible (Wirepool {WIREPOOL_VERSION})",)])

    def show_pools(self) -> bytes:
        cols = [("database", S), ("user", S), ("cl_active", I), ("cl_waiting", I), ("cl_active_cancel_req", I),
                ("cl_waiting_cancel_req", I), ("sv_active", I), ("sv_active_cancel", I), ("sv_being_canceled", I),
                ("sv_idle", I), ("sv_used", I), ("sv_tested", I), ("sv_login", I), ("maxwait", I),
                ("maxwait_us", I), ("pool_mode", S), ("cl_cancel_req", I), ("pool_size", I), ("paused", I)]
        now = self.gw.loop.time()
        rows = []
        for p in listed_pools(self.gw):
            wait = now - next(iter(p.cl_waiting)).wait_start if p.cl_waiting else 0.0
            rows.append((p.name, p.user, len(p.cl_active), len(p.cl_waiting), 0, 0, len(p.sv_active), 0, 0,
                         len(p.sv_idle), len(p.sv_used), 0, len(p.sv_login), int(wait),
                         int((wait - int(wait)) * 1e6), p.mode, 0, p.size, p.paused))
        rows.append(("pgbouncer", "pgbouncer", self._admin_clients(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                     "statement", 0, 0, False))
        return result(cols, rows)

    def _admin_clients(self) -> int:
        return sum(1 for s in self.gw._all_sessions if s.database in ADMIN_DATABASES and s.process_id)

    def _counters(self, p: "Pool") -> tuple[int, ...]:
        """xact_count, query_count, received, sent, xact_time, query_time, wait_time (µs)
        of a database (its per-user pools included: gateway/stats_period.py)."""
        # received/sent: bytes forwarded per read (gateway/observe.py, the same counters as
        # /metrics); query_time is the time linked per transaction (counted at release).
        return counters(p)[:7]

    def _stats_rows(self, totals_prefix: str, avg_prefix: str | None) -> tuple[list[tuple[str, int]], list[Any]]:
        names = ["xact_count", "query_count", "received", "sent", "xact_time", "query_time", "wait_time"]
        tot = [f"{totals_prefix}{n}" for n in names]
        if totals_prefix in ("", "avg"):
            tot = ["xact_count", "query_count", "bytes_received", "bytes_sent", "xact_time", "query_time",
                   "wait_time"]
        cols = [("database", S)] + [(n, Q) for n in tot]
        avg_names = ["avg_xact_count", "avg_query_count", "avg_recv", "avg_sent", "avg_xact_time",
                     "avg_query_time", "avg_wait_time"]
        if avg_prefix is not None:
            cols += [(n, Q) for n in avg_names]
        period = getattr(self.gw, "period_stats", None)  # averages over stats_period (gateway/stats_period.py)
        rows: list[Any] = []
        for p in self.gw.pools.values():
            c = self._counters(p)
            avg = period.averages(p.name) if period is not None else (0,) * 7
            if totals_prefix == "avg":
                rows.append((p.name,) + avg)
            else:
                rows.append((p.name,) + c + (avg if avg_prefix is not None else ()))
        rows.append(("pgbouncer",) + (0,) * (len(cols) - 1))  # the console itself, as PgBouncer lists it
        return cols, rows

    def show_stats(self) -> bytes:
        return result(*self._stats_rows("total_", "avg_"))

    def show_stats_totals(self) -> bytes:
        return result(*self._stats_rows("", None))

    def show_stats_averages(self) -> bytes:
        cols, rows = self._stats_rows("avg", None)
        return result(cols, rows)

    def show_databases(self) -> bytes:
        cols = [("name", S), ("host", S), ("port", I), ("database", S), ("force_user", S), ("pool_size", I),
                ("min_pool_size", I), ("reserve_pool", I), ("server_lifetime", I), ("pool_mode", S),
                ("max_connections", I), ("current_connections", I), ("paused", I), ("disabled", I)]
        g = self.gw.settings
        rows: list[Any] = []
        for p in self.gw.pools.values():  # one row per database; its servers include its per-user pools
            d = p.db
            servers = sum(q.total_servers() for q in database_pools(self.gw, p.name))
            rows.append((p.name, d.host, d.port, d.dbname, d.user, p.size, p.min_size, p.reserve,
                         int(g.server_lifetime), p.mode, 0, servers, p.paused, p.disabled))
        pg = g.pg_listen
        rows.append(("pgbouncer", None, pg[1] if pg else 0, "pgbouncer", "pgbouncer", 2, 0, 0, 0,
                     "statement", 0, 0, False, False))
        return result(cols, rows)

    def show_lists(self) -> bytes:
        gw = self.gw
        sessions = gw._all_sessions
        logged = sum(1 for s in sessions if s.process_id)
        pools = listed_pools(gw)
        servers = sum(p.total_servers() for p in pools)
        rows = [("databases", len(gw.pools) + 1), ("users", len(gw.config.users)), ("peers", 0),
                ("pools", len(pools) + 1), ("peer_pools", 0), ("free_clients", 0), ("used_clients", logged),
                ("login_clients", len(sessions) - logged), ("free_servers", 0), ("used_servers", servers),
                ("dns_names", 0), ("dns_zones", 0), ("dns_queries", 0), ("dns_pending", 0)]
        return result([("list", S), ("items", I)], rows)

    _CONN_COLS = [("type", S), ("user", S), ("database", S), ("state", S), ("addr", S), ("port", I),
                  ("local_addr", S), ("local_port", I), ("connect_time", S), ("request_time", S),
                  ("wait", I), ("wait_us", I), ("close_needed", I), ("ptr", S), ("link", S),
                  ("remote_pid", I), ("tls", S), ("application_name", S), ("prepared_statements", I),
                  ("id", Q), ("transport", S)]

    def show_clients(self) -> bytes:
        loop = self.gw.loop
        now = loop.time()
        rows = []
        for s in list(self.gw._all_sessions):
            if not s.process_id:
                continue  # still logging in (PgBouncer lists those only in SHOW LISTS)
            addr, port = _split_addr(getattr(s.stream, "peer", "?"))
            state = "waiting" if s.pool is not None and s.pool_list is s.pool.cl_waiting else "active"
            wait = now - s.wait_start if state == "waiting" else 0.0
            server = s.server
            tls = getattr(s.stream, "tls_version", None) or ""
            nstmt = len(s.prepared.client.names) if s.prepared is not None and \
                hasattr(getattr(s.prepared, "client", None), "names") else 0
            rows.append(("C", s.user, s.database, state, addr, port, None, None, _ts(s.connect_time, loop),
                         _ts(max(s.link_time, s.connect_time), loop), int(wait), int((wait - int(wait)) * 1e6),
                         0, f"0x{id(s):x}", f"0x{id(server):x}" if server is not None else "",
                         s.process_id, tls, s.params.get("application_name", ""), nstmt, s.process_id,
                         _transport(s.stream)))
        return result(self._CONN_COLS, rows)

    def show_servers(self) -> bytes:
        loop = self.gw.loop
        rows = []
        for p in listed_pools(self.gw):
            for lst_name in ("sv_active", "sv_idle", "sv_used"):
                for sv in list(getattr(p, lst_name)):
                    client = sv.client
                    ssl = sv.transport.get_extra_info("ssl_object") if sv.transport is not None else None
                    created = sv.created if sv.created != float("-inf") else sv.last_used
                    rows.append(("S", p.user, p.name, _STATE_CODE[lst_name], sv.host, sv.port, None, None,
                                 _ts(created, loop), _ts(sv.last_used, loop), 0, 0,
                                 sv.created == float("-inf"), f"0x{id(sv):x}",
                                 f"0x{id(client):x}" if client is not None else "", sv.backend_pid,
                                 ssl.version() if ssl is not None else "", sv.params.get("application_name", ""),
                                 len(sv.statements) if sv.statements is not None else 0, sv.backend_pid, "tcp"))
        return result(self._CONN_COLS, rows)

    def show_users(self) -> bytes:
        counts: dict[str, int] = {}
        for s in self.gw._all_sessions:
            if s.process_id:
                counts[s.user] = counts.get(s.user, 0) + 1
        g = self.gw.settings
        tokens = {name: len(u.tokens) for name, u in self.gw.config.users.items()}
        for _db, name in self.gw.auth_query.user_pools:  # users found by auth_query, as PgBouncer lists them
            tokens.setdefault(name, 0)
        rows = [(name, None, 0, 0, counts.get(name, 0), n, name in g.admin_users, name in g.stats_users)
                for name, n in tokens.items()]
        return result([("name", S), ("pool_mode", S), ("max_user_connections", I), ("current_connections", I),
                       ("current_client_connections", I), ("tokens", I), ("admin", I), ("stats", I)], rows)

    def show_config(self) -> bytes:
        g = self.gw.settings
        default = GatewaySettings()
        rows = []
        for f in dc_fields(GatewaySettings):
            v, d = getattr(g, f.name), getattr(default, f.name)
            rows.append((f.name, _fmt(v), _fmt(d), "yes" if f.name in LIVE_SETTINGS else "no"))
        # PgBouncer keys tools read that have no setting here (0: no limit, which is what we do)
        rows += [("max_db_connections", "0", "0", "no"), ("max_user_connections", "0", "0", "no")]
        return result([("key", S), ("value", S), ("default", S), ("changeable", S)], rows)

    def show_mem(self) -> bytes:
        gw = self.gw
        pools = listed_pools(gw)
        servers = sum(p.total_servers() for p in pools)
        stmts = len(getattr(gw.statements, "_by_key", ()) or ())
        rows = [("client_session", 0, len(gw._all_sessions), 0, 0), ("server_connection", 0, servers, 0, 0),
                ("pool", 0, len(pools), 0, 0), ("prepared_statement", 0, stmts, 0, 0)]
        return result([("name", S), ("size", I), ("used", I), ("free", I), ("memtotal", I)], rows)

    def show_state(self) -> bytes:
        pools = list(self.gw.pools.values())
        paused = bool(pools) and all(p.paused for p in pools)
        rows = [("active", "no" if paused or not self.gw.accepting else "yes"),
                ("paused", "yes" if paused else "no"), ("suspended", "no")]
        return result([("key", S), ("value", S)], rows)

    def show_cache(self) -> bytes:  # the result cache's counters (gateway/cache_admin.py)
        return result([("key", S), ("value", I)], cache_admin.show_rows(self.gw))

    def show_listeners(self) -> bytes:  # LISTEN fan-out, one row per channel (gateway/listen_admin.py)
        return result([(c, I if c in ("subscribers", "backlog", "listener_pid") else S)
                       for c in listen_admin.COLUMNS], listen_admin.show_rows(self.gw))
