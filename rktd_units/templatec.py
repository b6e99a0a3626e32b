"""Compile the jinja2 templates in `templates/` to plain Python, so the generator never imports jinja2.

`import jinja2` alone costs several times a bare interpreter start, and the generator runs on every
boot and every `daemon-reload`. The templates stay jinja2 templates (the tests render each with
jinja2 itself and compare byte for byte); this module translates the small subset they use into a
module of plain functions, `rktd_units/_compiled_templates.py`, committed next to its sources and
checked to be up to date by the tests. Run `scripts/compile-templates` after editing a template.

The subset, with jinja2's `trim_blocks` and `lstrip_blocks` (a block tag on a line of its own leaves
no trace of that line):
- `{{ name }}`, `{{ name | filter }}`, `{{ name | filter('literal') }}` anywhere in a line;
- `{% if [not] name %}`, `{% elif [not] name %}`, `{% else %}`, `{% endif %}`,
  `{% for a[, b] in name %}`, `{% endfor %}` and `{# comments #}`, each alone on its line.
Anything else is an error naming the template line, so a template cannot silently mean one thing
to jinja2 and another here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from rktd_units.errors import RktdError

HEADER = '''"""Generated from templates/*.j2 by scripts/compile-templates (see templatec.py): do not edit."""

from __future__ import annotations

TYPE_CHECKING = False  # typing is imported only for the type checker: the generator runs at every boot
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeAlias

    Filters: TypeAlias = Mapping[str, Callable[..., str]]
'''

_TAG = re.compile(r"({{.*?}}|{%.*?%}|{#.*?#})", re.S)
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_EXPR = re.compile(rf"^\s*({_NAME})((?:\s*\|\s*{_NAME}(?:\('[^'\\]*'\))?)*)\s*$")
_FILTER = re.compile(rf"\|\s*({_NAME})(?:\('([^'\\]*)'\))?")
_IF = re.compile(rf"^(if|elif)\s+(not\s+)?({_NAME})$")
_FOR = re.compile(rf"^for\s+({_NAME})(?:\s*,\s*({_NAME}))?\s+in\s+({_NAME})$")
_CHUNK = 88  # longest string literal per line of generated code


class TemplateError(RktdError):
    """A template uses more of jinja2 than this compiler translates."""


@dataclass
class _Out:
    lines: list[str]
    indent: int = 1
    loop_vars: tuple[str, ...] = ()

    def emit(self, code: str) -> None:
        self.lines.append("    " * self.indent + code)

    def text(self, text: str) -> None:
        while text:
            cut = text.find("\n")
            cut = cut + 1 if 0 <= cut < _CHUNK else _CHUNK
            self.emit(f"w({json.dumps(text[:cut], ensure_ascii=False)})")
            text = text[cut:]


def _var(name: str, out: _Out) -> str:
    return f"v_{name}" if name in out.loop_vars else f"c[{json.dumps(name)}]"


def _expr(source: str, out: _Out, where: str) -> str:
    m = _EXPR.match(source)
    if not m:
        raise TemplateError(f"{where}: unsupported expression {source.strip()!r}")
    code = _var(m.group(1), out)
    for name, arg in _FILTER.findall(m.group(2)):
        code = (
            f"f[{json.dumps(name)}]({code}, {json.dumps(arg)})" if arg else f"f[{json.dumps(name)}]({code})"
        )
    return code


def _open(kind: str, header: str, out: _Out, stack: list[tuple[str, int, int]], names: int = 0) -> None:
    out.emit(header)
    out.indent += 1
    stack.append((kind, len(out.lines), names))


def _close(out: _Out, stack: list[tuple[str, int, int]]) -> str:
    kind, start, names = stack.pop()
    if len(out.lines) == start:
        out.emit("pass")  # an empty block is still a block
    out.indent -= 1
    out.loop_vars = out.loop_vars[: len(out.loop_vars) - names]
    return kind


def _statement(tag: str, out: _Out, stack: list[tuple[str, int, int]], where: str) -> None:
    body = tag[2:-2].strip()
    top = stack[-1][0] if stack else ""
    if m := _IF.match(body):
        if m.group(1) == "elif":
            if top != "if":
                raise TemplateError(f"{where}: elif outside if")
            _close(out, stack)
        _open("if", f"{m.group(1)} {'not ' if m.group(2) else ''}{_var(m.group(3), out)}:", out, stack)
    elif m := _FOR.match(body):
        names = [n for n in m.group(1, 2) if n]
        header = f"for {', '.join('v_' + n for n in names)} in {_var(m.group(3), out)}:"
        _open("for", header, out, stack, len(names))
        out.loop_vars += tuple(names)
    elif body == "else" and top == "if":
        _close(out, stack)
        _open("if", "else:", out, stack)
    elif body in ("endif", "endfor") and top == body[3:]:
        _close(out, stack)
    else:
        raise TemplateError(f"{where}: unsupported or misplaced tag {tag!r}")


def _line_tags(line: str) -> Iterable[str]:
    return (p for p in _TAG.split(line) if p)


def compile_template(name: str, source: str) -> str:
    """The Python source of `def render_<name>(c, f) -> str` for one template."""
    func = "render_" + re.sub(r"\W", "_", name.removesuffix(".j2"))
    out = _Out(
        [
            f"def {func}(c: Mapping[str, Any], f: Filters) -> str:",
            "    o: list[str] = []",
            "    w = o.append",
        ]
    )
    stack: list[tuple[str, int, int]] = []
    for number, line in enumerate(source.splitlines(keepends=True), 1):
        where = f"templates/{name}:{number}"
        stripped = line.lstrip(" \t").removesuffix("\n")
        if stripped[:2] in ("{%", "{#") and _TAG.fullmatch(stripped):
            if stripped[:2] == "{%":
                _statement(stripped, out, stack, where)
            continue
        for part in _line_tags(line):
            if part.startswith("{{"):
                out.emit(f"w(str({_expr(part[2:-2], out, where)}))")
            elif part[:2] in ("{%", "{#"):
                raise TemplateError(f"{where}: block tags and comments must stand alone on their line")
            else:
                out.text(part)
    if stack:
        raise TemplateError(f"templates/{name}: unclosed {stack[-1][0]}")
    out.emit('return "".join(o)')
    return "\n".join(out.lines) + "\n"


def compile_dir(directory: Path) -> str:
    """The whole generated module for every `*.j2` in `directory`, in name order."""
    names = sorted(p.name for p in directory.glob("*.j2"))
    parts = [HEADER]
    table = []
    for name in names:
        parts.append("\n\n" + compile_template(name, (directory / name).read_text(encoding="utf-8")))
        func = "render_" + re.sub(r"\W", "_", name.removesuffix(".j2"))
        table.append(f"    {json.dumps(name)}: {func},\n")
    parts.append("\n\nTEMPLATES: dict[str, Callable[[Mapping[str, Any], Filters], str]] = {\n")
    parts.extend(table)
    parts.append("}\n")
    return "".join(parts)


def build(root: Path) -> dict[Path, str]:
    """Every file made from `root/templates`: the compiled module and the static `pod@.service`."""
    from rktd_units import units  # the filters and the static context live with the converter

    module = compile_dir(root / "templates")
    namespace: dict[str, object] = {}
    exec(compile(module, "_compiled_templates.py", "exec"), namespace)
    templates = namespace["TEMPLATES"]
    assert isinstance(templates, dict)
    return {
        root / "rktd_units" / "_compiled_templates.py": module,
        root / "templates" / "pod@.service": units.static_template(templates),
    }
