"""CancelRequests routed to the process holding the session (docs/scaling.md).

A CancelRequest is a new connection, and a load balancer or ``SO_REUSEPORT``
sends it anywhere.  As in PgBouncer 1.23's peering, the cancel key a client
gets names its owner, so the process the request lands on sends it straight
there over the internal authenticated channel (gateway/cluster.py):

* **The key.**  The BackendKeyData of a clustered process (workers, or
  ``peer_id``) is, in its 64 bits::

      process id = 0 | 1 | worker:w | random:30-w    (bit 30 set: above any real pid)
      secret key = peer_id:14 | random:18            (with peer_id; else random:32)

  ``w`` = bits of ``workers - 1`` (at most 8), so a key decodes with the layout
  of the instance that issued it.  ``peer_id`` is 1..16383 as PgBouncer's
  (which puts it in bytes 1-2 of its key); it goes in the secret here because
  the process id is this process's session table key and must keep enough
  random bits: 48 - w random bits in all (PgBouncer's peering keeps 45).
  Session-mode keys carrying the server's real pid name no owner.
* **Routing.**  Here: cancel here.  Another ``peer_id``: ``POST /internal/cancel``
  to its URL in ``[gateway.peers]``; that instance passes it to its worker.
  Another worker of this instance: over its unix socket.  A key naming no
  owner: every worker and every peer is asked.  Each hop answers whether it
  found the session; a forwarded request is never forwarded to another
  instance again (no loops).
* **Takeover.**  A key nobody of this generation holds goes to the predecessor
  still draining (gateway/takeover.py), as a plain ``/pg/cancel``.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import TYPE_CHECKING, Any

from .config_values import MAX_PEER_ID
from .http import HttpRequest, HttpResponse

if TYPE_CHECKING:  # pragma: no cover
    from .cluster import Cluster

log = logging.getLogger("wirepool.peers")

MARK = 1 << 30
#: peer_id: the top 14 bits of the secret key (PgBouncer's range, 1..16383)
PEER_BITS = MAX_PEER_ID.bit_length()
PEER_SHIFT = 32 - PEER_BITS
H_HOP = "wirepool-cancel-hop"
CANCEL_TIMEOUT = 5.0


def worker_bits(count: int) -> int:
    return (count - 1).bit_length() if count > 1 else 0


def key_layout(peer_id: int, index: int, count: int) -> tuple[int, int, int, int]:
    """(fixed bits, random-bits mask) of the process ids worker ``index`` of ``count``
    issues, then the same for its secret keys (unsigned 32 bits)."""
    free = 30 - worker_bits(count)
    key_prefix, key_mask = (peer_id << PEER_SHIFT, (1 << PEER_SHIFT) - 1) if peer_id else (0, 0xFFFFFFFF)
    return MARK | (index << free), (1 << free) - 1, key_prefix, key_mask


def key_owner(pid: int, secret: int, count: int, peered: bool) -> tuple[int, int] | None:
    """(peer_id, worker index) a key names, with this instance's ``count`` (and
    ``peered``: it has a peer_id; its keys carry one); None: no owner."""
    if not (MARK <= pid < 1 << 31):
        return None
    wb = worker_bits(count)
    peer = ((secret & 0xFFFFFFFF) >> PEER_SHIFT) if peered else 0
    return peer, (pid >> (30 - wb)) & ((1 << wb) - 1)


class CancelRouter:
    """Replaces ``gateway.handle_cancel`` of a clustered process."""

    def __init__(self, cluster: "Cluster") -> None:
        self.cluster = cluster
        self.gw = cluster.gw
        self.local_cancel = self.gw.handle_cancel
        self.peer_id = self.gw.settings.peer_id
        (self.gw.pid_prefix, self.gw.pid_mask,
         self.gw.key_prefix, self.gw.key_mask) = key_layout(self.peer_id, cluster.index, cluster.count)
        self.gw.handle_cancel = self.handle_cancel
        #: requests passed on, by where: "worker", "peer", "predecessor" (metrics, tests)
        self.forwarded = {"worker": 0, "peer": 0, "predecessor": 0}

    # ------------------------------------------------------------ entry points
    async def handle_cancel(self, process_id: int, secret_key: int) -> None:
        """A CancelRequest from a client (pg_listen, ``/pg/cancel``, the /pg timeouts)."""
        if await self._here(process_id, secret_key):
            return
        key = struct.pack("!II", process_id & 0xFFFFFFFF, secret_key & 0xFFFFFFFF)
        owner = key_owner(process_id, secret_key, self.cluster.count, bool(self.peer_id))
        found = False
        if owner is None:
            found = await self._anyone(key, peers=True)
        else:
            peer, worker = owner
            url = self._peer_url(peer)
            if peer != self.peer_id and url is not None:
                found = await self._ask(url, key, "peer")
            elif peer == self.peer_id and worker != self.cluster.index and worker < self.cluster.count:
                found = await self._ask(self.cluster.ctx.socket_path(worker), key, "worker")
        if not found:
            await self._predecessor(process_id, secret_key)

    async def route(self, req: HttpRequest) -> HttpResponse:
        """``POST /internal/cancel`` (8-byte key): from another worker (``hop: worker``,
        look here only) or another instance (``hop: peer``, look in this instance)."""
        if not self.cluster.is_internal(req) or len(req.body) != 8:
            return HttpResponse(404, b"not found\n")
        pid, key = struct.unpack("!II", req.body)
        found = await self._here(pid, key)
        if not found and req.header(H_HOP) == "peer":
            owner = key_owner(pid, key, self.cluster.count, bool(self.peer_id))
            if owner is None:
                found = await self._anyone(req.body, peers=False)
            elif owner[1] != self.cluster.index and owner[1] < self.cluster.count:
                found = await self._ask(self.cluster.ctx.socket_path(owner[1]), req.body, "worker")
            if not found:
                found = await self._predecessor(pid, key - (1 << 32) if key >= 1 << 31 else key)
        return HttpResponse(200, b"1" if found else b"0", "text/plain")

    # ------------------------------------------------------------ hops
    async def _here(self, pid: int, key: int) -> bool:
        s = self.gw.sessions.get(pid)
        if s is None or s.secret_key & 0xFFFFFFFF != key & 0xFFFFFFFF:
            return False
        await self.local_cancel(pid, s.secret_key)
        return True

    def _peer_url(self, peer: int) -> str | None:
        return dict(self.gw.settings.peers).get(peer)

    async def _ask(self, target: str, key: bytes, hop: str) -> bool:
        try:
            status, _, body = await self.cluster.request(target, "POST", "/internal/cancel", [(H_HOP, hop)], key,
                                                         CANCEL_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ValueError) as e:
            log.warning("cancel request: %s %s did not answer: %s", hop, target, e)
            return False
        self.forwarded[hop] += 1
        return status == 200 and body == b"1"

    async def _anyone(self, key: bytes, *, peers: bool) -> bool:
        c = self.cluster
        asks = [self._ask(c.ctx.socket_path(i), key, "worker") for i in range(c.count) if i != c.index]
        if peers:
            asks += [self._ask(url, key, "peer") for pid, url in self.gw.settings.peers if pid != self.peer_id]
        return any(await asyncio.gather(*asks)) if asks else False

    async def _predecessor(self, pid: int, key: int) -> bool:
        pred: Any = self.cluster.predecessor
        if pred is None or not pred.alive:
            return False
        self.forwarded["predecessor"] += 1
        return bool(await pred.cancel(pid, key))
