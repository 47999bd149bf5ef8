"""What each server connection has prepared (sans-I/O).

Part of :mod:`gateway.prepared` (which re-exports every public name here):
:class:`ServerStatements` is an LRU of the gateway names one server connection
has prepared, bounded by ``max_prepared_statements``, with the pipeline
bookkeeping that says which of them surely exist; :func:`server_statements`
attaches one to a server connection object, :func:`forget_statements` empties
it when the gateway resets the server.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from typing import Any

__all__ = ["ServerStatements", "server_statements", "forget_statements"]


class ServerStatements:
    """What one server connection has prepared (gateway names), as an LRU.

    ``lru`` maps name -> pipeline segment in which it was (assumed) created;
    ``changed`` records the segment of each name's last change while
    segments are unanswered; ``maybe`` holds names that may or may not exist
    (to be closed before any re-creation).  ``sent``/``acked`` count Syncs
    forwarded / answered.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.lru: OrderedDict[bytes, int] = OrderedDict()
        self.maybe: set[bytes] = set()
        self.changed: dict[bytes, int] = {}
        self.sent = 0
        self.acked = 0
        #: registry clock when this server's statements were last checked for staleness
        self.seen = 0

    def __len__(self) -> int:
        return len(self.lru)

    def __contains__(self, name: object) -> bool:
        return name in self.lru

    def forget_all(self) -> None:
        """Every statement may be gone (DISCARD ALL / DEALLOCATE ALL ran or may run)."""
        self.maybe.update(self.lru)
        self.lru.clear()

    def retire(self, name: bytes) -> None:
        """``name`` is stale or broken on this server: Close it before its next use."""
        if self.lru.pop(name, None) is not None or name not in self.maybe:
            self.maybe.add(name)

    def reset(self) -> None:
        """The server has no statements at all (e.g. after a reset query)."""
        self.lru.clear()
        self.maybe.clear()
        self.changed.clear()
        self.acked = self.sent


_SERVERS: "weakref.WeakKeyDictionary[Any, ServerStatements]" = weakref.WeakKeyDictionary()


def server_statements(server: Any, limit: int) -> ServerStatements:
    """The :class:`ServerStatements` of a server connection object (created
    on first use, dropped with the object)."""
    st = _SERVERS.get(server)
    if st is None:
        st = _SERVERS[server] = ServerStatements(limit)
    return st


def forget_statements(server: Any) -> None:
    """The server's named statements are gone (DISCARD ALL sent by the
    gateway between clients): the next use re-Parses them."""
    st = _SERVERS.get(server)
    if st is not None:
        st.reset()
