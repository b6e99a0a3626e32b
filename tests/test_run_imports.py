"""`rktd run` is every pod start's ExecStart: up to the image lookup, and on to its `exec` of
systemd-nspawn, it imports none of the heavy modules.

The first command lines fail at the lookup (`--pull-policy=never`, an image the store lacks), after
`store.find` has read a store of several images, one of the wanted name; the modules are those the
process holds when `main()` exits, so nothing imported late escapes. The last one runs a pod up to
stage1's `exec` (pod directory, manifests, stage1's arguments), where `os.execve` is replaced.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from rktd_units.store import Store
from tests.helpers.aci import Entry, image_manifest, make_busybox_aci, tar_bytes
from tests.test_stage1_nspawn import needs_nspawn, needs_root

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("dataclasses", "inspect", "click", "jinja2", "yaml", "http.client", "rktd_units.fetch")
PROGRAM = """
import json, sys
from rktd_units.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
print(json.dumps(sorted(sys.modules)))
sys.exit(code)
"""
TO_EXEC = """
import json, os, sys
def execve(path, argv, env):
    print(json.dumps([argv[0], sorted(sys.modules)]), flush=True)
    os._exit(0)
os.execve = execve
from rktd_units.cli import main
main()
"""
POD = {
    "acKind": "PodManifest",
    "acVersion": "0.8.11",
    "apps": [
        {
            "name": "app",
            "image": {"name": "example.com/app", "labels": [{"name": "version", "value": "9.9"}]},
        }
    ],
}


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    """A store with example.com/app 1.0.0 and an image of another name."""
    store = Store(tmp_path / "data")
    for n, name in enumerate(("example.com/app", "example.com/other")):
        aci = tmp_path / f"{n}.aci"
        aci.write_bytes(tar_bytes([Entry("manifest", data=image_manifest(name)), Entry("rootfs", "dir")]))
        store.import_aci(aci, trusted=True)
    return tmp_path / "data"


def _run(
    program: str, args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-P", "-c", program, *args],
        capture_output=True, text=True, timeout=60,
        env={"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), **(env or {})},
    )  # fmt: skip


def _modules_at_exit(args: list[str], env: dict[str, str] | None = None) -> set[str]:
    proc = _run(PROGRAM, args, env)
    assert proc.returncode == 254, proc.stderr
    assert "example.com/app is not in the store" in proc.stderr  # it failed at the lookup, not before
    modules = set(json.loads(proc.stdout))
    assert {"rktd_units.stage0", "rktd_units.store"} <= modules
    return modules


def test_run_images_to_the_lookup(store_dir: Path) -> None:
    modules = _modules_at_exit(
        [f"--dir={store_dir}", "run", "--net=host", "--pull-policy=never", "example.com/app:9.9"]
    )
    assert not modules & set(HEAVY)


def test_run_pod_manifest_to_the_lookup(store_dir: Path, tmp_path: Path) -> None:
    pods = tmp_path / "pods"
    pods.mkdir(mode=0o755)
    (pods / "web.json").write_text(json.dumps(POD))
    modules = _modules_at_exit(
        [f"--dir={store_dir}", "run", "--pod-manifest=web", "--pull-policy=never"],
        env={"RKTD_PODS_PATH": str(pods)},
    )
    assert "rktd_units.podpath" in modules
    assert not modules & set(HEAVY)


@needs_root
@needs_nspawn
def test_run_to_the_exec_of_stage1(tmp_path: Path) -> None:
    Store(tmp_path / "data").import_aci(make_busybox_aci(tmp_path / "b.aci"), trusted=True)
    proc = _run(
        TO_EXEC,
        [f"--dir={tmp_path / 'data'}", "run", "--net=host", "example.com/busybox", "--exec=/bin/true"],
    )
    assert proc.returncode == 0, proc.stderr
    executable, modules = json.loads(proc.stdout)
    assert executable.endswith("systemd-nspawn")
    assert not set(modules) & set(HEAVY)
