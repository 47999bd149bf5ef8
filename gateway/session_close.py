"""The end of a client session (``Session.run`` ends here): flush what is
queued and close the stream, and make a still-linked server safe for the
next client -- rolled back, reset, cancelled or closed, never returned
dirty (docs/pooling-semantics.md)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from driver.protocol import messages as m

from .cancel import send_cancel
from .server_sync import DISCARD_ALL

if TYPE_CHECKING:  # pragma: no cover
    from .server import ServerConnection
    from .session import Session

_IDLE = 73  # 'I'
_ROLLBACK = m.query("ROLLBACK")


async def cleanup(s: Session) -> None:
    """The session is over (its task's last step): leave the pool, return or
    close its server, flush the queued replies (5 s at most), close the stream."""
    s._finished = True
    gw = s.gw
    gw.unregister_session(s)
    if s.cache is not None:
        s.cache.close()
    if s.counted:
        s.counted = False
        gw.n_clients -= 1
    server = s.server
    if server is not None:
        s.server = None
        skipping = s.prepared is not None and s.prepared.skips_to_sync
        if s.prepared is not None:
            s.prepared.unlink()
        return_server(s, server, skipping)
    if s.prepared is not None:
        s.prepared.client.clear()
    if s.pool is not None:
        s.pool.remove_client(s)
    if s.listen is not None:
        s.listen.close()
    # flush what is queued, then close
    try:
        if s._writer is not None:
            s._writer_stop = True
            w = s._wake
            if w is not None and not w.done():
                s._wake = None
                w.set_result(None)
            try:
                await asyncio.wait_for(asyncio.shield(s._writer), 5.0)
            except Exception:  # (asyncio.TimeoutError included)
                s._writer.cancel()
        elif s._out:
            data = b"".join(s._out)
            s._out.clear()
            await asyncio.wait_for(s.stream.send(data), 5.0)
    except BaseException:  # client already gone; nothing else to do
        pass
    try:
        await s.stream.close()
    except Exception:  # pragma: no cover
        pass


def return_server(s: Session, server: ServerConnection, skipping: bool = False) -> None:
    """The client leaves while linked: make the server safe for others.
    ``skipping``: the server discards everything up to a Sync the client
    never sent (after an extended-protocol error): closed, like a busy one."""
    pool = s.pool
    assert pool is not None
    server.client = None
    if s._paused is server:
        s._paused = None
        if server.transport is not None:
            server.transport.resume_reading()
    if server.closed:
        pool.discard(server)
        return
    if skipping or s.acc.busy():
        # Mid-result or mid-pipeline: cancel whatever runs, then close it.
        if s.acc.outstanding:
            s.gw.spawn(send_cancel(server.host, server.port, server.backend_pid, server.backend_key))
        pool.discard(server)
        return
    parts: list[bytes] = []
    if server.status != _IDLE:
        parts.append(_ROLLBACK)
    if not s.transaction_mode and s.settings.server_reset_query:
        parts.append(m.query(s.settings.server_reset_query))
        server.reset_state()
    else:
        if s.track is not None and s.track.marked:
            # state left by a transaction that did not end cleanly: not probed
            s._reset_next = [DISCARD_ALL]
        parts += s._reset_parts(server)
        if server.pending_owner is s:  # its temp objects etc.: nobody will come back for them
            parts += server.pending
            server.pending = []
            server.pending_owner = None
    if parts:
        pool.reset_and_release(server, b"".join(parts), len(parts))
    else:
        pool.release(server)
