"""Safe YAML for manifests: one document, UTF-8, bounded in bytes, depth and alias expansion.

PyYAML's safe loader (the C one when built) already refuses arbitrary tags; on top of that a
manifest is at most MAX_BYTES, nests at most MAX_DEPTH levels (checked on the event stream first:
libyaml's composer recurses in C, and a few hundred thousand `[` crash the process), expands to
at most MAX_NODES nodes through aliases (no "billion laughs"), has no alias inside its own anchor
(no cycles) and no key given twice in a mapping (PyYAML silently keeps the last). Every problem is
a ManifestError.
"""

from __future__ import annotations

import datetime
import re
from typing import Any

import yaml

from rktd_units.formats.schema import describe
from rktd_units.formats.schema import fail as _fail

MAX_BYTES = 1 << 20  # a pod manifest is a few KiB; more is a mistake or an attack
MAX_NODES = 50_000  # YAML nodes after expanding aliases
MAX_DEPTH = 64

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE = "tag:yaml.org,2002:merge"
_BAD_CHARS = re.compile("[\x00\ud800-\udfff]")


def key_text(key: str) -> str:
    """A mapping key as it may appear in a field path: as written, or quoted if it is not plain text."""
    if 0 < len(key) <= 100 and key.isprintable() and not any(c.isspace() for c in key):
        return key
    return repr(key if len(key) <= 100 else key[:97] + "...")


def _at(path: str, key: str) -> str:
    return f"{path}.{key_text(key)}" if path else key_text(key)


def _node_children(node: yaml.Node, field: str) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.SequenceNode):
        return [(child, f"{field}[{i}]") for i, child in enumerate(node.value)]
    if not isinstance(node, yaml.MappingNode):
        return []
    out: list[tuple[yaml.Node, str]] = []
    seen: set[tuple[str, str]] = set()
    for key, value in node.value:
        name = str(key.value) if isinstance(key, yaml.ScalarNode) else "?"
        path = _at(field, name)
        if isinstance(key, yaml.ScalarNode) and key.tag != _MERGE:
            if (key.tag, key.value) in seen:
                raise _fail(path, "is given twice")
            seen.add((key.tag, key.value))
        out += [(key, path), (value, path)]
    return out


def _check_nodes(root: yaml.Node) -> None:
    """Reject recursive aliases, deep nesting and documents that expand past MAX_NODES."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()
    stack: list[tuple[yaml.Node, str, int, bool]] = [(root, "", 0, False)]
    while stack:
        node, field, depth, done = stack.pop()
        if done:
            size = 1 + sum(sizes[id(child)] for child, _ in _node_children(node, field))
            if size > MAX_NODES:
                raise _fail(field, f"expands to more than {MAX_NODES} YAML nodes", hint="too many aliases")
            sizes[id(node)] = size
            entered.discard(id(node))
            continue
        if id(node) in sizes:
            continue
        if id(node) in entered:
            raise _fail(field, "a YAML alias refers to a node that contains it")
        if depth > MAX_DEPTH:
            raise _fail(field, f"is nested more than {MAX_DEPTH} levels deep")
        entered.add(id(node))
        stack.append((node, field, depth, True))
        stack += [(c, f, depth + 1, False) for c, f in reversed(_node_children(node, field))]


def _check_depth(text: str) -> None:
    """Refuse deep nesting from the event stream, before libyaml's recursive composer can crash on it."""
    scanner = _Loader(text)
    depth = 0
    try:
        while not isinstance(event := scanner.get_event(), yaml.StreamEndEvent):
            if isinstance(event, yaml.SequenceStartEvent | yaml.MappingStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise _fail("", f"is nested more than {MAX_DEPTH} levels deep")
            elif isinstance(event, yaml.SequenceEndEvent | yaml.MappingEndEvent):
                depth -= 1
    finally:
        scanner.dispose()


def parse_yaml(data: bytes) -> object:
    """The one YAML document in `data`, safely constructed; ManifestError (field "") otherwise."""
    if len(data) > MAX_BYTES:
        raise _fail("", f"is larger than {MAX_BYTES // 1024} KiB")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _fail("", f"is not UTF-8 (at byte offset {e.start})") from None
    loader = _Loader(text)
    try:
        _check_depth(text)
        node = loader.get_single_node()
        if node is None:
            raise _fail(
                "", "is an empty YAML document", hint="a Kubernetes Pod needs apiVersion, kind, spec"
            )
        _check_nodes(node)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        where = (
            f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
            if e.problem_mark
            else ""
        )
        raise _fail("", f"invalid YAML: {e.problem or e.context}{where}") from None
    except yaml.reader.ReaderError as e:
        raise _fail("", f"invalid YAML: {e.reason} (character {e.position})") from None
    except yaml.YAMLError as e:  # no other kind is raised today; keep the message to one line
        raise _fail("", "invalid YAML: " + " ".join(str(e).split())) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:
        raise _fail("", f"invalid YAML value: {type(e).__name__}") from None
    finally:
        loader.dispose()


# ---------------------------------------------------------------------------------------------
# Typed access to the YAML document; every problem is a ManifestError at a Kubernetes field path.


def _kind(value: object) -> str:
    """schema.describe() for what JSON also has, in YAML's words for the rest."""
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, datetime.date):
        return "a date"
    if value is None or isinstance(value, bool | int | float | str | list):
        return describe(value)
    return f"a YAML {type(value).__name__}"


def _show(value: object) -> str:
    """A short, safe rendering of a scalar for messages (huge numbers cannot even be printed)."""
    if isinstance(value, str):
        return repr(value if len(value) <= 64 else value[:61] + "...")
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 10**18:
        return str(value)
    return _kind(value)


def _str(value: object, field: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        scalar = isinstance(value, bool | int | float | datetime.date)
        raise _fail(field, f"must be a string, not {_kind(value)}", hint="quote it" if scalar else None)
    if _BAD_CHARS.search(value):
        raise _fail(field, "contains a NUL character or an unpaired surrogate")
    if not empty and not value:
        raise _fail(field, "must not be empty")
    return value


def _int(value: object, field: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(field, f"must be an integer, not {_kind(value)}")
    if not lo <= value <= hi:
        raise _fail(field, f"{_show(value)} is out of range {lo}..{hi}")
    return value


def _bool(value: object, field: str) -> bool:
    if not isinstance(value, bool):
        raise _fail(field, f"must be true or false, not {_kind(value)}")
    return value


def _list(value: object, field: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(field, f"must be a list, not {_kind(value)}")
    return value


def _map(value: object, field: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _fail(field, f"must be a mapping, not {_kind(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _fail(field, f"key {_show(key)} is not a string", hint="quote it")
    return value
