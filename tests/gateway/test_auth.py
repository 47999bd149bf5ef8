"""Client authentication against [users], per auth_type, through pg_listen."""

from __future__ import annotations

import asyncpg
import pytest

from driver.protocol import messages as m
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD
from tests.gateway.pool_helpers import RawClient, errors
from tests.gateway.test_neon_sql import http_client  # noqa: F401 (fixture)


async def _login(app, user, password, database="app", **kw):
    return await asyncpg.connect(app.pg_dsn(user, password, database), statement_cache_size=0, **kw)


async def _ok(app, user, password):
    conn = await _login(app, user, password)
    try:
        assert await conn.fetchval("SELECT 7") == 7
    finally:
        await conn.close()


async def _fails(app, user, password) -> str:
    with pytest.raises(asyncpg.InvalidPasswordError) as ei:
        await _login(app, user, password)
    assert ei.value.sqlstate == "28P01"
    return str(ei.value)


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "password", "md5"])
async def test_password_auth_types(gateway_app, auth_type):
    app = await gateway_app(auth_type=auth_type)
    await _ok(app, "alice", ALICE_PASSWORD)          # plaintext in the config
    await _ok(app, "bob", BOB_PASSWORD)              # verifier (plaintext for md5)
    wrong = await _fails(app, "alice", "not-the-password")
    unknown = await _fails(app, "mallory", "whatever")
    assert wrong == 'password authentication failed for user "alice"'
    assert unknown == 'password authentication failed for user "mallory"'
    # no pool activity for failed logins
    assert app.gateway.stats()["clients"] == 0


async def test_user_without_password_cannot_use_password_auth(gateway_app):
    app = await gateway_app(auth_type="password", users={"tokenonly": {"tokens": ["tok-123456789"]}, "alice": {"password": "x"}})
    msg = await _fails(app, "tokenonly", "")
    assert msg == 'password authentication failed for user "tokenonly"'


async def test_trust(gateway_app):
    app = await gateway_app(auth_type="trust")
    await _ok(app, "alice", None)
    await _ok(app, "alice", "anything")
    await _fails(app, "mallory", None)


async def test_scram_unknown_user_runs_a_full_mock_exchange(gateway_app):
    """Unknown users get the same SASL messages as real ones; failure only at the proof."""
    app = await gateway_app()
    for user in ("alice", "mallory"):
        c = await RawClient.connect(app.pg_port)
        try:
            msgs = await c.login(user, "wrong", "app")
            kinds = [x.code for x in msgs if isinstance(x, m.AuthenticationRequest)]
            assert kinds == [m.AUTH_SASL, m.AUTH_SASL_CONTINUE]
            errs = errors(msgs)
            assert [(e.sqlstate, e.severity, e.message) for e in errs] == [
                ("28P01", "FATAL", f'password authentication failed for user "{user}"')]
            assert await c.recv_message() is None  # closed
        finally:
            await c.close()


async def test_password_mode_rejects_scram_pipelining_mismatch(gateway_app):
    """A client answering a cleartext request with SASL data gets 28P01/08P01, not a hang."""
    app = await gateway_app(auth_type="scram-sha-256")
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"user": "alice", "database": "app"})
                     + m.password_message(ALICE_PASSWORD))
        msgs = await c.read_to_eof()
        assert [e.sqlstate for e in errors(msgs)] == ["08P01"]
    finally:
        await c.close()


async def test_wrong_password_does_not_disturb_others(gateway_app):
    app = await gateway_app()
    good = await _login(app, "alice", ALICE_PASSWORD)
    try:
        for _ in range(3):
            await _fails(app, "alice", "bad")
        assert await good.fetchval("SELECT 1") == 1
    finally:
        await good.close()


async def test_no_user_name(gateway_app):
    app = await gateway_app()
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"database": "app"}))
        msgs = await c.read_to_eof()
        assert [e.sqlstate for e in errors(msgs)] == ["28000"]
    finally:
        await c.close()


async def test_unsupported_startup_parameter(gateway_app):
    app = await gateway_app()
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"user": "alice", "database": "app", "search_path": "evil"}))
        msgs = await c.read_to_eof()
        assert [e.sqlstate for e in errors(msgs)] == ["08P01"]
        assert "search_path" in errors(msgs)[0].message
    finally:
        await c.close()


async def test_client_login_timeout(gateway_app):
    app = await gateway_app(client_login_timeout=0.3)
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(m.startup_message({"user": "alice", "database": "app"}))
        msgs = await c.read_to_eof(timeout=10)  # we never answer the SASL request
        assert isinstance(msgs[0], m.AuthenticationRequest)
        assert [e.sqlstate for e in errors(msgs)] == ["08006"]
    finally:
        await c.close()


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "password"])
async def test_password_changed_by_reload_stops_working_at_once(gateway_app, pg, http_client, auth_type):
    """A remembered cleartext success (HTTP /sql, pg_listen's auth_type=password) is
    keyed by the secret it was checked against: after a reload changes alice's
    password, the old one is refused (it was remembered by user and password only,
    so it kept working until 1,024 other successes pushed it out)."""
    from gateway.reload import apply_config
    from tests.gateway.conftest import build_config
    from tests.gateway.test_neon_sql import cs_for
    app = await gateway_app(auth_type=auth_type, auth_failure_delay=0)
    http = http_client(app.http_port)
    q = {"query": "select 7", "params": []}
    status, _, body = await http.sql(q, cs=cs_for("alice", ALICE_PASSWORD))
    assert status == 200, (status, body)
    if auth_type == "password":
        await _ok(app, "alice", ALICE_PASSWORD)
    new = ALICE_PASSWORD + "-rotated"
    cfg = build_config(pg, auth_type=auth_type, auth_failure_delay=0,
                       users={"alice": {"password": new}, "bob": {"password": BOB_PASSWORD}})
    apply_config(app.gateway, cfg)
    status, _, body = await http.sql(q, cs=cs_for("alice", ALICE_PASSWORD))
    assert status == 400 and body["code"] == "28P01", (status, body)
    await _fails(app, "alice", ALICE_PASSWORD)
    status, _, body = await http.sql(q, cs=cs_for("alice", new))
    assert status == 200, (status, body)
    await _ok(app, "alice", new)
