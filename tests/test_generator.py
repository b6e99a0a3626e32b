"""rktd-generator end to end: golden fixtures, bad input, dry run, atomic and concurrent writes,
logging, lean imports, the compiled templates, and every generated unit read by the real systemd.

Golden fixtures live in tests/generator/: `NAME.json|yaml|yml` (the manifest, copied into a
fresh manifest directory as is) and `NAME.assert`, one assertion a line (`#` comments):

    with-pod NAME                          another (minimal, valid) manifest in the same directory
    unit FILE                              later key assertions read FILE (default pod@NAME.service)
    assert-key-is SECTION KEY VALUE        the key's only value is VALUE
    assert-key-contains SECTION KEY TEXT   some value of the key contains TEXT
    assert-key-missing SECTION KEY
    assert-sections SECTION...             the unit's sections, in order
    assert-exec-argv SECTION KEY JSON      the command reads back as the JSON argv, both with our
                                           parser and with systemd's (systemd-analyze)
    assert-file PATH / assert-no-file PATH
    assert-symlink PATH TARGET             PATH links to OUT/TARGET
    assert-failed                          exit status 1 and no pod@NAME.service
    assert-stderr-contains TEXT / assert-stderr-lines N

`@PODS@` in an assertion is the manifest directory. Without assert-failed the run must exit 0
with nothing on stderr. Adding a case is adding two files.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rktd_units import templatec, units
from rktd_units.errors import ManifestError
from rktd_units.model import ManifestFormat, NameValue, Pod, PodFile
from rktd_units.unitfile import expand_env, parse, split_exec
from tests.helpers import systemd_units

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "generator"
SCRIPT = ROOT / "generators" / "rktd-generator"
SUFFIXES = (".json", ".yaml", ".yml")
CASES = sorted(p for p in FIXTURES.iterdir() if p.suffix in SUFFIXES)
needs_systemd = pytest.mark.skipif(not systemd_units.available(), reason="systemd-analyze is not installed")


def minimal_pod(name: str, annotations: Mapping[str, str] | None = None) -> str:
    app = {"exec": [f"/bin/{name}"], "user": "0", "group": "0"}
    doc = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [{"name": "app", "image": {"name": "example.com/app"}, "app": app}],
        "annotations": [{"name": k, "value": v} for k, v in (annotations or {}).items()],
    }
    return json.dumps(doc, indent=4) + "\n"


def pods_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755)
    return path


def put(directory: Path, name: str, text: str | bytes) -> Path:
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    path.chmod(0o644)
    return path


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path
    files: dict[str, str] = field(default_factory=dict)  # relative path -> text (regular files)
    links: dict[str, str] = field(default_factory=dict)  # relative path -> link target

    def units(self) -> dict[str, str]:
        return {p: t for p, t in self.files.items() if "/" not in p}


def run_generator(
    pods: Path | str | bytes, out: Path, *args: str, env: Mapping[str, str] | None = None
) -> Run:
    """The installed script, as systemd runs it (NORMAL EARLY LATE), with the venv's interpreter."""
    argv = [sys.executable, "-I", str(SCRIPT), *(args or (str(out), f"{out}.early", f"{out}.late"))]
    environ: dict[str | bytes, str | bytes] = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SYSTEMD_LOG_TARGET": "console",
    }
    environ[b"RKTD_PODS_PATH" if isinstance(pods, bytes) else "RKTD_PODS_PATH"] = (
        pods if isinstance(pods, bytes) else str(pods)
    )
    environ.update(env or {})
    proc = subprocess.run(argv, capture_output=True, env=environ, timeout=120)  # type: ignore[arg-type]
    run = Run(proc.returncode, proc.stdout.decode(), proc.stderr.decode(errors="replace"), out)
    if out.is_dir():
        for path in sorted(out.rglob("*")):
            rel = str(path.relative_to(out))
            if path.is_symlink():
                run.links[rel] = os.readlink(path)
            elif path.is_file():
                run.files[rel] = path.read_text()
    return run


# -- Golden fixtures -------------------------------------------------------------------------------


def test_every_fixture_has_its_assertions() -> None:
    manifests = {p.stem for p in CASES}
    sidecars = {p.stem for p in FIXTURES.glob("*.assert")}
    assert manifests == sidecars
    assert len(manifests) >= 10


def _check_fixture(lines: list[str], run: Run, name: str, pods: Path, verified: systemd_units.Verified | None) -> None:
    current = f"pod@{name}.service"
    failed = False
    for line in lines:
        op, _, rest = line.replace("@PODS@", str(pods)).partition(" ")
        if op == "unit":
            current = rest
            continue
        unit = parse(run.files[current], current) if op.startswith("assert-key") or op in (
            "assert-exec-argv",
            "assert-sections",
        ) else None
        if op == "assert-key-is":
            section, key, value = rest.split(" ", 2)
            assert unit is not None and unit.get(section, key) == [value], (line, run.files[current])
        elif op == "assert-key-contains":
            section, key, value = rest.split(" ", 2)
            assert unit is not None and any(value in v for v in unit.get(section, key)), line
        elif op == "assert-key-missing":
            section, key = rest.split(" ")
            assert unit is not None and unit.get(section, key) == [], line
        elif op == "assert-sections":
            assert unit is not None and unit.section_names() == rest.split(), line
        elif op == "assert-exec-argv":
            section, key, text = rest.split(" ", 2)
            argv = json.loads(text)
            assert unit is not None
            assert [split_exec(v)[1] for v in unit.get(section, key)] == [[argv]], line
            if verified is not None:  # and the real systemd reads the same
                assert [expand_env(a, {}) for a in verified.exec_argv(current, key)] == [argv], line
        elif op == "assert-file":
            assert rest in run.files, line
        elif op == "assert-no-file":
            assert rest not in run.files and rest not in run.links, line
        elif op == "assert-symlink":
            path, target = rest.split(" ")
            assert run.links.get(path) == str(run.out / target), line
            assert target in run.files
        elif op == "assert-failed":
            failed = True
            assert run.returncode == 1, run.stderr
            assert f"pod@{name}.service" not in run.files
        elif op == "assert-stderr-contains":
            assert rest in run.stderr, (line, run.stderr)
        elif op == "assert-stderr-lines":
            assert len(run.stderr.splitlines()) == int(rest), run.stderr
        else:
            raise AssertionError(f"unknown assertion {line!r}")
    if not failed:
        assert (run.returncode, run.stderr) == (0, ""), run.stderr


@pytest.mark.parametrize("case", CASES, ids=[p.name for p in CASES])
def test_fixture(case: Path, tmp_path: Path) -> None:
    lines = [
        line
        for line in case.with_suffix(".assert").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pods = pods_dir(tmp_path / "pods")
    put(pods, case.name, case.read_bytes())
    for line in lines:
        if line.startswith("with-pod "):
            put(pods, line.split()[1] + ".json", minimal_pod(line.split()[1]))
    run = run_generator(pods, tmp_path / "out")
    verified = None
    if systemd_units.available() and run.units():
        files = {**run.units(), "pod@.service": (ROOT / "templates" / "pod@.service").read_text()}
        verified = systemd_units.SystemdRoot(tmp_path / "root").verify(files, sorted(run.units()))
        assert verified.clean, verified.stderr
        for unit_name in run.units():
            if unit_name.endswith(".service"):
                assert verified.field(unit_name, "Source Path") == [str(pods / case.name)]
    _check_fixture([ln for ln in lines if not ln.startswith("with-pod ")], run, case.stem, pods, verified)
