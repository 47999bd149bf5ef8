"""LISTEN/UNLISTEN of a client session in transaction mode (TCP and WebSocket).

The gateway answers these itself and subscribes the client to the pool's
:class:`gateway.listen.ListenHub`; notifications reach the client whether or
not it is linked to a server (:meth:`SessionListen.deliver`).

What is answered here (:meth:`SessionListen.take`, a hook at the top of
``Session._from_client``): a **simple Query made only of LISTEN / UNLISTEN
statements** (``LISTEN a``, ``LISTEN a; LISTEN b``, ``UNLISTEN *``; comments
and quoted identifiers allowed -- asyncpg, node-postgres/Neon, psql and this
project's driver all send LISTEN this way), and the same as one
**extended-protocol** statement (Parse/Bind/Describe/Execute/Sync of an
unnamed statement: psycopg 3's shape), when the client has nothing else in
flight.  Replies are Postgres' own: CommandComplete ``LISTEN``/``UNLISTEN`` and
ReadyForQuery with the transaction status:

* outside a transaction the change is immediate; the reply waits until the
  hub's upstream connection LISTENs to a new channel (so a NOTIFY sent after
  the reply is delivered), and client bytes arriving meanwhile are held;
* inside a transaction (status ``T``) the actions are kept and applied when a
  CommandComplete ``COMMIT`` goes by; ``ROLLBACK`` (or a failed COMMIT, whose
  tag is ROLLBACK) drops them; in a failed transaction (``E``) the reply is
  Postgres' 25P02 error.

Anything else that contains LISTEN (mixed with other statements in one
Query, pipelined behind other work, a named prepared statement) goes to the
server unchanged, as before: Postgres answers it, and the server gets
``UNLISTEN *`` before it returns to the pool -- no notification is delivered
for it (docs/listen.md).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from driver.protocol import messages as m

from .listen import hub_for
from .listen_core import ListenLimit, Notification, apply_actions, maybe_listen, parse_listen

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

log = logging.getLogger("wirepool.gateway.listen")

_Q, _P, _B, _D, _E, _S, _H = 81, 80, 66, 68, 69, 83, 72
_C, _Z = 67, 90
_IDLE, _INTX, _FAILED = 73, 84, 69
_COMMIT, _ROLLBACK = b"COMMIT\x00", b"ROLLBACK\x00"
_X, _R = 1, 2  # plan steps: execute actions, raw reply (and _Z: ReadyForQuery)
_RFQ = {_IDLE: m.ready_for_query("I"), _INTX: m.ready_for_query("T"), _FAILED: m.ready_for_query("E")}
_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = b"1\x00\x00\x00\x04", b"2\x00\x00\x00\x04", b"3\x00\x00\x00\x04"
_NO_DATA = b"n\x00\x00\x00\x04"
_DESCRIBE_S = b"t\x00\x00\x00\x06\x00\x00" + _NO_DATA  # no parameters, no rows
_EXTENDED = frozenset((_P, _B, _D, _E, _S, _H, _C))
_MAX_STMTS = 256
_BATCH_MAX = 16384  # notification bytes per client write
_Plan = tuple[list[tuple[int, Any]], dict[bytes, Any], dict[bytes, Any]]


def enabled(session: "Session") -> bool:
    """Transaction mode on ``pg_listen`` or WebSocket (session mode: Postgres does it)."""
    return session.transaction_mode and getattr(session.stream, "kind", "") in ("tcp", "ws")


class Lazy:
    """What a session holds until its first LISTEN (one shared instance: no
    per-session memory for clients that never listen)."""

    __slots__ = ()
    pending = ()

    def take(self, session: "Session", chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        t, st, e = idx[0]
        if t == _Q:
            if not maybe_listen(chunk, st, e):
                return False
        elif t == _P:
            j = chunk.find(b"\x00", st, e)
            if j < 0 or not maybe_listen(chunk, j + 1, e):
                return False
        else:
            return False
        lq = session.listen = SessionListen(session)
        return lq.take(session, chunk, idx)

    def close(self) -> None:
        pass


LAZY = Lazy()


class SessionListen:
    """One client's channels and its LISTEN/UNLISTEN in flight."""

    __slots__ = ("s", "hub", "channels", "pending", "_rolled", "held", "limit", "dead", "delivered",
                 "stmts", "portals", "batch", "batch_bytes", "tr")

    def __init__(self, session: "Session") -> None:
        self.s = session
        self.hub = hub_for(session.pool)  # type: ignore[arg-type]
        self.channels: set[str] = set()
        #: actions of the open transaction, applied at COMMIT
        self.pending: list[tuple[str, str | None]] = []
        self._rolled = False
        #: client chunks held while a reply waits for the upstream LISTEN
        self.held: list[tuple[bytes, list[tuple[int, int, int]]]] | None = None
        self.limit = session.settings.listen_queue_bytes
        self.dead = False
        self.delivered = 0
        self.batch: list[bytes] = []  # notifications of the current upstream chunk (flush)
        self.batch_bytes = 0
        self.tr = getattr(session.stream, "transport", None)  # its write buffer counts against limit
        #: extended protocol: LISTEN statements and portals answered here (name -> actions)
        self.stmts: dict[bytes, list[tuple[str, str | None]]] = {}
        self.portals: dict[bytes, list[tuple[str, str | None]]] = {}

    # ------------------------------------------------------------ client side
    def take(self, _session: Any, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        """A client chunk: True when answered (or held) here."""
        if self.held is not None:
            self.held.append((chunk, idx))
            return True
        t, st, e = idx[0]
        if t == _Q:
            if len(idx) != 1 or not maybe_listen(chunk, st, e):
                return False
            actions = parse_listen(chunk[st:e - 1])
            return actions is not None and self._run([(_X, actions), (_Z, None)], None)
        stmts = self.stmts
        if t == _P:
            j = chunk.find(b"\x00", st, e)
            if j >= 0 and maybe_listen(chunk, j + 1, e):
                plan = self._plan(chunk, idx)
                if plan is not None:
                    return self._run(plan[0], plan[1:])
            if stmts:  # a statement of ours redefined upstream: forget ours
                for t2, s2, e2 in idx:
                    if t2 == _P:
                        stmts.pop(chunk[s2:max(chunk.find(b"\x00", s2, e2), s2)], None)
            return False
        if stmts and t in _EXTENDED:
            plan = self._plan(chunk, idx)
            return plan is not None and self._run(plan[0], plan[1:])
        return False

    def _plan(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> _Plan | None:
        """Extended-protocol messages that only prepare, bind, describe,
        execute or close LISTEN statements (named or not) -> the replies; None
        when anything else is in the chunk."""
        stmts, portals = dict(self.stmts), dict(self.portals)
        steps: list[tuple[int, Any]] = []
        for t, st, e in idx:
            if t == _S:
                steps.append((_Z, None))
                continue
            if t == _H:
                continue
            if t in (_D, _C):
                kind, st = chunk[st:st + 1], st + 1
            j = chunk.find(b"\x00", st, e)
            if j < 0:
                return None
            name = chunk[st:j]
            if t == _P:
                k = chunk.find(b"\x00", j + 1, e)
                actions = parse_listen(chunk[j + 1:k]) if k > 0 else None
                if actions is None or len(actions) != 1:
                    return None
                stmts[name] = actions
                steps.append((_R, _PARSE_COMPLETE))
            elif t == _B:
                k = chunk.find(b"\x00", j + 1, e)
                sname = chunk[j + 1:k] if k > 0 else None
                if sname not in stmts:
                    return None
                portals[name] = stmts[sname]
                steps.append((_R, _BIND_COMPLETE))
            elif t == _E:
                if name not in portals:
                    return None
                steps.append((_X, portals[name]))
            elif t == _D or t == _C:
                table = stmts if kind == b"S" else portals if kind == b"P" else None
                if table is None or name not in table:
                    return None
                if t == _C:
                    del table[name]
                    steps.append((_R, _CLOSE_COMPLETE))
                else:
                    steps.append((_R, _DESCRIBE_S if kind == b"S" else _NO_DATA))
            else:
                return None
        if len(stmts) > _MAX_STMTS:
            return None
        return steps, stmts, portals

    def _run(self, steps: list[tuple[int, Any]], keep: tuple[Any, ...] | None) -> bool:
        """Answer ``steps`` as Postgres would; False (untouched) when the
        client has something in flight or the transaction failed (the server
        answers: 25P02)."""
        s = self.s
        acc = s.acc
        if acc.outstanding or acc.dirty or s._pending:
            return False  # replies still due ahead of it: goes upstream (docs/listen.md)
        server = s.server
        status = server.status if server is not None else _IDLE
        if status == _FAILED:
            return False
        if keep is not None:
            self.stmts, self.portals = keep
        s.last_activity = s.loop.time()
        out: list[bytes] = []
        futs: list[asyncio.Future[Any]] = []
        failed = False
        for kind, val in steps:
            if kind == _Z:
                out.append(_RFQ[status])
                failed = False
                if keep is not None:
                    self.stmts.pop(b"", None)
                    self.portals.clear()
            elif failed:
                continue  # skipped until Sync, as Postgres does after an error
            elif kind == _R:
                out.append(val)
            elif status == _INTX:
                self.pending += val
                out.append(_tags(val))
            else:
                try:
                    f = self._apply(val)
                except ListenLimit as exc:
                    out.append(m.error(exc.sqlstate, exc.message))
                    failed = True
                    continue
                if f is not None:
                    futs.append(f)
                out.append(_tags(val))
        reply = b"".join(out)
        if not futs:
            self._reply(reply)
        else:
            self.held = []
            s.gw.spawn(self._confirm(asyncio.gather(*futs), steps, reply))
        return True

    def _apply(self, actions: list[tuple[str, str | None]]) -> "asyncio.Future[Any] | None":
        add, remove = apply_actions(self.channels, actions)
        hub = self.hub
        done: list[str] = []
        futs = []
        try:
            for ch in sorted(add):
                f = hub.subscribe(self, ch)
                done.append(ch)
                if f is not None:
                    futs.append(f)
        except ListenLimit:
            for ch in done:
                hub.unsubscribe(self, ch)
            raise
        for ch in remove:
            hub.unsubscribe(self, ch)
        self.channels = (self.channels | add) - remove
        return asyncio.gather(*futs) if futs else None

    async def _confirm(self, fut: "asyncio.Future[Any]", steps: list[tuple[int, Any]], reply: bytes) -> None:
        """Reply once upstream LISTENs (or with an error after server_connect_timeout)."""
        try:
            await asyncio.wait_for(fut, self.s.settings.server_connect_timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            for kind, val in steps:
                if kind == _X:
                    add, _rm = apply_actions(set(), val)
                    for ch in add:
                        self.hub.unsubscribe(self, ch)
                    self.channels -= add
            reply = m.error("08006", "LISTEN: the gateway's listener connection to the database is not "
                                     f"available ({self.hub.last_error or 'timeout'})") + _RFQ[_IDLE]
        if self.dead or self.s._finished:
            return
        self._reply(reply)
        held, self.held = self.held or [], None
        s = self.s
        try:
            while held:
                chunk, idx = held.pop(0)
                if self.held is not None:  # another LISTEN is waiting: keep the order
                    self.held.append((chunk, idx))
                elif not s._from_client(chunk, idx):  # (may hold again: order kept above)
                    s._abort(None, None)
                    return
        except Exception as exc:  # ProtocolError, PoolError: as in the session loop
            s._abort(getattr(exc, "sqlstate", "08P01"), getattr(exc, "message", None) or str(exc))

    def _reply(self, data: bytes) -> None:
        self.s._send_or_queue(data)

    # ------------------------------------------------------------ server side
    def replies(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> None:
        """Server messages to the client while actions are pending: COMMIT
        applies them, the end of a rolled-back or failed transaction drops them."""
        for t, st, e in idx:
            if t == _C:
                tag = chunk[st:e]
                if tag == _COMMIT:
                    self._commit()
                elif tag == _ROLLBACK:
                    self._rolled = True
            elif t == _Z:
                if chunk[st] == _IDLE:
                    self.pending = []
                self._rolled = False
            if not self.pending:
                return

    def _commit(self) -> None:
        actions, self.pending = self.pending, []
        try:
            self._apply(actions)
        except ListenLimit as exc:  # Postgres would have failed the COMMIT; too late: say so
            self._notice(f"wirepool: LISTEN not applied at COMMIT: {exc.message}")

    # ------------------------------------------------- subscriber (hub side)
    def deliver(self, n: Notification) -> bool:
        """Queued in ``batch``; the hub calls :meth:`flush` after the upstream
        chunk (one write -- one WebSocket message -- per chunk, not per notification)."""
        if self.dead:
            return True
        wire = n.wire
        if not wire:
            wire = n.wire = m.notification_response(n.pid, n.channel, n.payload)
        batch = self.batch
        if not batch:
            self.hub.touched.append(self)
        batch.append(wire)
        self.batch_bytes += len(wire)
        self.delivered += 1
        if self.batch_bytes >= _BATCH_MAX:
            self.flush()  # large chunk: write as we go, so the check below sees the socket's progress
        tr = self.tr
        unsent: int = self.batch_bytes + self.s._out_bytes + (tr.get_write_buffer_size() if tr is not None else 0)
        return bool(unsent <= self.limit)

    def flush(self) -> None:
        batch = self.batch
        if not batch or self.dead:
            batch.clear()
            self.batch_bytes = 0
            return
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        batch.clear()
        self.batch_bytes = 0
        s = self.s
        if s._direct is not None and not s._out:
            try:
                s._direct(data)
            except Exception:  # client gone: its session is ending
                pass
        else:
            s._send_or_queue(data)

    def gap(self, message: str) -> None:
        if not self.dead:
            self.flush()
            self._notice(message)

    def _notice(self, message: str) -> None:
        self.s._send_or_queue(m.notice_response({"S": "WARNING", "V": "WARNING", "C": "01000", "M": message}))

    def overflow(self) -> None:
        """Too slow: FATAL 53400 after what it has been sent, then disconnect."""
        self.dead = True
        self.batch.clear()
        s = self.s
        log.warning("%r: disconnected: more than listen_queue_bytes = %d bytes of notifications unsent",
                    s, self.limit)
        fatal = m.error("53400", f"terminating connection: the client did not read its notifications "
                                 f"(more than listen_queue_bytes = {self.limit} bytes unsent)", severity="FATAL")
        s._out.clear()
        s._out_bytes = 0
        send = getattr(s.stream, "send_nowait", None)
        try:
            if send is not None:
                send(fatal)
        except Exception:
            pass
        s._abort(None, None)
        abort = getattr(s.stream, "abort", None)
        if abort is not None:  # a peer that never reads would keep the socket open for ever
            s.loop.call_later(10.0, abort)

    def close(self) -> None:
        """The session ends."""
        self.dead = True
        self.pending = []
        self.held = None
        self.hub.unsubscribe_all(self)


def _tags(actions: list[tuple[str, str | None]]) -> bytes:
    return b"".join(m.command_complete(verb) for verb, _ch in actions)
