"""Upstream SCRAM logins without one PBKDF2 per new server connection.

A server login with a configured password derives SaltedPassword =
PBKDF2(password, salt, iterations) -- 4,096 HMAC rounds, a few milliseconds
of the event loop -- although PostgreSQL answers every login of a role with
the same salt and iteration count.  :func:`scram_client` returns a client that
derives (ClientKey, ServerKey) once per (password, salt, iterations) in this
process and then logs in with the keys (``ScramClient(keys=...)``, the path the
pass-through login uses), as PgBouncer does with its cached SCRAM keys.

The cache is small and bounded (a role whose password changes upstream gets a
new salt, so a stale entry is never used, only evicted).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
from collections import OrderedDict

from driver.protocol import auth as pg_auth

__all__ = ["CachedScramClient", "scram_client", "cache_size"]

_MAX_ENTRIES = 256
_KEYS: "OrderedDict[tuple[str, bytes, int], tuple[bytes, bytes]]" = OrderedDict()


def cache_size() -> int:
    """Entries held (for tests)."""
    return len(_KEYS)


def _salt_and_iterations(data: bytes) -> tuple[bytes, int] | None:
    """``s=`` and ``i=`` of a server-first-message, or None when it does not
    parse (the plain client then reports the exact error)."""
    try:
        attrs = dict(part.split("=", 1) for part in data.decode("utf-8").split(",") if "=" in part)
        salt = base64.b64decode(attrs["s"], validate=True)
        iterations = int(attrs["i"])
    except (UnicodeDecodeError, KeyError, ValueError, binascii.Error):
        return None
    if not salt or not 0 < iterations <= 10_000_000:
        return None
    return salt, iterations


def _keys_for(password: str, salt: bytes, iterations: int) -> tuple[bytes, bytes]:
    key = (password, salt, iterations)
    hit = _KEYS.get(key)
    if hit is not None:
        _KEYS.move_to_end(key)
        return hit
    salted = pg_auth.pbkdf2_sha256(pg_auth.saslprep(password), salt, iterations)
    keys = (hmac.digest(salted, b"Client Key", hashlib.sha256), hmac.digest(salted, b"Server Key", hashlib.sha256))
    _KEYS[key] = keys
    if len(_KEYS) > _MAX_ENTRIES:
        _KEYS.popitem(last=False)
    return keys


class CachedScramClient:
    """:class:`driver.protocol.auth.ScramClient`'s interface; the exchange is the
    driver's, with keys from the process cache once the salt is known."""

    mechanism: str = pg_auth.SCRAM_SHA_256
    __slots__ = ("user", "_password", "_nonce", "_inner")

    def __init__(self, user: str, password: str) -> None:
        self.user = user
        self._password = password
        self._nonce = base64.b64encode(os.urandom(18)).decode("ascii")
        self._inner: pg_auth.ScramClient = pg_auth.ScramClient(user, password, nonce=self._nonce)

    @property
    def done(self) -> bool:
        return self._inner.done

    def client_first(self) -> bytes:
        return self._inner.client_first()

    def handle_server_first(self, data: bytes) -> bytes:
        found = _salt_and_iterations(data)
        if found is not None:
            keys = _keys_for(self._password, *found)
            self._inner = pg_auth.ScramClient(self.user, self._password, nonce=self._nonce, keys=keys)
        return self._inner.handle_server_first(data)

    def handle_server_final(self, data: bytes) -> None:
        self._inner.handle_server_final(data)


def scram_client(password: str, user: str) -> CachedScramClient:
    return CachedScramClient(user, password)
