"""`rktd enter` runs its command under the app's own seccomp filter (the `seccomp` dict of the pod's
stage1 config, applied by the same `become()` as the app), in real pods of both flavours."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.test_stage1_nspawn import FLAVOURS, IMG, Rktd, busybox_aci, needs_root, rktd

__all__ = ["busybox_aci", "rktd"]

pytestmark = [needs_root, pytest.mark.slow]

MKDIR = ["/bin/sh", "-c", "mkdir /tmp/entered; echo mkdir=$?; grep ^Seccomp: /proc/self/status"]


def _manifest(tmp_path: Path, flavour: str, isolators: list[dict[str, Any]]) -> Path:
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "app",
                "image": {"name": IMG},
                "app": {
                    "exec": ["/bin/sh", "-c", "echo up; exec sleep 600"],
                    "user": "0",
                    "group": "0",
                    "isolators": isolators,
                },
            }
        ],
        "annotations": [{"name": "rktd/stage1", "value": flavour}],
    }
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(manifest))
    return path


@contextmanager
def _entered(rktd: Rktd, tmp_path: Path, flavour: str, isolators: list[dict[str, Any]]) -> Iterator[Any]:
    """Start a pod whose app sleeps, yield what `rktd enter` running MKDIR in it returned."""
    tmp_path.mkdir(exist_ok=True)
    uuid_file = tmp_path / "uuid"
    manifest = _manifest(tmp_path, flavour, isolators)
    proc = rktd.start("run", "--net=host", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    try:
        uuid = rktd.wait_running(uuid_file, proc)
        rktd.wait_output(proc, "up")
        yield rktd("enter", uuid, *MKDIR)
    finally:
        if uuid_file.exists() and uuid_file.read_text().strip():
            rktd("stop", uuid_file.read_text().strip())
        else:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_enter_gets_the_apps_seccomp_filter(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    remove_mkdir = [{"name": "os/linux/seccomp-remove-set", "value": {"set": ["mkdir"], "errno": "EPERM"}}]
    with _entered(rktd, tmp_path, flavour, remove_mkdir) as entered:
        assert entered.returncode == 0, entered.stderr
        assert entered.stdout.splitlines() == ["mkdir=1", "Seccomp:\t2"], entered.stdout
        assert "Operation not permitted" in entered.stderr, entered.stderr
    # the same app without the isolator: the entered mkdir succeeds, and (nspawn's filter being the
    # pod init's, not inherited by a command forked from the host) no filter confines the command
    with _entered(rktd, tmp_path / "plain", flavour, []) as entered:
        assert entered.returncode == 0, entered.stderr
        assert entered.stdout.splitlines() == ["mkdir=0", "Seccomp:\t0"], (entered.stdout, entered.stderr)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_enter_gets_an_expanded_group(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    """A group in the app's set reaches the entered command expanded: `@docker/default-whitelist`
    less mkdir (a negated entry) lets the shell run and refuses its mkdir with the errno."""
    retain = [
        {
            "name": "os/linux/seccomp-retain-set",
            "value": {"set": ["@docker/default-whitelist", "-mkdir", "rseq"], "errno": "EXDEV"},
        }
    ]
    with _entered(rktd, tmp_path, flavour, retain) as entered:
        assert entered.returncode == 0, entered.stderr
        assert entered.stdout.splitlines() == ["mkdir=1", "Seccomp:\t2"], entered.stdout
        assert "Invalid cross-device link" in entered.stderr, entered.stderr
