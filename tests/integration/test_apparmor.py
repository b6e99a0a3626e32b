"""AppArmor profiles of apps (`os/linux/apparmor-profile`), proven in a kernel that enforces them.

The test host's kernel may have no AppArmor, and a container shares its host's kernel: these tests use
the qemu VM (conftest `vm`), whose Debian kernel enables the AppArmor LSM, and load a profile of their
own into it with apparmor_parser. PROFILE allows everything except reading or writing a file called
MARKER, wherever it is; PROBE prints the label it runs under (/proc/self/attr/current) and tries to
create MARKER in /tmp.

What is proven, for nspawn pods (the C init writes the label before the app's exec) and fly pods
(Python `become()`), as units and from a shell, and for `rktd enter` (`become()` again): the app, or
the entered command, runs under the profile in enforce mode and the kernel denies it what the profile
denies (the kernel's own audit record names the profile), while the same app without the isolator is
unconfined and creates the file; the pod's init stays unconfined; and a profile the kernel does not
have fails the pod before the app runs: never an app running unconfined.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.machine import VirtualMachine
from tests.integration.pods import Pods, app, manifest, wait_for

PROFILE_NAME = "rktd-test"
MARKER = "rktd-aa-denied"
PROFILE = f"""\
abi <abi/3.0>,

profile {PROFILE_NAME} flags=(attach_disconnected,mediate_deleted) {{
  file,
  capability,
  network,
  signal,
  ptrace,
  unix,
  mount,
  umount,
  pivot_root,
  audit deny /**/{MARKER} rw,  # (a deny rule alone is not logged)
}}
"""
PROFILE_FILE = "/root/rktd-test.apparmor"
ENFORCED = f"{PROFILE_NAME} (enforce)"
PROBE = (
    f"cat /proc/self/attr/current; if echo x >/tmp/{MARKER}; then echo write=ok; else echo write=denied; fi"
)
FLAVOURS = ["nspawn", "fly"]


NO_NEW_PRIVS = {"name": "os/linux/no-new-privileges", "value": True}


def apparmor(profile: str = PROFILE_NAME, *more: dict[str, Any]) -> dict[str, Any]:
    """The `app` field of an app with the isolator (and `more` isolators)."""
    aa = {"name": "os/linux/apparmor-profile", "value": {"profile": profile}}
    return {"app": {"isolators": [aa, *more]}}


def probe(name: str, **extra: Any) -> dict[str, Any]:
    return app(name, "/bin/sh", "-c", PROBE, **extra)


@pytest.fixture(scope="module")
def profile(vm: VirtualMachine) -> Iterator[str]:
    """PROFILE loaded into the VM's kernel for this module, unloaded afterwards."""
    vm.write(PROFILE_FILE, PROFILE)
    vm.run(["apparmor_parser", "--replace", PROFILE_FILE])
    try:
        yield PROFILE_NAME
    finally:
        vm.run(["apparmor_parser", "--remove", PROFILE_FILE], check=False)
        vm.run(["rm", "-f", PROFILE_FILE])


@pytest.fixture
def pods(vm: VirtualMachine, profile: str) -> Iterator[Pods]:
    p = Pods(vm)  # type: ignore[arg-type]  # the same command interface as Machine
    try:
        yield p
    finally:
        p.cleanup()


def denials(vm: VirtualMachine) -> list[dict[str, str]]:
    """The kernel's AppArmor denials this boot, oldest first (its audit records, which journald reads
    from the audit socket and, without an audit daemon, the kernel also logs), as key=value dicts."""
    argv = ["journalctl", "-b", "--no-pager", "-o", "cat", "_TRANSPORT=audit", "+", "_TRANSPORT=kernel"]
    out = vm.run(argv, check=False).stdout
    return [
        dict(re.findall(r'(\w+)="?([^"\s]*)"?', line))
        for line in out.splitlines()
        if 'apparmor="DENIED"' in line
    ]


def marker_denials(vm: VirtualMachine, since: int = 0) -> set[str]:
    """The paths of MARKER the kernel denied under PROFILE, in denials(vm)[since:]."""
    return {
        d["name"]
        for d in denials(vm)[since:]
        if d.get("profile") == PROFILE_NAME and d.get("name", "").endswith(f"/{MARKER}")
    }


def run_unit(pods: Pods, name: str, *apps: dict[str, Any], stage1: str) -> str:
    """Start the pod unit `name` and wait for it to end; its state (inactive or failed)."""
    unit = f"pod@{name}.service"
    pods.add(
        name, manifest(*apps, annotations={"rktd/restart": "no", "rktd/net": "host", "rktd/stage1": stage1})
    )
    pods.m.run(["systemctl", "start", unit], check=False, timeout=120)  # fails if the pod fails
    assert wait_for(lambda: pods.active(unit) in ("failed", "inactive"), timeout=120), pods.status(unit)
    return pods.active(unit)


def probed(pods: Pods, unit: str, identifier: str) -> list[str]:
    """The journal lines of `identifier` in `unit`, once PROBE's last one is in (journald may lag)."""
    wait_for(lambda: any(line.startswith("write=") for line in pods.lines_of(unit, identifier)), timeout=30)
    return pods.lines_of(unit, identifier)


def assert_confined(lines: list[str], context: object) -> None:
    assert ENFORCED in lines and "unconfined" not in lines, context
    assert "write=denied" in lines and "write=ok" not in lines, context
    assert any(f"/tmp/{MARKER}: Permission denied" in line for line in lines), context


def assert_unconfined(lines: list[str], context: object) -> None:
    assert "unconfined" in lines and ENFORCED not in lines, context
    assert "write=ok" in lines and "write=denied" not in lines, context


# -- the environment ---------------------------------------------------------------------------------


def test_vm_enforces_apparmor_and_the_profile_is_loaded(vm: VirtualMachine, profile: str) -> None:
    assert vm.run(["cat", "/sys/module/apparmor/parameters/enabled"]).stdout.strip() == "Y"
    loaded = vm.run(["cat", "/sys/kernel/security/apparmor/profiles"]).stdout.splitlines()
    assert ENFORCED in loaded, loaded
    # the agent running the tests' commands (and so `rktd run` from a shell) is itself unconfined
    assert vm.run(["cat", "/proc/self/attr/current"]).stdout.strip() == "unconfined"


# -- pod units ---------------------------------------------------------------------------------------


def test_nspawn_unit_app_runs_under_its_profile(pods: Pods) -> None:
    """Apps of one pod with and without the isolator: only those with it are confined. (With
    no_new_privs too: AppArmor lets an unconfined process enter a profile at exec even then.)"""
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    before = len(denials(vm))
    apps = (
        probe("confined", **apparmor()),
        probe("confined-nnp", **apparmor(PROFILE_NAME, NO_NEW_PRIVS)),
        probe("plain"),
    )
    state = run_unit(pods, "aansp", *apps, stage1="nspawn")
    unit = "pod@aansp.service"
    assert state == "inactive", pods.status(unit)
    assert_confined(probed(pods, unit, "confined"), pods.status(unit))
    assert_confined(probed(pods, unit, "confined-nnp"), pods.status(unit))
    assert_unconfined(probed(pods, unit, "plain"), pods.status(unit))
    # the kernel itself says it denied the file to the profile (the path as the app's mount namespace,
    # whose root is the app's rootfs, names it)
    assert marker_denials(vm, before) == {f"/tmp/{MARKER}"}, denials(vm)


@pytest.mark.parametrize("confined", [True, False], ids=["confined", "plain"])
def test_fly_unit_app_runs_under_its_profile(pods: Pods, confined: bool) -> None:
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    name = f"aafly-{'confined' if confined else 'plain'}"
    before = len(denials(vm))
    extra = apparmor(PROFILE_NAME, NO_NEW_PRIVS) if confined else {}
    state = run_unit(pods, name, probe("a", **extra), stage1="fly")
    unit = f"pod@{name}.service"
    assert state == "inactive", pods.status(unit)
    lines = probed(pods, unit, f"pod-{name}")  # fly has no log relay: the unit's own stdio
    if confined:
        assert_confined(lines, pods.status(unit))
        # a chroot, not a mount namespace of the app's own: AppArmor names the file by its path in
        # the VM's mount namespace, inside the pod's directory
        (path,) = marker_denials(vm, before)
        assert re.fullmatch(rf"/var/lib/rktd/pods/run/[0-9a-f-]+/.*/tmp/{MARKER}", path), path
    else:
        assert_unconfined(lines, pods.status(unit))
        assert not marker_denials(vm, before)


# -- rktd run from a shell ---------------------------------------------------------------------------


@pytest.mark.parametrize("stage1", FLAVOURS)
def test_shell_run_app_runs_under_its_profile(vm: VirtualMachine, profile: str, stage1: str) -> None:
    path, uuid_file = f"/root/aa-shell-{stage1}.json", f"/root/aa-shell-{stage1}.uuid"
    vm.write(path, manifest(probe("confined", **apparmor()), annotations={"rktd/stage1": stage1}))
    before = len(denials(vm))
    try:
        argv = ["rktd", "--insecure-options=image", "run", "--net=host", f"--uuid-file-save={uuid_file}"]
        proc = vm.run([*argv, f"--pod-manifest={path}"], check=False, timeout=180)
        uuid = vm.run(["cat", uuid_file]).stdout.strip()
    finally:
        vm.run(["rm", "-f", path, uuid_file])

    # fly: the app's stdio is rktd run's; nspawn: the init relays it to the journal, by pod UUID
    def relayed() -> str:
        return vm.run(["journalctl", "-b", "--no-pager", "-o", "cat", f"RKTD_UUID={uuid}"]).stdout

    if stage1 == "nspawn":
        wait_for(lambda: "write=" in relayed(), timeout=30)
    context = (proc.returncode, proc.stdout, proc.stderr, relayed())
    assert proc.returncode == 0, context
    lines = [*proc.stdout.splitlines(), *proc.stderr.splitlines(), *relayed().splitlines()]
    assert_confined(lines, context)
    assert len(marker_denials(vm, before)) == 1, denials(vm)[before:]


# -- rktd enter --------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage1", FLAVOURS)
def test_entered_command_runs_under_the_apps_profile(pods: Pods, stage1: str) -> None:
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    name = f"aaenter-{stage1}"
    unit = f"pod@{name}.service"
    sleep = f"sleep {1004 + FLAVOURS.index(stage1)}"
    pods.add(
        name,
        manifest(
            app("a", "/bin/sh", "-c", f"echo up; exec {sleep}", **apparmor()),
            annotations={"rktd/net": "host", "rktd/stage1": stage1},
        ),
    )
    vm.run(["systemctl", "start", unit], timeout=120)
    pods.wait_active(unit)
    assert wait_for(lambda: vm.run(["pgrep", "-fx", sleep], check=False).stdout.strip()), pods.status(unit)
    (app_pid,) = vm.run(["pgrep", "-fx", sleep]).stdout.split()
    # the app runs under its profile; (nspawn) its parent, the pod's init, stays unconfined
    assert vm.run(["cat", f"/proc/{app_pid}/attr/current"]).stdout.strip() == ENFORCED
    if stage1 == "nspawn":
        ppid = vm.run(["ps", "-o", "ppid=", "-p", app_pid]).stdout.strip()
        assert vm.run(["cat", f"/proc/{ppid}/cmdline"]).stdout.split("\0")[0] == "/rktd/init"
        assert vm.run(["cat", f"/proc/{ppid}/attr/current"]).stdout.strip() == "unconfined"

    entered = vm.run(["rktd", "enter", name, "/bin/sh", "-c", PROBE], check=False, timeout=120)
    context = (entered.returncode, entered.stdout, entered.stderr, pods.status(unit))
    assert entered.returncode == 0, context
    assert_confined(entered.stdout.splitlines() + entered.stderr.splitlines(), context)


# -- a profile the kernel does not have --------------------------------------------------------------


@pytest.mark.parametrize("stage1", FLAVOURS)
def test_a_profile_not_loaded_fails_the_pod_before_the_app_runs(pods: Pods, stage1: str) -> None:
    name = f"aamissing-{stage1}"
    unit = f"pod@{name}.service"
    state = run_unit(pods, name, probe("a", **apparmor("rktd-not-loaded")), stage1=stage1)

    def journal_of_pod() -> str:
        # The unit's lines, and the init's native entries for the pod by its own field: journald
        # attributes a datagram to a unit by reading /proc/PID of its sender, which a pod failing
        # within milliseconds may have left already (seen once under TCG), so `-u` can miss them.
        return pods.m.journal(unit) + pods.m.journal(None, f"RKTD_POD={name}")

    wait_for(lambda: "No such file or directory" in journal_of_pod(), timeout=30)
    journal = journal_of_pod()
    assert state == "failed", pods.status(unit)
    # the app never ran, confined or not: the init (nspawn) or stage1 (fly) failed before its exec
    assert "write=" not in journal and "unconfined" not in journal, journal
    assert pods.show(unit, "ExecMainStatus") == ("127" if stage1 == "nspawn" else "254"), pods.status(unit)
    message = (
        "os/linux/apparmor-profile rktd-not-loaded: No such file or directory (no such profile is loaded"
    )
    assert message in journal, journal
