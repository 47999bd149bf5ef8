"""Shared definitions of the codecs package: error type, codec signatures, TypeInfo."""

from __future__ import annotations

from typing import Any, Callable, Union

from ..protocol._dataclass import dataclass

Buffer = Union[bytes, bytearray, memoryview]
Encoder = Callable[[Any], bytes]
Decoder = Callable[[Any], Any]
"""A decoder takes the raw value bytes (bytes or memoryview) and returns a Python value."""

FORMAT_TEXT = 0
FORMAT_BINARY = 1


class EncodeError(ValueError):
    """A Python value cannot be encoded for a parameter of the requested type.

    Raised by encoders (``position`` is then None) and re-raised by
    :func:`driver.codecs.encode_params` with ``position`` set to the 1-based
    parameter number; its message then reads like asyncpg's DataError:
    ``invalid input for query argument $1: 'x' (an integer is required ...)``.
    """

    def __init__(self, message: str, *, position: int | None = None,
                 value: Any = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.position = position
        self.value = value
        self.reason = reason if reason is not None else message


@dataclass(frozen=True)
class TypeInfo:
    """Codecs of one PostgreSQL type.

    ``encode``: Python value -> binary wire bytes (None: the type is sent in text format).
    ``decode_binary``: binary wire bytes -> value (None: results are requested in text format).
    ``decode_text``: text wire bytes -> value.
    ``encode_text``: Python value -> text wire bytes, used when ``encode`` is None.
    ``element_oid`` is non-zero for array types.
    """

    oid: int
    name: str
    decode_text: Decoder
    encode: Encoder | None = None
    decode_binary: Decoder | None = None
    encode_text: Encoder | None = None
    element_oid: int = 0
    array_oid: int = 0
    #: ranges and multiranges: the subtype's OID
    range_subtype: int = 0

    def replace(self, **changes: Any) -> TypeInfo:
        """A copy with ``changes`` (as :func:`dataclasses.replace`)."""
        values = {f.name: getattr(self, f.name) for f in self.__wp_fields__}  # type: ignore[attr-defined]
        values.update(changes)
        return TypeInfo(**values)


def type_name(value: Any) -> str:
    return type(value).__name__


class LazyGlobal:
    """A module global built at its first attribute access (``make()``), which
    then replaces this stand-in in the module's namespace, so later accesses
    cost what a plain global does.  For what only some values need:
    ``uuid`` and ``ipaddress`` take ~170 ms of CPU to import in Pyodide (it
    compiles its standard library from sources at every start), and
    compiling the text codecs' regular expressions was a third of
    ``driver.codecs``' import there; ``decimal`` (with ``numbers``) ~17 ms.
    Use it only inside functions, by attribute access (``_RE.match(...)``,
    ``uuid.UUID``), a call or ``isinstance``."""

    __slots__ = ("_key", "_namespace", "_make")

    def __init__(self, key: str, namespace: dict[str, Any], make: Callable[[], Any]) -> None:
        self._key = key
        self._namespace = namespace
        self._make = make

    def _resolve(self) -> Any:
        value = self._make()
        self._namespace[self._key] = value
        return value

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._resolve(), attr)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:  # a class: Decimal(...)
        return self._resolve()(*args, **kwargs)

    def __instancecheck__(self, obj: Any) -> bool:  # isinstance(v, Decimal)
        return isinstance(obj, self._resolve())


def lazy_module(name: str, namespace: dict[str, Any]) -> Any:
    """Module ``name`` imported at first use, as the global ``name`` (see :class:`LazyGlobal`)."""
    import importlib

    return LazyGlobal(name, namespace, lambda: importlib.import_module(name))


def lazy_pattern(key: str, namespace: dict[str, Any], pattern: str) -> Any:
    """``re.compile(pattern)`` at first use, as the global ``key`` (see :class:`LazyGlobal`)."""
    import re

    return LazyGlobal(key, namespace, lambda: re.compile(pattern))


def lazy_class(module: str, name: str, namespace: dict[str, Any]) -> Any:
    """``from module import name`` at first use (a call, an ``isinstance`` or an
    attribute access), as the global ``name`` (see :class:`LazyGlobal`).  Until
    then ``type(v) is name`` is False: use it only before an ``isinstance``."""
    import importlib

    return LazyGlobal(name, namespace, lambda: getattr(importlib.import_module(module), name))
