"""Transactions and savepoints (``Connection.transaction``)."""

from __future__ import annotations

import enum
from types import TracebackType
from typing import TYPE_CHECKING

from . import exceptions as exc

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Transaction", "TransactionState"]

_ISOLATION = {
    "serializable": "SERIALIZABLE",
    "repeatable_read": "REPEATABLE READ",
    "read_committed": "READ COMMITTED",
    "read_uncommitted": "READ UNCOMMITTED",
}


class TransactionState(enum.Enum):
    NEW = 0
    STARTED = 1
    COMMITTED = 2
    ROLLEDBACK = 3
    FAILED = 4


class Transaction:
    """A transaction block, or a SAVEPOINT when another transaction is active."""

    __slots__ = ("_conn", "_isolation", "_readonly", "_deferrable", "_state", "_nested",
                 "_savepoint", "_managed")

    def __init__(self, connection: Connection, isolation: str | None, readonly: bool,
                 deferrable: bool) -> None:
        if isolation is not None and isolation not in _ISOLATION:
            raise ValueError(f"isolation is expected to be either of {sorted(_ISOLATION)}, "
                             f"got {isolation!r}")
        self._conn = connection
        self._isolation = isolation
        self._readonly = readonly
        self._deferrable = deferrable
        self._state = TransactionState.NEW
        self._nested = False
        self._savepoint: str | None = None
        self._managed = False

    def _check_state(self, op: str) -> None:
        if self._state is not TransactionState.STARTED:
            if self._state is TransactionState.NEW:
                raise exc.InterfaceError(f"cannot {op}; the transaction is not yet started")
            if self._state is TransactionState.COMMITTED:
                raise exc.InterfaceError(f"cannot {op}; the transaction is already committed")
            if self._state is TransactionState.ROLLEDBACK:
                raise exc.InterfaceError(f"cannot {op}; the transaction is already rolled back")
            raise exc.InterfaceError(f"cannot {op}; the transaction is in error state")

    async def __aenter__(self) -> Transaction:
        if self._managed:
            raise exc.InterfaceError("cannot enter context: already in an `async with` block")
        self._managed = True
        await self.start()
        return self

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        try:
            if et is not None:
                await self._rollback()
            else:
                await self._commit()
        finally:
            self._managed = False

    async def start(self) -> None:
        """Enter the transaction or savepoint block."""
        conn = self._conn
        if self._state is TransactionState.STARTED:
            raise exc.InterfaceError("cannot start; the transaction is already started")
        if self._state is not TransactionState.NEW:
            self._check_state("start")
        top: Transaction | None = conn._top_xact
        if top is None:
            if conn.is_in_transaction():
                raise exc.InterfaceError(
                    "cannot use Connection.transaction() in a manually started transaction")
            parts = ["BEGIN"]
            if self._isolation is not None:
                parts.append("ISOLATION LEVEL " + _ISOLATION[self._isolation])
            if self._readonly:
                parts.append("READ ONLY")
            if self._deferrable:
                parts.append("DEFERRABLE")
            query = " ".join(parts) + ";"
            conn._top_xact = self
        else:
            if self._isolation is not None and self._isolation != top._isolation:
                raise exc.InterfaceError(
                    f"nested transaction has a different isolation level: "
                    f"current {top._isolation!r} != outer {self._isolation!r}")
            if self._readonly != top._readonly and self._readonly:
                raise exc.InterfaceError("nested transaction has a different read-only mode")
            self._nested = True
            conn._savepoint_counter += 1
            self._savepoint = f"__wp_savepoint_{conn._savepoint_counter}__"
            query = f"SAVEPOINT {self._savepoint};"
        try:
            await conn.execute(query)
        except BaseException:
            self._state = TransactionState.FAILED
            if conn._top_xact is self:
                conn._top_xact = None
            raise
        self._state = TransactionState.STARTED

    async def commit(self) -> None:
        """Commit (or release the savepoint)."""
        if self._managed:
            raise exc.InterfaceError("cannot manually commit from within an `async with` block")
        await self._commit()

    async def rollback(self) -> None:
        """Roll back (to the savepoint)."""
        if self._managed:
            raise exc.InterfaceError("cannot manually rollback from within an `async with` block")
        await self._rollback()

    async def _commit(self) -> None:
        self._check_state("commit")
        conn = self._conn
        query = f"RELEASE SAVEPOINT {self._savepoint};" if self._nested else "COMMIT;"
        if conn._top_xact is self:
            conn._top_xact = None
        try:
            await conn.execute(query)
        except BaseException:
            self._state = TransactionState.FAILED
            raise
        self._state = TransactionState.COMMITTED

    async def _rollback(self) -> None:
        self._check_state("rollback")
        conn = self._conn
        query = f"ROLLBACK TO {self._savepoint};" if self._nested else "ROLLBACK;"
        if conn._top_xact is self:
            conn._top_xact = None
        try:
            await conn.execute(query)
        except BaseException:
            self._state = TransactionState.FAILED
            raise
        self._state = TransactionState.ROLLEDBACK

    def is_active(self) -> bool:
        return self._state is TransactionState.STARTED

    def __repr__(self) -> str:
        attrs: list[str] = [f"state:{self._state.name.lower()}"]
        if self._isolation is not None:
            attrs.append(self._isolation)
        if self._readonly:
            attrs.append("readonly")
        if self._deferrable:
            attrs.append("deferrable")
        return f"<driver.Transaction {' '.join(attrs)}>"


