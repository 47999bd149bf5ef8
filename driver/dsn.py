"""libpq-style connection parameters: URLs, ``key=value`` strings, keywords, environment.

:func:`parse_dsn` turns what a caller gives ``driver.connect()`` into one
:class:`ConnectParams`.  Accepted DSN forms:

* URLs: ``postgresql://`` / ``postgres://`` (TCP, or a unix-socket directory
  when the host starts with ``/``), ``ws://`` / ``wss://`` (the gateway's
  WebSocket endpoint), ``http://`` / ``https://`` (the gateway's HTTP
  endpoint)::

      postgresql://user:secret@db.example:5432/app?sslmode=require&application_name=x
      postgresql:///app?host=/var/run/postgresql
      ws://user:secret@127.0.0.1:8432/app
      wss://user:secret@gw.example/app?endpoint=/v2&token=...

  User, password, host and database are percent-decoded; an IPv6 host is
  written in brackets.  For ``postgresql://``, ``ws://`` and ``wss://`` the
  URL path is the database (``ws://h:8432/app`` = database ``app`` through
  the gateway's WebSocket endpoint); the WebSocket endpoint path is
  :data:`DEFAULT_WS_PATH` unless the ``endpoint`` query parameter names
  another one (see :attr:`ConnectParams.path`).  For http/https the URL path
  is the endpoint path on the gateway (kept as given) and the database comes
  from the ``dbname`` (or ``database``) query parameter.  A ``dbname`` query
  parameter overrides the URL path for every scheme.
* libpq keyword/value strings: ``"host=localhost port=5432 dbname=app user=bob"``
  (values may be single-quoted, with ``\\'`` and ``\\\\`` escapes).

Query parameters understood: ``host``, ``port``, ``user``, ``password``,
``dbname``/``database``, ``sslmode``, ``connect_timeout``,
``application_name``, ``options`` (both become startup parameters in
``server_settings``).  A few libpq-only parameters the driver does not use
(``sslrootcert``, ``target_session_attrs``, ``passfile`` ...) are kept in
:attr:`ConnectParams.query` and otherwise ignored.  Any other parameter is,
for ``postgresql://``, a server setting sent at startup (as asyncpg does);
for ws/http schemes it stays in :attr:`ConnectParams.query` (e.g. ``token``,
``pipeline_connect``).  ``endpoint`` (ws/wss only) sets :attr:`ConnectParams.path`.
``token`` is a gateway API token (the ws transport sends it as ``?token=``);
with it and no user given anywhere, the user is left empty (the gateway uses
the token's user) instead of defaulting to the OS user.

Precedence, highest first: keyword arguments, the DSN, the environment
(``PGHOST``, ``PGPORT``, ``PGSSLMODE``, ``PGCONNECT_TIMEOUT`` only for
``postgresql://``; ``PGUSER``, ``PGPASSWORD``, ``PGDATABASE``, ``PGAPPNAME``
always), then defaults: host ``localhost``, port 5432 (80/443 for ws/http and
wss/https), user = the OS user, database = user, sslmode ``prefer`` for TCP,
``disable`` for ws/http, ``verify-full`` for wss/https.  No ``.pgpass`` or
service-file lookup.  Bad input raises
:class:`driver.exceptions.ClientConfigurationError` (a ``ValueError``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any, Mapping

from .protocol._dataclass import dataclass, field

from .urls import parse_qsl, quote, unquote, urlencode, urlsplit

if TYPE_CHECKING:
    import ssl as ssl_module

__all__ = ["ConnectParams", "parse_dsn", "SSL_MODES", "SCHEMES", "DEFAULT_WS_PATH", "DEFAULT_HTTP_PATH"]

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
SCHEMES = ("postgresql", "ws", "wss", "http", "https")
_SCHEME_ALIASES = {"postgres": "postgresql", "postgresql": "postgresql", "ws": "ws", "wss": "wss",
                   "http": "http", "https": "https"}
_DEFAULT_PORTS = {"postgresql": 5432, "ws": 80, "wss": 443, "http": 80, "https": 443}
_TLS_SCHEMES = ("wss", "https")
#: URL path used by :meth:`ConnectParams.url` when a ws/wss DSN has none (Neon's).
DEFAULT_WS_PATH = "/v2"
#: URL path used by :meth:`ConnectParams.url` when an http/https DSN has none.
DEFAULT_HTTP_PATH = "/pg"

# libpq parameters the driver accepts but does not use: never sent as server settings.
_IGNORED_LIBPQ = frozenset({
    "sslcert", "sslkey", "sslrootcert", "sslcrl", "sslcrldir", "sslpassword", "sslsni",
    "sslnegotiation", "ssl_min_protocol_version", "ssl_max_protocol_version", "sslcompression",
    "passfile", "service", "target_session_attrs", "load_balance_hosts", "krbsrvname", "gsslib",
    "gssencmode", "gssdelegation", "channel_binding", "requirepeer", "require_auth",
    "keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count",
    "tcp_user_timeout", "hostaddr", "client_encoding", "replication", "fallback_application_name",
})


def _config_error(message: str) -> Exception:
    """``driver.exceptions.ClientConfigurationError`` (a ValueError), or ValueError."""
    try:
        from .exceptions import ClientConfigurationError
    except ImportError:  # pragma: no cover - only while the exceptions module is missing
        return ValueError(message)
    return ClientConfigurationError(message)


@dataclass
class ConnectParams:
    """Everything needed to open and start a connection (see the module doc)."""

    scheme: str = "postgresql"
    host: str = "localhost"
    port: int = 5432
    user: str = ""
    password: str | None = field(default=None, repr=False)
    database: str = ""
    #: ``disable`` | ``allow`` | ``prefer`` | ``require`` | ``verify-ca`` | ``verify-full``
    sslmode: str = "prefer"
    #: What the caller passed as ``ssl=`` when it was an ``SSLContext`` or a bool
    #: (``sslmode`` is already derived from it); ``None`` otherwise.
    ssl: ssl_module.SSLContext | bool | None = None
    connect_timeout: float | None = None
    #: Startup parameters (``application_name``, ``options``, GUCs...).
    server_settings: dict[str, str] = field(default_factory=dict)
    #: http/https: the URL path as written in the DSN; ws/wss: the ``endpoint``
    #: query parameter ("" when absent: :meth:`url` uses the default path).
    path: str = ""
    #: Query parameters not consumed above (ws/http extras such as ``token``,
    #: and ignored libpq parameters).
    query: dict[str, str] = field(default_factory=dict, repr=False)
    #: postgresql://: every ``(host, port)`` to try, in order, when there are
    #: several (``host=a,b``, a list of hosts); ``host``/``port`` are the first.
    hosts: list[tuple[str, int]] = field(default_factory=list)

    def addresses(self) -> list[ConnectParams]:
        """One :class:`ConnectParams` per host to try, in order (asyncpg's multi-host connect)."""
        if len(self.hosts) <= 1:
            return [self]
        values = {f.name: getattr(self, f.name) for f in self.__wp_fields__}  # type: ignore[attr-defined]
        return [ConnectParams(**{**values, "host": h, "port": p, "hosts": []}) for h, p in self.hosts]

    @property
    def is_unix_socket(self) -> bool:
        return self.scheme == "postgresql" and self.host.startswith("/")

    @property
    def uses_tls(self) -> bool:
        """True when the scheme itself is encrypted (wss/https)."""
        return self.scheme in _TLS_SCHEMES

    def url(self) -> str:
        """The URL to dial, without credentials or query parameters.

        ws/wss: ``ws://host:port/v2`` (path defaults to :data:`DEFAULT_WS_PATH`);
        http/https: ``http://host:port/pg`` (default :data:`DEFAULT_HTTP_PATH`);
        postgresql: ``postgresql://host:port/database``.
        """
        host = f"[{self.host}]" if ":" in self.host else self.host
        if self.scheme == "postgresql":
            host = quote(host, safe="[]:")
            return f"postgresql://{host}:{self.port}/{quote(self.database, safe='')}"
        default_path = DEFAULT_WS_PATH if self.scheme in ("ws", "wss") else DEFAULT_HTTP_PATH
        path = self.path or default_path
        if not path.startswith("/"):
            path = "/" + path
        return f"{self.scheme}://{host}:{self.port}{path}"

    def url_with_query(self, **extra: str) -> str:
        """:meth:`url` plus the remaining :attr:`query` parameters (and ``extra``)."""
        params = {**self.query, **extra}
        return self.url() + ("?" + urlencode(params) if params else "")


# ---------------------------------------------------------------------------
# DSN syntax
# ---------------------------------------------------------------------------


def _parse_keyword_value(dsn: str) -> dict[str, str]:
    """libpq ``key=value key2='quoted value'`` strings."""
    out: dict[str, str] = {}
    i, n = 0, len(dsn)
    while True:
        while i < n and dsn[i].isspace():
            i += 1
        if i >= n:
            return out
        start = i
        while i < n and dsn[i] != "=" and not dsn[i].isspace():
            i += 1
        key = dsn[start:i]
        while i < n and dsn[i].isspace():
            i += 1
        if not key or i >= n or dsn[i] != "=":
            raise _config_error(f'invalid connection string: missing "=" after {key!r}')
        i += 1
        while i < n and dsn[i].isspace():
            i += 1
        chars: list[str] = []
        if i < n and dsn[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise _config_error("invalid connection string: unterminated quoted value")
                c = dsn[i]
                if c == "\\" and i + 1 < n:
                    chars.append(dsn[i + 1])
                    i += 2
                elif c == "'":
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
        else:
            while i < n and not dsn[i].isspace():
                if dsn[i] == "\\" and i + 1 < n:
                    chars.append(dsn[i + 1])
                    i += 2
                else:
                    chars.append(dsn[i])
                    i += 1
        out[key] = "".join(chars)


def _split_hostports(hostport: str) -> tuple[str, str]:
    """``h1:p1,h2,[v6]:p3`` -> ("h1,h2,v6", "p1,,p3"): hosts and ports, comma-joined."""
    pairs = [_split_hostport(part) for part in hostport.split(",")]
    return ",".join(h for h, _ in pairs), ",".join(p for _, p in pairs)


def _split_hostport(hostport: str) -> tuple[str, str]:
    """``host:port`` / ``[v6]:port`` / ``host`` -> (host, port text), percent-decoded host."""
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0:
            raise _config_error(f"invalid IPv6 address in DSN: {hostport!r}")
        host, rest = hostport[1:end], hostport[end + 1:]
        if rest and not rest.startswith(":"):
            raise _config_error(f"invalid host in DSN: {hostport!r}")
        return host, rest[1:]
    host, _, port = hostport.partition(":")
    return unquote(host), port


def _parse_url(dsn: str) -> tuple[str, dict[str, str], str, dict[str, str]]:
    """URL -> (scheme, {host, port, user, password, dbname}, path, query)."""
    raw_scheme, sep, _ = dsn.partition("://")
    scheme = _SCHEME_ALIASES.get(raw_scheme.lower()) if sep else None
    if scheme is None:
        raise _config_error(
            f"invalid DSN: scheme must be one of postgresql://, postgres://, ws://, wss://, http://, https://"
            f" (got {raw_scheme + sep if sep else dsn[:20]!r})")
    try:
        _, netloc, path, query_string, _ = urlsplit(dsn)
    except ValueError as exc:
        raise _config_error(f"invalid DSN: {exc}") from None
    fields: dict[str, str] = {}
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        user, colon, password = userinfo.partition(":")
        if user:
            fields["user"] = unquote(user)
        if colon:
            fields["password"] = unquote(password)
    if hostport:
        host, port = _split_hostports(hostport) if scheme == "postgresql" else _split_hostport(hostport)
        if host.strip(","):
            fields["host"] = host
        if port.strip(","):
            fields["port"] = port
    if scheme in ("postgresql", "ws", "wss"):
        db = unquote(path[1:] if path.startswith("/") else path)
        if db:
            fields["dbname"] = db
        path = ""
    query: dict[str, str] = {}
    if query_string:
        try:
            for key, value in parse_qsl(query_string, keep_blank_values=True, strict_parsing=True):
                query[key] = value
        except ValueError as exc:
            raise _config_error(f"invalid DSN query string: {exc}") from None
    return scheme, fields, path, query


def _int_port(value: Any, what: str) -> int:
    try:
        port = int(value)
    except (TypeError, ValueError):
        raise _config_error(f"invalid port {value!r} in {what}") from None
    if not 0 < port < 65536:
        raise _config_error(f"invalid port {port} in {what}: out of range")
    return port


def _timeout(value: Any, what: str) -> float | None:
    try:
        t = float(value)
    except (TypeError, ValueError):
        raise _config_error(f"invalid connect_timeout {value!r} in {what}") from None
    if t != t or t < 0:
        raise _config_error(f"invalid connect_timeout {value!r} in {what}")
    return t if t > 0 else None  # libpq: 0 means wait forever


def _os_user() -> str:
    try:
        import getpass

        return getpass.getuser()
    except Exception:  # no pwd database (Pyodide), no USER/LOGNAME...
        raise _config_error("could not determine the user name to connect with: pass user=") from None


# ---------------------------------------------------------------------------
# parse_dsn
# ---------------------------------------------------------------------------


def parse_dsn(
    dsn: str | None = None,
    *,
    host: str | list[str] | tuple[str, ...] | None = None,
    port: int | str | list[int] | tuple[int, ...] | None = None,
    user: str | None = None,
    password: str | None = None,
    database: str | None = None,
    ssl: ssl_module.SSLContext | bool | str | None = None,
    timeout: float | None = None,
    server_settings: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    **_ignored: Any,
) -> ConnectParams:
    """Resolve a DSN, keyword arguments and the environment into :class:`ConnectParams`.

    ``ssl`` is an ``sslmode`` string, ``True`` (verify-full, like asyncpg),
    ``False`` (disable) or an ``ssl.SSLContext`` (used as given; sslmode
    ``require`` unless the DSN asks for verify-ca/verify-full).  ``timeout``
    is the connect timeout in seconds.  ``environ`` replaces ``os.environ``
    (tests).  Unknown keyword arguments are ignored (they belong to the
    connection, e.g. ``command_timeout``).
    """
    env = os.environ if environ is None else environ
    scheme = "postgresql"
    fields: dict[str, str] = {}
    path = ""
    query: dict[str, str] = {}
    if dsn:
        if not isinstance(dsn, str):
            raise _config_error(f"dsn must be a str, not {type(dsn).__name__}")
        if "://" in dsn:
            scheme, fields, path, query = _parse_url(dsn)
        elif "=" in dsn:
            query = _parse_keyword_value(dsn)
        else:
            raise _config_error(f"invalid DSN {dsn[:40]!r}: expected a URL or key=value pairs")

    # Query parameters (and keyword/value pairs) fill what the URL left out.
    settings: dict[str, str] = {}
    extra: dict[str, str] = {}
    q_sslmode: str | None = None
    q_timeout: str | None = None
    for key, value in query.items():
        if key in ("host", "port", "user", "password"):
            fields[key] = value
        elif key in ("dbname", "database"):
            fields["dbname"] = value
        elif key == "sslmode":
            q_sslmode = value
        elif key == "connect_timeout":
            q_timeout = value
        elif key == "endpoint" and scheme in ("ws", "wss"):
            if not value.startswith("/"):
                raise _config_error(f"invalid endpoint {value!r}: must be a URL path starting with /")
            path = value
        elif key in ("application_name", "options"):
            settings[key] = value
        elif key in _IGNORED_LIBPQ or scheme != "postgresql":
            extra[key] = value
        else:
            settings[key] = value
    is_pg = scheme == "postgresql"

    # hosts and ports: several (tried in order) for postgresql://, as asyncpg and libpq
    if isinstance(host, (list, tuple)):
        host = ",".join(str(h) for h in host)
    host_text = host or fields.get("host") or (env.get("PGHOST") if is_pg else None) or "localhost"
    hosts = [h or "localhost" for h in host_text.split(",")] if is_pg else [host_text]
    if not is_pg and "," in host_text:
        raise _config_error(f"multiple hosts are not supported for {scheme}://: {host_text!r}")
    if isinstance(port, (list, tuple)):
        port = ",".join(str(p) for p in port)
    if port is not None and port != "":
        port_texts, what = str(port).split(","), "the port argument"
    elif fields.get("port"):
        port_texts, what = fields["port"].split(","), "the DSN"
    elif is_pg and env.get("PGPORT"):
        port_texts, what = env["PGPORT"].split(","), "PGPORT"
    else:
        port_texts, what = [""], ""
    if len(port_texts) == 1:
        port_texts *= len(hosts)
    elif len(port_texts) != len(hosts):
        raise _config_error(f"could not match {len(port_texts)} port numbers to {len(hosts)} hosts")
    ports = [_int_port(p, what) if p else _DEFAULT_PORTS[scheme] for p in port_texts]
    final_host, final_port = hosts[0], ports[0]

    # user, password, database
    final_user = user or fields.get("user") or env.get("PGUSER") or ""
    if not final_user and (is_pg or "token" not in extra):
        final_user = _os_user()  # ws/http with an API token: the gateway takes the token's user
    final_password = password if password is not None else fields.get("password", env.get("PGPASSWORD"))
    final_db = database or fields.get("dbname") or env.get("PGDATABASE") or final_user

    # TLS
    sslmode: str | None = None
    ssl_value: ssl_module.SSLContext | bool | None = None
    dsn_mode = q_sslmode if q_sslmode is not None else (env.get("PGSSLMODE") if is_pg else None)
    if dsn_mode is not None and dsn_mode not in SSL_MODES:
        raise _config_error(f"invalid sslmode {dsn_mode!r}: expected one of {', '.join(SSL_MODES)}")
    if isinstance(ssl, str):
        if ssl not in SSL_MODES:
            raise _config_error(f"invalid sslmode {ssl!r}: expected one of {', '.join(SSL_MODES)}")
        sslmode = ssl
    elif isinstance(ssl, bool):
        ssl_value = ssl
        sslmode = "verify-full" if ssl else "disable"
    elif "ssl" in sys.modules and isinstance(ssl, sys.modules["ssl"].SSLContext):
        # (ssl is imported only when TLS is used: an SSLContext implies it is loaded)
        ssl_value = ssl
        sslmode = dsn_mode if dsn_mode in ("verify-ca", "verify-full") else "require"
    elif ssl is not None:
        raise _config_error(f"ssl must be an sslmode string, a bool or an ssl.SSLContext, not {type(ssl).__name__}")
    if sslmode is None:
        if dsn_mode is not None:
            sslmode = dsn_mode
        elif is_pg:
            sslmode = "prefer"
        else:
            sslmode = "verify-full" if scheme in _TLS_SCHEMES else "disable"
    if not is_pg:
        if scheme in _TLS_SCHEMES:
            if sslmode == "disable":
                raise _config_error(f"sslmode=disable contradicts the {scheme}:// scheme")
            if sslmode in ("allow", "prefer"):
                sslmode = "require"
        elif sslmode in ("require", "verify-ca", "verify-full"):
            raise _config_error(f"sslmode={sslmode} needs an encrypted scheme ({'wss' if scheme == 'ws' else 'https'}://)")
        elif sslmode in ("allow", "prefer"):
            sslmode = "disable"

    # timeout
    if timeout is not None:
        connect_timeout = _timeout(timeout, "the timeout argument")
    elif q_timeout is not None:
        connect_timeout = _timeout(q_timeout, "the DSN")
    elif is_pg and env.get("PGCONNECT_TIMEOUT"):
        connect_timeout = _timeout(env["PGCONNECT_TIMEOUT"], "PGCONNECT_TIMEOUT")
    else:
        connect_timeout = None

    # server settings
    if "application_name" not in settings and env.get("PGAPPNAME"):
        settings["application_name"] = env["PGAPPNAME"]
    if server_settings:
        for key, value in server_settings.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise _config_error("server_settings keys and values must be str")
            settings[key] = value

    return ConnectParams(
        scheme=scheme, host=final_host, port=final_port, user=final_user, password=final_password,
        database=final_db, sslmode=sslmode, ssl=ssl_value, connect_timeout=connect_timeout,
        server_settings=settings, path=path, query=extra,
        hosts=list(zip(hosts, ports)) if len(hosts) > 1 else [],
    )
