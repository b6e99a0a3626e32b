"""Declarative JSON object tables for manifest parsers: one `Key` per JSON key, the rest derived.

`members()` parses a decoded JSON object by its table (keys matched case-insensitively, as Go's
encoding/json did; unknown, duplicate and missing keys are errors naming the field path);
`dump_members()` writes a model object back in the table's key order, leaving defaults out.
Scalar parsers take `(value, field)` and raise `ManifestError(None, field, ...)`; the caller adds
the file path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from rktd_units.errors import ManifestError
from rktd_units.frozen import defaults as field_defaults
from rktd_units.frozen import frozen
from rktd_units.model import NameValue

TYPE_CHECKING = False  # typing costs a fifth of an interpreter start: only for mypy (STYLE.md 13)
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")
    Parser = Callable[[object, str], Any]


def fail(field: str, message: str, hint: str | None = None) -> ManifestError:
    return ManifestError(None, field, message, hint=hint)


def shown(key: str, odd: str = ' ."[]') -> str:
    """A JSON key as it may appear in a one-line field path: quoted and escaped if it is odd."""
    if key and key.isprintable() and not any(c in key for c in odd):
        return key
    return json.dumps(key)


def join(field: str, key: str) -> str:
    return f"{field}.{shown(key)}" if field else shown(key)


_ODD_IN_INDEX = ' "[]'


def index(field: str, key: str) -> str:
    """The field path of a map entry: `field[key]` (`userAnnotations[team]`, `value[net.core.x]`)."""
    return f"{field}[{shown(key, _ODD_IN_INDEX)}]"


def describe(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "an object"


class _Obj(dict["str", "Any"]):
    dups: tuple[str, ...] = ()


def _pairs(pairs: list[tuple[str, Any]]) -> _Obj:
    obj = _Obj(pairs)  # the last value of a duplicate key wins, as before
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dups = []
        for k, _ in pairs:
            if k in seen:
                dups.append(k)
            seen.add(k)
        obj.dups = tuple(dups)
    return obj


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


_DECODER = json.JSONDecoder(object_pairs_hook=_pairs, parse_constant=_reject_constant)


def decode_json(data: bytes) -> object:
    """Decode JSON bytes, with duplicate keys remembered; raise ManifestError(field "") on bad JSON."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise fail("", f"not UTF-8: invalid byte at offset {e.start}", "save the file as UTF-8") from None
    try:
        if text.startswith("\ufeff"):  # as json.loads() says
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        return _DECODER.decode(text)  # json.loads(text, **the same options), without a decoder per call
    except json.JSONDecodeError as e:
        raise fail("", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except (ValueError, RecursionError) as e:
        raise fail("", f"invalid JSON: {e}") from None


def string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise fail(field, f"must be a string, not {describe(value)}")
    if "\x00" in value:
        raise fail(field, "must not contain NUL characters")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise fail(field, "must be valid Unicode (unpaired surrogate)") from None
    return value


def nonempty(value: object, field: str) -> str:
    s = string(value, field)
    if not s:
        raise fail(field, "must not be empty")
    return s


def boolean(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise fail(field, f"must be true or false, not {describe(value)}")
    return value


def integer(lo: int, hi: int) -> Parser:
    def parse(value: object, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            shown = repr(value) if isinstance(value, float) else describe(value)
            raise fail(field, f"must be a whole number, not {shown}")
        if not lo <= value <= hi:
            raise fail(field, f"must be between {lo} and {hi}, not {value}")
        return value

    return parse


def matching(regex: re.Pattern[str] | str, what: str, hint: str) -> Parser:
    """A string `regex` matches whole (fullmatch: `$` would let a trailing newline through); a pattern
    given as a str is compiled on first use (re's cache)."""

    def parse(value: object, field: str) -> str:
        s = string(value, field)
        if not (re.fullmatch(regex, s) if isinstance(regex, str) else regex.fullmatch(s)):
            raise fail(field, f"{s!r} is not {what}", hint)
        return s

    return parse


def abs_path(value: object, field: str) -> str:
    s = nonempty(value, field)
    if not s.startswith("/"):
        raise fail(field, f"{s!r} is not an absolute path", "start it with /")
    return s


def constant(expected: str) -> Parser:
    def parse(value: object, field: str) -> str:
        s = string(value, field)
        if s != expected:
            raise fail(field, f"must be {expected!r}, not {s!r}")
        return s

    return parse


def list_of(
    item: Callable[[object, str], T], *, nonempty: bool = False
) -> Callable[[object, str], tuple[T, ...]]:
    def parse(value: object, field: str) -> tuple[T, ...]:
        if not isinstance(value, list):
            raise fail(field, f"must be a list, not {describe(value)}")
        if nonempty and not value:
            raise fail(field, "must not be empty")
        return tuple(item(v, f"{field}[{i}]") for i, v in enumerate(value))

    return parse


def check_dups(value: dict[str, Any], field: str) -> None:
    for key in getattr(value, "dups", ()):
        raise fail(join(field, key), "duplicate key")


def string_map(value: object, field: str) -> tuple[NameValue, ...]:
    """A JSON object of free-form strings (`userAnnotations`), sorted by key."""
    if not isinstance(value, dict):
        raise fail(field, f"must be an object, not {describe(value)}")
    check_dups(value, field)
    return tuple(NameValue(string(k, field), string(v, index(field, k))) for k, v in sorted(value.items()))


def dump_string_map(values: tuple[NameValue, ...]) -> dict[str, str]:
    return {nv.name: nv.value for nv in values}


def _plain(value: Any) -> Any:
    """Model value -> JSON value: tuples become lists; everything else is already JSON."""
    return list(value) if isinstance(value, tuple) else value


@frozen
class Key:
    """One JSON key: appc spelling, model attribute ("" = not stored), parser and dumper."""

    name: str
    attr: str
    parse: Parser
    dump: Callable[[Any], object] = _plain
    required: bool = False
    always: bool = False  # dump even when the value is the model's default


class _Table:
    """What `members()` derives from a key table, once per table: by case-folded (and by exact) name,
    each key's (name, parser, model attribute, field-path component); the required key names."""

    __slots__ = ("by_fold", "keys", "required")

    def __init__(self, keys: Sequence[Key]) -> None:
        self.keys = keys  # held, so that the id() it is cached under is never reused
        entries = [(k.name, k.parse, k.attr, shown(k.name)) for k in keys]
        self.by_fold = {e[0].lower(): e for e in entries}
        self.by_fold.update({e[0]: e for e in entries})  # as spelt: no lower() needed
        self.required = tuple(k.name for k in keys if k.required)


_TABLES: dict[int, _Table] = {}  # by id(): key tables are module constants


def _table(keys: Sequence[Key]) -> _Table:
    table = _TABLES.get(id(keys))
    if table is None or table.keys is not keys:
        table = _TABLES[id(keys)] = _Table(keys)
    return table


def members(value: object, field: str, keys: Sequence[Key]) -> dict[str, Any]:
    """Parse a JSON object by its key table into {attr: value}; keys match case-insensitively."""
    if not isinstance(value, dict):
        raise fail(field, f"must be an object, not {describe(value)}")
    check_dups(value, field)
    table = _table(keys)
    by_fold = table.by_fold
    seen: dict[str, str] = {}  # key name -> the spelling given
    out: dict[str, Any] = {}
    prefix = f"{field}." if field else ""
    for raw, v in value.items():
        found = by_fold.get(raw) or (by_fold.get(raw.lower()) if raw.isascii() else None)
        if found is None:
            raise fail(join(field, raw), "unknown key", _known(raw, keys))
        name, parse, attr, shown_name = found
        if name in seen:
            raise fail(join(field, raw), f"duplicate key (also given as {seen[name]!r})")
        seen[name] = raw
        if v is None:
            continue  # rkt wrote `null` for empty lists: the same as absent
        parsed = parse(v, prefix + shown_name)
        if attr:
            out[attr] = parsed
    for name in table.required:
        if name not in seen or value[seen[name]] is None:
            raise fail(join(field, name), "is required")
    return out


def _known(raw: str, keys: Sequence[Key]) -> str:
    import difflib

    names = [k.name for k in keys]
    close = difflib.get_close_matches(raw, names, n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known keys: " + ", ".join(names)


def dump_members(obj: object, keys: Sequence[Key], consts: dict[str, str] | None = None) -> dict[str, Any]:
    defaults = field_defaults(type(obj))  # rktd run writes the pod manifest: no dataclasses here
    out: dict[str, Any] = {}
    for key in keys:
        if not key.attr:
            if consts and key.name in consts:
                out[key.name] = consts[key.name]
            continue
        value = getattr(obj, key.attr)
        if key.always or key.attr not in defaults or value != defaults[key.attr]:
            out[key.name] = key.dump(value)
    return out


def object_of(cls: type[T], keys: Sequence[Key]) -> Callable[[object, str], T]:
    def parse(value: object, field: str) -> T:
        return cls(**members(value, field, keys))

    return parse


def dumper(keys: Sequence[Key]) -> Callable[[Any], dict[str, Any]]:
    return lambda obj: dump_members(obj, keys)


def dump_list(item: Callable[[Any], object]) -> Callable[[Any], object]:
    return lambda values: [item(v) for v in values]


def unique(items: Sequence[T], key: Callable[[T], object], field: str, attr: str, what: str) -> None:
    seen: set[object] = set()
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            raise fail(f"{field}[{i}].{attr}", f"duplicate {what} {k!r}")
        seen.add(k)
