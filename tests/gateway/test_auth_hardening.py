"""Issue 11 F5: uniform work for every failed login, PBKDF2 off the event loop
with a bounded number in flight, and the failed-login throttle.

Uniformity is proven by counting what runs -- PBKDF2 invocations and their
iteration counts -- not by timing (bench/login_flood.py prints the timings).
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import asyncpg
import pytest

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway.auth import AuthFailed, Authenticator
from gateway.config import UserConfig
from gateway.ratelimit import LoginThrottle, source_of
from tests.gateway.conftest import ALICE_PASSWORD, BOB_PASSWORD, BOB_VERIFIER

#: A second loopback address: "another machine" for the per-source throttle.
ATTACKER = "127.0.0.2"


class Pbkdf2Spy:
    """Counts PBKDF2 calls made by gateway password checks (and where they ran)."""

    def __init__(self, monkeypatch: Any) -> None:
        self.calls: list[tuple[int, str]] = []
        real = pg_auth.pbkdf2_sha256

        def spy(password: bytes, salt: bytes, iterations: int) -> bytes:
            self.calls.append((iterations, threading.current_thread().name))
            return real(password, salt, iterations)

        monkeypatch.setattr(pg_auth, "pbkdf2_sha256", spy)

    def take(self) -> list[tuple[int, str]]:
        out, self.calls = self.calls, []
        return out


def _users() -> dict[str, UserConfig]:
    return {"alice": UserConfig("alice", ALICE_PASSWORD), "bob": UserConfig("bob", BOB_VERIFIER),
            "tok": UserConfig("tok", None, ("tok-1234567890",))}


# --------------------------------------------------------------------- unit level

@pytest.mark.parametrize("auth_type", ["password", "scram-sha-256"])
async def test_every_failed_cleartext_check_is_one_pbkdf2_off_loop(monkeypatch: Any, auth_type: str) -> None:
    auth = Authenticator(auth_type, _users())
    spy = Pbkdf2Spy(monkeypatch)
    try:
        seen = {}
        for user, pw in (("mallory", "x"), ("alice", "wrong"), ("bob", "wrong"), ("tok", "x"),
                         ("mallory", None), ("alice", None)):
            assert await auth.verify_password(user, pw) is False
            calls = spy.take()
            # exactly one derivation, same cost (iterations) for every kind of user
            assert len(calls) == 1, (user, calls)
            seen[user, pw] = calls[0][0]
            assert calls[0][1].startswith("wirepool-auth"), calls  # not the event loop's thread
        assert set(seen.values()) == {4096}, seen
        # successes: one derivation the first time, cached after (HTTP clients resend credentials)
        assert await auth.verify_password("alice", ALICE_PASSWORD) is True
        assert await auth.verify_password("bob", BOB_PASSWORD) is True
        assert len(spy.take()) == 2
        assert await auth.verify_password("alice", ALICE_PASSWORD) is True
        assert spy.take() == []
        # ... but a wrong password after a success is still one full derivation
        assert await auth.verify_password("alice", ALICE_PASSWORD + "x") is False
        assert len(spy.take()) == 1
    finally:
        auth.close()


async def test_dummy_verifier_matches_configured_iterations(monkeypatch: Any) -> None:
    v = str(pg_auth.ScramVerifier.from_password("pw", iterations=5000))
    auth = Authenticator("password", {"u1": UserConfig("u1", v), "u2": UserConfig("u2", v)})
    spy = Pbkdf2Spy(monkeypatch)
    try:
        assert await auth.verify_password("nobody", "pw") is False
        assert await auth.verify_password("u1", "nope") is False
        assert [c[0] for c in spy.take()] == [5000, 5000]
    finally:
        auth.close()


async def test_password_checks_in_flight_are_bounded() -> None:
    class S:
        auth_max_concurrent = 2
        auth_failure_delay = 0.0  # throttle off: only the semaphore is measured

    auth = Authenticator("password", _users(), S())
    try:
        results = await asyncio.gather(*(auth.verify_password("alice", f"wrong{i}") for i in range(16)))
        assert results == [False] * 16
        assert auth.derivations == 16
        assert auth.peak_in_flight == 2
    finally:
        auth.close()


def test_throttle_exponential_delay_window_and_success() -> None:
    now = [0.0]
    t = LoginThrottle(free=2, delay=0.1, max_delay=1.0, window=60, clock=lambda: now[0])
    assert t.delay_for("1.2.3.4", "alice") == 0
    delays = []
    for _ in range(7):
        t.failed("1.2.3.4", "alice")
        delays.append(t.delay_for("1.2.3.4", "alice"))
    assert delays == [0, 0, 0.1, 0.2, 0.4, 0.8, 1.0]
    # per source: another user from the same address is delayed too
    assert t.delay_for("1.2.3.4", "bob") == 1.0
    # per user: the same user from another address is delayed too
    assert t.delay_for("5.6.7.8", "alice") == 1.0
    assert t.delay_for("5.6.7.8", "bob") == 0
    # a success clears the user's count, not the address's
    t.succeeded("5.6.7.8", "alice")
    assert t.delay_for("5.6.7.8", "alice") == 0
    assert t.delay_for("1.2.3.4", None) == 1.0
    # forgotten after the window
    now[0] = 61.0
    assert t.delay_for("1.2.3.4", "alice") == 0
    assert len(t) == 0


def test_throttle_spaces_parallel_attempts_and_refuses_past_max_delay() -> None:
    now = [0.0]
    t = LoginThrottle(free=1, delay=0.25, max_delay=1.0, window=60, clock=lambda: now[0])
    t.failed("9.9.9.9", None)
    t.failed("9.9.9.9", None)  # delay 0.25 s
    # five connections at the same instant: spaced 0.25 s apart, the 5th would wait > 1 s
    waits = [t.admit("9.9.9.9", f"u{i}") for i in range(5)]
    assert waits == [0.25, 0.5, 0.75, 1.0, None]
    assert t.refused == 1
    # other addresses are not affected; the user key only delays, never refuses
    assert t.admit("8.8.8.8", "u0") == 0
    for _ in range(10):
        t.failed("7.7.7.7", "victim")
    assert t.admit("6.6.6.6", "victim") == 1.0
    assert t.admit("6.6.6.6", "victim") == 1.0
    # later, the address gets turns again
    now[0] = 5.0
    assert t.admit("9.9.9.9", "u9") == 0.25


def test_throttle_memory_is_bounded_and_can_be_disabled() -> None:
    t = LoginThrottle(free=0, delay=0.1, max_delay=1, window=60, max_keys=100)
    for i in range(1000):
        t.failed(f"10.0.{i // 256}.{i % 256}", f"user{i}")
    assert len(t) == 100
    off = LoginThrottle(delay=0.0)
    for _ in range(50):
        off.failed("1.1.1.1", "x")
    assert off.delay_for("1.1.1.1", "x") == 0 and len(off) == 0


def test_throttle_keys_stay_small_for_huge_user_names() -> None:
    """Entries are counted, so each must be small: a 16 KiB user name (what an
    HTTP header allows) is kept as a digest, and still throttles that name."""
    now = [0.0]
    t = LoginThrottle(free=1, delay=0.1, max_delay=1.0, window=60, max_keys=1000, clock=lambda: now[0])
    huge = ["x" * 16000 + str(i) for i in range(500)]
    for i, name in enumerate(huge):
        t.failed(f"10.1.{i // 256}.{i % 256}", name)
    assert max(len(k) for k in t._keys) < 100
    t.failed("10.9.9.9", huge[0])  # the same huge name again: its own count goes on
    assert t.delay_for("10.8.8.8", huge[0]) > 0 and t.delay_for("10.8.8.8", huge[1]) == 0
    t.succeeded("10.9.9.9", huge[0])
    assert t.delay_for("10.8.8.8", huge[0]) == 0
    short = "r" * 64  # a name as long as a role name can be is kept as it is
    t.failed("10.7.7.7", short)
    assert "u:" + short in t._keys


def test_source_of() -> None:
    assert source_of("1.2.3.4:5678") == "1.2.3.4"
    assert source_of("[2001:db8::1]:5432") == "2001:db8::/64"
    assert source_of("[2001:db8::1:2:3:4]:1") == "2001:db8::/64"
    assert source_of("?") == "?"


# --------------------------------------------------------------- through the gateway

async def _raw_password_login(port: int, user: str, password: str, local: str = ATTACKER) -> str:
    """One cleartext-password login over pg_listen; returns the SQLSTATE (or 'ok')."""
    r, w = await asyncio.open_connection("127.0.0.1", port, local_addr=(local, 0))
    try:
        w.write(m.startup_message({"user": user, "database": "app"}))
        mr = MessageReader()
        sent = False
        while True:
            data = await asyncio.wait_for(r.read(65536), 30)
            if not data:
                return "eof"
            mr.feed(data)
            for t, body in mr.read():
                msg = m.decode_backend(t, body)
                if isinstance(msg, m.ErrorResponse):
                    return msg.fields.get("C", "?")
                if isinstance(msg, m.ReadyForQuery):
                    return "ok"
                if not sent and isinstance(msg, m.AuthenticationRequest):
                    w.write(m.password_message(password))
                    sent = True
    finally:
        w.close()


async def test_failed_logins_cost_the_same_over_pg_listen(gateway_app: Any, monkeypatch: Any) -> None:
    app = await gateway_app(auth_type="password", auth_failure_delay=0.0)
    spy = Pbkdf2Spy(monkeypatch)
    for user in ("mallory", "alice", "bob"):
        assert await _raw_password_login(app.pg_port, user, "wrong") == "28P01"
        calls = spy.take()
        assert [c[0] for c in calls] == [4096], (user, calls)
        assert calls[0][1].startswith("wirepool-auth")
    assert await _raw_password_login(app.pg_port, "bob", BOB_PASSWORD) == "ok"


async def _sql(app: Any, user: str, password: str, local: str = ATTACKER) -> tuple[int, Any]:
    body = json.dumps({"query": "select 1 as x", "params": []}).encode()
    cs = f"postgresql://{user}:{password}@db.invalid/app"
    r, w = await asyncio.open_connection(app.http_host, app.http_port, local_addr=(local, 0))
    try:
        w.write(b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Neon-Connection-String: {cs}\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n".encode() + body)
        raw = await asyncio.wait_for(r.read(), 30)
    finally:
        w.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"null")


async def test_failed_logins_cost_the_same_over_http(gateway_app: Any, monkeypatch: Any) -> None:
    app = await gateway_app(auth_type="scram-sha-256", auth_failure_delay=0.0)
    spy = Pbkdf2Spy(monkeypatch)
    for user in ("mallory", "alice", "bob"):
        status, body = await _sql(app, user, "wrong")
        assert status == 400 and body["code"] == "28P01", body  # Neon answers auth errors with 400
        assert [c[0] for c in spy.take()] == [4096], user
    status, body = await _sql(app, "alice", ALICE_PASSWORD)
    assert status == 200 and body["rows"] == [{"x": 1}], body


async def test_login_flood_is_throttled_and_normal_clients_are_served(gateway_app: Any) -> None:
    """A flood of wrong passwords from one address (pg_listen and /sql) gets
    delayed; a client elsewhere keeps logging in and running queries."""
    app = await gateway_app(auth_type="password", auth_failure_free=3, auth_failure_delay=0.02,
                            auth_failure_max_delay=0.2, auth_max_concurrent=1)
    auth = app.gateway.authenticator
    stop = asyncio.Event()
    outcomes: list[str] = []

    async def flooder(i: int) -> None:
        n = 0
        while not stop.is_set():
            if n % 4 == 3:
                status, _ = await _sql(app, f"user{i}", "guess")
                outcomes.append(str(status))
            else:
                outcomes.append(await _raw_password_login(app.pg_port, "alice" if n % 2 else f"nobody{i}",
                                                          f"guess{n}"))
            n += 1

    flood = [asyncio.create_task(flooder(i)) for i in range(8)]
    try:
        served = 0
        for _ in range(5):  # fresh logins (same user as the flood targets) and queries
            conn = await asyncpg.connect(app.pg_dsn("alice", ALICE_PASSWORD, "app"), statement_cache_size=0)
            try:
                for _ in range(20):
                    assert await conn.fetchval("select 1") == 1
                    served += 1
            finally:
                await conn.close()
        assert served == 100
        # the flood is being throttled while normal clients are served
        deadline = asyncio.get_running_loop().time() + 30
        while (auth.throttle.delayed < 20 or auth.throttle.refused < 20) \
                and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert auth.throttle.delayed >= 20 and auth.throttle.refused >= 20
    finally:
        stop.set()
        await asyncio.gather(*flood)
    assert outcomes and set(outcomes) <= {"28P01", "400", "08004", "429"}, set(outcomes)
    assert {"28P01", "08004"} <= set(outcomes), set(outcomes)
    # refused attempts cost no PBKDF2: far fewer derivations than attempts
    assert auth.derivations < len(outcomes) - auth.throttle.refused + 20
    assert app.gateway.stats()["clients"] == 0


async def test_api_token_failures_are_throttled(gateway_app: Any) -> None:
    app = await gateway_app(auth_failure_free=2, auth_failure_delay=0.01, auth_failure_max_delay=0.05,
                            users={"alice": {"password": ALICE_PASSWORD, "tokens": ["tok-good-123456"]}})
    auth = app.gateway.authenticator
    ex_failed = auth.throttle.failures
    for _ in range(4):
        with pytest.raises(AuthFailed) as ei:
            await auth.authenticate_token("tok-bad", None, f"{ATTACKER}:1")
        assert ei.value.sqlstate == "28P01"
    assert auth.throttle.failures == ex_failed + 4
    assert auth.throttle.delay_for(ATTACKER, None) > 0
    # parallel attempts from a throttled address are spaced, and refused past max_delay:
    # over HTTP that is a 429 with SQLSTATE 08004
    results = await asyncio.gather(*(_sql_bearer(app, "tok-bad") for _ in range(10)))
    statuses = sorted(st for st, _ in results)
    assert 429 in statuses and 400 in statuses, statuses
    assert {b["code"] for st, b in results if st == 429} == {"08004"}
    assert auth.throttle.refused >= statuses.count(429)
    assert await auth.authenticate_token("tok-good-123456", "alice", "127.0.0.1:1") == "alice"


async def _sql_bearer(app: Any, token: str) -> tuple[int, Any]:
    body = b'{"query": "select 1", "params": []}'
    r, w = await asyncio.open_connection(app.http_host, app.http_port, local_addr=(ATTACKER, 0))
    try:
        w.write(b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                + f"Authorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
                  "Connection: close\r\n\r\n".encode() + body)
        raw = await asyncio.wait_for(r.read(), 30)
    finally:
        w.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(payload or b"null")
