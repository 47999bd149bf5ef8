"""Mutators for the network targets (the in-process targets use libFuzzer's, via atheris).

:func:`mutate_bytes` applies 1-4 random edits, some generic (flip, insert,
delete, duplicate, splice another seed, interesting integers) and some that
know the Postgres framing (change a message's type or length, repeat, drop or
truncate a message).  :func:`mutate_json` edits a parsed JSON document
(wrong types, deep nesting, many parameters, odd strings) and falls back to
bytes when the seed is not JSON.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any, Sequence

INTERESTING_32 = (0, 1, 3, 4, 5, 8, 127, 128, 255, 256, 1023, 9999, 10000, 10001, 32767, 32768,
                  65535, 65536, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x01000000, 16 << 20)
INTERESTING_STR = ("", "\x00", "a\x00b", "é", "\ud7ff", "'", "\"", "\\", "$1", "$0", "$65536", ";",
                   "select 1", "begin", "commit", "rollback", "COPY t FROM STDIN", "listen x",
                   "select pg_sleep(0.01)", "set search_path = x", "\u202e", "NaN", "-0", "1e400",
                   "null", "x" * 1000)


def _messages(data: bytes, start: int = 0) -> list[tuple[int, int]]:
    """Best-effort (start, stop) of typed Postgres messages in ``data``."""
    out: list[tuple[int, int]] = []
    pos = start
    while len(data) - pos >= 5:
        length = int.from_bytes(data[pos + 1:pos + 5], "big")
        if length < 4 or pos + 1 + length > len(data):
            break
        out.append((pos, pos + 1 + length))
        pos += 1 + length
    return out


def _frame_start(data: bytes) -> int:
    """Where typed messages start: after a startup packet, when ``data`` begins with one."""
    if len(data) >= 8 and data[4:8] in (b"\x00\x03\x00\x00", b"\x04\xd2\x16\x2f"):
        n = int.from_bytes(data[:4], "big")
        if 8 <= n <= len(data):
            return n
    return 0


def mutate_bytes(data: bytes, seeds: Sequence[bytes], rng: random.Random, max_size: int = 1 << 16) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 4))):
        op = rng.randrange(14)
        n = len(buf)
        if op == 0 and n:  # flip a bit
            i = rng.randrange(n)
            buf[i] ^= 1 << rng.randrange(8)
        elif op == 1 and n:  # random byte
            buf[rng.randrange(n)] = rng.randrange(256)
        elif op == 2:  # insert random bytes
            i = rng.randrange(n + 1)
            buf[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif op == 3 and n > 1:  # delete a range
            i = rng.randrange(n)
            del buf[i:i + rng.randrange(1, min(64, n - i) + 1)]
        elif op == 4 and n:  # duplicate a range
            i = rng.randrange(n)
            j = min(n, i + rng.randrange(1, 65))
            k = rng.randrange(n + 1)
            buf[k:k] = buf[i:j]
        elif op == 5 and seeds:  # splice with another seed
            other = rng.choice(seeds)
            i = rng.randrange(n + 1)
            j = rng.randrange(len(other) + 1)
            buf = buf[:i] + other[j:]
        elif op == 6 and n >= 4:  # interesting int32 anywhere
            i = rng.randrange(n - 3)
            buf[i:i + 4] = rng.choice(INTERESTING_32).to_bytes(4, "big")
        elif op == 7 and n >= 2:  # interesting int16 anywhere
            i = rng.randrange(n - 1)
            buf[i:i + 2] = rng.choice((0, 1, 0x7FFF, 0x8000, 0xFFFF, 3)).to_bytes(2, "big")
        elif op == 8 and n:  # truncate
            del buf[rng.randrange(n):]
        elif op in (9, 10, 11, 12):  # Postgres-message aware edits
            msgs = _messages(bytes(buf), _frame_start(bytes(buf)))
            if not msgs:
                continue
            s, e = rng.choice(msgs)
            if op == 9:  # message length
                buf[s + 1:s + 5] = rng.choice((0, 3, 4, 5, e - s, e - s - 2, e - s + 1, 0x7FFFFFFF,
                                               65536, 10001, 0xFFFFFFFF)).to_bytes(4, "big")
            elif op == 10:  # message type
                buf[s] = rng.choice(b"BCDEFHPQSXcdfpx\x00\xff")
            elif op == 11:  # repeat a message
                buf[e:e] = buf[s:e] * rng.randrange(1, 4)
            else:  # drop a message
                del buf[s:e]
        elif op == 13:  # append a message from another seed
            if seeds:
                other = rng.choice(seeds)
                msgs = _messages(other, _frame_start(other))
                if msgs:
                    s, e = rng.choice(msgs)
                    i = rng.choice([m[0] for m in _messages(bytes(buf), _frame_start(bytes(buf)))] + [len(buf)])
                    buf[i:i] = other[s:e]
    return bytes(buf[:max_size])


def _mutate_value(v: Any, rng: random.Random, depth: int = 0) -> Any:
    if isinstance(v, dict) and v and rng.random() < 0.7:
        k = rng.choice(list(v))
        v = dict(v)
        r = rng.random()
        if r < 0.15:
            del v[k]
        elif r < 0.25:
            v[rng.choice(("query", "params", "queries", "arrayMode", "fullResults", "x", ""))] = v[k]
        else:
            v[k] = _mutate_value(v[k], rng, depth + 1)
        return v
    if isinstance(v, list) and v and rng.random() < 0.7:
        v = list(v)
        r = rng.random()
        i = rng.randrange(len(v))
        if r < 0.2:
            del v[i]
        elif r < 0.35:
            v.append(v[i])
        else:
            v[i] = _mutate_value(v[i], rng, depth + 1)
        return v
    r = rng.randrange(14)
    if r == 0:
        return None
    if r == 1:
        return rng.choice((True, False))
    if r == 2:
        return rng.choice((0, -1, 1 << 31, 1 << 63, -(1 << 64), 2 ** 200, 1.5, 1e308, -0.0))
    if r == 3:
        return rng.choice(INTERESTING_STR)
    if r == 4 and isinstance(v, str) and v:
        i = rng.randrange(len(v))
        return v[:i] + rng.choice(INTERESTING_STR) + v[i + 1:]
    if r == 5:
        return [v]
    if r == 6:
        return {"query": v}
    if r == 7:  # deep nesting: a placeholder, expanded after serialising
        return f"@@deep{rng.choice((10, 100, 600, 2000))}@@"
    if r == 8:
        return [rng.choice((1, "x", None))] * rng.choice((2, 100, 1000, 32768, 40000, 65536))
    if r == 9:
        return {"x" * rng.randrange(1, 5): v}
    if r == 10:
        return []
    if r == 11:
        return {}
    if r == 12:
        return "x" * rng.choice((100, 10000, 200000))
    return v


def mutate_json(data: bytes, seeds: Sequence[bytes], rng: random.Random, max_size: int = 1 << 20) -> bytes:
    if rng.random() < 0.3:
        return mutate_bytes(data, seeds, rng, max_size)
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return mutate_bytes(data, seeds, rng, max_size)
    for _ in range(rng.choice((1, 1, 2, 3))):
        doc = _mutate_value(doc, rng)
    try:
        out = json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode("utf-8", "surrogatepass")
    except (ValueError, RecursionError):
        return data
    out = _DEEP.sub(lambda mo: b"[" * int(mo.group(1)) + b"1" + b"]" * int(mo.group(1)), out)
    return out[:max_size]


_DEEP = re.compile(rb'"@@deep(\d+)@@"')
