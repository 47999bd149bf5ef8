"""The configuration's settings: frozen dataclasses with PgBouncer's names and defaults.

:class:`GatewaySettings` is ``[gateway]``, :class:`DatabaseConfig` one ``[databases.<name>]``,
:class:`UserConfig` one ``[users.<name>]``, :class:`Config` the whole file.  Reading and
validating a TOML file is :mod:`gateway.config`; single values are :mod:`gateway.config_values`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

__all__ = [
    "AUTH_TYPES", "POOL_MODES", "SSL_MODES", "CACHE_MODES", "LOG_LEVELS", "MASK", "SCRAM_PREFIX",
    "MIN_MESSAGE_SIZE", "ConfigError", "GatewaySettings", "DatabaseConfig", "UserConfig", "Config",
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
    auth_query: str = ("SELECT usename, CASE WHEN valuntil < now() THEN NULL ELSE passwd END "
                       "FROM pg_shadow WHERE usename=$1")  # no password past VALID UNTIL, as PostgreSQL
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
    #: This instance's number among its peers (1..16383 as PgBouncer's; 0: no peering).  Its cancel keys carry it, so
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
