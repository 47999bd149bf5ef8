"""Client authentication against the ``[users]`` table.

``auth_type``:

* ``scram-sha-256`` -- SASL exchange with the driver's :class:`ScramServer`.
  Users configured with a plaintext password get a verifier computed once, at
  startup; stored ``SCRAM-SHA-256$...`` verifiers are used as they are.
  Unknown users run a mock exchange (same messages, same cost) that fails at
  the proof check.
* ``password`` -- AuthenticationCleartextPassword, checked against the
  user's SCRAM verifier (plaintext passwords get one at startup), so every
  check -- plaintext user, verifier user, unknown user (a dummy verifier) --
  is exactly one PBKDF2 plus :func:`hmac.compare_digest`.  PBKDF2 runs in a
  thread pool, at most ``auth_max_concurrent`` at once, never on the event
  loop.  HTTP clients (``/sql``, ``/pg``) use the same check
  (:meth:`Authenticator.verify_password`, auth_query users too); successes are
  cached (keyed by an HMAC of user and password, and of the looked-up secret)
  so repeated requests pay PBKDF2 once.
* ``md5`` -- AuthenticationMD5Password with a random salt; needs the
  plaintext (users stored only as a SCRAM verifier cannot log in with md5).
* ``trust`` -- no password; the user must be listed in ``[users]`` unless
  ``[users]`` is empty.

A user not in ``[users]`` is looked up in PostgreSQL when the database has an
``auth_user`` (:mod:`gateway.auth_query`; pg_listen, WebSocket and HTTP logins): the
returned SCRAM verifier or md5 hash is checked like a ``[users]`` one (with
``auth_type = "md5"`` a SCRAM verifier gets a SCRAM exchange, as PostgreSQL
does), and what the client proved (its ClientKey, md5 hash or password) is
kept for logging in upstream as it (:mod:`gateway.auth_passthrough`).

Every failure caused by the credentials -- unknown user or wrong password --
is the same FATAL 28P01 ``password authentication failed for user "x"``, and
is counted by the :class:`~gateway.ratelimit.LoginThrottle` (exponential delay
per source address and per user before the next attempt is checked).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Awaitable, Callable

from driver.protocol import auth as pg_auth
from driver.protocol import messages as m
from driver.protocol.framing import ProtocolError

from .auth_query import LookupUnavailable, Secret
from .ratelimit import LoginThrottle, source_of
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


class Throttled(AuthFailed):
    """Refused by the failed-login throttle before any password check."""

    def __init__(self) -> None:
        super().__init__("08004", "too many failed login attempts; try again later")


class _Entry:
    __slots__ = ("plaintext", "verifier", "md5")

    def __init__(self, plaintext: bytes | None, verifier: pg_auth.ScramVerifier | None,
                 md5: str | None = None) -> None:
        self.plaintext = plaintext
        self.verifier = verifier
        self.md5 = md5  # a stored "md5..." hash (users looked up with auth_query)


#: Queues bytes for the client, synchronously (login messages are small and each is
#: followed by waiting for the answer: no flow control needed).
SendFn = Callable[[bytes], object]
RecvFn = Callable[[], Awaitable[tuple[int, bytes]]]

#: Successful (user, password) checks remembered, so that an HTTP client sending
#: the same credentials with every request pays PBKDF2 once (failures: never cached).
_OK_CACHE_SIZE = 1024


class Authenticator:
    """Checks client credentials; build once per Gateway (verifiers are precomputed).

    ``settings`` (GatewaySettings, optional): ``auth_max_concurrent`` bounds the
    PBKDF2 computations in flight (run in a thread pool, off the event loop);
    ``auth_failure_*`` configure the :class:`~gateway.ratelimit.LoginThrottle`.
    """

    def __init__(self, auth_type: str, users: dict[str, Any], settings: Any = None) -> None:
        if auth_type not in AUTH_TYPES:
            raise ValueError(f"unsupported auth_type {auth_type!r}")
        self.auth_type = auth_type
        self._entries: dict[str, _Entry] = {}
        iterations: Counter[int] = Counter()
        for name, user in users.items():
            pw: str | None = getattr(user, "password", None)
            plaintext: bytes | None = None
            verifier: pg_auth.ScramVerifier | None = None
            if pw is not None:
                if pg_auth.is_scram_verifier(pw):
                    verifier = pg_auth.ScramVerifier.parse(pw)
                    if auth_type == "md5":
                        log.warning("user %s has a SCRAM verifier: it cannot log in with auth_type=md5", name)
                else:
                    plaintext = pw.encode("utf-8")
                    if auth_type != "trust":
                        # Cleartext checks of plaintext users cost one PBKDF2 too
                        # (same as verifier users and unknown users): no timing oracle.
                        verifier = pg_auth.ScramVerifier.from_password(pw)
                if verifier is not None:
                    iterations[verifier.iterations] += 1
            self._entries[name] = _Entry(plaintext, verifier)
        self._dummy_plain = os.urandom(16).hex().encode()
        # Unknown users (and users without a password) are checked against this
        # verifier: the most common iteration count, so they cost the same.
        dummy_iter = iterations.most_common(1)[0][0] if iterations else pg_auth.DEFAULT_SCRAM_ITERATIONS
        self._dummy_verifier = pg_auth.ScramVerifier.from_password(os.urandom(16).hex(), iterations=dummy_iter)
        #: API tokens (gateway/tokens.py): token -> user, constant-time lookup.
        self.tokens = TokenStore(users)
        self.max_concurrent = int(getattr(settings, "auth_max_concurrent", 2))
        self.throttle = LoginThrottle(
            free=int(getattr(settings, "auth_failure_free", 5)),
            delay=float(getattr(settings, "auth_failure_delay", 0.1)),
            max_delay=float(getattr(settings, "auth_failure_max_delay", 5.0)),
            window=float(getattr(settings, "auth_failure_window", 300.0)))
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self._secret = os.urandom(32)
        self._ok: OrderedDict[bytes, None] = OrderedDict()
        #: PBKDF2 derivations run by password checks (tests count them: one per check).
        self.derivations = 0
        #: Peak number of derivations in flight at once.
        self.peak_in_flight = 0
        self._in_flight = 0
        #: gateway.auth_query.AuthQuery: users not in [users] (set by the Gateway)
        self.lookup: Any = None

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- hooks for clients that bring their credentials in one piece (HTTP, tokens)
    def user_for_token(self, token: str | None) -> str | None:
        """The user an API token belongs to, or None."""
        return self.tokens.user_for(token)

    async def authenticate_token(self, token: str, user: str | None, peer: str = "?") -> str:
        """The user an API token authenticates (``user``, if given, must be its
        owner); :class:`AuthFailed` 28P01 otherwise.  Failures are throttled."""
        src = source_of(peer)
        await self._gate(src, None)
        owner = self.tokens.user_for(token)
        if owner is None:
            self.throttle.failed(src, user or None)
            raise AuthFailed("28P01", "invalid API token")
        if user and user != owner:
            self.throttle.failed(src, user)
            raise AuthFailed("28P01", f'API token does not belong to user "{user}"')
        return owner

    async def verify_password(self, user: str, password: str | None, peer: str = "?",
                              database: str | None = None) -> bool:
        """Check a cleartext password (HTTP clients) like any other client's:
        against ``[users]``, else, for a ``database`` with an ``auth_user``, the
        password auth_query finds (as a pg_listen login with ``auth_type =
        "password"``).  Unknown user and wrong password are indistinguishable and
        cost the same (one PBKDF2, off the event loop); ``trust`` only needs a
        listed user.  Failed attempts are throttled per source and per user.
        :class:`AuthFailed` 08006 when the lookup cannot reach PostgreSQL."""
        src = source_of(peer)
        await self._gate(src, user)
        looked_up = False
        if self.auth_type == "trust":
            ok = user in self._entries or not self._entries
        elif (user not in self._entries and database is not None and self.lookup is not None
                and self.lookup.enabled(database)):
            looked_up = True
            ok = await self._verify_looked_up(user, password, database)
        else:
            ok = await self._verify_cleartext(user, self._entries.get(user), password)
        if ok:
            self.throttle.succeeded(src, user)
            if password is not None and self.auth_type != "trust":  # pass-through databases (auth_query.py)
                self._remembering(database, user)(password=password)
        else:
            self.throttle.failed(src, user)
            if looked_up:
                self.lookup.forget(database, user)
        return ok

    async def _verify_looked_up(self, user: str, password: str | None, database: str) -> bool:
        """:meth:`verify_password` for a user not in ``[users]``: the secret
        auth_query finds.  A success is remembered (keyed by user, password and
        that secret, so a changed password is checked afresh)."""
        secret = await self._lookup(database, user)
        entry = _Entry(None, secret.verifier, secret.md5) if secret is not None else None
        stored = (b"" if secret is None else secret.verifier.stored_key if secret.verifier is not None
                  else (secret.md5 or "").encode())
        return await self._verify_cleartext(user, entry, password, tag=b"auth_query\0" + stored + b"\0")

    async def _lookup(self, database: str, user: str) -> Secret | None:
        """auth_query's secret for ``user`` (None: no such user); 08006 when
        PostgreSQL cannot be asked."""
        assert self.lookup is not None
        try:
            secret: Secret | None = await self.lookup.secret(database, user)
        except LookupUnavailable as exc:
            raise AuthFailed("08006", f"authentication lookup failed, upstream unreachable: {exc}") from None
        return secret

    def check_password(self, user: str, password: str | None) -> bool:
        """Synchronous :meth:`verify_password` (no throttling, runs PBKDF2 on the
        calling thread): for tools and tests, not for the event loop."""
        if self.auth_type == "trust":
            return user in self._entries or not self._entries
        entry = self._entries.get(user)
        verifier, real = self._verifier_for(entry, password)
        self.derivations += 1
        return _check(verifier, password or "") and real

    async def authenticate(self, user: str, send: SendFn, recv: RecvFn, peer: str = "?",
                           database: str | None = None) -> bytes:
        """Run the exchange.  Returns bytes still to send before
        AuthenticationOk (the SASL final message, or b""): the session sends
        them together with the rest of its reply.  Raises :class:`AuthFailed`.
        Failed attempts are throttled per source address and per user.
        ``database``: where auth_query looks up users not in ``[users]``."""
        src = source_of(peer)
        wait = self.throttle.admit(src, user)  # self._gate, inline (the login hot path)
        if wait is None:
            raise Throttled()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            result = await self._exchange(user, send, recv, database)
        except AuthFailed as exc:
            if exc.sqlstate == "28P01":
                self.throttle.failed(src, user)
                if self.lookup is not None and database is not None:
                    self.lookup.forget(database, user)
            raise
        self.throttle.succeeded(src, user)
        return result

    async def _gate(self, source: str, user: str | None) -> None:
        """Wait for this attempt's turn (:meth:`LoginThrottle.admit`); :class:`Throttled` if refused."""
        wait = self.throttle.admit(source, user)
        if wait is None:
            raise Throttled()
        if wait > 0:
            await asyncio.sleep(wait)

    async def _exchange(self, user: str, send: SendFn, recv: RecvFn, database: str | None) -> bytes:
        entry = self._entries.get(user)
        t = self.auth_type
        if t == "trust":
            if entry is None and self._entries:
                raise failed_for(user)
            return b""
        looked_up = False
        if entry is None and self.lookup is not None and database is not None and self.lookup.enabled(database):
            secret = await self._lookup(database, user)
            looked_up = True
            if secret is not None:
                entry = _Entry(None, secret.verifier, secret.md5)
        remember = self._remembering(database, user)
        plain = entry.plaintext.decode("utf-8") if entry is not None and entry.plaintext is not None else None
        # md5 with auth_query: a SCRAM verifier gets a SCRAM exchange, as PostgreSQL's md5
        # method does; so does an unknown user (PostgreSQL's default password_encryption),
        # which an md5 challenge would tell apart
        if t == "scram-sha-256" or (t == "md5" and looked_up and (entry is None or entry.verifier is not None)):
            final, client_key = await self._scram(user, entry, send, recv)
            if entry is not None and entry.verifier is not None and client_key is not None:
                remember(password=plain, keys=None if plain else (client_key, entry.verifier.server_key))
            return final
        elif t == "password":
            send(m.AUTHENTICATION_CLEARTEXT_PASSWORD)
            password = _decode_password(await _expect_password(recv))
            ok = await self._verify_cleartext(user, entry, password, tag=None if looked_up else b"")
            if not ok:
                raise failed_for(user)
            remember(password=password)
        else:  # md5
            salt = os.urandom(4)
            send(m.authentication_md5_password(salt))
            answer = _decode_password(await _expect_password(recv)).encode("utf-8", "replace")
            if plain is not None:
                expected = pg_auth.md5_password(user, plain, salt).encode()
                ok = True
            elif entry is not None and entry.md5 is not None:
                expected = pg_auth.md5_response_from_stored(entry.md5, salt).encode()
                ok = True
            else:
                expected = pg_auth.md5_password(user, self._dummy_plain.decode(), salt).encode()
                ok = False
            if not (hmac.compare_digest(answer, expected) and ok):
                raise failed_for(user)
            remember(password=plain, md5=None if plain else entry.md5 if entry is not None else None)
        return b""

    def _remembering(self, database: str | None, user: str) -> Callable[..., None]:
        """Where a successful login's secret goes (pass-through databases, gateway/auth_query.py)."""
        lookup = self.lookup
        if lookup is None or database is None:
            return lambda **_: None
        return lambda **kw: lookup.remember(database, user, **kw)

    # -- cleartext password checks: always exactly one PBKDF2, in the thread pool
    def _verifier_for(self, entry: _Entry | None, password: str | None) -> tuple[pg_auth.ScramVerifier, bool]:
        """The verifier to check against and whether success may count."""
        if entry is None or entry.verifier is None or password is None:
            # Unknown user, user without a password, no password sent: same work, then fail.
            return self._dummy_verifier, False
        return entry.verifier, True

    async def _verify_cleartext(self, user: str, entry: _Entry | None, password: str | None,
                                tag: bytes | None = b"") -> bool:
        """A cleartext password against ``entry`` (a SCRAM verifier, or a stored
        md5 hash found by auth_query: the same PBKDF2 cost as everyone, then the
        hash decides).  Successes are remembered under ``tag`` + user + password
        (``tag`` None: not remembered) and the secret checked against, so a
        password changed by a reload or in PostgreSQL is checked afresh."""
        md5 = entry.md5 if entry is not None and entry.verifier is None else None
        if md5 is not None and password is not None:
            verifier, real = self._dummy_verifier, True
        else:
            verifier, real = self._verifier_for(entry, password)
        key = b""
        if real and password is not None and tag is not None:
            assert entry is not None  # (real)
            stored = entry.verifier.stored_key if entry.verifier is not None else (entry.md5 or "").encode()
            key = hmac.digest(self._secret, tag + stored + b"\0" + user.encode("utf-8", "replace") + b"\0"
                              + password.encode("utf-8", "replace"), "sha256")
            if key in self._ok:
                self._ok.move_to_end(key)
                return True
        ok = await self._offload(verifier, password or "") and real
        if md5 is not None:
            ok = hmac.compare_digest(pg_auth.md5_stored(user, password or "").encode(), md5.encode()) and real
        if ok and key:
            self._ok[key] = None
            if len(self._ok) > _OK_CACHE_SIZE:
                self._ok.popitem(last=False)
        return ok

    async def _offload(self, verifier: pg_auth.ScramVerifier, password: str) -> bool:
        """PBKDF2 in the thread pool, at most ``auth_max_concurrent`` at once
        (hashlib releases the GIL while it hashes)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrent)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=self.max_concurrent,
                                                thread_name_prefix="wirepool-auth")
        self.derivations += 1
        async with self._slots:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
            try:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._executor, _check, verifier, password)
            finally:
                self._in_flight -= 1

    async def _scram(self, user: str, entry: _Entry | None, send: SendFn,
                     recv: RecvFn) -> tuple[bytes, bytes | None]:
        """The SASL exchange; (SASL final message, the client's ClientKey)."""
        if entry is not None and entry.verifier is not None:
            server = pg_auth.ScramServer(entry.verifier)
            real = True
        else:
            server = pg_auth.ScramServer.mock(user)
            real = False
        send(m.authentication_sasl([server.mechanism]))
        body = _password_body(*await recv())
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
            send(m.authentication_sasl_continue(first))
            body = _password_body(*await recv())
            final = server.handle_client_final(body)
        except pg_auth.AuthenticationError as exc:
            if exc.sqlstate == "28P01":
                raise failed_for(user) from None
            raise AuthFailed(exc.sqlstate, str(exc)) from None
        if not real:  # pragma: no cover - the mock always fails the proof check
            raise failed_for(user)
        return m.authentication_sasl_final(final), server.client_key


def _check(verifier: pg_auth.ScramVerifier, password: str) -> bool:
    """One PBKDF2 + constant-time comparisons (runs in the thread pool)."""
    return verifier.verify_password(password)


async def _expect_password(recv: RecvFn) -> bytes:
    return _password_body(*await recv())


def _password_body(mtype: int, body: bytes) -> bytes:
    """``body`` of a PasswordMessage-type message (the SCRAM path calls this on
    ``await recv()`` directly: one coroutine less per message)."""
    if mtype != m.F.PASSWORD:
        raise AuthFailed("08P01", f"expected password response, got message type {chr(mtype)!r}"
                         if mtype else "expected password response, got a startup-phase message")
    return body


def _decode_password(body: bytes) -> str:
    try:
        return m.decode_password(body)
    except ProtocolError:
        raise AuthFailed("08P01", "malformed password packet") from None
