"""A FATAL sent to a client that is still sending survives the close
(gateway/linger.py): the client reads the whole ErrorResponse, then EOF --
never a reset.

Closing a socket with unread input makes the kernel answer RST; the client's
next send fails and most clients then drop what they had not read yet.  Each
test client here keeps sending without reading until the gateway's reply is
readable (the gateway has decided to end the connection), then sends 1 MiB
more -- input the gateway cannot have read before closing -- and only then
reads to EOF.  A gateway that closes without lingering fails every case: the
send after the reply, or the read, raises ConnectionResetError/BrokenPipeError.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import struct
import threading
import time
from typing import Any, Callable

import pytest

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway import linger
from tests.gateway.pool_helpers import RawClient, errors, eventually

CHUNK = 64 << 10
#: the gateway's settings in every test: a fixed socket buffer after login (else up to 8 MiB, which
#: could swallow AFTER before the gateway closes); pre-login buffers are small anyway (LOGIN_RCVBUF)
GATEWAY = {"auth_type": "trust", "tcp_socket_buffer": CHUNK}
#: sent once the reply is readable: more than the gateway can take in before it closes (its read
#: queue pauses at 1 MiB, its socket buffer holds 128 KiB): certainly unread when it closes
AFTER = 2 << 20
CAP = 48 << 20         # a gateway that never answers fails the test instead of taking memory
SYNCS = m.sync() * (CHUNK // 5)  # pipelined messages the gateway never reaches


@pytest.fixture(autouse=True)
def _long_linger(monkeypatch: pytest.MonkeyPatch) -> None:
    # A loaded CI machine must not see the 2 s budget run out mid-test; the
    # lingering still ends at once when the client closes (tested below).
    monkeypatch.setattr(linger, "LINGER_SECONDS", 30.0)


def _connect(port: int, tls: ssl.SSLContext | None = None) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # a fixed, small send buffer: the client cannot park much of its input in its own kernel
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    if tls is not None:
        s.sendall(m.ssl_request())
        assert s.recv(1) == b"S"
        s = tls.wrap_socket(s, server_hostname="localhost")
    return s


def _recv_nowait(s: socket.socket) -> bytes | None:
    """Bytes readable now (b"" at EOF), or None (nothing yet / only TLS records)."""
    try:
        return s.recv(65536)
    except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
        return None


class PgReader(MessageReader):
    def feed(self, data: bytes) -> list[Any]:  # type: ignore[override]
        super().feed(data)
        return [m.decode_backend(t, b) for t, b in self.read()]


def flood(s: socket.socket, head: bytes, filler: bytes, *, after: int = AFTER, pace: float = 0.0,
          started: threading.Event | None = None, msgs: list[Any] | None = None, reader: Any = None,
          chunk: int = CHUNK) -> list[Any]:
    """Send ``head``, then ``filler`` over and over, until an ErrorResponse
    has arrived (the gateway has decided to end the connection); then
    ``after`` more bytes; then read to EOF.  Returns the decoded messages.
    Raises ConnectionResetError (or BrokenPipeError) if the gateway reset the
    connection.  ``pace``: at most one chunk per ``pace`` seconds (a slow but
    steady client); ``started`` is set once ``CHUNK`` bytes of filler are out;
    ``msgs``: the list the messages are appended to as they arrive;
    ``reader``: how received bytes become messages (default: Postgres
    messages; :class:`WsReader` for WebSocket frames); ``chunk``: bytes per send."""
    s.sendall(head)
    buf = filler * max(1, chunk // len(filler))
    reader = PgReader() if reader is None else reader
    msgs = [] if msgs is None else msgs
    s.setblocking(False)
    sent = 0
    deadline = time.monotonic() + 30
    while not errors(msgs) and not any(isinstance(x, tuple) for x in msgs):
        readable, writable, _ = select.select([s], [s], [], 1.0)
        if readable:
            data = _recv_nowait(s)
            if data == b"":
                return msgs  # EOF without an error: the caller's asserts say what is missing
            if data:
                msgs += reader.feed(data)
                continue
        if writable:
            try:  # (from where the last partial send stopped: message boundaries are kept)
                sent += s.send(buf[sent % len(buf):])
            except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
            if started is not None and sent >= CHUNK:
                started.set()
            if pace:
                select.select([s], [], [], pace)
        assert sent < CAP and time.monotonic() < deadline, "the gateway never answered"
    s.settimeout(30)
    pos = sent % len(buf)
    buf = buf[pos:] + buf[:pos]  # (continuing the stream where it stopped)
    buf = buf * max(1, CHUNK // len(buf))
    left = after
    while left > 0:
        s.sendall(buf[:left])
        left -= min(left, len(buf))
    while True:
        data = s.recv(65536)
        if not data:
            break
        msgs += reader.feed(data)
    assert not reader.buffered, "a message cut short"
    return msgs


def fatal(msgs: list[Any]) -> tuple[str, str]:
    """The one ErrorResponse, last: (sqlstate, message); it must be FATAL."""
    errs = errors(msgs)
    assert len(errs) == 1 and msgs[-1] is errs[0], msgs
    assert errs[0].severity == "FATAL", errs[0]
    return errs[0].sqlstate, errs[0].message


def startup(user: str = "alice", database: str = "app") -> bytes:
    return m.startup_message({"user": user, "database": database})


async def in_thread(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return await asyncio.wait_for(asyncio.to_thread(fn, *args, **kw), 60)


async def run_flood(port: int, head: bytes, filler: bytes, tls: ssl.SSLContext | None = None) -> tuple[str, str]:
    def client() -> list[Any]:
        s = _connect(port, tls)
        try:
            return flood(s, head, filler)
        finally:
            s.close()
    return fatal(await in_thread(client))


@pytest.fixture(scope="module")
def pki() -> Any:
    import shutil
    import tempfile
    from pathlib import Path

    from tests.tls_certs import make_pki
    d = Path(tempfile.mkdtemp(prefix="wirepool-pki-"))
    try:
        yield make_pki(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# ------------------------------------------------------------------ pg_listen cases

#: (id, gateway settings, head, filler, sqlstate, message)
CASES = [
    ("startup_packet_too_large", {}, struct.pack("!II", 20000, 196608), b"\0",
     "08P01", "exceeds the limit of 10000 bytes"),
    ("message_too_large", {}, startup() + b"Q" + struct.pack("!I", 100 << 20), b"x",
     "08P01", "exceeds the limit of 16777216 bytes"),
    ("unknown_message_type", {}, startup() + b"Z\0\0\0\x04", SYNCS,
     "08P01", "invalid frontend message type 90"),
    ("not_a_password_while_logging_in", {"auth_type": "password"}, startup() + b"Q\0\0\0\x05\0", b"\0",
     "08P01", "expected password response"),
    ("wrong_password", {"auth_type": "password"}, startup() + m.password_message("wrong"), SYNCS,
     "28P01", 'password authentication failed for user "alice"'),
    ("admin_console_refused", {"admin_users": ["bob"]}, startup("alice", "pgbouncer"), SYNCS,
     "28000", "not allowed to use the admin console"),
    ("max_client_conn", {"max_client_conn": 1}, startup(), SYNCS,
     "53300", "sorry, too many clients already"),
    ("max_login_clients", {"max_login_clients": 1, "client_login_timeout": 60}, startup(), SYNCS,
     "53300", "sorry, too many clients are logging in"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
async def test_fatal_survives_a_client_still_sending(gateway_app, case) -> None:
    name, settings, head, filler, sqlstate, message = case
    app = await gateway_app(**{**GATEWAY, **settings})
    held: list[Any] = []
    try:
        if name == "max_client_conn":  # the one client slot is taken
            held.append(await RawClient.connect(app.pg_port))
            await held[0].send(startup())
            assert not errors(await held[0].until(m.ReadyForQuery))
        elif name == "max_login_clients":  # the one login slot is taken
            held.append(socket.create_connection(("127.0.0.1", app.pg_port)))
            await eventually(lambda: app.gateway.limits.logging_in == 1, what="a client logging in")
        got = await run_flood(app.pg_port, head, filler)
    finally:
        for h in held:
            await h.close() if isinstance(h, RawClient) else h.close()
    assert got[0] == sqlstate and message in got[1], got
    # the lingering connection is gone once the client closed (nothing left behind)
    await eventually(lambda: not app.tcp.connections, what="no connection left")


@pytest.mark.parametrize("timeout", ["client_login_timeout", "query_wait_timeout"])
async def test_fatal_at_a_timeout_survives_a_client_still_sending(gateway_app, timeout) -> None:
    """The FATAL of a timeout reaches a client that is sending all the while:
    one trickling its startup packet (client_login_timeout, 08006), one
    pipelining while no server is free (query_wait_timeout, 57014)."""
    app = await gateway_app(**GATEWAY, client_login_timeout=1, query_wait_timeout=1,
                            databases={"app": {"pool_size": 1}})
    holder = None
    try:
        if timeout == "client_login_timeout":  # a 9,000-byte startup packet, a byte every 20 ms
            head, filler, kw = struct.pack("!II", 9000, 196608), b"\0", {"chunk": 1, "pace": 0.02}
            want = ("08006", "client_login_timeout: login not completed in time")
        else:  # the one server is in another client's transaction
            holder = await RawClient.connect(app.pg_port)
            await holder.send(startup())
            assert not errors(await holder.until(m.ReadyForQuery))
            await holder.send(m.query("begin"))
            assert not errors(await holder.until(m.ReadyForQuery))
            head, filler, kw = startup(), SYNCS, {}
            want = ("57014", "query_wait_timeout: no server connection available within 1s")

        def client() -> list[Any]:
            s = _connect(app.pg_port)
            try:
                return flood(s, head, filler, **kw)
            finally:
                s.close()
        assert fatal(await in_thread(client)) == want
    finally:
        if holder is not None:
            await holder.close()


# ------------------------------------------------------------------ side by side with PostgreSQL

def flood_tolerant(port: int, head: bytes, filler: bytes) -> tuple[list[Any], bool]:
    """:func:`flood`, but a reset is an outcome: (messages read, reset seen)."""
    s = _connect(port)
    msgs: list[Any] = []
    try:
        flood(s, head, filler, msgs=msgs)
        return msgs, False
    except (ConnectionResetError, BrokenPipeError):
        return msgs, True
    finally:
        s.close()


#: (id, bytes after a login (None: instead of the startup packet), filler, Postgres sends the same FATAL)
SIDE_BY_SIDE = [
    ("unknown_message_type", b"Z\0\0\0\x04", SYNCS, True),
    ("message_over_1gb", b"Q" + struct.pack("!I", 0x7FFFFFF0), b"x", False),
    ("startup_packet_too_large", None, b"\0", False),
]


@pytest.mark.parametrize("case", SIDE_BY_SIDE, ids=[c[0] for c in SIDE_BY_SIDE])
async def test_side_by_side_with_postgres(gateway_app, pg, case) -> None:
    """PostgreSQL ends these connections too -- and closes at once: a client
    still sending gets a reset (what it can still read depends on its kernel
    and library).  For a message type it does not know it sends the same FATAL
    first; for a message or startup packet over its limits it sends nothing
    (its log says "invalid message length", "invalid length of startup
    packet").  The gateway sends its FATAL 08P01 and lingers."""
    from tests.pgcluster import PgCluster
    _name, after_login, filler, same = case
    if after_login is None:
        pg_head = gw_head = struct.pack("!II", 20000, 196608)
    else:
        pg_head = startup(PgCluster.TRUST_USER, PgCluster.DATABASE) + after_login
        gw_head = startup() + after_login
    pg_msgs, pg_reset = await in_thread(flood_tolerant, pg.port, pg_head, filler)
    app = await gateway_app(**GATEWAY)
    got = await run_flood(app.pg_port, gw_head, filler)
    assert got[0] == "08P01"
    want = [(e.sqlstate, e.message) for e in errors(pg_msgs)]
    if same:
        assert want == [got], (want, got)
    else:
        assert want == [], want
    assert pg_reset, "PostgreSQL does not linger: its close resets a client still sending"


# ------------------------------------------------------------------ wirepool serve (uvloop), admin SHUTDOWN

async def test_57p01_of_admin_shutdown_survives_under_uvloop(pg, pg_db, tmp_path, pki) -> None:
    """A real ``wirepool serve`` (uvloop transports, TCP and TLS): clients
    streaming a large query when the admin console's SHUTDOWN ends every
    session read their FATAL 57P01 and EOF; the process then exits cleanly."""
    import psycopg

    from tests.gateway.served import Served
    with Served(pg, pg_db, {"listen": "127.0.0.1:0", **GATEWAY, "admin_users": ["alice"],
                            "max_message_size": 256 << 20, "tls_cert_file": str(pki.cert),
                            "tls_key_file": str(pki.key)}, directory=tmp_path) as gw:
        await gw.wait_ready(timeout=30)
        port = gw.pg_port
        assert port is not None

        def client(tls: ssl.SSLContext | None, started: threading.Event) -> list[Any]:
            s = _connect(port, tls)
            try:  # a 200 MiB query, sent at a steady pace: still arriving at SHUTDOWN
                return flood(s, startup() + b"Q" + struct.pack("!I", 200 << 20), b"x", pace=0.005,
                             started=started)
            finally:
                s.close()
        started = [threading.Event(), threading.Event()]
        results = [asyncio.ensure_future(in_thread(client, tls, ev))
                   for tls, ev in zip([None, pki.client_context()], started)]
        for ev in started:
            assert await asyncio.to_thread(ev.wait, 30)
        async with await psycopg.AsyncConnection.connect(host="127.0.0.1", port=port, user="alice", sslmode="disable",
                                                         dbname="pgbouncer", autocommit=True) as conn:
            cur = await conn.execute("SHUTDOWN")
            assert cur.statusmessage == "SHUTDOWN"
        for r in results:
            assert fatal(await r) == ("57P01", "terminating connection due to administrator command")
        assert await asyncio.to_thread(gw.proc.wait, 15) == 0


# ------------------------------------------------------------------ TLS (SSLRequest on pg_listen)

TLS_CASES = [c for c in CASES if c[0] in ("startup_packet_too_large", "message_too_large", "unknown_message_type")]


@pytest.mark.parametrize("case", TLS_CASES, ids=[c[0] for c in TLS_CASES])
async def test_fatal_survives_over_tls(gateway_app, pki, case) -> None:
    """Over TLS the close is the TLS layer's: close_notify after the FATAL,
    then the client's records are read and discarded until its close_notify
    or EOF -- the client reads the FATAL and a clean end of the TLS stream."""
    _name, settings, head, filler, sqlstate, message = case
    app = await gateway_app(**GATEWAY, tls_cert_file=str(pki.cert), tls_key_file=str(pki.key), **settings)
    got = await run_flood(app.pg_port, head, filler, tls=pki.client_context())
    assert got[0] == sqlstate and message in got[1], got
    await eventually(lambda: not app.tcp.connections, what="no connection left")


# ------------------------------------------------------------------ WebSocket (/v2)

def ws_frame_header(length: int, opcode: int = 2) -> bytes:
    """A client frame's header, masked with the all-zero key (the payload goes as is)."""
    if length < 126:
        return bytes((0x80 | opcode, 0x80 | length)) + b"\0\0\0\0"
    if length < 65536:
        return bytes((0x80 | opcode, 0x80 | 126)) + struct.pack("!H", length) + b"\0\0\0\0"
    return bytes((0x80 | opcode, 0x80 | 127)) + struct.pack("!Q", length) + b"\0\0\0\0"


class WsReader:
    """Server frames -> Postgres messages of the binary payloads, and
    ``("close", code)`` for a close frame (what :func:`flood` collects)."""

    def __init__(self) -> None:
        self.raw = b""
        self.pg = MessageReader()

    @property
    def buffered(self) -> int:
        return len(self.raw) + self.pg.buffered

    def feed(self, data: bytes) -> list[Any]:
        self.raw += data
        out: list[Any] = []
        while len(self.raw) >= 2:
            op, n, pos = self.raw[0] & 0x0F, self.raw[1] & 0x7F, 2
            if n == 126:
                n, pos = (struct.unpack("!H", self.raw[2:4])[0], 4) if len(self.raw) >= 4 else (-1, 0)
            elif n == 127:
                n, pos = (struct.unpack("!Q", self.raw[2:10])[0], 10) if len(self.raw) >= 10 else (-1, 0)
            if n < 0 or len(self.raw) < pos + n:
                break
            payload, self.raw = self.raw[pos:pos + n], self.raw[pos + n:]
            if op == 8:
                out.append(("close", struct.unpack("!H", payload[:2])[0] if payload else None))
            elif op in (0, 2):
                self.pg.feed(payload)
                out += [m.decode_backend(t, b) for t, b in self.pg.read()]
        return out


def ws_connect(port: int) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.sendall(b"GET /v2 HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while not head.endswith(b"\r\n\r\n"):  # byte by byte: nothing of the frames after it is consumed
        head += s.recv(1)
    assert head.startswith(b"HTTP/1.1 101 "), head
    return s


#: (id, gateway settings, frames then the start of a frame still being sent, filler, what the client reads)
WS_CASES = [
    # a Postgres message over max_message_size, inside a 12 MiB frame still arriving
    ("message_too_large", {}, ws_frame_header(len(startup())) + startup() + ws_frame_header(12 << 20)
     + b"Q" + struct.pack("!I", 100 << 20), b"x", ("08P01", "exceeds the limit of 16777216 bytes"), 1000),
    # a frame over the WebSocket message size: websockets fails the connection (1009)
    ("frame_too_large", {"max_message_size": 1024}, ws_frame_header(len(startup())) + startup()
     + ws_frame_header(64 << 20), b"x", None, 1009),
]


@pytest.mark.parametrize("case", WS_CASES, ids=[c[0] for c in WS_CASES])
async def test_ws_error_and_close_frame_survive_a_client_still_sending(gateway_app, case) -> None:
    """The client gets the ErrorResponse (a binary message) and the close
    frame, then EOF, while still inside a frame it cannot end early -- so
    it can never answer with its own close frame: the gateway half-closes."""
    _name, settings, head, filler, error, code = case
    app = await gateway_app(**{**GATEWAY, **settings})

    def client() -> list[Any]:
        s = ws_connect(app.http_port)
        try:
            return flood(s, head, filler, reader=WsReader())
        finally:
            s.close()
    msgs = await in_thread(client)
    closes = [x for x in msgs if isinstance(x, tuple)]
    assert closes == [("close", code)] and msgs[-1] == closes[0], msgs
    if error is not None:
        got = fatal(msgs[:-1])
        assert got[0] == error[0] and error[1] in got[1], got
    await eventually(lambda: not app.http.connections, what="no connection left")


# ------------------------------------------------------------------ bounds

@pytest.mark.parametrize("bound", ["seconds", "bytes"])
async def test_lingering_is_bounded_and_holds_nothing(gateway_app, monkeypatch, bound) -> None:
    """While it lingers a connection is no client (no max_client_conn slot,
    no session, no server) and shows in wirepool_lingering_connections; it
    ends at LINGER_SECONDS, or at LINGER_BYTES of input, even if the client
    never closes."""
    from tests.gateway.served import http_get
    if bound == "seconds":
        monkeypatch.setattr(linger, "LINGER_SECONDS", 0.5)
    else:  # more than can be in flight when the FATAL is read (the kernel buffers)
        monkeypatch.setattr(linger, "LINGER_BYTES", 12 << 20)
    app = await gateway_app(**GATEWAY, max_client_conn=1)
    s = await asyncio.to_thread(_connect, app.pg_port)
    try:
        got = await in_thread(flood, s, startup() + b"Z\0\0\0\x04", SYNCS, after=0)
        assert fatal(got)[0] == "08P01"
        if bound == "bytes":
            assert app.gateway.n_clients == 0 and not app.gateway._all_sessions
            status, body = await http_get(app.http_port, "/metrics")
            assert status == 200 and b"wirepool_lingering_connections 1.0" in body, body[-2000:]
            # the one client slot is free for the next client while this one lingers
            other = await RawClient.connect(app.pg_port)
            await other.send(startup())
            assert not errors(await other.until(m.ReadyForQuery))
            await other.close()
            assert app.tcp.connections  # still lingering (LINGER_SECONDS is 30 here)

            def more() -> None:  # the client keeps sending: past LINGER_BYTES the gateway closes
                with pytest.raises((ConnectionResetError, BrokenPipeError)):
                    for _ in range(CAP // CHUNK):
                        s.sendall(SYNCS)
            await in_thread(more)
        # (seconds: the client sends nothing more and never closes)
        await eventually(lambda: not app.tcp.connections, what="the lingering connection closed")
        assert linger.active() == 0
    finally:
        s.close()


async def test_ws_57p01_at_shutdown_survives_a_client_still_sending(gateway_app) -> None:
    """The gateway shutting down: a WebSocket client inside a large frame
    gets its 57P01 and the close frame, then EOF -- the listener lets the
    closing connection finish before it aborts what is left."""
    app = await gateway_app(**GATEWAY)
    head = ws_frame_header(len(startup())) + startup() + ws_frame_header(12 << 20) + b"Q" + struct.pack("!I", 10 << 20)
    started = threading.Event()

    def client() -> list[Any]:
        s = ws_connect(app.http_port)
        try:
            return flood(s, head, b"x", reader=WsReader(), pace=0.005, started=started)
        finally:
            s.close()
    result = asyncio.ensure_future(in_thread(client))
    assert await asyncio.to_thread(started.wait, 30)
    await eventually(lambda: app.gateway.n_clients == 1, what="the client logged in")
    await app.shutdown(timeout=0)
    msgs = await result
    assert msgs[-1] == ("close", 1000), msgs
    assert fatal(msgs[:-1]) == ("57P01", "terminating connection due to administrator command")


class HttpReader:
    """An HTTP response -> ``("http", status)`` once whole (what :func:`flood` collects)."""

    def __init__(self) -> None:
        self.raw = b""
        self.buffered = 0

    def feed(self, data: bytes) -> list[Any]:
        self.raw += data
        head, sep, body = self.raw.partition(b"\r\n\r\n")
        if not sep:
            return []
        length = int(next(v for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:])
                          if k.strip().lower() == b"content-length"))
        if len(body) < length:
            return []
        self.raw = body[length:]
        self.buffered = len(self.raw)
        return [("http", int(head.split()[1]))]


async def test_https_413_survives_a_client_still_sending(gateway_app, pki) -> None:
    """HTTP over TLS (gateway/http.py's lingering close, TLS branch): a body
    over max_body_size still being sent gets its 413, close_notify, EOF."""
    app = await gateway_app(**GATEWAY, tls_cert_file=str(pki.cert), tls_key_file=str(pki.key))
    assert app.http is not None
    app.http.max_body_size = 1000

    def client() -> list[Any]:
        s = socket.create_connection(("127.0.0.1", app.http_port), timeout=30)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, CHUNK)
        s = pki.client_context().wrap_socket(s, server_hostname="localhost")
        try:
            return flood(s, b"POST /sql HTTP/1.1\r\nHost: x\r\nContent-Length: 50000000\r\n\r\n", b"x",
                         reader=HttpReader())
        finally:
            s.close()
    assert await in_thread(client) == [("http", 413)]


# ------------------------------------------------------------------ Terminate

async def test_terminate_closes_at_once_without_lingering(gateway_app) -> None:
    """A client that sent Terminate has nothing more to send: its connection is
    closed outright (no half-close, no Linger, nothing left in the listener's
    connections) even while the client keeps its socket open and sends nothing."""
    app = await gateway_app(**GATEWAY)
    c = await RawClient.connect(app.pg_port)
    try:
        await c.send(startup())
        assert not errors(await c.until(m.ReadyForQuery))
        await c.send(m.query("SELECT 1"))
        assert not errors(await c.until(m.ReadyForQuery))
        await c.send(m.terminate())
        assert await c.read_to_eof() == []  # EOF; the client does not close its side
        # (lingering would keep the connection, this app's only one, for LINGER_SECONDS: 30 s here;
        # not linger.active(), which other tests' connections still closing may count)
        await eventually(lambda: not app.tcp.connections, timeout=10.0, what="the connection closed")
    finally:
        await c.close()
