"""asyncpg's InvalidCachedStatementError (not generated from errcodes.txt)."""

from __future__ import annotations

from ._generated import FeatureNotSupportedError

__all__ = ("InvalidCachedStatementError",)


class InvalidCachedStatementError(FeatureNotSupportedError):
    """A cached prepared statement became invalid after a schema or
    configuration change (raised instead of the server's 0A000 error
    coming from RevalidateCachedQuery)."""

    def __str__(self) -> str:
        # as asyncpg: the client's wording; ``message`` keeps the server's
        from ._base import _with_detail

        return _with_detail(str(self.args[0]) if self.args else "", self.detail, self.hint)
