"""API tokens: ``tokens = [...]`` under ``[users.NAME]``.

A token authenticates an HTTP request (``Authorization: Bearer <token>``) or
a WebSocket session (``Authorization`` header of the upgrade, or ``?token=``
for browsers), in which case the Postgres startup needs no password exchange.

Two forms are accepted in the config file:

* the token itself, e.g. ``"wp_3f9c..."``;
* its SHA-256, ``"sha256:<64 hex digits>"``, so the file need not hold it in
  clear.  ``python -m gateway.tokens <token>`` prints that form (and
  :func:`new_token` makes a random token).

Every configured token is reduced to its SHA-256 digest at startup; a
presented token is hashed and compared with *every* stored digest using
:func:`hmac.compare_digest` (no early exit), so the time taken does not
depend on which stored token -- if any -- matches, nor on how many leading
bytes agree.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sys
from typing import Any, Iterable, Mapping

HASH_PREFIX = "sha256:"
#: Longest token accepted (bytes); anything longer is rejected before hashing.
MAX_TOKEN_LENGTH = 4096


class TokenSpecError(ValueError):
    """A ``tokens`` entry in the config is malformed."""


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def hash_token(token: str) -> str:
    """The storable form of ``token``: ``sha256:<hex>``."""
    return HASH_PREFIX + token_digest(token).hex()


def new_token(nbytes: int = 32) -> str:
    """A fresh random token (URL-safe, so it can go in ``?token=``)."""
    return "wp_" + secrets.token_urlsafe(nbytes)


def spec_digest(spec: str) -> bytes:
    """The SHA-256 digest a config entry stands for (raises :class:`TokenSpecError`)."""
    if not isinstance(spec, str) or not spec:
        raise TokenSpecError("a token must be a non-empty string")
    if spec.startswith(HASH_PREFIX):
        hexpart = spec[len(HASH_PREFIX):]
        if len(hexpart) != 64:
            raise TokenSpecError("sha256: form needs exactly 64 hex digits")
        try:
            return bytes.fromhex(hexpart)
        except ValueError:
            raise TokenSpecError("sha256: form needs exactly 64 hex digits") from None
    if len(spec) > MAX_TOKEN_LENGTH:
        raise TokenSpecError(f"a token must be at most {MAX_TOKEN_LENGTH} characters")
    return token_digest(spec)


class TokenStore:
    """Token digests -> user name, built once from ``config.users``."""

    def __init__(self, users: Mapping[str, Any]) -> None:
        entries: list[tuple[bytes, str]] = []
        for name, user in users.items():
            for spec in getattr(user, "tokens", ()) or ():
                entries.append((spec_digest(spec), name))
        self._entries = entries

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> "TokenStore":
        """``[(user, token_spec), ...]`` (tests, embedding)."""
        store = cls({})
        store._entries = [(spec_digest(spec), user) for user, spec in pairs]
        return store

    def __len__(self) -> int:
        return len(self._entries)

    def __bool__(self) -> bool:
        return bool(self._entries)

    def user_for(self, token: str | None) -> str | None:
        """The user owning ``token``, or None (unknown, empty, too long)."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = token_digest(token)
        found: str | None = None
        for stored, user in self._entries:
            # No early exit: every entry is compared.
            if hmac.compare_digest(stored, digest):
                found = user
        return found


def main(argv: list[str] | None = None) -> int:
    """``python -m gateway.tokens [TOKEN]``: print a token's ``sha256:`` form
    (a new random token is generated when none is given)."""
    args = sys.argv[1:] if argv is None else argv
    token = args[0] if args else new_token()
    if not args:
        print(f"token:  {token}")
    print(f"config: {hash_token(token)}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
