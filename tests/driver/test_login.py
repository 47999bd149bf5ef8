"""driver.login: several hosts tried in order and target_session_attrs, side by side with asyncpg."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

import driver
from tests.pgcluster import PgCluster, free_port

USER, PASSWORD = PgCluster.SCRAM_USER, PgCluster.SCRAM_PASSWORD


async def _both(**kw: Any) -> list[tuple[str, Any]]:
    """Connect with asyncpg and with the driver using ``kw``: (outcome, detail) per client."""
    out: list[tuple[str, Any]] = []
    for mod in (asyncpg, driver):
        try:
            conn = await mod.connect(**kw)  # type: ignore[attr-defined]
        except Exception as e:
            out.append(("error", type(e).__name__))
            continue
        try:
            out.append(("ok", await conn.fetchval("SELECT inet_server_port()")))
        finally:
            await conn.close()
    return out


async def test_dead_hosts_are_skipped_like_asyncpg(pg: PgCluster) -> None:
    dead1, dead2 = free_port(), free_port()
    kw = dict(user=USER, password=PASSWORD, database=pg.DATABASE, timeout=10)
    res = await _both(host=[pg.host, pg.host, pg.host], port=[dead1, dead2, pg.port], **kw)
    assert res == [("ok", pg.port), ("ok", pg.port)]
    res = await _both(dsn=f"postgresql://{USER}:{PASSWORD}@{pg.host}:{dead1},{pg.host}:{pg.port}"
                      f"/{pg.DATABASE}", timeout=10)
    assert res == [("ok", pg.port), ("ok", pg.port)]
    res = await _both(dsn=f"postgresql://{USER}:{PASSWORD}@/{pg.DATABASE}"
                      f"?host={pg.host},{pg.host}&port={dead1},{pg.port}", timeout=10)
    assert res == [("ok", pg.port), ("ok", pg.port)]
    # every host dead: the last host's connection error (an OSError), as with one dead host
    res = await _both(host=[pg.host, pg.host], port=[dead1, dead2], **kw)
    assert res[0] == ("error", "ConnectionRefusedError"), res
    assert res[1] == (await _both(host=pg.host, port=dead2, **kw))[1] == ("error", "TransportError")
    assert issubclass(driver.transport.TransportError, OSError)


async def test_a_login_error_is_not_skipped(pg: PgCluster) -> None:
    """A wrong password on the first host is raised, not hidden by the next host (asyncpg too)."""
    res = await _both(host=[pg.host, pg.host], port=[pg.port, pg.port], user=USER,
                      password="wrong", database=pg.DATABASE, timeout=10)
    assert res == [("error", "InvalidPasswordError"), ("error", "InvalidPasswordError")]


@pytest.mark.parametrize("attrs,read_only,expected", [
    ("read-only", "on", "ok"),
    ("read-only", "off", "error"),
    ("read-write", "off", "ok"),
    ("read-write", "on", "error"),
    ("primary", "off", "ok"),
    ("standby", "off", "error"),
    ("prefer-standby", "off", "ok"),
    ("any", "on", "ok"),
])
async def test_target_session_attrs_like_asyncpg(pg: PgCluster, attrs: str, read_only: str,
                                                 expected: str) -> None:
    kw: dict[str, Any] = dict(user=USER, password=PASSWORD, database=pg.DATABASE, timeout=10,
                              target_session_attrs=attrs,
                              server_settings={"default_transaction_read_only": read_only})
    res = await _both(host=[pg.host, pg.host], port=[pg.port, pg.port], **kw)
    assert res[0][0] == res[1][0] == expected, res
    if expected == "error":
        assert res[1] == ("error", "TargetServerAttributeNotMatched") == res[0], res
    # a dead host first: skipped; when no live host matches, the connection error is raised
    res = await _both(host=[pg.host, pg.host], port=[free_port(), pg.port], **kw)
    if expected == "ok":
        assert res == [("ok", pg.port), ("ok", pg.port)], res
    else:
        assert res == [("error", "ConnectionRefusedError"), ("error", "TransportError")], res
