"""Logging in upstream as the client, without its plaintext password (PgBouncer's
SCRAM pass-through).

A database section without ``user`` (allowed with ``auth_user``,
docs/auth-query.md) logs in to PostgreSQL as each client's own user.  The
gateway keeps, per (database, user), the :class:`Credentials` of that user's
last successful login, and :func:`answer` uses them to meet the upstream's
authentication request:

* SCRAM-SHA-256 -- the client's ClientKey, recovered from its proof
  (ClientProof XOR ClientSignature, :attr:`ScramServer.client_key`), with the
  ServerKey of the verifier: enough to compute a proof for a new server nonce.
  It works because the verifier came from PostgreSQL itself (``auth_query``),
  so the upstream's salt and iteration count are those the key was made with.
* md5 -- the stored ``md5...`` hash answers any salt.
* cleartext -- only when the client sent its password in clear (``auth_type =
  "password"``) or the user is in ``[users]`` with a plaintext password.

A request the credentials cannot meet (e.g. SCRAM asked, only an md5 hash
known) is a :class:`~gateway.server.ServerError` 08006 naming the reason.
"""

from __future__ import annotations

from driver.protocol import auth as pg_auth

__all__ = ["Credentials", "cleartext", "md5_answer", "scram_client"]


class Credentials:
    """What the gateway can log in upstream with, for one user (mutable: each
    successful client login replaces it, so a changed password is picked up)."""

    __slots__ = ("password", "keys", "md5")

    def __init__(self) -> None:
        self.password: str | None = None
        #: (ClientKey, ServerKey) from the client's last SCRAM login
        self.keys: tuple[bytes, bytes] | None = None
        #: the stored ``md5...`` hash
        self.md5: str | None = None

    def set(self, *, password: str | None = None, keys: tuple[bytes, bytes] | None = None,
            md5: str | None = None) -> None:
        self.password, self.keys, self.md5 = password, keys, md5

    def __bool__(self) -> bool:
        return bool(self.password or self.keys or self.md5)

    def __repr__(self) -> str:  # never print secrets
        kind = "password" if self.password else "scram-key" if self.keys else "md5" if self.md5 else "none"
        return f"<Credentials {kind}>"


def _error(user: str, what: str) -> Exception:
    from .server import ServerError
    return ServerError("08006", f'upstream asks for {what} for user "{user}", but the gateway has '
                                f"no such secret for it (see docs/auth-query.md)")


def cleartext(secret: "str | Credentials", user: str) -> str:
    if isinstance(secret, str):
        return secret
    if secret.password:
        return secret.password
    raise _error(user, "a cleartext password")


def md5_answer(secret: "str | Credentials", user: str, salt: bytes) -> str:
    if isinstance(secret, str):
        return pg_auth.md5_password(user, secret, salt)
    if secret.password:
        return pg_auth.md5_password(user, secret.password, salt)
    if secret.md5:
        return pg_auth.md5_response_from_stored(secret.md5, salt)
    raise _error(user, "an md5 password")


def scram_client(secret: "str | Credentials", user: str) -> pg_auth.ScramClient:
    if isinstance(secret, str):
        return pg_auth.ScramClient(user, secret)
    if secret.password:
        return pg_auth.ScramClient(user, secret.password)
    if secret.keys:
        return pg_auth.ScramClient(user, "", keys=secret.keys)
    raise _error(user, "SCRAM-SHA-256")
