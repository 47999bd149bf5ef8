"""HTTP transport (CPython): the PostgreSQL protocol through a wirepool gateway's ``POST /pg``.

``driver.connect("http://alice:secret@127.0.0.1:8432/app")`` talks to
``http://127.0.0.1:8432/pg`` (``?endpoint=/path`` changes the endpoint; the
URL path is the database, or ``?dbname=``), ``https://`` adds TLS
(verify-full by default; the DSN's ``sslmode`` / ``ssl=`` relax it).
``?token=<api token>`` authenticates with ``Authorization: Bearer`` instead
of a password.

The request/response logic (batching at Sync/Query boundaries, the emulated
startup, session tokens, the deferred BEGIN, errors) is the sans-I/O
:class:`driver.protocol.http_envelope.HttpSessionClient`; this module only
moves its requests over HTTP/1.1:

* :class:`HttpClient` -- a minimal asyncio HTTP/1.1 client on the standard
  library (asyncio streams): one kept-alive connection, ``Content-Length``
  and chunked responses.  A request that meets EOF before any response byte
  on a *reused* connection (the server closed it while idle) is retried once
  on a new connection -- the gateway runs nothing before it has read the
  whole request, so the request was not run.
* :class:`HttpTransport` -- the :class:`~driver.transport.base.Transport`
  the connection sees: ``send()`` queues bytes and returns at once; a
  background task performs the requests strictly one after another;
  ``recv()`` returns backend bytes.
* Cancel: ``POST <endpoint>/cancel`` with the CancelRequest carrying the
  BackendKeyData of the hello reply (the gateway forwards it to the backend
  serving this connection's session).

Other HTTP clients (the JS ``fetch`` of Pyodide) plug in through the
``client_factory`` of :class:`HttpConnector`: any object with
``async request(method, path, headers, body) -> (status, headers, body)``
and ``close()``.
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from typing import Callable, Protocol
from urllib.parse import unquote

from ..protocol.http_envelope import (CANCEL_SUFFIX, CT_FRONTEND, DEFAULT_PATH, HttpSessionClient,
                                      encode_cancel_request)
from .base import Connector, Endpoint, Transport, TransportError

__all__ = ["HttpConnector", "HttpTransport", "HttpClient", "RequestClient", "http_target"]

_TLS_MODES = ("require", "verify-ca", "verify-full")
_MAX_HEADER = 64 * 1024
#: bodies larger than this are sent after ``Expect: 100-continue``
EXPECT_CONTINUE_SIZE = 1 << 20


class RequestClient(Protocol):
    async def request(self, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes) -> tuple[int, list[tuple[str, str]], bytes]: ...

    def close(self) -> None: ...


class HttpError(TransportError):
    pass


class HttpClient:
    """Minimal HTTP/1.1 client with one kept-alive connection (stdlib asyncio only)."""

    def __init__(self, host: str, port: int, *, ssl: ssl_module.SSLContext | None = None,
                 server_hostname: str | None = None, connect_timeout: float | None = None) -> None:
        self.host = host
        self.port = port
        self.ssl = ssl
        self.server_hostname = server_hostname
        self.connect_timeout = connect_timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        host_h = f"[{host}]" if ":" in host else host
        default = 443 if ssl is not None else 80
        self.host_header = host_h if port == default else f"{host_h}:{port}"
        #: TCP connections opened so far (tests: keep-alive means 1)
        self.connections_opened = 0

    async def _connect(self) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port, ssl=self.ssl,
                                        server_hostname=self.server_hostname if self.ssl else None,
                                        limit=_MAX_HEADER),
                self.connect_timeout)
        except (OSError, asyncio.TimeoutError, ssl_module.SSLError) as exc:
            raise HttpError(f"cannot connect to {self.host}:{self.port}: {exc or type(exc).__name__}") from exc
        self._reader, self._writer = reader, writer
        self.connections_opened += 1

    async def request(self, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        reused = self._writer is not None and not self._writer.is_closing()
        if not reused:
            self._drop()
            await self._connect()
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in headers)
        expect = len(body) > EXPECT_CONTINUE_SIZE
        if expect:
            # Large body: let the server refuse it (413) before it is sent.
            head.append("Expect: 100-continue")
        data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
        if not expect:
            data, body = data + body, b""
        try:
            return await self._exchange(data, body)
        except _EarlyEOF:
            if not reused:
                raise HttpError("the server closed the connection without answering") from None
        # The server closed the idle kept-alive connection: once more on a new one.
        self._drop()
        await self._connect()
        try:
            return await self._exchange(data, body)
        except _EarlyEOF:
            raise HttpError("the server closed the connection without answering") from None

    async def _head(self, reader: asyncio.StreamReader) -> tuple[int, list[tuple[str, str]]]:
        try:
            line = await reader.readuntil(b"\r\n")
        except asyncio.IncompleteReadError as e:
            if not e.partial:
                self._drop()
                raise _EarlyEOF() from None
            raise
        parts = line.decode("latin-1").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HttpError(f"malformed HTTP status line {line[:80]!r}")
        status = int(parts[1])
        headers: list[tuple[str, str]] = []
        while True:
            hl = (await reader.readuntil(b"\r\n"))[:-2].decode("latin-1")
            if not hl:
                break
            k, sep, v = hl.partition(":")
            if not sep:
                raise HttpError(f"malformed HTTP header line {hl[:80]!r}")
            headers.append((k.strip().lower(), v.strip()))
        return status, headers

    async def _exchange(self, data: bytes, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        reader, writer = self._reader, self._writer
        assert reader is not None and writer is not None
        try:
            writer.write(data)
            await writer.drain()
            status, headers = await self._head(reader)
            if body:
                if status == 100:
                    writer.write(body)
                    await writer.drain()
                    status, headers = await self._head(reader)
                else:  # refused before the body was sent: this connection cannot go on
                    headers.append(("connection", "close"))
            hd = dict(headers)
            if hd.get("transfer-encoding", "").lower() == "chunked":
                chunks: list[bytes] = []
                while True:
                    size_line = await reader.readuntil(b"\r\n")
                    size = int(size_line.split(b";")[0].strip(), 16)
                    if size == 0:
                        await reader.readuntil(b"\r\n")  # (no trailers expected)
                        break
                    chunks.append(await reader.readexactly(size))
                    await reader.readexactly(2)
                body = b"".join(chunks)
            elif "content-length" in hd:
                body = await reader.readexactly(int(hd["content-length"]))
            elif status in (204, 304) or 100 <= status < 200:
                body = b""
            else:
                body = await reader.read()
                hd["connection"] = "close"
            if hd.get("connection", "").lower() == "close":
                self._drop()
            return status, headers, body
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self._drop()
            raise HttpError(f"HTTP exchange with {self.host}:{self.port} failed: {exc or type(exc).__name__}") from exc
        except BaseException:
            self._drop()  # cancelled mid-exchange: the connection state is unknown
            raise

    def _drop(self) -> None:
        w = self._writer
        self._reader = self._writer = None
        if w is not None:
            try:
                w.close()
            except Exception:  # pragma: no cover
                pass

    def close(self) -> None:
        self._drop()


class _EarlyEOF(Exception):
    pass


class HttpTransport(Transport):
    """A Transport over request/response HTTP (see the module doc)."""

    def __init__(self, client: RequestClient, session: HttpSessionClient, secure: bool = False) -> None:
        self.client = client
        self.session = session
        self.secure = secure
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._closing = False
        self._eof_sent = False
        self._task: asyncio.Task[None] = asyncio.get_running_loop().create_task(self._run())
        #: (request bytes, response bytes) sizes, for tests
        self.requests = 0

    async def send(self, data: bytes) -> None:
        if self._closing and not data.endswith(b"X\x00\x00\x00\x04"):
            raise TransportError("the connection is closed")
        self.session.send(data)
        self._wake.set()

    async def recv(self) -> bytes:
        if self._eof_sent and self._queue.empty():
            return b""
        data = await self._queue.get()
        if not data:
            self._eof_sent = True
        return data

    def _deliver(self) -> None:
        data = self.session.data_received()
        if data:
            self._queue.put_nowait(data)

    async def _run(self) -> None:
        s = self.session
        try:
            while True:
                req = s.next_request()
                self._deliver()
                if req is None:
                    if s.eof:
                        break
                    if self._closing and not s.busy:
                        break
                    self._wake.clear()
                    # anything new since next_request()?
                    req = s.next_request()
                    self._deliver()
                    if req is None:
                        if s.eof:
                            break
                        await self._wake.wait()
                        continue
                self.requests += 1
                try:
                    status, headers, body = await self.client.request(req.method, req.path, req.headers, req.body)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    s.receive_failure(str(exc) or type(exc).__name__)
                else:
                    s.receive_response(status, headers, body)
                self._deliver()
        finally:
            self._deliver()
            self._queue.put_nowait(b"")
            self.client.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        self._wake.set()

    def abort(self) -> None:
        self._closing = True
        if not self._task.done():
            self._task.cancel()
        self.client.close()

    async def wait_closed(self) -> None:
        try:
            await asyncio.wait_for(asyncio.shield(self._task), 10)
        except BaseException:
            self.abort()

    @property
    def is_closing(self) -> bool:
        return self._closing or self._task.done()


def http_target(endpoint: Endpoint) -> tuple[str, str, dict[str, str]]:
    """(endpoint path, database, extra query) of an http(s) endpoint."""
    params = endpoint.options.get("params")
    query: dict[str, str] = dict(endpoint.options.get("query") or {})
    explicit = query.pop("endpoint", None)
    path = explicit or DEFAULT_PATH
    if not path.startswith("/"):
        raise TransportError(f"invalid endpoint {path!r}: must be a URL path starting with /")
    database = getattr(params, "database", "") if params is not None else ""
    url_path = getattr(params, "path", "") if params is not None else ""
    user = getattr(params, "user", "") if params is not None else ""
    # The URL path names the database (as for ws://: http://h:8432/app), unless
    # it is the endpoint itself or an explicit dbname= differs from the default
    # (the user name); a path that is not the database is the endpoint
    # (http://h:8432/custom?dbname=app), unless ?endpoint= says otherwise.
    seg = url_path.strip("/")
    if seg and "/" not in seg and url_path != path and (not database or database == user):
        database = unquote(seg)
    elif seg and explicit is None:
        path = url_path
    return path, database, query


def _ssl_context(endpoint: Endpoint) -> ssl_module.SSLContext:
    if isinstance(endpoint.ssl_context, ssl_module.SSLContext):
        return endpoint.ssl_context
    from .tcp import make_ssl_context, sslrootcert

    mode = endpoint.sslmode if endpoint.sslmode in _TLS_MODES else "verify-full"
    return make_ssl_context(mode, sslrootcert(endpoint))


class HttpConnector(Connector):
    """Opens :class:`HttpTransport` objects for http:// and https:// endpoints."""

    def __init__(self, client_factory: Callable[[Endpoint], RequestClient] | None = None) -> None:
        self._factory = client_factory or self._default_client

    @staticmethod
    def _default_client(endpoint: Endpoint) -> RequestClient:
        secure = endpoint.scheme == "https"
        ctx = _ssl_context(endpoint) if secure else None
        return HttpClient(endpoint.host, endpoint.port, ssl=ctx,
                          server_hostname=endpoint.host if ctx is not None and ctx.check_hostname else
                          (endpoint.host if ctx is not None else None),
                          connect_timeout=endpoint.connect_timeout)

    async def connect(self, endpoint: Endpoint) -> Transport:
        path, database, query = http_target(endpoint)
        params = endpoint.options.get("params")
        token = query.get("token")
        session = HttpSessionClient(
            user=getattr(params, "user", "") or "",
            password=getattr(params, "password", None),
            database=database, api_token=token, path=path)
        client = self._factory(endpoint)
        return HttpTransport(client, session, secure=endpoint.scheme == "https")

    async def cancel(self, endpoint: Endpoint, process_id: int, secret_key: int) -> None:
        path, _db, _q = http_target(endpoint)
        client = self._factory(endpoint)
        try:
            status, _h, body = await client.request(
                "POST", path.rstrip("/") + CANCEL_SUFFIX, [("Content-Type", CT_FRONTEND)],
                encode_cancel_request(process_id, secret_key))
        finally:
            client.close()
        if status >= 300:
            raise TransportError(f"cancel request failed: HTTP {status}")
