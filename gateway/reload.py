"""Live reload: SIGHUP or the admin command RELOAD re-reads the TOML.

Invalid file: the running configuration stays, the error is logged with its
key path.  Valid file: every change is applied without dropping a client
(docs/reload.md):

* pool sizes up or down -- a shrink closes idle servers first; a linked server
  is closed when its transaction ends, never in the middle of it;
* timeouts and other [gateway] settings (new values seen by the janitor and by
  new sessions at once);
* [users] and tokens -- sessions of removed users end after their current
  transaction;
* databases added, removed (drained: idle clients go at once, the others when
  their transaction ends, then the pool closes) and changed (host/port/...:
  new servers go to the new upstream, old ones are closed as they come back);
* pool_mode (new sessions), max_prepared_statements (new sessions).

Settings bound to open sockets (listen, pg_listen, TLS files) need a restart:
a change to them is logged and ignored.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any

from .config import Config, ConfigError, DatabaseConfig, GatewaySettings, load_config

if TYPE_CHECKING:  # pragma: no cover
    from .core import Gateway

log = logging.getLogger("wirepool.gateway.reload")

#: [gateway] settings that need a restart (bound to listening sockets or the process)
RESTART_ONLY = ("listen", "pg_listen", "tls_cert_file", "tls_key_file", "tls_reload_interval", "pid_file",
                "control_socket", "auth_max_concurrent", "workers", "advertise_url", "cluster_secret", "peer_id")
_UPSTREAM = ("host", "port", "dbname", "user", "password", "sslmode", "sslrootcert")


def reload_from_file(gw: "Gateway", path: str | None = None) -> tuple[bool, str]:
    """Re-read ``path`` (default: the file the gateway was started with) and
    apply it.  Returns (ok, one-line summary or the error)."""
    path = path or getattr(gw, "config_path", None)
    if not path:
        msg = "the gateway was not started from a configuration file"
        log.error("reload: %s", msg)
        return False, msg
    try:
        cfg = load_config(path)
    except ConfigError as exc:
        log.error("reload: %s: %s -- keeping the running configuration", path, exc)
        return False, str(exc)
    transform = getattr(gw, "config_transform", None)
    if transform is not None:  # a worker's share of the pools (gateway/workers.py)
        cfg = transform(cfg)
    summary = apply_config(gw, cfg)
    log.info("reload: %s", summary)
    return True, summary


def apply_config(gw: "Gateway", new: Config) -> str:
    """Apply a validated configuration to a running gateway; returns the summary."""
    old: Config = gw.config
    og, ng = old.gateway, new.gateway
    changes: list[str] = []
    kept = {k: getattr(og, k) for k in RESTART_ONLY if getattr(og, k) != getattr(ng, k)}
    for k in kept:
        log.warning("reload: gateway.%s changed: it takes effect at the next restart", k)
    ng = replace(ng, **kept)
    for f in fields(GatewaySettings):
        a, b = getattr(og, f.name), getattr(ng, f.name)
        if a != b and f.name != "log_level":
            changes.append(f"{f.name} {a}->{b}")
    gw.config = replace(new, gateway=ng)
    apply_settings(gw, ng, update_pools=False)
    if old.users != new.users or og.auth_type != ng.auth_type:
        changes += _apply_users(gw, old, new)
    changes += _apply_databases(gw, old.databases, new.databases)
    return "; ".join(changes) if changes else "no changes"


def apply_settings(gw: "Gateway", g: GatewaySettings, *, update_pools: bool = True) -> None:
    """New [gateway] settings: the janitor, new sessions and every pool see them."""
    from .core import _janitor_interval
    gw.settings = g
    gw.config = replace(gw.config, gateway=g)
    gw.interval = _janitor_interval(g)
    gw.limits.update(g)
    logging.getLogger("wirepool").setLevel(g.log_level.upper())
    for name, pool in gw.pools.items():
        db = gw.config.databases.get(name, pool.db)
        _update_pool(pool, db, g)
    from .cache_upstream import apply_settings as apply_cache_settings
    apply_cache_settings(gw, g)  # byte budgets, notification channel (gateway/cache_hook.py)


def _update_pool(pool: Any, db: DatabaseConfig, g: GatewaySettings) -> None:
    from driver.protocol import messages as m
    upstream_changed = any(getattr(pool.db, k) != getattr(db, k) for k in _UPSTREAM)
    pool.db = db
    pool.user = db.user
    pool.settings = g
    pool.size = db.effective_pool_size(g)
    pool.mode = db.effective_pool_mode(g)
    pool.transaction_mode = pool.mode == "transaction"
    pool.min_size = db.effective_min_pool_size(g)
    pool.reserve = db.effective_reserve_pool_size(g)
    pool._check_sql = m.query(g.server_check_query) if g.server_check_query else b""
    if upstream_changed:
        pool.last_login_error = None
        pool.expire_servers()  # new servers go to the new upstream; linked ones close on release
    pool.resize()


def _apply_users(gw: "Gateway", old: Config, new: Config) -> list[str]:
    from .auth import Authenticator
    fresh = Authenticator(new.gateway.auth_type, new.users, new.gateway)
    auth = gw.authenticator
    auth.auth_type = fresh.auth_type
    auth._entries = fresh._entries
    auth._dummy_verifier = fresh._dummy_verifier
    auth.tokens = fresh.tokens
    fresh.close()
    added = sorted(set(new.users) - set(old.users))
    removed = sorted(set(old.users) - set(new.users))
    changed = sorted(u for u in set(old.users) & set(new.users) if old.users[u] != new.users[u])
    if removed:
        gone = set(removed)
        _drain(gw, [s for s in gw._all_sessions if s.user in gone], "user removed by a configuration reload")
    out = []
    if added:
        out.append("users +" + ",".join(added))
    if removed:
        out.append("users -" + ",".join(removed))
    if changed:
        out.append("users changed " + ",".join(changed))
    return out


def _apply_databases(gw: "Gateway", old: dict[str, DatabaseConfig], new: dict[str, DatabaseConfig]) -> list[str]:
    from .pool import Pool
    out = []
    for name in sorted(set(new) - set(old)):
        gw.pools[name] = Pool(gw, new[name], gw.settings)
        out.append(f"database +{name}")
    for name in sorted(set(old) - set(new)):
        pool = gw.pools.pop(name, None)
        # its own pool, and the per-user pools of a database without `user` (gateway/auth_query.py)
        users = gw.auth_query.user_pools
        pools = [pool] + [users.pop(k) for k in [k for k in users if k[0] == name]]
        for p in pools:
            if p is not None:
                sessions = [s for s in gw._all_sessions if s.pool is p]
                _drain(gw, sessions, f'database "{name}" removed by a configuration reload', p)
        out.append(f"database -{name}")
    for name in sorted(set(old) & set(new)):
        if old[name] != new[name] and name in gw.pools:
            _update_pool(gw.pools[name], new[name], gw.settings)
            out.append(f"database ~{name}")
    return out


def _drain(gw: "Gateway", sessions: list[Any], why: str, pool: Any = None) -> None:
    """End ``sessions`` when they are outside a transaction; then close ``pool``."""
    async def run() -> None:
        left = list(sessions)
        while left:
            for s in left:
                if not s.in_transaction():
                    s.terminate("57P01", f"terminating connection: {why}")
            left = [s for s in left if s in gw._all_sessions and not s._finished]
            if left:
                await asyncio.sleep(0.05)
        if pool is not None:
            await pool.close()
    gw.spawn(run())


# ------------------------------------------------------------- wirepool reload
def write_pid_file(path: str | None) -> None:
    if path:
        with open(path, "w") as f:
            f.write(f"{os.getpid()}\n")


def remove_pid_file(path: str | None) -> None:
    if path:
        try:
            with open(path) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(path)
        except OSError:
            pass


def signal_reload(pid_file: str) -> int:
    """``wirepool reload``: SIGHUP to the pid in ``pid_file``; returns the pid."""
    with open(pid_file) as f:
        pid = int(f.read().strip())
    os.kill(pid, signal.SIGHUP)
    return pid
