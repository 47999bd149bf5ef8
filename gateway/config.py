"""Gateway configuration: a TOML file read with :mod:`tomllib`, validated strictly.

Setting names, meanings and defaults follow PgBouncer's where it has the same
concept.  Every problem -- an unknown key, a wrong type, an impossible value --
raises :class:`ConfigError` naming the dotted key path (``databases.app.port``)
and the reason, so ``wirepool check`` can print ``error: <key>: <reason>``.

Types: where a float is expected an int is accepted (``30`` means 30.0 s); a
bool is never accepted as a number.  Durations are seconds.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Mapping

from gateway.tokens import TokenSpecError, spec_digest

__all__ = [
    "AUTH_TYPES", "POOL_MODES", "LOG_LEVELS", "ConfigError", "GatewaySettings",
    "DatabaseConfig", "UserConfig", "Config", "load_config", "parse_config",
    "config_to_display", "format_address", "parse_address", "MASK",
]

AUTH_TYPES = ("scram-sha-256", "password", "md5", "trust")
POOL_MODES = ("transaction", "session")
SSL_MODES = ("disable", "prefer", "require", "verify-ca", "verify-full")
CACHE_MODES = ("off", "hint", "auto")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
MASK = "***"
SCRAM_PREFIX = "SCRAM-SHA-256$"
MIN_MESSAGE_SIZE = 1024


class ConfigError(Exception):
    """A configuration problem at ``key`` (a dotted path; ``""`` = the whole file)."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


# --------------------------------------------------------------------------- model

@dataclass(frozen=True)
class GatewaySettings:
    listen: tuple[str, int] = ("127.0.0.1", 8432)
    pg_listen: tuple[str, int] | None = None
    auth_type: str = "scram-sha-256"
    max_client_conn: int = 10000
    pool_mode: str = "transaction"
    default_pool_size: int = 20
    min_pool_size: int = 0
    reserve_pool_size: int = 0
    reserve_pool_timeout: float = 5.0
    query_wait_timeout: float = 120.0
    client_login_timeout: float = 15.0
    #: Connections still logging in (accept .. AuthenticationOk) at once; 0 = auto
    #: (a quarter of the open-file limit, at most 1000).  Past it: FATAL 53300.
    max_login_clients: int = 0
    #: Bytes buffered for one connection that has not logged in yet.
    login_buffer_size: int = 131072
    #: A client message (post-login) must arrive completely within this many
    #: seconds of its first byte (0 = no limit).
    client_message_timeout: float = 60.0
    #: HTTP connections (not upgraded to WebSocket) open at once; 0 = auto (half
    #: of the open-file limit).  They also count toward max_client_conn.
    max_http_conn: int = 0
    #: An HTTP request body must arrive at this many bytes per second or more,
    #: after client_login_timeout of grace (0 = no minimum).
    http_min_body_rate: int = 4096
    server_connect_timeout: float = 15.0
    server_login_retry: float = 15.0
    server_idle_timeout: float = 600.0
    server_lifetime: float = 3600.0
    idle_transaction_timeout: float = 60.0
    query_timeout: float = 0.0
    client_idle_timeout: float = 0.0
    server_reset_query: str = "DISCARD ALL"
    #: Run server_reset_query in transaction mode too, at every release (PgBouncer's key).
    server_reset_query_always: bool = False
    server_check_delay: float = 30.0
    server_check_query: str = "select 1"
    max_prepared_statements: int = 200
    #: SO_SNDBUF and SO_RCVBUF of client (pg_listen, WebSocket) and server sockets, in
    #: bytes (PgBouncer's key); 0 = the OS default (autotuning).  Bounds what the kernel
    #: holds for a slow client (docs/pooling-semantics.md, "Read-ahead of a slow client").
    tcp_socket_buffer: int = 0
    max_message_size: int = 16777216
    # Neon-compatible POST /sql (gateway/neon_sql.py): request body (413) and response (507) caps, time per request.
    sql_max_request_size: int = 10485760
    sql_max_response_size: int = 10485760
    sql_timeout: float = 15.0
    shutdown_timeout: float = 30.0
    #: seconds over which the admin SHOW STATS avg_* columns are averaged (PgBouncer's)
    stats_period: float = 60.0
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    #: Seconds between checks of the certificate files for changes (0 = only on SIGHUP).
    tls_reload_interval: float = 5.0
    #: Password checks (PBKDF2) running at once, in a thread pool off the event loop.
    auth_max_concurrent: int = 2
    #: Failed logins per source address / per user before attempts are delayed
    #: (gateway/ratelimit.py); then auth_failure_delay, doubling per failure,
    #: up to auth_failure_max_delay; forgotten after auth_failure_window seconds.
    auth_failure_free: int = 5
    auth_failure_delay: float = 0.1
    auth_failure_max_delay: float = 5.0
    auth_failure_window: float = 300.0
    #: auth_query (PgBouncer's keys; gateway/auth_query.py, docs/auth-query.md): a user not in
    #: [users] is looked up in PostgreSQL with ``auth_query`` over a connection as ``auth_user``
    #: (to ``auth_dbname``, default the client's database); results are cached this many seconds.
    auth_user: str | None = None
    auth_query: str = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
    auth_dbname: str | None = None
    auth_query_cache_ttl: float = 5.0
    log_level: str = "info"
    #: admin console (virtual database ``pgbouncer`` / ``wirepool``, docs/admin.md):
    #: users allowed every command, and users allowed the read-only SHOW commands
    admin_users: tuple[str, ...] = ()
    stats_users: tuple[str, ...] = ()
    #: where ``wirepool serve`` writes its pid (``wirepool reload`` signals it); None: no file
    pid_file: str | None = None
    #: unix socket where ``wirepool serve`` offers its listening sockets to a successor
    #: (``wirepool serve --takeover``, docs/takeover.md); None: no takeover
    control_socket: str | None = None
    #: Postgres protocol over HTTP (issue 4): an HTTP session left inside a
    #: transaction is rolled back and its server released after this many idle seconds.
    http_session_timeout: float = 30.0
    #: An HTTP session outside a transaction (kept by the driver across requests
    #: for its prepared statements) is forgotten after this many idle seconds.
    http_idle_session_timeout: float = 300.0
    #: Time limit of one HTTP request's batch (0 = none): the running statement is
    #: cancelled and the request answered with an error.
    http_request_timeout: float = 60.0
    #: Most frontend messages in one HTTP batch.
    http_max_batch_messages: int = 10000
    #: Most backend bytes in one HTTP response (larger results: cancelled, error).
    http_max_response_size: int = 67108864
    #: LISTEN fan-out in transaction mode (gateway/listen.py, docs/listen.md): unsent
    #: notification bytes per client before it is disconnected (53400); channels per
    #: client and clients per channel (0 = no limit); backlog kept per channel for SSE
    #: Last-Event-ID resumes (entries, and bytes over all channels of a database);
    #: seconds a channel stays LISTENed after its last subscriber left; SSE heartbeat.
    listen_queue_bytes: int = 1048576
    listen_max_channels_per_client: int = 1000
    listen_max_clients_per_channel: int = 0
    listen_backlog: int = 64
    listen_backlog_bytes: int = 1048576
    listen_linger: float = 30.0
    listen_heartbeat: float = 15.0
    #: Processes sharing ``listen`` and ``pg_listen`` (gateway/workers.py); "auto" in the
    #: file = the machine's cores.  Pool sizes are split between them (docs/scaling.md).
    workers: int = 1
    #: This instance's internal HTTP address (``http://host:port``, ``$VAR`` expanded), named in
    #: the ``/pg`` session tokens it issues so other instances can forward to it (docs/scaling.md).
    advertise_url: str | None = None
    #: Secret shared by the instances (and workers) of one gateway: signs ``/pg`` session tokens
    #: and authenticates forwarded requests.  None: a random one per start.
    cluster_secret: str | None = None
    #: This instance's number among its peers (1..255; 0: no peering).  Its cancel keys carry it, so
    #: a CancelRequest landing on another instance reaches this one (PgBouncer 1.23's ``peer_id``).
    peer_id: int = 0
    #: ``[gateway.peers]``: every instance's internal URL by peer_id (PgBouncer's ``[peers]``), this one's too.
    peers: tuple[tuple[int, str], ...] = ()
    #: Query result cache (docs/cache.md): bytes of all entries (LRU by bytes), and of one entry.
    cache_max_bytes: int = 67108864
    cache_max_entry_bytes: int = 1048576
    #: Notification channel whose payload is a cache tag to invalidate ("" = none).
    cache_channel: str = "wirepool_invalidate"


@dataclass(frozen=True)
class DatabaseConfig:
    """One ``[databases.<name>]`` section: where the pool for ``name`` connects.

    ``dbname`` defaults to ``name``.  ``user`` is the upstream role the pool logs
    in as (required in a file; the empty default exists only so the dataclass
    can be built positionally).  ``None`` overrides fall back to [gateway].
    """

    name: str
    host: str = "127.0.0.1"
    port: int = 5432
    dbname: str = ""
    user: str = ""
    password: str | None = None
    pool_size: int | None = None
    pool_mode: str | None = None
    min_pool_size: int | None = None
    reserve_pool_size: int | None = None
    #: TLS to the upstream server, libpq's meanings (gateway/tls.py).
    sslmode: str = "prefer"
    #: CA bundle for verify-ca / verify-full (None: the system's trust store).
    sslrootcert: str | None = None
    #: Query result cache (docs/cache.md): "off", "hint" (hinted statements) or "auto".
    cache: str = "off"
    cache_ttl: float = 60.0
    cache_swr: float = 15.0
    #: auth_query overrides for this database (None: the [gateway] value).  Without ``user``
    #: (allowed when an auth_user applies) each client logs in upstream as itself.
    auth_user: str | None = None
    auth_query: str | None = None
    auth_dbname: str | None = None

    def __post_init__(self) -> None:
        if not self.dbname:
            object.__setattr__(self, "dbname", self.name)

    def effective_pool_size(self, g: GatewaySettings) -> int:
        return g.default_pool_size if self.pool_size is None else self.pool_size

    def effective_pool_mode(self, g: GatewaySettings) -> str:
        return g.pool_mode if self.pool_mode is None else self.pool_mode

    def effective_min_pool_size(self, g: GatewaySettings) -> int:
        return g.min_pool_size if self.min_pool_size is None else self.min_pool_size

    def effective_reserve_pool_size(self, g: GatewaySettings) -> int:
        return g.reserve_pool_size if self.reserve_pool_size is None else self.reserve_pool_size

    def __repr__(self) -> str:  # never leak the password into logs
        pw = None if self.password is None else MASK
        return (f"DatabaseConfig(name={self.name!r}, host={self.host!r}, port={self.port}, "
                f"dbname={self.dbname!r}, user={self.user!r}, password={pw!r}, "
                f"pool_size={self.pool_size}, pool_mode={self.pool_mode!r}, "
                f"min_pool_size={self.min_pool_size}, reserve_pool_size={self.reserve_pool_size}, "
                f"sslmode={self.sslmode!r}, sslrootcert={self.sslrootcert!r})")


@dataclass(frozen=True)
class UserConfig:
    """One ``[users.<name>]`` section: edge credentials the gateway checks.

    ``password`` is plaintext or a ``SCRAM-SHA-256$...`` verifier (``None``:
    no password login, e.g. trust or token-only users).
    """

    name: str
    password: str | None = None
    tokens: tuple[str, ...] = ()

    @property
    def is_scram_verifier(self) -> bool:
        return self.password is not None and self.password.startswith(SCRAM_PREFIX)

    def __repr__(self) -> str:
        pw = None if self.password is None else MASK
        return f"UserConfig(name={self.name!r}, password={pw!r}, tokens=<{len(self.tokens)}>)"


@dataclass(frozen=True)
class Config:
    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    databases: dict[str, DatabaseConfig] = field(default_factory=dict)
    users: dict[str, UserConfig] = field(default_factory=dict)

    def with_gateway(self, **changes: Any) -> "Config":
        """A copy with some [gateway] settings replaced (no re-validation)."""
        return replace(self, gateway=replace(self.gateway, **changes))


# --------------------------------------------------------------------------- helpers

def parse_address(text: str, key: str) -> tuple[str, int]:
    """``"host:port"`` / ``"[v6]:port"`` -> ``(host, port)``; port 0 = ephemeral."""
    if not isinstance(text, str):
        raise ConfigError(key, f'expected a string "host:port", got {_tname(text)}')
    s = text.strip()
    if s.startswith("["):
        end = s.find("]")
        if end < 0 or s[end + 1:end + 2] != ":":
            raise ConfigError(key, f'invalid address {text!r}: expected "[ipv6]:port"')
        host, port_text = s[1:end], s[end + 2:]
    else:
        host, sep, port_text = s.rpartition(":")
        if not sep:
            raise ConfigError(key, f'invalid address {text!r}: expected "host:port"')
        if ":" in host:
            raise ConfigError(key, f'invalid address {text!r}: write IPv6 hosts as "[addr]:port"')
    if not host:
        raise ConfigError(key, f'invalid address {text!r}: missing host (use "0.0.0.0:port" for all interfaces)')
    if any(c.isspace() for c in host) or "/" in host:
        raise ConfigError(key, f"invalid address {text!r}: bad host")
    if not port_text.isascii() or not port_text.isdigit():
        raise ConfigError(key, f"invalid address {text!r}: port must be a number")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(key, f"invalid address {text!r}: port must be 0..65535")
    return host, port


def parse_workers(v: Any, key: str) -> int:
    """``workers``: a positive integer or ``"auto"`` (the machine's cores)."""
    if v == "auto":
        return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    return _int(v, key, minimum=1, maximum=256)


def parse_advertise_url(v: Any, key: str) -> str:
    """``advertise_url``: ``http(s)://host:port`` after ``$VAR`` expansion (no path)."""
    from urllib.parse import urlsplit
    s = os.path.expandvars(_str(v, key, nonempty=True)).rstrip("/")
    try:
        u = urlsplit(s)
        port = u.port
    except ValueError as e:
        raise ConfigError(key, f"invalid URL {s!r}: {e}") from None
    if u.scheme not in ("http", "https") or not u.hostname or port is None or u.path or u.query:
        raise ConfigError(key, f'invalid URL {s!r}: expected "http://host:port" (https: too)')
    if "$" in s:
        raise ConfigError(key, f"unset environment variable in {s!r}")
    return s


def parse_peers(v: Any, key: str) -> tuple[tuple[int, str], ...]:
    """``[gateway.peers]``: ``<peer_id> = "http://host:port"`` for every instance."""
    out = []
    for k, url in _table(v, key).items():
        if not (k.isascii() and k.isdigit() and 1 <= int(k) <= 255):
            raise ConfigError(f"{key}.{k}", "peer ids are numbers 1..255")
        out.append((int(k), parse_advertise_url(url, f"{key}.{k}")))
    return tuple(sorted(out))


def check_peering(g: "GatewaySettings") -> None:
    if not g.peers and not g.peer_id:
        return
    if g.peer_id and g.peer_id not in dict(g.peers):
        raise ConfigError("gateway.peer_id", f"{g.peer_id} is not in [gateway.peers]")
    if g.peers and not g.peer_id:
        raise ConfigError("gateway.peer_id", "required with [gateway.peers] (this instance's number there)")
    if g.cluster_secret is None:
        raise ConfigError("gateway.cluster_secret", "required with peer_id (the instances must share it)")


def _env_ref(v: str, key: str) -> str:
    """``"$NAME"`` / ``"${NAME}"`` alone: the environment variable's value (e.g. from a Kubernetes Secret)."""
    import re
    mm = re.fullmatch(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))", v)
    if mm is None:
        return v
    name = mm.group(1) or mm.group(2)
    value = os.environ.get(name)
    if not value:
        raise ConfigError(key, f"environment variable {name} is not set")
    return value


def format_address(addr: tuple[str, int]) -> str:
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _tname(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _int(v: Any, key: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(key, f"expected an integer, got {_tname(v)}")
    if minimum is not None and v < minimum:
        raise ConfigError(key, f"must be >= {minimum}, got {v}")
    if maximum is not None and v > maximum:
        raise ConfigError(key, f"must be <= {maximum}, got {v}")
    return v


def _float(v: Any, key: str, *, positive: bool = False) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ConfigError(key, f"expected a number of seconds, got {_tname(v)}")
    f = float(v)
    if not math.isfinite(f):
        raise ConfigError(key, f"must be a finite number, got {v}")
    if f < 0:
        raise ConfigError(key, f"must not be negative, got {v}")
    if positive and f == 0:
        raise ConfigError(key, "must be greater than 0")
    return f


def _str(v: Any, key: str, *, nonempty: bool = False) -> str:
    if not isinstance(v, str):
        raise ConfigError(key, f"expected a string, got {_tname(v)}")
    if nonempty and not v.strip():
        raise ConfigError(key, "must not be empty")
    if "\x00" in v:
        raise ConfigError(key, "must not contain NUL characters")
    return v


def _choice(v: Any, key: str, choices: tuple[str, ...]) -> str:
    s = _str(v, key)
    if s not in choices:
        raise ConfigError(key, f"unknown value {s!r} (expected one of: {', '.join(choices)})")
    return s


def _str_list(v: Any, key: str, what: str) -> tuple[str, ...]:
    """A TOML array of non-empty strings (``what`` names it in the error)."""
    if not isinstance(v, list):
        raise ConfigError(key, f"expected {what}, got {_tname(v)}")
    return tuple(_str(x, f"{key}[{i}]", nonempty=True) for i, x in enumerate(v))


def _path(v: Any, key: str, base_dir: Path | None, *, must_exist: bool = False) -> str:
    """A file path (``~`` expanded, relative to the config file's directory);
    ``must_exist``: it must name an existing file."""
    p = Path(_str(v, key, nonempty=True)).expanduser()
    if base_dir is not None and not p.is_absolute():
        p = base_dir / p
    if must_exist and not p.is_file():
        raise ConfigError(key, f"file not found: {str(p)!r}")
    return str(p)


def _table(v: Any, key: str) -> Mapping[str, Any]:
    if not isinstance(v, dict):
        raise ConfigError(key, f"expected a table, got {_tname(v)}")
    return v


def _unknown(section: Mapping[str, Any], allowed: set[str] | frozenset[str], prefix: str) -> None:
    for k in section:
        if k not in allowed:
            raise ConfigError(f"{prefix}.{k}" if prefix else k, "unknown key")


def _is_valid_scram_verifier(text: str) -> bool:
    try:
        from driver.protocol.auth import is_scram_verifier
    except ImportError:  # pragma: no cover - the driver always ships auth
        import base64
        import binascii
        try:
            scheme, params, keys = text.split("$")
            it, salt = params.split(":")
            sk, svk = keys.split(":")
            ok = scheme == "SCRAM-SHA-256" and it.isdigit() and int(it) > 0
            ok = ok and len(base64.b64decode(salt, validate=True)) > 0
            ok = ok and len(base64.b64decode(sk, validate=True)) == 32
            return ok and len(base64.b64decode(svk, validate=True)) == 32
        except (ValueError, binascii.Error):
            return False
    return is_scram_verifier(text)


# --------------------------------------------------------------------------- parsing

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
            kw[name] = _int(value, key, minimum=0, maximum=255)
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


# --------------------------------------------------------------------------- display

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
