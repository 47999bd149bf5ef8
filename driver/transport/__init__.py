"""Transports: how protocol bytes reach a server, chosen by DSN scheme."""

from __future__ import annotations

import sys
from typing import Callable

from .base import Connector, Endpoint, Transport, TransportError

__all__ = ["Connector", "Endpoint", "Transport", "TransportError", "get_connector",
           "register_connector", "TransportNotAvailable"]


class TransportNotAvailable(ValueError):
    """The DSN scheme names a transport that is not available."""


#: Pyodide (Cloudflare Python Workers, browsers): no raw sockets, JS WebSocket/fetch.
_PYODIDE = sys.platform == "emscripten"


def _tcp() -> Connector:
    if _PYODIDE:
        from .pyodide import TCP_UNAVAILABLE_MESSAGE

        raise TransportNotAvailable(TCP_UNAVAILABLE_MESSAGE)
    from .tcp import TcpConnector

    return TcpConnector()


def _websocket() -> Connector:
    if _PYODIDE:
        from .pyodide import JsWebSocketConnector  # the JS WebSocket via pyodide.ffi

        return JsWebSocketConnector()
    from .websocket import WebSocketConnector  # imports ``websockets`` only when used

    return WebSocketConnector()


def _http() -> Connector:
    if _PYODIDE:
        from . import pyodide

        fetch = getattr(pyodide, "FetchConnector", None)  # the JS fetch transport
        if fetch is None:
            raise TransportNotAvailable("the http(s):// transport is not available under Pyodide yet")
        return fetch()  # type: ignore[no-any-return]
    from .http import HttpConnector  # stdlib asyncio HTTP/1.1 client

    return HttpConnector()


_CONNECTORS: dict[str, Callable[[], Connector]] = {
    "postgresql": _tcp,
    "postgres": _tcp,
    "ws": _websocket,
    "wss": _websocket,
    "http": _http,
    "https": _http,
}

_LATER: tuple[str, ...] = ()


def register_connector(scheme: str, factory: Callable[[], Connector]) -> None:
    """Make ``scheme://`` DSNs use connectors built by ``factory``."""
    _CONNECTORS[scheme.lower()] = factory


def get_connector(scheme: str) -> Connector:
    """The connector for a DSN scheme (``postgresql``/``postgres`` = TCP)."""
    factory = _CONNECTORS.get((scheme or "postgresql").lower())
    if factory is None:
        if scheme.lower() in _LATER:
            raise TransportNotAvailable(f"the {scheme}:// transport is not available yet")
        raise TransportNotAvailable(f"unsupported DSN scheme {scheme!r}")
    return factory()
