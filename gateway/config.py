"""Gateway configuration: a TOML file read with :mod:`tomllib`, validated strictly.

Setting names, meanings and defaults follow PgBouncer's where it has the same
concept.  Every problem -- an unknown key, a wrong type, an impossible value --
raises :class:`ConfigError` naming the dotted key path (``databases.app.port``)
and the reason, so ``wirepool check`` can print ``error: <key>: <reason>``.

Types: where a float is expected an int is accepted (``30`` means 30.0 s); a
bool is never accepted as a number.  Durations are seconds.

This module reads and validates the file (PgBouncer's ``loader.c``); the settings
dataclasses are :mod:`gateway.config_model`, single values
:mod:`gateway.config_values`, the effective-settings display
:mod:`gateway.config_display`.  Everything callers need is importable from here.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any, Mapping

from gateway.config_display import config_to_display, display_to_toml
from gateway.config_model import (AUTH_TYPES, CACHE_MODES, LOG_LEVELS, MASK, MIN_MESSAGE_SIZE, POOL_MODES,
                                  SCRAM_PREFIX, SSL_MODES, Config, ConfigError, DatabaseConfig,
                                  GatewaySettings, UserConfig)
from gateway.config_values import (MAX_PEER_ID, _choice, _env_ref, _float, _int, _is_valid_scram_verifier, _path,
                                   _str, _str_list, _table, _tname, _unknown, check_peering, format_address,
                                   parse_address, parse_advertise_url, parse_peers, parse_workers)
from gateway.tokens import TokenSpecError, spec_digest

__all__ = [
    "AUTH_TYPES", "POOL_MODES", "LOG_LEVELS", "ConfigError", "GatewaySettings",
    "DatabaseConfig", "UserConfig", "Config", "load_config", "parse_config",
    "config_to_display", "display_to_toml", "format_address", "parse_address", "MASK",
]


_FLOAT_SETTINGS = {f.name for f in fields(GatewaySettings) if f.type in ("float", float)}
_POSITIVE_FLOATS = {"stats_period", "server_connect_timeout", "sql_timeout", "http_session_timeout", "listen_heartbeat",
                    "http_idle_session_timeout", "auth_failure_window"}
_INT_MIN = {
    "max_client_conn": 1,
    "default_pool_size": 1,
    "min_pool_size": 0,
    "reserve_pool_size": 0,
    "max_prepared_statements": 0,
    "tcp_socket_buffer": 0,
    "max_message_size": MIN_MESSAGE_SIZE,
    "sql_max_request_size": MIN_MESSAGE_SIZE,
    "sql_max_response_size": MIN_MESSAGE_SIZE,
    "http_max_batch_messages": 1,
    "max_login_clients": 0,
    "login_buffer_size": MIN_MESSAGE_SIZE,
    "max_http_conn": 0,
    "http_min_body_rate": 0,
    "http_max_response_size": MIN_MESSAGE_SIZE,
    "auth_max_concurrent": 1,
    "auth_failure_free": 0,
    "listen_queue_bytes": MIN_MESSAGE_SIZE,
    "listen_max_channels_per_client": 0,
    "listen_max_clients_per_channel": 0,
    "listen_backlog": 0,
    "listen_backlog_bytes": 0,
    "cache_max_bytes": 0,
    "cache_max_entry_bytes": 0,
}
_INT_MAX = {"max_message_size": 1 << 30, "sql_max_request_size": 1 << 30, "sql_max_response_size": 1 << 30,
            "http_max_response_size": 1 << 30}
_GATEWAY_KEYS = frozenset(f.name for f in fields(GatewaySettings))
_DB_KEYS = frozenset({"host", "port", "dbname", "user", "password", "pool_size", "pool_mode",
                      "min_pool_size", "reserve_pool_size", "sslmode", "sslrootcert",
                      "cache", "cache_ttl", "cache_swr", "auth_user", "auth_query", "auth_dbname"})
_USER_KEYS = frozenset({"password", "tokens"})
_TOP_KEYS = frozenset({"gateway", "databases", "users"})


def _parse_gateway(raw: Mapping[str, Any], base_dir: Path | None) -> GatewaySettings:
    _unknown(raw, _GATEWAY_KEYS, "gateway")
    kw: dict[str, Any] = {}
    for name, value in raw.items():
        key = f"gateway.{name}"
        if name == "listen":
            kw[name] = parse_address(value, key)
        elif name == "pg_listen":
            # "" disables it explicitly (TOML has no null).
            kw[name] = None if value == "" else parse_address(value, key)
        elif name == "auth_type":
            kw[name] = _choice(value, key, AUTH_TYPES)
        elif name == "pool_mode":
            kw[name] = _choice(value, key, POOL_MODES)
        elif name == "log_level":
            kw[name] = _choice(value.lower() if isinstance(value, str) else value, key, LOG_LEVELS)
        elif name in _INT_MIN:
            kw[name] = _int(value, key, minimum=_INT_MIN[name], maximum=_INT_MAX.get(name))
        elif name in _FLOAT_SETTINGS:
            kw[name] = _float(value, key, positive=name in _POSITIVE_FLOATS)
        elif name in ("tls_cert_file", "tls_key_file"):
            kw[name] = _path(value, key, base_dir, must_exist=True)
        elif name in ("admin_users", "stats_users"):
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            kw[name] = _str_list(value, key, "a list of user names")
        elif name in ("pid_file", "control_socket"):
            kw[name] = _path(value, key, base_dir)
        elif name == "server_reset_query":
            kw[name] = _str(value, key)  # "" disables the reset
        elif name == "server_reset_query_always":
            if not isinstance(value, bool):
                raise ConfigError(key, f"expected true or false, got {_tname(value)}")
            kw[name] = value
        elif name == "server_check_query":
            kw[name] = _str(value, key)  # "" disables the check
        elif name == "workers":
            kw[name] = parse_workers(value, key)
        elif name == "advertise_url":
            kw[name] = parse_advertise_url(value, key)
        elif name == "cluster_secret":
            kw[name] = _env_ref(_str(value, key, nonempty=True), key)
            if len(kw[name]) < 16:
                raise ConfigError(key, "must be at least 16 characters (it signs session tokens)")
        elif name == "cache_channel":
            kw[name] = _str(value, key)  # "" disables the channel
        elif name in ("auth_user", "auth_query", "auth_dbname"):
            kw[name] = _auth_key(name, value, key)
        elif name == "peer_id":
            if isinstance(value, str):  # "${PEER_ID}": e.g. a StatefulSet pod's ordinal
                value = _env_ref(value, key)
                value = int(value) if value.strip().isdigit() else value
            kw[name] = _int(value, key, minimum=0, maximum=MAX_PEER_ID)
        elif name == "peers":
            kw[name] = parse_peers(value, key)
        else:  # pragma: no cover - every field is handled above
            raise ConfigError(key, "unknown key")
    g = GatewaySettings(**kw)
    if g.advertise_url is not None and g.cluster_secret is None:
        raise ConfigError("gateway.cluster_secret", "required with advertise_url (the instances must share it)")
    check_peering(g)
    if g.min_pool_size > g.default_pool_size:
        raise ConfigError("gateway.min_pool_size",
                          f"must not exceed default_pool_size ({g.min_pool_size} > {g.default_pool_size})")
    if (g.tls_cert_file is None) != (g.tls_key_file is None):
        missing = "tls_key_file" if g.tls_key_file is None else "tls_cert_file"
        raise ConfigError(f"gateway.{missing}", "tls_cert_file and tls_key_file must be set together")
    if g.pg_listen is not None and g.pg_listen[1] != 0 and g.pg_listen[1] == g.listen[1]:
        h1, h2 = g.listen[0], g.pg_listen[0]
        wild = ("0.0.0.0", "::", "*")
        if h1 == h2 or h1 in wild or h2 in wild:
            raise ConfigError("gateway.pg_listen",
                              f"port {g.pg_listen[1]} is already used by gateway.listen")
    return g


def _auth_key(name: str, value: Any, key: str) -> str:
    """``auth_user`` / ``auth_dbname`` (non-empty) and ``auth_query`` (one ``$1`` parameter)."""
    v = _str(value, key, nonempty=True)
    if name == "auth_query" and "$1" not in v:
        raise ConfigError(key, "must take the user name as $1 and return (user name, password)")
    return v


def _parse_database(name: str, raw: Mapping[str, Any], g: GatewaySettings,
                    base_dir: Path | None = None) -> DatabaseConfig:
    prefix = f"databases.{name}"
    if not name.strip():
        raise ConfigError(prefix, "database name must not be empty")
    _unknown(raw, _DB_KEYS, prefix)
    kw: dict[str, Any] = {"name": name}
    if "host" in raw:
        kw["host"] = _str(raw["host"], f"{prefix}.host", nonempty=True)
    if "port" in raw:
        kw["port"] = _int(raw["port"], f"{prefix}.port", minimum=1, maximum=65535)
    if "dbname" in raw:
        kw["dbname"] = _str(raw["dbname"], f"{prefix}.dbname", nonempty=True)
    for k in ("auth_user", "auth_query", "auth_dbname"):
        if k in raw:
            kw[k] = _auth_key(k, raw[k], f"{prefix}.{k}")
    if "user" in raw:
        kw["user"] = _str(raw["user"], f"{prefix}.user", nonempty=True)
    elif not (kw.get("auth_user") or g.auth_user):
        raise ConfigError(f"{prefix}.user", "required (the upstream role the pool logs in as; "
                                            "without it, with auth_user, each client logs in as itself)")
    if "password" in raw:
        kw["password"] = _str(raw["password"], f"{prefix}.password")
    if "pool_size" in raw:
        kw["pool_size"] = _int(raw["pool_size"], f"{prefix}.pool_size", minimum=1)
    if "pool_mode" in raw:
        kw["pool_mode"] = _choice(raw["pool_mode"], f"{prefix}.pool_mode", POOL_MODES)
    if "min_pool_size" in raw:
        kw["min_pool_size"] = _int(raw["min_pool_size"], f"{prefix}.min_pool_size", minimum=0)
    if "reserve_pool_size" in raw:
        kw["reserve_pool_size"] = _int(raw["reserve_pool_size"], f"{prefix}.reserve_pool_size", minimum=0)
    if "sslmode" in raw:
        kw["sslmode"] = _choice(raw["sslmode"], f"{prefix}.sslmode", SSL_MODES)
    if "sslrootcert" in raw:
        kw["sslrootcert"] = _path(raw["sslrootcert"], f"{prefix}.sslrootcert", base_dir, must_exist=True)
    if "cache" in raw:
        kw["cache"] = _choice(raw["cache"], f"{prefix}.cache", CACHE_MODES)
    for k in ("cache_ttl", "cache_swr"):
        if k in raw:
            kw[k] = _float(raw[k], f"{prefix}.{k}")
    db = DatabaseConfig(**kw)
    size, min_size = db.effective_pool_size(g), db.effective_min_pool_size(g)
    if size < g.workers:
        key = f"{prefix}.pool_size" if db.pool_size is not None else "gateway.default_pool_size"
        raise ConfigError(key, f"pool size {size} is smaller than workers = {g.workers}: "
                               "every worker needs at least one server (docs/scaling.md)")
    if min_size > size:
        key = f"{prefix}.min_pool_size" if db.min_pool_size is not None else f"{prefix}.pool_size"
        raise ConfigError(key, f"min_pool_size ({min_size}) must not exceed the pool size ({size})")
    return db


def _parse_user(name: str, raw: Mapping[str, Any], g: GatewaySettings) -> UserConfig:
    prefix = f"users.{name}"
    if not name.strip():
        raise ConfigError(prefix, "user name must not be empty")
    _unknown(raw, _USER_KEYS, prefix)
    password: str | None = None
    if "password" in raw:
        password = _str(raw["password"], f"{prefix}.password")
    tokens: list[str] = []
    if "tokens" in raw:
        tokens = list(_str_list(raw["tokens"], f"{prefix}.tokens", "an array of strings"))
        for i, t in enumerate(tokens):
            try:
                spec_digest(t)  # plaintext or "sha256:<hex>" (gateway/tokens.py)
            except TokenSpecError as e:
                raise ConfigError(f"{prefix}.tokens[{i}]", str(e)) from None
        if len({spec_digest(t) for t in tokens}) != len(tokens):
            raise ConfigError(f"{prefix}.tokens", "duplicate token")
    pkey = f"{prefix}.password"
    if password is not None:
        if password == "":
            raise ConfigError(pkey, "must not be empty (omit it for trust or token-only users)")
        if password.startswith(SCRAM_PREFIX):
            if not _is_valid_scram_verifier(password):
                raise ConfigError(pkey, "malformed SCRAM-SHA-256 verifier")
            if g.auth_type == "md5":
                raise ConfigError(pkey, "a SCRAM-SHA-256 verifier cannot be used with auth_type = \"md5\" "
                                        "(store the plaintext password, or use scram-sha-256/password)")
    elif g.auth_type != "trust" and not tokens:
        raise ConfigError(pkey, f"required with auth_type = {g.auth_type!r}")
    return UserConfig(name=name, password=password, tokens=tuple(tokens))


def parse_config(data: Mapping[str, Any], *, base_dir: str | os.PathLike[str] | None = None) -> Config:
    """Validate an already-parsed TOML document.  ``base_dir`` resolves relative file paths."""
    top = _table(data, "")
    _unknown(top, _TOP_KEYS, "")
    bd = Path(base_dir) if base_dir is not None else None
    g = _parse_gateway(_table(top.get("gateway", {}), "gateway"), bd)

    raw_dbs = _table(top.get("databases", {}), "databases")
    if not raw_dbs:
        raise ConfigError("databases", "at least one [databases.<name>] section is required")
    dbs: dict[str, DatabaseConfig] = {}
    for name, raw in raw_dbs.items():
        dbs[name] = _parse_database(name, _table(raw, f"databases.{name}"), g, bd)

    raw_users = _table(top.get("users", {}), "users")
    users: dict[str, UserConfig] = {}
    seen_tokens: dict[bytes, str] = {}
    for name, raw in raw_users.items():
        u = _parse_user(name, _table(raw, f"users.{name}"), g)
        for t in u.tokens:
            d = spec_digest(t)
            if d in seen_tokens:
                raise ConfigError(f"users.{name}.tokens", f"token also belongs to user {seen_tokens[d]!r}")
            seen_tokens[d] = name
        users[name] = u
    return Config(gateway=g, databases=dbs, users=users)


def load_config(path: str | os.PathLike[str]) -> Config:
    """Read and validate a TOML config file.  Raises :class:`ConfigError`."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError("", f"config file not found: {str(p)!r}") from None
    except OSError as e:
        raise ConfigError("", f"cannot read config file {str(p)!r}: {e.strerror or e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("", f"invalid TOML in {str(p)!r}: {e}") from None
    return parse_config(data, base_dir=p.resolve().parent)
