"""Codecs of ``bit``/``varbit`` and the geometric types (binary and text formats).

Values decode to :mod:`driver.types` objects exactly as asyncpg decodes them
(``Circle``'s center and ``LineSegment``'s points as asyncpg builds them) and
encode from those objects or from plain tuples/lists of numbers.
"""

from __future__ import annotations

import struct
from typing import Any

from ..types import BitString, Box, Circle, Line, LineSegment, Path, Point, Polygon
from ._core import EncodeError, lazy_pattern, type_name

_d2 = struct.Struct("!dd")
_d3 = struct.Struct("!ddd")
_d4 = struct.Struct("!dddd")
_i32 = struct.Struct("!i")
_bi = struct.Struct("!bi")

# ---------------------------------------------------------------------------
# bit / varbit
# ---------------------------------------------------------------------------


def decode_bits(b: Any) -> BitString:
    return BitString.frombytes(bytes(b[4:]), _i32.unpack_from(b)[0])


def encode_bits(v: Any) -> bytes:
    if isinstance(v, BitString):
        data, nbits = v.bytes, len(v)
    else:
        try:
            data = bytes(memoryview(v))
        except TypeError:
            raise EncodeError(
                f"a BitString or a bytes-like object is required (got type {type_name(v)})") from None
        nbits = len(data) * 8
    if nbits > 0x7FFFFFFF:
        raise EncodeError("bit value too long")
    return _i32.pack(nbits) + data


def decode_bits_text(b: Any) -> BitString:
    return BitString(str(b, "ascii"))


# ---------------------------------------------------------------------------
# geometry, binary
# ---------------------------------------------------------------------------


def _points(b: Any, pos: int) -> tuple[Point, ...]:
    n = _i32.unpack_from(b, pos)[0]
    pos += 4
    out = []
    for _ in range(n):
        x, y = _d2.unpack_from(b, pos)
        out.append(Point(x, y))
        pos += 16
    return tuple(out)


def _pack_points(points: Any) -> bytes:
    return b"".join(_d2.pack(p[0], p[1]) for p in points)


def decode_point(b: Any) -> Point:
    return Point(*_d2.unpack_from(b))


def encode_point(v: Any) -> bytes:
    return _d2.pack(v[0], v[1])


def decode_lseg(b: Any) -> LineSegment:
    x1, y1, x2, y2 = _d4.unpack_from(b)
    return LineSegment((x1, y1), (x2, y2))


def encode_box(v: Any) -> bytes:  # also lseg: two points
    return _pack_points((v[0], v[1]))


def decode_box(b: Any) -> Box:
    x1, y1, x2, y2 = _d4.unpack_from(b)
    return Box(Point(x1, y1), Point(x2, y2))


def decode_line(b: Any) -> Line:
    return Line(*_d3.unpack_from(b))


def encode_line(v: Any) -> bytes:
    return _d3.pack(v[0], v[1], v[2])


def decode_path(b: Any) -> Path:
    return Path(*_points(b, 1), is_closed=b[0] == 1)


def encode_path(v: Any) -> bytes:
    if isinstance(v, tuple):
        closed = 1
    elif isinstance(v, list):
        closed = 0
    elif isinstance(v, Path):
        closed = 1 if v.is_closed else 0
    else:
        closed = 0
    pts = list(v)
    return _bi.pack(closed, len(pts)) + _pack_points(pts)


def decode_polygon(b: Any) -> Polygon:
    return Polygon(*_points(b, 0))


def encode_polygon(v: Any) -> bytes:
    pts = list(v)
    return _i32.pack(len(pts)) + _pack_points(pts)


def decode_circle(b: Any) -> Circle:
    x, y, r = _d3.unpack_from(b)
    return Circle((x, y), r)  # type: ignore[arg-type]  # asyncpg: a plain tuple center


def encode_circle(v: Any) -> bytes:
    return _d3.pack(v[0][0], v[0][1], v[1])


# ---------------------------------------------------------------------------
# geometry, text (float8out numbers: 1.5, -2e+20, Infinity, NaN)
# ---------------------------------------------------------------------------

_NUM = lazy_pattern("_NUM", globals(), r"[-+]?(?:Infinity|inf|NaN|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)")


def _nums(b: Any) -> list[float]:
    return [float(x) for x in _NUM.findall(str(b, "ascii"))]


def _pairs(xs: list[float]) -> list[Point]:
    return [Point(xs[i], xs[i + 1]) for i in range(0, len(xs) - 1, 2)]


def decode_point_text(b: Any) -> Point:
    x, y = _nums(b)
    return Point(x, y)


def decode_lseg_text(b: Any) -> LineSegment:
    x1, y1, x2, y2 = _nums(b)
    return LineSegment((x1, y1), (x2, y2))


def decode_box_text(b: Any) -> Box:
    x1, y1, x2, y2 = _nums(b)
    return Box(Point(x1, y1), Point(x2, y2))


def decode_line_text(b: Any) -> Line:
    a, b_, c = _nums(b)
    return Line(a, b_, c)


def decode_path_text(b: Any) -> Path:
    return Path(*_pairs(_nums(b)), is_closed=bytes(b[:1]) == b"(")


def decode_polygon_text(b: Any) -> Polygon:
    return Polygon(*_pairs(_nums(b)))


def decode_circle_text(b: Any) -> Circle:
    x, y, r = _nums(b)
    return Circle((x, y), r)  # type: ignore[arg-type]
