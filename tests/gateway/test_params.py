"""ParameterStatus values in Postgres' spelling, and the ``options`` startup
parameter (issue 10, item 3).  Every spelling is checked against what a direct
connection to Postgres reports for the same startup parameter."""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
import pytest

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader
from gateway.params import OptionsError, canonical, parse_options
from tests.gateway.conftest import ALICE_PASSWORD
from tests.pgcluster import PgCluster

pytestmark = pytest.mark.timeout(120)


async def _login(host: str, port: int, params: dict[str, str],
                 password: str | None = None) -> tuple[dict[str, str], list[Any]]:
    """Raw startup: (ParameterStatus values, other replies) up to ReadyForQuery
    or an error."""
    r, w = await asyncio.open_connection(host, port)
    reader = MessageReader()
    w.write(m.startup_message(params))
    status: dict[str, str] = {}
    other: list[Any] = []
    try:
        while True:
            data = await asyncio.wait_for(r.read(65536), 10)
            if not data:
                return status, other
            reader.feed(data)
            for t, body in reader.read():
                msg = m.decode_backend(t, body)
                if isinstance(msg, m.AuthenticationRequest) and msg.code != 0:
                    assert password is not None
                    w.write(m.password_message(password))
                elif isinstance(msg, m.ParameterStatus):
                    status[msg.name] = msg.value
                elif isinstance(msg, m.ErrorResponse):
                    return status, other + [msg]
                elif isinstance(msg, m.ReadyForQuery):
                    return status, other
                else:
                    other.append(msg)
    finally:
        w.close()


SPELLINGS = [
    {"client_encoding": "iso-8859-1"}, {"client_encoding": "latin1"}, {"client_encoding": "euc-jp"},
    {"client_encoding": "utf-8"}, {"client_encoding": "Windows-1252"}, {"client_encoding": "sql_ascii"},
    {"client_encoding": "koi8"}, {"client_encoding": "iso_8859_5"},
    {"DateStyle": "iso, dmy"}, {"datestyle": "german"}, {"DateStyle": "sql"}, {"DateStyle": "postgres, ymd"},
    {"TimeZone": "utc"}, {"timezone": "europe/paris"}, {"TimeZone": "America/New_York"},
    {"IntervalStyle": "ISO_8601"}, {"standard_conforming_strings": "true"},
    {"application_name": "Mixed Case"},
    {"options": "-c client_encoding=latin9 --datestyle=sql,\\ dmy"},
    {"options": "-ctimezone=asia/tokyo"},
]


@pytest.mark.parametrize("params", SPELLINGS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()))
async def test_reported_values_match_postgres(gateway_app: Any, pg: PgCluster, params: dict[str, str]) -> None:
    app = await gateway_app(auth_type="password")
    direct, derr = await _login(pg.host, pg.port, {"user": PgCluster.TRUST_USER,
                                                   "database": PgCluster.DATABASE, **params})
    assert not [e for e in derr if isinstance(e, m.ErrorResponse)], derr
    via, verr = await _login("127.0.0.1", app.pg_port, {"user": "alice", "database": "app", **params},
                             ALICE_PASSWORD)
    assert not [e for e in verr if isinstance(e, m.ErrorResponse)], verr
    for name in ("client_encoding", "DateStyle", "TimeZone", "IntervalStyle",
                 "standard_conforming_strings", "application_name"):
        assert via[name] == direct[name], (name, via[name], direct[name])


async def test_psycopg_latin1_through_pg_listen(gateway_app: Any) -> None:
    app = await gateway_app(auth_type="password")
    for enc, expect in (("iso-8859-1", "iso8859-1"), ("euc-jp", "euc_jp"), ("latin9", "iso8859-15")):
        conn = await psycopg.AsyncConnection.connect(
            host="127.0.0.1", port=app.pg_port, user="alice", password=ALICE_PASSWORD, dbname="app",
            client_encoding=enc, autocommit=True)
        try:
            assert conn.info.encoding == expect
            cur = await conn.execute("select %s::text, current_setting('client_encoding')", ["café"])
            row = await cur.fetchone()
            assert row is not None and row[0] == "café"
            assert row[1] == canonical("client_encoding", enc)
        finally:
            await conn.close()


async def test_options_unsupported_parameter_is_refused_clearly(gateway_app: Any) -> None:
    app = await gateway_app(auth_type="password")
    _, errs = await _login("127.0.0.1", app.pg_port,
                           {"user": "alice", "database": "app", "options": "-c statement_timeout=5"},
                           ALICE_PASSWORD)
    assert len(errs) == 1 and errs[0].sqlstate == "0A000" and "statement_timeout" in errs[0].message
    _, errs = await _login("127.0.0.1", app.pg_port,
                           {"user": "alice", "database": "app", "options": "-B 10"}, ALICE_PASSWORD)
    assert len(errs) == 1 and errs[0].sqlstate == "08P01", errs


def test_parse_options() -> None:
    assert parse_options("-c a=1 --b-c=2 -cd=x\\ y  ") == [("a", "1"), ("b_c", "2"), ("d", "x y")]
    assert parse_options("") == []
    for bad in ("-c", "-c a", "--=1", "-B 1", "x"):
        with pytest.raises(OptionsError):
            parse_options(bad)


def test_canonical_unknown_values_pass_unchanged() -> None:
    assert canonical("client_encoding", "klingon") == "klingon"
    assert canonical("DateStyle", "nonsense") == "nonsense"
    assert canonical("DateStyle", "dmy", "SQL, MDY") == "SQL, DMY"
    assert canonical("DateStyle", "sql") == "SQL"  # completed with the server's order later
    assert canonical("DateStyle", "SQL", "ISO, DMY") == "SQL, DMY"


async def test_datestyle_part_keeps_the_servers_other_part(gateway_app: Any, pg_factory: Any) -> None:
    c = await asyncio.to_thread(pg_factory, {"datestyle": "iso, dmy"})
    app = await gateway_app(auth_type="password", databases={"app": {"host": c.host, "port": c.port}})
    for value in ("sql", "postgres", "ymd"):
        direct, _ = await _login(c.host, c.port, {"user": PgCluster.TRUST_USER, "database": PgCluster.DATABASE,
                                                  "DateStyle": value})
        via, _ = await _login("127.0.0.1", app.pg_port, {"user": "alice", "database": "app", "DateStyle": value},
                              ALICE_PASSWORD)
        assert via["DateStyle"] == direct["DateStyle"], value
    assert canonical("application_name", "App") == "App"
