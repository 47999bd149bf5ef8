"""Type introspection: codecs for the OIDs the builtin tables don't know.

Enums, domains, composites (decoded to ``Record``), ranges, multiranges and
arrays of any of these, in both directions.  One query fetches a batch of
unknown types *and everything they depend on* (element, base, sub- and
attribute types, recursively); the rows are cached on the connection
(``Connection._type_rows``) until :meth:`Connection.reload_schema_state`.
Loaded on first use: a connection that only sees builtin types never imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, NamedTuple

from . import codecs
from .protocol import client as pc

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["TypeRow", "introspect", "register_rows", "system_query"]


class TypeRow(NamedTuple):
    oid: int
    schema: str
    name: str
    kind: str          # pg_type.typtype: b c d e m p r
    elem: int          # arrays: the element type
    delim: str         # arrays: the element delimiter (";" for box)
    base: int          # domains: the base type
    subtype: int       # ranges and multiranges: the range's subtype
    range_oid: int     # multiranges: their range type
    array_oid: int     # the type's array type (0: none)
    att_names: list[str]
    att_oids: list[int]


def _intro_sql(oids: Iterable[int], multiranges: bool) -> str:
    ids = ",".join(str(int(o)) for o in oids)
    multi_dep = ("UNION ALL SELECT r.rngtypid FROM pg_catalog.pg_range r "
                 "WHERE r.rngmultitypid = t.oid" if multiranges else "")
    multi_cols = ("COALESCE(r.rngsubtype, mr.rngsubtype, 0), COALESCE(mr.rngtypid, 0)"
                  if multiranges else "COALESCE(r.rngsubtype, 0), 0::oid")
    multi_join = ("LEFT JOIN pg_catalog.pg_range mr ON mr.rngmultitypid = t.oid"
                  if multiranges else "")
    return f"""
WITH RECURSIVE deps(oid) AS (
    SELECT unnest(ARRAY[{ids}]::pg_catalog.oid[])
  UNION
    SELECT d.dep FROM deps JOIN pg_catalog.pg_type t ON t.oid = deps.oid
    CROSS JOIN LATERAL (
        SELECT t.typelem AS dep WHERE t.typelem <> 0 AND t.typlen = -1
        UNION ALL SELECT t.typbasetype WHERE t.typbasetype <> 0
        UNION ALL SELECT r.rngsubtype FROM pg_catalog.pg_range r WHERE r.rngtypid = t.oid
        {multi_dep}
        UNION ALL SELECT a.atttypid FROM pg_catalog.pg_attribute a
            WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0
              AND NOT a.attisdropped
    ) d
)
SELECT t.oid, n.nspname::text, t.typname::text, t.typtype::text,
       CASE WHEN t.typlen = -1 THEN t.typelem ELSE 0::oid END, t.typdelim::text,
       t.typbasetype, {multi_cols}, t.typarray,
       COALESCE(ARRAY(SELECT a.attname::text FROM pg_catalog.pg_attribute a
                      WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0
                        AND NOT a.attisdropped ORDER BY a.attnum), '{{}}'),
       COALESCE(ARRAY(SELECT a.atttypid FROM pg_catalog.pg_attribute a
                      WHERE t.typrelid <> 0 AND a.attrelid = t.typrelid AND a.attnum > 0
                        AND NOT a.attisdropped ORDER BY a.attnum), '{{}}')
FROM deps JOIN pg_catalog.pg_type t ON t.oid = deps.oid
JOIN pg_catalog.pg_namespace n ON n.oid = t.typnamespace
LEFT JOIN pg_catalog.pg_range r ON r.rngtypid = t.oid
{multi_join}
"""


async def system_query(conn: Connection, sql: str, deadline: float | None) -> list[Any]:
    """Rows (tuples, builtin text codecs, no custom codec) of an internal query.

    Runs inside the operation that needs it (the connection is already busy).
    """
    req = pc.SimpleQuery(sql, keep_rows=True)
    await conn._request(req, deadline, sql)
    rows: list[Any] = []
    for res in req.results:
        rows.extend(res.rows)
    return rows


async def introspect(conn: Connection, oids: Iterable[int], deadline: float | None) -> None:
    """Fetch the types ``oids`` (and their dependencies), register their codecs."""
    wanted = sorted({int(o) for o in oids if o and o not in conn._type_rows})
    if not wanted:
        return
    version = conn.get_server_version()
    multiranges = version.major == 0 or version.major >= 14  # 0: not known yet
    rows = await system_query(conn, _intro_sql(wanted, multiranges), deadline)
    for r in rows:
        row = TypeRow(*r)
        conn._type_rows[row.oid] = row
    register_rows(conn._own_types(), conn._type_rows, conn._type_overrides)


def register_rows(reg: codecs.TypeRegistry, rows: dict[int, TypeRow],
                  overrides: dict[int, Any]) -> None:
    """Register every type of ``rows`` not in ``reg`` yet, dependencies first."""
    from .typecodecs import resolve_override

    def ensure(oid: int, stack: tuple[int, ...]) -> bool:
        if oid in reg:
            return True
        row = rows.get(oid)
        if row is None or oid in stack:
            return False
        stack = stack + (oid,)
        kind = row.kind
        custom = overrides.get(oid)
        if custom is not None:
            for a in row.att_oids:
                ensure(a, stack)
            resolve_override(reg, custom, row)
        elif row.elem:
            if not ensure(row.elem, stack):
                reg.register_text_type(row.elem, "unknown", strict=False)
            reg.register_array(oid, row.elem, delim=row.delim or ",")
        elif kind == "d":
            if not ensure(row.base, stack):
                return False
            reg.register_alias(oid, row.base, row.name)
        elif kind == "e":
            reg.register_enum(oid, row.name)
        elif kind == "r":
            if not ensure(row.subtype, stack):
                return False
            reg.register_range(oid, row.subtype, row.name)
        elif kind == "m":
            if not ensure(row.range_oid, stack):
                return False
            reg.register_multirange(oid, row.range_oid, row.name)
        elif kind == "c":
            for a in row.att_oids:
                if not ensure(a, stack):
                    reg.register_text_type(a, "unknown", strict=False)
            reg.register_composite(oid, row.name, row.att_names, row.att_oids)
        else:  # base types of extensions (citext, hstore...), pseudo-types: str in text
            reg.register_text_type(oid, row.name, strict=False)
        return True

    for oid in list(rows):
        ensure(oid, ())
