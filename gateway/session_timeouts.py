"""Per-session timeouts (these functions are methods of
:class:`gateway.session.Session`): checked by the janitor
(``check_timeouts``, ``check_idle``): idle-in-transaction, query timeout (a
CancelRequest), client idle timeout, and a client message that does not
arrive completely in time, whose clock ``note_partial`` keeps as bytes
arrive."""

from __future__ import annotations

from typing import Any

from .cancel import send_cancel

_IDLE = 73  # 'I'


def check_timeouts(session: Any, now: float) -> None:
    """A linked client: idle in transaction too long, or a query running too long."""
    s = session.settings
    server = session.server
    if server is None:
        return
    if session.acc.outstanding == 0:
        if (s.idle_transaction_timeout > 0 and not session.acc.dirty and server.status != _IDLE
                and now - session.last_z >= s.idle_transaction_timeout):
            session._abort("25P03", "terminating connection due to idle-in-transaction timeout")
    elif s.query_timeout > 0 and not session._cancel_sent and now - session.query_start >= s.query_timeout:
        session._cancel_sent = True
        session.gw.spawn(send_cancel(server.host, server.port, server.backend_pid, server.backend_key))


def check_idle(session: Any, now: float) -> None:
    """Any client: idle without a server too long, or a message started and not finished in time."""
    s = session.settings
    if (s.client_idle_timeout > 0 and session.server is None and session.last_activity
            and now - session.last_activity >= s.client_idle_timeout):
        session._abort("08P01", "client_idle_timeout")
    elif (session._partial_since and now - session._partial_since >= s.client_message_timeout
          and session._cb_hold is None and not session._holding):  # (not while we hold its reading)
        session.gw.limits.shed_log.shed("client_message_timeout: message not received in time",
                                        getattr(session.stream, "peer", "?"))
        session._abort("08P01", "client_message_timeout: message not received completely in time")


def note_partial(session: Any, progress: bool) -> None:
    """A message started but not complete holds its bytes: time it (``progress``:
    a message was completed by the bytes just read, so the clock restarts)."""
    if session.reader.buffered:
        if progress or not session._partial_since:
            session._partial_since = session.loop.time()
    elif session._partial_since:
        session._partial_since = 0.0
