"""Events and errors of the sans-I/O client protocol (:mod:`driver.protocol.client`).

What :meth:`ClientProtocol.next_events <driver.protocol.client.ClientProtocol.next_events>`
returns, and the client-side exceptions a request can fail with.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .requests import Request

__all__ = ["Event", "RequestDone", "Notice", "Notification", "CopyInStarted", "ServerError",
           "ClientProtocolError", "UnsupportedAuthentication", "ConnectionLost", "RowDecodeError"]


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


class ClientProtocolError(Exception):
    """A client-side failure of the protocol (not an ErrorResponse)."""


class UnsupportedAuthentication(ClientProtocolError):
    """The server asked for an authentication method this client cannot do."""


class RowDecodeError(Exception):
    """A row decoder raised ``original`` (e.g. a custom codec's decoder).

    Set as the request's ``exception``; the rest of its rows are discarded and
    the request still ends at its ReadyForQuery: the connection stays usable.
    """

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


class ConnectionLost(ClientProtocolError):
    """The connection closed while the request was in flight."""


# ---------------------------------------------------------------------------
# Events
# ---------------------------------------------------------------------------


class Event:
    __slots__ = ()


class RequestDone(Event):
    __slots__ = ("request",)

    def __init__(self, request: Request) -> None:
        self.request = request

    def __repr__(self) -> str:
        return f"RequestDone({self.request!r})"


class Notice(Event):
    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    def __repr__(self) -> str:
        return f"Notice({self.fields!r})"


class Notification(Event):
    __slots__ = ("process_id", "channel", "payload")

    def __init__(self, process_id: int, channel: str, payload: str) -> None:
        self.process_id = process_id
        self.channel = channel
        self.payload = payload

    def __repr__(self) -> str:
        return f"Notification({self.process_id}, {self.channel!r}, {self.payload!r})"


class CopyInStarted(Event):
    __slots__ = ("request", "format", "column_formats")

    def __init__(self, request: Request, fmt: int, column_formats: tuple[int, ...]) -> None:
        self.request = request
        self.format = fmt
        self.column_formats = column_formats


class ServerError(Event):
    """An ErrorResponse outside any request (typically FATAL before a close)."""

    __slots__ = ("fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self.fields = fields

    def __repr__(self) -> str:
        return f"ServerError({self.fields!r})"
