"""Sans-I/O client side of the PostgreSQL v3 protocol.

No sockets, no asyncio: the caller moves bytes.  Modelled on h11's
``Connection``::

    proto = ClientProtocol(user="alice", database="app", password="secret")
    proto.start()                                   # queue the StartupMessage
    transport.send(proto.data_to_send())
    while not startup.done:
        proto.receive_data(transport.recv())        # b"" means EOF
        transport.send(proto.data_to_send())        # auth answers, if any
        for event in proto.next_events(): ...

Work is expressed as *requests* (:class:`SimpleQuery`, :class:`ExtendedQuery`,
the internal startup request).  :meth:`ClientProtocol.submit` queues a
request's bytes immediately -- several requests may be in flight at once
(pipelining); replies are matched to requests in order, each request ending
at its ReadyForQuery.  After an ErrorResponse only the request that caused it
fails: its remaining replies are skipped up to its ReadyForQuery (the server
does the same up to the request's Sync).

Events returned by :meth:`ClientProtocol.next_events`:

* :class:`RequestDone` -- a request finished (successfully or not: see
  ``request.error`` / ``request.exception``);
* :class:`Notice` -- a NoticeResponse (also passed to ``on_notice``);
* :class:`Notification` -- a NotificationResponse (LISTEN/NOTIFY);
* :class:`CopyInStarted` -- the server waits for COPY data: call
  :meth:`copy_data`, then :meth:`copy_done` or :meth:`copy_fail`;
* :class:`ServerError` -- an ErrorResponse that belongs to no request
  (e.g. FATAL admin shutdown while idle).

Pipelined startup: ``start(pipeline_password=True)`` sends the cleartext
PasswordMessage right after the StartupMessage, before the server asks for
it, and requests submitted before authentication completes are then queued
behind it -- connect, log in and run the first query in one write.  Without
it, requests submitted during authentication are held back until
AuthenticationOk.
"""

from __future__ import annotations

import enum
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Final, Mapping

from . import messages as m
from .events import (ClientProtocolError, ConnectionLost, CopyInStarted, Event, Notice,
                     Notification, RequestDone, RowDecodeError, ServerError,
                     UnsupportedAuthentication)
from .framing import AuthenticationError, MessageReader, ProtocolError
from .requests import (CopyQuery, ExecResult, ExtendedQuery, QueryResult, Request, RowDecoder,
                       RowDecoderFactory, SimpleQuery, StartupRequest, _discard, raw_row_decoder)

if TYPE_CHECKING:
    from .auth import ScramClient

__all__ = [
    "ClientProtocol",
    "ProtocolState",
    "Request",
    "StartupRequest",
    "SimpleQuery",
    "CopyQuery",
    "ExtendedQuery",
    "ExecResult",
    "QueryResult",
    "RowDecoder",
    "RowDecoderFactory",
    "Event",
    "RequestDone",
    "Notice",
    "Notification",
    "CopyInStarted",
    "ServerError",
    "ClientProtocolError",
    "UnsupportedAuthentication",
    "ConnectionLost",
    "RowDecodeError",
    "raw_row_decoder",
]

# Type bytes as plain ints (dispatch on the type byte, no dataclass per row).
_DATA_ROW: Final = 68  # D
_COMMAND_COMPLETE: Final = 67  # C
_ROW_DESCRIPTION: Final = 84  # T
_READY_FOR_QUERY: Final = 90  # Z
_ERROR_RESPONSE: Final = 69  # E
_NOTICE_RESPONSE: Final = 78  # N
_NOTIFICATION_RESPONSE: Final = 65  # A
_PARAMETER_STATUS: Final = 83  # S
_BACKEND_KEY_DATA: Final = 75  # K
_AUTHENTICATION: Final = 82  # R
_PARSE_COMPLETE: Final = 49  # 1
_BIND_COMPLETE: Final = 50  # 2
_CLOSE_COMPLETE: Final = 51  # 3
_NO_DATA: Final = 110  # n
_PORTAL_SUSPENDED: Final = 115  # s
_EMPTY_QUERY: Final = 73  # I
_PARAMETER_DESCRIPTION: Final = 116  # t
_COPY_IN_RESPONSE: Final = 71  # G
_COPY_OUT_RESPONSE: Final = 72  # H
_COPY_BOTH_RESPONSE: Final = 87  # W
_COPY_DATA: Final = 100  # d
_COPY_DONE: Final = 99  # c
_NEGOTIATE_VERSION: Final = 118  # v

_AUTH_NAMES: Final = {
    m.AUTH_KERBEROS_V5: "Kerberos V5",
    m.AUTH_GSS: "GSSAPI",
    m.AUTH_GSS_CONTINUE: "GSSAPI",
    m.AUTH_SSPI: "SSPI",
    6: "SCM credentials",
}


# ---------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------


class ProtocolState(enum.Enum):
    NEW = "new"  # nothing sent yet
    AUTHENTICATING = "authenticating"  # StartupMessage sent, waiting for AuthenticationOk
    STARTING = "starting"  # authenticated, waiting for the first ReadyForQuery
    READY = "ready"  # logged in (requests may be in flight: see ``busy``)
    CLOSED = "closed"  # Terminate sent or connection lost
    FAILED = "failed"  # protocol violation or login failure


class ClientProtocol:
    """Client protocol state machine.  See the module docstring."""

    def __init__(
        self,
        user: str,
        database: str | None = None,
        *,
        password: str | None = None,
        server_settings: Mapping[str, str] | None = None,
        row_decoder_factory: RowDecoderFactory | None = None,
        on_notice: Callable[[dict[str, str]], None] | None = None,
    ) -> None:
        self.user = user
        self.database = database or user
        self.password = password
        self.server_settings = dict(server_settings or {})
        self.row_decoder_factory: RowDecoderFactory = row_decoder_factory or raw_row_decoder
        self.on_notice = on_notice

        self.state = ProtocolState.NEW
        #: ParameterStatus values reported by the server.
        self.parameters: dict[str, str] = {}
        self.backend_pid: int | None = None
        self.backend_secret: int | None = None
        #: 'I' idle, 'T' in a transaction block, 'E' in a failed transaction block.
        self.transaction_status = "I"
        self.negotiated_minor: int | None = None
        self.failure: BaseException | None = None

        self._reader = MessageReader()
        self._out: list[bytes] = []
        self._events: list[Event] = []
        self._pending: deque[Request] = deque()  # sent, waiting for replies, in order
        self._held: list[Request] = []  # submitted during auth, not sent yet
        self._skipping = False  # head request failed: skip to its ReadyForQuery
        self._copy_in: Request | None = None
        #: the CopyQuery (with a sink) whose COPY TO STDOUT is running: its
        #: CopyData bodies are framed in bulk (MessageReader.read_copy_data)
        self._copy_out: CopyQuery | None = None
        self._password_sent_early = False
        self._password_requested = False
        self._pipeline_requests = False
        self._scram: ScramClient | None = None
        self._startup: StartupRequest | None = None

    # -- properties ---------------------------------------------------------
    @property
    def busy(self) -> bool:
        """Requests are in flight (or held for sending)."""
        return bool(self._pending) or bool(self._held)

    @property
    def in_flight(self) -> int:
        return len(self._pending) + len(self._held)

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._out)

    @property
    def startup_request(self) -> StartupRequest | None:
        return self._startup

    # -- output -------------------------------------------------------------
    def data_to_send(self) -> bytes:
        """Bytes queued for the server (and forget them)."""
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def next_events(self) -> list[Event]:
        """Events produced since the last call."""
        if not self._events:
            return []
        ev = self._events
        self._events = []
        return ev

    # -- starting -----------------------------------------------------------
    def start(self, *, pipeline_password: bool = False,
              extra_params: Mapping[str, str] | None = None,
              pipeline_requests: bool = False) -> StartupRequest:
        """Queue the StartupMessage; return the request done at the first ReadyForQuery.

        ``pipeline_password``: also queue a cleartext PasswordMessage now,
        for servers known to ask for ``AuthenticationCleartextPassword``;
        requests submitted from now on are queued right behind it.

        ``pipeline_requests``: requests submitted during authentication are
        sent at once instead of being held until AuthenticationOk -- for
        servers known to need no password exchange (a gateway session
        authenticated by an API token, ``trust``).  If the server asks for a
        password after requests were sent, the login fails with
        :class:`UnsupportedAuthentication`.
        """
        if self.state is not ProtocolState.NEW:
            raise ClientProtocolError("start() called twice")
        params = {"user": self.user, "database": self.database}
        params.update(self.server_settings)
        if extra_params:
            params.update(extra_params)
        self._out.append(m.startup_message(params))
        if pipeline_password:
            if self.password is None:
                raise ClientProtocolError("pipeline_password requires a password")
            self._out.append(m.password_message(self.password))
            self._password_sent_early = True
        self._pipeline_requests = pipeline_requests
        self.state = ProtocolState.AUTHENTICATING
        req = self._startup = StartupRequest()
        self._pending.append(req)
        return req

    # -- requests -----------------------------------------------------------
    def submit(self, request: Request) -> Request:
        """Queue ``request``; its bytes are in the next :meth:`data_to_send`."""
        if self.state in (ProtocolState.CLOSED, ProtocolState.FAILED):
            raise ConnectionLost("the connection is closed")
        if self.state is ProtocolState.NEW:
            raise ClientProtocolError("start() must be called before submit()")
        if self._copy_in is not None:
            raise ClientProtocolError("COPY IN in progress")
        if (self.state is ProtocolState.AUTHENTICATING and not self._password_sent_early
                and not self._pipeline_requests):
            self._held.append(request)
            return request
        self._out.append(request._bytes())
        self._pending.append(request)
        return request

    def terminate(self) -> None:
        """Queue a Terminate message; the protocol is closed afterwards."""
        if self.state not in (ProtocolState.CLOSED, ProtocolState.FAILED, ProtocolState.NEW):
            self._out.append(m.TERMINATE)
        self._fail_all(ConnectionLost("the connection was closed by the client"))
        self.state = ProtocolState.CLOSED

    # -- COPY IN ------------------------------------------------------------
    def copy_data(self, data: bytes) -> None:
        if self._copy_in is None:
            raise ClientProtocolError("not in COPY IN mode")
        self._out.append(m.copy_data(data))

    def copy_done(self) -> None:
        if self._copy_in is None:
            raise ClientProtocolError("not in COPY IN mode")
        self._out.append(m.COPY_DONE)
        self._copy_in.copy_in_active = False
        self._copy_in = None

    def copy_fail(self, message: str) -> None:
        if self._copy_in is None:
            raise ClientProtocolError("not in COPY IN mode")
        self._out.append(m.copy_fail(message))
        self._copy_in.copy_in_active = False
        self._copy_in = None

    # -- input --------------------------------------------------------------
    def connection_lost(self, exc: BaseException | None = None) -> None:
        """The transport closed (``exc`` is why, if known). Fails every pending request."""
        if self.state is ProtocolState.CLOSED and not self._pending:
            return
        err = ConnectionLost(str(exc) if exc else "the server closed the connection")
        if exc is not None:
            err.__cause__ = exc
        self._fail_all(err)
        if self.state is not ProtocolState.FAILED:
            self.state = ProtocolState.CLOSED

    def receive_data(self, data: bytes) -> None:
        """Feed bytes received from the server; ``b""`` means EOF."""
        if not data:
            self.connection_lost(None)
            return
        if self.state in (ProtocolState.CLOSED, ProtocolState.FAILED):
            return
        reader = self._reader
        reader.feed(data)
        try:
            copy_out = self._copy_out
            if copy_out is not None:
                chunk = reader.read_copy_data()
                if chunk:
                    copy_out._copy_data(chunk)
            msgs = reader.read()
            self._handle(msgs)
        except (ProtocolError, AuthenticationError, ClientProtocolError) as exc:
            self._fatal(exc)
        except (ValueError, IndexError) as exc:
            self._fatal(ProtocolError(f"malformed message from the server: {exc}"))

    def _fatal(self, exc: BaseException) -> None:
        self.failure = exc
        if self.state not in (ProtocolState.CLOSED, ProtocolState.FAILED):
            # Tell the server we give up (best effort).
            self._out.append(m.TERMINATE)
        self._fail_all(exc)
        self.state = ProtocolState.FAILED

    def _fail_all(self, exc: BaseException) -> None:
        for req in list(self._pending) + self._held:
            if not req.done:
                if req.exception is None:
                    req.exception = exc  # kept alongside a FATAL ``error``
                req.done = True
                self._events.append(RequestDone(req))
        self._pending.clear()
        self._held.clear()
        self._copy_in = None
        self._copy_out = None

    def _handle(self, msgs: list[tuple[int, bytes]]) -> None:
        pending = self._pending
        # Hot path: runs of DataRows go straight to the current result's list.
        append: Callable[[Any], None] | None = None
        decode: RowDecoder = m.decode_data_row
        for mtype, body in msgs:
            if mtype == _DATA_ROW:
                if append is None:
                    if self._skipping or not pending:
                        continue
                    if pending[0].exception is not None:  # a row failed to decode
                        append, decode = _discard, _discard
                    else:
                        append, decode = pending[0]._row_sink()
                try:
                    append(decode(body))
                except Exception as e:  # the query fails, the connection goes on
                    if pending[0].exception is None:
                        pending[0].exception = RowDecodeError(e)
                    append, decode = _discard, _discard
                continue
            append = None
            if mtype == _COPY_DATA:  # COPY TO STDOUT: one message per row
                if not self._skipping and pending:
                    pending[0]._copy_data(body)
                    continue
            if mtype == _COMMAND_COMPLETE:
                if not self._skipping and pending:
                    pending[0]._complete(body[:-1].decode("utf-8", "replace"))
                continue
            if mtype == _READY_FOR_QUERY:
                self._ready(body)
                continue
            self._handle_other(mtype, body)

    def _ready(self, body: bytes) -> None:
        if len(body) != 1:
            raise ProtocolError("ReadyForQuery must carry one status byte")
        self.transaction_status = chr(body[0])
        self._skipping = False
        if not self._pending:
            raise ProtocolError("unexpected ReadyForQuery")
        req = self._pending.popleft()
        self._copy_out = None
        if self._copy_in is req:  # the COPY ended without our CopyDone/CopyFail
            req.copy_in_active = False
            self._copy_in = None
        if self.state is ProtocolState.STARTING:
            self.state = ProtocolState.READY
        elif self.state is ProtocolState.AUTHENTICATING:
            raise ProtocolError("ReadyForQuery before authentication completed")
        req.done = True
        self._events.append(RequestDone(req))

    def _head(self) -> Request | None:
        return self._pending[0] if self._pending else None

    def _handle_other(self, mtype: int, body: bytes) -> None:
        head = self._head()
        if mtype == _ERROR_RESPONSE:
            fields = m.decode_fields(body)
            if head is None or head.error is not None:
                self._events.append(ServerError(fields))
                return
            if head.error is None:
                head.error = fields
            self._skipping = True
            if self._copy_in is head:
                self._copy_in.copy_in_active = False
                self._copy_in = None
            if self.state is ProtocolState.AUTHENTICATING or self.state is ProtocolState.STARTING:
                # Login failed: the server closes the connection.
                self.state = ProtocolState.FAILED
                self.failure = None
                self._fail_all(ConnectionLost("login failed"))
            return
        if mtype == _NOTICE_RESPONSE:
            fields = m.decode_fields(body)
            if self.on_notice is not None:
                self.on_notice(fields)
            self._events.append(Notice(fields))
            return
        if mtype == _NOTIFICATION_RESPONSE:
            n = m.decode_backend(mtype, body)
            assert isinstance(n, m.NotificationResponse)
            self._events.append(Notification(n.process_id, n.channel, n.payload))
            return
        if mtype == _PARAMETER_STATUS:
            p = m.decode_backend(mtype, body)
            assert isinstance(p, m.ParameterStatus)
            self.parameters[p.name] = p.value
            return
        if head is None:
            raise ProtocolError(f"unexpected message {chr(mtype)!r} with no request in flight")
        if self._skipping:
            return
        if mtype == _ROW_DESCRIPTION:
            head._row_description(body, self.row_decoder_factory)
        elif mtype in (_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE):
            pass
        elif mtype == _NO_DATA:
            head._no_data()
        elif mtype == _PARAMETER_DESCRIPTION:
            pd = m.decode_backend(mtype, body)
            assert isinstance(pd, m.ParameterDescription)
            head._param_description(pd.type_oids)
        elif mtype == _EMPTY_QUERY:
            head._complete("")
        elif mtype == _PORTAL_SUSPENDED:
            head._complete(None, suspended=True)
        elif mtype == _AUTHENTICATION:
            self._auth(body)
        elif mtype == _BACKEND_KEY_DATA:
            k = m.decode_backend(mtype, body)
            assert isinstance(k, m.BackendKeyData)
            self.backend_pid = k.process_id
            self.backend_secret = k.secret_key
        elif mtype == _COPY_IN_RESPONSE:
            c = m.decode_backend(mtype, body)
            assert isinstance(c, m.CopyInResponse)
            self._copy_in = head
            head.copy_in_active = True
            event = CopyInStarted(head, c.format, c.column_formats)
            if isinstance(head, CopyQuery) and head.on_copy_in is not None:
                head.on_copy_in(event)
            self._events.append(event)
        elif mtype == _COPY_OUT_RESPONSE:
            if isinstance(head, CopyQuery) and head.sink is not None:
                self._copy_out = head
        elif mtype == _COPY_DATA:
            head._copy_data(body)
        elif mtype == _COPY_DONE:
            self._copy_out = None
        elif mtype == _COPY_BOTH_RESPONSE:
            raise ProtocolError("COPY BOTH (replication) is not supported")
        elif mtype == _NEGOTIATE_VERSION:
            nv = m.decode_backend(mtype, body)
            assert isinstance(nv, m.NegotiateProtocolVersion)
            self.negotiated_minor = nv.newest_minor
        else:
            raise ProtocolError(f"unexpected message {chr(mtype)!r} from the server")

    # -- authentication -------------------------------------------------------
    def _auth(self, body: bytes) -> None:
        if self.state is not ProtocolState.AUTHENTICATING:
            raise ProtocolError("authentication request after login")
        code = int.from_bytes(body[:4], "big", signed=True)
        data = body[4:]
        if code == m.AUTH_OK:
            if self._password_sent_early and not self._password_requested:
                # (trust) The pipelined password would be read as a command.
                raise UnsupportedAuthentication(
                    "the server did not ask for a password but one was pipelined "
                    "(auth method mismatch)")
            self.state = ProtocolState.STARTING
            self._scram = None
            held, self._held = self._held, []
            for req in held:
                self._out.append(req._bytes())
                self._pending.append(req)
            return
        if self._pipeline_requests and len(self._pending) > 1:
            # Requests already sent would be read as the answer to this request.
            raise UnsupportedAuthentication(
                "the server asked for authentication but requests were pipelined behind the "
                "startup (expected a login without password exchange, e.g. an API token)")
        if code == m.AUTH_CLEARTEXT_PASSWORD:
            self._password_requested = True
            if self._password_sent_early:
                return  # already on its way
            self._out.append(m.password_message(self._require_password("password")))
            return
        if self._password_sent_early:
            # The pipelined cleartext password is already in the server's input:
            # it will be read as the answer to this request and rejected.
            raise UnsupportedAuthentication(
                "the server did not ask for a cleartext password but one was pipelined "
                "(auth method mismatch)")
        if code == m.AUTH_MD5_PASSWORD:
            if len(data) != 4:
                raise ProtocolError("AuthenticationMD5Password must carry a 4-byte salt")
            pw = self._require_password("md5")
            from .auth import md5_password  # hashlib: loaded on first use

            self._out.append(m.password_message(md5_password(self.user, pw, data)))
            return
        if code == m.AUTH_SASL:
            from .auth import ScramClient  # hashlib, hmac: loaded on first use

            mechanisms = [x.decode("ascii", "replace") for x in data.split(b"\x00") if x]
            if ScramClient.mechanism not in mechanisms:
                raise UnsupportedAuthentication(
                    f"unsupported SASL authentication mechanisms: {', '.join(mechanisms)}")
            pw = self._require_password("SCRAM-SHA-256")
            self._scram = ScramClient(self.user, pw)
            self._out.append(m.sasl_initial_response(self._scram.mechanism, self._scram.client_first()))
            return
        if code == m.AUTH_SASL_CONTINUE:
            if self._scram is None:
                raise ProtocolError("unexpected AuthenticationSASLContinue")
            self._out.append(m.sasl_response(self._scram.handle_server_first(data)))
            return
        if code == m.AUTH_SASL_FINAL:
            if self._scram is None:
                raise ProtocolError("unexpected AuthenticationSASLFinal")
            self._scram.handle_server_final(data)
            return
        name = _AUTH_NAMES.get(code, f"code {code}")
        raise UnsupportedAuthentication(f"unsupported authentication method requested by the server: {name}")

    def _require_password(self, method: str) -> str:
        if self.password is None:
            raise UnsupportedAuthentication(
                f"the server requested {method} authentication but no password was provided")
        return self.password
