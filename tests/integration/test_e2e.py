"""End to end under a real systemd (issue #7): what an administrator does, in the booted test machine,
with the Debian package built from packaging/debian installed by dpkg.

Each scenario uses its own pod names and removes its manifests when done, so the order does not matter
(the reboots see only the pods of the scenario that reboots).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from tests.integration.machine import Machine
from tests.integration.pods import PODS, PY_IMAGE, Pods, app, manifest, wait_for

LEASES = "find /var/lib/cni/networks -type f ! -name lock ! -name 'last_reserved_ip*' 2>/dev/null || true"


def leftovers(m: Machine) -> dict[str, Any]:
    """What a pod may leave behind: machines, mounts, netns, links, IPAM leases, firewall rules, tasks."""
    rules = m.run(["iptables-save"], check=False).stdout + m.run(["ip6tables-save"], check=False).stdout
    mounts = [line.split()[4] for line in m.run(["cat", "/proc/self/mountinfo"]).stdout.splitlines()]
    links = m.run(["ip", "-o", "link"]).stdout.splitlines()
    return {
        "machines": m.run(["machinectl", "list", "--no-legend"]).stdout.strip(),
        "mounts": sorted(p for p in mounts if p.startswith(("/var/lib/rktd/pods", "/run/netns"))),
        "netns": m.run(["ip", "netns", "list"]).stdout.strip(),
        "links": sorted(line.split(":")[1].strip() for line in links),
        "leases": m.run(["sh", "-c", LEASES]).stdout.strip(),
        "rules": sorted(x for x in rules.splitlines() if not x.startswith(("#", ":")) and x != "COMMIT"),
        "tasks": m.run(
            ["systemctl", "show", "-p", "TasksCurrent", "--value", "machine.slice"]
        ).stdout.strip(),
    }


# -- 1 ---------------------------------------------------------------------------------------------


def test_1_start_journal_machinectl(pods: Pods) -> None:
    """A manifest in /etc/rktd/pods + daemon-reload + start: active, each app under its own identifier,
    listed by machinectl."""
    pods.add(
        "duo",
        manifest(
            app("alpha", "/bin/sh", "-c", "echo alpha-says-hi; exec sleep 1000"),
            app("beta", "/bin/sh", "-c", "echo beta-says-hi; exec sleep 1000"),
        ),
    )
    unit = "pod@duo.service"
    assert pods.show(unit, "SourcePath") == f"{PODS}/duo.json"
    pods.m.run(["systemctl", "start", unit], timeout=90)
    pods.wait_active(unit)
    assert wait_for(lambda: pods.lines_of(unit, "alpha") and pods.lines_of(unit, "beta")), pods.status(unit)
    assert pods.lines_of(unit, "alpha") == ["alpha-says-hi"]
    assert pods.lines_of(unit, "beta") == ["beta-says-hi"]
    assert wait_for(lambda: pods.machine_of(unit)), pods.m.run(["machinectl", "list"]).stdout
    assert pods.active(unit) == "active"


# -- 2 ---------------------------------------------------------------------------------------------


def test_2_wanted_by_starts_at_boot(pods: Pods) -> None:
    pods.add(
        "atboot",
        manifest(
            app("boot", "/bin/sh", "-c", "echo up-after-boot; exec sleep 1000"),
            annotations={"rktd/wanted-by": "multi-user.target"},
        ),
    )
    wants = pods.m.run(["readlink", "/run/systemd/generator/multi-user.target.wants/pod@atboot.service"])
    assert wants.stdout.strip().endswith("pod@atboot.service")
    assert pods.active("pod@atboot.service") != "active"
    pods.m.reboot()
    pods.wait_active("pod@atboot.service", timeout=90)
    assert wait_for(lambda: pods.lines_of("pod@atboot.service", "boot") == ["up-after-boot"])
    # Nobody started it after the reboot: the boot transaction did, because multi-user.target wants it.
    assert "multi-user.target" in pods.show("pod@atboot.service", "WantedBy")


# -- 3 ---------------------------------------------------------------------------------------------


def app_pid(pods: Pods, unit: str, comm: str) -> int | None:
    """The PID (in the machine) of the process named `comm` in the unit's cgroup."""
    out = pods.m.run(["systemd-cgls", "--no-pager", "-u", unit], check=False).stdout
    for line in out.splitlines():
        m = re.search(r"(\d+) (\S+)", line)
        if m and Path(m.group(2)).name == comm:
            return int(m.group(1))
    return None


def test_3_restart_on_failure_and_clean_stop(pods: Pods) -> None:
    before = leftovers(pods.m)
    pods.add("phoenix", manifest(app("bird", "/bin/sh", "-c", "echo bird-started; exec sleep 1000")))
    unit = "pod@phoenix.service"
    assert pods.show(unit, "Restart") == "on-failure"
    pods.m.run(["systemctl", "start", unit], timeout=90)
    pods.wait_active(unit)
    assert wait_for(lambda: app_pid(pods, unit, "sleep")), pods.status(unit)
    first_main = pods.show(unit, "MainPID")
    pid = app_pid(pods, unit, "sleep")
    pods.m.run(["kill", "-KILL", str(pid)])
    assert wait_for(lambda: pods.show(unit, "NRestarts") not in ("", "0"), 60), pods.status(unit)
    pods.wait_active(unit)
    assert pods.show(unit, "MainPID") != first_main
    assert wait_for(lambda: len(pods.lines_of(unit, "bird")) == 2), pods.status(unit)

    pods.m.run(["systemctl", "stop", unit], timeout=90)
    assert pods.active(unit) in ("inactive", "failed")
    assert pods.show(unit, "ControlGroup") == ""
    assert wait_for(lambda: leftovers(pods.m) == before, 15), (before, leftovers(pods.m))


# -- 4 ---------------------------------------------------------------------------------------------

SERVER = """
import os, socket
assert int(os.environ["LISTEN_PID"]) == os.getpid(), "LISTEN_PID is not mine"
assert int(os.environ["LISTEN_FDS"]) == 1
print("server got", os.environ["LISTEN_FDS"], "fd", flush=True)
s = socket.socket(fileno=3)
while True:
    c, _ = s.accept()
    c.sendall(b"hello from a socket-activated pod\\n")
    c.close()
"""


def test_4_socket_activation(pods: Pods) -> None:
    pods.add(
        "sock",
        manifest(
            app(
                "server",
                "/usr/bin/python3",
                "-I",
                "-c",
                SERVER,
                image=PY_IMAGE,
                app={"ports": [{"name": "www", "protocol": "tcp", "port": 8080, "socketActivated": True}]},
                mounts=[{"volume": "usr", "path": "/usr"}],
            ),
            volumes=[{"name": "usr", "kind": "host", "source": "/usr", "readOnly": True}],
            ports=[{"name": "www", "hostPort": 18080, "hostIP": "127.0.0.1"}],
        ),
    )
    listen = pods.show("pod@sock.socket", "Listen")
    assert "127.0.0.1:18080" in listen, pods.m.run(["systemctl", "cat", "pod@sock.socket"], check=False)
    pods.m.run(["systemctl", "start", "pod@sock.socket"])
    assert pods.active("pod@sock.socket") == "active"
    time.sleep(1)
    assert pods.active("pod@sock.service") == "inactive"
    client = (
        "import socket; c = socket.create_connection(('127.0.0.1', 18080), timeout=60); "
        "print(c.makefile().readline(), end='')"
    )
    got = pods.m.run(["python3", "-I", "-c", client], check=False, timeout=90)
    assert got.stdout == "hello from a socket-activated pod\n", pods.status("pod@sock.service") + got.stderr
    assert pods.active("pod@sock.service") == "active"
    assert pods.lines_of("pod@sock.service", "server") == ["server got 1 fd"]


# -- 5 ---------------------------------------------------------------------------------------------


def test_5_bad_manifest_reported_good_ones_start(pods: Pods) -> None:
    boot = {"rktd/wanted-by": "multi-user.target"}
    pods.add(
        "good-one", manifest(app("one", "/bin/sh", "-c", "echo one-up; exec sleep 1000"), annotations=boot)
    )
    pods.add(
        "good-two", manifest(app("two", "/bin/sh", "-c", "echo two-up; exec sleep 1000"), annotations=boot)
    )
    pods.add(
        "broken",
        manifest(
            app("x", "/bin/true"),
            annotations={"rktd/wanted-by": "multi-user.target", "rktd/restart": "sometimes"},
        ),
        reload=False,
    )
    pods.m.reboot()
    pods.wait_active("pod@good-one.service", timeout=90)
    pods.wait_active("pod@good-two.service", timeout=90)
    assert wait_for(lambda: pods.lines_of("pod@good-two.service", "two") == ["two-up"])
    kmsg = pods.m.journal(None, "-k")
    line = [x for x in kmsg.splitlines() if f"{PODS}/broken.json" in x]
    assert line, kmsg[-3000:]
    assert "rktd-generator" in line[0] and "rktd/restart" in line[0], line
    assert (
        pods.m.run(["test", "-e", "/run/systemd/generator/pod@broken.service"], check=False).returncode == 1
    )


# -- 6 ---------------------------------------------------------------------------------------------

EDITOR = """#!/bin/sh
# Non-interactive editor for `systemctl edit`: the drop-in's content comes from /root/dropin.conf.
cat /root/dropin.conf > "$1"
"""


def test_6_systemctl_edit_dropin(pods: Pods) -> None:
    pods.add("edited", manifest(app("ed", "/bin/sh", "-c", "echo ed-up; exec sleep 1000")))
    unit = "pod@edited.service"
    pods.m.write("/usr/local/bin/dropin-editor", EDITOR, 0o755)
    pods.m.write(
        "/root/dropin.conf",
        "[Unit]\nDescription=edited by drop-in\n\n"
        "[Service]\nEnvironment=GREETING=from-the-drop-in\nMemoryMax=64M\n"
        "ExecStartPre=/bin/sh -c 'echo \"pre-start sees $GREETING\"'\n",
    )
    # systemctl edit insists on a terminal: script(1) gives it one.
    edit = f"SYSTEMD_EDITOR=/usr/local/bin/dropin-editor systemctl edit {unit}"
    pods.m.run(["script", "--quiet", "--return", "--command", edit, "/dev/null"])
    override = f"/etc/systemd/system/{unit}.d/override.conf"
    assert "Environment=GREETING=from-the-drop-in" in pods.m.run(["cat", override]).stdout
    pods.m.run(["systemctl", "start", unit], timeout=90)
    pods.wait_active(unit)
    assert override in pods.show(unit, "DropInPaths")
    assert pods.show(unit, "Description") == "edited by drop-in"
    assert "GREETING=from-the-drop-in" in pods.show(unit, "Environment")
    # The machine's cgroup v1 controllers are read-only (nspawn on a hybrid host), so the memory limit
    # cannot be enforced in it; systemd has taken it into the unit, which is what the drop-in controls.
    assert pods.show(unit, "MemoryMax") == "67108864"
    # In effect for the unit's processes: ExecStartPre ran with the drop-in's environment.
    journal = pods.m.journal(unit)
    assert "pre-start sees from-the-drop-in" in journal, pods.status(unit)
    # And the pod itself still runs as before.
    assert wait_for(lambda: pods.lines_of(unit, "ed") == ["ed-up"]), pods.status(unit)


# -- 7 ---------------------------------------------------------------------------------------------


def test_7_static_template_without_reload(pods: Pods) -> None:
    pods.add(
        "latecomer", manifest(app("late", "/bin/sh", "-c", "echo late-up; exec sleep 1000")), reload=False
    )
    unit = "pod@latecomer.service"
    assert pods.show(unit, "FragmentPath").endswith("/systemd/system/pod@.service")
    pods.m.run(["systemctl", "start", unit], timeout=90)
    pods.wait_active(unit)
    assert wait_for(lambda: pods.lines_of(unit, "late") == ["late-up"]), pods.status(unit)
    assert wait_for(lambda: pods.machine_of(unit))
