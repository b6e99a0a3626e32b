"""A lossless model of systemd unit files, and the escaping that keeps values inside their field.

This module knows only syntax (systemd.syntax(7), `src/shared/conf-parser.c`,
`src/basic/extract-word.c`), never what a pod means: `units.py` does that.

- `parse(text)` keeps every byte: comments, blank lines, continuation lines and the comment lines
  systemd allows between them; `str(unit)` gives the same text back.
- Lines end at `\\n`, `\\r`, `\\r\\n` or NUL (systemd's `read_line()`), not at Python's other line
  breaks. A line ending in an odd number of backslashes continues on the next one; the backslash
  becomes a space. A logical line may not exceed `LONG_LINE_MAX` (1 MiB): systemd refuses the file.
- Values written with `UnitFile.add()` are checked (`check_value`): no control characters, no
  surrounding whitespace, no trailing backslash, within the line limit. What a value *means* to
  systemd (specifiers, quoting) is the caller's business, helped by `escape_specifiers` and
  `exec_line`, whose inverse `split_exec` mirrors `config_parse_exec()`.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence

from rktd_units.errors import RktdError

LONG_LINE_MAX = 1024 * 1024  # systemd: longest logical line of a unit file, in bytes
MAX_ARG_STRLEN = 32 * 4096  # Linux: longest single argv string, in bytes (with its NUL)
WHITESPACE = " \t\n\r"  # systemd's WHITESPACE: word separators in command lines
COMMENTS = "#;"
_LINE_ENDS = "\n\r\0"

# Characters that need no quoting in a command-line word (and mean nothing to systemd there).
_PLAIN_WORD = re.compile(r"[A-Za-z0-9_./:=,@+-]+")
_PLAIN_LINE = re.compile(r"[A-Za-z0-9_./:=,@+ -]*")  # words of plain characters, separated by spaces
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CONTROL_OR_SURROGATE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
_ENV_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_C_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v"}
_C_UNESCAPES = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "s": " "}
_C_UNESCAPES.update({"\\": "\\", '"': '"', "'": "'"})


class UnitFileError(RktdError):
    """Text that is not a unit file, or a value that cannot be written into one."""


# -- The model -------------------------------------------------------------------------------------


class _Node:
    """Plain classes, not dataclasses: this module is on the generator's start-up path, and each
    dataclass costs a fraction of a millisecond to create at import."""

    __slots__: tuple[str, ...] = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, a) == getattr(other, a) for a in self.__slots__
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{a}={getattr(self, a)!r}' for a in self.__slots__)})"

    __hash__ = None  # type: ignore[assignment]  # mutable


class Assignment(_Node):
    """`Key=value`: `value` is the logical value (continuations joined, stripped); `raw` the text."""

    __slots__ = ("key", "raw", "value")

    def __init__(self, key: str, value: str, raw: str) -> None:
        self.key, self.value, self.raw = key, value, raw


class Trivia(_Node):
    """A blank or comment line, kept as it was."""

    __slots__ = ("raw",)

    def __init__(self, raw: str) -> None:
        self.raw = raw


class Section(_Node):
    __slots__ = ("items", "name", "raw")

    def __init__(self, name: str, raw: str, items: list[Assignment | Trivia] | None = None) -> None:
        self.name = name
        self.raw = raw  # the `[Name]` line as written
        self.items: list[Assignment | Trivia] = items if items is not None else []


class UnitFile(_Node):
    """Lines before the first section (comments only), then sections in file order."""

    __slots__ = ("preamble", "sections")

    def __init__(self, preamble: list[Trivia] | None = None, sections: list[Section] | None = None) -> None:
        self.preamble: list[Trivia] = preamble if preamble is not None else []
        self.sections: list[Section] = sections if sections is not None else []

    def __str__(self) -> str:
        out = [t.raw for t in self.preamble]
        for s in self.sections:
            out.append(s.raw)
            out.extend(i.raw for i in s.items)
        return "".join(out)

    def section_names(self) -> list[str]:
        return [s.name for s in self.sections]

    def assignments(self, section: str | None = None) -> Iterator[tuple[str, Assignment]]:
        for s in self.sections:
            if section is None or s.name == section:
                for item in s.items:
                    if isinstance(item, Assignment):
                        yield s.name, item

    def get(self, section: str, key: str) -> list[str]:
        """Every value of `key` in every `[section]`, in file order (as systemd reads them)."""
        return [a.value for _, a in self.assignments(section) if a.key == key]

    def last(self, section: str, key: str) -> str | None:
        values = self.get(section, key)
        return values[-1] if values else None

    def add_comment(self, text: str) -> None:
        """A comment line before the first section."""
        check_value(text, "comment", allow_empty=True)
        self.preamble.append(Trivia(f"# {text}\n" if text else "#\n"))

    def add(self, section: str, key: str, value: str) -> None:
        """Append `key=value` to the last `[section]`, starting one if there is none."""
        check_key(key)
        check_value(value, f"{section}.{key}", allow_empty=True)
        line = f"{key}={value}\n"
        if len(line.encode()) > LONG_LINE_MAX:
            raise UnitFileError(
                f"{section}.{key}: longer than systemd's line limit of {LONG_LINE_MAX} bytes"
            )
        for s in reversed(self.sections):
            if s.name == section:
                at = len(s.items)
                while at and isinstance(s.items[at - 1], Trivia) and not s.items[at - 1].raw.strip():
                    at -= 1  # before the blank lines that separate it from the next section
                s.items.insert(at, Assignment(key, value, line))
                return
        check_section(section)
        if self.sections or self.preamble:
            self._last_items().append(Trivia("\n"))
        self.sections.append(Section(section, f"[{section}]\n", [Assignment(key, value, line)]))

    def _last_items(self) -> list[Assignment | Trivia] | list[Trivia]:
        return self.sections[-1].items if self.sections else self.preamble


def check_key(key: str) -> None:
    if not key or not all(c.isascii() and (c.isalnum() or c in "-_.") for c in key):
        raise UnitFileError(f"{key!r} is not a unit file key")


def check_section(name: str) -> None:
    if not name or any(c in "[]" or _is_control(c) for c in name):
        raise UnitFileError(f"{name!r} is not a section name")


def _is_control(c: str) -> bool:
    return c < " " or c == "\x7f"


def check_value(value: str, what: str, *, allow_empty: bool = False) -> None:
    """Refuse what systemd would read differently: control characters (line ends among them),
    surrounding whitespace (stripped), an odd trailing backslash (a continuation), non-UTF-8."""
    if not value:
        if allow_empty:
            return
        raise UnitFileError(f"{what}: empty value")
    if _CONTROL_OR_SURROGATE.search(value):  # one search for the common case: neither
        m = _CONTROL.search(value)
        if m:
            raise UnitFileError(
                f"{what}: control character {m.group()!r} cannot be written into a unit file"
            )
        raise UnitFileError(f"{what}: not valid UTF-8", hint="systemd ignores lines that are not UTF-8")
    if value[0] in WHITESPACE or value[-1] in WHITESPACE:
        raise UnitFileError(f"{what}: leading or trailing whitespace would be lost")
    if (len(value) - len(value.rstrip("\\"))) % 2:
        raise UnitFileError(f"{what}: a trailing backslash would continue the line")


# -- Parsing ---------------------------------------------------------------------------------------


def _physical_lines(text: str) -> list[str]:
    """Split as systemd's read_line(): a line ends at \\n, \\r, \\r\\n or NUL; the end stays in the line."""
    if "\r" not in text and "\0" not in text:
        lines = [line + "\n" for line in text.split("\n")]
        lines[-1] = lines[-1][:-1]
        return lines if lines[-1] else lines[:-1]
    lines, start, i, n = [], 0, 0, len(text)
    while i < n:
        c = text[i]
        if c in _LINE_ENDS:
            i += 2 if c == "\r" and i + 1 < n and text[i + 1] == "\n" else 1
            lines.append(text[start:i])
            start = i
        else:
            i += 1
    if start < n:
        lines.append(text[start:])
    return lines


def _continues(content: str) -> bool:
    return (len(content) - len(content.rstrip("\\"))) % 2 == 1


def parse(text: str, path: str = "<unit>") -> UnitFile:
    """Parse unit-file text; `str()` of the result is `text` again. Raises UnitFileError with the line."""
    unit = UnitFile()
    sections = unit.sections
    items: list[Assignment | Trivia] | list[Trivia] = unit.preamble  # where the next line goes
    lines = _physical_lines(text)
    n = len(lines)
    i = 0
    while i < n:
        start = i
        content = lines[i].rstrip(_LINE_ENDS)
        line = content.strip(WHITESPACE)
        i += 1
        if not line or line[0] in COMMENTS:
            items.append(Trivia(lines[start]))
            continue
        logical = content
        if content[-1] == "\\":
            while _continues(logical) and i < n:
                nxt = lines[i].rstrip(_LINE_ENDS)
                i += 1
                if nxt.strip(WHITESPACE)[:1] in ("#", ";"):
                    continue  # systemd skips comment lines inside a continuation
                logical = logical[:-1] + " " + nxt
            if _continues(logical):
                logical = logical[:-1]  # a continuation at the end of the file ends there
            line = logical.strip(WHITESPACE)
        raw = lines[start] if i == start + 1 else "".join(lines[start:i])
        if not line:  # e.g. a lone `\` at the end of the file: systemd reads an empty line
            items.append(Trivia(raw))
            continue
        number = start + 1
        if len(line) > LONG_LINE_MAX // 4 and len(line.encode(errors="surrogateescape")) > LONG_LINE_MAX:
            raise UnitFileError(f"{path}:{number}: line longer than {LONG_LINE_MAX} bytes")
        if line[0] == "[":
            if line[-1] != "]" or len(line) < 3:
                raise UnitFileError(f"{path}:{number}: invalid section header {line!r}")
            section = Section(line[1:-1], raw)
            sections.append(section)
            items = section.items
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise UnitFileError(f"{path}:{number}: missing '='")
        if not sections:
            raise UnitFileError(f"{path}:{number}: assignment outside of a section")
        sections[-1].items.append(Assignment(key.rstrip(WHITESPACE), value.lstrip(WHITESPACE), raw))
    return unit


# -- Escaping --------------------------------------------------------------------------------------


class Raw(str):
    """A value already in systemd syntax (e.g. the `%i` of a template unit): written as is."""

    __slots__ = ()


def escape_specifiers(value: str) -> str:
    """`%` -> `%%`, for every setting systemd passes through specifier expansion."""
    return value if isinstance(value, Raw) else value.replace("%", "%%")


def quote_word(word: str, *, env: bool = True) -> str:
    """One command-line word that systemd reads back as exactly `word`, run-time `$` expansion
    included (`env`, for Exec lines): `%` -> `%%`, `$` -> `$$`, and anything but plain characters
    inside double quotes with C escapes for `\\`, `"` and control characters."""
    if isinstance(word, Raw):
        return str(word)
    if _SURROGATE.search(word):
        raise UnitFileError(f"{word[:40]!r}: not valid UTF-8")
    if "\0" in word:
        raise UnitFileError(f"{word[:40]!r}: NUL cannot be passed in a command line")
    if len(word.encode()) >= MAX_ARG_STRLEN:
        raise UnitFileError(
            f"{word[:40]!r}...: longer than the kernel's {MAX_ARG_STRLEN}-byte argument limit"
        )
    word = word.replace("%", "%%")
    if env:
        word = word.replace("$", "$$")
    if _PLAIN_WORD.fullmatch(word):
        return word
    out = ['"']
    for c in word:
        if c in '"\\':
            out.append("\\" + c)
        elif _is_control(c):
            out.append(_C_ESCAPES.get(c) or f"\\x{ord(c):02x}")
        else:
            out.append(c)
    out.append('"')
    return "".join(out)


def exec_line(argv: Sequence[str], prefix: str = "") -> str:
    """An `Exec*=` value running `argv`; `prefix` is systemd's `-@:+!` flags for the first word."""
    if not argv or not argv[0].startswith("/") or not _PLAIN_WORD.fullmatch(argv[0]):
        raise UnitFileError(f"{argv[:1]!r}: the command must be a plain absolute path")
    if any(c not in "-@:+!" for c in prefix):
        raise UnitFileError(f"{prefix!r} is not an Exec prefix")
    return prefix + " ".join(quote_word(w) for w in argv)


# -- Reading command lines back, as systemd does ---------------------------------------------------


def _cunescape_one(s: str, i: int) -> tuple[str, int]:
    """Decode the escape whose backslash is at s[i-1]: (text, next index), as systemd's cunescape_one()."""
    c = s[i] if i < len(s) else ""
    if c in _C_UNESCAPES:
        return _C_UNESCAPES[c], i + 1
    bad = UnitFileError(f"invalid escape {s[i - 1 : i + 4]!r} in command line")
    if c in "xuU":
        width = {"x": 2, "u": 4, "U": 8}[c]
        digits, end, base = s[i + 1 : i + 1 + width], i + 1 + width, 16
    else:
        width, digits, end, base = 3, s[i : i + 3], i + 3, 8
    allowed = "0123456789abcdefABCDEF" if base == 16 else "01234567"
    if len(digits) != width or any(d not in allowed for d in digits):
        raise bad
    value = int(digits, base)
    if value == 0 or value > 0x10FFFF or 0xD800 <= value <= 0xDFFF or (base == 8 and value > 0o377):
        raise bad
    if (c == "x" or base == 8) and value >= 0x80:
        return chr(0xDC00 + value), end  # an eight-bit escape is a raw byte: surrogateescape, as fsdecode
    return chr(value), end


def _extract_word(s: str, i: int) -> tuple[str | None, int]:
    """extract_first_word(EXTRACT_UNQUOTE|EXTRACT_CUNESCAPE): (word or None at the end, next index)."""
    n = len(s)
    while i < n and s[i] in WHITESPACE:
        i += 1
    if i >= n:
        return None, i
    out: list[str] = []
    quote = ""
    while i < n:
        c = s[i]
        i += 1
        if c == "\\":
            text, i = _cunescape_one(s, i)
            out.append(text)
        elif quote:
            if c == quote:
                quote = ""
            else:
                out.append(c)
        elif c in "'\"":
            quote = c
        elif c in WHITESPACE:
            break
        else:
            out.append(c)
    if quote:
        raise UnitFileError("unbalanced quoting in command line")
    return "".join(out), i


def expand_specifiers(word: str, specifiers: Mapping[str, str]) -> str:
    """`%%` -> `%`, `%X` -> specifiers[X]; an unknown specifier is an error, as in systemd."""
    if "%" not in word:
        return word
    out, i = [], 0
    while i < len(word):
        c = word[i]
        if c == "%" and i + 1 < len(word):
            k = word[i + 1]
            if k == "%":
                out.append("%")
            elif k in specifiers:
                out.append(specifiers[k])
            else:
                raise UnitFileError(f"unknown specifier %{k} in {word[:40]!r}")
            i += 2
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _is_env_name(name: str) -> bool:
    return bool(name) and not name[0].isdigit() and all(c in _ENV_NAME_CHARS for c in name)


def expand_env(argv: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """systemd's run-time `$` expansion: `$$` -> `$`, `${NAME}` inside words, a whole word `$NAME`
    split at whitespace; `$` before anything else stays."""
    out: list[str] = []
    for word in argv:
        if _is_env_name(word[1:]) and word[0] == "$":
            out.extend(env.get(word[1:], "").split())
            continue
        if "$" not in word:
            out.append(word)
            continue
        parts, i = [], 0
        while i < len(word):
            if word.startswith("$$", i):
                parts.append("$")
                i += 2
            elif word.startswith("${", i) and "}" in word[i:]:
                end = word.index("}", i)
                parts.append(env.get(word[i + 2 : end], ""))
                i = end + 1
            else:
                parts.append(word[i])
                i += 1
        out.append("".join(parts))
    return out


def split_exec(
    value: str, *, specifiers: Mapping[str, str] | None = None, env: Mapping[str, str] | None = None
) -> tuple[str, list[list[str]]]:
    """The commands an `Exec*=` value runs, as systemd reads them (config_parse_exec): the prefix
    flags, then each command's argv after unquoting, C unescaping, specifier and `$` expansion.
    Commands are separated by an unquoted `;` word; `\\;` is a literal `;`."""
    if _PLAIN_LINE.fullmatch(value):  # nothing to unquote, unescape or expand (`-` is only a prefix)
        plain = value.split()
        if not plain:
            return "", []
        stripped = plain[0].lstrip("-@:+!")
        return plain[0][: len(plain[0]) - len(stripped)], [[stripped, *plain[1:]]]
    prefix, commands, i = "", list[list[str]](), 0
    while True:
        while i < len(value) and value[i] in WHITESPACE:
            i += 1
        if i >= len(value):
            break
        words: list[str] = []
        while i < len(value):
            if value[i] == ";" and (i + 1 == len(value) or value[i + 1] in WHITESPACE):
                i += 1
                break
            if value.startswith("\\;", i) and (i + 2 == len(value) or value[i + 2] in WHITESPACE):
                words.append(";")
                i += 2
                continue
            word, i = _extract_word(value, i)
            if word is None:
                break
            if not words and not commands:
                stripped = word.lstrip("-@:+!")
                prefix, word = word[: len(word) - len(stripped)], stripped
            words.append(expand_specifiers(word, specifiers or {}))
            while i < len(value) and value[i] in WHITESPACE:
                i += 1
        if words:
            commands.append(expand_env(words, env or {}))
    return prefix, commands
