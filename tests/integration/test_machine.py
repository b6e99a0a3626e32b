"""The test machine itself: a real systemd as PID 1, journald, machined, nested nspawn, clean teardown.

These need nothing from the project; they prove the ground the end-to-end scenarios stand on.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.integration import machine as machine_mod
from tests.integration.machine import Machine, _mounts_under


def wait_for(predicate: object, timeout: float = 20.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(step)
    return False


def test_systemd_is_pid1(machine: Machine) -> None:
    assert machine.run(["cat", "/proc/1/comm"]).stdout.strip() == "systemd"
    state = machine.run(["systemctl", "is-system-running"], check=False).stdout.strip()
    assert state in ("running", "degraded"), machine.run(["systemctl", "--failed"], check=False).stdout
    active = machine.run(["systemctl", "is-active", "dbus.service", "systemd-journald.service"]).stdout
    assert active.split() == ["active", "active"]


def test_loopback_only(machine: Machine) -> None:
    links = machine.run(["ip", "-o", "link", "show"]).stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]


def test_nested_nspawn_registers_and_logs(machine: Machine) -> None:
    unit = "nested-check.service"
    machine.run(
        [
            "systemd-run",
            f"--unit={unit}",
            "--property=Delegate=yes",
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=yes",
            "--directory=/srv/busybox-root",
            "--machine=nested-check",
            "/bin/sh",
            "-c",
            "echo hello-from-nested-pod; exec sleep 60",
        ]
    )
    try:
        assert wait_for(lambda: "nested-check" in machine.run(["machinectl", "list"]).stdout), machine.run(
            ["systemctl", "status", unit], check=False
        ).stdout
        assert wait_for(lambda: "hello-from-nested-pod" in machine.journal(unit))
        assert machine.run(["systemctl", "is-active", unit]).stdout.strip() == "active"
    finally:
        machine.run(["systemctl", "stop", unit], check=False)
    assert "nested-check" not in machine.run(["machinectl", "list"]).stdout


def test_kmsg_reaches_the_journal(machine: Machine) -> None:
    """A generator writing to /dev/kmsg at daemon-reload is read back with `journalctl -k -b`."""
    marker = f"kmsg-probe-{time.monotonic_ns()}"
    gen = "/etc/systemd/system-generators/zz-kmsg-probe"
    machine.write(gen, f"#!/bin/sh\necho '<4>kmsg-probe[1]: {marker}' > /dev/kmsg\n", 0o755)
    try:
        machine.run(["systemctl", "daemon-reload"])
        assert wait_for(lambda: marker in machine.journal(None, "-k"))
    finally:
        machine.run(["rm", "-f", gen])
        machine.run(["systemctl", "daemon-reload"])


def test_reboot_keeps_root_and_journal(machine_root: Path) -> None:
    """A second machine: changes survive reboot(), the journal keeps the earlier boot, teardown is clean."""
    m = Machine(machine_root)
    try:
        m.boot()
        m.write("/etc/reboot-probe", "kept\n")
        m.run(["systemd-cat", "-t", "reboot-probe"], input="before-reboot\n")
        first = m.leader
        m.reboot()
        assert m.leader != first
        assert m.run(["cat", "/etc/reboot-probe"]).stdout == "kept\n"
        boots = m.run(["journalctl", "--list-boots", "--no-pager"]).stdout.strip().splitlines()
        assert len(boots) >= 3, boots  # header and two boots
        assert "before-reboot" in m.run(["journalctl", "-b", "-1", "-t", "reboot-probe"]).stdout
    finally:
        nspawn = m.proc.pid if m.proc else 0
        leader = m.leader
        m.destroy()
    assert not _mounts_under(m.tmp)
    assert not m.tmp.exists()
    for pid in (nspawn, leader):
        assert not Path(f"/proc/{pid}").exists()


def test_cache_key_follows_package_list(monkeypatch: pytest.MonkeyPatch) -> None:
    """The cached root is keyed by what goes into it: another package list is another root."""
    key = machine_mod.root_key()
    monkeypatch.setattr(machine_mod, "PACKAGES", (*machine_mod.PACKAGES, "hello"))
    assert machine_mod.root_key() != key
    monkeypatch.setattr(machine_mod, "PACKAGES", tuple(reversed(machine_mod.PACKAGES[:-1])))
    assert machine_mod.root_key() == key


def test_cached_root_is_pristine(machine: Machine, machine_root: Path) -> None:
    """Writes in the machine land in its overlay, never in the cache."""
    machine.write("/etc/pristine-probe", "x\n")
    assert machine.run(["cat", "/etc/pristine-probe"]).stdout == "x\n"
    assert not (machine_root / "etc/pristine-probe").exists()
    assert (machine_root.parent / f"{machine_root.name}.done").exists()
