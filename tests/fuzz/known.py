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


def known_hang(target: str, data: bytes) -> str | None:
    """A hang of a known, unfixed kind (reported, not failing), or None.

    None open.  Fixed: issue 11 F3 (``POST /pg`` waited for the ReadyForQuery of
    a Query Postgres skipped after an extended-protocol error; helper hostile),
    and its last variant, a Flush with a body (Postgres fails it and skips till
    Sync; the gateway now ends that client with 08P01, gateway/accounting.py).
    The probe's stalled ``select 1`` (a server released while it skipped to a
    Sync its client had not sent; gateway/accounting.py, docs/fuzzing.md) is
    fixed too: every probe error fails the campaign."""
    return None
