"""SQLSTATE exception hierarchy: mapping, fields, hierarchy, generator, asyncpg parity."""

from __future__ import annotations

import inspect
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import asyncpg
import asyncpg.exceptions as apg_exc
import pytest

import driver.exceptions as exc
from driver.exceptions import (
    FIELD_NAMES,
    PostgresError,
    PostgresLogMessage,
    PostgresWarning,
    UnknownPostgresError,
    exception_for_sqlstate,
)
from driver.exceptions._base import _REGISTRY
from tests.pgcluster import PgCluster

ROOT = Path(__file__).resolve().parents[2]

ALL_FIELDS = {
    "S": "ERROR", "V": "ERROR", "C": "23505", "M": "duplicate key value",
    "D": "Key (id)=(1) already exists.", "H": "try another id", "P": "12", "p": "3",
    "q": "SELECT 1", "W": "PL/pgSQL function f() line 3", "s": "public", "t": "tbl",
    "c": "id", "d": "int4", "n": "tbl_pkey", "F": "nbtinsert.c", "L": "664",
    "R": "_bt_check_unique",
}


def _asyncpg_classes() -> dict[str, type]:
    return {c.__dict__["sqlstate"]: c for c in vars(apg_exc).values()
            if inspect.isclass(c) and "sqlstate" in c.__dict__}


# ----------------------------------------------------------------- mapping
@pytest.mark.parametrize("code,name", [
    ("23505", "UniqueViolationError"), ("42P01", "UndefinedTableError"),
    ("42601", "PostgresSyntaxError"), ("40001", "SerializationError"),
    ("57014", "QueryCanceledError"), ("28P01", "InvalidPasswordError"),
    ("3D000", "InvalidCatalogNameError"), ("53300", "TooManyConnectionsError"),
    ("08P01", "ProtocolViolationError"), ("23000", "IntegrityConstraintViolationError"),
    ("22000", "DataError"), ("08003", "ConnectionDoesNotExistError"),
    ("XX000", "InternalServerError"), ("01000", "PostgresWarning"), ("02000", "NoData"),
    ("25P04", "TransactionTimeoutError"),
])
def test_exact_mapping(code: str, name: str) -> None:
    cls = exception_for_sqlstate(code)
    assert cls.__name__ == name
    assert cls is getattr(exc, name)
    assert cls.sqlstate == code


def test_fallback_mapping() -> None:
    assert exception_for_sqlstate("23P99") is exc.IntegrityConstraintViolationError
    assert exception_for_sqlstate("42ZZZ") is exc.SyntaxOrAccessError
    assert exception_for_sqlstate("ZZ001") is UnknownPostgresError
    assert exception_for_sqlstate("") is UnknownPostgresError
    assert exception_for_sqlstate(None) is UnknownPostgresError
    assert issubclass(UnknownPostgresError, exc.FatalPostgresError)


# ------------------------------------------------------------------ fields
def test_new_sets_every_field() -> None:
    e = PostgresError.new(ALL_FIELDS, query="INSERT ...")
    assert type(e) is exc.UniqueViolationError
    for code, attr in FIELD_NAMES.items():
        assert getattr(e, attr) == ALL_FIELDS[code], attr
    assert e.context == ALL_FIELDS["W"] and e.constraint_name == "tbl_pkey"
    assert e.query == "INSERT ..."
    assert e.as_dict() == {FIELD_NAMES[k]: v for k, v in ALL_FIELDS.items()}
    assert str(e) == ("duplicate key value\nDETAIL:  Key (id)=(1) already exists."
                      "\nHINT:  try another id")
    assert e.args == ("duplicate key value",)


def test_new_minimal_and_unknown_fields() -> None:
    e = PostgresError.new({"C": "42P01", "M": "no table", "Z": "ignored"})
    assert type(e) is exc.UndefinedTableError
    assert str(e) == "no table"
    assert e.as_dict() == {"sqlstate": "42P01", "message": "no table"}
    assert e.detail is None and e.hint is None and e.query is None
    u = PostgresError.new({"M": "who knows"})
    assert type(u) is UnknownPostgresError and u.sqlstate is None
    # a warning code inside an ErrorResponse still yields an exception
    w = PostgresError.new({"C": "01000", "M": "odd"})
    assert isinstance(w, PostgresError) and type(w) is UnknownPostgresError


def test_subclass_new_still_picks_most_specific() -> None:
    e = exc.IntegrityConstraintViolationError.new({"C": "23503", "M": "fk"})
    assert type(e) is exc.ForeignKeyViolationError


def test_log_messages() -> None:
    n = PostgresLogMessage.new({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "hello"})
    assert type(n) is PostgresLogMessage and not isinstance(n, Exception)
    assert n.message == "hello" and str(n) == "PostgresLogMessage: hello"
    w = PostgresLogMessage.new({"S": "WARNING", "V": "WARNING", "C": "01P01", "M": "old"})
    assert type(w) is exc.DeprecatedFeature and isinstance(w, PostgresWarning)
    assert isinstance(w, Warning) and not isinstance(w, PostgresError)
    w2 = PostgresLogMessage.new({"S": "WARNING", "V": "WARNING", "C": "XX123", "M": "w"})
    assert type(w2) is PostgresWarning
    assert w2.as_dict()["sqlstate"] == "XX123"


def test_pickle_roundtrip() -> None:
    e = PostgresError.new(ALL_FIELDS)
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is type(e) and e2.as_dict() == e.as_dict() and str(e2) == str(e)


# --------------------------------------------------------------- hierarchy
def test_hierarchy() -> None:
    assert len(_REGISTRY) >= 262
    for code, cls in _REGISTRY.items():
        class_cls = _REGISTRY.get(code[:2] + "000")
        if code in ("01000",):
            assert cls.__bases__ == (PostgresLogMessage, Warning)
        elif class_cls is not None and class_cls is not cls:
            assert cls.__bases__ == (class_cls,), code
        if code[:2] in ("01", "02"):
            assert issubclass(cls, PostgresWarning) and not issubclass(cls, PostgresError), code
            assert not cls.__name__.endswith("Error")
        else:
            assert issubclass(cls, PostgresError), code
            assert cls.__name__.endswith("Error"), code
        assert getattr(exc, cls.__name__) is cls
        assert cls.__name__ in exc.__all__


def test_duplicate_sqlstate_rejected() -> None:
    with pytest.raises(TypeError, match="23505"):
        class Dup(PostgresError):
            sqlstate = "23505"
    assert _REGISTRY["23505"] is exc.UniqueViolationError


def test_client_errors() -> None:
    e = exc.InterfaceError("bad use", detail="d", hint="h")
    assert str(e) == "bad use\nDETAIL:  d\nHINT:  h"
    assert type(e.with_msg("other")) is exc.InterfaceError
    assert str(e.with_msg("other")).startswith("other\nDETAIL:  d")
    assert issubclass(exc.ClientConfigurationError, (exc.InterfaceError, ValueError))
    assert issubclass(exc.InterfaceWarning, UserWarning)
    assert str(exc.InterfaceWarning("w", hint="x")) == "w\nHINT:  x"
    assert issubclass(exc.ProtocolError, exc.InternalClientError)
    assert issubclass(exc.OutdatedSchemaCacheError, exc.InternalClientError)
    o = exc.OutdatedSchemaCacheError("gone", schema="s", data_type="t", position="1")
    assert (o.schema_name, o.data_type_name, o.position) == ("s", "t", "1")
    d = exc.DataError("invalid input for query argument $1")  # client-raised, like asyncpg
    assert isinstance(d, PostgresError) and d.message == str(d)
    c = exc.ConnectionDoesNotExistError("connection was closed")
    assert isinstance(c, exc.PostgresConnectionError) and str(c) == "connection was closed"
    assert issubclass(exc.InvalidCachedStatementError, exc.FeatureNotSupportedError)


def test_imports_only_stdlib() -> None:
    code = ("import sys; before = set(sys.modules); import driver.exceptions, driver, driver.pool, "
            "driver.record, driver.transport.tcp, driver.transport.http, driver.transport.websocket; "
            "driver.Record, driver.create_pool; "
            "names = {m.split('.')[0] for m in set(sys.modules) - before}; "
            "print(sorted(n for n in names if n not in sys.stdlib_module_names))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    assert out == "['driver']"


def test_connect_path_loads_no_exception_table_nor_codecs() -> None:
    """``driver.connect`` (cold start at the edge) imports the connection
    machinery only: the ~250 generated exception classes, the codecs, the DSN
    parser and the multi-host login code's exceptions load on first use."""
    code = ("import sys; import driver; driver.connect; "
            "print(sorted(m for m in sys.modules if m.startswith('driver.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    for lazy in ("driver.exceptions._generated", "driver.codecs", "driver.dsn", "driver.copy",
                 "driver.batch", "driver.introspection", "driver.protocol.backend_encoders",
                 "driver.protocol.frontend_messages"):
        assert f"'{lazy}'" not in out, out
    assert "'driver.login'" in out and "'driver.connection'" in out, out


# --------------------------------------------------------------- generator
def test_generated_file_up_to_date(tmp_path: Path) -> None:
    out = tmp_path / "gen.py"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_errcodes.py"),
                    "--output", str(out)], check=True)
    committed = (ROOT / "driver" / "exceptions" / "_generated.py").read_text()
    assert out.read_text() == committed
    assert committed.startswith("# Generated by scripts/gen_errcodes.py")
    assert "do not edit" in committed.splitlines()[0]


# ----------------------------------------------------------- asyncpg parity
def test_name_parity_with_asyncpg() -> None:
    theirs = _asyncpg_classes()
    assert len(theirs) > 250
    mismatches = []
    for code, acls in sorted(theirs.items()):
        mine = _REGISTRY.get(code)
        if mine is None or mine.__name__ != acls.__name__:
            mismatches.append((code, acls.__name__, mine and mine.__name__))
            continue
        # same parent class name (asyncpg's roots live in its _base module)
        assert mine.__bases__[0].__name__ == acls.__bases__[0].__name__, code
    assert mismatches == []


def test_asyncpg_extras_exist() -> None:
    for name in ("InvalidCachedStatementError", "FatalPostgresError", "UnknownPostgresError",
                 "InterfaceError", "InterfaceWarning", "ClientConfigurationError",
                 "InternalClientError", "OutdatedSchemaCacheError", "ProtocolError",
                 "UnsupportedClientFeatureError", "UnsupportedServerFeatureError",
                 "TargetServerAttributeNotMatched", "PostgresLogMessage", "DataError",
                 "ConnectionDoesNotExistError"):
        assert hasattr(apg_exc, name)
        assert isinstance(getattr(exc, name), type), name


# ------------------------------------------- fields sent by a real server
def _fields_of(e: Any) -> dict[str, str]:
    """The ErrorResponse fields asyncpg received, as single-letter codes."""
    out = {k: getattr(e, attr) for k, attr in FIELD_NAMES.items()
           if getattr(e, attr, None) is not None}
    out["M"] = e.args[0] if isinstance(e, Exception) else e.message
    return out


@pytest.mark.parametrize("sql,name,checks", [
    ("INSERT INTO u VALUES (1), (1)", "UniqueViolationError",
     {"constraint_name": "u_pkey", "table_name": "u", "schema_name": "public"}),
    ("INSERT INTO u VALUES (NULL)", "NotNullViolationError", {"column_name": "id"}),
    ("SELEC 1", "PostgresSyntaxError", {"position": "1"}),
    ("SELECT * FROM missing_table", "UndefinedTableError", {"position": "15"}),
    ("SELECT 1/0", "DivisionByZeroError", {}),
    ("SELECT 'x'::int", "InvalidTextRepresentationError", {}),
    ("DO $$BEGIN RAISE EXCEPTION 'boom' USING HINT = 'hh', DETAIL = 'dd'; END$$",
     "RaiseError", {"hint": "hh", "detail": "dd"}),
    ("DO $$BEGIN RAISE SQLSTATE '23P99'; END$$", "IntegrityConstraintViolationError",
     {"sqlstate": "23P99"}),
    ("DO $$BEGIN RAISE SQLSTATE 'ZZ001'; END$$", "UnknownPostgresError", {"sqlstate": "ZZ001"}),
    ("SELECT pg_sleep(5)", "QueryCanceledError", {}),
])
async def test_real_server_errors(pg: PgCluster, pg_db: str, sql: str, name: str,
                                  checks: dict[str, str]) -> None:
    conn = await asyncpg.connect(pg.dsn(PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD, pg_db))
    try:
        await conn.execute("CREATE TABLE u (id int PRIMARY KEY); SET statement_timeout = '50ms'")
        with pytest.raises(asyncpg.PostgresError) as info:
            await conn.execute(sql)
        fields = _fields_of(info.value)
        e = PostgresError.new(fields, query=sql)
        assert type(e).__name__ == name
        if fields["C"] in _asyncpg_classes():  # asyncpg has no prefix fallback
            assert type(e).__name__ == type(info.value).__name__
        for attr, value in checks.items():
            assert getattr(e, attr) == value, attr
        assert e.severity == "ERROR" and e.server_source_filename
        assert e.message == info.value.args[0] and e.query == sql
        assert str(e) == str(info.value)
    finally:
        await conn.close()


async def test_real_server_notice_and_warning(pg: PgCluster) -> None:
    conn = await asyncpg.connect(pg.dsn(PgCluster.TRUST_USER))
    got: list[Any] = []
    conn.add_log_listener(lambda _c, m: got.append(m))
    try:
        await conn.execute("DO $$BEGIN RAISE NOTICE 'n1'; RAISE WARNING 'w1'; "
                           "RAISE WARNING 'w2' USING ERRCODE = '01P01'; END$$")
        await conn.fetchval("SELECT 1")  # log listeners are called asynchronously
        while len(got) < 3:
            await conn.fetchval("SELECT 1")
    finally:
        await conn.close()
    mine = [PostgresLogMessage.new(_fields_of(m)) for m in got]
    assert [type(m).__name__ for m in mine] == [type(m).__name__ for m in got] == [
        "PostgresLogMessage", "PostgresWarning", "DeprecatedFeature"]
    assert [m.message for m in mine] == ["n1", "w1", "w2"]


async def test_real_connection_errors(pg_factory: Callable[..., PgCluster]) -> None:
    c = pg_factory({"max_connections": 3, "superuser_reserved_connections": 1})
    cases = [
        (c.dsn(PgCluster.SCRAM_USER, "wrong"), "InvalidPasswordError"),
        (c.dsn(PgCluster.TRUST_USER, None, "no_such_db"), "InvalidCatalogNameError"),
    ]
    for dsn, name in cases:
        with pytest.raises(asyncpg.PostgresError) as info:
            await asyncpg.connect(dsn)
        e = PostgresError.new(_fields_of(info.value))
        assert type(e).__name__ == name and e.severity == "FATAL"
    held = [await asyncpg.connect(c.dsn(PgCluster.TRUST_USER)) for _ in range(2)]
    try:
        with pytest.raises(asyncpg.TooManyConnectionsError) as info2:
            await asyncpg.connect(c.dsn(PgCluster.TRUST_USER))
        e = PostgresError.new(_fields_of(info2.value))
        assert type(e) is exc.TooManyConnectionsError
        assert isinstance(e, exc.InsufficientResourcesError)
    finally:
        for h in held:
            await h.close()
