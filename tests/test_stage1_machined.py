"""stage1's own machined registration (rktd_units/stage1/machined.py): when it is used instead of
nspawn's, how it finds the container's PID 1, and that it leaves no process behind. The registration
itself, under a real systemd and machined, is in tests/integration/test_machined_net.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rktd_units.stage1 import machined, nspawn

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="PID namespaces need root")
UUID = "743fa2da-5cc6-4840-bc8a-acb86cc22afd"
CFG = {"uuid": UUID, "name": "web", "apps": []}


@pytest.mark.parametrize(
    ("netns", "bus", "unit", "register"),
    [
        ("/run/netns/rktd-x", True, True, "no"),  # stage1 registers, with the interfaces
        ("/run/netns/rktd-x", True, False, "yes"),  # not a unit's pod: nspawn registers (a scope)
        (None, True, True, "yes"),  # host or none network: no interface to tell
        ("/run/netns/rktd-x", False, True, "no"),  # no bus: nobody registers
    ],
)
def test_who_registers(
    monkeypatch: pytest.MonkeyPatch, netns: str | None, bus: bool, unit: bool, register: str
) -> None:
    monkeypatch.setattr(nspawn, "has_system_bus", lambda: bus)
    monkeypatch.setattr(nspawn, "under_systemd", lambda: unit)
    monkeypatch.setattr(nspawn, "find_nspawn", lambda: "/usr/bin/systemd-nspawn")
    cfg = dict(CFG, netns=netns, net="default" if netns else "host")
    argv = nspawn.nspawn_argv(Path("/root"), cfg)
    assert f"--register={register}" in argv
    assert nspawn.registers_itself(cfg) == (register == "no" and bus)
    if unit:
        assert "--keep-unit" in argv


@needs_root
@pytest.mark.skipif(shutil.which("unshare") is None, reason="unshare absent")
def test_finds_the_pid1_of_a_child_pid_namespace() -> None:
    # unshare --fork: the unshare process stays outside, its child is PID 1 of the new namespace
    proc = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sleep", "30"])
    try:
        leader = machined.wait_leader(proc.pid, 5.0)
        assert leader is not None and leader != proc.pid
        with open(f"/proc/{leader}/status") as f:
            nspid = next(line for line in f if line.startswith("NSpid:")).split()[1:]
        assert nspid == [str(leader), "1"]
    finally:
        proc.kill()
        proc.wait()
    assert machined.wait_leader(proc.pid, 0.2) is None  # gone: no wait until the deadline


def test_no_leader_in_time_is_bounded() -> None:
    proc = subprocess.Popen(["sleep", "30"])  # a plain child, in our own PID namespace
    try:
        start = time.monotonic()
        assert machined.wait_leader(proc.pid, 0.3) is None
        assert time.monotonic() - start < 2
    finally:
        proc.kill()
        proc.wait()


def test_spawn_returns_at_once_and_leaves_no_child(tmp_path: Path) -> None:
    """In a fresh process (the test runner's other children would count): spawn() returns once its
    intermediate child is reaped, and the registrar below it is not the caller's child."""
    code = (
        "import os, subprocess, sys\n"
        "from rktd_units.stage1 import machined\n"
        "gone = subprocess.Popen(['true']); gone.wait()\n"
        f"machined.spawn(gone.pid, 'rktd-web-743fa2da', {UUID!r}, sys.argv[1], sys.argv[1])\n"
        "try:\n"
        "    os.waitpid(-1, os.WNOHANG)\n"
        "    print('a child is left')\n"
        "except ChildProcessError:\n"
        "    print('no child')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=30
    )
    assert proc.stdout.strip() == "no child", proc.stderr


def test_interfaces_without_network_state(tmp_path: Path) -> None:
    assert machined.host_ifnames(tmp_path) == []
    assert machined.ifindices(["lo"]) == [1]
    assert machined.ifindices(["rktd-no-such-if"]) == []
