"""Helpers of the differential codec tests: run one scenario on asyncpg and on
the driver, and compare the outcomes after mapping each library's value types
to plain data (``asyncpg.Range`` and ``driver.Range`` are different classes)."""

from __future__ import annotations

import decimal
from typing import Any, Awaitable, Callable

import asyncpg

import driver

Scenario = Callable[[Any, Any], Awaitable[Any]]


def norm(v: Any) -> Any:
    """Plain, comparable data of a decoded value, tagged with its type's name."""
    name = type(v).__name__
    if v is None or isinstance(v, (bool, int, str, bytes)):
        return v
    if isinstance(v, (float, decimal.Decimal)):
        return (name, "NaN") if v != v else v
    if name == "Range":
        return ("Range", norm(v.lower), norm(v.upper), v.lower_inc, v.upper_inc, v.isempty)
    if name == "BitString":
        return ("BitString", v.bytes, len(v), v.as_string())
    if name in ("Path", "Polygon"):
        return (name, v.is_closed, [norm(p) for p in v.points])
    if name == "Record":
        return ("Record", [(k, norm(x)) for k, x in v.items()])
    if isinstance(v, dict):
        return (name, {k: norm(x) for k, x in v.items()})
    if isinstance(v, (list, tuple)):
        return (name, [norm(x) for x in v])
    return (name, v)


def err(e: BaseException) -> tuple[Any, ...]:
    return ("error", type(e).__name__, getattr(e, "sqlstate", None))


async def outcome(aw: Awaitable[Any]) -> Any:
    try:
        return norm(await aw)
    except Exception as e:  # noqa: BLE001 - compared, not swallowed
        return err(e)


async def run_both(dsn: str, fn: Scenario, **driver_kwargs: Any) -> tuple[Any, Any]:
    """(asyncpg's outcome, the driver's outcome) of ``fn(conn, module)``."""
    ref = await asyncpg.connect(dsn)
    try:
        expected = await fn(ref, asyncpg)
    finally:
        await ref.close()
    ours = await driver.connect(dsn, **driver_kwargs)
    try:
        got = await fn(ours, driver)
    finally:
        await ours.close()
    return expected, got


def assert_same(expected: Any, got: Any) -> None:
    if isinstance(got, list) and isinstance(expected, list) and len(got) == len(expected):
        diffs = [(i, g, e) for i, (g, e) in enumerate(zip(got, expected)) if g != e]
        assert not diffs, "\n".join(f"#{i}\n ours:    {g!r}\n asyncpg: {e!r}" for i, g, e in diffs)
    assert got == expected
