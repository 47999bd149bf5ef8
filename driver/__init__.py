"""Wirepool's pure-Python, asyncpg-compatible PostgreSQL driver.

Everything loads on first use (PEP 562 ``__getattr__``): ``import driver``
is cheap, ``driver.connect`` imports the connection machinery, exception
classes and value types load when first named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from . import exceptions as exceptions
    from . import types as types
    from .connection import Connection as Connection
    from .connection import ConnectionSettings as ConnectionSettings
    from .connection import ServerVersion as ServerVersion
    from .connection import connect as connect
    from .exceptions import *  # noqa: F401,F403
    from .listeners import LoggedQuery as LoggedQuery
    from .pool import Pool as Pool
    from .pool import create_pool as create_pool
    from .prepared import PreparedStatement as PreparedStatement
    from .record import Record as Record
    from .types import BitString as BitString
    from .types import Box as Box
    from .types import Circle as Circle
    from .types import Line as Line
    from .types import LineSegment as LineSegment
    from .types import Path as Path
    from .types import Point as Point
    from .types import Polygon as Polygon
    from .types import Range as Range

# asyncpg's value types, importable from the top level (driver.types, loaded on first use)
_TYPES_EXPORTS = ("Range", "BitString", "Point", "Box", "Line", "LineSegment", "Path",
                  "Polygon", "Circle")

#: public name -> module it lives in (imported on first access)
_LAZY: dict[str, str] = {
    "connect": "connection", "Connection": "connection", "ServerVersion": "connection",
    "ConnectionSettings": "connection", "create_pool": "pool", "Pool": "pool",
    "Record": "record", "PreparedStatement": "prepared", "LoggedQuery": "listeners",
    **{name: "types" for name in _TYPES_EXPORTS},
}
_SUBMODULES = frozenset({"exceptions", "types", "codecs", "copy", "listeners", "pool",
                         "prepared", "record", "transaction", "cursor", "connection", "dsn",
                         "protocol", "transport"})
_BASE_ALL = ("connect", "Connection", "ServerVersion", "ConnectionSettings", "exceptions")


def __getattr__(name: str) -> Any:
    import importlib

    if name == "__all__":
        from . import exceptions

        value: Any = _BASE_ALL + tuple(exceptions.__all__)
    elif name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"{__name__}.{name}")
    elif not name.startswith("_"):
        from . import exceptions

        try:
            value = getattr(exceptions, name)
        except AttributeError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
