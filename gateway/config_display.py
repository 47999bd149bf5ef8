"""The effective configuration as plain data (``wirepool check``), secrets masked, and as TOML."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, Mapping

from gateway.config_model import MASK, Config, GatewaySettings
from gateway.config_values import format_address

__all__ = ["config_to_display", "display_to_toml"]


def config_to_display(cfg: Config) -> dict[str, Any]:
    """The effective settings (defaults filled in) as plain data, secrets masked."""
    g = cfg.gateway
    gw: dict[str, Any] = {}
    for f in fields(GatewaySettings):
        v = getattr(g, f.name)
        if f.name in ("listen", "pg_listen"):
            v = "" if v is None else format_address(v)
        elif f.name == "cluster_secret" and v is not None:
            v = MASK
        elif f.name == "peers":
            v = {str(k): u for k, u in v}
        elif isinstance(v, tuple):
            v = list(v)
        gw[f.name] = v
    dbs: dict[str, Any] = {}
    for name, d in cfg.databases.items():
        dbs[name] = {
            "host": d.host, "port": d.port, "dbname": d.dbname, "user": d.user,
            "password": None if d.password is None else MASK,
            "pool_size": d.effective_pool_size(g), "pool_mode": d.effective_pool_mode(g),
            "min_pool_size": d.effective_min_pool_size(g),
            "reserve_pool_size": d.effective_reserve_pool_size(g),
            "sslmode": d.sslmode, "sslrootcert": d.sslrootcert,
            "cache": d.cache, "cache_ttl": d.cache_ttl, "cache_swr": d.cache_swr,
            "auth_user": d.auth_user, "auth_query": d.auth_query, "auth_dbname": d.auth_dbname,
        }
    users: dict[str, Any] = {}
    for name, u in cfg.users.items():
        entry: dict[str, Any] = {"password": None if u.password is None else MASK}
        if u.password is not None:
            entry["password_kind"] = "scram-sha-256 verifier" if u.is_scram_verifier else "plaintext"
        entry["tokens"] = [MASK] * len(u.tokens)
        users[name] = entry
    return {"gateway": gw, "databases": dbs, "users": users}


def _toml_key(k: str) -> str:
    import re
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else _toml_str(k)


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def display_to_toml(display: Mapping[str, Any]) -> str:
    """Render :func:`config_to_display` output as TOML (``None`` values are omitted)."""
    lines: list[str] = []

    def section(header: str, body: Mapping[str, Any]) -> None:
        lines.append(f"[{header}]")
        for k, v in body.items():
            if v is None:
                lines.append(f"# {k} = (not set)")
            else:
                lines.append(f"{_toml_key(k)} = {_toml_value(v)}")
        lines.append("")

    section("gateway", display["gateway"])
    for name, body in display["databases"].items():
        section(f"databases.{_toml_key(name)}", body)
    for name, body in display["users"].items():
        section(f"users.{_toml_key(name)}", body)
    return "\n".join(lines)
