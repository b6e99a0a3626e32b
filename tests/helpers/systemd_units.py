"""Have the real systemd read unit files, without systemd as PID 1.

`systemd-analyze verify --root=ROOT` loads units the way the manager does, from a root holding
a copy of the host's unit directory (for sysinit.target and friends), a stub `/usr/bin/rktd`
(verify checks that commands are executable) and the units under test in /etc/systemd/system.
Run with SYSTEMD_LOG_LEVEL=debug it also dumps each loaded unit (`unit_dump()`), including every
Exec command line as systemd parsed it (after unquoting, C unescaping and specifier expansion;
`$` expansion happens only at exec time). `parse_dumped_command_line` reads that back.

    root = SystemdRoot(tmp_path / "root")
    result = root.verify({"pod@web.service": text})
    assert result.clean, result.stderr
    result.exec_argv("pod@web.service", "ExecStart")  # -> [["/usr/bin/rktd", "run", ...]]
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"
HOST_UNITS = next(
    (p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None
)
STUB_COMMANDS = ("/usr/bin/rktd",)
_SHELL_ESCAPED = '"\\`$'
_C = {"a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v", "'": "'", "s": " "}


def available() -> bool:
    return os.path.exists(SYSTEMD_ANALYZE) and HOST_UNITS is not None


def parse_dumped_command_line(text: str) -> list[str]:
    """Inverse of systemd's quote_command_line(argv, SHELL_ESCAPE_EMPTY): words joined by spaces,
    a word needing it in double quotes with `"\\`$` backslash-escaped and other bytes C-escaped."""
    words, i = [], 0
    while i < len(text):
        if text[i] == " ":
            i += 1
            continue
        if text[i] != '"':
            end = text.find(" ", i)
            end = len(text) if end < 0 else end
            words.append(text[i:end])
            i = end
            continue
        out: list[str] = []
        raw = bytearray()
        i += 1
        while text[i] != '"':
            c = text[i]
            if c != "\\":
                raw += c.encode()
                i += 1
                continue
            n = text[i + 1]
            if n in _SHELL_ESCAPED:
                raw += n.encode()
                i += 2
            elif n in _C:
                raw += _C[n].encode()
                i += 2
            elif n == "x":
                raw.append(int(text[i + 2 : i + 4], 16))
                i += 4
            else:  # octal
                raw.append(int(text[i + 1 : i + 4], 8))
                i += 4
        out.append(raw.decode("utf-8", errors="surrogateescape"))
        words.append("".join(out))
        i += 1
    return words


@dataclass
class Verified:
    returncode: int
    stderr: str
    dump: dict[str, list[str]] = field(default_factory=dict)  # unit -> its dump lines

    @property
    def clean(self) -> bool:
        """Exit status 0 and not a single warning."""
        return self.returncode == 0 and not self.stderr.strip()

    def field(self, unit: str, name: str) -> list[str]:
        prefix = f"{name}: "
        return [line.strip()[len(prefix) :] for line in self.dump[unit] if line.strip().startswith(prefix)]

    def exec_argv(self, unit: str, kind: str) -> list[list[str]]:
        """Every command of `kind` (ExecStart, ExecStopPost, ...) as systemd parsed it."""
        out, current = [], None
        for line in self.dump[unit]:
            stripped = line.strip()
            if stripped.startswith("-> Exec"):
                current = stripped[3:].rstrip(":")
            elif stripped.startswith("Command Line: ") and current == kind:
                out.append(parse_dumped_command_line(stripped[len("Command Line: ") :]))
        return out


_BASE: list[Path] = []


def _base() -> Path:
    """The host's units and the stub commands, copied once per test session; roots hard-link it."""
    if not _BASE:
        assert HOST_UNITS is not None
        base = Path(tempfile.mkdtemp(prefix="systemd-root-"))
        atexit.register(shutil.rmtree, base, True)
        shutil.copytree(HOST_UNITS, base / "usr/lib/systemd/system", symlinks=True)
        for command in STUB_COMMANDS:
            stub = base / command.lstrip("/")
            stub.parent.mkdir(parents=True, exist_ok=True)
            stub.write_text("#!/bin/sh\nexit 0\n")
            stub.chmod(0o755)
        _BASE.append(base)
    return _BASE[0]


class SystemdRoot:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.units = root / "etc/systemd/system"
        if not (root / "usr").exists():
            shutil.copytree(_base() / "usr", root / "usr", symlinks=True, copy_function=os.link)
        self.units.mkdir(parents=True, exist_ok=True)

    def install(self, files: Mapping[str, str | bytes]) -> None:
        for name, text in files.items():
            path = self.units / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(text.encode() if isinstance(text, str) else text)

    def verify(self, files: Mapping[str, str | bytes], names: list[str] | None = None) -> Verified:
        """Install `files` and verify `names` (default: the .service and .socket files among them)."""
        self.install(files)
        names = names or sorted(n for n in files if n.endswith((".service", ".socket")) and "/" not in n)
        argv = [SYSTEMD_ANALYZE, "verify", "--man=no", f"--root={self.root}", *names]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "SYSTEMD_LOG_LEVEL": "info"}
        quiet = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        env["SYSTEMD_LOG_LEVEL"] = "debug"
        debug = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        result = Verified(quiet.returncode, quiet.stderr)
        unit = None
        for line in debug.stdout.split("\n"):
            if line.strip().startswith("-> Unit ") and line.rstrip().endswith(":"):
                unit = line.strip()[len("-> Unit ") : -1]
                result.dump[unit] = []
            elif unit is not None:
                result.dump[unit].append(line)
        return result
