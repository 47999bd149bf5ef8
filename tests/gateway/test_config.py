"""gateway.config: strict TOML validation with dotted key paths."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from gateway.config import (Config, ConfigError, DatabaseConfig, GatewaySettings, UserConfig,
                            load_config, parse_config)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "wirepool.example.toml"
VERIFIER = ("SCRAM-SHA-256$4096:d2lyZXBvb2wtZXhhbXBsZQ==$xnxODH2sqUSvraA8iTcA6TJrRjZuEdSSvj0vg+8plq0="
            ":pt3B/OND57RrBvHdS/YFvj2CRWbluYGGPpmQk98drnA=")


def base(**gateway: Any) -> dict[str, Any]:
    return {
        "gateway": dict(gateway),
        "databases": {"app": {"user": "app", "password": "app-secret"}},
        "users": {"alice": {"password": "alice-secret"}},
    }


def err(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    return ei.value


def test_minimal_defaults() -> None:
    cfg = parse_config(base())
    assert cfg.gateway == GatewaySettings()
    assert cfg.gateway.listen == ("127.0.0.1", 8432)
    assert cfg.gateway.pg_listen is None
    db = cfg.databases["app"]
    assert (db.name, db.host, db.port, db.dbname, db.user) == ("app", "127.0.0.1", 5432, "app", "app")
    assert db.effective_pool_size(cfg.gateway) == 20
    assert db.effective_pool_mode(cfg.gateway) == "transaction"
    assert cfg.users["alice"] == UserConfig("alice", "alice-secret", ())


def test_example_config_loads() -> None:
    cfg = load_config(EXAMPLE)
    assert cfg.gateway.pg_listen == ("127.0.0.1", 6432)
    assert cfg.databases["app"].pool_size == 5
    assert cfg.databases["app"].effective_pool_size(cfg.gateway) == 5
    assert cfg.users["bob"].is_scram_verifier
    from driver.protocol.auth import ScramVerifier
    assert ScramVerifier.parse(cfg.users["bob"].password or "").verify_password("bob-secret")
    # Every [gateway] key of the contract appears (documented) in the example.
    raw = tomllib.loads(EXAMPLE.read_text())
    text = EXAMPLE.read_text()
    for f in GatewaySettings.__dataclass_fields__:
        assert f in raw["gateway"] or f"# {f} =" in text, f


def test_int_accepted_for_float_and_values() -> None:
    cfg = parse_config(base(shutdown_timeout=5, reserve_pool_timeout=0.25, listen="0.0.0.0:0",
                            pg_listen="[::1]:7000", pool_mode="session", auth_type="md5",
                            log_level="DEBUG"))
    g = cfg.gateway
    assert g.shutdown_timeout == 5.0 and isinstance(g.shutdown_timeout, float)
    assert g.listen == ("0.0.0.0", 0) and g.pg_listen == ("::1", 7000)
    assert (g.pool_mode, g.auth_type, g.log_level) == ("session", "md5", "debug")


def test_dbname_and_overrides() -> None:
    d = base(default_pool_size=10, min_pool_size=2)
    d["databases"]["other"] = {"user": "u", "dbname": "real", "host": "db.local", "port": 6000,
                               "pool_size": 3, "min_pool_size": 1, "pool_mode": "session"}
    cfg = parse_config(d)
    o = cfg.databases["other"]
    assert (o.dbname, o.host, o.port) == ("real", "db.local", 6000)
    assert o.effective_pool_size(cfg.gateway) == 3 and o.effective_min_pool_size(cfg.gateway) == 1
    assert o.effective_pool_mode(cfg.gateway) == "session"
    assert cfg.databases["app"].effective_min_pool_size(cfg.gateway) == 2
    assert DatabaseConfig("x", user="u").dbname == "x"


@pytest.mark.parametrize("mutate, key, reason", [
    # unknown keys
    (lambda d: d.update(extra={}), "extra", "unknown key"),
    (lambda d: d["gateway"].update(listen_port=1), "gateway.listen_port", "unknown key"),
    (lambda d: d["databases"]["app"].update(pool=1), "databases.app.pool", "unknown key"),
    (lambda d: d["users"]["alice"].update(pasword="x"), "users.alice.pasword", "unknown key"),
    # wrong types
    (lambda d: d["gateway"].update(max_client_conn="10"), "gateway.max_client_conn", "expected an integer"),
    (lambda d: d["gateway"].update(default_pool_size=True), "gateway.default_pool_size", "expected an integer"),
    (lambda d: d["gateway"].update(default_pool_size=5.0), "gateway.default_pool_size", "expected an integer"),
    (lambda d: d["gateway"].update(shutdown_timeout=False), "gateway.shutdown_timeout", "expected a number"),
    (lambda d: d["gateway"].update(query_wait_timeout="30s"), "gateway.query_wait_timeout", "expected a number"),
    (lambda d: d["gateway"].update(server_reset_query=1), "gateway.server_reset_query", "expected a string"),
    (lambda d: d["gateway"].update(listen=8432), "gateway.listen", "expected a string"),
    (lambda d: d["databases"]["app"].update(port="5432"), "databases.app.port", "expected an integer"),
    (lambda d: d["databases"]["app"].update(password=1), "databases.app.password", "expected a string"),
    (lambda d: d["users"]["alice"].update(tokens="t"), "users.alice.tokens", "expected an array"),
    (lambda d: d["users"]["alice"].update(tokens=["ok", 3]), "users.alice.tokens[1]", "expected a string"),
    (lambda d: d.update(gateway=1), "gateway", "expected a table"),
    (lambda d: d["databases"].update(app=1), "databases.app", "expected a table"),
    (lambda d: d["users"].update(bob="pw"), "users.bob", "expected a table"),
    # impossible values
    (lambda d: d["gateway"].update(default_pool_size=0), "gateway.default_pool_size", "must be >= 1"),
    (lambda d: d["gateway"].update(min_pool_size=-1), "gateway.min_pool_size", "must be >= 0"),
    (lambda d: d["gateway"].update(reserve_pool_size=-2), "gateway.reserve_pool_size", "must be >= 0"),
    (lambda d: d["gateway"].update(max_client_conn=0), "gateway.max_client_conn", "must be >= 1"),
    (lambda d: d["gateway"].update(max_message_size=10), "gateway.max_message_size", "must be >= 1024"),
    (lambda d: d["gateway"].update(shutdown_timeout=-1.0), "gateway.shutdown_timeout", "must not be negative"),
    (lambda d: d["gateway"].update(query_wait_timeout=-0.5), "gateway.query_wait_timeout", "must not be negative"),
    (lambda d: d["gateway"].update(server_connect_timeout=0), "gateway.server_connect_timeout", "greater than 0"),
    (lambda d: d["gateway"].update(server_lifetime=float("inf")), "gateway.server_lifetime", "finite"),
    (lambda d: d["gateway"].update(server_idle_timeout=float("nan")), "gateway.server_idle_timeout", "finite"),
    (lambda d: d["gateway"].update(min_pool_size=30), "gateway.min_pool_size", "must not exceed"),
    (lambda d: d["databases"]["app"].update(pool_size=2, min_pool_size=3), "databases.app.min_pool_size",
     "must not exceed"),
    (lambda d: (d["gateway"].update(min_pool_size=4), d["databases"]["app"].update(pool_size=2)),
     "databases.app.pool_size", "must not exceed"),
    (lambda d: d["databases"]["app"].update(pool_size=0), "databases.app.pool_size", "must be >= 1"),
    (lambda d: d["databases"]["app"].update(port=0), "databases.app.port", "must be >= 1"),
    (lambda d: d["databases"]["app"].update(port=70000), "databases.app.port", "must be <= 65535"),
    (lambda d: d["databases"]["app"].update(host=""), "databases.app.host", "must not be empty"),
    (lambda d: d["databases"]["app"].pop("user"), "databases.app.user", "required"),
    # addresses
    (lambda d: d["gateway"].update(listen="8432"), "gateway.listen", "host:port"),
    (lambda d: d["gateway"].update(listen=":8432"), "gateway.listen", "missing host"),
    (lambda d: d["gateway"].update(listen="localhost:http"), "gateway.listen", "port must be a number"),
    (lambda d: d["gateway"].update(listen="localhost:-1"), "gateway.listen", "port must be a number"),
    (lambda d: d["gateway"].update(listen="127.0.0.1:99999"), "gateway.listen", "0..65535"),
    (lambda d: d["gateway"].update(pg_listen="::1:6432"), "gateway.pg_listen", "[addr]:port"),
    (lambda d: d["gateway"].update(listen="127.0.0.1:7000", pg_listen="127.0.0.1:7000"),
     "gateway.pg_listen", "already used"),
    (lambda d: d["gateway"].update(listen="0.0.0.0:7000", pg_listen="127.0.0.1:7000"),
     "gateway.pg_listen", "already used"),
    # enums
    (lambda d: d["gateway"].update(auth_type="plain"), "gateway.auth_type", "unknown value 'plain'"),
    (lambda d: d["gateway"].update(pool_mode="statement"), "gateway.pool_mode", "unknown value"),
    (lambda d: d["databases"]["app"].update(pool_mode="txn"), "databases.app.pool_mode", "unknown value"),
    (lambda d: d["gateway"].update(log_level="loud"), "gateway.log_level", "unknown value"),
    # users and auth
    (lambda d: (d["gateway"].update(auth_type="md5"), d["users"]["alice"].update(password=VERIFIER)),
     "users.alice.password", "cannot be used with auth_type = \"md5\""),
    (lambda d: d["users"]["alice"].update(password="SCRAM-SHA-256$garbage"), "users.alice.password",
     "malformed SCRAM"),
    (lambda d: d["users"]["alice"].pop("password"), "users.alice.password", "required"),
    (lambda d: d["users"]["alice"].update(password=""), "users.alice.password", "must not be empty"),
    (lambda d: d["users"]["alice"].update(tokens=["t", "t"]), "users.alice.tokens", "duplicate"),
    (lambda d: d["users"].update(bob={"password": "x", "tokens": ["shared"]}) or
     d["users"]["alice"].update(tokens=["shared"]), "users.bob.tokens", "also belongs"),
    # databases
    (lambda d: d.update(databases={}), "databases", "at least one"),
    (lambda d: d.pop("databases"), "databases", "at least one"),
    # tls
    (lambda d: d["gateway"].update(tls_cert_file="/nonexistent/cert.pem"), "gateway.tls_cert_file", "not found"),
])
def test_errors(mutate: Any, key: str, reason: str) -> None:
    d = base()
    mutate(d)
    e = err(d)
    assert e.key == key
    assert reason in e.reason
    assert str(e) == f"{key}: {e.reason}"


def test_scram_verifier_ok_with_password_and_scram(tmp_path: Path) -> None:
    for auth in ("scram-sha-256", "password"):
        d = base(auth_type=auth)
        d["users"]["alice"]["password"] = VERIFIER
        assert parse_config(d).users["alice"].is_scram_verifier


def test_trust_and_token_users_need_no_password() -> None:
    d = base(auth_type="trust")
    d["users"]["alice"] = {}
    assert parse_config(d).users["alice"].password is None
    d = base()
    d["users"]["alice"] = {"tokens": ["tok-1"]}
    assert parse_config(d).users["alice"].tokens == ("tok-1",)


def test_pg_listen_empty_disables() -> None:
    assert parse_config(base(pg_listen="")).gateway.pg_listen is None


def test_tls_pair(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("x")
    (tmp_path / "k.pem").write_text("x")
    e = err(base(tls_cert_file=str(tmp_path / "c.pem")))
    assert e.key == "gateway.tls_key_file"
    p = tmp_path / "w.toml"
    p.write_text('[gateway]\ntls_cert_file = "c.pem"\ntls_key_file = "k.pem"\n'
                 '[databases.app]\nuser = "app"\n')
    cfg = load_config(p)
    assert cfg.gateway.tls_cert_file == str(tmp_path / "c.pem")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[gateway\nlisten = 1")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(bad)


def test_with_gateway() -> None:
    cfg = parse_config(base())
    c2 = cfg.with_gateway(listen=("127.0.0.1", 0))
    assert isinstance(c2, Config) and c2.gateway.listen == ("127.0.0.1", 0)
    assert cfg.gateway.listen == ("127.0.0.1", 8432)
