"""Result rows that behave like asyncpg's ``Record``.

A row is ``Record(mapping, values)``: ``values`` is the tuple of decoded
column values and ``mapping`` (column name -> index) is built once per result
and shared by all its rows, so a row costs one small object and its tuple.

Build the mapping with :func:`make_mapping` from the column names: like
asyncpg, when names repeat the *last* column of that name wins for ``r[name]``,
``get()`` and ``dict(r)``, while ``keys()``/``items()``/``repr()`` list every
column.  A plain ``dict`` is accepted too (then ``keys()`` can only report the
names the dict holds).

Behaviour copied from asyncpg (checked side by side in the tests):
``r[i]`` (negative too) and ``r[a:b]`` (a tuple) by position, ``r["name"]`` by
name; ``KeyError(name)`` / ``IndexError("record index out of range")``;
``get(name, default)`` looks names only up; ``"name" in r`` tests *column
names*; iteration, ``len`` and ``bool`` are over values; ``==``/``<``... and
``hash`` compare the values as a tuple (names ignored), so a record equals the
tuple of its values; ``repr`` is ``<Record a=1 b='x'>`` (the subclass name for
subclasses); records are immutable.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

__all__ = ["Record", "RecordMapping", "make_mapping"]


class RecordMapping(dict[str, int]):
    """A ``name -> index`` dict that also remembers every column name in order."""

    __slots__ = ("names",)

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__((name, i) for i, name in enumerate(names))  # last duplicate wins
        self.names: tuple[str, ...] = tuple(names)


def make_mapping(names: Iterable[str]) -> RecordMapping:
    """The shared mapping for rows whose columns are ``names`` (in order)."""
    return RecordMapping(tuple(names))


def _names_of(mapping: dict[str, int], n: int) -> tuple[str, ...]:
    names = getattr(mapping, "names", None)
    if names is not None and len(names) == n:
        return names  # type: ignore[no-any-return]
    out = ["?"] * n
    for name, i in mapping.items():
        if 0 <= i < n:
            out[i] = name
    return tuple(out)


class Record:
    """One result row (see the module documentation)."""

    __slots__ = ("_mapping", "_values")

    _mapping: dict[str, int]
    _values: tuple[Any, ...]

    def __init__(self, mapping: dict[str, int], values: tuple[Any, ...]) -> None:
        self._mapping = mapping
        self._values = values

    # -- access ---------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        if type(key) is str:
            try:
                return self._values[self._mapping[key]]
            except KeyError:
                raise KeyError(key) from None
        try:
            return self._values[key]
        except IndexError:
            raise IndexError("record index out of range") from None
        except TypeError:
            if isinstance(key, str):  # str subclass
                return self.__getitem__(str(key))
            raise KeyError(key) from None

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            index = self._mapping.get(key)
        except TypeError:  # unhashable
            return default
        if index is None:
            return default
        return self._values[index]

    def __contains__(self, key: object) -> bool:
        try:
            return key in self._mapping
        except TypeError:
            return False

    def keys(self) -> Iterator[str]:
        return iter(_names_of(self._mapping, len(self._values)))

    def values(self) -> Iterator[Any]:
        return iter(self._values)

    def items(self) -> Iterator[tuple[str, Any]]:
        return zip(_names_of(self._mapping, len(self._values)), self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    # -- comparison -------------------------------------------------------------
    @staticmethod
    def _other(other: object) -> tuple[Any, ...] | None:
        if isinstance(other, Record):
            return other._values
        if isinstance(other, tuple):
            return other
        return None

    def __eq__(self, other: object) -> bool:
        o = self._other(other)
        if o is None:
            return NotImplemented
        return self._values == o

    def __ne__(self, other: object) -> bool:
        o = self._other(other)
        if o is None:
            return NotImplemented
        return self._values != o

    def __lt__(self, other: object) -> bool:
        o = self._other(other)
        if o is None:
            return NotImplemented
        return self._values < o

    def __le__(self, other: object) -> bool:
        o = self._other(other)
        if o is None:
            return NotImplemented
        return self._values <= o

    def __gt__(self, other: object) -> bool:
        o = self._other(other)
        if o is None:
            return NotImplemented
        return self._values > o

    def __ge__(self, other: object) -> bool:
        o = self._other(other)
        if o is None:
            return NotImplemented
        return self._values >= o

    def __hash__(self) -> int:
        return hash(self._values)

    # -- display ----------------------------------------------------------------
    def __repr__(self) -> str:
        name = type(self).__name__
        if not self._values:
            return f"<{name}>"
        fields = " ".join(f"{k}={v!r}" for k, v in self.items())
        return f"<{name} {fields}>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self._mapping, self._values))
