"""`@frozen`: `@dataclass(frozen=True)`, made without running `dataclasses` at import.

`dataclasses` writes every class's methods as source text and exec()s it: about 0.4 ms a class on
Python 3.11, and `import dataclasses` (with `inspect`, `ast`, `dis`, `tokenize`) costs half an
interpreter start more. rktd-generator runs at every boot and daemon-reload and imports some twenty
such classes (the model and the tables), so here:

- `__init__` comes precompiled from `rktd_units/_compiled_dataclasses.py`, written by the same rules
  by `python3 -m rktd_units.frozen` (the tests fail while it is stale);
- `__repr__`, `__eq__`, `__hash__`, `__setattr__` and `__delattr__` are the same few lines for
  every class, closed over its field names;
- `__dataclass_fields__` and `__dataclass_params__` are made by `dataclasses` itself the first time
  anything asks (`dataclasses.fields()`, `replace()`, `asdict()`, `is_dataclass()`);
- `frozen.replace()` and `frozen.defaults()` are `dataclasses.replace()` and the fields' defaults
  for these classes without importing `dataclasses` (`rktd run` uses them on every pod start; for
  any other class they ask `dataclasses`).

The tests check every such class against what `dataclasses.dataclass(frozen=True)` makes of the
same declaration: fields, `__init__` signature, `__match_args__`, repr, equality, hash, frozenness.
A class this module does not handle, or whose compiled `__init__` is missing or stale (a field added,
renamed, retyped, given or losing a default), is made by `dataclasses`, as without this module.
Handled: a class with a docstring, no base class and no methods of its own that dataclasses would
write, whose fields are plain, with defaults or with `field(default_factory=...)`.
"""

from __future__ import annotations

import operator
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from dataclasses import field as field
    from typing import Any, TypeVar, dataclass_transform

    _T = TypeVar("_T")

    @dataclass_transform(frozen_default=True, field_specifiers=(field,))
    def frozen(cls: type[_T]) -> type[_T]: ...

else:

    def field(*, default_factory):
        """`dataclasses.field(default_factory=...)`, without importing dataclasses."""
        return _Factory(default_factory)

    def frozen(cls):
        """`@dataclass(frozen=True)`, with the compiled `__init__` when it is up to date."""
        spec = _spec(cls)
        if spec is None:
            return _by_dataclasses(cls)
        qualname = f"{cls.__module__}.{cls.__qualname__}"
        SPECS[qualname] = spec
        compiled = _compiled().get(qualname)
        if compiled is None or compiled[0] != spec:
            return _by_dataclasses(cls)
        _install(cls, spec, compiled[1])
        return cls


_METHODS = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__", "__match_args__")
_UNSUPPORTED = ("ClassVar", "InitVar", "KW_ONLY", "typing.", "dataclasses.")
_RESERVED = ("self", "_fields", "_dflt", "_factory")  # names the compiled __init__ uses itself

_FORMAT = 2  # of the code build() writes: change it with the code
# One field: (name, annotation text, "required" | "default" | "factory").
Spec = tuple[tuple[str, str, str], ...]
SPECS: dict[str, Spec] = {}  # every class this module handles, by module.qualname, for build()
_NAMES: dict[type, tuple[str, ...]] = {}  # every class made here (not by dataclasses): its fields


class _Factory:
    __slots__ = ("factory",)

    def __init__(self, factory: Callable[[], Any]) -> None:
        self.factory = factory


class _FactoryDefault:
    """The default a `default_factory` field shows in the `__init__` signature, as in dataclasses."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<factory>"


FACTORY = _FactoryDefault()


def _spec(cls: type) -> Spec | None:
    """The fields as `dataclasses` reads them, or None if this module does not handle the class."""
    if cls.__doc__ is None or cls.__bases__ != (object,) or any(m in cls.__dict__ for m in _METHODS):
        return None
    out = []
    for name, annotation in cls.__dict__.get("__annotations__", {}).items():  # noqa: RUF063 (no inspect)
        if not isinstance(annotation, str) or annotation.startswith(_UNSUPPORTED) or name in _RESERVED:
            return None
        value = cls.__dict__.get(name, _Factory)  # the class _Factory: no default
        if value is _Factory:
            kind = "required"
        elif isinstance(value, _Factory):
            kind = "factory"
        elif type(value).__name__ == "Field" or isinstance(value, list | dict | set):
            return None  # dataclasses.field(), or a mutable default that dataclasses refuses
        else:
            kind = "default"
        out.append((name, annotation, kind))
    return tuple(out)


def replace(obj: _T, /, **changes: Any) -> _T:
    """`dataclasses.replace(obj, **changes)`: a copy of `obj` with `changes`, through its `__init__`."""
    names = _NAMES.get(type(obj))
    if names is None:  # made by dataclasses (or not a dataclass: it raises the same TypeError)
        import dataclasses

        return dataclasses.replace(obj, **changes)  # type: ignore[type-var]
    values = {name: getattr(obj, name) for name in names}
    values.update(changes)  # an unknown name: TypeError from __init__, as with dataclasses
    return type(obj)(**values)


def defaults(cls: type) -> dict[str, Any]:
    """The fields' plain defaults by name (not `default_factory` ones): the `Field.default`s of
    `dataclasses.fields(cls)` that are not MISSING."""
    names = _NAMES.get(cls)
    if names is None:
        import dataclasses

        return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    return {name: cls.__dict__[name] for name in names if name in cls.__dict__}


def _compiled() -> dict[str, tuple[Spec, Callable[..., Callable[..., None]]]]:
    try:
        from rktd_units._compiled_dataclasses import CLASSES, FORMAT
    except ImportError:  # the first build
        return {}
    return CLASSES if FORMAT == _FORMAT else {}  # written by another version of build()


def _by_dataclasses(cls: type) -> type:
    import dataclasses

    for name, value in list(cls.__dict__.items()):
        if isinstance(value, _Factory):
            setattr(cls, name, dataclasses.field(default_factory=value.factory))
    return dataclasses.dataclass(frozen=True)(cls)


def _frozen_error(name: str, what: str) -> Exception:
    from dataclasses import FrozenInstanceError

    return FrozenInstanceError(f"cannot {what} field {name!r}")


def _install(cls: Any, spec: Spec, make_init: Callable[..., Callable[..., None]]) -> None:
    import reprlib

    names = tuple(name for name, _, _ in spec)
    defaults: dict[str, Any] = {}
    factories: dict[str, Callable[[], Any]] = {}
    for name, _, kind in spec:
        if kind == "default":
            defaults[name] = cls.__dict__[name]
        elif kind == "factory":
            defaults[name] = factories[name] = cls.__dict__[name].factory
            delattr(cls, name)  # as dataclasses: only plain defaults stay class attributes
    key: Callable[[object], tuple[Any, ...]]
    if len(names) > 1:
        key = operator.attrgetter(*names)
    else:
        key = lambda obj: tuple(getattr(obj, n) for n in names)  # noqa: E731

    def __repr__(self: object) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in names)
        return f"{self.__class__.__qualname__}({fields})"

    def __eq__(self: object, other: object) -> bool:
        if other.__class__ is self.__class__:
            return bool(key(self) == key(other))
        return NotImplemented

    def __hash__(self: object) -> int:
        return hash(key(self))

    def __setattr__(self: object, name: str, value: object) -> None:
        if type(self) is cls or name in names:
            raise _frozen_error(name, "assign to")
        super(cls, self).__setattr__(name, value)

    def __delattr__(self: object, name: str) -> None:
        if type(self) is cls or name in names:
            raise _frozen_error(name, "delete")
        super(cls, self).__delattr__(name)

    methods = {
        "__init__": make_init(defaults, FACTORY),
        "__repr__": reprlib.recursive_repr()(__repr__),
        "__eq__": __eq__,
        "__hash__": __hash__,
        "__setattr__": __setattr__,
        "__delattr__": __delattr__,
    }
    if sys.version_info >= (3, 13):  # dataclasses adds copy.replace() support

        def __replace__(self: object, /, **changes: Any) -> object:
            import dataclasses

            return dataclasses.replace(self, **changes)

        methods["__replace__"] = __replace__
    for name, fn in methods.items():
        fn.__qualname__ = f"{cls.__qualname__}.{name}"
        fn.__module__ = cls.__module__
        setattr(cls, name, fn)
    setattr(cls, "__match_args__", names)  # noqa: B010 (mypy: type has no such attribute)
    _NAMES[cls] = names
    for attr in ("__dataclass_fields__", "__dataclass_params__"):
        setattr(cls, attr, _FromDataclasses(attr, factories))


class _FromDataclasses:
    """`__dataclass_fields__` or `__dataclass_params__`, made by `dataclasses` on first access from a
    copy of the class's declaration, so that they are exactly what `dataclasses` makes."""

    def __init__(self, attr: str, factories: dict[str, Callable[[], Any]]) -> None:
        self.attr, self.factories = attr, factories

    def __get__(self, obj: object, owner: type) -> Any:
        import dataclasses

        annotations = owner.__dict__["__annotations__"]  # noqa: RUF063 (as dataclasses reads them)
        ns: dict[str, Any] = {
            "__module__": owner.__module__,
            "__qualname__": owner.__qualname__,
            "__doc__": owner.__doc__,
            "__annotations__": annotations,
        }
        for name in annotations:
            if name in self.factories:
                ns[name] = dataclasses.field(default_factory=self.factories[name])
            elif name in owner.__dict__:
                ns[name] = owner.__dict__[name]
        shadow: type = dataclasses.dataclass(frozen=True)(type(owner.__name__, (), ns))
        for attr in ("__dataclass_fields__", "__dataclass_params__"):
            setattr(owner, attr, getattr(shadow, attr))
        return getattr(owner, self.attr)


# -- Writing rktd_units/_compiled_dataclasses.py ---------------------------------------------------

MODULES = (
    "rktd_units.model",
    "rktd_units.cli",
    "rktd_units.stage0",
    "rktd_units.store",
    "rktd_units.annotations",
    "rktd_units.formats",
    "rktd_units.formats.schema",
    "rktd_units.formats.appc",
    "rktd_units.podpath",
)
HEADER = '''"""Generated by `python3 -m rktd_units.frozen` (see frozen.py): do not edit.

For each `@frozen` class: its fields, and a function making the `__init__` that
`dataclasses.dataclass(frozen=True)` would write for them.
"""

# mypy: ignore-errors

FORMAT = {format}
'''


def _q(text: str) -> str:
    """A string literal as ruff format writes it (the names and annotations here need no escapes)."""
    if not text.isprintable() or '"' in text or "\\" in text:
        raise ValueError(f"cannot write {text!r}")
    return f'"{text}"'


def _init_source(qualname: str, spec: Spec) -> list[str]:
    # dataclasses assigns each field with object.__setattr__ (past the frozen __setattr__); for a class
    # without __slots__ or descriptors that is a store into the instance's __dict__, which is faster.
    params = ["self"]
    body = ["        _fields = self.__dict__"] if spec else ["        pass"]
    for name, _, kind in spec:
        if kind == "required":
            params.append(name)
            body.append(f"        _fields[{_q(name)}] = {name}")
        elif kind == "default":
            params.append(f"{name}=_dflt[{_q(name)}]")
            body.append(f"        _fields[{_q(name)}] = {name}")
        else:
            params.append(f"{name}=_factory")
            body.append(
                f"        _fields[{_q(name)}] = _dflt[{_q(name)}]() if {name} is _factory else {name}"
            )
    annotations = [f"        {_q(name)}: {_q(annotation)}," for name, annotation, _ in spec]
    return [
        f"def {qualname.replace('.', '_')}(_dflt, _factory):",
        "    def __init__(",
        *(f"        {p}," for p in params),
        "    ):",
        *body,
        "",
        "    __init__.__annotations__ = {",
        *annotations,
        '        "return": None,',
        "    }",
        "    return __init__",
    ]


def build(modules: tuple[str, ...] = MODULES) -> str:
    """The text of `_compiled_dataclasses.py` for every `@frozen` class of `modules`."""
    import importlib

    for module_name in modules:
        importlib.import_module(module_name)
    functions: list[str] = []
    entries: list[str] = []
    for qualname, spec in sorted(SPECS.items()):
        if not qualname.startswith(tuple(f"{m}." for m in modules)):
            continue
        functions += ["", "", *_init_source(qualname, spec)]
        entries += [
            f"    {_q(qualname)}: (",
            "        (",
            *(f"            ({', '.join(_q(part) for part in field)})," for field in spec),
            "        ),",
            f"        {qualname.replace('.', '_')},",
            "    ),",
        ]
    return "\n".join(
        [HEADER.format(format=_FORMAT).rstrip("\n"), *functions, "", "", "CLASSES = {", *entries, "}", ""]
    )


if __name__ == "__main__":
    import os

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from rktd_units.frozen import build as build_text  # the module the package imports, not __main__

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_compiled_dataclasses.py")
    text = build_text()
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    print(path)
