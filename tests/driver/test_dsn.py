"""driver.dsn: libpq-style DSN parsing (checked against asyncpg and a real server where it matters)."""

from __future__ import annotations

import ssl

import asyncpg
import pytest

from driver.dsn import ConnectParams, parse_dsn
from tests.pgcluster import PgCluster

NOENV: dict[str, str] = {}


def p(dsn: str | None = None, env: dict[str, str] | None = None, **kw: object) -> ConnectParams:
    return parse_dsn(dsn, environ=NOENV if env is None else env, **kw)  # type: ignore[arg-type]


def test_basic_url() -> None:
    c = p("postgresql://alice:s3cret@db.example:6543/app")
    assert (c.scheme, c.host, c.port, c.user, c.password, c.database) == (
        "postgresql", "db.example", 6543, "alice", "s3cret", "app")
    assert c.sslmode == "prefer" and c.ssl is None and c.connect_timeout is None
    assert c.server_settings == {} and c.query == {}
    assert "s3cret" not in repr(c)


def test_postgres_alias_and_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    import getpass
    monkeypatch.setattr(getpass, "getuser", lambda: "osuser")
    c = p("postgres://")
    assert (c.scheme, c.host, c.port, c.user, c.database, c.password) == (
        "postgresql", "localhost", 5432, "osuser", "osuser", None)
    c = p(None)
    assert (c.host, c.port, c.user, c.database) == ("localhost", 5432, "osuser", "osuser")


def test_percent_decoding() -> None:
    c = p("postgresql://us%40er:p%40ss%3Aw%2Fd@h/my%20db")
    assert (c.user, c.password, c.database) == ("us@er", "p@ss:w/d", "my db")
    c = p("postgresql://u:pa:ss@h/db")  # unencoded ':' in the password
    assert c.password == "pa:ss"
    c = p("postgresql://u:@h/db")
    assert c.password == ""


def test_ipv6_and_unix_socket() -> None:
    c = p("postgresql://u@[::1]:5433/db")
    assert (c.host, c.port) == ("::1", 5433)
    assert c.url() == "postgresql://[::1]:5433/db"
    c = p("postgresql://%2Fvar%2Frun%2Fpostgresql/db")
    assert c.host == "/var/run/postgresql" and c.is_unix_socket
    c = p("postgresql:///db?host=/tmp&port=7777")
    assert (c.host, c.port, c.database) == ("/tmp", 7777, "db")


def test_query_parameters() -> None:
    c = p("postgresql://h/db?sslmode=require&application_name=app&options=-c%20search_path%3Dx"
          "&connect_timeout=7.5&user=bob&password=pw&search_path=s&sslrootcert=/x&target_session_attrs=any")
    assert c.sslmode == "require"
    assert c.connect_timeout == 7.5
    assert (c.user, c.password) == ("bob", "pw")
    assert c.server_settings == {"application_name": "app", "options": "-c search_path=x", "search_path": "s"}
    assert c.query == {"sslrootcert": "/x", "target_session_attrs": "any"}
    assert p("postgresql://h/db?dbname=other").database == "other"
    assert p("postgresql://h/?database=other2").database == "other2"
    assert p("postgresql://h/db?connect_timeout=0").connect_timeout is None


def test_keyword_arguments_override_dsn() -> None:
    c = p("postgresql://alice:pw@h:1/db?sslmode=require&connect_timeout=3&application_name=a",
          host="other", port=2, user="bob", password="pw2", database="db2", ssl="disable", timeout=9,
          server_settings={"application_name": "b", "jit": "off"}, command_timeout=5)
    assert (c.host, c.port, c.user, c.password, c.database, c.sslmode, c.connect_timeout) == (
        "other", 2, "bob", "pw2", "db2", "disable", 9.0)
    assert c.server_settings == {"application_name": "b", "jit": "off"}
    assert p("postgresql://h/db", password="").password == ""
    assert p(host=["solo"], port=[6000]).host == "solo"


def test_env_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PGHOST": "envhost", "PGPORT": "6000", "PGUSER": "envuser", "PGPASSWORD": "envpw",
           "PGDATABASE": "envdb", "PGSSLMODE": "disable", "PGAPPNAME": "envapp", "PGCONNECT_TIMEOUT": "4"}
    c = p(None, env)
    assert (c.host, c.port, c.user, c.password, c.database, c.sslmode, c.connect_timeout) == (
        "envhost", 6000, "envuser", "envpw", "envdb", "disable", 4.0)
    assert c.server_settings == {"application_name": "envapp"}
    # The DSN beats the environment.
    c = p("postgresql://u:pw@h:1/db?sslmode=require&application_name=x", env)
    assert (c.host, c.port, c.user, c.password, c.database, c.sslmode) == ("h", 1, "u", "pw", "db", "require")
    assert c.server_settings == {"application_name": "x"}
    # Database defaults to the user.
    assert p("postgresql://someone@h", {}).database == "someone"
    # os.environ is the default source.
    monkeypatch.setenv("PGHOST", "fromenv")
    monkeypatch.setenv("PGUSER", "envu")
    assert parse_dsn(None).host == "fromenv"
    assert parse_dsn(None).user == "envu"


def test_ssl_argument_forms() -> None:
    assert p("postgresql://h/db", ssl=True).sslmode == "verify-full"
    assert p("postgresql://h/db", ssl=True).ssl is True
    assert p("postgresql://h/db", ssl=False).sslmode == "disable"
    ctx = ssl.create_default_context()
    c = p("postgresql://h/db", ssl=ctx)
    assert c.ssl is ctx and c.sslmode == "require"
    assert p("postgresql://h/db?sslmode=verify-ca", ssl=ctx).sslmode == "verify-ca"
    for mode in ("disable", "allow", "prefer", "require", "verify-ca", "verify-full"):
        assert p(f"postgresql://h/db?sslmode={mode}").sslmode == mode
        assert p("postgresql://h/db", ssl=mode).sslmode == mode


def test_websocket_and_http_schemes() -> None:
    # ws/wss: the URL path is the database; ?endpoint= names the gateway path.
    c = p("wss://alice:pw@gw.example/app?endpoint=/v2&token=tok&application_name=x",
          {"PGHOST": "ignored", "PGPORT": "1"})
    assert (c.scheme, c.host, c.port, c.user, c.password, c.database) == ("wss", "gw.example", 443, "alice",
                                                                          "pw", "app")
    assert c.path == "/v2" and c.query == {"token": "tok"}
    assert c.server_settings == {"application_name": "x"}
    assert c.sslmode == "verify-full" and c.uses_tls
    assert c.url() == "wss://gw.example:443/v2"
    assert c.url_with_query() == "wss://gw.example:443/v2?token=tok"
    c = p("ws://u@127.0.0.1:8432")
    assert (c.port, c.path, c.sslmode, c.database) == (8432, "", "disable", "u")
    assert c.url() == "ws://127.0.0.1:8432/v2"
    c = p("ws://u@127.0.0.1:8432/my%20db?endpoint=/custom")
    assert (c.database, c.url()) == ("my db", "ws://127.0.0.1:8432/custom")
    assert p("ws://u@h/app?dbname=other").database == "other"
    # http/https: the URL path is the endpoint; the database is a query parameter.
    c = p("http://u@gw/custom/pg?database=d")
    assert (c.port, c.path, c.database) == (80, "/custom/pg", "d")
    assert c.url() == "http://gw:80/custom/pg"
    c = p("https://u@gw")
    assert (c.port, c.url()) == (443, "https://gw:443/pg")
    assert p("wss://u@gw?sslmode=require").sslmode == "require"
    assert p("wss://u@gw?sslmode=prefer").sslmode == "require"


@pytest.mark.parametrize("dsn,kw,needle", [
    ("mysql://h/db", {}, "scheme"),
    ("postgresql://h:notaport/db", {}, "port"),
    ("postgresql://h:70000/db", {}, "port"),
    ("postgresql://h1,h2,h3/db?port=1,2", {}, "match 2 port numbers to 3 hosts"),
    ("postgresql://h/db", {"host": ["a", "b"], "port": [1, 2, 3]}, "match 3 port numbers"),
    ("ws://h1,h2/db", {}, "multiple hosts are not supported for ws"),
    ("postgresql://h/db?target_session_attrs=bogus", {}, "target_session_attrs"),
    ("postgresql://h/db?sslmode=bogus", {}, "sslmode"),
    ("postgresql://h/db", {"ssl": "bogus"}, "sslmode"),
    ("postgresql://h/db", {"ssl": 3}, "ssl"),
    ("postgresql://h/db?connect_timeout=abc", {}, "connect_timeout"),
    ("postgresql://h/db?connect_timeout=-1", {}, "connect_timeout"),
    ("postgresql://h/db", {"port": "x"}, "port"),
    ("postgresql://[::1/db", {}, "IPv6"),
    ("ws://h/v2?sslmode=require", {}, "wss"),
    ("wss://h/v2?sslmode=disable", {}, "wss"),
    ("ws://h/app?endpoint=v2", {}, "endpoint"),
    ("just-a-word", {}, "DSN"),
    ("host=h port", {}, "="),
    ("host='unterminated", {}, "unterminated"),
    ("postgresql://h/db?a=1&&b", {}, "query"),
    ("postgresql://h/db", {"server_settings": {"a": 1}}, "server_settings"),
])
def test_errors(dsn: str, kw: dict[str, object], needle: str) -> None:
    from driver.exceptions import ClientConfigurationError
    from driver.login import target_session_attrs

    with pytest.raises(ClientConfigurationError, match=needle) as ei:
        target_session_attrs(None, p(dsn, **kw))
    assert isinstance(ei.value, ValueError)


@pytest.mark.parametrize("dsn,kw,expected", [
    ("postgresql://u@h1:1,h2:2/db", {}, [("h1", 1), ("h2", 2)]),
    ("postgresql://u@h1:1,h2/db", {}, [("h1", 1), ("h2", 5432)]),
    ("postgresql://u@[::1]:7,h2:8/db", {}, [("::1", 7), ("h2", 8)]),
    ("postgresql://u@/db?host=a,b&port=5,6", {}, [("a", 5), ("b", 6)]),
    ("postgresql://u@/db?host=a,b&port=5", {}, [("a", 5), ("b", 5)]),
    ("postgresql://u@/db", {"host": ["a", "b"], "port": [5, 6]}, [("a", 5), ("b", 6)]),
    ("postgresql://u@/db", {"host": "a,/tmp", "port": 9}, [("a", 9), ("/tmp", 9)]),
    ("host=a,b port=1,2 user=u", {}, [("a", 1), ("b", 2)]),
])
def test_multiple_hosts(dsn: str, kw: dict[str, object], expected: list[tuple[str, int]]) -> None:
    c = p(dsn, **kw)
    assert (c.host, c.port) == expected[0]
    assert c.hosts == expected
    assert [(a.host, a.port, a.user, a.hosts) for a in c.addresses()] == [
        (h, port, "u", []) for h, port in expected]
    one = p("postgresql://u@h:1/db")
    assert one.hosts == [] and one.addresses() == [one]


def test_keyword_value_form() -> None:
    c = p("host=h port=6000 dbname='my db' user=bob password='it\\'s' sslmode=disable application_name=x")
    assert (c.host, c.port, c.database, c.user, c.password, c.sslmode) == ("h", 6000, "my db", "bob", "it's",
                                                                           "disable")
    assert c.server_settings == {"application_name": "x"}
    assert p("  host = h   dbname=d  ").host == "h"


def test_pgcluster_dsns_resolve(pg: PgCluster) -> None:
    c = p(pg.dsn(PgCluster.SCRAM_USER, "p@ss w:rd/?#"))
    assert (c.host, c.port, c.user, c.password, c.database) == (
        pg.host, pg.port, PgCluster.SCRAM_USER, "p@ss w:rd/?#", pg.DATABASE)


async def test_same_target_as_asyncpg(pg: PgCluster) -> None:
    """A DSN with percent-encoded parts and server settings: asyncpg connects with
    it, and our parse gives what the server then reports."""
    dsn = pg.dsn(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD) + "?application_name=wp%20dsn&sslmode=disable"
    c = p(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT current_user, current_database(), current_setting('application_name'),"
                                  " inet_server_port()")
    finally:
        await conn.close()
    assert tuple(row) == (c.user, c.database, c.server_settings["application_name"], c.port)
    assert c.sslmode == "disable"
