"""Base classes of the exception hierarchy (hand-written).

Server messages (ErrorResponse / NoticeResponse) become instances of
:class:`PostgresMessage` subclasses chosen by SQLSTATE; every subclass that
declares a ``sqlstate`` class attribute is registered automatically.
Client-side errors mirror asyncpg's (``InterfaceError`` & co).
"""

from __future__ import annotations

from typing import Any, Mapping, TypeVar

__all__ = (
    "FIELD_NAMES",
    "PostgresMessage",
    "PostgresError",
    "FatalPostgresError",
    "UnknownPostgresError",
    "PostgresLogMessage",
    "InterfaceMessage",
    "InterfaceError",
    "InterfaceWarning",
    "ClientConfigurationError",
    "UnsupportedClientFeatureError",
    "UnsupportedServerFeatureError",
    "InternalClientError",
    "ProtocolError",
    "TargetServerAttributeNotMatched",
    "OutdatedSchemaCacheError",
    "exception_for_sqlstate",
)

#: ErrorResponse/NoticeResponse field code -> attribute name.
FIELD_NAMES: dict[str, str] = {
    "S": "severity",
    "V": "severity_en",
    "C": "sqlstate",
    "M": "message",
    "D": "detail",
    "H": "hint",
    "P": "position",
    "p": "internal_position",
    "q": "internal_query",
    "W": "context",
    "s": "schema_name",
    "t": "table_name",
    "c": "column_name",
    "d": "data_type_name",
    "n": "constraint_name",
    "F": "server_source_filename",
    "L": "server_source_line",
    "R": "server_source_function",
}

_REGISTRY: dict[str, type[PostgresMessage]] = {}

_E = TypeVar("_E", bound="InterfaceError")


_loaded = False


def load_all() -> None:
    """Import the generated classes (they register themselves in ``_REGISTRY``)."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import _cached, _generated  # noqa: F401


def exception_for_sqlstate(code: str | None) -> type[PostgresMessage]:
    """The most specific class for SQLSTATE ``code``.

    Exact code, else the class of its 2-character prefix (``XX000``), else
    :class:`UnknownPostgresError`. Warning codes (classes 01, 02) map to
    :class:`PostgresWarning` subclasses, which are not ``PostgresError``.
    """
    if not _loaded:
        load_all()
    if code:
        cls = _REGISTRY.get(code)
        if cls is None and len(code) == 5:
            cls = _REGISTRY.get(code[:2] + "000")
        if cls is not None:
            return cls
    return UnknownPostgresError


class PostgresMessage:
    """A message from the server: the fields of an ErrorResponse/NoticeResponse."""

    # Values are kept as the server sent them (strings), like asyncpg.
    sqlstate: str | None = None
    severity: str | None = None
    severity_en: str | None = None
    message: str | None = None
    detail: str | None = None
    hint: str | None = None
    position: str | None = None
    internal_position: str | None = None
    internal_query: str | None = None
    context: str | None = None
    schema_name: str | None = None
    table_name: str | None = None
    column_name: str | None = None
    data_type_name: str | None = None
    constraint_name: str | None = None
    server_source_filename: str | None = None
    server_source_line: str | None = None
    server_source_function: str | None = None
    #: the query that caused the error, when the client knows it
    query: str | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        code = cls.__dict__.get("sqlstate")
        if code is not None:
            existing = _REGISTRY.get(code)
            if existing is not None:
                raise TypeError(
                    f"{cls.__name__}: SQLSTATE {code} already belongs to {existing.__name__}")
            _REGISTRY[code] = cls

    def _set_fields(self, fields: Mapping[str, str], query: str | None) -> None:
        for key, value in fields.items():
            name = FIELD_NAMES.get(key)
            if name is not None:
                setattr(self, name, value)
        if query is not None:
            self.query = query

    def as_dict(self) -> dict[str, str]:
        """The fields that are set, by attribute name (``query`` excluded)."""
        out: dict[str, str] = {}
        for name in FIELD_NAMES.values():
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


def _with_detail(msg: str, detail: str | None, hint: str | None) -> str:
    if detail:
        msg += f"\nDETAIL:  {detail}"
    if hint:
        msg += f"\nHINT:  {hint}"
    return msg


class PostgresError(PostgresMessage, Exception):
    """Base class for all errors reported by the server."""

    def __init__(self, *args: object) -> None:
        Exception.__init__(self, *args)
        if args and isinstance(args[0], str):
            self.message = args[0]

    def __str__(self) -> str:
        if self.message is not None:
            msg = self.message
        else:
            msg = str(self.args[0]) if self.args else ""
        return _with_detail(msg, self.detail, self.hint)

    @classmethod
    def new(cls, fields: Mapping[str, str], query: str | None = None) -> PostgresError:
        """Build the most specific error for an ErrorResponse's ``fields``
        (single-letter field code -> value)."""
        exc_cls = exception_for_sqlstate(fields.get("C"))
        if not issubclass(exc_cls, PostgresError):  # a warning code in an error
            exc_cls = UnknownPostgresError
        message = fields.get("M", "")
        if fields.get("R") == "RevalidateCachedQuery" and exc_cls.__name__ == \
                "FeatureNotSupportedError":
            # "cached plan must not change result type" (the message may be
            # translated): asyncpg's InvalidCachedStatementError and message.
            from ._cached import InvalidCachedStatementError

            exc_cls = InvalidCachedStatementError
            message = ("cached statement plan is invalid due to a database schema "
                       "or configuration change")
        exc = exc_cls(message)
        exc._set_fields(fields, query)
        return exc


class FatalPostgresError(PostgresError):
    """A fatal error that should result in server disconnection."""


class UnknownPostgresError(FatalPostgresError):
    """An error with an unknown SQLSTATE code."""


class PostgresLogMessage(PostgresMessage):
    """A non-error server message (NoticeResponse); warnings subclass it."""

    def __init__(self, message: str | None = None) -> None:
        if isinstance(self, BaseException):
            BaseException.__init__(self, message)
        self.message = message

    def __str__(self) -> str:
        return f"{type(self).__name__}: {self.message}"

    @classmethod
    def new(cls, fields: Mapping[str, str], query: str | None = None) -> PostgresLogMessage:
        """Build a notice/warning object for a NoticeResponse's ``fields``."""
        code = fields.get("C")
        load_all()
        msg_cls: type[PostgresMessage] | None = _REGISTRY.get(code) if code else None
        if msg_cls is None or not issubclass(msg_cls, PostgresLogMessage):
            msg_cls = PostgresLogMessage
            severity = fields.get("V") or fields.get("S") or ""
            if severity.upper() == "WARNING":
                msg_cls = _REGISTRY["01000"]  # PostgresWarning
        assert issubclass(msg_cls, PostgresLogMessage)
        msg = msg_cls(fields.get("M"))
        msg._set_fields(fields, query)
        return msg


class InterfaceMessage:
    """Mixin for client-side messages carrying optional detail and hint."""

    args: tuple[Any, ...]

    def __init__(self, *, detail: str | None = None, hint: str | None = None) -> None:
        self.detail = detail
        self.hint = hint

    def __str__(self) -> str:
        return _with_detail(str(self.args[0]) if self.args else "", self.detail, self.hint)


class InterfaceError(InterfaceMessage, Exception):
    """An error caused by improper use of the driver API."""

    def __init__(self, msg: str, *, detail: str | None = None, hint: str | None = None) -> None:
        InterfaceMessage.__init__(self, detail=detail, hint=hint)
        Exception.__init__(self, msg)

    def with_msg(self: _E, msg: str) -> _E:
        return type(self)(msg, detail=self.detail, hint=self.hint).with_traceback(
            self.__traceback__)


class ClientConfigurationError(InterfaceError, ValueError):
    """An error caused by improper client configuration (DSN, options...)."""


class UnsupportedClientFeatureError(InterfaceError):
    """Requested feature is unsupported by the driver."""


class UnsupportedServerFeatureError(InterfaceError):
    """Requested feature is unsupported by the PostgreSQL server."""


class InterfaceWarning(InterfaceMessage, UserWarning):
    """A warning caused by improper use of the driver API."""

    def __init__(self, msg: str, *, detail: str | None = None, hint: str | None = None) -> None:
        InterfaceMessage.__init__(self, detail=detail, hint=hint)
        UserWarning.__init__(self, msg)


class InternalClientError(Exception):
    """All unexpected client-side errors not classified otherwise."""


class ProtocolError(InternalClientError):
    """Unexpected condition while handling PostgreSQL protocol input."""


class TargetServerAttributeNotMatched(InternalClientError):
    """No host satisfies the requested target_session_attrs."""


class OutdatedSchemaCacheError(InternalClientError):
    """A value decoding error caused by a schema change before rows were fetched."""

    def __init__(self, msg: str, *, schema: str | None = None, data_type: str | None = None,
                 position: str | None = None) -> None:
        super().__init__(msg)
        self.schema_name = schema
        self.data_type_name = data_type
        self.position = position
