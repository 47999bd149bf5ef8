"""Wirepool's pure-Python, asyncpg-compatible PostgreSQL driver."""

from __future__ import annotations

from . import exceptions
from .connection import Connection, ConnectionSettings, ServerVersion, connect
from .exceptions import *  # noqa: F401,F403
from .exceptions import __all__ as _exc_all

__all__ = ("connect", "Connection", "ServerVersion", "ConnectionSettings",
           "exceptions") + tuple(_exc_all)


# asyncpg's value types, importable from the top level (driver.types, loaded on first use)
_TYPES_EXPORTS = ("Range", "BitString", "Point", "Box", "Line", "LineSegment", "Path",
                  "Polygon", "Circle")


def __getattr__(name: str) -> object:
    # Modules written alongside this one; imported lazily so the package
    # imports even before they exist.
    import importlib

    if name in ("create_pool", "Pool"):
        return getattr(importlib.import_module("driver.pool"), name)
    if name == "Record":
        return importlib.import_module("driver.record").Record
    if name in _TYPES_EXPORTS:
        return getattr(importlib.import_module("driver.types"), name)
    if name == "types":
        return importlib.import_module("driver.types")
    raise AttributeError(f"module 'driver' has no attribute {name!r}")
