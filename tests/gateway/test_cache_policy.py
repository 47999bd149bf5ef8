"""gateway.cache_policy (sans-I/O): hints, the /sql header, units, read-only
classification, volatility, replay bytes, keys."""

from __future__ import annotations

import pytest

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader
from gateway import cache_policy as cp


def _framed(data: bytes) -> tuple[bytes, list[tuple[int, int, int]]]:
    r = FrontendReader(startup=False)
    r.feed(data)
    return r.read_raw()


def test_hint_comment() -> None:
    h = cp.parse_hint(b"SELECT 1 /* wirepool:cache ttl=60 swr=30 tags=quotes,authors */")
    assert h == cp.Hint(60.0, 30.0, ("quotes", "authors"))
    assert cp.parse_hint(b"/*wirepool:cache*/ SELECT 1") == cp.Hint()
    assert cp.parse_hint(b"/* WIREPOOL:CACHE TTL=5 */ SELECT 1") == cp.Hint(5.0)
    assert cp.parse_hint(b"SELECT 1") is None
    for bad in (b"/* wirepool:cache ttl=soon */", b"/* wirepool:cache ttl=-1 */", b"/* wirepool:cache x=1 */",
                b"/* wirepool:cache ttl=nan */", b"/* wirepool:cache tags=a;b */", b"/* wirepool:cache junk */"):
        assert cp.parse_hint(bad + b" SELECT 1") is None, bad


def test_header_and_comment_round_trip() -> None:
    h = cp.parse_header("ttl=60, swr=30, tags=quotes,authors")
    assert h == cp.Hint(60.0, 30.0, ("quotes", "authors"))
    assert cp.parse_hint(cp.hint_comment(h).encode() + b"SELECT 1") == h
    assert cp.parse_header("ttl=1.5") == cp.Hint(1.5)
    for bad in ("", "ttl", "ttl=x", "color=red", "quotes"):
        assert cp.parse_header(bad) is None, bad


def test_units() -> None:
    u = cp.unit_of(*_framed(m.query("SELECT 1")))
    assert u is not None and (u.shape, u.text) == (b"Q", b"SELECT 1")
    ext = (m.parse("", "SELECT $1::int", []) + m.bind("", "", [], [b"7"], []) + m.describe("P")
           + m.execute("", 0) + m.sync())
    u = cp.unit_of(*_framed(ext))
    assert u is not None and u.shape == b"PBDES" and cp.sql_of(u.text, u.shape) == b"SELECT $1::int"
    u = cp.unit_of(*_framed(m.bind("", "s1", [], [b"7"], []) + m.execute("", 1) + m.flush() + m.sync()))
    assert u is not None and (u.shape, u.stmt, u.exe) == (b"BEHS", b"s1", b"\x00\x00\x00\x00\x01")
    # a named Parse used by the unit's Bind (node-postgres {name}): its name rides along
    u = cp.unit_of(*_framed(m.parse("n1", "SELECT 1", []) + m.bind("", "n1", [], [], []) + m.execute("", 0)
                            + m.sync()))
    assert u is not None and (u.shape, u.pname, u.stmt, cp.sql_of(u.text, u.shape)) == (b"PBES", b"n1", b"", b"SELECT 1")
    for prefix, kind in ((b"P", cp.PREFIX), (b"PB", cp.PREFIX), (b"PBDE", cp.PREFIX), (b"B", cp.PREFIX),
                         (b"PBDEH", cp.PREFIX_FLUSHED), (b"BEH", cp.PREFIX_FLUSHED), (b"PBH", cp.NOT_PREFIX),
                         (b"PD", cp.NOT_PREFIX), (b"Q", cp.NOT_PREFIX), (b"PBDES", cp.NOT_PREFIX)):
        assert cp.unit_prefix(prefix) == kind, prefix
    for not_unit in (m.parse("named", "SELECT 1", []) + m.bind("", "other", [], [], []) + m.execute("", 0) + m.sync(),
                     m.bind("p1", "s", [], [], []) + m.execute("p1", 0) + m.sync(),  # a named portal
                     m.bind("", "", [], [], []) + m.execute("", 0) + m.sync(),  # an earlier unnamed statement
                     m.query("SELECT 1") + m.query("SELECT 2"),
                     m.parse("", "SELECT 1", []) + m.bind("", "", [], [], []) + m.execute("", 0),  # no Sync
                     m.parse("", "SELECT 1", []) + m.bind("", "", [], [], []) + m.describe("S") + m.execute("", 0)
                     + m.sync()):
        assert cp.unit_of(*_framed(not_unit)) is None


@pytest.mark.parametrize("sql", [
    "SELECT 1", "select * from quotes where id = $1", "WITH a AS (SELECT 1) SELECT * FROM a;",
    "VALUES (1)", "TABLE quotes", "SELECT 'delete; update' AS s", 'SELECT "for" FROM t',
    "SELECT $$ insert $$", "SELECT x::numeric(10,2) FROM t",
])
def test_read_only(sql: str) -> None:
    assert cp.read_only(sql.encode()) is not None


@pytest.mark.parametrize("sql", [
    "UPDATE t SET a = 1", "SELECT 1; SELECT 2", "SELECT * FROM t FOR UPDATE", "SELECT * FROM t FOR SHARE",
    "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "SELECT 1 INTO t2", "SELECT current_timestamp",
    "SELECT localtime", "BEGIN", "SET x = 1", "EXPLAIN ANALYZE DELETE FROM t", "CALL p()", "", "COPY t TO STDOUT",
    "SELECT $x$ a $y$", "SELECT \xff", "SELECT E'\\'' ; DELETE FROM t; --'", "SELECT U&'d0061'",
])
def test_not_read_only(sql: str) -> None:
    assert cp.read_only(sql.encode("latin-1")) is None


def test_volatility() -> None:
    vol = cp.Volatility([("lower", "true"), ("pg_catalog.lower", "true"), ("now", "false"), ("random", "false"),
                         ("nextval", "false"), ("myfunc", "true"), ("app.myfunc", "false"), ("~view:v", "false"),
                         ("~table:quotes", "false"), ("~table:t", "false")], 1)
    ok = cp.read_only(b"SELECT lower(text) FROM quotes")
    assert ok is not None and ok.functions == {"lower"} and vol.certain(ok)
    for sql in (b"SELECT now()", b"SELECT random()", b"SELECT nextval('s')", b"SELECT unknown_fn(1)",
                b"SELECT app.myfunc()", b"SELECT * FROM v", b'SELECT "Lower"(x) FROM t'):
        ro = cp.read_only(sql)
        assert ro is not None and not vol.certain(ro), sql
    assert vol.certain(cp.read_only(b"SELECT pg_catalog.lower(x), coalesce(a, b) FROM t"))  # type: ignore[arg-type]


def test_replay_matches_the_shape() -> None:
    t, body = b"T\x00\x00\x00\x06\x00\x00", b"C\x00\x00\x00\x0dSELECT 1\x00"
    z = m.ready_for_query("I")
    assert cp.replay(b"Q", t, body) == t + body + z
    assert cp.replay(b"PBDEHS", t, body) == b"1\x00\x00\x00\x04" + b"2\x00\x00\x00\x04" + t + body + z
    assert cp.replay(b"BES", t, body) == b"2\x00\x00\x00\x04" + body + z
    batch = cp.refresh_batch(b"BES", b"SELECT $1\x00\x00\x00", b"\x00\x00\x00\x00\x00\x00", b"\x00\x00\x00\x00\x01")
    chunk, idx = _framed(batch)
    assert bytes(i[0] for i in idx) == b"PBDES"


def test_key_separates_everything_that_changes_bytes() -> None:
    u1 = cp.Unit(b"BES", b"", b"s", b"\x00\x00")
    u2 = cp.Unit(b"BES", b"", b"s", b"\x00\x01")
    base = ("app", "role", "alice", u1, b"SELECT 1", ("UTF8", "ISO, MDY"), {"search_path": "a"})
    k = cp.cache_key(*base)  # type: ignore[arg-type]
    assert k == cp.cache_key(*base)  # type: ignore[arg-type]
    variants = [("app2",) + base[1:], base[:1] + ("role2",) + base[2:], base[:2] + ("bob",) + base[3:],
                base[:3] + (u2,) + base[4:], base[:4] + (b"SELECT 2",) + base[5:],
                base[:5] + (("UTF8", "German"),) + base[6:], base[:6] + ({"search_path": "b"},)]
    for v in variants:
        assert cp.cache_key(*v) != k  # type: ignore[arg-type]


@pytest.mark.parametrize("sql,rels", [
    ("SELECT id FROM quotes WHERE id = $1", {"quotes"}),
    ('select * from public.quotes q join authors a on a.id = q.a, "Books" b where x in (select y from z)',
     {"quotes", "authors", "Books", "z"}),
    ("WITH w AS (SELECT 1 FROM t1) SELECT * FROM w, ONLY t2", {"t1", "t2", "w"}),
    ("TABLE quotes", {"quotes"}),
    ("SELECT extract(year FROM d), a IS NOT DISTINCT FROM b FROM t", {"t"}),
    ("SELECT * FROM generate_series(1, 3) g, LATERAL (SELECT 1 FROM t3) s", {"t3"}),
    ("SELECT * FROM a JOIN b USING (id), c", {"a", "b", "c"}),
    ("SELECT (SELECT count(*) FROM b) UNION SELECT 1 FROM c", {"b", "c"}),
    ("SELECT 1", set()),
])
def test_relations_are_the_auto_tags(sql: str, rels: set[str]) -> None:
    ro = cp.read_only(sql.encode())
    assert ro is not None and set(ro.relations) == rels
    vol = cp.Volatility([("~table:" + r, "false") for r in rels if r != "w"] + [("count", "true"),
                         ("generate_series", "true"), ("extract", "true")], 0)
    assert vol.certain(ro), ro
    if rels:  # a name that is not a known table (created behind the gateway's back): not certain
        assert not cp.Volatility([("count", "true"), ("generate_series", "true"), ("extract", "true")], 0).certain(ro)
