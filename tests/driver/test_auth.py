"""driver.protocol.auth against a real PostgreSQL and real clients (asyncpg, pg8000)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import socket
from typing import Any, Callable

import asyncpg
import pg8000.native
import pytest

from driver.protocol import auth, messages
from driver.protocol.auth import (
    AuthenticationError,
    ScramClient,
    ScramServer,
    ScramVerifier,
    is_scram_verifier,
    md5_password,
    md5_response_from_stored,
    md5_stored,
    pbkdf2_sha256,
    saslprep,
)
from driver.protocol.framing import FrontendReader, MessageReader
from tests.pgcluster import PgCluster

# Passwords exercising SASLprep the way PostgreSQL applies it, as SQL U& literals.
UNICODE_PASSWORDS = {
    "soft_hyphen": ("I\u00adX", "U&'I\\00ADX'"),        # B.1: mapped to nothing
    "roman_nine": ("\u2168", "U&'\\2168'"),             # NFKC -> "IX"
    "nbsp": ("a\u00a0b", "U&'a\\00A0b'"),               # C.1.2 -> ' '
    "accent": ("p\u00e4ss", "U&'p\\00E4ss'"),           # plain non-ASCII
    "prohibited": ("\u2168\u0007x", "U&'\\2168\\0007x'"),  # control char: raw password used
    "bidi_bad": ("\u05d0\u2168\u05d0", "U&'\\05D0\\2168\\05D0'"),  # RandAL + L: raw password used
    "only_mapped": ("\u00ad", "U&'\\00AD'"),               # empty after mapping: raw password used
}


def _stored_secret(pg: PgCluster, role: str) -> str:
    return pg.psql(f"SELECT rolpassword FROM pg_authid WHERE rolname = '{role}'")


@pytest.fixture(scope="module")
def unicode_roles(pg: PgCluster) -> dict[str, tuple[str, str]]:
    """role name -> (password, stored SCRAM secret), created with password_encryption=scram."""
    out = {}
    for key, (pw, literal) in UNICODE_PASSWORDS.items():
        role = f"wp_auth_{key}"
        pg.psql(f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD {literal};"
                f"GRANT CONNECT ON DATABASE {pg.DATABASE} TO {role};")
        out[role] = (pw, _stored_secret(pg, role))
    return out


# ---------------------------------------------------------------------------
# MD5
# ---------------------------------------------------------------------------


def test_md5_matches_pg_authid(pg: PgCluster) -> None:
    stored = _stored_secret(pg, PgCluster.MD5_USER)
    assert stored.startswith("md5")
    assert md5_stored(PgCluster.MD5_USER, PgCluster.MD5_PASSWORD) == stored
    assert md5_stored(PgCluster.MD5_USER, "other") != stored


def test_md5_password_formula() -> None:
    inner = hashlib.md5(b"secret" + b"bob").hexdigest()
    expected = "md5" + hashlib.md5(inner.encode() + b"\x01\x02\x03\x04").hexdigest()
    assert md5_password("bob", "secret", b"\x01\x02\x03\x04") == expected
    assert md5_response_from_stored(md5_stored("bob", "secret"), b"\x01\x02\x03\x04") == expected
    with pytest.raises(ValueError):
        md5_response_from_stored("SCRAM-SHA-256$...", b"abcd")


# ---------------------------------------------------------------------------
# PBKDF2
# ---------------------------------------------------------------------------

PBKDF2_CASES = [
    (b"password", b"salt", 1),
    (b"password", b"salt", 4096),
    (b"", b"s" * 16, 10),
    (b"k" * 64, b"salt", 7),     # exactly one block
    (b"k" * 100, b"salt", 7),    # longer than a block: hashed first
    ("p\u00e4ss".encode(), bytes(range(16)), 4096),
]


@pytest.mark.parametrize("password,salt,iterations", PBKDF2_CASES)
def test_pbkdf2_fallback_equals_hashlib(monkeypatch: pytest.MonkeyPatch, password: bytes, salt: bytes,
                                        iterations: int) -> None:
    expected = hashlib.pbkdf2_hmac("sha256", password, salt, iterations)
    assert pbkdf2_sha256(password, salt, iterations) == expected
    monkeypatch.delattr(hashlib, "pbkdf2_hmac")  # as in Pyodide
    assert not hasattr(hashlib, "pbkdf2_hmac")
    assert pbkdf2_sha256(password, salt, iterations) == expected


def test_pbkdf2_rfc7914_vector(monkeypatch: pytest.MonkeyPatch) -> None:
    # RFC 7914 section 11: PBKDF2-HMAC-SHA256("passwd", "salt", 1), first 32 bytes.
    expected = bytes.fromhex("55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc")
    monkeypatch.delattr(hashlib, "pbkdf2_hmac")
    assert pbkdf2_sha256(b"passwd", b"salt", 1) == expected
    with pytest.raises(ValueError):
        pbkdf2_sha256(b"passwd", b"salt", 0)


def test_scram_without_native_pbkdf2_matches_postgres(monkeypatch: pytest.MonkeyPatch, pg: PgCluster) -> None:
    stored = ScramVerifier.parse(_stored_secret(pg, PgCluster.SCRAM_USER))
    monkeypatch.delattr(hashlib, "pbkdf2_hmac")
    again = ScramVerifier.from_password(PgCluster.SCRAM_PASSWORD, salt=stored.salt, iterations=stored.iterations)
    assert again == stored


# ---------------------------------------------------------------------------
# Verifier
# ---------------------------------------------------------------------------


def test_verifier_matches_pg_authid(pg: PgCluster) -> None:
    text = _stored_secret(pg, PgCluster.SCRAM_USER)
    assert is_scram_verifier(text)
    stored = ScramVerifier.parse(text)
    assert str(stored) == text
    assert stored.iterations == 4096 and len(stored.salt) == 16
    again = ScramVerifier.from_password(PgCluster.SCRAM_PASSWORD, salt=stored.salt, iterations=stored.iterations)
    assert str(again) == text
    assert again.stored_key == stored.stored_key and again.server_key == stored.server_key
    assert stored.verify_password(PgCluster.SCRAM_PASSWORD)
    assert not stored.verify_password(PgCluster.SCRAM_PASSWORD + "x")
    other = ScramVerifier.from_password("nope", salt=stored.salt, iterations=stored.iterations)
    assert other != stored


def test_verifier_iterations_match_postgres(pg: PgCluster) -> None:
    # A verifier with a custom salt/iteration count, installed as the stored secret,
    # is accepted by Postgres for login: checked via the real SCRAM exchange below.
    v = ScramVerifier.from_password("custom pw", salt=b"0123456789abcdef", iterations=1234)
    pg.psql(f"DROP ROLE IF EXISTS wp_auth_custom; CREATE ROLE wp_auth_custom LOGIN PASSWORD '{v}';"
            f"GRANT CONNECT ON DATABASE {pg.DATABASE} TO wp_auth_custom;")
    assert _stored_secret(pg, "wp_auth_custom") == str(v)
    _pg_handshake(pg, "wp_auth_custom", "custom pw")
    with pytest.raises(PgAuthFailed):
        _pg_handshake(pg, "wp_auth_custom", "custom pw ")


@pytest.mark.parametrize("key", sorted(UNICODE_PASSWORDS))
def test_saslprep_matches_postgres(unicode_roles: dict[str, tuple[str, str]], key: str) -> None:
    pw, text = unicode_roles[f"wp_auth_{key}"]
    stored = ScramVerifier.parse(text)
    assert ScramVerifier.from_password(pw, salt=stored.salt, iterations=stored.iterations) == stored


def test_saslprep_rules() -> None:
    assert saslprep("plain ascii\x07") == b"plain ascii\x07"     # ASCII: untouched, like Postgres
    assert saslprep("I\u00adX") == b"IX"
    assert saslprep("\u2168") == b"IX"
    assert saslprep("a\u00a0b") == b"a b"
    assert saslprep("\u00e9\u0007x") == "\u00e9\u0007x".encode()  # prohibited: raw
    assert saslprep("\u00ad") == "\u00ad".encode()                 # empty after mapping: raw


@pytest.mark.parametrize("bad", [
    "", "md5abc", "SCRAM-SHA-256$4096:c2FsdA==$a:b",
    "SCRAM-SHA-1$4096:c2FsdA==$" + "A" * 44 + ":" + "A" * 44,
    "SCRAM-SHA-256$x:c2FsdA==$" + base64.b64encode(bytes(32)).decode() + ":" + base64.b64encode(bytes(32)).decode(),
    "SCRAM-SHA-256$0:c2FsdA==$" + base64.b64encode(bytes(32)).decode() + ":" + base64.b64encode(bytes(32)).decode(),
    "SCRAM-SHA-256$4096:!!$" + base64.b64encode(bytes(32)).decode() + ":" + base64.b64encode(bytes(32)).decode(),
    "SCRAM-SHA-256$4096:c2FsdA==$" + base64.b64encode(bytes(31)).decode() + ":" + base64.b64encode(bytes(32)).decode(),
])
def test_verifier_parse_rejects(bad: str) -> None:
    assert not is_scram_verifier(bad)
    with pytest.raises(ValueError):
        ScramVerifier.parse(bad)


# ---------------------------------------------------------------------------
# ScramClient: RFC vector and a real Postgres
# ---------------------------------------------------------------------------


def test_client_rfc7677_vector() -> None:
    c = ScramClient("user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    assert c.mechanism == "SCRAM-SHA-256"
    assert c.client_first() == b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO"
    final = c.handle_server_first(
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    assert final == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    with pytest.raises(AuthenticationError):
        c.handle_server_final(b"v=AAAAbRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    c.handle_server_final(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    assert c.done


def test_client_username_escaped() -> None:
    c = ScramClient("a=b,c", "x", nonce="abc")
    assert c.client_first() == b"n,,n=a=3Db=2Cc,r=abc"


@pytest.mark.parametrize("server_first", [
    b"r=other-nonce,s=c2FsdA==,i=4096",          # does not extend our nonce
    b"r=abc,s=c2FsdA==,i=4096",                  # does not extend it (equal)
    b"r=abcdef,s=!!!,i=4096",                    # bad base64
    b"r=abcdef,s=,i=4096",                       # empty salt
    b"r=abcdef,s=c2FsdA==,i=0",
    b"r=abcdef,s=c2FsdA==,i=-5",
    b"r=abcdef,s=c2FsdA==",
    b"m=ext,r=abcdef,s=c2FsdA==,i=1",
    b"garbage",
    b"\xff\xfe",
])
def test_client_rejects_bad_server_first(server_first: bytes) -> None:
    c = ScramClient("u", "p", nonce="abc")
    c.client_first()
    with pytest.raises(AuthenticationError):
        c.handle_server_first(server_first)


def test_client_rejects_server_error_and_bad_signature() -> None:
    v = ScramVerifier.from_password("pw", iterations=16)
    for final in (b"e=invalid-proof", b"x=1", b"v=" + base64.b64encode(bytes(32))):
        c = ScramClient("u", "pw")
        s = ScramServer(v)
        c.handle_server_first(s.handle_client_first(c.client_first()))
        with pytest.raises(AuthenticationError):
            c.handle_server_final(final)
        assert not c.done


class PgAuthFailed(Exception):
    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__(fields.get("M"))
        self.fields = fields


def _pg_handshake(pg: PgCluster, user: str, password: str,
                  tamper_final: Callable[[bytes], bytes] | None = None) -> str:
    """Log in with ScramClient over a blocking socket; return the server_version.

    Raises PgAuthFailed on an ErrorResponse, AuthenticationError from the client.
    """
    with socket.create_connection((pg.host, pg.port), timeout=30) as sock:
        sock.sendall(messages.startup_message({"user": user, "database": pg.DATABASE}))
        reader = MessageReader()
        scram: ScramClient | None = None
        params: dict[str, str] = {}

        while True:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("server closed the connection")
            reader.feed(data)
            for mtype, body in reader.read():
                msg = messages.decode_backend(mtype, body)
                if isinstance(msg, messages.ErrorResponse):
                    raise PgAuthFailed(msg.fields)
                if isinstance(msg, messages.AuthenticationRequest):
                    if msg.code == messages.AUTH_SASL:
                        assert "SCRAM-SHA-256" in msg.mechanisms
                        scram = ScramClient(user, password)
                        sock.sendall(messages.sasl_initial_response(scram.mechanism, scram.client_first()))
                    elif msg.code == messages.AUTH_SASL_CONTINUE:
                        assert scram is not None
                        sock.sendall(messages.sasl_response(scram.handle_server_first(msg.data)))
                    elif msg.code == messages.AUTH_SASL_FINAL:
                        assert scram is not None
                        data_final = tamper_final(msg.data) if tamper_final else msg.data
                        scram.handle_server_final(data_final)
                    elif msg.code == messages.AUTH_OK:
                        assert scram is not None and scram.done
                    else:
                        raise AssertionError(f"unexpected auth request {msg.code}")
                elif isinstance(msg, messages.ParameterStatus):
                    params[msg.name] = msg.value
                elif isinstance(msg, messages.ReadyForQuery):
                    sock.sendall(messages.terminate())
                    return params["server_version"]


def test_client_against_postgres(pg: PgCluster) -> None:
    assert _pg_handshake(pg, PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD).startswith("15")


def test_client_wrong_password_against_postgres(pg: PgCluster) -> None:
    with pytest.raises(PgAuthFailed) as ei:
        _pg_handshake(pg, PgCluster.SCRAM_USER, "wrong")
    assert ei.value.fields["C"] == "28P01"


def test_client_detects_forged_server_signature(pg: PgCluster) -> None:
    def forge(data: bytes) -> bytes:
        sig = bytearray(base64.b64decode(data[2:]))
        sig[0] ^= 1
        return b"v=" + base64.b64encode(bytes(sig))

    with pytest.raises(AuthenticationError, match="server signature"):
        _pg_handshake(pg, PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD, tamper_final=forge)


@pytest.mark.parametrize("key", sorted(UNICODE_PASSWORDS))
def test_client_unicode_passwords_against_postgres(pg: PgCluster, unicode_roles: dict[str, tuple[str, str]],
                                                   key: str) -> None:
    role = f"wp_auth_{key}"
    _pg_handshake(pg, role, unicode_roles[role][0])


# ---------------------------------------------------------------------------
# ScramServer: unit behaviour
# ---------------------------------------------------------------------------


def _exchange(server: ScramServer, client: ScramClient) -> None:
    final = client.handle_server_first(server.handle_client_first(client.client_first()))
    client.handle_server_final(server.handle_client_final(final))


def test_server_with_postgres_verifier(pg: PgCluster) -> None:
    v = ScramVerifier.parse(_stored_secret(pg, PgCluster.SCRAM_USER))
    _exchange(ScramServer(v), ScramClient(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD))
    with pytest.raises(AuthenticationError) as ei:
        _exchange(ScramServer(v), ScramClient(PgCluster.SCRAM_USER, "wrong"))
    assert ei.value.sqlstate == "28P01"


def test_server_fixed_nonce_and_message_shape() -> None:
    v = ScramVerifier.from_password("pw", salt=b"S" * 16, iterations=100)
    s = ScramServer(v, nonce="SERVERNONCE")
    first = s.handle_client_first(b"n,,n=,r=CLIENT")
    assert first == b"r=CLIENTSERVERNONCE,s=" + base64.b64encode(b"S" * 16) + b",i=100"
    assert s.client_user == ""


@pytest.mark.parametrize("client_first,sqlstate", [
    (b"p=tls-server-end-point,,n=,r=abc", "28000"),
    (b"n,a=admin,n=,r=abc", "28000"),
    (b"n,,m=ext,n=,r=abc", "28000"),
    (b"x,,n=,r=abc", "08P01"),
    (b"n,,r=abc", "08P01"),
    (b"n,,n=,r=a,bc", "08P01"),
    (b"n,,n=,r=", "08P01"),
    (b"n,,n=", "08P01"),
    (b"garbage", "08P01"),
    (b"n,,n=\xff,r=abc", "08P01"),
    (b"n,,n=,r=ab c", "08P01"),          # nonce: printable ASCII only
    (b"n,,n=,r=ab\x7f", "08P01"),
    (b"n,,n=,r=ab\n", "08P01"),
    (b"n,,n=,r=\xc3\xa9", "08P01"),
])
def test_server_rejects_bad_client_first(client_first: bytes, sqlstate: str) -> None:
    s = ScramServer(ScramVerifier.from_password("pw", iterations=16))
    with pytest.raises(AuthenticationError) as ei:
        s.handle_client_first(client_first)
    assert ei.value.sqlstate == sqlstate


def test_server_accepts_y_flag() -> None:
    v = ScramVerifier.from_password("pw", iterations=16)
    s = ScramServer(v)
    first = s.handle_client_first(b"y,,n=,r=abc").decode()
    # Compute a correct proof for gs2 header "y,," by hand.
    salted = pbkdf2_sha256(b"pw", v.salt, v.iterations)
    import hmac as _h
    ck = _h.new(salted, b"Client Key", "sha256").digest()
    nonce = first.split(",")[0][2:]
    without = f"c={base64.b64encode(b'y,,').decode()},r={nonce}"
    am = f"n=,r=abc,{first},{without}".encode()
    sig = _h.new(hashlib.sha256(ck).digest(), am, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    final = s.handle_client_final(f"{without},p={base64.b64encode(proof).decode()}".encode())
    assert final.startswith(b"v=")


def _tampered_finals(final: bytes) -> list[bytes]:
    head, _, proof = final.rpartition(b",p=")
    raw = bytearray(base64.b64decode(proof))
    raw[5] ^= 0x40
    c_attr, r_attr = head.split(b",")
    return [
        head + b",p=" + base64.b64encode(bytes(raw)),                       # wrong proof
        head + b",p=" + base64.b64encode(bytes(raw[:31])),                  # short proof
        head + b",p=***",                                                    # bad base64
        head,                                                                # no proof
        b"c=" + base64.b64encode(b"y,,") + b"," + r_attr + b",p=" + proof,   # channel binding mismatch
        c_attr + b"," + r_attr + b"x,p=" + proof,                            # nonce mismatch
        r_attr + b"," + c_attr + b",p=" + proof,                             # attribute order
    ]


@pytest.mark.parametrize("index", range(7))
def test_server_rejects_bad_client_final(index: int) -> None:
    v = ScramVerifier.from_password("pw", iterations=16)
    s = ScramServer(v)
    c = ScramClient("u", "pw")
    final = c.handle_server_first(s.handle_client_first(c.client_first()))
    bad = _tampered_finals(final)[index]
    with pytest.raises(AuthenticationError):
        s.handle_client_final(bad)
    # One attempt only: even the right answer is refused afterwards.
    with pytest.raises(AuthenticationError):
        s.handle_client_final(final)


def test_server_rejects_out_of_order() -> None:
    s = ScramServer(ScramVerifier.from_password("pw", iterations=16))
    with pytest.raises(AuthenticationError):
        s.handle_client_final(b"c=biws,r=abc,p=AAAA")
    s.handle_client_first(b"n,,n=,r=abc")
    with pytest.raises(AuthenticationError):
        s.handle_client_first(b"n,,n=,r=abc")


def test_mock_server_looks_real_but_always_fails() -> None:
    m1 = ScramServer.mock("ghost")
    m2 = ScramServer.mock("ghost")
    m3 = ScramServer.mock("other")
    f1 = m1.handle_client_first(b"n,,n=,r=abc").decode().split(",")
    f2 = m2.handle_client_first(b"n,,n=,r=abc").decode().split(",")
    f3 = m3.handle_client_first(b"n,,n=,r=abc").decode().split(",")
    assert f1[1] == f2[1] != f3[1]              # stable salt per user name
    assert len(base64.b64decode(f1[1][2:])) == 16 and f1[2] == "i=4096"
    assert f1[0] != f2[0]                       # fresh nonces
    real = ScramServer(ScramVerifier.from_password("pw"))
    rf = real.handle_client_first(b"n,,n=,r=abc").decode().split(",")
    assert [len(x) for x in rf] == [len(x) for x in f1]   # same shape as a real exchange
    c = ScramClient("ghost", "anything")
    m = ScramServer.mock()
    final = c.handle_server_first(m.handle_client_first(c.client_first()))
    with pytest.raises(AuthenticationError) as ei:
        m.handle_client_final(final)
    assert ei.value.sqlstate == "28P01"
    # Even a proof computed from the mock's own (random) keys is refused.
    m = ScramServer.mock()
    first = m.handle_client_first(b"n,,n=,r=abc").decode()
    without = f"c=biws,{first.split(',')[0]}"
    am = f"n=,r=abc,{first},{without}".encode()
    import hmac as _h
    v = m.verifier
    # Make the random verifier consistent with a ClientKey we know: the mock still refuses.
    ck = b"K" * 32
    v.stored_key = hashlib.sha256(ck).digest()
    sig = _h.new(v.stored_key, am, "sha256").digest()
    proof = bytes(a ^ b for a, b in zip(ck, sig))
    with pytest.raises(AuthenticationError):
        m.handle_client_final(f"{without},p={base64.b64encode(proof).decode()}".encode())


# ---------------------------------------------------------------------------
# ScramServer against real clients: a tiny asyncio server speaking just enough protocol
# ---------------------------------------------------------------------------


class TinyServer:
    """Accepts a startup, authenticates with ScramServer (or mock for unknown users),
    then answers ReadyForQuery and waits for Terminate."""

    def __init__(self, users: dict[str, ScramVerifier]) -> None:
        self.users = users
        self.results: list[tuple[str, str]] = []  # (user, "ok" | sqlstate)
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _next(self, reader: asyncio.StreamReader, fr: FrontendReader) -> tuple[int, bytes]:
        while True:
            msgs = fr.read()
            if msgs:
                assert len(msgs) == 1
                return msgs[0]
            data = await reader.read(65536)
            if not data:
                raise ConnectionError("client went away")
            fr.feed(data)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        fr = FrontendReader()
        user = "?"
        try:
            mtype, body = await self._next(reader, fr)
            msg = messages.decode_frontend(mtype, body)
            if isinstance(msg, messages.SSLRequest):
                writer.write(messages.SSL_REFUSED)
                mtype, body = await self._next(reader, fr)
                msg = messages.decode_frontend(mtype, body)
            assert isinstance(msg, messages.StartupMessage)
            user = msg.params["user"]
            verifier = self.users.get(user)
            scram = ScramServer(verifier) if verifier is not None else ScramServer.mock(user)
            writer.write(messages.authentication_sasl([scram.mechanism]))
            _, body = await self._next(reader, fr)
            mech, data = messages.decode_sasl_initial_response(body)
            assert mech == scram.mechanism and data is not None
            writer.write(messages.authentication_sasl_continue(scram.handle_client_first(data)))
            _, body = await self._next(reader, fr)
            writer.write(messages.authentication_sasl_final(scram.handle_client_final(body)))
            writer.write(messages.authentication_ok())
            for k, v in {"server_version": "15.0", "server_encoding": "UTF8", "client_encoding": "UTF8",
                         "DateStyle": "ISO, MDY", "integer_datetimes": "on",
                         "standard_conforming_strings": "on", "TimeZone": "UTC"}.items():
                writer.write(messages.parameter_status(k, v))
            writer.write(messages.backend_key_data(1234, 5678))
            writer.write(messages.ready_for_query("I"))
            self.results.append((user, "ok"))
            mtype, _ = await self._next(reader, fr)
            assert mtype == messages.F.TERMINATE
        except AuthenticationError as exc:
            self.results.append((user, exc.sqlstate))
            msg_text = (f'password authentication failed for user "{user}"' if exc.sqlstate == "28P01"
                        else str(exc))
            writer.write(messages.error(exc.sqlstate, msg_text, severity="FATAL"))
        except ConnectionError:
            pass
        finally:
            try:
                await writer.drain()
            except ConnectionError:
                pass
            writer.close()


@pytest.fixture
async def tiny_server(pg: PgCluster) -> Any:
    users = {
        "alice": ScramVerifier.from_password("alice pw"),
        PgCluster.SCRAM_USER: ScramVerifier.parse(_stored_secret(pg, PgCluster.SCRAM_USER)),
        "uni": ScramVerifier.from_password("\u2168 p\u00e4ss"),
    }
    srv = TinyServer(users)
    await srv.start()
    yield srv
    await srv.stop()


async def test_asyncpg_against_scram_server(tiny_server: TinyServer) -> None:
    for user, pw in (("alice", "alice pw"), (PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD),
                     ("uni", "\u2168 p\u00e4ss"), ("uni", "IX p\u00e4ss")):
        conn = await asyncpg.connect(host="127.0.0.1", port=tiny_server.port, user=user, password=pw,
                                     database="x", ssl=False)
        assert conn.get_server_pid() == 1234
        await conn.close()
    assert [r[1] for r in tiny_server.results] == ["ok"] * 4


async def test_asyncpg_wrong_password_and_unknown_user(tiny_server: TinyServer) -> None:
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=tiny_server.port, user="alice", password="nope",
                              database="x", ssl=False)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(host="127.0.0.1", port=tiny_server.port, user="ghost", password="alice pw",
                              database="x", ssl=False)
    assert tiny_server.results == [("alice", "28P01"), ("ghost", "28P01")]


async def test_pg8000_against_scram_server(tiny_server: TinyServer) -> None:
    def connect(pw: str) -> None:
        conn = pg8000.native.Connection("alice", host="127.0.0.1", port=tiny_server.port, password=pw,
                                        database="x")
        conn.close()

    await asyncio.to_thread(connect, "alice pw")
    with pytest.raises(pg8000.native.DatabaseError) as ei:
        await asyncio.to_thread(connect, "bad")
    assert "28P01" in str(ei.value)
    assert tiny_server.results == [("alice", "ok"), ("alice", "28P01")]


def test_client_catches_server_without_server_key() -> None:
    """A server that can check the proof (StoredKey) but lacks the real
    ServerKey is caught by the client's signature check."""
    v = ScramVerifier.from_password("pw", iterations=16)
    forged = ScramVerifier(v.iterations, v.salt, v.stored_key, bytes(32))
    c = ScramClient("u", "pw")
    with pytest.raises(AuthenticationError, match="server signature"):
        _exchange(ScramServer(forged), c)


def test_auth_module_is_stdlib_only() -> None:
    import sys
    src = open(auth.__file__).read()
    for line in src.splitlines():
        if line.startswith(("import ", "from ")) and "__future__" not in line and not line.startswith("from ."):
            mod = line.split()[1].split(".")[0]
            assert mod in sys.stdlib_module_names, line


def test_nonce_accepts_every_printable_but_comma() -> None:
    ok = "".join(chr(c) for c in range(0x21, 0x7F) if c != 0x2C)
    s = ScramServer(ScramVerifier.from_password("pw", iterations=16), nonce=ok)
    assert s.handle_client_first(("n,,n=,r=" + ok).encode()).startswith(("r=" + ok + ok).encode())
    for bad in ("", "a,b", "a b", "a\x7f", "\u00e9", "a\n"):
        with pytest.raises(ValueError):
            ScramClient("u", "p", nonce=bad)
