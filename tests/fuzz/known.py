"""Failures the fuzzer finds that are known and being fixed outside tests/fuzz.

A gateway traceback whose text contains every string of a key is reported by
the campaign as *known* (listed, not failing), and the inputs saved for it
are listed in ``regressions/known.json`` so tests/fuzz/test_regressions.py
marks their replay ``xfail``: once the fix lands the replay XPASSes and the
entry must be removed here and there.  Hangs: :func:`known_hang`.
"""

from __future__ import annotations

KNOWN_TRACEBACKS: dict[tuple[str, ...], str] = {
    ("RecursionError", "json"): "issue 11 F6: deeply nested JSON in POST /sql gives a 500 (fix: helper hostile)",
    ("client.assign(server)", "rewrite_frontend", "ProtocolError"):
        "issue 11 F2: a malformed message from a waiting client raises outside the session (fix: helper hostile)",
    ("'h' format requires",):
        "issue 11 F7: more than 32,767 parameters give a traceback (fix: helper hostile)",
    ("strings sent to PostgreSQL cannot contain NUL bytes",):
        "issue 11 F8: a NUL byte in Wirepool-Params gives a traceback (fix: helper hostile)",
}


def known_reason(traceback_text: str) -> str | None:
    for parts, reason in KNOWN_TRACEBACKS.items():
        if all(p in traceback_text for p in parts):
            return reason
    return None


_EXTENDED = set(b"PBDECH")


def known_hang(target: str, data: bytes) -> str | None:
    """A hang of a known, unfixed kind (see KNOWN_TRACEBACKS), or None."""
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
                return ("issue 11 F3: POST /pg waits for the ReadyForQuery of a Query Postgres skipped after "
                        "an extended-protocol error (fix: helper hostile)")
            pos += 1 + n
    return None
