"""Failures the fuzzer finds that are known and being fixed outside tests/fuzz.

A gateway traceback whose text contains every string of a key is reported by
the campaign as *known* (listed, not failing), and the inputs saved for it
are listed in ``regressions/known.json`` so tests/fuzz/test_regressions.py
marks their replay ``xfail``: once the fix lands the replay XPASSes and the
entry must be removed here and there.  Hangs: :func:`known_hang`.
"""

from __future__ import annotations

#: (substrings..., reason).  Found and since fixed (their inputs stay in regressions/):
#: issue 11 F2 (malformed message from a waiting client), F6 (deep JSON in /sql),
#: F7 (> 32,767 parameters), F8 (NUL in Wirepool-Params) -- fixed by helper hostile.
KNOWN_TRACEBACKS: dict[tuple[str, ...], str] = {}


def known_reason(traceback_text: str) -> str | None:
    for parts, reason in KNOWN_TRACEBACKS.items():
        if all(p in traceback_text for p in parts):
            return reason
    return None


#: Open: a linked client's query that never reaches Postgres.  Seen in about one
#: 25 s CI slice in four (none in a 180 s run): the probe's ``select 1`` (asyncpg,
#: pg_listen, transaction mode) times out after 5 s while its server -- and the
#: servers of two /sql clients linked in the same second -- sit idle in Postgres
#: (``ClientRead``, last statement the previous client's ``COMMIT;``): the
#: gateway holds the clients' bytes or never reads the replies.  The probe's next
#: connection is served at once.  One cause is fixed (a server left skipping to
#: a Sync went back to the pool: test_skip_till_sync.py); a rarer variant
#: remains (1 slice in 5 after the fix).  Reported as known (listed with the backends'
#: state, not failing) until it is fixed: docs/fuzzing.md, "Open".
PROBE_STALL = "probe select 1 stalled while its server sat idle (open, docs/fuzzing.md)"


def known_hang(target: str, data: bytes) -> str | None:
    """A hang of a known, unfixed kind (reported, not failing), or None.

    None open.  Fixed: issue 11 F3 (``POST /pg`` waited for the ReadyForQuery of
    a Query Postgres skipped after an extended-protocol error; helper hostile),
    and its last variant, a Flush with a body (Postgres fails it and skips till
    Sync; the gateway now ends that client with 08P01, gateway/accounting.py)."""
    return None
