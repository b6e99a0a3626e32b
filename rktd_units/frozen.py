"""`@frozen`: `@dataclass(frozen=True)` with the methods compiled ahead of time.

`dataclasses` writes every class's `__init__`, `__repr__`, `__eq__`, `__hash__`, `__setattr__` and
`__delattr__` as source text and exec()s it at import: about 0.4 ms a class on Python 3.11, and
`import dataclasses` (which imports `inspect`, `ast`, `dis`, `tokenize`) costs half an interpreter
start more. rktd-generator runs at every boot and daemon-reload and imports some twenty such
classes (the model and the tables), so the methods are generated once, by the same rules, into
`rktd_units/_compiled_dataclasses.py` (`python3 -m rktd_units.frozen` rewrites it; the tests fail
while it is stale and check every class against what `dataclasses` itself makes).

A class decorated `@frozen` is a dataclass in every respect: `dataclasses.fields()`, `replace()`,
`asdict()` and `is_dataclass()` work, because `__dataclass_fields__` and `__dataclass_params__` are
made by `dataclasses` itself the first time anything asks for them. A class whose compiled entry is
missing or stale (a field added, renamed, retyped, given or losing a default) is simply made by
`dataclasses`, as it would be without this module. Supported: plain fields, defaults and
`field(default_factory=...)`; anything else (ClassVar, InitVar, KW_ONLY, other `field()` options,
methods of the class that dataclasses would replace) falls back to `dataclasses`.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from dataclasses import field
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")

    @dataclass_transform(frozen_default=True, field_specifiers=(field,))
    def frozen(cls: type[_T]) -> type[_T]: ...

else:

    def field(*, default_factory):
        """`dataclasses.field(default_factory=...)`, without importing dataclasses."""
        return _Factory(default_factory)

    def frozen(cls):
        """`@dataclass(frozen=True)`, from the compiled methods when they are up to date."""
        spec = _spec(cls)
        make = _compiled().get(f"{cls.__module__}.{cls.__qualname__}") if spec is not None else None
        if make is None or make[0] != spec:
            return _by_dataclasses(cls)
        _install(cls, spec, make[1], make[2])
        return cls


_METHODS = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")
_UNSUPPORTED = ("ClassVar", "InitVar", "KW_ONLY", "typing.", "dataclasses.")


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


class _FactorySentinel:
    """The default that a `default_factory` field shows in the `__init__` signature (as dataclasses)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


FACTORY = _FactorySentinel()

# One field: (name, annotation text, "required" | "default" | "factory").
Spec = tuple[tuple[str, str, str], ...]


def _spec(cls: type) -> Spec | None:
    """The fields as `dataclasses` would read them, or None if this module does not handle the class."""
    if any(m in cls.__dict__ for m in (*_METHODS, "__slots__", "__match_args__")) or cls.__bases__ != (object,):
        return None
    out = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():
        if not isinstance(annotation, str) or annotation.startswith(_UNSUPPORTED):
            return None
        value = cls.__dict__.get(name, _Factory)  # _Factory (the class): no default
        if value is _Factory:
            kind = "required"
        elif isinstance(value, _Factory):
            kind = "factory"
        elif type(value).__name__ == "Field" or isinstance(value, (list, dict, set)):
            return None  # dataclasses.field(), or a mutable default dataclasses refuses
        else:
            kind = "default"
        out.append((name, annotation, kind))
    return tuple(out)


def _compiled() -> dict[str, tuple[Spec, str, Callable[..., dict[str, Any]]]]:
    try:
        from rktd_units._compiled_dataclasses import CLASSES
    except ImportError:  # the first build
        return {}
    return CLASSES


def _frozen_error(name: str, what: str) -> Exception:
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot {what} field {name!r}")


def _by_dataclasses(cls: type) -> type:
    import dataclasses

    for name, value in list(cls.__dict__.items()):
        if isinstance(value, _Factory):
            setattr(cls, name, dataclasses.field(default_factory=value.factory))
    return dataclasses.dataclass(frozen=True)(cls)


def _install(cls: type, spec: Spec, doc: str, make: Callable[..., dict[str, Any]]) -> None:
    import reprlib

    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for name, _, kind in spec:
        if kind == "default":
            defaults[name] = cls.__dict__[name]
        elif kind == "factory":
            defaults[name] = factories[name] = cls.__dict__[name].factory
            delattr(cls, name)  # as dataclasses: a field without a plain default has no class attribute
    methods = make(cls, defaults, _frozen_error, FACTORY)
    methods["__repr__"] = reprlib.recursive_repr()(methods["__repr__"])
    for name, fn in methods.items():
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        fn.__module__ = cls.__module__
        setattr(cls, name, fn)
    setattr(cls, "__match_args__", tuple(name for name, _, _ in spec))
    if cls.__doc__ is None:
        cls.__doc__ = doc
    setattr(cls, "__dataclass_fields__", _FromDataclasses(spec, factories))
    setattr(cls, "__dataclass_params__", _FromDataclasses(spec, factories))


class _FromDataclasses:
    """`__dataclass_fields__` and `__dataclass_params__`, made by `dataclasses` on first access from a
    copy of the class's declaration, so that they are exactly what `dataclasses` makes."""

    def __init__(self, spec: Spec, factories: dict[str, Callable[[], Any]]) -> None:
        self.spec, self.factories, self.name = spec, factories, ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, owner: type) -> Any:
        import dataclasses

        ns: dict[str, Any] = {
            "__module__": owner.__module__,
            "__qualname__": owner.__qualname__,
            "__doc__": owner.__doc__,
            "__annotations__": owner.__dict__["__annotations__"],
        }
        for name, _, kind in self.spec:
            if kind == "default":
                ns[name] = owner.__dict__[name]
            elif kind == "factory":
                ns[name] = dataclasses.field(default_factory=self.factories[name])
        shadow = dataclasses.dataclass(frozen=True)(type(owner.__name__, (), ns))
        for attr in ("__dataclass_fields__", "__dataclass_params__"):
            setattr(owner, attr, getattr(shadow, attr))
        return getattr(owner, self.name)
