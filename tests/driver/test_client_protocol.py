"""Unit tests of the sans-I/O client protocol fed scripted server bytes.

The server side is scripted with the backend encoders of
driver.protocol.messages; what the client sends is decoded with
FrontendReader + decode_frontend and checked message by message.
"""

from __future__ import annotations

from typing import Any

import pytest

from driver.protocol import messages as m
from driver.protocol.auth import ScramServer, ScramVerifier, md5_password
from driver.protocol.client import (
    ClientProtocol,
    ConnectionLost,
    CopyInStarted,
    ExtendedQuery,
    Notice,
    Notification,
    ProtocolState,
    RequestDone,
    ServerError,
    SimpleQuery,
    UnsupportedAuthentication,
)
from driver.protocol.framing import FrontendReader

LOGIN_OK = b"".join([
    m.authentication_ok(),
    m.parameter_status("server_version", "15.4"),
    m.parameter_status("client_encoding", "UTF8"),
    m.backend_key_data(4242, 777),
    m.ready_for_query("I"),
])


def sent(proto: ClientProtocol, reader: FrontendReader | None = None) -> list[Any]:
    """Decode what the client wants to send."""
    r = reader or FrontendReader(startup=False)
    r.feed(proto.data_to_send())
    return [m.decode_frontend(t, b) for t, b in r.read()]


def feed(proto: ClientProtocol, data: bytes, byte_at_a_time: bool = False) -> list[Any]:
    if byte_at_a_time:
        for i in range(len(data)):
            proto.receive_data(data[i:i + 1])
    else:
        proto.receive_data(data)
    return proto.next_events()


def logged_in(**kwargs: Any) -> ClientProtocol:
    proto = ClientProtocol("alice", "app", **kwargs)
    proto.start()
    proto.data_to_send()
    feed(proto, LOGIN_OK)
    assert proto.state is ProtocolState.READY
    return proto


def int_rows(cols: Any) -> Any:
    """A row decoder factory decoding text integers (stands in for codecs)."""
    def dec(body: bytes) -> tuple[Any, ...]:
        return tuple(None if v is None else int(v) for v in m.decode_data_row(body))
    return dec


# ---------------------------------------------------------------------------
# Startup and authentication
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("byte_at_a_time", [False, True])
def test_trust_startup(byte_at_a_time: bool) -> None:
    proto = ClientProtocol("alice", "app", server_settings={"application_name": "t"})
    assert proto.state is ProtocolState.NEW
    startup = proto.start()
    msgs = sent(proto, FrontendReader())
    assert len(msgs) == 1 and isinstance(msgs[0], m.StartupMessage)
    assert msgs[0].params == {"user": "alice", "database": "app", "application_name": "t"}
    assert proto.state is ProtocolState.AUTHENTICATING
    events = feed(proto, LOGIN_OK, byte_at_a_time)
    assert [type(e) for e in events] == [RequestDone]
    assert events[0].request is startup and startup.done and not startup.failed
    assert proto.state is ProtocolState.READY
    assert proto.parameters == {"server_version": "15.4", "client_encoding": "UTF8"}
    assert (proto.backend_pid, proto.backend_secret) == (4242, 777)
    assert proto.transaction_status == "I"
    assert not proto.busy


def test_cleartext_password() -> None:
    proto = ClientProtocol("alice", "app", password="s3cret")
    proto.start()
    sent(proto, FrontendReader())
    feed(proto, m.authentication_cleartext_password())
    msgs = sent(proto)
    assert len(msgs) == 1 and isinstance(msgs[0], m.PasswordMessage)
    assert m.decode_password(msgs[0].data) == "s3cret"
    feed(proto, LOGIN_OK)
    assert proto.state is ProtocolState.READY


def test_md5_password() -> None:
    proto = ClientProtocol("alice", "app", password="s3cret")
    proto.start()
    sent(proto, FrontendReader())
    feed(proto, m.authentication_md5_password(b"\x01\x02\x03\x04"))
    (msg,) = sent(proto)
    assert m.decode_password(msg.data) == md5_password("alice", "s3cret", b"\x01\x02\x03\x04")


@pytest.mark.parametrize("password,ok", [("s3cret", True), ("wrong", False)])
def test_scram_sha_256(password: str, ok: bool) -> None:
    server = ScramServer(ScramVerifier.from_password("s3cret"))
    proto = ClientProtocol("alice", "app", password=password)
    startup = proto.start()
    sent(proto, FrontendReader())
    feed(proto, m.authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]))
    (first,) = sent(proto)
    mech, data = m.decode_sasl_initial_response(first.data)
    assert mech == "SCRAM-SHA-256" and data is not None
    feed(proto, m.authentication_sasl_continue(server.handle_client_first(data)))
    (final,) = sent(proto)
    if ok:
        server_final = server.handle_client_final(final.data)
        feed(proto, m.authentication_sasl_final(server_final) + LOGIN_OK)
        assert startup.done and not startup.failed
        assert proto.state is ProtocolState.READY
    else:
        with pytest.raises(Exception):
            server.handle_client_final(final.data)
        events = feed(proto, m.error("28P01", 'password authentication failed for user "alice"',
                                     severity="FATAL"))
        assert [type(e) for e in events] == [RequestDone]
        assert startup.error is not None and startup.error["C"] == "28P01"
        assert proto.state is ProtocolState.FAILED


def test_scram_bad_server_signature_fails_login() -> None:
    proto = ClientProtocol("alice", "app", password="s3cret")
    startup = proto.start()
    sent(proto, FrontendReader())
    server = ScramServer(ScramVerifier.from_password("s3cret"))
    feed(proto, m.authentication_sasl(["SCRAM-SHA-256"]))
    (first,) = sent(proto)
    _, data = m.decode_sasl_initial_response(first.data)
    assert data is not None
    feed(proto, m.authentication_sasl_continue(server.handle_client_first(data)))
    sent(proto)
    feed(proto, m.authentication_sasl_final(b"v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="))
    assert startup.done and startup.exception is not None
    assert proto.state is ProtocolState.FAILED


@pytest.mark.parametrize("code", [m.AUTH_KERBEROS_V5, m.AUTH_GSS, m.AUTH_SSPI, 99])
def test_unsupported_auth_method(code: int) -> None:
    proto = ClientProtocol("alice", "app", password="x")
    startup = proto.start()
    sent(proto, FrontendReader())
    events = feed(proto, m._msg(b"R", code.to_bytes(4, "big")))
    assert isinstance(events[0], RequestDone)
    assert isinstance(startup.exception, UnsupportedAuthentication)
    assert proto.state is ProtocolState.FAILED
    assert m.TERMINATE in proto.data_to_send()


def test_sasl_without_scram_sha_256_is_rejected() -> None:
    proto = ClientProtocol("alice", "app", password="x")
    startup = proto.start()
    sent(proto, FrontendReader())
    feed(proto, m.authentication_sasl(["SCRAM-SHA-256-PLUS"]))
    assert isinstance(startup.exception, UnsupportedAuthentication)
    assert "SCRAM-SHA-256-PLUS" in str(startup.exception)


def test_password_required() -> None:
    proto = ClientProtocol("alice", "app")
    startup = proto.start()
    sent(proto, FrontendReader())
    feed(proto, m.authentication_md5_password(b"abcd"))
    assert isinstance(startup.exception, UnsupportedAuthentication)
    assert "no password" in str(startup.exception)


def test_pipelined_startup_one_write() -> None:
    """StartupMessage + PasswordMessage + first query leave in ONE write."""
    proto = ClientProtocol("alice", "app", password="pw", row_decoder_factory=int_rows)
    startup = proto.start(pipeline_password=True)
    q = proto.submit(SimpleQuery("SELECT 1", keep_rows=True))
    msgs = sent(proto, FrontendReader())
    assert [type(x) for x in msgs] == [m.StartupMessage, m.PasswordMessage, m.Query]
    assert proto.data_to_send() == b""
    reply = (m.authentication_cleartext_password() + LOGIN_OK
             + m.row_description([m.FieldDescription("?column?", type_oid=23)])
             + m.data_row([b"1"]) + m.command_complete("SELECT 1") + m.ready_for_query("I"))
    events = feed(proto, reply)
    assert proto.data_to_send() == b""  # the password is not sent twice
    assert [e.request for e in events if isinstance(e, RequestDone)] == [startup, q]
    assert isinstance(q, SimpleQuery) and q.results[0].rows == [(1,)]


def test_pipelined_password_against_other_method_fails() -> None:
    proto = ClientProtocol("alice", "app", password="pw")
    startup = proto.start(pipeline_password=True)
    q = proto.submit(SimpleQuery("SELECT 1"))
    sent(proto, FrontendReader())
    feed(proto, m.authentication_sasl(["SCRAM-SHA-256"]))
    assert isinstance(startup.exception, UnsupportedAuthentication)
    assert q.done and q.exception is not None


def test_requests_held_until_authenticated() -> None:
    proto = ClientProtocol("alice", "app", password="pw")
    proto.start()
    sent(proto, FrontendReader())
    q = proto.submit(SimpleQuery("SELECT 1"))
    assert proto.data_to_send() == b""  # not before the password exchange
    assert proto.busy
    feed(proto, m.authentication_cleartext_password())
    assert [type(x) for x in sent(proto)] == [m.PasswordMessage]
    feed(proto, m.authentication_ok())
    assert [type(x) for x in sent(proto)] == [m.Query]
    feed(proto, m.backend_key_data(1, 2) + m.ready_for_query("I")
         + m.command_complete("SELECT 1") + m.ready_for_query("I"))
    assert q.done and not q.failed


def test_login_error_fails_startup() -> None:
    proto = ClientProtocol("alice", "nosuchdb")
    startup = proto.start()
    sent(proto, FrontendReader())
    feed(proto, m.error("3D000", 'database "nosuchdb" does not exist', severity="FATAL"))
    assert startup.error is not None and startup.error["C"] == "3D000"
    assert proto.state is ProtocolState.FAILED


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


def test_simple_query_several_statements() -> None:
    proto = logged_in(row_decoder_factory=int_rows)
    q = proto.submit(SimpleQuery("SELECT 1; SELECT 2, 3; CREATE TABLE t()", keep_rows=True))
    assert isinstance(q, SimpleQuery)
    (msg,) = sent(proto)
    assert msg == m.Query("SELECT 1; SELECT 2, 3; CREATE TABLE t()")
    assert proto.busy
    feed(proto, b"".join([
        m.row_description([m.FieldDescription("a", type_oid=23)]),
        m.data_row([b"1"]), m.command_complete("SELECT 1"),
        m.row_description([m.FieldDescription("b", type_oid=23), m.FieldDescription("c", type_oid=23)]),
        m.data_row([b"2", b"3"]), m.command_complete("SELECT 1"),
        m.command_complete("CREATE TABLE"),
        m.ready_for_query("I"),
    ]))
    assert q.done and not q.failed
    assert [r.rows for r in q.results] == [[(1,)], [(2, 3)], []]
    assert [r.status for r in q.results] == ["SELECT 1", "SELECT 1", "CREATE TABLE"]
    assert q.status == "CREATE TABLE"
    assert [f.name for f in q.results[1].fields or ()] == ["b", "c"]
    assert not proto.busy


def test_simple_query_empty() -> None:
    proto = logged_in()
    q = proto.submit(SimpleQuery(""))
    feed(proto, m.EMPTY_QUERY_RESPONSE + m.ready_for_query("I"))
    assert q.done and isinstance(q, SimpleQuery) and q.status == ""


def test_simple_query_error_and_transaction_status() -> None:
    proto = logged_in()
    q = proto.submit(SimpleQuery("BEGIN; SELECT 1/0"))
    feed(proto, m.command_complete("BEGIN")
         + m.error("22012", "division by zero", detail="d", hint="h") + m.ready_for_query("E"))
    assert q.done and q.error is not None
    assert q.error["C"] == "22012" and q.error["D"] == "d" and q.error["H"] == "h"
    assert proto.transaction_status == "E"


def extended_select(name: str, value: bytes) -> ExtendedQuery:
    req = ExtendedQuery()
    req.parse(name, "SELECT $1::int4", [23]).bind("", name, [0], [value], [0])
    req.execute("", 0)
    return req


SELECT_REPLY_HEAD = m.PARSE_COMPLETE + m.BIND_COMPLETE


def test_extended_query_messages_and_results() -> None:
    proto = logged_in(row_decoder_factory=int_rows)
    req = ExtendedQuery()
    req.parse("s1", "SELECT $1::int4 AS x", [23]).describe_statement("s1")
    req.bind("", "s1", [0], [b"5"], [0]).describe_portal("")
    res = req.execute("", 0)
    proto.submit(req)
    msgs = sent(proto)
    assert [type(x) for x in msgs] == [m.Parse, m.Describe, m.Bind, m.Describe, m.Execute, m.Sync]
    rd = m.row_description([m.FieldDescription("x", type_oid=23)])
    feed(proto, b"".join([m.PARSE_COMPLETE, m.parameter_description([23]), rd, m.BIND_COMPLETE, rd,
                          m.data_row([b"5"]), m.command_complete("SELECT 1"), m.ready_for_query("I")]))
    assert req.done and not req.failed
    assert req.param_oids == (23,)
    assert req.fields is not None and req.fields[0].name == "x"
    assert res.rows == [(5,)] and res.status == "SELECT 1" and not res.suspended


def test_describe_no_data() -> None:
    proto = logged_in()
    req = ExtendedQuery().parse("", "CREATE TABLE t()").describe_statement("")
    proto.submit(req)
    feed(proto, m.PARSE_COMPLETE + m.parameter_description([]) + m.NO_DATA + m.ready_for_query("I"))
    assert req.param_oids == () and req.fields == ()


@pytest.mark.parametrize("byte_at_a_time", [False, True])
def test_pipelined_requests_error_fails_only_its_request(byte_at_a_time: bool) -> None:
    proto = logged_in()
    r1 = proto.submit(extended_select("", b"1"))
    r2 = proto.submit(extended_select("", b"oops"))
    r3 = proto.submit(extended_select("", b"3"))
    r4 = proto.submit(SimpleQuery("SELECT 4"))
    msgs = sent(proto)
    assert [type(x) for x in msgs].count(m.Sync) == 3
    assert proto.in_flight == 4
    reply = b"".join([
        SELECT_REPLY_HEAD, m.data_row([b"1"]), m.command_complete("SELECT 1"), m.ready_for_query("I"),
        m.PARSE_COMPLETE, m.error("22P02", 'invalid input syntax for type integer: "oops"'),
        m.ready_for_query("I"),
        SELECT_REPLY_HEAD, m.data_row([b"3"]), m.command_complete("SELECT 1"), m.ready_for_query("I"),
        m.command_complete("SELECT 1"), m.ready_for_query("I"),
    ])
    events = feed(proto, reply, byte_at_a_time)
    assert [e.request for e in events if isinstance(e, RequestDone)] == [r1, r2, r3, r4]
    assert isinstance(r1, ExtendedQuery) and isinstance(r3, ExtendedQuery)
    assert r1.results[0].rows == [(b"1",)] and not r1.failed
    assert r2.error is not None and r2.error["C"] == "22P02"
    assert r3.results[0].rows == [(b"3",)] and not r3.failed
    assert not r4.failed
    assert not proto.busy


def test_executemany_batch_one_sync() -> None:
    proto = logged_in()
    req = ExtendedQuery().parse("", "INSERT INTO t VALUES ($1)", [23])
    for v in (b"1", b"2", b"3"):
        req.bind("", "", [0], [v], [])
        req.execute("", 0)
    proto.submit(req)
    msgs = sent(proto)
    assert [type(x) for x in msgs] == [m.Parse] + [m.Bind, m.Execute] * 3 + [m.Sync]
    reply = m.PARSE_COMPLETE + (m.BIND_COMPLETE + m.command_complete("INSERT 0 1")) * 3
    feed(proto, reply + m.ready_for_query("I"))
    assert [r.status for r in req.results] == ["INSERT 0 1"] * 3


def test_portal_suspended() -> None:
    proto = logged_in()
    req = ExtendedQuery()
    res = req.execute("c1", 2)
    proto.submit(req)
    feed(proto, m.data_row([b"1"]) + m.data_row([b"2"]) + m.PORTAL_SUSPENDED + m.ready_for_query("T"))
    assert res.suspended and res.status is None and len(res.rows) == 2
    assert proto.transaction_status == "T"


def test_notice_notification_parameter_status_events() -> None:
    seen: list[dict[str, str]] = []
    proto = logged_in()
    proto.on_notice = seen.append
    q = proto.submit(SimpleQuery("DO $$ ... $$"))
    events = feed(proto, b"".join([
        m.notice_response({"S": "NOTICE", "V": "NOTICE", "C": "00000", "M": "hello"}),
        m.parameter_status("TimeZone", "UTC"),
        m.command_complete("DO"),
        m.ready_for_query("I"),
        m.notification_response(99, "chan", "payload"),  # while idle
    ]))
    assert [type(e) for e in events] == [Notice, RequestDone, Notification]
    assert isinstance(events[0], Notice) and events[0].fields["M"] == "hello"
    assert seen == [events[0].fields]
    n = events[2]
    assert isinstance(n, Notification) and (n.process_id, n.channel, n.payload) == (99, "chan", "payload")
    assert proto.parameters["TimeZone"] == "UTC"
    assert q.done


def test_error_while_idle_is_a_server_error_event() -> None:
    proto = logged_in()
    events = feed(proto, m.error("57P01", "terminating connection due to administrator command",
                                 severity="FATAL"))
    assert len(events) == 1 and isinstance(events[0], ServerError)
    assert events[0].fields["C"] == "57P01"
    events = feed(proto, b"")
    assert proto.state is ProtocolState.CLOSED


def test_copy_out_and_copy_in() -> None:
    proto = logged_in()
    q = proto.submit(SimpleQuery("COPY t TO STDOUT"))
    feed(proto, m.copy_out_response(0, [0]) + m.copy_data(b"1\n") + m.copy_data(b"2\n")
         + m.COPY_DONE + m.command_complete("COPY 2") + m.ready_for_query("I"))
    assert q.copy_out == [b"1\n", b"2\n"] and isinstance(q, SimpleQuery) and q.status == "COPY 2"

    q2 = proto.submit(SimpleQuery("COPY t FROM STDIN"))
    sent(proto)
    events = feed(proto, m.copy_in_response(0, [0]))
    assert isinstance(events[0], CopyInStarted) and events[0].request is q2
    with pytest.raises(Exception):
        proto.submit(SimpleQuery("SELECT 1"))  # not while the server waits for COPY data
    proto.copy_data(b"3\n")
    proto.copy_done()
    msgs = sent(proto)
    assert msgs == [m.CopyData(b"3\n"), m.CopyDone()]
    feed(proto, m.command_complete("COPY 1") + m.ready_for_query("I"))
    assert q2.done and not q2.failed


def test_copy_in_that_ends_in_the_same_chunk_leaves_copy_mode() -> None:
    # CopyInResponse, then the COPY's end (the client's CopyDone/CopyFail was
    # already on its way, or a gateway answered for it) in one chunk: the
    # request is over, so is COPY IN mode.
    for end in (m.command_complete("COPY 0"),
                m.error_response({"S": "ERROR", "C": "57014", "M": "COPY from stdin failed"})):
        proto = logged_in()
        q = proto.submit(SimpleQuery("COPY t FROM STDIN"))
        sent(proto)
        events = feed(proto, m.copy_in_response(0, [0]) + end + m.ready_for_query("I"))
        assert [type(e) for e in events] == [CopyInStarted, RequestDone]
        assert q.done and not q.copy_in_active
        with pytest.raises(Exception, match="not in COPY IN mode"):
            proto.copy_fail("too late")
        q2 = proto.submit(SimpleQuery("SELECT 1"))  # not refused as "COPY IN in progress"
        assert sent(proto) == [m.Query("SELECT 1")]
        feed(proto, m.command_complete("SELECT 0") + m.ready_for_query("I"))
        assert q2.done and not q2.failed


def test_protocol_violation_fails_everything() -> None:
    proto = logged_in()
    q = proto.submit(SimpleQuery("SELECT 1"))
    proto.data_to_send()
    events = feed(proto, b"Z\x00\x00\x00\x02")  # length < 4
    assert [e.request for e in events if isinstance(e, RequestDone)] == [q]
    assert q.exception is not None
    assert proto.state is ProtocolState.FAILED
    assert proto.data_to_send() == m.TERMINATE
    with pytest.raises(ConnectionLost):
        proto.submit(SimpleQuery("SELECT 1"))


def test_unexpected_ready_for_query_is_a_violation() -> None:
    proto = logged_in()
    feed(proto, m.ready_for_query("I"))
    assert proto.state is ProtocolState.FAILED


def test_connection_lost_fails_pending_in_order() -> None:
    proto = logged_in()
    a = proto.submit(SimpleQuery("SELECT 1"))
    b = proto.submit(SimpleQuery("SELECT 2"))
    proto.receive_data(b"C\x00\x00")  # half a message, then EOF
    events = feed(proto, b"")
    assert [e.request for e in events if isinstance(e, RequestDone)] == [a, b]
    assert isinstance(a.exception, ConnectionLost) and isinstance(b.exception, ConnectionLost)
    assert proto.state is ProtocolState.CLOSED


def test_terminate() -> None:
    proto = logged_in()
    proto.terminate()
    assert proto.data_to_send() == m.TERMINATE
    assert proto.state is ProtocolState.CLOSED
    with pytest.raises(ConnectionLost):
        proto.submit(SimpleQuery("SELECT 1"))


def test_row_decoder_factory_gets_columns() -> None:
    calls: list[list[tuple[int, int]]] = []

    def factory(cols: Any) -> Any:
        calls.append(list(cols))
        return lambda body: "row"

    proto = logged_in(row_decoder_factory=factory)
    req = ExtendedQuery().parse("", "SELECT 1, 'a'").bind("", "", [], [], [1, 0]).describe_portal("")
    res = req.execute("", 0)
    proto.submit(req)
    feed(proto, SELECT_REPLY_HEAD + m.row_description([
        m.FieldDescription("a", type_oid=23, format=1), m.FieldDescription("b", type_oid=25)])
        + m.data_row([b"\x00\x00\x00\x01", b"a"]) + m.command_complete("SELECT 1") + m.ready_for_query("I"))
    assert calls == [[(23, 1), (25, 0)]]
    assert res.rows == ["row"]
