"""Schema changes seen by the gateway (sans-I/O): which CommandComplete tags
are DDL that can make a cached server-side statement stale.

The gateway parses headers, not rows: a DDL is recognised from its
CommandComplete tag alone (``CREATE TYPE``, ``DROP TABLE``, ``ALTER DOMAIN``...).
Each one bumps the upstream database's *schema epoch* in the statement
registry (:meth:`gateway.prepared.StatementRegistry.bump`); see
``docs/prepared-statements.md`` for what that does and what DDL run outside
the gateway costs.

Not counted: DDL that cannot change what a prepared statement's parameters
or results mean (indexes, roles, databases, tablespaces, publications,
subscriptions, statistics, ``ALTER SYSTEM``), and ``CREATE TABLE AS`` /
``SELECT INTO`` (their tag is ``SELECT n``).
"""

from __future__ import annotations

__all__ = ["DDL_FIRST", "database_key", "is_ddl_tag"]

#: first byte of every tag :func:`is_ddl_tag` can accept ('A', 'C', 'D', 'I'),
#: so the hot path tests one byte before calling it
DDL_FIRST = frozenset(b"ACDI")

_VERBS = (b"CREATE ", b"ALTER ", b"DROP ", b"IMPORT FOREIGN SCHEMA")
_HARMLESS = (b"INDEX", b"ROLE", b"USER", b"GROUP", b"DATABASE", b"TABLESPACE", b"SYSTEM",
             b"PUBLICATION", b"SUBSCRIPTION", b"STATISTICS", b"EVENT TRIGGER", b"DEFAULT PRIVILEGES")


def is_ddl_tag(chunk: bytes, s: int, e: int) -> bool:
    """Is the CommandComplete body ``chunk[s:e]`` (tag + NUL) a schema change?"""
    for verb in _VERBS:
        if chunk.startswith(verb, s, e):
            rest = s + len(verb)
            for obj in _HARMLESS:
                if chunk.startswith(obj, rest, e):
                    return False
            return True
    return False


def database_key(db: object) -> str:
    """The upstream database a pool's config entry points at (schema epochs are
    per upstream database, shared by every pool and user on it)."""
    return f"{getattr(db, 'host', '')}:{getattr(db, 'port', '')}/{getattr(db, 'dbname', '')}"
