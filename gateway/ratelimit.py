"""Failed-login throttling: exponential delay per source address and per user.

Every failed authentication (wrong password, unknown user, bad API token) is
counted against two keys: the client's source address (the IP, without the
port; IPv6 by /64) and the user name it tried.  Once a key has more than
``auth_failure_free`` failures, each new login attempt on that key waits

    min(auth_failure_max_delay, auth_failure_delay * 2 ** (failures - auth_failure_free - 1))

seconds *before* its credentials are checked (the larger of the two keys'
delays applies).  Attempts from one throttled address are spaced by that delay
(many parallel connections do not multiply the rate), and an attempt that would
have to wait more than ``auth_failure_max_delay`` is refused at once (08004,
HTTP 429) without a password check -- so a flood from one address costs an
accept and a startup packet per attempt, not a PBKDF2.  A key forgets its failures after ``auth_failure_window``
seconds without a new one; a successful login clears the user's key (not the
address's: a client must not be able to launder a guessing run through an
account it owns).

The delay costs a sleeping coroutine, not CPU, so a flood of wrong passwords
from one address slows itself down without slowing anyone else; the number of
keys remembered is bounded (least recently failed forgotten first).

Trade-off (documented in docs/security.md): a stranger who floods a *user
name* delays that user's own logins by up to ``auth_failure_max_delay``; they
cannot lock the user out.
"""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections import OrderedDict
from typing import Callable

__all__ = ["LoginThrottle", "source_of", "compact_name"]

#: Most keys remembered (addresses + user names); ~200 bytes each (names: compact_name).
MAX_KEYS = 65536


def compact_name(name: str) -> str:
    """A client-given name as a key of bounded size, for the caches that count
    by entries: the name itself up to 64 characters (every PostgreSQL role
    name fits: NAMEDATALEN is 64 bytes), else a digest of it (65 characters,
    so never equal to a name kept as it is).  A user name may be 16 KiB long
    (HTTP headers) and the caches hold tens of thousands of keys."""
    if len(name) <= 64:
        return name
    return "#" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()


def source_of(peer: str) -> str:
    """``"1.2.3.4:5678"`` / ``"[::1]:5678"`` -> the address; IPv6 addresses are
    grouped by /64 (one host usually owns a whole /64)."""
    host = peer
    if peer.count(":") == 1 and not peer.startswith("["):
        # IPv4 "a.b.c.d:port": ipaddress would give back the same text (it accepts
        # only the canonical dotted quad) or reject it (then the text is kept too)
        return peer.rpartition(":")[0]
    if peer.startswith("["):
        host = peer[1:peer.find("]")] if "]" in peer else peer
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return host
    if addr.version == 6:
        return str(ipaddress.ip_network(f"{addr}/64", strict=False))
    return str(addr)


class LoginThrottle:
    """Counts failed logins per key and computes the delay before the next attempt."""

    def __init__(self, *, free: int = 5, delay: float = 0.1, max_delay: float = 5.0,
                 window: float = 300.0, max_keys: int = MAX_KEYS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.delay = delay
        self.max_delay = max_delay
        self.window = window
        self.max_keys = max_keys
        self._clock = clock
        #: key -> [failures, time of the last failure, start of the last admitted attempt]
        self._keys: OrderedDict[str, list[float]] = OrderedDict()
        # counters (metrics, tests)
        self.failures = 0
        self.delayed = 0
        self.refused = 0

    @property
    def enabled(self) -> bool:
        return self.delay > 0 and self.max_delay > 0

    def _count(self, key: str, now: float) -> float:
        entry = self._keys.get(key)
        if entry is None:
            return 0
        if now - entry[1] > self.window:
            del self._keys[key]
            return 0
        return entry[0]

    def _delay(self, n: float) -> float:
        over = n - self.free
        if over <= 0:
            return 0.0
        if over > 64:
            return self.max_delay
        return float(min(self.max_delay, self.delay * 2 ** (over - 1)))

    def delay_for(self, source: str, user: str | None) -> float:
        """The delay the next attempt from ``source`` for ``user`` would get
        (ignoring attempts already queued)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        n = self._count("a:" + source, now)
        if user is not None:
            n = max(n, self._count("u:" + compact_name(user), now))
        return self._delay(n)

    def admit(self, source: str, user: str | None) -> float | None:
        """Reserve this attempt's turn: the seconds it must wait before its
        credentials are checked, or None to refuse it at once.

        Attempts from a throttled address are *spaced*: each starts at least
        its delay after the previous one, so concurrent connections do not
        multiply the rate; one that would wait longer than ``max_delay`` is
        refused without any password check.  The user's delay is applied to
        each attempt on its own (never refused: the real user must still get in)."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        wait = 0.0
        akey = "a:" + source
        d_src = self._delay(self._count(akey, now))
        if d_src > 0:
            entry = self._keys[akey]
            wait = max(0.0, entry[2] - now) + d_src  # after the attempts already queued
            if wait > self.max_delay + 1e-6:
                self.refused += 1
                entry[1] = now  # a sustained flood keeps the address throttled
                return None
            entry[2] = now + wait
        if user is not None:
            wait = max(wait, self._delay(self._count("u:" + compact_name(user), now)))
        if wait > 0:
            self.delayed += 1
        return wait

    def failed(self, source: str, user: str | None) -> None:
        self.failures += 1
        if not self.enabled:
            return
        now = self._clock()
        for key in ("a:" + source, None if user is None else "u:" + compact_name(user)):
            if key is None:
                continue
            n = self._count(key, now)
            entry = self._keys.get(key)
            self._keys[key] = [n + 1, now, entry[2] if entry is not None else 0.0]
            self._keys.move_to_end(key)
        while len(self._keys) > self.max_keys:
            self._keys.popitem(last=False)

    def succeeded(self, source: str, user: str | None) -> None:
        if user is not None:
            self._keys.pop("u:" + compact_name(user), None)

    def __len__(self) -> int:
        return len(self._keys)
