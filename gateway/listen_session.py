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
  tag is ROLLBACK) drops them, ``ROLLBACK TO SAVEPOINT`` drops the ones after
  the savepoint (:mod:`gateway.listen_tx` follows the savepoints); in a failed
  transaction (``E``) the reply is Postgres' 25P02 error.  A new channel is
  subscribed at the LISTEN already (its notifications held, not delivered
  unless the COMMIT keeps it) and the reply waits for the upstream LISTEN: once
  COMMIT returns, the client listens, as Postgres guarantees;
* ``PREPARE TRANSACTION`` after them is refused as Postgres does (0A000);
* notifications are held while the client is in a transaction and sent just
  before the ReadyForQuery ``I`` that ends it (:mod:`gateway.listen_deliver`).

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
from .listen_core import ListenLimit, apply_actions, listen_head, maybe_listen, parse_listen
from .listen_deliver import Delivery
from .listen_tx import TX_TAGS, TxWatch, split_statements, tx_op

if TYPE_CHECKING:  # pragma: no cover
    from .session import Session

log = logging.getLogger("wirepool.gateway.listen")

_Q, _P, _B, _D, _E, _S, _H = 81, 80, 66, 68, 69, 83, 72
_C, _Z = 67, 90
_IDLE, _INTX, _FAILED = 73, 84, 69
_X, _R = 1, 2  # plan steps: execute actions, raw reply (and _Z: ReadyForQuery)
_RFQ = {_IDLE: m.ready_for_query("I"), _INTX: m.ready_for_query("T"), _FAILED: m.ready_for_query("E")}
_PARSE_COMPLETE, _BIND_COMPLETE, _CLOSE_COMPLETE = b"1\x00\x00\x00\x04", b"2\x00\x00\x00\x04", b"3\x00\x00\x00\x04"
_NO_DATA = b"n\x00\x00\x00\x04"
_DESCRIBE_S = b"t\x00\x00\x00\x06\x00\x00" + _NO_DATA  # no parameters, no rows
_EXTENDED = frozenset((_P, _B, _D, _E, _S, _H, _C))
_MAX_STMTS = 256
_Plan = tuple[list[tuple[int, Any]], dict[bytes, Any], dict[bytes, Any]]


def enabled(session: "Session") -> bool:
    """Transaction mode on ``pg_listen`` or WebSocket (session mode: Postgres does it)."""
    return session.transaction_mode and getattr(session.stream, "kind", "") in ("tcp", "ws")


class Lazy:
    """What a session holds until its first LISTEN (one shared instance: no
    per-session memory for clients that never listen)."""

    __slots__ = ()
    pending = ()
    watch = False

    def take(self, session: "Session", chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        t, st, e = idx[0]
        if t == _Q:
            if listen_head(chunk, st, e) is None:  # not LISTEN/UNLISTEN (listen_core.maybe_listen)
                return False
        elif t == _P:
            j = chunk.find(b"\x00", st, e)
            if j < 0 or listen_head(chunk, j + 1, e) is None:
                return False
        else:
            return False
        lq = session.listen = SessionListen(session)
        return lq.take(session, chunk, idx)

    def replies(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bytes:  # (never: watch is False)
        return chunk

    def close(self) -> None:
        pass


LAZY = Lazy()


class SessionListen(Delivery):
    """One client's channels and its LISTEN/UNLISTEN in flight (hub side: :class:`Delivery`)."""

    __slots__ = ("pending", "ever", "tx", "refuse", "held", "stmts", "portals")

    def __init__(self, session: "Session") -> None:
        super().__init__(session, hub_for(session.pool))  # type: ignore[arg-type]
        #: actions of the open transaction, applied at COMMIT
        self.pending: list[tuple[str, str | None]] = []
        self.ever = False  # a LISTEN was ever committed (Postgres then queues UNLISTEN in a transaction)
        self.tx = TxWatch()  # savepoints, and the statements in flight they come from
        self.refuse = 0  # PREPARE TRANSACTIONs sent after a LISTEN of ours: its reply is cut (replies)
        #: client chunks held while a reply waits for the upstream LISTEN
        self.held: list[tuple[bytes, list[tuple[int, int, int]]]] | None = None
        #: extended protocol: LISTEN statements and portals answered here (name -> actions)
        self.stmts: dict[bytes, list[tuple[str, str | None]]] = {}
        self.portals: dict[bytes, list[tuple[str, str | None]]] = {}

    # ------------------------------------------------------------ client side
    @property
    def watch(self) -> bool:
        """Server replies must go through :meth:`replies`."""
        tx = self.tx
        return bool(self.pending or self.tent or self.notes or self.refuse or tx.groups or tx.saves)

    def take(self, _session: Any, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        """A client chunk: True when answered (or held) here."""
        if self.held is not None:
            self.held.append((chunk, idx))
            return True
        if self._take(chunk, idx):
            return True
        tx = self.tx
        if self.pending or tx.saves or tx.groups:  # savepoints may undo pending actions
            if self.pending and idx[0][0] == _Q and len(idx) == 1 and self._refuse_prepare(chunk, idx):
                return True
            tx.client(chunk, idx)
        return False

    def _refuse_prepare(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
        """PREPARE TRANSACTION after LISTEN/UNLISTEN: Postgres refuses it (0A000,
        after its own checks: prepared transactions disabled, GID in use...) and
        the transaction is over.  The server gets a LISTEN first, so that it
        answers exactly that; the LISTEN's CommandComplete is cut (:meth:`replies`)."""
        s = self.s
        if s.server is None or s.server.status != _INTX or not s.acc.settled():
            return False
        _t, st, e = idx[0]
        stmts = [x for x in split_statements(chunk[st:e - 1]) if x.strip()]
        if len(stmts) != 1 or tx_op(stmts[0]) != ("prep", None):
            return False
        self.refuse += 1
        text = b'LISTEN "wirepool prepare";' + chunk[st:e]  # (with its terminating NUL)
        q = b"Q" + (len(text) + 4).to_bytes(4, "big") + text
        s._from_client(q, [(_Q, 5, len(q))])
        return True

    def _take(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bool:
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
        if self.notes and status == _IDLE:  # (normally sent before the last ReadyForQuery 'I')
            out.append(self._unhold())
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
                futs += self._pend(val)
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
            s.gw.spawn(self._confirm(asyncio.gather(*futs), steps, reply, status == _INTX))
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
        self.ever = self.ever or bool(self.channels)
        return asyncio.gather(*futs) if futs else None

    def _pend(self, actions: list[tuple[str, str | None]]) -> list["asyncio.Future[Any]"]:
        """LISTEN/UNLISTEN in a transaction: applied at COMMIT.  A new channel is
        subscribed now (not delivered before COMMIT), so that once COMMIT
        returns, upstream already LISTENs -- as Postgres guarantees."""
        futs = []
        for verb, ch in actions:
            if verb == "UNLISTEN" and not self.pending and not self.ever:
                continue  # Postgres: "If we couldn't possibly be listening, no need to queue anything"
            self.pending.append((verb, ch))
            if verb == "LISTEN" and ch is not None and ch not in self.channels and ch not in self.tent:
                try:
                    f = self.hub.subscribe(self, ch)
                except ListenLimit:
                    continue  # tried again at COMMIT (and reported there)
                self.tent.add(ch)
                if f is not None:
                    futs.append(f)
        return futs

    async def _confirm(self, fut: "asyncio.Future[Any]", steps: list[tuple[int, Any]], reply: bytes,
                       intx: bool = False) -> None:
        """Reply once upstream LISTENs (or with an error after server_connect_timeout;
        in a transaction the reply stands: the hub LISTENs once it is back)."""
        try:
            await asyncio.wait_for(fut, self.s.settings.server_connect_timeout)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            if not intx:
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
    def replies(self, chunk: bytes, idx: list[tuple[int, int, int]]) -> bytes:
        """Server messages to the client (while :attr:`watch`): COMMIT applies the
        pending actions, ROLLBACK (or a failed COMMIT) drops them, ROLLBACK TO
        drops those after the savepoint; notifications held during the
        transaction go out just before its ReadyForQuery ``I``, as Postgres
        sends them.  Returns the chunk, with those edits."""
        parts: list[bytes] = []
        last = 0
        tx = self.tx
        for t, st, e in idx:
            if t == _C:
                tag = chunk[st:e - 1]
                if tag not in TX_TAGS:
                    if self.refuse and tag == b"LISTEN":  # ours, before a PREPARE TRANSACTION
                        self.refuse -= 1
                        parts.append(chunk[last:st - 5])
                        last = e
                    continue
                op = tx.op(tag)
                if tag == b"COMMIT":
                    self._commit()
                elif tag == b"ROLLBACK":
                    if op is not None and op[0] == "to":
                        self._undo(tx.rollback_to(op[1]))
                    else:
                        self._undo(0)
                elif op is not None and op[0] == "sp":
                    tx.savepoint(op[1], len(self.pending))
                elif op is not None and op[0] == "rel":
                    tx.release(op[1])
            elif t == _Z:
                tx.ready()
                if chunk[st] == _IDLE:
                    if self.pending or self.tent:  # ended with no COMMIT seen: nothing applied
                        self._undo(0)
                    tx.end()
                    if self.notes:
                        parts += (chunk[last:st - 5], self._unhold())
                        last = st - 5
        if not parts:
            return chunk
        parts.append(chunk[last:])
        return b"".join(parts)

    def _commit(self) -> None:
        registered = bool(self.channels)
        actions, self.pending = self.pending, []
        self.tx.saves.clear()
        try:
            self._apply(actions)
        except ListenLimit as exc:  # Postgres would have failed the COMMIT; too late: say so
            self._notice(f"wirepool: LISTEN not applied at COMMIT: {exc.message}")
        self._untent()
        if not registered and self.notes:
            # Postgres' first LISTEN skips what was committed before it (async.c, Exec_ListenPreCommit)
            kept = [x for x in self.notes if isinstance(x, bytes)]
            self.notes = list(kept)
            self.notes_bytes = sum(len(x) for x in kept)

    def _undo(self, keep: int) -> None:
        """Pending actions after the first ``keep`` are rolled back."""
        del self.pending[keep:]
        if not keep:
            self.tx.saves.clear()
        self._untent()

    def _untent(self) -> None:
        """Tentative subscriptions no pending LISTEN needs any more go."""
        want = {ch for verb, ch in self.pending if verb == "LISTEN"}
        for ch in self.tent - want - self.channels:
            self.hub.unsubscribe(self, ch)
        self.tent &= want

    def close(self) -> None:
        """The session ends."""
        self.dead = True
        self.pending = []
        self.tent = set()
        self.notes = []
        self.held = None
        self.hub.unsubscribe_all(self)


def _tags(actions: list[tuple[str, str | None]]) -> bytes:
    return b"".join(m.command_complete(verb) for verb, _ch in actions)
