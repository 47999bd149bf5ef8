"""Client authentication against the ``[users]`` table.

``auth_type``:

* ``scram-sha-256`` -- SASL exchange with the driver's :class:`ScramServer`.
  Users configured with a plaintext password get a verifier computed once, at
  startup; stored ``SCRAM-SHA-256$...`` verifiers are used as they are.
  Unknown users run a mock exchange (same messages, same cost) that fails at
  the proof check.
* ``password`` -- AuthenticationCleartextPassword; compared with
  :func:`hmac.compare_digest` against the plaintext, or checked against the
  SCRAM verifier.
* ``md5`` -- AuthenticationMD5Password with a random salt; needs the
  plaintext (users stored only as a SCRAM verifier cannot log in with md5).
* ``trust`` -- no password; the user must be listed in ``[users]`` unless
  ``[users]`` is empty.

Every failure caused by the credentials -- unknown user or wrong password --
is the same FATAL 28P01 ``password authentication failed for user "x"``.
"""

from __future__ import annotations

import hmac
import logging
import os
from typing import Any, Awaitable, Callable

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m
from driver.protocol.framing import ProtocolError

from .tokens import TokenStore

log = logging.getLogger("wirepool.gateway.auth")

AUTH_TYPES = ("scram-sha-256", "password", "md5", "trust")


class AuthFailed(Exception):
    """Authentication failed; send ``sqlstate``/``message`` as FATAL and close."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


def failed_for(user: str) -> AuthFailed:
    return AuthFailed("28P01", f'password authentication failed for user "{user}"')


class _Entry:
    __slots__ = ("plaintext", "verifier")

    def __init__(self, plaintext: bytes | None, verifier: pg_auth.ScramVerifier | None) -> None:
        self.plaintext = plaintext
        self.verifier = verifier


SendFn = Callable[[bytes], Awaitable[None]]
RecvFn = Callable[[], Awaitable[tuple[int, bytes]]]


class Authenticator:
    """Checks client credentials; build once per Gateway (verifiers are precomputed)."""

    def __init__(self, auth_type: str, users: dict[str, Any]) -> None:
        if auth_type not in AUTH_TYPES:
            raise ValueError(f"unsupported auth_type {auth_type!r}")
        self.auth_type = auth_type
        self._entries: dict[str, _Entry] = {}
        self._any_verifier_only = False
        for name, user in users.items():
            pw: str | None = getattr(user, "password", None)
            plaintext: bytes | None = None
            verifier: pg_auth.ScramVerifier | None = None
            if pw is not None:
                if pg_auth.is_scram_verifier(pw):
                    verifier = pg_auth.ScramVerifier.parse(pw)
                    self._any_verifier_only = True
                    if auth_type == "md5":
                        log.warning("user %s has a SCRAM verifier: it cannot log in with auth_type=md5", name)
                else:
                    plaintext = pw.encode("utf-8")
                    if auth_type == "scram-sha-256":
                        verifier = pg_auth.ScramVerifier.from_password(pw)
            self._entries[name] = _Entry(plaintext, verifier)
        self._dummy_plain = os.urandom(16).hex().encode()
        self._dummy_verifier = pg_auth.ScramVerifier.from_password(os.urandom(16).hex())
        #: API tokens (gateway/tokens.py): token -> user, constant-time lookup.
        self.tokens = TokenStore(users)

    # -- hooks for clients that bring their credentials in one piece (HTTP, tokens)
    def user_for_token(self, token: str | None) -> str | None:
        """The user an API token belongs to, or None."""
        return self.tokens.user_for(token)

    def check_password(self, user: str, password: str | None) -> bool:
        """Check a cleartext password (HTTP clients) against ``[users]`` like any
        other client: unknown user and wrong password are indistinguishable;
        ``trust`` only needs a listed user."""
        if self.auth_type == "trust":
            return user in self._entries or not self._entries
        if password is None:
            self._check_cleartext(None, "")
            return False
        return self._check_cleartext(self._entries.get(user), password)

    async def authenticate(self, user: str, send: SendFn, recv: RecvFn) -> bytes:
        """Run the exchange.  Returns bytes still to send before
        AuthenticationOk (the SASL final message, or b""): the session sends
        them together with the rest of its reply.  Raises :class:`AuthFailed`."""
        entry = self._entries.get(user)
        t = self.auth_type
        if t == "trust":
            if entry is None and self._entries:
                raise failed_for(user)
            return b""
        if t == "scram-sha-256":
            return await self._scram(user, entry, send, recv)
        elif t == "password":
            await send(m.AUTHENTICATION_CLEARTEXT_PASSWORD)
            password = _decode_password(await _expect_password(recv))
            if not self._check_cleartext(entry, password):
                raise failed_for(user)
        else:  # md5
            salt = os.urandom(4)
            await send(m.authentication_md5_password(salt))
            answer = _decode_password(await _expect_password(recv)).encode("utf-8", "replace")
            if entry is not None and entry.plaintext is not None:
                expected = pg_auth.md5_password(user, entry.plaintext.decode("utf-8"), salt).encode()
                ok = True
            else:
                expected = pg_auth.md5_password(user, self._dummy_plain.decode(), salt).encode()
                ok = False
            if not (hmac.compare_digest(answer, expected) and ok):
                raise failed_for(user)
        return b""

    def _check_cleartext(self, entry: _Entry | None, password: str) -> bool:
        pw = password.encode("utf-8", "replace")
        if entry is None:
            # Same work as for a real user, then fail.
            if self._any_verifier_only:
                self._dummy_verifier.verify_password(password)
            else:
                hmac.compare_digest(pw, self._dummy_plain)
            return False
        if entry.plaintext is not None:
            return hmac.compare_digest(pw, entry.plaintext)
        if entry.verifier is not None:
            return entry.verifier.verify_password(password)
        return False  # user without a password: password auth cannot succeed

    async def _scram(self, user: str, entry: _Entry | None, send: SendFn, recv: RecvFn) -> bytes:
        if entry is not None and entry.verifier is not None:
            server = pg_auth.ScramServer(entry.verifier)
            real = True
        else:
            server = pg_auth.ScramServer.mock(user)
            real = False
        await send(m.authentication_sasl([server.mechanism]))
        body = await _expect_password(recv)
        try:
            mechanism, data = m.decode_sasl_initial_response(body)
        except ProtocolError:
            raise AuthFailed("08P01", "malformed SASL initial response") from None
        if mechanism != server.mechanism:
            raise AuthFailed("08P01", "client selected an invalid SASL authentication mechanism")
        if data is None:
            raise AuthFailed("08P01", "malformed SCRAM message (empty message)")
        try:
            first = server.handle_client_first(data)
            await send(m.authentication_sasl_continue(first))
            body = await _expect_password(recv)
            final = server.handle_client_final(body)
        except pg_auth.AuthenticationError as exc:
            if exc.sqlstate == "28P01":
                raise failed_for(user) from None
            raise AuthFailed(exc.sqlstate, str(exc)) from None
        if not real:  # pragma: no cover - the mock always fails the proof check
            raise failed_for(user)
        return m.authentication_sasl_final(final)


async def _expect_password(recv: RecvFn) -> bytes:
    mtype, body = await recv()
    if mtype != m.F.PASSWORD:
        raise AuthFailed("08P01", f"expected password response, got message type {chr(mtype)!r}"
                         if mtype else "expected password response, got a startup-phase message")
    return body


def _decode_password(body: bytes) -> str:
    try:
        return m.decode_password(body)
    except ProtocolError:
        raise AuthFailed("08P01", "malformed password packet") from None
