"""gateway.http_listener: the route table's lookup (end to end, through sockets: test_http.py)."""

from __future__ import annotations

from typing import Any

from gateway.http_listener import HttpListener
from gateway.http_messages import HttpRequest, HttpResponse


async def _ok(req: HttpRequest) -> HttpResponse:
    return HttpResponse(200, b"ok\n")


async def _ws(stream: Any) -> None:
    return None


async def _any_ws(stream: Any) -> None:
    return None


def _listener() -> HttpListener:
    listener = HttpListener("127.0.0.1", 0)
    listener.add_route("get", "/healthz", _ok)
    listener.add_route("POST", "/sql", _ok)
    listener.add_websocket("/v2", _ws)
    return listener


def test_websocket_upgrades_find_their_handler() -> None:
    listener = _listener()
    assert listener.stream_for("GET", "/v2", "WebSocket") is _ws
    assert listener.stream_for("GET", "/v2", "h2c") is None          # not a WebSocket upgrade
    assert listener.stream_for("POST", "/v2", "websocket") is None   # upgrades are GETs
    assert listener.stream_for("GET", "/other", "websocket") is None  # no default handler
    listener.ws_default = _any_ws
    assert listener.stream_for("GET", "/other", "websocket") is _any_ws
    assert listener.stream_for("GET", "/healthz", "websocket") is None  # an HTTP route stays HTTP


def test_handlers_head_and_the_answers_without_a_route() -> None:
    listener = _listener()
    assert listener.handler_for("GET", "/healthz") is _ok
    assert listener.handler_for("HEAD", "/healthz") is _ok  # HEAD: GET's handler
    assert listener.handler_for("GET", "/sql") is None
    r = listener.no_route("GET", "/sql")
    assert r.status == 405 and ("allow", "POST") in r.headers
    r = listener.no_route("GET", "/v2")
    assert r.status == 426 and ("upgrade", "websocket") in r.headers
    r = listener.no_route("POST", "/v2")
    assert r.status == 405 and ("allow", "GET") in r.headers
    assert listener.no_route("GET", "/nowhere").status == 404
