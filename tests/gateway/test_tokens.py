"""API tokens (gateway/tokens.py): config forms, lookup, and authentication of
WebSocket sessions (Authorization header of the upgrade, ``?token=``) and of
``POST /sql`` (see also test_neon_sql.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

import driver
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway.config import ConfigError, parse_config
from gateway.tokens import TokenStore, hash_token, main as tokens_main, new_token, spec_digest
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.test_neon_sql import Http, cs_for

pytestmark = pytest.mark.timeout(60)

TOKEN = "wp_alice_" + "k" * 20
HASHED = "wp_bob_hashed_" + "z" * 20


def users(auth: str = "scram-sha-256") -> dict[str, Any]:
    return {"alice": {"password": ALICE_PASSWORD, "tokens": [TOKEN]},
            "bob": {"password": BOB_PASSWORD, "tokens": [hash_token(HASHED)]},
            "tok": {"tokens": ["only-token-" + "q" * 16]}}     # token-only user: no password


# --------------------------------------------------------------------------- unit

def test_store_plain_and_hashed_forms() -> None:
    store = TokenStore.from_pairs([("alice", TOKEN), ("bob", hash_token(HASHED))])
    assert len(store) == 2
    assert store.user_for(TOKEN) == "alice"
    assert store.user_for(HASHED) == "bob"
    assert store.user_for(hash_token(HASHED)) is None      # the stored form is not itself a token
    for bad in (None, "", TOKEN + "x", TOKEN[:-1], "x" * 10000):
        assert store.user_for(bad) is None
    assert hash_token("password") == "sha256:5e884898da28047151d0e56f8dc6292773603d0d6aabbdd62a11ef721d1542d8"
    t = new_token()
    assert t != new_token() and len(t) > 40 and t.isascii()


def test_cli_prints_hash(capsys: Any) -> None:
    assert tokens_main(["password"]) == 0
    assert capsys.readouterr().out.strip() == "config: " + hash_token("password")


@pytest.mark.parametrize("tokens,key,reason", [
    (["sha256:abc"], "users.alice.tokens[0]", "64 hex"),
    (["sha256:" + "g" * 64], "users.alice.tokens[0]", "64 hex"),
    (["ok", "x" * 5000], "users.alice.tokens[1]", "at most"),
    ([TOKEN, hash_token(TOKEN)], "users.alice.tokens", "duplicate"),
])
def test_config_rejects_bad_tokens(tokens: list[str], key: str, reason: str) -> None:
    data = {"databases": {"app": {"user": "u", "password": "p"}}, "users": {"alice": {"tokens": tokens}}}
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    assert ei.value.key == key and reason in ei.value.reason


def test_config_same_token_two_users_even_hashed() -> None:
    data = {"databases": {"app": {"user": "u", "password": "p"}},
            "users": {"alice": {"tokens": [TOKEN]}, "bob": {"tokens": [hash_token(TOKEN)]}}}
    with pytest.raises(ConfigError) as ei:
        parse_config(data)
    assert ei.value.key == "users.bob.tokens" and "also belongs" in ei.value.reason
    good = parse_config({"databases": {"app": {"user": "u", "password": "p"}},
                         "users": {"alice": {"tokens": [hash_token(TOKEN)]}}})
    assert spec_digest(good.users["alice"].tokens[0]) == spec_digest(TOKEN)


# --------------------------------------------------------------------------- WebSocket

def _ws_url(app: Any, query: str = "") -> str:
    return f"ws://127.0.0.1:{app.http_port}/v2{query}"


async def _raw_session(url: str, startup: dict[str, str], headers: dict[str, str] | None = None) -> list[Any]:
    """Startup + one Query over a raw WebSocket; every backend message, decoded."""
    reader = MessageReader()
    msgs: list[Any] = []
    async with ws_connect(url, additional_headers=headers or {}, compression=None) as ws:
        await ws.send(m.startup_message(startup) + m.query("select current_database(), 6 * 7"))
        while True:
            try:
                data = await asyncio.wait_for(ws.recv(), 10)
            except Exception:
                break
            reader.feed(data)  # type: ignore[arg-type]
            for t, body in reader.read():
                msgs.append(m.decode_backend(t, body))
            if any(isinstance(x, m.ErrorResponse) for x in msgs):
                break
            if sum(isinstance(x, m.ReadyForQuery) for x in msgs) == 2:
                break
    return msgs


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "password", "md5"])
async def test_ws_authorization_header_skips_password_exchange(gateway_app: Any, pg_db: str, auth_type: str) -> None:
    u = users()
    u["bob"]["password"] = BOB_PASSWORD  # md5 needs the plaintext
    app = await gateway_app(auth_type=auth_type, databases={"app": {"dbname": pg_db}}, users=u)
    msgs = await _raw_session(_ws_url(app), {"user": "alice", "database": "app"},
                              {"Authorization": f"Bearer {TOKEN}"})
    # AuthenticationOk is the very first message: no password request at all.
    assert isinstance(msgs[0], m.AuthenticationRequest) and msgs[0].code == 0, msgs[:2]
    rows = [x.values for x in msgs if isinstance(x, m.DataRow)]
    assert rows == [(pg_db.encode(), b"42")]
    # no user in the startup: the token's user
    msgs = await _raw_session(_ws_url(app), {"database": "app"}, {"Authorization": f"Bearer {HASHED}"})
    assert msgs[0].code == 0 and [x.values for x in msgs if isinstance(x, m.DataRow)] == [(pg_db.encode(), b"42")]


async def test_ws_bad_or_foreign_token_is_refused(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, users=users())
    for startup, tok in (({"user": "alice", "database": "app"}, "nope"),
                         ({"user": "bob", "database": "app"}, TOKEN),
                         ({"user": "alice", "database": "app"}, hash_token(HASHED))):
        msgs = await _raw_session(_ws_url(app, "?token=" + tok), startup)
        errs = [x for x in msgs if isinstance(x, m.ErrorResponse)]
        assert errs and errs[0].sqlstate == "28P01" and errs[0].severity == "FATAL", msgs
        assert not any(isinstance(x, m.AuthenticationRequest) for x in msgs)
    # unknown database after a good token
    msgs = await _raw_session(_ws_url(app, "?token=" + TOKEN), {"user": "alice", "database": "nope"})
    assert [x.sqlstate for x in msgs if isinstance(x, m.ErrorResponse)] == ["3D000"]


async def test_driver_ws_dsn_token(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, users=users())
    port = app.http_port
    # No user, no password: the token's user.
    conn = await driver.connect(f"ws://127.0.0.1:{port}/app?token={TOKEN}", statement_cache_size=0)
    try:
        assert await conn.fetchval("select $1::int + 1", 41) == 42
    finally:
        await conn.close()
    # hashed-form token, matching user given, token-only user
    for dsn in (f"ws://bob@127.0.0.1:{port}/app?token={HASHED}",
                f"ws://127.0.0.1:{port}/app?token=only-token-{'q' * 16}"):
        conn = await driver.connect(dsn, statement_cache_size=0)
        try:
            assert await conn.fetchval("select 1") == 1
        finally:
            await conn.close()
    with pytest.raises(driver.PostgresError) as ei:
        await driver.connect(f"ws://127.0.0.1:{port}/app?token=wrong")
    assert ei.value.sqlstate == "28P01"
    with pytest.raises(driver.PostgresError) as ei:
        await driver.connect(f"ws://carol@127.0.0.1:{port}/app?token={TOKEN}")
    assert ei.value.sqlstate == "28P01"
    # a token is not a password
    with pytest.raises(driver.PostgresError) as ei:
        await driver.connect(f"ws://tok:only-token-{'q' * 16}@127.0.0.1:{port}/app")
    assert ei.value.sqlstate == "28P01"


async def test_token_over_sql(gateway_app: Any, pg_db: str) -> None:
    app = await gateway_app(databases={"app": {"dbname": pg_db}}, users=users())
    c = Http(app.http_port)
    try:
        q = {"query": "select 1 as one", "params": []}
        for user, tok in (("alice", TOKEN), ("bob", HASHED), ("tok", "only-token-" + "q" * 16)):
            status, _, obj = await c.sql(q, cs=cs_for(user=user, password=None),
                                         headers={"authorization": f"Bearer {tok}"})
            assert status == 200 and obj["rows"] == [["1"]], (user, obj)
        status, _, obj = await c.sql(q, cs=cs_for(user="bob", password=None),
                                     headers={"authorization": f"Bearer {hash_token(HASHED)}"})
        assert status == 400 and obj["code"] == "28P01"
        # a token-only user cannot log in with its token as a password
        status, _, obj = await c.sql(q, cs=cs_for(user="tok", password="only-token-" + "q" * 16))
        assert status == 400 and obj["code"] == "28P01", json.dumps(obj)
    finally:
        await c.close()
