"""In-process, coverage-guided fuzzing of the sans-I/O parts with atheris (libFuzzer).

One libFuzzer run drives every sub-target: the first byte of an input picks
the sub-target, the rest is its data, so coverage feedback is shared and one
process fits the campaign's time budget.  Each sub-target feeds the real code
and lets only the exceptions its contract allows escape to nothing;
anything else (and a broken invariant, an ``AssertionError``) is a crash::

    python -m tests.fuzz.inproc --seconds 60 --workdir /tmp/x   # stats JSON on stdout

Sub-targets (``SUBTARGETS``):

``frontend``     FrontendReader (startup phase included) fed in random splits, read/read_raw
                 alternately; every message through decode_frontend (+ password/SASL decoders).
                 Invariant: read_raw hands out the input verbatim, in order.
``backend``      MessageReader + decode_backend / decode_data_row (what the driver reads).
``rewriter``     gateway.prepared.Rewriter.rewrite_frontend over framed client chunks.
``sql_request``  gateway.neon_sql.NeonSql.handle up to authentication: headers + JSON body.
                 Must not answer 500.
``sql_results``  gateway.neon_sql.build_results over synthetic rows of JSON/array/scalar types.
``pg_body``      gateway.http_exec._frame_batch + the ``Wirepool-Params`` header checks.
``http_head``    h11 parsing as the gateway drives it + the gateway's header helpers
                 (Basic/Bearer credentials, Neon connection strings).  Invariant: a head
                 gateway.http_fast takes (httptools) is one h11 parses into the same request.
``ws_frames``    gateway.websocket.WebSocketStream receive path: the hand-written fast path and
                 websockets' parser must deliver the same bytes and agree on errors.

``run_one(name, data)`` replays one input without atheris (regression tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qsl

import atheris

# Third-party and standard modules the gateway pulls in stay uninstrumented
# (instrumenting them all takes a minute); only the project's code, and h11
# (the gateway's HTTP parser), give coverage feedback.
import websockets.server  # noqa: E402,F401
from websockets.protocol import State  # noqa: E402
from websockets.server import ServerProtocol  # noqa: E402
import prometheus_client  # noqa: E402,F401

# (atheris includes submodules, not siblings: every module split out of http.py,
# websocket.py and prepared.py is named on its own)
_INSTRUMENT = ["h11", "driver.protocol", "gateway.http", "gateway.http_fast", "gateway.http_listener",
               "gateway.http_messages", "gateway.websocket", "gateway.ws_handshake", "gateway.ws_close", "gateway.neon_sql",
               "gateway.http_exec", "gateway.http_stream", "gateway.http_sessions", "gateway.http_protocol",
               "gateway.prepared", "gateway.prepared_registry", "gateway.prepared_server", "gateway.prepared_replies",
               "gateway.prepared_general",
               "gateway.accounting"]
# replaying saved inputs (regression tests) needs no coverage
_instrument = (contextlib.nullcontext() if os.environ.get("WIREPOOL_FUZZ_REPLAY")
               else atheris.instrument_imports(include=_INSTRUMENT))
with _instrument:
    import h11

    from driver.protocol import messages as m
    from driver.protocol.framing import FrontendReader, MessageReader, ProtocolError
    from gateway import http as ghttp
    from gateway import http_exec, http_fast, http_protocol, neon_sql, prepared
    from gateway.config import GatewaySettings

from tests.fuzz.known import known_reason
from tests.fuzz.targets import INPROC_SUBTARGETS, read_input

HERE = Path(__file__).resolve().parent


class _LogCapture(logging.Handler):
    """Exceptions the code under test logs (a 500 is explained by the traceback it logged)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.texts: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.texts.append("".join(traceback.format_exception(*record.exc_info)))


_LOGGED = _LogCapture()
logging.getLogger().addHandler(_LOGGED)
logging.getLogger().setLevel(logging.ERROR)
logging.getLogger().propagate = False


def _logged() -> str:
    text = "\n".join(_LOGGED.texts)
    _LOGGED.texts.clear()
    return text


class _Reached(BaseException):
    """Raised by the stand-in executor: parsing got as far as authentication."""


class _StopExecutor:
    async def authenticate(self, *a: Any, **k: Any) -> Any:
        raise _Reached

    async def run(self, *a: Any, **k: Any) -> Any:
        raise _Reached


class _Gw:
    http_executor = _StopExecutor()


def _splits(data: bytes, step: int) -> list[bytes]:
    step = max(1, step)
    return [data[i:i + step] for i in range(0, len(data), step)] or [b""]


# --------------------------------------------------------------------------- sub-targets

def frontend(data: bytes) -> None:
    if not data:
        return
    step, payload = data[0] % 23 + 1, data[1:]
    # reader A: read_raw / feed_read_raw alternately -- must hand out the input verbatim
    a = FrontendReader(max_size=1 << 16, startup=True)
    raw_msgs: list[tuple[int, bytes]] = []
    out = bytearray()
    a_err = False
    try:
        for i, piece in enumerate(_splits(payload, step)):
            chunk, idx = a.feed_read_raw(piece) if i % 2 else (a.feed(piece) or a.read_raw())
            out += chunk
            raw_msgs += [(t, chunk[s:e]) for t, s, e in idx]
            if i % 3 == 2:  # drain whatever is complete
                while True:
                    chunk, idx = a.read_raw()
                    if not idx:
                        break
                    out += chunk
                    raw_msgs += [(t, chunk[s:e]) for t, s, e in idx]
        while True:
            chunk, idx = a.read_raw()
            if not idx:
                break
            out += chunk
            raw_msgs += [(t, chunk[s:e]) for t, s, e in idx]
    except ProtocolError:
        a_err = True
    assert payload.startswith(bytes(out)), "read_raw did not hand out the input verbatim"
    # reader B: read() over other splits -- the same messages, the same verdict
    b = FrontendReader(max_size=1 << 16, startup=True)
    msgs: list[tuple[int, bytes]] = []
    b_err = False
    try:
        for piece in _splits(payload, step * 3 + 1):
            b.feed(piece)
            msgs += b.read()
        msgs += b.read()
    except ProtocolError:
        b_err = True
    assert a_err == b_err, f"read_raw error={a_err}, read error={b_err}"
    assert msgs == raw_msgs, "read() and read_raw() framed different messages"
    for t, body in msgs:
        try:
            msg = m.decode_frontend(t, body)
        except ProtocolError:
            continue
        if isinstance(msg, m.PasswordMessage):
            for dec in (m.decode_password, m.decode_sasl_initial_response):
                try:
                    dec(body)
                except ProtocolError:
                    pass


def backend(data: bytes) -> None:
    r = MessageReader(max_size=1 << 16)
    try:
        r.feed(data)
        msgs = r.read()
    except ProtocolError:
        return
    for t, body in msgs:
        try:
            m.decode_backend(t, body)
            if t == ord("D"):
                m.decode_data_row(body)
        except ProtocolError:
            pass


def rewriter(data: bytes) -> None:
    if not data:
        return
    limit = data[0] % 5  # 0: rewriting off
    rw = prepared.Rewriter(prepared.ClientStatements(prepared.StatementRegistry(), 8, 4096), limit)
    rw.link(prepared.ServerStatements(max(limit, 1)))
    r = FrontendReader(max_size=1 << 16, startup=False)
    for piece in _splits(data[1:], data[0] // 5 + 1):
        try:
            chunk, idx = r.feed_read_raw(piece)
        except ProtocolError:
            return
        if idx:
            try:
                rw.rewrite_frontend(chunk, idx)
            except ProtocolError:
                return


_SQL_HEADERS = [
    ("neon-array-mode", "true"), ("neon-raw-text-output", "true"), ("neon-batch-isolation-level", "Serializable"),
    ("neon-batch-read-only", "true"), ("neon-batch-deferrable", "true"), ("neon-array-mode", "maybe"),
    ("authorization", "Bearer x"), ("neon-batch-isolation-level", "nonsense"),
]


def _drive(coro: Any) -> Any:
    """Run a coroutine that must not really wait (the executor stand-in raises before any I/O)."""
    try:
        coro.send(None)
    except StopIteration as e:
        return e.value
    except _Reached:
        return None
    coro.close()
    raise AssertionError("the request handler waited on something before authentication")


def sql_request(data: bytes) -> None:
    if not data:
        return
    flags, body = data[0], data[1:]
    headers = [("neon-connection-string", "postgresql://alice:alice-secret@h/app")]
    headers += [h for i, h in enumerate(_SQL_HEADERS) if flags & (1 << i)]
    req = ghttp.HttpRequest("POST", "/sql", "/sql", {}, headers, body, "fuzz")
    resp = _drive(neon_sql.NeonSql(_Gw(), GatewaySettings()).handle(req))
    if resp is not None:
        assert resp.status < 500, f"POST /sql answered {resp.status}: {resp.body[:200]!r}\n{_logged()}"


#: json, jsonb, text: the types whose values are free-form on output (what Postgres
#: sends for them is any valid JSON / any UTF-8 text; other types' text is well-formed)
_OIDS = (114, 3802, 25)


def _postgres_could_send(oid: int, cell: bytes) -> bool:
    try:
        text = cell.decode("utf-8")
    except UnicodeDecodeError:
        return False
    if oid == 25:
        return "\x00" not in text
    try:
        json.loads(text)
    except RecursionError:
        return True  # deeply nested JSON is valid JSON (Postgres accepts thousands of levels)
    except ValueError:
        return False
    return True


def sql_results(data: bytes) -> None:
    if len(data) < 2:
        return
    ncols = data[0] % 3 + 1
    oids = [_OIDS[b % len(_OIDS)] for b in data[1:1 + ncols]]
    cells = data[1 + ncols:].split(b"\xff")
    fields = [m.FieldDescription(f"c{i}", 0, 0, oid, -1, -1, 0) for i, oid in enumerate(oids)]
    out = [m.row_description(fields)]
    for i in range(0, len(cells), ncols):
        row: list[bytes | None] = list(cells[i:i + ncols])
        row += [None] * (ncols - len(row))
        row = [c if c is not None and _postgres_could_send(oids[j], c) else None for j, c in enumerate(row)]
        out.append(m.data_row(row))
    out += [m.command_complete("SELECT 1"), m.ready_for_query("I")]
    try:
        neon_sql.build_results(b"".join(out), [bool(data[0] & 8)], bool(data[0] & 16), 1 << 20)
    except neon_sql.NeonError as e:
        assert e.status < 500 or e.status == 507, f"build_results: {e.status} {e}"


def pg_body(data: bytes) -> None:
    head, _, body = data.partition(b"\n")
    req = ghttp.HttpRequest("POST", "/pg", "/pg", {}, [
        ("wirepool-params", head.decode("latin-1")),
        ("authorization", "Basic YWxpY2U6YWxpY2Utc2VjcmV0"), ("wirepool-database", "app")], body, "fuzz")
    resp = _drive(http_protocol.HttpProtocolEndpoint(_App()).handle(req))
    if resp is not None:
        assert resp.status < 500, f"POST /pg answered {resp.status}\n{_logged()}"
    try:
        http_exec.check_startup_params(dict(parse_qsl(head.decode("latin-1"),
                                                       keep_blank_values=True)))
    except http_exec.HttpExecError:
        pass
    try:
        http_exec._frame_batch(body, 1 << 16, 100)
    except http_exec.HttpExecError as e:
        assert e.status < 500


class _App:
    gateway = _Gw()


def http_head(data: bytes) -> None:
    fast = http_fast.parse_upgrade(data)
    if fast is not None:  # the C parser takes only what h11 parses into the same request
        c = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
        c.receive_data(data)
        ev = c.next_event()
        assert isinstance(ev, h11.Request), ev
        assert (ev.method, ev.target, ev.http_version) == (b"GET", fast[0], b"1.1"), (ev, fast)
        assert ev.headers.raw_items() == fast[1], (ev.headers, fast[1])
        assert bytes(c.trailing_data[0]) == fast[2]
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=16384)
    try:
        conn.receive_data(data)
        conn.receive_data(b"")
        ev = conn.next_event()
    except h11.RemoteProtocolError:
        return
    if not isinstance(ev, h11.Request):
        return
    headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in ev.headers]
    req = ghttp.HttpRequest(ev.method.decode("ascii", "replace"), ev.target.decode("latin-1"), "/", {},
                            headers, b"", "fuzz")
    try:
        http_protocol._credentials(req)
    except http_exec.HttpExecError:
        pass
    cs = req.header("neon-connection-string")
    if cs is not None:
        try:
            neon_sql.parse_connection_string(cs)
        except neon_sql.NeonError:
            pass
    for name in ("neon-array-mode", "neon-raw-text-output"):
        try:
            neon_sql._bool_header(req, name)
        except neon_sql.NeonError:
            pass


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def write(self, data: Any) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def can_write_eof(self) -> bool:  # (gateway/linger.py: closed at once, no lingering)
        return False

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default


_LOOP: asyncio.AbstractEventLoop | None = None


def _ws_run(data: bytes, fast: bool, step: int, limit: int) -> tuple[bytes, bool]:
    ws = ServerProtocol(max_size=limit, state=State.OPEN)
    req = ghttp.HttpRequest("GET", "/v2", "/v2", {}, [], b"", "fuzz")
    s = ghttp.WebSocketStream(_Transport(), ws, req)
    s._fast_rx = fast
    for piece in _splits(data, step):
        if s._error is not None or s._eof or s._lost:
            break
        s._ws_data(piece)
    if s._error is None and not s._eof and not s._lost:
        s._ws_eof()  # the fast path may still hold a partial frame: decide on it
    got = b"".join(s._chunks)
    return got, s._error is not None


def ws_frames(data: bytes) -> None:
    global _LOOP
    if len(data) < 2:
        return
    if _LOOP is None:
        _LOOP = asyncio.new_event_loop()
        asyncio.events._set_running_loop(_LOOP)  # streams want a running loop; nothing is scheduled
    step, limit = data[0] % 31 + 1, (64, 1 << 16)[data[1] & 1]
    fast, fast_err = _ws_run(data[2:], True, step, limit)
    slow, slow_err = _ws_run(data[2:], False, step, limit)
    assert fast_err == slow_err, f"fast path error={fast_err}, websockets error={slow_err}"
    if not fast_err:
        assert fast == slow, "fast path and websockets delivered different bytes"


SUBTARGETS: dict[str, Callable[[bytes], None]] = {
    "frontend": frontend, "backend": backend, "rewriter": rewriter, "sql_request": sql_request,
    "sql_results": sql_results, "pg_body": pg_body, "http_head": http_head, "ws_frames": ws_frames,
}
_NAMES = list(SUBTARGETS)
assert tuple(_NAMES) == INPROC_SUBTARGETS


def run_one(name: str, data: bytes) -> None:
    SUBTARGETS[name](data)


def selector(name: str) -> int:
    return _NAMES.index(name)


def split_input(data: bytes) -> tuple[str, bytes]:
    return _NAMES[data[0] % len(_NAMES)], data[1:]


# --------------------------------------------------------------------------- seeds

def _synthetic_backend() -> list[bytes]:
    f = [m.FieldDescription("a", 0, 0, 23, 4, -1, 0), m.FieldDescription("j", 0, 0, 3802, -1, -1, 0)]
    return [
        m.authentication_ok() + m.parameter_status("server_version", "16") + m.backend_key_data(1, 2)
        + m.ready_for_query("I"),
        m.row_description(f) + m.data_row([b"1", b'{"a":[1,2]}']) + m.data_row([None, b"null"])
        + m.command_complete("SELECT 2") + m.ready_for_query("T"),
        m.error("42P01", "relation does not exist") + m.ready_for_query("E"),
        m.parameter_description([23, 25]) + m.copy_in_response(0, [0]) + m.notification_response(1, "c", "p"),
    ]


def seed_inputs() -> list[bytes]:
    """Selector-prefixed seeds from the captured network corpora + synthetic backend data."""
    def files(target: str) -> list[bytes]:
        return [p.read_bytes() for p in sorted((HERE / "seeds" / target).glob("*.bin"))]

    out: list[bytes] = []

    def add(name: str, items: list[bytes]) -> None:
        out.extend(bytes([selector(name)]) + d for d in items)

    add("frontend", [b"\x00" + d for d in files("startup")]
        + [b"\x07" + m.startup_message({"user": "a"}) + d for d in files("framing")])
    add("rewriter", [b"\x02" + d for d in files("framing")] + [b"\x03" + d for d in files("pg")])
    add("backend", _synthetic_backend())
    add("sql_request", [b"\x00" + d for d in files("sql")] + [b"\x03" + d for d in files("sql")[:3]])
    add("sql_results", [b"\x01\x00\x01" + b'{"a":[1,{"b":2}]}\xff[1,2]', b"\x02\x02\x00\x01" + b'x\xff"y"\xff[[[[1]]]]'])
    add("pg_body", [b"application_name=x\n" + d for d in files("pg")])
    add("http_head", files("http"))
    add("ws_frames", [b"\x05\x01" + d for d in files("websocket")])
    return out


# --------------------------------------------------------------------------- libFuzzer driver

_counts: dict[str, int] = {n: 0 for n in _NAMES}
_known: dict[str, int] = {}     # known failure reason -> inputs
_known_inputs: dict[str, str] = {}   # file name in workdir/known -> reason (one input per reason)
_known_dir: Path | None = None
_stats_path: str | None = None
_last_write = 0.0


def _write_stats() -> None:
    if _stats_path:
        tmp = _stats_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"counts": _counts, "known": _known, "known_inputs": _known_inputs}, f)
        os.replace(tmp, _stats_path)


def test_one_input(data: bytes) -> None:
    global _last_write
    if not data:
        return
    name, rest = split_input(data)
    _counts[name] += 1
    now = time.monotonic()
    if now - _last_write > 1.0:
        _last_write = now
        _write_stats()
    _LOGGED.texts.clear()
    try:
        SUBTARGETS[name](rest)
    except Exception:
        text = traceback.format_exc()
        reason = known_reason(text)
        if reason is None:
            raise
        # a failure fixed elsewhere (tests/fuzz/known.py): note it, keep fuzzing
        if reason not in _known and _known_dir is not None:
            fname = hashlib.sha1(data).hexdigest()[:16]
            (_known_dir / fname).write_bytes(data)
            _known_inputs[fname] = reason
            _write_stats()
        _known[reason] = _known.get(reason, 0) + 1


def replay(paths: list[str]) -> dict[str, str]:
    """Run saved inputs once each: ``{path: "ok" or the exception}``."""
    out: dict[str, str] = {}
    for p in paths:
        name, rest = split_input(read_input(Path(p)))
        _LOGGED.texts.clear()
        try:
            run_one(name, rest)
            out[p] = "ok"
        except Exception:
            out[p] = traceback.format_exc()
    return out


def main(argv: list[str] | None = None) -> int:
    global _stats_path, _known_dir
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--replay":
        print(json.dumps(replay(argv[1:])))
        return 0
    ap = argparse.ArgumentParser(prog="python -m tests.fuzz.inproc")
    ap.add_argument("--seconds", type=int, default=20)
    ap.add_argument("--workdir", type=Path, required=True)
    ap.add_argument("--skip", type=Path, action="append", default=[],
                    help="directory of inputs known to fail: seeds equal to one are left out")
    args, extra = ap.parse_known_args(argv)
    corpus = args.workdir / "corpus"
    seeds = args.workdir / "seeds"
    artifacts = args.workdir / "artifacts"
    for d in (corpus, seeds, artifacts):
        d.mkdir(parents=True, exist_ok=True)
    known = {read_input(p) for d in args.skip if d.is_dir() for p in d.iterdir() if p.is_file()}
    for old in seeds.iterdir():
        old.unlink()
    for i, s in enumerate(seed_inputs()):
        if s not in known:
            (seeds / f"seed-{i:04d}").write_bytes(s)
    _stats_path = str(args.workdir / "counts.json")
    _known_dir = args.workdir / "known"
    _known_dir.mkdir(exist_ok=True)
    flags = [f"-max_total_time={args.seconds}", "-timeout=2", "-rss_limit_mb=1024", "-max_len=16384",
             "-print_final_stats=1", f"-artifact_prefix={artifacts}/", *extra, str(corpus), str(seeds)]
    atheris.Setup([sys.argv[0], *flags], test_one_input)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
