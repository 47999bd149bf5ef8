"""asyncpg's value types: ``Range``, ``BitString`` and the geometric types.

Same constructors, attributes, equality and hashing as asyncpg's, so code
written for ``asyncpg.Range`` / ``asyncpg.types.Point`` works with the driver.
``Type`` and ``Attribute`` describe statement parameters and columns.
"""

from __future__ import annotations

import builtins
from types import GenericAlias
from typing import Any, Iterator, NamedTuple, Sequence, SupportsFloat, SupportsIndex, Union

__all__ = (
    "Type", "Attribute", "Range", "BitString", "Point", "Path", "Polygon", "Box", "Line",
    "LineSegment", "Circle",
    "ServerVersion",  # noqa: F822 - provided by __getattr__ below (PEP 562)
)


class Type(NamedTuple):
    """A database data type (``kind``: "scalar", "array", "composite", "range"...)."""

    oid: int
    name: str
    kind: str
    schema: str


class Attribute(NamedTuple):
    """A relation attribute (statement column or parameter) and its type."""

    name: str
    type: Type


def __getattr__(name: str) -> Any:
    if name == "ServerVersion":  # defined with the connection, exported here like asyncpg
        from .connection import ServerVersion
        return ServerVersion
    raise AttributeError(f"module 'driver.types' has no attribute {name!r}")


# ---------------------------------------------------------------------------
# Range
# ---------------------------------------------------------------------------


class Range:
    """An immutable PostgreSQL range: bounds (None = infinite), inclusivity, emptiness."""

    __slots__ = ("_lower", "_upper", "_lower_inc", "_upper_inc", "_empty")
    __class_getitem__: Any = classmethod(GenericAlias)

    def __init__(self, lower: Any = None, upper: Any = None, *, lower_inc: bool = True,
                 upper_inc: bool = False, empty: bool = False) -> None:
        self._empty = bool(empty)
        if empty:
            self._lower = self._upper = None
            self._lower_inc = self._upper_inc = False
            return
        self._lower = lower
        self._upper = upper
        # an infinite bound is never inclusive
        self._lower_inc = lower is not None and bool(lower_inc)
        self._upper_inc = upper is not None and bool(upper_inc)

    @property
    def lower(self) -> Any:
        return self._lower

    @property
    def upper(self) -> Any:
        return self._upper

    @property
    def lower_inc(self) -> bool:
        return self._lower_inc

    @property
    def upper_inc(self) -> bool:
        return self._upper_inc

    @property
    def lower_inf(self) -> bool:
        return self._lower is None and not self._empty

    @property
    def upper_inf(self) -> bool:
        return self._upper is None and not self._empty

    @property
    def isempty(self) -> bool:
        return self._empty

    def _key(self) -> tuple[Any, Any, bool, bool, bool]:
        return (self._lower, self._upper, self._lower_inc, self._upper_inc, self._empty)

    def _lower_within(self, other: Range) -> bool:
        if other._lower is None:
            return True
        if self._lower is None:
            return False
        if self._lower == other._lower:
            return bool(other._lower_inc or not self._lower_inc)
        return bool(self._lower > other._lower)

    def _upper_within(self, other: Range) -> bool:
        if other._upper is None:
            return True
        if self._upper is None:
            return False
        if self._upper == other._upper:
            return bool(other._upper_inc or not self._upper_inc)
        return bool(self._upper < other._upper)

    def issubset(self, other: Range) -> bool:
        if self._empty:
            return True
        if other._empty:
            return False
        return self._lower_within(other) and self._upper_within(other)

    def issuperset(self, other: Range) -> bool:
        return other.issubset(self)

    def __bool__(self) -> bool:
        return not self._empty

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Range):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        if self._empty:
            return "<Range empty>"
        lb = "[" if self._lower_inc else "("
        if self._lower is not None:
            lb += repr(self._lower)
        ub = "" if self._upper is None else repr(self._upper)
        ub += "]" if self._upper_inc else ")"
        return f"<Range {lb}, {ub}>"

    __str__ = __repr__


# ---------------------------------------------------------------------------
# BitString
# ---------------------------------------------------------------------------


class BitString:
    """An immutable PostgreSQL ``bit`` / ``varbit`` value (bits packed MSB first)."""

    __slots__ = ("_bytes", "_bitlength")

    def __init__(self, bitstring: Union[str, builtins.bytes, None] = None) -> None:
        bits: list[int] = []
        text = bitstring.decode("ascii", "replace") if isinstance(
            bitstring, (bytes, bytearray)) else (bitstring or "")
        for i, ch in enumerate(text):
            if ch == " ":
                continue
            bit = 0 if ch == "0" else 1 if ch == "1" else -1
            if bit not in (0, 1):
                raise ValueError(f"invalid bit value at position {i}")
            bits.append(bit)
        n = len(bits)
        value = 0
        for bit in bits:
            value = (value << 1) | bit
        value <<= -n % 8
        self._bytes = value.to_bytes((n + 7) // 8, "big")
        self._bitlength = n

    @classmethod
    def frombytes(cls, bytes_: builtins.bytes | None = None,
                  bitlength: int | None = None) -> BitString:
        """A BitString of the first ``bitlength`` bits of ``bytes_``."""
        if bitlength is None:
            data = bytes_ if bytes_ is not None else b""
            bitlength = len(data) * 8
        elif bytes_ is None:
            data = bytes(bitlength // 8 + 1)
        else:
            data = bytes_
            nbits = len(data) * 8
            if ((nbits == 0) != (bitlength == 0)) or bitlength < nbits - 8 or bitlength > nbits:
                raise ValueError("invalid bit length specified")
        result = cls()
        result._bytes = data
        result._bitlength = bitlength
        return result

    @property
    def bytes(self) -> builtins.bytes:
        return self._bytes

    def _bit(self, i: int) -> int:
        return (self._bytes[i // 8] >> (7 - i % 8)) & 1

    def as_string(self) -> str:
        """The bits as '0'/'1' characters, a space after every four."""
        s = "".join(str(self._bit(i)) for i in range(self._bitlength))
        return " ".join(s[i:i + 4] for i in range(0, len(s), 4))

    def to_int(self, bitorder: str = "big", *, signed: bool = False) -> int:
        """The bits as an int (``bitorder`` "big": the first bit is the most significant)."""
        n = self._bitlength
        x = int.from_bytes(self._bytes, "big") >> (-n % 8)
        if bitorder == "little":
            x = int(format(x, f"0{n}b")[::-1] or "0", 2) if n else 0
        elif bitorder != "big":
            raise ValueError("bitorder must be either 'big' or 'little'")
        if signed and n and x >> (n - 1):
            x -= 1 << n
        return x

    @classmethod
    def from_int(cls, x: int, length: int, bitorder: str = "big", *,
                 signed: bool = False) -> BitString:
        """``x`` as a BitString of ``length`` bits (two's complement if ``signed``)."""
        if length < 0:
            raise ValueError("length argument must be non-negative")
        if length < x.bit_length():
            raise OverflowError("int too big to convert")
        if x < 0:
            if not signed:
                raise OverflowError("can't convert negative int to unsigned")
            x &= (1 << length) - 1
        if bitorder == "little":
            x = int(format(x, f"0{length}b")[::-1] or "0", 2) if length else 0
        elif bitorder != "big":
            raise ValueError("bitorder must be either 'big' or 'little'")
        x <<= -length % 8
        return cls.frombytes(x.to_bytes((length + 7) // 8, "big"), length)

    def __repr__(self) -> str:
        return f"<BitString {self.as_string()}>"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BitString):
            return NotImplemented
        return self._bytes == other._bytes and self._bitlength == other._bitlength

    def __hash__(self) -> int:
        return hash((self._bytes, self._bitlength))

    def __getitem__(self, i: int) -> int:
        if isinstance(i, slice):
            raise NotImplementedError("BitString does not support slices")
        if i >= self._bitlength:
            raise IndexError("index out of range")
        return self._bit(i)

    def __len__(self) -> int:
        return self._bitlength


# ---------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------

_Coord = Union[SupportsFloat, SupportsIndex, str, builtins.bytes, bytearray]


def _qualified_repr(obj: tuple[Any, ...]) -> str:
    cls = type(obj)
    return f"{cls.__module__}.{cls.__name__}({tuple.__repr__(obj)})"


class Point(tuple[float, float]):
    """A PostgreSQL ``point``: ``(x, y)``."""

    __slots__ = ()

    def __new__(cls, x: _Coord, y: _Coord) -> Point:
        return super().__new__(cls, (float(x), float(y)))

    def __repr__(self) -> str:
        return _qualified_repr(self)

    @property
    def x(self) -> float:
        return self[0]

    @property
    def y(self) -> float:
        return self[1]


class Box(tuple[Point, Point]):
    """A PostgreSQL ``box``: ``(high, low)`` corners."""

    __slots__ = ()

    def __new__(cls, high: Sequence[float], low: Sequence[float]) -> Box:
        return super().__new__(cls, (Point(*high), Point(*low)))

    def __repr__(self) -> str:
        return _qualified_repr(self)

    @property
    def high(self) -> Point:
        return self[0]

    @property
    def low(self) -> Point:
        return self[1]


class Line(tuple[float, float, float]):
    """A PostgreSQL ``line``: ``Ax + By + C = 0`` as ``(A, B, C)``."""

    __slots__ = ()

    def __new__(cls, A: float, B: float, C: float) -> Line:
        return super().__new__(cls, (A, B, C))

    @property
    def A(self) -> float:
        return self[0]

    @property
    def B(self) -> float:
        return self[1]

    @property
    def C(self) -> float:
        return self[2]


class LineSegment(tuple[Point, Point]):
    """A PostgreSQL ``lseg``: ``(p1, p2)``."""

    __slots__ = ()

    def __new__(cls, p1: Sequence[float], p2: Sequence[float]) -> LineSegment:
        return super().__new__(cls, (Point(*p1), Point(*p2)))

    def __repr__(self) -> str:
        return _qualified_repr(self)

    @property
    def p1(self) -> Point:
        return self[0]

    @property
    def p2(self) -> Point:
        return self[1]


class Path:
    """A PostgreSQL ``path``: points, open or closed."""

    __slots__ = ("_is_closed", "points")

    def __init__(self, *points: Sequence[float], is_closed: bool = False) -> None:
        self.points: tuple[Point, ...] = tuple(Point(*p) for p in points)
        self._is_closed = is_closed

    @property
    def is_closed(self) -> bool:
        return self._is_closed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Path):
            return NotImplemented
        return self.points == other.points and self._is_closed == other._is_closed

    def __hash__(self) -> int:
        return hash((self.points, self._is_closed))

    def __iter__(self) -> Iterator[Point]:
        return iter(self.points)

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: Any) -> Any:
        return self.points[i]

    def __contains__(self, point: object) -> bool:
        return point in self.points


class Polygon(Path):
    """A PostgreSQL ``polygon`` (a closed path)."""

    __slots__ = ()

    def __init__(self, *points: Sequence[float]) -> None:
        super().__init__(*points, is_closed=True)


class Circle(tuple[Point, float]):
    """A PostgreSQL ``circle``: ``(center, radius)``."""

    __slots__ = ()

    def __new__(cls, center: Point, radius: float) -> Circle:
        return super().__new__(cls, (center, radius))

    @property
    def center(self) -> Point:
        return self[0]

    @property
    def radius(self) -> float:
        return self[1]
