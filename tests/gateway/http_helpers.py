"""Helpers for the HTTP executor / endpoint tests: decode a batch's raw backend reply."""

from __future__ import annotations

from typing import Any

from driver.protocol import messages as m
from driver.protocol.framing import MessageReader


def backend(data: bytes) -> list[tuple[int, bytes]]:
    r = MessageReader()
    r.feed(data)
    msgs = r.read()
    assert r.buffered == 0
    return msgs


def rows(data: bytes) -> list[tuple[Any, ...]]:
    return [tuple(None if v is None else v.decode() for v in m.decode_data_row(b))
            for t, b in backend(data) if t == ord("D")]


def errors(data: bytes) -> list[dict[str, str]]:
    return [m.decode_fields(b) for t, b in backend(data) if t == ord("E")]


def types(data: bytes) -> str:
    return "".join(chr(t) for t, _ in backend(data))
