"""asyncpg-compatible exception hierarchy.

Server errors are :class:`PostgresError` subclasses chosen by SQLSTATE (one
class per code, generated from PostgreSQL's errcodes.txt into
``_generated.py``; codes subclass the class of their 2-character SQLSTATE
class). Build one from an ErrorResponse with ``PostgresError.new(fields)``.
Class names match asyncpg's, so ``except UniqueViolationError`` ports as is.
"""

from __future__ import annotations

from ._base import *  # noqa: F401,F403
from ._base import __all__ as _base_all
from ._generated import *  # noqa: F401,F403
from ._generated import FeatureNotSupportedError
from ._generated import __all__ as _generated_all


class InvalidCachedStatementError(FeatureNotSupportedError):
    """A cached prepared statement became invalid after a schema or
    configuration change (raised instead of the server's 0A000 error
    coming from RevalidateCachedQuery)."""


__all__ = ("InvalidCachedStatementError",) + _base_all + _generated_all
