"""A small stand-in for :func:`dataclasses.dataclass`, cheap to apply at import.

``@dataclasses.dataclass(frozen=True, slots=True)`` costs several ``exec``
calls and a class rebuild per class: the ~40 message classes of
:mod:`driver.protocol.messages` alone took a third of ``import driver``'s
time.  This decorator builds only ``__init__`` by ``exec`` (the other
methods are shared generic functions), and only when the first instance is
made: ``exec`` compiles, which Pyodide does slowly, and most message classes
are never instantiated by a given program.  Type checkers see it as a
dataclass (PEP 681 ``dataclass_transform``).

Supported: ``frozen``, ``slots``, ``eq``, ``repr``; ``field(default=,
default_factory=, repr=, hash=, compare=)``; ``__post_init__``; inheritance
from another class built by this decorator.  Not supported: ``InitVar``,
``ClassVar`` fields, ``kw_only``, ``order``, :func:`dataclasses.fields`.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar, overload

try:  # Python >= 3.11
    from typing import dataclass_transform
except ImportError:  # pragma: no cover
    def dataclass_transform(**kwargs: Any) -> Callable[[Any], Any]:  # type: ignore[misc]
        return lambda f: f

__all__ = ["dataclass", "field", "FrozenInstanceError"]

_T = TypeVar("_T")
_MISSING: Any = type("_MISSING", (), {"__repr__": lambda self: "<missing>"})()


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen instance."""


class _Field:
    __slots__ = ("name", "default", "default_factory", "repr", "hash", "compare")

    def __init__(self, default: Any = _MISSING, default_factory: Any = _MISSING,
                 repr: bool = True, hash: bool | None = None, compare: bool = True) -> None:
        self.name = ""
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.hash = compare if hash is None else hash
        self.compare = compare


def field(*, default: Any = _MISSING, default_factory: Any = _MISSING, repr: bool = True,
          hash: bool | None = None, compare: bool = True) -> Any:
    """Per-field options, as :func:`dataclasses.field`."""
    return _Field(default, default_factory, repr, hash, compare)


def _repr(self: Any) -> str:
    parts = [f"{f.name}={getattr(self, f.name)!r}" for f in self.__wp_fields__ if f.repr]
    return f"{type(self).__qualname__}({', '.join(parts)})"


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return all(getattr(self, n) == getattr(other, n) for n in self.__wp_compare__)


def _hash(self: Any) -> int:
    return hash(tuple(getattr(self, n) for n in self.__wp_hash__))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _build(cls: Any, frozen: bool, slots: bool, eq: bool, repr: bool) -> Any:
    fields: list[_Field] = list(getattr(cls, "__wp_fields__", ()))
    own: dict[str, Any] = cls.__dict__.get("__annotations__", {})
    for name in own:
        value = cls.__dict__.get(name, _MISSING)
        f = value if isinstance(value, _Field) else _Field(default=value)
        f.name = name
        fields = [g for g in fields if g.name != name] + [f]
    post_init = hasattr(cls, "__post_init__")
    d = {k: v for k, v in cls.__dict__.items()
         if k not in ("__dict__", "__weakref__") and not (slots and k in own)}
    built: list[Any] = []  # the class, once built below

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        # First instance: compile the real __init__ and put it on the class.
        init = _make_init(built[0], fields, frozen, post_init)
        type.__setattr__(built[0], "__init__", init)
        init(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    d["__init__"] = __init__
    d["__wp_fields__"] = tuple(fields)
    d["__wp_compare__"] = tuple(f.name for f in fields if f.compare)
    d["__wp_hash__"] = tuple(f.name for f in fields if f.hash)
    d["__match_args__"] = tuple(f.name for f in fields)
    if repr and "__repr__" not in cls.__dict__:
        d["__repr__"] = _repr
    if eq and "__eq__" not in cls.__dict__:
        d["__eq__"] = _eq
        d["__hash__"] = _hash if frozen else None
    if frozen:
        d["__setattr__"] = _frozen_setattr
        d["__delattr__"] = _frozen_delattr
    if slots:
        inherited = {f.name for f in getattr(cls, "__wp_fields__", ())}
        d["__slots__"] = tuple(f.name for f in fields if f.name not in inherited)
        new = type(cls)(cls.__name__, cls.__bases__, d)
        built.append(new)
        return new
    built.append(cls)
    for k, v in d.items():
        if k not in cls.__dict__ or cls.__dict__[k] is not v:
            type.__setattr__(cls, k, v)
    for name in own:  # defaults stay class attributes (as dataclasses does), fields do not
        if isinstance(cls.__dict__.get(name), _Field):
            f = next(g for g in fields if g.name == name)
            if f.default is not _MISSING:
                type.__setattr__(cls, name, f.default)
            else:
                type.__delattr__(cls, name)
    return cls


def _make_init(cls: Any, fields: list[_Field], frozen: bool, post_init: bool) -> Any:
    """``cls.__init__``, compiled (``exec``) from its fields."""
    globs: dict[str, Any] = {"_MISSING": _MISSING, "_set": object.__setattr__}
    params, body = [], []
    for f in fields:
        n = f.name
        if f.default_factory is not _MISSING:
            globs[f"_f_{n}"] = f.default_factory
            params.append(f"{n}=_MISSING")
            value = f"_f_{n}() if {n} is _MISSING else {n}"
        elif f.default is not _MISSING:
            globs[f"_d_{n}"] = f.default
            params.append(f"{n}=_d_{n}")
            value = n
        else:
            params.append(n)
            value = n
        body.append(f"    _set(self, {n!r}, {value})" if frozen else f"    self.{n} = {value}")
    if post_init:
        body.append("    self.__post_init__()")
    src = f"def __init__(self, {', '.join(params)}):\n" + ("\n".join(body) or "    pass") + "\n"
    ns: dict[str, Any] = {}
    exec(src, globs, ns)
    init = ns["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


@overload
def dataclass(cls: type[_T], /) -> type[_T]: ...


@overload
def dataclass(*, frozen: bool = False, slots: bool = False, eq: bool = True,
              repr: bool = True) -> Callable[[type[_T]], type[_T]]: ...


@dataclass_transform(field_specifiers=(field,))
def dataclass(cls: Any = None, /, *, frozen: bool = False, slots: bool = False, eq: bool = True,
              repr: bool = True) -> Any:
    """``@dataclass`` / ``@dataclass(frozen=True, slots=True)``: see the module docstring."""
    def wrap(c: Any) -> Any:
        return _build(c, frozen, slots, eq, repr)

    return wrap if cls is None else wrap(cls)
