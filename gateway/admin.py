"""The admin console: PgBouncer's virtual database ``pgbouncer`` (alias ``wirepool``).

Reached through pg_listen and WebSocket /v2 like any database, by the users
listed in ``[gateway] admin_users`` (every command) and ``stats_users`` (the
SHOW commands).  Answered over the simple query protocol as PgBouncer does:
RowDescription (text format, PgBouncer's type OIDs), DataRows, CommandComplete
``SHOW``, ReadyForQuery.  Column names and meanings follow PgBouncer 1.21;
our own concepts are extra columns at the end (docs/admin.md).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import fields as dc_fields, replace
from typing import TYPE_CHECKING, Any, Iterable, Sequence

from driver.protocol import messages as m

from . import cache_admin, listen_admin
from .auth import AuthFailed
from .config import ConfigError, GatewaySettings

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway
    from .pool import Pool
    from .session import Session

log = logging.getLogger("wirepool.gateway.admin")

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
_RFQ = m.ready_for_query("I")
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


class AdminError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


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


class Console:
    """One admin session: runs commands, returns the encoded reply."""

    def __init__(self, session: "Session", admin: bool) -> None:
        self.session = session
        self.gw: "Gateway" = session.gw
        self.admin = admin

    # ------------------------------------------------------------ dispatch
    async def execute(self, sql: str) -> bytes:
        cluster = getattr(self.gw, "cluster", None)
        if cluster is not None and cluster.count > 1:  # every worker's answer (gateway/cluster.py)
            reply: bytes = await cluster.console(self, sql)
            return reply
        return await self.execute_local(sql)

    async def execute_local(self, sql: str) -> bytes:
        text = sql.strip().rstrip(";").strip()
        if not text:
            return b"I\x00\x00\x00\x04"  # EmptyQueryResponse
        try:
            return await self._dispatch(text)
        except AdminError as exc:
            return m.error(exc.sqlstate, exc.message)

    async def _dispatch(self, text: str) -> bytes:
        mset = re.fullmatch(r"(?is)set\s+(\w+)\s*(?:=|\s+to\s+)\s*(.+)", text)
        if mset:
            self._need_admin()
            return self.cmd_set(mset.group(1).lower(), mset.group(2).strip())
        words = text.split()
        verb = words[0].upper()
        args = words[1:]
        if verb == "SHOW":
            if len(args) != 1:
                raise AdminError("42601", "SHOW needs one argument: SHOW HELP lists them")
            fn = getattr(self, "show_" + args[0].lower(), None)
            if fn is None:
                raise AdminError("42601", f"unknown SHOW command: {args[0]}")
            shown: bytes = fn()
            return shown
        fn = getattr(self, "cmd_" + verb.lower(), None)
        if fn is None or verb == "SET":
            raise AdminError("42601", f"unknown command: {words[0]} (SHOW HELP lists the commands)")
        self._need_admin()
        done: bytes = await fn(args)
        return done

    def _need_admin(self) -> None:
        if not self.admin:
            raise AdminError("42501", "admin access needed (this user is only in stats_users)")

    def _pools(self, args: Sequence[str], *, required: bool = False) -> list["Pool"]:
        if not args:
            if required:
                raise AdminError("42601", "this command needs a database name")
            return list(self.gw.pools.values())
        if len(args) > 1:
            raise AdminError("42601", "too many arguments")
        pool = self.gw.pools.get(args[0].strip('"'))
        if pool is None:
            raise AdminError("3D000", f'no such database: {args[0]}')
        return [pool]

    # ---------------------------------------------------------------- SHOW
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
        for p in self.gw.pools.values():
            wait = now - next(iter(p.cl_waiting)).wait_start if p.cl_waiting else 0.0
            rows.append((p.name, p.user, len(p.cl_active), len(p.cl_waiting), 0, 0, len(p.sv_active), 0, 0,
                         len(p.sv_idle), len(p.sv_used), 0, len(p.sv_login), int(wait),
                         int((wait - int(wait)) * 1e6), p.mode, 0, p.size, p.paused))
        rows.append(("pgbouncer", "pgbouncer", self._admin_clients(), 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                     "statement", 0, 0, False))
        return result(cols, rows)

    def _admin_clients(self) -> int:
        return sum(1 for s in self.gw._all_sessions if s.database in ADMIN_DATABASES and s.process_id)

    def _counters(self, p: "Pool") -> tuple[int, int, int, int, int, int, int]:
        """xact_count, query_count, received, sent, xact_time, query_time, wait_time (µs)."""
        xt = int(p.xact_time * 1e6)
        # received/sent: bytes forwarded per read (gateway/observe.py, the same counters as
        # /metrics); query_time is the time linked per transaction (counted at release).
        return p.xact_count, p.query_count, p.obs.bytes_in, p.obs.bytes_out, xt, xt, int(p.wait_time * 1e6)

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
        for p in self.gw.pools.values():
            d = p.db
            rows.append((p.name, d.host, d.port, d.dbname, d.user, p.size, p.min_size, p.reserve,
                         int(g.server_lifetime), p.mode, 0, p.total_servers(), p.paused, p.disabled))
        pg = g.pg_listen
        rows.append(("pgbouncer", None, pg[1] if pg else 0, "pgbouncer", "pgbouncer", 2, 0, 0, 0,
                     "statement", 0, 0, False, False))
        return result(cols, rows)

    def show_lists(self) -> bytes:
        gw = self.gw
        sessions = gw._all_sessions
        logged = sum(1 for s in sessions if s.process_id)
        servers = sum(p.total_servers() for p in gw.pools.values())
        rows = [("databases", len(gw.pools) + 1), ("users", len(gw.config.users)), ("peers", 0),
                ("pools", len(gw.pools) + 1), ("peer_pools", 0), ("free_clients", 0), ("used_clients", logged),
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
        for p in self.gw.pools.values():
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
        rows = [(name, None, 0, 0, counts.get(name, 0), len(u.tokens),
                 name in self.gw.settings.admin_users, name in self.gw.settings.stats_users)
                for name, u in self.gw.config.users.items()]
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
        servers = sum(p.total_servers() for p in gw.pools.values())
        stmts = len(getattr(gw.statements, "_by_key", ()) or ())
        rows = [("client_session", 0, len(gw._all_sessions), 0, 0), ("server_connection", 0, servers, 0, 0),
                ("pool", 0, len(gw.pools), 0, 0), ("prepared_statement", 0, stmts, 0, 0)]
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

    # ------------------------------------------------------------ commands
    async def cmd_cache_invalidate(self, args: Sequence[str]) -> bytes:
        if not args:
            raise AdminError("42601", "CACHE_INVALIDATE needs tags (or * for everything)")
        return m.notice_response({"S": "NOTICE", "V": "NOTICE", "C": "00000",
                                  "M": f"{cache_admin.admin_invalidate(self.gw, args)} entries invalidated"}
                                 ) + m.command_complete("CACHE_INVALIDATE")

    async def cmd_pause(self, args: Sequence[str]) -> bytes:
        pools = self._pools(args)
        if all(p.paused for p in pools):
            raise AdminError("08P01", "already suspended/paused")
        for p in pools:
            p.paused = True
        # Like PgBouncer, PAUSE returns once running transactions are done.
        while any(p.sv_active for p in pools) and all(p.paused for p in pools):
            await asyncio.sleep(0.02)
        return m.command_complete("PAUSE")

    async def cmd_resume(self, args: Sequence[str]) -> bytes:
        pools = self._pools(args)
        if not any(p.paused for p in pools):
            raise AdminError("08P01", "pooler is not paused/suspended")
        for p in pools:
            p.resume()
        return m.command_complete("RESUME")

    async def cmd_disable(self, args: Sequence[str]) -> bytes:
        for p in self._pools(args, required=True):
            p.disabled = True
        return m.command_complete("DISABLE")

    async def cmd_enable(self, args: Sequence[str]) -> bytes:
        for p in self._pools(args, required=True):
            p.disabled = False
        return m.command_complete("ENABLE")

    async def cmd_reconnect(self, args: Sequence[str]) -> bytes:
        for p in self._pools(args):
            p.expire_servers()
        return m.command_complete("RECONNECT")

    async def cmd_kill(self, args: Sequence[str]) -> bytes:
        pools = self._pools(args, required=True)
        for p in pools:
            p.paused = True  # new clients wait for RESUME, as in PgBouncer
            for s in list(self.gw._all_sessions):
                if s.pool is p:
                    s.terminate("57P01", "terminating connection due to administrator command (KILL)")
            p.expire_servers()
        return m.command_complete("KILL")

    async def cmd_kill_client(self, args: Sequence[str]) -> bytes:
        if len(args) != 1 or not args[0].isdigit():
            raise AdminError("42601", "KILL_CLIENT needs a client id (the id column of SHOW CLIENTS)")
        s = self.gw.sessions.get(int(args[0]))
        if s is None:
            raise AdminError("08P01", f"client {args[0]} not found")
        s.terminate("57P01", "terminating connection due to administrator command (KILL_CLIENT)")
        return m.command_complete("KILL_CLIENT")

    async def cmd_wait_close(self, args: Sequence[str]) -> bytes:
        pools = self._pools(args)
        while any(sv.created == float("-inf") for p in pools for lst in (p.sv_active, p.sv_used) for sv in lst):
            await asyncio.sleep(0.05)
        return m.command_complete("WAIT_CLOSE")

    async def cmd_reload(self, args: Sequence[str]) -> bytes:
        from .reload import reload_from_file
        ok, message = reload_from_file(self.gw)
        if not ok:
            raise AdminError("F0000", f"RELOAD failed, the running configuration is kept: {message}")
        return m.notice_response({"S": "LOG", "V": "LOG", "C": "00000", "M": f"reload: {message}"}) + \
            m.command_complete("RELOAD")

    async def cmd_shutdown(self, args: Sequence[str]) -> bytes:
        mode = args[0].upper() if args else ""
        if mode not in ("", "WAIT_FOR_SERVERS", "WAIT_FOR_CLIENTS"):
            raise AdminError("42601", "SHUTDOWN [WAIT_FOR_SERVERS|WAIT_FOR_CLIENTS]")
        gw = self.gw
        hook = getattr(gw, "shutdown_hook", None)
        timeout = 0.0 if mode == "" else gw.settings.shutdown_timeout
        gw.loop.call_later(0.05, lambda: hook(timeout, mode) if hook is not None else gw.spawn(gw.shutdown(timeout)))
        return m.command_complete("SHUTDOWN")

    def cmd_set(self, key: str, raw: str) -> bytes:
        if key not in LIVE_SETTINGS:
            raise AdminError("55P02", f'setting "{key}" cannot be changed on a running gateway'
                             if hasattr(GatewaySettings, key) else f'unknown setting "{key}"')
        from .config import _parse_gateway
        from .reload import apply_settings
        text = raw.strip().strip("'\"")
        current = getattr(self.gw.settings, key)
        try:
            value: Any = int(text) if isinstance(current, int) else float(text) if isinstance(current, float) \
                else text
            parsed = _parse_gateway({key: value}, None)
            apply_settings(self.gw, replace(self.gw.settings, **{key: getattr(parsed, key)}))
        except ValueError:
            raise AdminError("22023", f'invalid value for "{key}": {raw}') from None
        except (ConfigError, TypeError) as exc:
            raise AdminError("22023", str(exc)) from None
        return m.command_complete("SET")


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


async def serve_console(session: "Session", prefix: bytes) -> None:
    """Run an admin session to its end (called by Session._startup after login)."""
    gw = session.gw
    s = gw.settings
    admin = session.user in s.admin_users
    if not admin and session.user not in s.stats_users:
        raise AuthFailed("28000", f'user "{session.user}" is not allowed to use the admin console '
                                  "(gateway.admin_users / gateway.stats_users)")
    gw.register_session(session)
    params = {"server_version": f"{PGBOUNCER_VERSION}/bouncer", "client_encoding": "UTF8",
              "server_encoding": "UTF8", "DateStyle": "ISO", "TimeZone": "UTC",
              "standard_conforming_strings": "on", "integer_datetimes": "on",
              "application_name": session.params.get("application_name", "")}
    await session.stream.send(b"".join([prefix, m.authentication_ok(),
                                        *(m.parameter_status(k, v) for k, v in params.items()),
                                        m.backend_key_data(session.process_id, session.secret_key), _RFQ]))
    console = Console(session, admin)
    failed = False
    while True:
        mtype, body = await session._next_message()
        if mtype == 88:  # 'X' Terminate
            return
        if mtype == 81:  # 'Q'
            sql = body.rstrip(b"\x00").decode("utf-8", "replace")
            await session.stream.send(await console.execute(sql) + _RFQ)
        elif mtype == 83:  # 'S' Sync ends an (unsupported) extended-protocol batch
            failed = False
            await session.stream.send(_RFQ)
        elif not failed:
            failed = True
            await session.stream.send(m.error("08P01", "the admin console supports only the simple query protocol"))
