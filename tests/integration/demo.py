"""The README's first command (scripts/demo): examples/hello.json as pod@hello under a real systemd.

On a host where systemd is PID 1 the demo runs there (installing the package with apt); elsewhere it
boots the disposable test machine (machine.py), installs the package with dpkg inside it, and tears the
machine down at the end. Either way it shows `systemctl status pod@hello`, the pod's journal lines and
`machinectl list`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from tests.helpers.aci import make_busybox_aci
from tests.integration.machine import PATH, booted, build_deb

ROOT = Path(__file__).resolve().parent.parent.parent
EXAMPLE = ROOT / "examples/hello.json"


class Target(Protocol):
    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]: ...

    def copy_in(self, src: str | os.PathLike[str], dst: str) -> None: ...


class Host:
    """This machine, when systemd is its PID 1."""

    def run(
        self, argv: Sequence[str], *, check: bool = True, timeout: float = 60.0, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {"PATH": PATH, "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "DEBIAN_FRONTEND": "noninteractive"}
        proc = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
        if check and proc.returncode != 0:
            raise SystemExit(f"demo: {shlex.join(argv)} failed ({proc.returncode}):\n{proc.stderr}")
        return proc

    def copy_in(self, src: str | os.PathLike[str], dst: str) -> None:
        Path(dst).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m" if sys.stdout.isatty() else f"\n== {text}", flush=True)


def show(target: Target, argv: Sequence[str], *, check: bool = False) -> str:
    print(f"$ {shlex.join(argv)}", flush=True)
    proc = target.run(argv, check=False)
    print((proc.stdout + proc.stderr).rstrip(), flush=True)
    if check and proc.returncode != 0:
        raise SystemExit(f"demo: {shlex.join(argv)} failed ({proc.returncode})")
    return proc.stdout


def demo(target: Target, deb: Path, aci: Path, *, on_host: bool) -> int:
    say("installing the package")
    target.copy_in(deb, f"/var/tmp/{deb.name}")
    if on_host:
        target.run(["apt-get", "install", "-y", "-q", f"/var/tmp/{deb.name}"], timeout=600)
    else:
        target.run(["dpkg", "-i", f"/var/tmp/{deb.name}"], timeout=120)
    say("fetching the example's image (a busybox ACI built here, unsigned: --insecure-options=image)")
    target.copy_in(aci, "/var/tmp/busybox.aci")
    show(target, ["rktd", "--insecure-options=image", "fetch", "/var/tmp/busybox.aci"], check=True)
    say("dropping examples/hello.json into /etc/rktd/pods and starting pod@hello")
    target.copy_in(EXAMPLE, "/etc/rktd/pods/hello.json")
    show(target, ["systemctl", "daemon-reload"], check=True)
    show(target, ["systemctl", "start", "pod@hello"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log = target.run(["journalctl", "-b", "-u", "pod@hello", "-o", "cat"], check=False).stdout
        if "hello from rktd" in log:
            break
        time.sleep(0.3)
    say("the pod as systemd sees it")
    show(target, ["systemctl", "status", "--no-pager", "pod@hello"])
    say("its journal")
    show(target, ["journalctl", "-b", "--no-pager", "-u", "pod@hello"])
    say("the machines machined knows")
    show(target, ["machinectl", "list"])
    listing = target.run(["machinectl", "list", "--no-legend"], check=False).stdout
    units = [
        target.run(
            ["machinectl", "show", "-p", "Unit", "--value", line.split()[0]], check=False
        ).stdout.strip()
        for line in listing.splitlines()
        if line.strip()
    ]
    active = target.run(["systemctl", "is-active", "pod@hello"], check=False).stdout.strip()
    ok = active == "active" and "pod@hello.service" in units
    say("tearing down")
    show(target, ["systemctl", "stop", "pod@hello"])
    target.run(["rm", "-f", "/etc/rktd/pods/hello.json", f"/var/tmp/{deb.name}", "/var/tmp/busybox.aci"])
    target.run(["systemctl", "daemon-reload"])
    print(f"\ndemo: pod@hello was {active}" + ("" if ok else " (expected active and listed by machinectl)"))
    return 0 if ok else 1


def main() -> int:
    if os.geteuid() != 0:
        raise SystemExit("demo: run as root (it installs a package and starts a systemd service)")
    with tempfile.TemporaryDirectory(prefix="rktd-demo.") as tmp:
        say("building the Debian package (packaging/build-deb)")
        deb = build_deb(Path(tmp))
        print(deb)
        aci = make_busybox_aci(Path(tmp) / "busybox.aci", "example.com/busybox")
        if Path("/run/systemd/system").is_dir():
            say("systemd is PID 1 here: running the demo on this host")
            if Path("/etc/rktd/pods/hello.json").exists():
                raise SystemExit("demo: /etc/rktd/pods/hello.json exists already: not overwriting it")
            rc = demo(Host(), deb, aci, on_host=True)
            print("demo: the package stays installed (apt-get remove rktd-units removes it)")
            return rc
        say("systemd is not PID 1 here: booting a disposable Debian 12 machine (systemd-nspawn -b)")
        with booted() as machine:
            print(f"booted {machine.name}", flush=True)
            rc = demo(machine, deb, aci, on_host=False)
        print("demo: the machine is torn down", flush=True)
        return rc


if __name__ == "__main__":
    sys.exit(main())
