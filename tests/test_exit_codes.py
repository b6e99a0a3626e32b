"""Exit codes: stage0 verbs exit 254 on their own errors (a bad manifest included), validate exits 1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def rktd(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "rktd_units", f"--dir={tmp / 'state'}", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_bad_manifest_is_254_for_stage0_and_1_for_validate(tmp_path: Path) -> None:
    d = tmp_path / "pods"
    d.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    bad = d / "web.json"
    bad.write_text('{"acKind": "PodManifest", "acVersion": "0.8.11", "apps": [{"name": "Web"}]}')
    os.chmod(bad, 0o644)
    for verb in ("run", "prepare"):
        proc = rktd(tmp_path, verb, f"--pod-manifest={bad}")
        assert proc.returncode == 254, (verb, proc.stderr)
        assert proc.stderr.startswith(f"rktd: {bad}: apps[0].name: "), proc.stderr
        assert len(proc.stderr.splitlines()) == 1
    proc = rktd(tmp_path, "validate", str(bad))
    assert proc.returncode == 1 and proc.stderr.startswith(f"{bad}: apps[0].name: "), proc.stderr
