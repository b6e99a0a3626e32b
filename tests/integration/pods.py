"""Pods in the test machine: manifests written, units inspected, journal entries read, images built."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.helpers.aci import Entry, busybox_entries, image_manifest, write_aci
from tests.integration.machine import Machine

PODS = "/etc/rktd/pods"
IMAGE = "example.com/busybox"
PY_IMAGE = "example.com/busybox-usr"  # busybox plus /lib links, for apps that mount the machine's /usr


def wait_for(predicate: Callable[[], object], timeout: float = 30.0, step: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def app(name: str, *exec: str, image: str = IMAGE, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "image": {"name": image},
        "app": {"exec": list(exec), "user": "0", "group": "0", **extra.pop("app", {})},
        **extra,
    }


def manifest(*apps: dict[str, Any], annotations: dict[str, str] | None = None, **extra: Any) -> str:
    doc: dict[str, Any] = {"acKind": "PodManifest", "acVersion": "0.8.11", "apps": list(apps), **extra}
    if annotations:
        doc["annotations"] = [{"name": k, "value": v} for k, v in annotations.items()]
    return json.dumps(doc, indent=2)


class Pods:
    """The machine with the package installed and the test images fetched; tracks manifests to remove."""

    def __init__(self, machine: Machine) -> None:
        self.m = machine
        self.names: list[str] = []

    def add(self, name: str, content: str, *, reload: bool = True) -> None:
        self.m.write(f"{PODS}/{name}.json", content)
        self.names.append(name)
        if reload:
            self.m.run(["systemctl", "daemon-reload"])

    def active(self, unit: str) -> str:
        return self.m.run(["systemctl", "is-active", unit], check=False).stdout.strip()

    def wait_active(self, unit: str, timeout: float = 60.0) -> None:
        ok = wait_for(lambda: self.active(unit) == "active", timeout)
        assert ok, self.status(unit)

    def status(self, unit: str) -> str:
        status = self.m.run(["systemctl", "status", "--no-pager", "--lines=0", unit], check=False).stdout
        return f"{unit} is {self.active(unit)}\n{status}\n--- journal\n{self.m.journal(unit)}"

    def show(self, unit: str, prop: str) -> str:
        return self.m.run(["systemctl", "show", "--value", "-p", prop, unit]).stdout.strip()

    def entries(self, unit: str) -> list[dict[str, Any]]:
        out = self.m.run(["journalctl", "-b", "-u", unit, "-o", "json", "--no-pager"], check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def lines_of(self, unit: str, identifier: str) -> list[str]:
        return [
            str(e.get("MESSAGE", "")) for e in self.entries(unit) if e.get("SYSLOG_IDENTIFIER") == identifier
        ]

    def machine_of(self, unit: str) -> str | None:
        """The machined machine whose unit is `unit`."""
        listing = self.m.run(["machinectl", "list", "--no-legend", "--no-pager"], check=False).stdout
        for line in listing.splitlines():
            name = line.split()[0] if line.split() else ""
            if (
                name
                and self.m.run(["machinectl", "show", "-p", "Unit", "--value", name]).stdout.strip() == unit
            ):
                return name
        return None

    def cleanup(self) -> None:
        for name in self.names:
            self.m.run(
                ["systemctl", "stop", f"pod@{name}.service", f"pod@{name}.socket"], check=False, timeout=90
            )
            self.m.run(["rm", "-f", f"{PODS}/{name}.json"])
            self.m.run(["rm", "-rf", f"/etc/systemd/system/pod@{name}.service.d"])
            self.m.run(["systemctl", "reset-failed", f"pod@{name}.service"], check=False)
        self.names.clear()
        self.m.run(["systemctl", "daemon-reload"])


def usr_image(path: Path) -> Path:
    """busybox, with /lib and /lib64 pointing into /usr: mount the machine's /usr and python3 runs."""
    entries = busybox_entries(image_manifest(PY_IMAGE, exec=["/bin/sh"]))
    entries += [
        Entry("rootfs/usr", "dir", mode=0o755),
        Entry("rootfs/lib", "symlink", target="usr/lib", mode=0o777),
        Entry("rootfs/lib64", "symlink", target="usr/lib64", mode=0o777),
    ]
    return write_aci(path, entries, "gz")
