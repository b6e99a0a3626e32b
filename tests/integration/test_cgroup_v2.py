"""Memory and CPU limits on a pure cgroup v2 (unified) host, under a real systemd.

The test host may mount cgroup v1 and v2 side by side with its memory and cpu controllers bound to v1,
and a container shares its kernel's layout. Releasing those controllers from v1 is not an option on a
shared host (its v1 memory hierarchy holds other processes' cgroups, and other tests need v1), so these
tests boot the same Debian root as a virtual machine (machine.VirtualMachine: qemu, with KVM on
hardware virtualization, else its TCG emulator), whose systemd 252 mounts only the unified hierarchy.
There stage0 gives each limited app's spec `cgroup_v2` limits (stage1.setup_cgroups), nspawn gets a
delegated cgroup (the unit's Delegate=yes, or the scope machined makes for `rktd run` from a shell), and
the pod's init puts each limited app in `payload/<app>` with its limits.

What is proven, for a pod unit and for `rktd run` from a shell: an app allocating past its memory
isolator is killed by the kernel's OOM killer *for the app's own cgroup* (the kernel log names it); an
app staying under runs, in a cgroup whose memory.max and cpu.max are its isolators, and a busy app is
throttled; once the pod is stopped no cgroup of it remains.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator

import pytest

from tests.integration.machine import VirtualMachine
from tests.integration.pods import IMAGE, Pods, app, manifest, wait_for

MB = 1024 * 1024
LIMIT = "32Mi"
# A shell variable of N bytes: its memory is the shell's own, inside the app's cgroup.
HOG = 'x=$(busybox head -c {n} /dev/zero | busybox tr "\\0" a); echo survived ${{#x}}'
SPIN = "while :; do :; done"


def hog(n: int, then: str = "") -> list[str]:
    return ["/bin/sh", "-c", HOG.format(n=n) + (f"; {then}" if then else "")]


def limits(memory: str | None = None, cpu: str | None = None) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    if memory:
        out.append({"name": "resource/memory", "value": {"limit": memory}})
    if cpu:
        out.append({"name": "resource/cpu", "value": {"limit": cpu}})
    return out


@pytest.fixture
def pods(vm: VirtualMachine) -> Iterator[Pods]:
    p = Pods(vm)  # type: ignore[arg-type]  # the same command interface as Machine
    try:
        yield p
    finally:
        p.cleanup()


SCOPE_APP = r"/machine\.slice/machine-rktd[^/]*\.scope/payload/busybox"


def rktd_run(net: str, *app_args: str, run_args: tuple[str, ...] = ()) -> list[str]:
    return ["rktd", "--insecure-options=image", "run", f"--net={net}", *run_args, IMAGE, *app_args]


def cat(vm: VirtualMachine, path: str) -> str:
    return vm.run(["cat", path]).stdout.strip()


def exists(vm: VirtualMachine, path: str) -> bool:
    return vm.run(["test", "-e", path], check=False).returncode == 0


def app_cgroup(vm: VirtualMachine, below: str, name: str) -> str:
    """The one cgroup directory called `name` below `below` (a path in the cgroup tree)."""
    found = vm.run(["find", f"/sys/fs/cgroup{below}", "-type", "d", "-name", name]).stdout.split()
    assert len(found) == 1, (below, name, vm.run(["find", f"/sys/fs/cgroup{below}", "-type", "d"]).stdout)
    return found[0]


def pid_of(vm: VirtualMachine, cmdline: str) -> list[str]:
    """Processes whose whole command line is `cmdline`."""
    return vm.run(["pgrep", "-f", f"^{re.escape(cmdline)}$"], check=False).stdout.split()


def oom_kills(vm: VirtualMachine) -> list[str]:
    """The memory cgroups the kernel's OOM killer acted for, this boot (`oom_memcg=` of each kill)."""
    kernel = vm.run(["journalctl", "-k", "-b", "--no-pager", "-o", "cat"]).stdout
    return re.findall(r"oom-kill:.*?oom_memcg=([^,\s]+)", kernel)


def wait_throttled(vm: VirtualMachine, cgroup: str) -> dict[str, int]:
    """cpu.stat of `cgroup` once the CFS bandwidth limit has throttled it (bounded wait)."""

    def stat() -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in cat(vm, f"{cgroup}/cpu.stat").splitlines())}

    wait_for(lambda: stat()["nr_throttled"] > 0, timeout=30)
    return stat()


# -- the environment ---------------------------------------------------------------------------------


def test_vm_is_a_pure_cgroup_v2_host(vm: VirtualMachine) -> None:
    """What the rest relies on: only the unified hierarchy, with memory and cpu available."""
    assert vm.run(["stat", "-fc", "%T", "/sys/fs/cgroup"]).stdout.strip() == "cgroup2fs"
    mounts = [line.split(" - ")[1].split()[0] for line in cat(vm, "/proc/self/mountinfo").splitlines()]
    assert "cgroup" not in mounts  # no v1 hierarchy anywhere
    assert {"memory", "cpu"} <= set(cat(vm, "/sys/fs/cgroup/cgroup.controllers").split())


def test_unit_delegates_its_cgroup(pods: Pods) -> None:
    pods.add("v2deleg", manifest(app("a", "/bin/sh", "-c", "exec sleep 1000")))
    assert pods.show("pod@v2deleg.service", "Delegate") == "yes"


# -- a pod unit --------------------------------------------------------------------------------------


# On a CNI network (the default) under a unit, stage1 forks a helper that registers the pod with
# machined (stage1/machined.py): it must leave the unit's cgroup first, since cgroup v2 lets a cgroup
# with a process in it give no controller to its children (nspawn's `payload` would get neither memory
# nor cpu). Both networks are tested for that.
NETS = ["host", "default"]


@pytest.mark.parametrize("net", NETS)
def test_unit_app_past_its_memory_limit_is_oom_killed(pods: Pods, net: str) -> None:
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    name = f"v2hog-{net}"
    unit = f"pod@{name}.service"
    pods.add(
        name,
        manifest(
            app("hog", *hog(100_000_000), app={"isolators": limits(memory=LIMIT)}),
            annotations={"rktd/restart": "no", "rktd/net": net},
        ),
    )
    before = len(oom_kills(vm))
    vm.run(["systemctl", "start", "--no-block", unit])
    assert wait_for(lambda: pods.active(unit) in ("failed", "inactive"), timeout=120), pods.status(unit)
    survived = [line for line in pods.lines_of(unit, "hog") if "survived" in line]
    assert not survived, pods.status(unit)
    assert pods.active(unit) == "failed", pods.status(unit)
    # The kernel's OOM killer acted for the app's own cgroup below the unit's (the unit sets no
    # MemoryMax=: the limit is stage1's), and systemd saw it.
    cgroup = f"/machine.slice/{unit}"
    kills = oom_kills(vm)[before:]
    assert kills and set(kills) == {f"{cgroup}/payload/hog"}, kills
    assert "A process of this unit has been killed by the OOM killer" in vm.journal(unit)
    # The pod's status is the killed app's (systemd may also stop the unit first, by OOMPolicy=stop).
    result = (pods.show(unit, "Result"), pods.show(unit, "ExecMainStatus"))
    assert result == ("exit-code", "137") or result[0] == "oom-kill", result
    assert not exists(vm, f"/sys/fs/cgroup{cgroup}")


@pytest.mark.parametrize("net", NETS)
def test_unit_app_under_its_limits_runs_in_its_cgroup(pods: Pods, net: str) -> None:
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    name = f"v2ok-{net}"
    unit = f"pod@{name}.service"
    pods.add(
        name,
        manifest(
            app(
                "ok", *hog(8_000_000, "exec sleep 1000"), app={"isolators": limits(memory=LIMIT, cpu="250m")}
            ),
            app("spin", "/bin/sh", "-c", SPIN, app={"isolators": limits(cpu="100m")}),
            app("free", "/bin/sh", "-c", "exec sleep 1001"),
            annotations={"rktd/net": net},
        ),
    )
    vm.run(["systemctl", "start", unit], timeout=120)
    pods.wait_active(unit)
    assert wait_for(lambda: pods.lines_of(unit, "ok")), pods.status(unit)
    assert pods.lines_of(unit, "ok") == ["survived 8000000"]
    cgroup = pods.show(unit, "ControlGroup")
    assert cgroup == f"/machine.slice/{unit}", cgroup

    ok = app_cgroup(vm, cgroup, "ok")
    assert cat(vm, f"{ok}/memory.max") == str(32 * MB)
    assert cat(vm, f"{ok}/cpu.max") == "25000 100000"
    assert cat(vm, f"{ok}/cgroup.procs").split() == pid_of(vm, "sleep 1000")

    spin = app_cgroup(vm, cgroup, "spin")
    assert cat(vm, f"{spin}/cpu.max") == "10000 100000"
    assert cat(vm, f"{spin}/memory.max") == "max"
    stat = wait_throttled(vm, spin)
    assert stat["nr_throttled"] > 0 and stat["throttled_usec"] > 0, stat

    # An app without isolators has no cgroup of its own: it stays with the init, unlimited.
    (free,) = pid_of(vm, "sleep 1001")
    free_cg = cat(vm, f"/proc/{free}/cgroup").removeprefix("0::")
    assert free_cg == f"{cgroup}/payload/_rktd-init", free_cg  # not an AC Name: no app can take it
    assert cat(vm, f"/sys/fs/cgroup{free_cg}/memory.max") == "max"

    vm.run(["systemctl", "stop", unit], timeout=120)
    assert pods.active(unit) in ("inactive", "failed")
    assert not exists(vm, f"/sys/fs/cgroup{cgroup}")
    assert not vm.run(["find", "/sys/fs/cgroup", "-name", f"*{name}*"]).stdout


# -- fly: stage1 is the app ------------------------------------------------------------------------


def test_fly_unit_app_past_its_memory_limit_is_oom_killed(pods: Pods) -> None:
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    unit = "pod@v2flyhog.service"
    pods.add(
        "v2flyhog",
        manifest(
            app("hog", *hog(100_000_000), app={"isolators": limits(memory=LIMIT)}),
            annotations={"rktd/restart": "no", "rktd/stage1": "fly"},
        ),
    )
    before = len(oom_kills(vm))
    vm.run(["systemctl", "start", "--no-block", unit])
    assert wait_for(lambda: pods.active(unit) in ("failed", "inactive"), timeout=120), pods.status(unit)
    # fly: the app is stage1, its output is the unit's own (identifier pod-NAME)
    survived = [line for line in pods.lines_of(unit, "pod-v2flyhog") if "survived" in line]
    assert not survived, pods.status(unit)
    assert pods.active(unit) == "failed", pods.status(unit)
    cgroup = f"/machine.slice/{unit}"
    kills = oom_kills(vm)[before:]
    assert kills and set(kills) == {f"{cgroup}/hog"}, kills
    assert "A process of this unit has been killed by the OOM killer" in vm.journal(unit)
    assert pods.show(unit, "Result") in ("signal", "oom-kill"), pods.status(
        unit
    )  # the app is the main process
    assert not exists(vm, f"/sys/fs/cgroup{cgroup}")


def test_fly_unit_app_under_its_limits_runs_in_its_cgroup(pods: Pods) -> None:
    vm: VirtualMachine = pods.m  # type: ignore[assignment]
    unit = "pod@v2flyok.service"
    pods.add(
        "v2flyok",
        manifest(
            app(
                "ok", "/bin/sh", "-c", "exec sleep 1003", app={"isolators": limits(memory=LIMIT, cpu="250m")}
            ),
            annotations={"rktd/stage1": "fly"},
        ),
    )
    vm.run(["systemctl", "start", unit], timeout=120)
    pods.wait_active(unit)
    cgroup = f"/machine.slice/{unit}"
    assert wait_for(lambda: pid_of(vm, "sleep 1003"), timeout=30), pods.status(unit)
    (sleeper,) = pid_of(vm, "sleep 1003")
    assert cat(vm, f"/proc/{sleeper}/cgroup") == f"0::{cgroup}/ok"
    assert cat(vm, f"/sys/fs/cgroup{cgroup}/ok/memory.max") == str(32 * MB)
    assert cat(vm, f"/sys/fs/cgroup{cgroup}/ok/cpu.max") == "25000 100000"
    vm.run(["systemctl", "stop", unit], timeout=120)
    assert not exists(vm, f"/sys/fs/cgroup{cgroup}")


def test_fly_from_a_shell_says_its_limits_are_not_enforced(vm: VirtualMachine) -> None:
    """From a shell the cgroup is the caller's, which nobody delegated: fly makes none, and says so."""
    proc = vm.run(rktd_run("host", f"--memory={LIMIT}", "--exec=/bin/true", run_args=("--stage1=fly",)))
    assert "fly: memory/CPU limits not enforced: cgroup /sys/fs/cgroup/system.slice/" in proc.stderr
    assert "is not delegated" in proc.stderr


# -- rktd run from a shell ---------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["host", "default"])
def test_shell_run_past_its_memory_limit_is_oom_killed(vm: VirtualMachine, net: str) -> None:
    """Not a unit: nspawn asks machined for a scope of its own (with Delegate=yes), and the app's
    cgroup is below it."""
    before = len(oom_kills(vm))
    hog_argv = ["--exec=/bin/sh", "--", "-c", HOG.format(n=100_000_000)]
    proc = vm.run(rktd_run(net, f"--memory={LIMIT}", *hog_argv), check=False, timeout=180)
    assert "survived" not in proc.stdout
    assert proc.returncode == 137, (proc.returncode, proc.stdout, proc.stderr)
    kills = oom_kills(vm)[before:]
    assert kills and all(re.fullmatch(SCOPE_APP, k) for k in kills), kills


@pytest.mark.parametrize("net", ["host", "default"])
def test_shell_run_under_its_limits(vm: VirtualMachine, net: str) -> None:
    vm.run(["rm", "-f", "/root/v2shell.uuid"])
    argv = rktd_run(
        net,
        *(f"--memory={LIMIT}", "--cpu=250m", "--exec=/bin/sh", "--", "-c", "echo up; exec sleep 1002"),
        run_args=("--uuid-file-save=/root/v2shell.uuid",),
    )
    vm.sh(f"{shlex.join(argv)} >/root/v2shell.out 2>&1 </dev/null & echo $! >/root/v2shell.pid")
    stage0 = cat(vm, "/root/v2shell.pid")
    try:
        assert wait_for(lambda: pid_of(vm, "sleep 1002"), timeout=90), cat(vm, "/root/v2shell.out")
        (sleeper,) = pid_of(vm, "sleep 1002")
        cgroup = cat(vm, f"/proc/{sleeper}/cgroup").removeprefix("0::")
        assert re.fullmatch(SCOPE_APP, cgroup), cgroup
        assert cat(vm, f"/sys/fs/cgroup{cgroup}/memory.max") == str(32 * MB)
        assert cat(vm, f"/sys/fs/cgroup{cgroup}/cpu.max") == "25000 100000"
        scope = cgroup.removesuffix("/payload/busybox")
    finally:
        if exists(vm, "/root/v2shell.uuid"):
            vm.run(["rktd", "stop", cat(vm, "/root/v2shell.uuid")], check=False)
        assert wait_for(lambda: not exists(vm, f"/proc/{stage0}"), timeout=90), cat(vm, "/root/v2shell.out")
    uuid = cat(vm, "/root/v2shell.uuid")
    status = json.loads(vm.run(["rktd", "status", "--format=json", uuid]).stdout)
    assert status["state"] == "exited", status
    assert wait_for(lambda: not exists(vm, f"/sys/fs/cgroup{scope}"), timeout=30), scope
    assert not vm.run(["find", "/sys/fs/cgroup", "-name", f"*{uuid[:8]}*"]).stdout
