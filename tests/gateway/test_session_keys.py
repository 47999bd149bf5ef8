"""BackendKeyData issued by Gateway.register_session."""

from __future__ import annotations

from gateway.config import parse_config
from gateway.core import Gateway


class _S:
    process_id = 0
    secret_key = 0


def test_register_session_keys_unique_positive_int31() -> None:
    gw = Gateway(parse_config({"gateway": {"auth_type": "trust"},
                               "databases": {"d": {"user": "u", "port": 5432}},
                               "users": {"u": {"password": "x"}}}))
    sessions = [_S() for _ in range(2000)]
    for s in sessions:
        gw.register_session(s)  # type: ignore[arg-type]
    pids = {s.process_id for s in sessions}
    assert len(pids) == len(sessions)
    assert all(0 < p <= 0x7FFFFFFF for p in pids)
    assert all(-2**31 <= s.secret_key < 2**31 for s in sessions)
    assert len({s.secret_key for s in sessions}) > 1900  # random, not constant
    for s in sessions:
        assert gw.sessions[s.process_id] is s
        gw.unregister_session(s)  # type: ignore[arg-type]
    assert not gw.sessions
