"""gateway.tracking (sans-I/O): detection, probe parsing, cleanup and re-apply
SQL.  The probe itself is run against a real Postgres here; the end-to-end
isolation proof is test_isolation.py."""

from __future__ import annotations

import struct
from typing import Any

import asyncpg
import pytest

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader
from gateway import tracking as tr


def _framed(data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    r = FrontendReader(startup=False)
    r.feed(data)
    return r.read_raw()


@pytest.mark.parametrize("sql", [
    "SET statement_timeout = 50", "set search_path to a, b", "  SET SESSION work_mem = '8MB'",
    "BEGIN; SET TIME ZONE 'UTC'", "/* c */ SET x.y = 1", "RESET ALL", "reset statement_timeout",
    "SELECT set_config('a.b', 'c', false)", "SELECT pg_catalog.set_config($1, $2, $3)",
    "CREATE TEMP TABLE t (a int)", "create temporary table t as select 1", "CREATE TABLE pg_temp.t (a int)",
    "SELECT 1 INTO TEMP t", "SELECT pg_advisory_lock(1)", "select pg_try_advisory_lock_shared(1, 2)",
    "PREPARE p AS SELECT 1", "LISTEN chan", "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    "DO $$ BEGIN EXECUTE 'SET work_mem = 1000'; END $$", "DISCARD ALL",
])
def test_stateful_statements_are_detected(sql: str) -> None:
    chunk, idx = _framed(m.query(sql))
    assert tr.hint(chunk)
    t = tr.Tracker()
    t.scan(chunk, idx)
    assert t.marked
    chunk, idx = _framed(m.parse("s", sql, []) + m.sync())
    t = tr.Tracker()
    t.scan(chunk, idx)
    assert t.marked


@pytest.mark.parametrize("sql", [
    "SELECT 1", "UPDATE t SET a = 1", "SET LOCAL statement_timeout = 5", "BEGIN; SET LOCAL search_path = x",
    "SELECT pg_advisory_xact_lock(1)", "INSERT INTO temperature VALUES (1)",
    "DECLARE c CURSOR FOR SELECT 1",
])
def test_ordinary_statements_are_not(sql: str) -> None:
    chunk, idx = _framed(m.query(sql))
    t = tr.Tracker()
    if tr.hint(chunk):
        t.scan(chunk, idx)
    assert not t.marked


def test_hint_is_cheap_and_negative_for_plain_queries() -> None:
    chunk, _ = _framed(m.parse("", "SELECT * FROM t WHERE id = $1", []) + m.bind("", "", [], [b"7"], [])
                       + m.execute("") + m.sync())
    assert not tr.hint(chunk)


def test_reported_parameter_marks_unless_tracked() -> None:
    t = tr.Tracker()
    t.reported("TimeZone")
    assert not t.marked
    t.reported("default_transaction_read_only")
    assert t.marked


def _row(*vals: bytes | None) -> bytes:
    out = [struct.pack("!h", len(vals))]
    for v in vals:
        out.append(struct.pack("!i", -1) if v is None else struct.pack("!i", len(v)) + v)
    return b"".join(out)


def test_parse_probe_and_cleanup() -> None:
    res = tr.parse_probe([_row(b"statement_timeout", b"50ms"), _row(b"TimeZone", b"UTC"),
                          _row(b"~temp", b"true"), _row(b"~locks", b"false"),
                          _row(b"~prepared", b"p1, \"P 2\""), _row(b"~cursors", b"true"),
                          _row(b"~listen", b"false")])
    assert res.settings == {"statement_timeout": "50ms"}  # tracked ones are handled elsewhere
    assert tr.cleanup(res) == ([], ["DISCARD TEMP", "DEALLOCATE p1", 'DEALLOCATE "P 2"', "CLOSE ALL"])
    assert tr.cleanup(tr.parse_probe([_row(b"~prepared", None), _row(b"~locks", b"true")])) == (
        ["SELECT pg_catalog.pg_advisory_unlock_all()"], [])


def test_custom_names_are_collected() -> None:
    t = tr.Tracker()
    chunk, idx = _framed(m.query("SET app.user_id = 7; SELECT set_config('App.Tenant', 'x', false); RESET a.b"))
    t.scan(chunk, idx)
    assert t.marked and t.custom == {"app.user_id", "app.tenant", "a.b"}
    assert "current_setting('a.b', true)" in t.probe()


def test_bind_of_a_stateful_named_statement_marks() -> None:
    t = tr.Tracker()
    chunk, idx = _framed(m.parse("lock", "SELECT pg_advisory_lock($1)", []) + m.parse("q", "SELECT 1", [])
                         + m.sync())
    t.scan(chunk, idx)
    assert t.marked and t.names == {b"lock"}
    t.marked = False
    chunk, idx = _framed(m.bind("", "q", [], [], []) + m.execute("") + m.sync())
    assert not tr.hint(chunk)
    t.scan(chunk, idx)
    assert not t.marked
    chunk, idx = _framed(m.bind("", "lock", [], [b"1"], []) + m.execute("") + m.sync())
    t.scan(chunk, idx)
    assert t.marked
    # the name reused for harmless text: no longer stateful
    chunk, idx = _framed(m.parse("lock", "SELECT 2", []) + m.sync())
    t.scan(chunk, idx)
    assert t.names == set()


def test_apply_sql() -> None:
    assert tr.apply_sql({"a": "1"}, {"a": "1"}) == []
    assert tr.apply_sql({"a": "it's"}, {"b": "2"}) == [
        "SELECT pg_catalog.set_config('a', 'it''s', false)", "RESET b"]


async def _probe(conn: Any) -> tr.ProbeResult:
    rows = await conn.fetch(tr.probe_sql({"wp.x"}))
    bodies = [_row(*(None if v is None else v.encode() for v in r)) for r in rows]
    return tr.parse_probe(bodies)


async def test_probe_against_postgres(pg: Any) -> None:
    conn = await asyncpg.connect(**pg.connect_kwargs(pg.SUPERUSER, pg.SUPERUSER_PASSWORD))
    try:
        clean = await _probe(conn)
        assert clean.settings == {} and tr.cleanup(clean) == ([], [])
        await conn.execute("SET statement_timeout = 50; SET search_path = a, \"B c\"")
        await conn.execute("BEGIN; SET work_mem = '7MB'; ROLLBACK")  # rolled back: not kept
        await conn.execute("SELECT set_config('wp.x', 'y', false)")
        await conn.execute("CREATE TEMP TABLE tt (a int); SELECT pg_advisory_lock(42); PREPARE pp AS SELECT 1;"
                           " BEGIN; DECLARE cc CURSOR WITH HOLD FOR SELECT 1; COMMIT; LISTEN ch")
        res = await _probe(conn)
        assert res.settings == {"statement_timeout": "50ms", "search_path": 'a, "B c"', "wp.x": "y"}
        now, later = tr.cleanup(res)
        assert now == ["SELECT pg_catalog.pg_advisory_unlock_all()", "UNLISTEN *"]
        assert later == ["DISCARD TEMP", "DEALLOCATE pp", "CLOSE ALL"]
        parts = now + later
        for p in parts + tr.apply_sql({}, res.settings):
            await conn.execute(p)
        after = await _probe(conn)
        assert after.settings == {} and tr.cleanup(after) == ([], [])
        # re-apply on a fresh session gives the same values back
        for p in tr.apply_sql(res.settings, {}):
            await conn.execute(p)
        assert (await _probe(conn)).settings == res.settings
        assert await conn.fetchval("SHOW search_path") == 'a, "B c"'
    finally:
        await conn.close()


def _look(t: tr.Tracker, data: bytes) -> None:
    """What the session does per client chunk: the accounting counts the
    texts, the tracker looks (the hot path's shape)."""
    from gateway.accounting import Accounting
    acc = Accounting()
    chunk, idx = _framed(data)
    chunk, idx, _ = acc.client(chunk, idx)
    if acc.texts or t.names or t.all_binds:
        t.look(chunk, idx, acc.texts, acc.text)


@pytest.mark.parametrize("framing", ["query", "parse", "two"])
def test_look_like_the_session(framing: str) -> None:
    def frame(sql: str) -> bytes:
        if framing == "query":
            return m.query(sql)
        if framing == "parse":
            return m.parse("st", sql, []) + m.bind("", "st", [], [], []) + m.execute("") + m.sync()
        return m.query("SELECT 1") + m.parse("", sql, []) + m.sync()
    t = tr.Tracker()
    for _ in range(2):  # the second time from the verdict cache
        _look(t, frame("SELECT * FROM t WHERE a = 1"))
        assert not t.marked
        _look(t, frame("SET statement_timeout = 5"))
        assert t.marked
        t.marked = False
    if framing == "parse":  # a later Bind alone of the stateful statement marks
        _look(t, m.bind("", "st", [], [], []) + m.execute("") + m.sync())
        assert t.marked


def test_parse_texts_are_remembered_even_when_plain() -> None:
    """A Parse's text comes back with every execution (its values are
    parameters): its verdict is cached even when stage 1 clears it; a Query's
    plain text is not (literals inlined: every text is new).  Texts cut
    short by a malformed Parse are judged on what they hold."""
    t = tr.Tracker()
    parse_sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1 /* parse */"
    query_sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = 42 /* query */"
    _look(t, m.parse("", parse_sql.decode(), [23]) + m.bind("", "", [0], [b"1"], []) + m.execute("") + m.sync())
    _look(t, m.query(query_sql.decode()))
    assert tr._SEEN.get(parse_sql) is False and query_sql not in tr._SEEN
    assert tr.statement_text(*_framed_parse(m.parse("n", parse_sql.decode(), []))) == parse_sql
    body = b"name\x00SET x = 1"  # no NUL after the text: what it holds
    _look(t, b"P" + (len(body) + 4).to_bytes(4, "big") + body)
    assert t.marked and tr._SEEN.get(b"SET x = 1") is True


def _framed_parse(data: bytes) -> tuple[bytes, int, int, int]:
    chunk, idx = _framed(data)
    (typ, s, e), = idx
    return chunk, typ, s, e


@pytest.mark.parametrize("body, want", [
    (b"n\x00SELECT 1\x00\x00\x00", (1, b"SELECT 1")),   # name, text, no parameter types
    (b"\x00SELECT 1\x00\x00\x00", (0, b"SELECT 1")),    # unnamed
    (b"n\x00SET x = 1", (1, b"SET x = 1")),             # no NUL after the text: what it holds
    (b"no-nul-at-all", (13, b"")),                      # no name end: nothing
])
def test_parse_parts_never_reads_past_the_body(body: bytes, want: tuple[int, bytes]) -> None:
    chunk = b"junk\x00" + body + b"\x00more"  # NULs around the body must not be found
    i, sql = tr.parse_parts(chunk, 5, 5 + len(body))
    assert (i - 5, sql) == want
    assert tr.statement_text(chunk, ord("P"), 5, 5 + len(body)) == want[1]
