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


_EXTENDED = set(b"PBDECH")


def known_hang(target: str, data: bytes) -> str | None:
    """A hang of a known, unfixed kind, or None."""
    if target == "pg":
        # issue 11 F3: an error in an extended-protocol message makes Postgres skip
        # a following Query until Sync; the /pg executor waits for its ReadyForQuery
        pos, extended = 0, False
        while len(data) - pos >= 5:
            t, n = data[pos], int.from_bytes(data[pos + 1:pos + 5], "big")
            if n < 4:
                break
            if t in _EXTENDED:
                extended = True
            elif t == ord("S"):
                extended = False
            elif t == ord("Q") and extended:
                return F3
            pos += 1 + n
    return None


F3 = ("issue 11 F3: POST /pg waits (http_request_timeout, then a cancel) for the ReadyForQuery of a Query "
      "Postgres skipped after an extended-protocol error (fix: helper hostile)")
