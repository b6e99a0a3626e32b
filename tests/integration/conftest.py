"""Fixtures for end-to-end tests: one booted machine per session, and the package installed in it.

- `machine`: a throwaway Debian 12 with systemd as PID 1, journald, D-Bus and machined (machine.py);
  `machine.run(argv)`, `.copy_in(src, dst)`, `.write(path, text)`, `.journal(unit)`, `.reboot()`.
- `installed`: the same machine after `dpkg -i` of the .deb built from packaging/debian.
- `images`: and the busybox test images fetched into its store (`example.com/busybox`, and
  `example.com/busybox-usr` for apps that mount the machine's /usr to run python3).
- `pods`: per test, a `Pods` helper (pods.py) that writes manifests and removes them afterwards.
- `vm`: a qemu VM (machine.VirtualMachine: the same root plus Debian's kernel, for what a container
  cannot show: a pure cgroup v2 host, AppArmor) with the package installed and the busybox image
  fetched; booted once per session (~30 s under TCG) and shared by the modules that use it.

The machine is shared by the whole session; tests leave it as they found it. It is torn down at the
end, and the teardown fails the run if anything stays mounted.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.aci import make_busybox_aci
from tests.integration.machine import (
    Machine,
    VirtualMachine,
    build_deb,
    build_root,
    build_vm_image,
    sweep_stale,
    sweep_stale_vms,
    vm_unavailable,
)
from tests.integration.pods import IMAGE, Pods, usr_image


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)
            item.add_marker(pytest.mark.slow)


def _require_tools() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (systemd-nspawn, mounts)")
    for tool in ("systemd-nspawn", "debootstrap", "nsenter"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install-deps installs it)")


@pytest.fixture(scope="session")
def machine_root() -> Path:
    _require_tools()
    return build_root()


@pytest.fixture(scope="session")
def machine(machine_root: Path) -> Iterator[Machine]:
    sweep_stale()
    m = Machine(machine_root)
    try:
        m.boot()
        yield m
    finally:
        m.destroy()


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_deb(tmp_path_factory.mktemp("deb"))


@pytest.fixture(scope="session")
def installed(machine: Machine, deb: Path) -> Machine:
    """The machine with the package installed by dpkg (its dependencies are already in the root)."""
    machine.copy_in(deb, f"/root/{deb.name}")
    machine.run(["dpkg", "-i", f"/root/{deb.name}"], timeout=120)
    return machine


@pytest.fixture(scope="session")
def images(installed: Machine, tmp_path_factory: pytest.TempPathFactory) -> Machine:
    tmp = tmp_path_factory.mktemp("aci")
    for aci in (make_busybox_aci(tmp / "busybox.aci", IMAGE), usr_image(tmp / "busybox-usr.aci")):
        installed.copy_in(aci, f"/root/{aci.name}")
        out = installed.run(["rktd", "--insecure-options=image", "fetch", f"/root/{aci.name}"]).stdout
        assert re.fullmatch(r"sha512-[0-9a-f]{128}\n", out), out
    return installed


@pytest.fixture
def pods(images: Machine) -> Iterator[Pods]:
    p = Pods(images)
    try:
        yield p
    finally:
        p.cleanup()


@pytest.fixture(scope="session")
def vm(deb: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VirtualMachine]:
    """A booted VM with the package installed and the busybox image fetched, for the whole session:
    tests leave it as they found it (pods stopped, profiles unloaded)."""
    why = vm_unavailable()
    if why:
        pytest.skip(why)
    for tool in ("debootstrap", "mkfs.ext4"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (scripts/install-deps installs it)")
    sweep_stale_vms()
    m = VirtualMachine(*build_vm_image())
    try:
        m.boot(timeout=300)
        m.copy_in(deb, f"/root/{deb.name}")
        m.run(["dpkg", "-i", f"/root/{deb.name}"], timeout=120)
        aci = make_busybox_aci(tmp_path_factory.mktemp("vm-aci") / "busybox.aci", IMAGE)
        m.copy_in(aci, f"/root/{aci.name}")
        m.run(["rktd", "--insecure-options=image", "fetch", f"/root/{aci.name}"])
        yield m
    finally:
        m.destroy()
