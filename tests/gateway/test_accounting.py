"""gateway.accounting.Accounting driven by byte scripts (no sockets): client
bytes in, server bytes in, "transaction over" out.  The end-to-end
counterpart against Postgres is test_skip_till_sync.py."""

from __future__ import annotations

from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import FrontendReader, MessageReader, ProtocolError
from gateway.accounting import Accounting


class Rec:
    def __init__(self) -> None:
        self.params: list[bytes] = []
        self.errors: list[bytes] = []
        self.rows: list[bytes] = []
        self.done = 0

    def parameter_status(self, body: bytes) -> None:
        self.params.append(body)

    def swallowed_row(self, body: bytes) -> None:
        self.rows.append(body)

    def swallowed_error(self, body: bytes) -> None:
        self.errors.append(body)

    def swallow_done(self) -> None:
        self.done += 1


def c(acc: Accounting, data: bytes) -> tuple[bytes, bool]:
    r = FrontendReader(startup=False)
    r.feed(data)
    chunk, idx = r.read_raw()
    chunk, idx, term = acc.client(chunk, idx)
    return chunk, term


def s(acc: Accounting, data: bytes) -> tuple[bytes, int]:
    """Server bytes: returns (bytes for the client, last ReadyForQuery status or -1)."""
    r = MessageReader()
    r.feed(data)
    chunk, idx = r.read_raw()
    chunk, idx = acc.from_server(chunk, idx)
    if not chunk:
        return chunk, -1
    return chunk, acc.replies(chunk, idx)


Z_I = m.ready_for_query("I")
Z_T = m.ready_for_query("T")
Z_E = m.ready_for_query("E")
ERR = m.error("42601", "syntax error")
PARSE_OK = b"1\x00\x00\x00\x04"
BIND_OK = b"2\x00\x00\x00\x04"
P = m.parse("", "SELECT 1", [])
BEX = m.bind("", "", [], [], []) + m.execute("")


def test_simple_query_settles_at_idle() -> None:
    acc = Accounting()
    c(acc, m.query("SELECT 1"))
    assert acc.outstanding == 1 and not acc.settled()
    _, z = s(acc, m.command_complete("SELECT 1"))
    assert z == -1 and acc.outstanding == 1
    _, z = s(acc, Z_I)
    assert z == ord("I") and acc.settled()


def test_two_queries_in_one_chunk_need_two_ready_for_query() -> None:
    acc = Accounting()
    c(acc, m.query("BEGIN") + m.query("SELECT 1"))
    assert acc.outstanding == 2
    _, z = s(acc, m.command_complete("BEGIN") + Z_T)
    assert z == ord("T") and acc.outstanding == 1 and not acc.settled()
    s(acc, m.command_complete("SELECT 1") + Z_T)
    assert acc.settled()  # nothing owed; the transaction block is the caller's business (status T)


def test_extended_messages_are_dirty_until_sync() -> None:
    acc = Accounting()
    c(acc, P + BEX)
    assert acc.dirty == 3 and acc.outstanding == 0 and not acc.settled()
    c(acc, m.sync())
    assert acc.dirty == 0 and acc.outstanding == 1
    s(acc, PARSE_OK + BIND_OK + m.command_complete("SELECT 1") + Z_I)
    assert acc.settled()


def test_flush_and_copy_owe_nothing() -> None:
    acc = Accounting()
    c(acc, m.flush() + m.copy_data(b"x") + m.copy_done())
    assert acc.dirty == 0 and acc.outstanding == 0


def test_terminate_cuts_the_chunk() -> None:
    acc = Accounting()
    q = m.query("SELECT 1")
    chunk, term = c(acc, q + m.terminate() + m.query("SELECT 2"))
    assert term and chunk == q and acc.outstanding == 1


def test_named_parse_is_noted_without_rewriter() -> None:
    acc = Accounting()
    c(acc, m.parse("s1", "SELECT 1", []) + m.sync())
    assert acc.named
    acc2 = Accounting()
    c(acc2, P + m.sync())
    assert not acc2.named


def test_empty_parse_at_the_end_of_a_chunk_is_forwarded() -> None:
    # found by fuzzing (tests/fuzz): a Parse with no body as the last message
    # raised IndexError in the session; Postgres answers it with 08P01
    acc = Accounting()
    empty_parse = b"P\x00\x00\x00\x04"
    chunk, term = c(acc, m.query("SELECT 1") + empty_parse)
    assert chunk.endswith(empty_parse) and not term and not acc.named
    assert acc.outstanding == 1


def test_at_risk_query_skipped_after_error() -> None:
    """Parse fails, then a Query in the same Sync segment: Postgres skips the
    Query (no ReadyForQuery) -- only the Sync's ReadyForQuery comes."""
    acc = Accounting()
    c(acc, m.parse("", "SELEC 1", []) + m.query("SELECT 2") + m.sync())
    assert acc.outstanding == 2
    _, z = s(acc, ERR + Z_I)
    assert z == ord("I") and acc.settled()


def test_at_risk_query_answered_when_extended_succeeds() -> None:
    acc = Accounting()
    c(acc, P + m.query("SELECT 2") + m.sync())
    assert acc.outstanding == 2
    # Query implies a Sync: ParseComplete, the Query's result and its ReadyForQuery, then the Sync's
    _, z = s(acc, PARSE_OK + m.command_complete("SELECT 1") + Z_I)
    assert z == ord("I") and acc.outstanding == 1 and not acc.settled()
    _, z = s(acc, Z_I)
    assert acc.settled()


def test_query_after_failed_segment_is_skipped_at_once() -> None:
    """The error has already arrived before the at-risk Query is sent."""
    acc = Accounting()
    c(acc, m.parse("", "SELEC 1", []) + m.flush())
    s(acc, ERR)
    c(acc, m.query("SELECT 2"))
    assert acc.outstanding == 0  # skipped: no ReadyForQuery will come
    c(acc, m.sync())
    s(acc, Z_I)
    assert acc.settled()


def test_swallowed_replies_are_cut_and_reported() -> None:
    rec = Rec()
    acc = Accounting(None, rec)
    acc.swallow = 1
    c(acc, m.query("SELECT 1"))
    ours = m.command_complete("SET") + m.parameter_status("TimeZone", "UTC") + Z_I
    theirs = m.command_complete("SELECT 1") + Z_I
    out, z = s(acc, ours + theirs)
    assert out == theirs and z == ord("I") and acc.settled()
    assert rec.done == 1 and rec.params == [b"TimeZone\x00UTC\x00"] and acc.swallow == 0


def test_swallow_split_across_chunks() -> None:
    rec = Rec()
    acc = Accounting(None, rec)
    acc.swallow = 1
    c(acc, m.query("SELECT 1"))
    out, z = s(acc, ERR)
    assert out == b"" and z == -1 and rec.errors and rec.done == 0
    out, z = s(acc, Z_I + m.command_complete("SELECT 1"))
    assert out == m.command_complete("SELECT 1") and z == -1 and rec.done == 1
    assert not acc.settled()
    s(acc, Z_I)
    assert acc.settled()


def test_two_swallowed_replies_each_reported() -> None:
    rec = Rec()
    acc = Accounting(None, rec)
    acc.swallow = 2
    row = m.data_row([b"x"])
    out, z = s(acc, m.command_complete("DISCARD ALL") + Z_I + row + m.command_complete("SELECT 1") + Z_I)
    assert out == b"" and rec.done == 2 and rec.rows == [row[5:]] and acc.swallow == 0


def test_parameter_status_and_listen_in_replies() -> None:
    rec = Rec()
    acc = Accounting(None, rec)
    c(acc, m.query("LISTEN x"))
    s(acc, m.command_complete("LISTEN") + m.parameter_status("application_name", "a") + Z_I)
    assert acc.listened and rec.params == [b"application_name\x00a\x00"] and acc.settled()


def test_at_risk_query_skipped_before_its_sync_keeps_the_server() -> None:
    """Query, failing Parse, Query -- no Sync yet.  The ReadyForQuery of the
    first Query (in the chunk that also brings the error, or before it) must
    not settle the link: the server now discards everything up to a Sync the
    client has not sent, so the next client's messages would vanish (the fuzz
    campaign's probe stall, docs/fuzzing.md)."""
    for split in (False, True):
        acc = Accounting()
        c(acc, m.query("SELECT 1") + m.parse("", "SELEC 1", []) + m.query("SELECT 2"))
        assert acc.outstanding == 2
        first = m.command_complete("SELECT 1") + Z_I
        if split:
            _, z = s(acc, first)
            assert z == ord("I") and not acc.settled()
            _, z = s(acc, ERR)
        else:
            _, z = s(acc, first + ERR)
            assert z == ord("I")
        assert acc.outstanding == 0 and not acc.settled() and acc.busy(), split
        c(acc, m.query("SELECT 3"))  # skipped too: nothing more is owed
        assert acc.outstanding == 0 and not acc.settled()
        c(acc, m.sync())
        _, z = s(acc, Z_I)
        assert z == ord("I") and acc.settled()


class FakeRewriter:
    skipped_rfq = 0
    skips_to_sync = False


def test_rewriter_skips_are_subtracted() -> None:
    rw: Any = FakeRewriter()
    acc = Accounting(rw)
    c(acc, m.parse("", "SELEC 1", []) + m.query("SELECT 2") + m.sync())
    assert acc.outstanding == 2
    rw.skipped_rfq = 1  # what the rewriter's reply queue found
    _, z = s(acc, ERR + Z_I)
    assert z == ord("I") and acc.settled() and rw.skipped_rfq == 0


def test_error_in_transaction_block() -> None:
    acc = Accounting()
    c(acc, m.query("BEGIN; SELEC"))
    _, z = s(acc, m.command_complete("BEGIN") + ERR + Z_E)
    assert z == ord("E") and acc.settled()


def test_busy_and_lost() -> None:
    acc = Accounting()
    assert not acc.busy()
    c(acc, m.query("SELECT pg_sleep(1)"))
    assert acc.busy()
    acc.lost()
    assert not acc.busy()


def test_rewriter_skipping_to_sync_keeps_the_server() -> None:
    """With the rewriter: its reply queue says the server skips to a Sync not
    sent yet (an extended message failed, or it refused one in its place) --
    a ReadyForQuery of an earlier Query does not settle the link."""
    rw: Any = FakeRewriter()
    acc = Accounting(rw)
    c(acc, m.query("SELECT 1") + m.parse("", "SELEC 1", []) + m.query("SELECT 2"))
    assert acc.outstanding == 2
    rw.skipped_rfq, rw.skips_to_sync = 1, True  # what the rewriter's reply queue found
    _, z = s(acc, m.command_complete("SELECT 1") + Z_I + ERR)
    assert z == ord("I") and acc.outstanding == 0 and not acc.settled() and acc.busy()
    c(acc, m.sync())
    rw.skips_to_sync = False  # the rewriter forwarded the Sync
    _, z = s(acc, Z_I)
    assert z == ord("I") and acc.settled()


_CLIENT_MSGS = [m.query("SELECT 1"), P, BEX, m.sync(), m.flush(), m.parse("s1", "SELECT 1", [])]
_SERVER_MSGS = [Z_I, Z_T, ERR, PARSE_OK, BIND_OK, m.command_complete("SELECT 1")]


def _state(acc: Accounting) -> dict[str, Any]:
    return {k: getattr(acc, k) for k in Accounting.__slots__ if k not in ("rewriter", "events", "errors")}


def test_one_query_chunk_is_accounted_like_the_general_loop() -> None:
    """``client()`` takes a shortcut for a chunk that is exactly one Query: after
    any history, its state must equal the general loop's (fed the same Query
    followed by a Flush, which owes nothing and defeats the shortcut)."""
    import random
    rnd = random.Random(14)
    for _ in range(400):
        a, b = Accounting(), Accounting()
        _same_random_history(rnd, a, b)
        q = m.query("SELECT 2")
        assert c(a, q) == (q, False)
        assert c(b, q + m.flush())[1] is False
        assert _state(a) == _state(b)


def _same_random_history(rnd: Any, a: Accounting, b: Accounting) -> None:
    """Feed ``a`` and ``b`` the same random client and server chunks; they must agree on each."""
    for _ in range(rnd.randrange(6)):
        if rnd.random() < 0.6:
            data = b"".join(rnd.choice(_CLIENT_MSGS) for _ in range(rnd.randrange(1, 4)))
            assert c(a, data) == c(b, data)
        else:
            data = b"".join(rnd.choice(_SERVER_MSGS) for _ in range(rnd.randrange(1, 3)))
            assert s(a, data) == s(b, data)


_SEGMENT_MSGS = [P, m.parse("s1", "SELECT 1", []), m.bind("", "", [], [], []), m.describe("P", ""),
                 m.execute(""), m.close("S", "s1"), m.describe("S", "s1"),
                 m.flush(), b"H\x00\x00\x00\x05x"]  # (a Flush with a body: 08P01, never counted)


def test_sync_segment_chunks_are_accounted_like_the_general_loop() -> None:
    """``client()`` accounts a chunk of extended-protocol messages ending with a
    Sync (Parse/Bind/Describe/Execute/Close..., Sync, any number of segments)
    in a reduced loop that only counts: after any history (at-risk Queries, skipped segments,
    open segments), with and without the rewriter, its state must equal the
    general loop's (fed the same chunk followed by a Flush, which owes nothing
    and defeats the shortcut)."""
    import random
    rnd = random.Random(1414)
    shortcut = 0
    for i in range(600):
        a, b = Accounting(FakeRewriter() if i % 2 else None), Accounting(FakeRewriter() if i % 2 else None)
        _same_random_history(rnd, a, b)
        segments = [b"".join(rnd.choice(_SEGMENT_MSGS) for _ in range(rnd.randrange(4))) + m.sync()
                    for _ in range(rnd.randrange(1, 3))]
        chunk = b"".join(segments)
        shortcut += not a._risky
        try:
            got: object = c(a, chunk)
        except ProtocolError as exc:
            got = str(exc)
        try:
            want: object = c(b, chunk + m.flush())[1]
        except ProtocolError as exc:
            want = str(exc)
        assert got == want if isinstance(want, str) else (got == (chunk, False) and want is False)
        assert _state(a) == _state(b)
    assert shortcut > 300  # (the shortcut is not taken after an at-risk Query)


_REPLY_MSGS = [Z_I, Z_T, Z_E, ERR, PARSE_OK, BIND_OK, m.NO_DATA, m.row_description([]), m.data_row([b"1"]),
               m.command_complete("SELECT 1"), m.command_complete("INSERT 0 1"), m.command_complete("LISTEN"),
               m.command_complete("CREATE TABLE"), m.command_complete("ALTER ROLE"), m.command_complete("DELETE 2"),
               m.error("57P01", "bye", severity="FATAL")]


def test_replies_with_a_parameter_status_after_them_account_the_same() -> None:
    """``replies()`` on random replies (the usual ones and errors, several
    CommandCompletes, tags it looks at): a ParameterStatus after them changes
    nothing but the event it reports (a guard for any shortcut taken for
    replies without ParameterStatus, as one once was)."""
    import random
    rnd = random.Random(1415)
    shortcut = 0
    ps = m.parameter_status("TimeZone", "UTC")
    for i in range(800):
        ra, rb = Rec(), Rec()
        a, b = Accounting(FakeRewriter() if i % 2 else None, ra), Accounting(FakeRewriter() if i % 2 else None, rb)
        for _ in range(rnd.randrange(4)):
            data = b"".join(rnd.choice(_CLIENT_MSGS) for _ in range(rnd.randrange(1, 4)))
            assert c(a, data) == c(b, data)
        data = b"".join(rnd.choice(_REPLY_MSGS) for _ in range(rnd.randrange(1, 6)))
        types = [bytes([t]) for t, _ in _read(data)]
        shortcut += b"E" not in types and types.count(b"C") <= 1
        za = _replies(a, data)
        zb = _replies(b, data + ps)
        assert za == zb and _state(a) == _state(b) and a.errors == b.errors
        assert rb.params == ra.params + [ps[5:]]
    assert shortcut > 300


def _read(data: bytes) -> list[tuple[int, bytes]]:
    r = MessageReader()
    r.feed(data)
    return r.read()


def _replies(acc: Accounting, data: bytes) -> int:
    r = MessageReader()
    chunk, idx = r.feed_read_runs(data)
    return acc.replies(chunk, idx)
