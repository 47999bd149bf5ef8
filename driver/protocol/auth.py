"""Password authentication for the PostgreSQL protocol (sans-I/O, stdlib only).

* MD5: :func:`md5_password` (what a client answers to AuthenticationMD5Password),
  :func:`md5_stored` (the ``pg_authid`` form) and :func:`md5_response_from_stored`
  (what a server expects, computed from the stored form).
* SCRAM-SHA-256 (RFC 5802 / RFC 7677, no channel binding, as PostgreSQL speaks it):
  :class:`ScramClient` for the driver, :class:`ScramServer` for the gateway,
  :class:`ScramVerifier` for the stored form
  ``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``.
* :func:`pbkdf2_sha256`: ``hashlib.pbkdf2_hmac`` when it exists, otherwise a
  pure-Python fallback (Pyodide's hashlib has no ``pbkdf2_hmac``).

Password normalisation (:func:`saslprep`) follows PostgreSQL's ``pg_saslprep``:
a pure-ASCII password is used unchanged; otherwise RFC 4013 SASLprep is
applied (non-ASCII spaces mapped to U+0020, "commonly mapped to nothing"
characters removed, NFKC, prohibited-output / unassigned / bidi checks using
the RFC 3454 tables of the :mod:`stringprep` module).  When any check fails,
or the result is empty, the raw password is used -- exactly what PostgreSQL
does, so a password that is not valid SASLprep still authenticates.  NFKC uses
the running Python's Unicode database (PostgreSQL also uses a recent one).
MD5 authentication never normalises (neither does PostgreSQL).

Every value exchanged is ``bytes``; nothing here does I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
from typing import Final

from .framing import AuthenticationError

__all__ = [
    "AuthenticationError",
    "md5_password",
    "md5_stored",
    "md5_response_from_stored",
    "pbkdf2_sha256",
    "saslprep",
    "ScramClient",
    "ScramServer",
    "ScramVerifier",
    "is_scram_verifier",
    "SCRAM_SHA_256",
    "DEFAULT_SCRAM_ITERATIONS",
]

SCRAM_SHA_256: Final = "SCRAM-SHA-256"
DEFAULT_SCRAM_ITERATIONS: Final = 4096
_SALT_LEN: Final = 16  # what PostgreSQL generates (SCRAM_DEFAULT_SALT_LEN)
_NONCE_BYTES: Final = 18  # 24 base64 characters, as PostgreSQL
_KEY_LEN: Final = 32  # SHA-256 digest size
_GS2_NO_CB: Final = b"n,,"


# ---------------------------------------------------------------------------
# MD5
# ---------------------------------------------------------------------------


def _md5_hex(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def md5_stored(user: str, password: str) -> str:
    """``"md5" + md5(password + user)`` in hex: the form kept in ``pg_authid``."""
    return "md5" + _md5_hex(password.encode("utf-8") + user.encode("utf-8"))


def md5_response_from_stored(stored: str, salt: bytes) -> str:
    """The md5 answer a server expects, from the stored ``md5...`` form and the 4-byte salt."""
    if not stored.startswith("md5") or len(stored) != 35:
        raise ValueError("not an md5 password hash")
    return "md5" + _md5_hex(stored[3:].encode("ascii") + salt)


def md5_password(user: str, password: str, salt: bytes) -> str:
    """``"md5" + md5(md5(password + user).hex + salt).hex``: the client's answer
    to AuthenticationMD5Password."""
    return md5_response_from_stored(md5_stored(user, password), salt)


# ---------------------------------------------------------------------------
# PBKDF2-HMAC-SHA-256
# ---------------------------------------------------------------------------

_IPAD: Final = bytes(x ^ 0x36 for x in range(256))
_OPAD: Final = bytes(x ^ 0x5C for x in range(256))


def _pbkdf2_sha256_pure(password: bytes, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA-256 with a 32-byte output, in pure Python.

    The keyed inner and outer hash states are computed once and copied for
    every HMAC, and the running XOR is kept as an int.
    """
    if iterations < 1:
        raise ValueError("iterations must be at least 1")
    sha256 = hashlib.sha256
    block = 64
    if len(password) > block:
        password = sha256(password).digest()
    key = password.ljust(block, b"\x00")
    inner = sha256(key.translate(_IPAD))
    outer = sha256(key.translate(_OPAD))

    def prf(msg: bytes) -> bytes:
        i = inner.copy()
        i.update(msg)
        o = outer.copy()
        o.update(i.digest())
        return o.digest()

    u = prf(salt + b"\x00\x00\x00\x01")
    from_bytes = int.from_bytes
    acc = from_bytes(u, "big")
    for _ in range(iterations - 1):
        u = prf(u)
        acc ^= from_bytes(u, "big")
    return acc.to_bytes(_KEY_LEN, "big")


def pbkdf2_sha256(password: bytes, salt: bytes, iterations: int) -> bytes:
    """PBKDF2-HMAC-SHA-256 (32-byte key): ``hashlib.pbkdf2_hmac`` when the
    platform has it, otherwise a pure-Python implementation."""
    native = getattr(hashlib, "pbkdf2_hmac", None)
    if native is not None:
        if iterations < 1:
            raise ValueError("iterations must be at least 1")
        result: bytes = native("sha256", password, salt, iterations)
        return result
    return _pbkdf2_sha256_pure(password, salt, iterations)


# ---------------------------------------------------------------------------
# SASLprep (as PostgreSQL's pg_saslprep applies it)
# ---------------------------------------------------------------------------


def _saslprep_strict(text: str) -> str | None:
    """RFC 4013 SASLprep; ``None`` when the string is prohibited or empty."""
    try:
        import stringprep
        import unicodedata
    except ImportError:  # pragma: no cover - minimal runtimes
        return None
    mapped = []
    for ch in text:
        if stringprep.in_table_c12(ch):
            mapped.append(" ")
        elif not stringprep.in_table_b1(ch):
            mapped.append(ch)
    out = unicodedata.normalize("NFKC", "".join(mapped))
    if not out:
        return None
    prohibited = (
        stringprep.in_table_c12, stringprep.in_table_c21, stringprep.in_table_c22,
        stringprep.in_table_c3, stringprep.in_table_c4, stringprep.in_table_c5,
        stringprep.in_table_c6, stringprep.in_table_c7, stringprep.in_table_c8,
        stringprep.in_table_c9, stringprep.in_table_a1,
    )
    for ch in out:
        for table in prohibited:
            if table(ch):
                return None
    if any(stringprep.in_table_d1(ch) for ch in out):
        if any(stringprep.in_table_d2(ch) for ch in out):
            return None
        if not (stringprep.in_table_d1(out[0]) and stringprep.in_table_d1(out[-1])):
            return None
    return out


def saslprep(password: str) -> bytes:
    """The bytes SCRAM hashes for ``password``, normalised like PostgreSQL does.

    Pure ASCII is used as is; otherwise SASLprep; if SASLprep rejects the
    password (prohibited characters, bidi violation, empty result) the raw
    UTF-8 bytes are used.
    """
    if password.isascii():
        return password.encode("ascii")
    prepared = _saslprep_strict(password)
    return (prepared if prepared is not None else password).encode("utf-8")


# ---------------------------------------------------------------------------
# SCRAM primitives
# ---------------------------------------------------------------------------


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.digest(key, msg, "sha256")


def _sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _b64(data: bytes) -> str:
    # (binascii directly: base64.b64encode/b64decode(validate=True) are these calls plus type checks)
    return binascii.b2a_base64(data, newline=False).decode("ascii")


def _unb64(text: str, what: str) -> bytes:
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise AuthenticationError(f"malformed SCRAM message (invalid base64 in {what})") from None


def _new_nonce() -> str:
    return _b64(os.urandom(_NONCE_BYTES))


# RFC 5802: printable ASCII (0x21-0x7E) except ','.
_NONCE_RE: Final = re.compile(r"[\x21-\x2b\x2d-\x7e]+")


def _valid_nonce(nonce: str) -> bool:
    return _NONCE_RE.fullmatch(nonce) is not None


def _escape_saslname(name: str) -> str:
    return name.replace("=", "=3D").replace(",", "=2C")


def _decode_message(data: bytes) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise AuthenticationError("malformed SCRAM message (not valid UTF-8)") from None
    if "\x00" in text:
        raise AuthenticationError("malformed SCRAM message (NUL byte)")
    return text


#: A well-formed attribute list (checked in one regex call; the loop below names the bad part).
_ATTRS_RE: Final = re.compile(r"[A-Za-z]=[^,]*(?:,[A-Za-z]=[^,]*)*")


def _split_attrs(text: str) -> list[tuple[str, str]]:
    """``"a=1,b=2"`` -> ``[("a", "1"), ("b", "2")]``; every attribute is one letter."""
    if _ATTRS_RE.fullmatch(text) is not None:
        return [(part[0], part[2:]) for part in text.split(",")]
    attrs = []
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isascii() or not part[0].isalpha():
            raise AuthenticationError(f"malformed SCRAM message (bad attribute {part[:16]!r})")
        attrs.append((part[0], part[2:]))
    return attrs


def _parse_iterations(text: str) -> int:
    if not text.isascii() or not text.isdigit() or len(text) > 10:
        raise AuthenticationError(f"malformed SCRAM message (invalid iteration count {text[:16]!r})")
    n = int(text)
    if n < 1:
        raise AuthenticationError("malformed SCRAM message (iteration count must be positive)")
    return n


def _client_keys(salted: bytes) -> tuple[bytes, bytes, bytes]:
    """SaltedPassword -> (ClientKey, StoredKey, ServerKey)."""
    client_key = _hmac(salted, b"Client Key")
    return client_key, _sha256(client_key), _hmac(salted, b"Server Key")


# ---------------------------------------------------------------------------
# Client
# ---------------------------------------------------------------------------


class ScramClient:
    """Client side of SCRAM-SHA-256 without channel binding (gs2 header ``n,,``).

    ::

        scram = ScramClient(user, password)
        send(sasl_initial_response(scram.mechanism, scram.client_first()))
        send(sasl_response(scram.handle_server_first(sasl_continue_data)))
        scram.handle_server_final(sasl_final_data)   # raises on a bad server signature
    """

    mechanism: str = SCRAM_SHA_256

    def __init__(self, user: str, password: str, *, nonce: str | None = None,
                 keys: tuple[bytes, bytes] | None = None) -> None:
        if nonce is not None and not _valid_nonce(nonce):
            raise ValueError("a SCRAM nonce is printable ASCII without ','")
        self.user = user
        self._password = password
        #: (ClientKey, ServerKey) instead of the password (a pooler passing a
        #: client's login through, see ScramServer.client_key): no PBKDF2; the
        #: server's salt and iteration count must be those the keys came from.
        self._keys = keys
        self._nonce = nonce if nonce is not None else _new_nonce()
        # PostgreSQL ignores the SCRAM user name (it uses the startup packet's).
        self._client_first_bare = f"n={_escape_saslname(user)},r={self._nonce}"
        self._auth_message: bytes | None = None
        self._server_key: bytes | None = None
        self.done = False

    def client_first(self) -> bytes:
        """The client-first-message (payload of SASLInitialResponse)."""
        return _GS2_NO_CB + self._client_first_bare.encode("utf-8")

    def handle_server_first(self, data: bytes) -> bytes:
        """Take the server-first-message (AuthenticationSASLContinue payload);
        return the client-final-message (payload of SASLResponse)."""
        if self._auth_message is not None:
            raise AuthenticationError("unexpected SCRAM server-first-message")
        text = _decode_message(data)
        attrs = _split_attrs(text)
        if attrs and attrs[0][0] == "m":
            raise AuthenticationError("unsupported mandatory SCRAM extension")
        if len(attrs) < 3 or [a[0] for a in attrs[:3]] != ["r", "s", "i"]:
            raise AuthenticationError("malformed SCRAM server-first-message")
        nonce, salt_b64, iter_text = attrs[0][1], attrs[1][1], attrs[2][1]
        if not nonce.startswith(self._nonce) or len(nonce) <= len(self._nonce) or not _valid_nonce(nonce):
            raise AuthenticationError("invalid SCRAM server nonce")
        salt = _unb64(salt_b64, "salt")
        if not salt:
            raise AuthenticationError("malformed SCRAM message (empty salt)")
        iterations = _parse_iterations(iter_text)

        if self._keys is not None:
            client_key, server_key = self._keys
            stored_key = _sha256(client_key)
        else:
            salted = pbkdf2_sha256(saslprep(self._password), salt, iterations)
            client_key, stored_key, server_key = _client_keys(salted)
        without_proof = f"c={_b64(_GS2_NO_CB)},r={nonce}"
        auth_message = f"{self._client_first_bare},{text},{without_proof}".encode("utf-8")
        proof = _xor(client_key, _hmac(stored_key, auth_message))
        self._auth_message = auth_message
        self._server_key = server_key
        return f"{without_proof},p={_b64(proof)}".encode("ascii")

    def handle_server_final(self, data: bytes) -> None:
        """Verify the server-final-message (AuthenticationSASLFinal payload)."""
        if self._auth_message is None or self._server_key is None or self.done:
            raise AuthenticationError("unexpected SCRAM server-final-message")
        text = _decode_message(data)
        attrs = _split_attrs(text)
        key, value = attrs[0]
        if key == "e":
            raise AuthenticationError(f"SCRAM authentication failed: {value}", "28P01")
        if key != "v":
            raise AuthenticationError("malformed SCRAM server-final-message")
        signature = _unb64(value, "server signature")
        expected = _hmac(self._server_key, self._auth_message)
        if not hmac.compare_digest(signature, expected):
            raise AuthenticationError("invalid SCRAM server signature: the server does not know the password",
                                      "28P01")
        self.done = True


# ---------------------------------------------------------------------------
# Stored verifier
# ---------------------------------------------------------------------------


class ScramVerifier:
    """A SCRAM-SHA-256 secret as PostgreSQL stores it in ``pg_authid.rolpassword``:
    ``SCRAM-SHA-256$<iterations>:<base64 salt>$<base64 StoredKey>:<base64 ServerKey>``."""

    __slots__ = ("iterations", "salt", "stored_key", "server_key")

    def __init__(self, iterations: int, salt: bytes, stored_key: bytes, server_key: bytes) -> None:
        if iterations < 1:
            raise ValueError("iterations must be positive")
        if not salt:
            raise ValueError("salt must not be empty")
        if len(stored_key) != _KEY_LEN or len(server_key) != _KEY_LEN:
            raise ValueError("SCRAM-SHA-256 keys are 32 bytes")
        self.iterations = iterations
        self.salt = salt
        self.stored_key = stored_key
        self.server_key = server_key

    @classmethod
    def parse(cls, text: str) -> ScramVerifier:
        """Parse the stored form; ``ValueError`` if it is malformed."""
        try:
            scheme, params, keys = text.split("$")
            iter_text, salt_b64 = params.split(":")
            stored_b64, server_b64 = keys.split(":")
        except ValueError:
            raise ValueError("malformed SCRAM verifier") from None
        if scheme != SCRAM_SHA_256:
            raise ValueError(f"not a {SCRAM_SHA_256} verifier")
        if not iter_text.isascii() or not iter_text.isdigit() or len(iter_text) > 10:
            raise ValueError("malformed SCRAM verifier (iteration count)")
        try:
            salt = base64.b64decode(salt_b64.encode("ascii"), validate=True)
            stored = base64.b64decode(stored_b64.encode("ascii"), validate=True)
            server = base64.b64decode(server_b64.encode("ascii"), validate=True)
        except (binascii.Error, ValueError, UnicodeEncodeError):
            raise ValueError("malformed SCRAM verifier (base64)") from None
        return cls(int(iter_text), salt, stored, server)

    @classmethod
    def from_password(cls, password: str, *, salt: bytes | None = None,
                      iterations: int = DEFAULT_SCRAM_ITERATIONS) -> ScramVerifier:
        """Compute the verifier PostgreSQL would store for ``password``."""
        if salt is None:
            salt = os.urandom(_SALT_LEN)
        salted = pbkdf2_sha256(saslprep(password), salt, iterations)
        _, stored_key, server_key = _client_keys(salted)
        return cls(iterations, salt, stored_key, server_key)

    def verify_password(self, password: str) -> bool:
        """Whether ``password`` matches (e.g. a cleartext password received by
        the gateway, checked against a stored SCRAM secret)."""
        salted = pbkdf2_sha256(saslprep(password), self.salt, self.iterations)
        _, stored_key, server_key = _client_keys(salted)
        return hmac.compare_digest(stored_key, self.stored_key) and hmac.compare_digest(
            server_key, self.server_key)

    def __str__(self) -> str:
        return (f"{SCRAM_SHA_256}${self.iterations}:{_b64(self.salt)}"
                f"${_b64(self.stored_key)}:{_b64(self.server_key)}")

    def __repr__(self) -> str:
        return f"<ScramVerifier iterations={self.iterations}>"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScramVerifier):
            return NotImplemented
        return str(self) == str(other)

    def __hash__(self) -> int:
        return hash(str(self))


def is_scram_verifier(text: str) -> bool:
    """Whether ``text`` is a well-formed stored SCRAM-SHA-256 secret."""
    try:
        ScramVerifier.parse(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------
# Server
# ---------------------------------------------------------------------------

_MOCK_SECRET: Final = os.urandom(32)


class ScramServer:
    """Server side of SCRAM-SHA-256 without channel binding (for the gateway).

    ::

        server = ScramServer(verifier)          # or ScramServer.mock(user) for unknown users
        send(authentication_sasl([server.mechanism]))
        mech, data = decode_sasl_initial_response(body)   # check mech == server.mechanism
        send(authentication_sasl_continue(server.handle_client_first(data)))
        send(authentication_sasl_final(server.handle_client_final(sasl_response_body)))
        send(authentication_ok())

    Both handlers raise :class:`AuthenticationError` (``sqlstate`` 08P01 for
    malformed messages, 28P01 for a wrong proof, 28000 for unsupported
    options); the exchange is then over.
    """

    mechanism: str = SCRAM_SHA_256

    def __init__(self, verifier: ScramVerifier, *, nonce: str | None = None) -> None:
        if nonce is not None and not _valid_nonce(nonce):
            raise ValueError("a SCRAM nonce is printable ASCII without ','")
        self.verifier = verifier
        self._server_nonce = nonce if nonce is not None else _new_nonce()
        self._mock = False
        self._gs2_header: bytes | None = None
        self._client_first_bare: str | None = None
        self._server_first: str | None = None
        self._nonce: str | None = None
        self.done = False
        #: The user name the client sent in client-first (informational; PostgreSQL ignores it).
        self.client_user: str | None = None
        #: After a successful exchange: the client's ClientKey (ClientProof XOR
        #: ClientSignature), which lets a pooler log in upstream as this client.
        self.client_key: bytes | None = None

    @classmethod
    def mock(cls, user: str | None = None) -> ScramServer:
        """An exchange for a user that does not exist: it looks like a real one
        (same messages, same cost) but always fails at the proof check.

        With ``user``, the salt is derived from the user name and a per-process
        secret, so repeated attempts for the same unknown user see the same
        salt (as PostgreSQL does); without it the salt is random.
        """
        if user is None:
            salt = os.urandom(_SALT_LEN)
        else:
            salt = _hmac(_MOCK_SECRET, user.encode("utf-8"))[:_SALT_LEN]
        verifier = ScramVerifier(DEFAULT_SCRAM_ITERATIONS, salt, os.urandom(_KEY_LEN), os.urandom(_KEY_LEN))
        server = cls(verifier)
        server._mock = True
        return server

    def handle_client_first(self, data: bytes) -> bytes:
        """Take the client-first-message (SASLInitialResponse data); return the
        server-first-message (AuthenticationSASLContinue payload)."""
        if self._server_first is not None:
            raise AuthenticationError("unexpected SCRAM client-first-message")
        text = _decode_message(data)
        # gs2-header: cbind-flag "," [authzid] ","
        parts = text.split(",", 2)
        if len(parts) != 3:
            raise AuthenticationError("malformed SCRAM client-first-message")
        cbind, authzid, bare = parts
        if cbind.startswith("p="):
            raise AuthenticationError("channel binding is not supported by this server", "28000")
        if cbind not in ("n", "y"):
            # 'y': the client supports channel binding but thinks we do not -- true.
            raise AuthenticationError("malformed SCRAM message (unexpected channel-binding flag)")
        if authzid:
            raise AuthenticationError("client uses authorization identity, but it is not supported", "28000")
        attrs = _split_attrs(bare)
        if attrs and attrs[0][0] == "m":
            raise AuthenticationError("client requires an unsupported SCRAM extension", "28000")
        if len(attrs) < 2 or attrs[0][0] != "n" or attrs[1][0] != "r":
            raise AuthenticationError("malformed SCRAM client-first-message")
        self.client_user = attrs[0][1].replace("=2C", ",").replace("=3D", "=")
        client_nonce = attrs[1][1]
        if not _valid_nonce(client_nonce):
            raise AuthenticationError("malformed SCRAM message (invalid client nonce)")
        v = self.verifier
        self._gs2_header = f"{cbind},{authzid},".encode("utf-8")
        self._client_first_bare = bare
        self._nonce = client_nonce + self._server_nonce
        self._server_first = f"r={self._nonce},s={_b64(v.salt)},i={v.iterations}"
        return self._server_first.encode("ascii")

    def handle_client_final(self, data: bytes) -> bytes:
        """Take the client-final-message (SASLResponse data); return the
        server-final-message (AuthenticationSASLFinal payload, ``v=...``)."""
        if self._server_first is None or self._client_first_bare is None or self.done:
            raise AuthenticationError("unexpected SCRAM client-final-message")
        self.done = True  # one attempt per exchange, whatever the outcome
        text = _decode_message(data)
        head, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise AuthenticationError("malformed SCRAM client-final-message (no proof)")
        attrs = _split_attrs(head)
        if len(attrs) < 2 or attrs[0][0] != "c" or attrs[1][0] != "r":
            raise AuthenticationError("malformed SCRAM client-final-message")
        if _unb64(attrs[0][1], "channel binding") != self._gs2_header:
            raise AuthenticationError("SCRAM channel binding check failed")
        if attrs[1][1] != self._nonce:
            raise AuthenticationError("SCRAM nonce mismatch")
        proof = _unb64(proof_b64, "proof")
        if len(proof) != _KEY_LEN:
            raise AuthenticationError("malformed SCRAM message (invalid proof length)")
        auth_message = f"{self._client_first_bare},{self._server_first},{head}".encode("utf-8")
        v = self.verifier
        client_key = _xor(proof, _hmac(v.stored_key, auth_message))
        ok = hmac.compare_digest(_sha256(client_key), v.stored_key)
        if not ok or self._mock:
            raise AuthenticationError("password authentication failed", "28P01")
        self.client_key = client_key
        return f"v={_b64(_hmac(v.server_key, auth_message))}".encode("ascii")
