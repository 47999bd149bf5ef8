"""Failures the fuzzer finds that are known and being fixed outside tests/fuzz.

A gateway traceback whose text contains every string of a key is reported by
the campaign as *known* (listed, not failing), and the inputs saved for it
are listed in ``regressions/known.json`` so tests/fuzz/test_regressions.py
marks their replay ``xfail(strict=True)``: once the fix lands the replay
passes, the strict xfail fails, and the entry must be removed here.
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
