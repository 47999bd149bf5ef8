"""The admin console: PgBouncer's virtual database ``pgbouncer`` (alias ``wirepool``).

Reached through pg_listen and WebSocket /v2 like any database, by the users
listed in ``[gateway] admin_users`` (every command) and ``stats_users`` (the
SHOW commands).  Answered over the simple query protocol as PgBouncer does:
RowDescription (text format, PgBouncer's type OIDs), DataRows, CommandComplete
``SHOW``, ReadyForQuery.  Column names and meanings follow PgBouncer 1.21;
our own concepts are extra columns at the end (docs/admin.md).  The SHOW
commands are gateway/admin_show.py; this module runs the console and its
other commands (PAUSE, RESUME, KILL, SET, RELOAD, ...).
"""

from __future__ import annotations

import asyncio
import logging
import re
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Sequence

from driver.protocol import messages as m

from . import cache_admin
from .admin_show import (ADMIN_DATABASES, HELP, LIVE_SETTINGS, PGBOUNCER_VERSION, WIREPOOL_VERSION, ShowCommands,
                         database_pools, result)
from .auth import AuthFailed
from .config import ConfigError, GatewaySettings

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway
    from .pool import Pool
    from .session import Session

__all__ = ["ADMIN_DATABASES", "HELP", "LIVE_SETTINGS", "PGBOUNCER_VERSION", "WIREPOOL_VERSION", "AdminError",
           "Console", "result", "serve_console"]

log = logging.getLogger("wirepool.gateway.admin")
_RFQ = m.ready_for_query("I")


class AdminError(Exception):
    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class Console(ShowCommands):
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
        """The pools a command acts on: every pool, or those of one database
        (its own and its per-user pools, gateway/auth_query.py)."""
        if not args:
            if required:
                raise AdminError("42601", "this command needs a database name")
            return [q for name in self.gw.pools for q in database_pools(self.gw, name)]
        if len(args) > 1:
            raise AdminError("42601", "too many arguments")
        name = args[0].strip('"')
        if name not in self.gw.pools:
            raise AdminError("3D000", f'no such database: {args[0]}')
        return database_pools(self.gw, name)

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
