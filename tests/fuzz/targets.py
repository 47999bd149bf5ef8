"""Network fuzz targets: how one input reaches a real gateway, and what counts as a hang.

Each :class:`Target` turns an input (a seed or a mutant) into the bytes of one
connection: ``startup`` sends them as they are to ``pg_listen``; ``framing``
puts a valid login in front; ``websocket`` a valid upgrade request; ``sql``
and ``pg`` wrap them as the body of an authenticated ``POST /sql`` /
``POST /pg``; ``http`` sends them as they are to the HTTP port.

:func:`send_input` plays one connection: write the bytes while reading
whatever comes back, wait until the gateway closes or goes quiet, half-close,
and require the gateway to close the connection within ``HANG_SECONDS``.
A gateway that has not accepted, answered or closed by then has hung.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from driver.protocol import messages as m
from tests.fuzz.mutate import mutate_bytes, mutate_json

HERE = Path(__file__).resolve().parent
SEEDS = HERE / "seeds"
REGRESSIONS = HERE / "regressions"

USER, PASSWORD, DATABASE = "alice", "alice-secret", "app"
HANG_SECONDS = 2.0
QUIET_SECONDS = 0.1
FIRST_REPLY_SECONDS = 0.5

#: Settings of the gateway the network targets run against (``auth_type =
#: "password"``: recorded logins replay byte for byte).
#:
#: ``auth_failure_max_delay`` is below ``HANG_SECONDS``: every target connects
#: from TARGET_SOURCE and the ``startup``, ``websocket`` and ``http`` targets mutate
#: credentials, so that address is throttled for the whole run
#: (docs/security.md) and every HTTP request -- each one authenticates --
#: waits up to this delay before its password is checked, as an HTTP client
#: sharing an address with a password guesser would.  With the default (5 s)
#: that wait alone passed for a hang: the "HTTP-side hangs" of the first
#: campaigns (docs/fuzzing.md).  The throttle still runs (delays and 429s).
GATEWAY_SETTINGS: dict[str, object] = {
    "auth_type": "password",
    "auth_failure_max_delay": 1.0,
    "client_login_timeout": 10.0,
    "query_wait_timeout": 10.0,
    "sql_timeout": 5.0,
    "http_request_timeout": 5.0,
    "idle_transaction_timeout": 5.0,
    "http_session_timeout": 2.0,
    "http_idle_session_timeout": 10.0,
}

LOGIN = m.startup_message({"user": USER, "database": DATABASE}) + m.password_message(PASSWORD)
_BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
_UPGRADE = (b"GET /v2 HTTP/1.1\r\nHost: fuzz\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: ZnV6ei1rZXktMDAwMDAwMA==\r\nSec-WebSocket-Version: 13\r\n")
_DEFLATE = b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


def wrap_ws(data: bytes) -> bytes:
    # deterministic in the input: a quarter of the inputs negotiate permessage-deflate
    return _UPGRADE + (_DEFLATE if len(data) % 4 == 0 else b"") + b"\r\n" + data


def _post(path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    head = [f"POST {path} HTTP/1.1", "Host: fuzz", "Connection: close", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def wrap_sql(data: bytes) -> bytes:
    return _post("/sql", [("Neon-Connection-String", f"postgresql://{USER}:{PASSWORD}@fuzz/{DATABASE}"),
                          ("Content-Type", "application/json")], data)


def wrap_pg(data: bytes) -> bytes:
    headers = [("Authorization", f"Basic {_BASIC}"), ("Wirepool-Database", DATABASE),
               ("Content-Type", "application/vnd.wirepool.pg-frontend")]
    if len(data) % 3 == 0:  # deterministic in the input: a third of the inputs open a kept session
        headers.append(("Wirepool-Session", "new"))
    return _post("/pg", headers, data)


@dataclass(frozen=True)
class Target:
    name: str
    port: str                                   # "pg" (pg_listen) or "http" (listen)
    wrap: Callable[[bytes], bytes]
    mutate: Callable[..., bytes]
    doc: str

    def seeds(self) -> list[bytes]:
        return [p.read_bytes() for p in sorted((SEEDS / self.name).glob("*.bin"))]

    def regressions(self) -> list[Path]:
        return regression_files(self.name)


def regression_files(target: str) -> list[Path]:
    d = REGRESSIONS / target
    return sorted([*d.glob("*.bin"), *d.glob("*.bin.gz")])


def read_input(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


TARGETS: dict[str, Target] = {t.name: t for t in (
    Target("startup", "pg", lambda d: d, mutate_bytes,
           "the login phase on pg_listen: SSLRequest, StartupMessage, PasswordMessage"),
    Target("framing", "pg", lambda d: LOGIN + d, mutate_bytes,
           "post-login messages on pg_listen after a valid login"),
    Target("websocket", "http", wrap_ws, mutate_bytes,
           "WebSocket frames (carrying a login and queries) after a valid upgrade"),
    Target("http", "http", lambda d: d, mutate_bytes,
           "whole HTTP requests (head and body) on listen"),
    Target("sql", "http", wrap_sql, mutate_json,
           "the JSON body of an authenticated POST /sql"),
    Target("pg", "http", wrap_pg, mutate_bytes,
           "the Postgres-message body of an authenticated POST /pg"),
)}


#: the in-process sub-targets (tests/fuzz/inproc.py), in selector order: the first
#: byte of an in-process input, modulo their number, picks one
INPROC_SUBTARGETS = ("frontend", "backend", "rewriter", "sql_request", "sql_results", "pg_body",
                     "http_head", "ws_frames")


@dataclass
class Outcome:
    hung: str | None          # what hung, or None
    received: int             # bytes the gateway sent back
    signature: bytes          # coarse shape of the reply (feedback for the corpus)
    seconds: float


_SQLSTATE = re.compile(rb"C([0-9A-Z]{5})\x00")
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})")


def _signature(reply: bytes) -> bytes:
    codes = b",".join(sorted(set(_SQLSTATE.findall(reply[:65536]))))
    status = b",".join(_STATUS.findall(reply[:65536])[:4])
    size = len(reply).bit_length()
    return status + b"|" + codes + b"|" + bytes([size]) + reply[:1]


#: Source address of every target connection.  The campaign's probe (an asyncpg
#: client checking that everyone else keeps being served) connects from
#: 127.0.0.1: it stands for another client, so it must not share the address
#: the targets' wrong passwords throttle (on a fast machine the targets fail
#: logins quickly enough for the throttle to refuse that address outright).
TARGET_SOURCE = "127.0.0.2"


async def send_input(host: str, port: int, payload: bytes, *, hang: float = HANG_SECONDS,
                     on_connect: Callable[[int], None] | None = None) -> Outcome:
    """Play one connection carrying ``payload``; see the module docstring.
    ``on_connect`` gets the local port (the gateway logs it as the peer)."""
    t0 = time.monotonic()
    try:
        local = (TARGET_SOURCE, 0) if host.startswith("127.") else None
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, local_addr=local), hang)
    except asyncio.TimeoutError:
        return Outcome("connect", 0, b"", time.monotonic() - t0)
    except OSError as e:
        return Outcome(f"connect refused: {e}", 0, b"", time.monotonic() - t0)
    if on_connect is not None:
        on_connect(writer.get_extra_info("sockname")[1])
    reply = bytearray()
    closed = asyncio.Event()
    last_rx = [time.monotonic()]

    async def read_all() -> None:
        try:
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                last_rx[0] = time.monotonic()
                if len(reply) < (1 << 20):
                    reply.extend(chunk[: (1 << 20) - len(reply)])
        except (ConnectionError, OSError):
            pass
        finally:
            closed.set()

    rtask = asyncio.create_task(read_all())
    hung: str | None = None
    try:
        try:
            writer.write(payload)
            await asyncio.wait_for(writer.drain(), hang)
        except asyncio.TimeoutError:
            hung = "write"  # the gateway neither read nor closed
        except (ConnectionError, OSError):
            pass
        if hung is None:
            # let the gateway answer; stop waiting when it closed or has been quiet a moment
            while not closed.is_set():
                now = time.monotonic()
                if now - max(last_rx[0], t0) >= (QUIET_SECONDS if reply else FIRST_REPLY_SECONDS):
                    break
                try:
                    await asyncio.wait_for(closed.wait(), QUIET_SECONDS / 2)
                except asyncio.TimeoutError:
                    pass
            if not closed.is_set():
                try:
                    writer.write_eof()
                except (ConnectionError, OSError, RuntimeError):
                    pass
                try:
                    await asyncio.wait_for(closed.wait(), hang)
                except asyncio.TimeoutError:
                    hung = f"no close within {hang:.0f}s of EOF"
    finally:
        rtask.cancel()
        writer.close()
        try:
            await asyncio.wait_for(asyncio.gather(rtask, return_exceptions=True), 1)
        except asyncio.TimeoutError:
            pass
    return Outcome(hung, len(reply), _signature(bytes(reply)), time.monotonic() - t0)
