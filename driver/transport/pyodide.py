"""Transports for Pyodide (``sys.platform == "emscripten"``): JS ``WebSocket`` and JS ``fetch``.

In a fetch-only runtime (Cloudflare Python Workers, browsers, Pyodide under
Node) there are no raw sockets: ``asyncio.open_connection`` raises
``NotImplementedError`` and ``socket.connect`` is faked by Emscripten as a
WebSocket to ``ws://host:port/``.  The driver therefore never touches
``socket`` there; :func:`driver.transport.get_connector` picks these
connectors automatically:

* ``ws://`` / ``wss://`` -> :class:`JsWebSocketConnector`: the JS
  ``WebSocket`` (``globalThis.WebSocket``; under Node 20 expose the ``ws``
  package as ``globalThis.WebSocket`` or start Node with
  ``--experimental-websocket``).  ``binaryType = "arraybuffer"``; every
  :meth:`~JsWebSocketTransport.send` is one binary message (a ``Uint8Array``
  made with ``pyodide.ffi.to_js``), so a pipelined batch travels as one
  message exactly as with the CPython ``websockets`` transport; received
  messages are queued (an ``asyncio.Queue`` filled by the JS ``message``
  listener) and returned one per :meth:`~JsWebSocketTransport.recv`.  A text
  message is a protocol violation.  ``?token=`` in the DSN is passed in the
  URL query (browsers cannot set an ``Authorization`` header on a WebSocket).
* ``http://`` / ``https://`` -> :func:`FetchConnector`: the gateway's
  protocol-over-HTTP (``POST /pg``, see :mod:`driver.transport.http` and
  :mod:`driver.protocol.http_envelope`, which do all the session logic)
  with :class:`FetchClient` -- the JS ``fetch`` -- as its HTTP client.
* ``postgresql://`` -> :class:`TransportUnavailable` with a message saying
  why (raw TCP is not possible here) and what to use instead.

Cancel (CancelRequest on a fresh WebSocket) works as with CPython, through
:meth:`driver.transport.base.Connector.cancel`.

SCRAM needs PBKDF2: Pyodide's ``hashlib`` has no ``pbkdf2_hmac``, so
:func:`driver.protocol.auth.pbkdf2_sha256` falls back to its pure-Python
implementation (about 85 ms for 4096 iterations in Pyodide under Node).
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

from ..urls import urlencode
from .base import Connector, Endpoint, Transport, TransportError

__all__ = ["IS_PYODIDE", "JsWebSocketConnector", "JsWebSocketTransport", "TransportUnavailable",
           "TCP_UNAVAILABLE_MESSAGE"]

IS_PYODIDE = sys.platform == "emscripten"

TCP_UNAVAILABLE_MESSAGE = (
    "postgresql:// (raw TCP) is not available under Pyodide: a fetch-only runtime has no "
    "raw sockets; connect through a wirepool gateway with ws://, wss://, http:// or https:// "
    "instead (e.g. ws://user:password@gateway:8432/dbname)")

# WebSocket.readyState values
_CONNECTING, _OPEN, _CLOSING, _CLOSED = 0, 1, 2, 3
#: ``send`` waits (yielding to the event loop) while more than this many bytes
#: are buffered by the JS WebSocket: a crude but sufficient backpressure.
_HIGH_WATER = 4 * 1024 * 1024


class TransportUnavailable(TransportError):
    """The transport cannot exist in this runtime (e.g. raw TCP under Pyodide)."""


class JsWebSocketTransport(Transport):
    """One open JS WebSocket carrying protocol bytes in binary messages."""

    def __init__(self, ws: Any, queue: "asyncio.Queue[bytes | BaseException]",
                 proxies: list[Any], secure: bool = False) -> None:
        self._ws = ws
        self._queue = queue
        self._proxies = proxies
        self._closing = False
        self._eof = False
        self._closed_event = asyncio.Event()
        self.secure = secure
        #: client->server / server->client WebSocket messages so far.
        self.sent_messages = 0
        self.received_messages = 0

    @property
    def websocket(self) -> Any:
        """The JS WebSocket object (a JsProxy)."""
        return self._ws

    def _on_closed(self) -> None:
        """The JS ``close`` event fired: no event will follow, the listeners can go
        (released on the next loop turn, not inside the listener being called)."""
        self._closed_event.set()
        asyncio.get_running_loop().call_soon(self._release_proxies)

    def _release_proxies(self) -> None:
        proxies, self._proxies = self._proxies, []
        for p in proxies:
            try:
                p.destroy()
            except Exception:  # already destroyed
                pass

    async def send(self, data: bytes) -> None:
        if self._closing or self._ws.readyState != _OPEN:
            raise TransportError("the WebSocket is closed")
        from pyodide.ffi import to_js  # type: ignore[import-not-found,unused-ignore]

        try:
            self._ws.send(to_js(data))
        except Exception as exc:  # a JsException
            raise TransportError(f"WebSocket send failed: {exc}") from exc
        self.sent_messages += 1
        while self._ws.bufferedAmount > _HIGH_WATER and self._ws.readyState == _OPEN:
            await asyncio.sleep(0.001)

    async def recv(self) -> bytes:
        if self._eof:
            return b""
        item = await self._queue.get()
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        if not item:
            self._eof = True
            return b""
        self.received_messages += 1
        return item

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        try:
            if self._ws.readyState in (_CONNECTING, _OPEN):
                self._ws.close(1000)
        except Exception:
            pass

    def abort(self) -> None:
        # JS has no abort for a WebSocket: a close without waiting is the closest.
        self.close()
        self._queue.put_nowait(b"")

    async def wait_closed(self) -> None:
        if self._ws.readyState == _CLOSED:
            return
        await self._closed_event.wait()

    @property
    def is_closing(self) -> bool:
        return self._closing or self._ws.readyState != _OPEN


def _ws_url(endpoint: Endpoint) -> str:
    url = endpoint.options.get("url")
    if isinstance(url, str):
        return url
    params = endpoint.options.get("params")
    if params is not None:
        base = str(params.url())
    else:
        from ..dsn import DEFAULT_WS_PATH

        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        path = endpoint.options.get("path") or DEFAULT_WS_PATH
        base = f"{endpoint.scheme}://{host}:{endpoint.port}{path}"
    query = endpoint.options.get("query") or {}
    token = query.get("token")
    if token:
        # Browsers cannot set headers on a WebSocket upgrade: the gateway
        # accepts the token as a query parameter.
        base += "?" + urlencode({"token": token})
    return base


class JsWebSocketConnector(Connector):
    """Opens :class:`JsWebSocketTransport` objects (``globalThis.WebSocket``)."""

    async def connect(self, endpoint: Endpoint) -> Transport:
        try:
            import js  # type: ignore[import-not-found,unused-ignore]
            from pyodide.ffi import create_proxy  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise TransportUnavailable("the JS WebSocket transport needs Pyodide") from exc
        ws_ctor = getattr(js, "WebSocket", None)
        if ws_ctor is None:
            raise TransportUnavailable(
                "no WebSocket in this JavaScript runtime (under Node 20 set "
                "globalThis.WebSocket = require('ws') or use --experimental-websocket)")
        url = _ws_url(endpoint)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[bytes | BaseException] = asyncio.Queue()
        opened: asyncio.Future[None] = loop.create_future()
        holder: list[JsWebSocketTransport] = []

        def on_open(event: Any) -> None:
            if not opened.done():
                opened.set_result(None)

        def on_message(event: Any) -> None:
            data = event.data
            if isinstance(data, str):
                queue.put_nowait(TransportError(
                    "the server sent a text WebSocket message (expected binary)"))
                try:
                    ws.close(1003)
                except Exception:
                    pass
                return
            try:
                payload = data.to_bytes()  # ArrayBuffer -> bytes
            except AttributeError:  # a Blob or other: not what binaryType asked for
                queue.put_nowait(TransportError("unexpected WebSocket message type"))
                return
            queue.put_nowait(payload)

        def on_error(event: Any) -> None:
            if not opened.done():
                opened.set_exception(TransportError(f"cannot open WebSocket {url}"))

        def on_close(event: Any) -> None:
            code = getattr(event, "code", 1006)
            reason = getattr(event, "reason", "") or ""
            if not opened.done():
                opened.set_exception(TransportError(
                    f"WebSocket handshake with {url} failed (close code {code}{': ' + reason if reason else ''})"))
            if code in (1000, 1001, 1005) or (holder and holder[0]._closing):
                queue.put_nowait(b"")
            else:
                queue.put_nowait(TransportError(
                    f"the WebSocket was closed abnormally (code {code}{': ' + reason if reason else ''})"))
            if holder:
                holder[0]._on_closed()

        try:
            ws = ws_ctor.new(url)
        except Exception as exc:  # SyntaxError for a bad URL, SecurityError...
            raise TransportError(f"cannot open WebSocket {url}: {exc}") from exc
        ws.binaryType = "arraybuffer"
        proxies = [create_proxy(on_open), create_proxy(on_message), create_proxy(on_error),
                   create_proxy(on_close)]
        for name, proxy in zip(("open", "message", "error", "close"), proxies):
            ws.addEventListener(name, proxy)
        transport = JsWebSocketTransport(ws, queue, proxies, secure=endpoint.scheme == "wss")
        holder.append(transport)
        try:
            await asyncio.wait_for(asyncio.shield(opened), endpoint.connect_timeout)
        except asyncio.TimeoutError:
            transport.close()
            raise TransportError(f"WebSocket handshake with {url} timed out") from None
        except BaseException:
            transport.close()
            raise
        return transport



# ---------------------------------------------------------------------------
# HTTP through the JS fetch
# ---------------------------------------------------------------------------


class FetchClient:
    """The ``RequestClient`` of :mod:`driver.transport.http` on the JS ``fetch``.

    Keep-alive and TLS are the JS runtime's business (Node's fetch pools
    connections; so do browsers and Workers).  ``Host`` and ``Content-Length``
    are set by fetch itself (they are forbidden request headers).
    """

    def __init__(self, base_url: str, timeout: float | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        #: requests performed (tests)
        self.requests = 0
        self._controllers: list[Any] = []

    async def request(self, method: str, path: str, headers: list[tuple[str, str]],
                      body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        try:
            import js  # type: ignore[import-not-found,unused-ignore]
            from pyodide.ffi import to_js  # type: ignore[import-not-found,unused-ignore]
        except ImportError as exc:
            raise TransportUnavailable("the JS fetch transport needs Pyodide") from exc
        hdrs = js.Headers.new()
        for k, v in headers:
            if k.lower() not in ("host", "content-length", "connection"):
                hdrs.append(k, v)
        init = js.Object.new()
        init.method = method
        init.headers = hdrs
        if body:
            init.body = to_js(body)
        controller = js.AbortController.new()
        init.signal = controller.signal
        self._controllers.append(controller)
        url = self.base_url + path
        try:
            coro = self._fetch(js.fetch, url, init)
            if self.timeout:
                resp_status, resp_headers, data = await asyncio.wait_for(coro, self.timeout)
            else:
                resp_status, resp_headers, data = await coro
        except asyncio.TimeoutError:
            controller.abort()
            raise TransportError(f"HTTP request to {url} timed out") from None
        except TransportError:
            raise
        except Exception as exc:  # JsException: network error, aborted...
            raise TransportError(f"fetch {url} failed: {exc}") from exc
        finally:
            self._controllers.remove(controller)
        self.requests += 1
        return resp_status, resp_headers, data

    @staticmethod
    async def _fetch(fetch: Any, url: str, init: Any) -> tuple[int, list[tuple[str, str]], bytes]:
        resp = await fetch(url, init)
        headers: list[tuple[str, str]] = []
        resp.headers.forEach(lambda value, key, *_: headers.append((str(key).lower(), str(value))))
        buf = await resp.arrayBuffer()
        return int(resp.status), headers, bytes(buf.to_bytes())

    def close(self) -> None:
        for c in list(self._controllers):
            try:
                c.abort()
            except Exception:
                pass


def _http_base_url(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    default = 443 if endpoint.scheme == "https" else 80
    port = "" if endpoint.port == default else f":{endpoint.port}"
    return f"{endpoint.scheme}://{host}{port}"


def _fetch_client(endpoint: Endpoint) -> FetchClient:
    # No per-request timeout: command_timeout (cancel) bounds queries, as over TCP.
    return FetchClient(_http_base_url(endpoint))


def FetchConnector() -> Connector:
    """An :class:`~driver.transport.http.HttpConnector` whose HTTP client is the JS fetch."""
    from .http import HttpConnector

    return HttpConnector(client_factory=_fetch_client)
