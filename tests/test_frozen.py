"""`@frozen` classes are what `dataclasses.dataclass(frozen=True)` makes of the same declaration, and
`_compiled_dataclasses.py` is up to date (run `python3 -m rktd_units.frozen` after changing a field)."""

from __future__ import annotations

import dataclasses
import inspect
import pickle
import sys
from pathlib import Path
from typing import Any

import pytest

from rktd_units import frozen

ROOT = Path(__file__).resolve().parent.parent
frozen.build()  # imports every module with @frozen classes, so that SPECS names them all
CLASSES = sorted(frozen.SPECS)


def _class(qualname: str) -> type:
    module, _, name = qualname.rpartition(".")
    return getattr(sys.modules[module], name)  # type: ignore[no-any-return]


def _reference(cls: type) -> type:
    """What dataclasses makes of the declaration of `cls`."""
    fields = dataclasses.fields(cls)
    ns: dict[str, Any] = {
        "__module__": cls.__module__,
        "__qualname__": cls.__qualname__,
        "__doc__": cls.__doc__,
        "__annotations__": inspect.get_annotations(cls),
    }
    for f in fields:
        if f.default_factory is not dataclasses.MISSING:
            ns[f.name] = dataclasses.field(default_factory=f.default_factory)
        elif f.default is not dataclasses.MISSING:
            ns[f.name] = f.default
    return dataclasses.dataclass(frozen=True)(type(cls.__name__, (), ns))


def _sample(cls: type, marker: str) -> dict[str, Any]:
    return {f.name: f"{marker}-{f.name}" for f in dataclasses.fields(cls)}


def test_compiled_dataclasses_are_up_to_date() -> None:
    path = ROOT / "rktd_units" / "_compiled_dataclasses.py"
    assert path.read_text() == frozen.build(), f"{path} is stale: run python3 -m rktd_units.frozen"


def test_the_model_and_the_tables_are_compiled() -> None:
    assert {"rktd_units.model.Pod", "rktd_units.formats.schema.Key", "rktd_units.podpath.Candidate"} <= set(
        CLASSES
    )
    for qualname in CLASSES:
        assert "__dataclass_fields__" in _class(qualname).__dict__


@pytest.mark.parametrize("qualname", CLASSES)
def test_same_class_as_dataclasses_makes(qualname: str) -> None:
    cls = _class(qualname)
    ref = _reference(cls)
    assert dataclasses.is_dataclass(cls)
    assert [(f.name, f.type, f.default, f.default_factory) for f in dataclasses.fields(cls)] == [
        (f.name, f.type, f.default, f.default_factory) for f in dataclasses.fields(ref)
    ]
    assert cls.__dataclass_params__.frozen and cls.__dataclass_params__.eq  # type: ignore[attr-defined]
    assert repr(cls.__dataclass_params__) == repr(ref.__dataclass_params__)  # type: ignore[attr-defined]
    assert str(inspect.signature(cls)) == str(inspect.signature(ref))
    assert cls.__match_args__ == ref.__match_args__  # type: ignore[attr-defined]
    assert cls.__doc__ == ref.__doc__
    assert set(ref.__dict__) <= set(cls.__dict__)  # nothing dataclasses adds is missing (a new version's)
    for name in ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__"):
        assert getattr(cls, name).__qualname__ == f"{cls.__qualname__}.{name}"
    for f in dataclasses.fields(cls):
        assert (f.name in cls.__dict__) == (f.name in ref.__dict__)
        if f.name in cls.__dict__:
            assert cls.__dict__[f.name] is ref.__dict__[f.name]

    a, b = _sample(cls, "a"), _sample(cls, "b")
    obj, same, other = cls(**a), cls(**a), cls(**b)
    robj, rsame, rother = ref(**a), ref(**a), ref(**b)
    assert repr(obj) == repr(robj)
    assert (obj == same, obj == other, obj != same, obj == robj) == (
        robj == rsame,
        robj == rother,
        False,
        False,
    )
    assert hash(obj) == hash(robj) == hash(same)
    assert dataclasses.astuple(obj) == dataclasses.astuple(robj)
    assert dataclasses.replace(obj, **b) == other
    assert cls in frozen._NAMES  # frozen.replace() and defaults() do not ask dataclasses
    assert frozen.replace(obj, **b) == other
    first = next(iter(b))
    assert repr(frozen.replace(obj, **{first: b[first]})) == repr(
        dataclasses.replace(robj, **{first: b[first]})
    )
    with pytest.raises(TypeError, match="not_a_field"):
        frozen.replace(obj, not_a_field=1)
    assert frozen.defaults(cls) == frozen.defaults(ref)  # ref: from its dataclasses.fields()
    assert pickle.loads(pickle.dumps(obj)) == obj
    required = [
        f.name for f in dataclasses.fields(cls) if f.default is f.default_factory is dataclasses.MISSING
    ]
    defaults = cls(**{n: a[n] for n in required})
    assert repr(defaults) == repr(ref(**{n: a[n] for n in required}))
    messages = []
    for thing in (obj, robj):
        for change in (
            lambda t: setattr(t, next(iter(a)), 1),
            lambda t: setattr(t, "not_a_field", 1),
            lambda t: delattr(t, next(iter(a))),
        ):
            with pytest.raises(dataclasses.FrozenInstanceError) as info:
                change(thing)
            messages.append(str(info.value))
    assert messages[:3] == messages[3:]


def test_a_stale_or_unhandled_class_is_made_by_dataclasses() -> None:
    @frozen.frozen
    class Stale:
        """Not in the compiled module."""

        a: int
        b: str = "x"

    @frozen.frozen
    class NoDoc:
        a: int

    for cls in (Stale, NoDoc):
        assert dataclasses.is_dataclass(cls)
        assert "__dataclass_fields__" in cls.__dict__ and not isinstance(
            cls.__dict__["__dataclass_fields__"], frozen._FromDataclasses
        )
    assert (
        repr(Stale(1)) == "test_a_stale_or_unhandled_class_is_made_by_dataclasses.<locals>.Stale(a=1, b='x')"
    )
    assert frozen.replace(Stale(1), b="y") == Stale(1, "y")
    assert frozen.defaults(Stale) == {"b": "x"}
