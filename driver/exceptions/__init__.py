"""asyncpg-compatible exception hierarchy.

Server errors are :class:`PostgresError` subclasses chosen by SQLSTATE (one
class per code, generated from PostgreSQL's errcodes.txt into
``_generated.py``; codes subclass the class of their 2-character SQLSTATE
class). Build one from an ErrorResponse with ``PostgresError.new(fields)``.
Class names match asyncpg's, so ``except UniqueViolationError`` ports as is.

The ~250 generated classes load on first use (PEP 562 ``__getattr__``): by
name (``exceptions.UniqueViolationError``), by the first error built from
an ErrorResponse, or by a star import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._base import *  # noqa: F401,F403
from ._base import __all__ as _base_all

if TYPE_CHECKING:
    from ._cached import InvalidCachedStatementError as InvalidCachedStatementError
    from ._generated import *  # noqa: F401,F403


def __getattr__(name: str) -> Any:
    if name == "__all__":
        from ._generated import __all__ as generated

        value: Any = ("InvalidCachedStatementError",) + _base_all + generated
    elif name == "InvalidCachedStatementError":
        from ._cached import InvalidCachedStatementError as value
    elif not name.startswith("_"):
        from . import _generated

        try:
            value = getattr(_generated, name)
        except AttributeError:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value
