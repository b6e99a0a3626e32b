"""Regression tests for the pod runtime's security review: each reproduces an attack by a pod's app
(or by an image, or a local user) against real pods (nspawn, fly), real pod directories, real
CNI teardown and real tar images, and checks that the host no longer falls for it."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.aci import make_busybox_aci
from tests.test_stage1_nspawn import (
    IMG,
    Rktd,
    app_lines,
    busybox_aci,
    needs_nspawn,
    needs_root,
    rktd,
    run_sh,
)

__all__ = ["busybox_aci", "rktd"]
pytestmark = [needs_root, pytest.mark.slow]

CAP = {"CAP_CHOWN": 0, "CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_SYS_MODULE": 16}
CAP |= {"CAP_SYS_RAWIO": 17, "CAP_SYS_CHROOT": 18, "CAP_SYS_PTRACE": 19, "CAP_SYS_ADMIN": 21}


def caps_of(out: str, app: str = "busybox") -> dict[str, int]:
    return {
        k: int(v, 16)
        for k, v in (line.split(":\t") for line in app_lines(out, app) if line.startswith("Cap"))
    }


def only_pod(rktd: Rktd) -> Path:
    pods = list((rktd.dir / "pods").glob("*/*"))
    assert len(pods) == 1, pods
    return pods[0]


# -- 1: the pod directory (network state, pid, cgroups) is out of the container's reach -----------


def evil_state(plugin: Path) -> str:
    entry = {
        "name": "x", "ifname": "eth0", "args": "", "container_id": "x", "started": 1, "result": None,
        "plugins": [{"cniVersion": "0.4.0", "name": "x", "type": str(plugin)}], "portmap": False,
    }  # fmt: skip
    return json.dumps(
        {"version": 1, "pod_uuid": "x", "kind": "cni", "netns": None, "netns_name": None,
         "cni_path": "/", "networks": [entry]}
    )  # fmt: skip


@needs_nspawn
def test_app_cannot_plant_state_the_host_trusts(rktd: Rktd, tmp_path: Path) -> None:
    """An app granted even CAP_SYS_PTRACE (so /proc/1/root works) writes a network state naming a
    host program as CNI plugin, a pid and a cgroup list wherever it can: `rm` runs nothing of it."""
    pwned, victim = tmp_path / "PWNED", tmp_path / "victim"
    evil = tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {pwned}\n")
    evil.chmod(0o755)
    victim.mkdir()
    state = evil_state(evil).replace("'", "")
    script = (
        "for d in /proc/1/root/rktd /rktd; do mkdir -p $d/net; "
        f"echo '{state}' > $d/net/state.json; echo 1 > $d/pid; echo {victim} > $d/cgroups; "
        "echo x >> $d/init; done; ls /proc/1/root/rktd; true"
    )
    proc = run_sh(rktd, "nspawn", script, app=("--cap-retain=CAP_SYS_PTRACE,CAP_DAC_OVERRIDE",))
    assert proc.returncode == 0, proc.stderr
    assert "init.cfg" in proc.stdout  # it did reach the init's /rktd
    pod = only_pod(rktd)
    assert not (pod / "net").exists() and not (pod / "cgroups").exists()
    assert (pod / "pid").read_text().strip() != "1"
    assert rktd("rm", pod.name).returncode == 0
    assert not pwned.exists() and victim.is_dir()


def test_teardown_never_runs_a_plugin_path_from_the_state(tmp_path: Path) -> None:
    """Whatever the state file says, teardown looks plain plugin names up in the configured CNI_PATH."""
    from rktd_units import network

    pwned, evil = tmp_path / "PWNED", tmp_path / "evil"
    evil.write_text(f"#!/bin/sh\ntouch {pwned}\n")
    evil.chmod(0o755)
    pod_dir = tmp_path / "pod"
    (pod_dir / "net").mkdir(parents=True)
    for plugin in (evil, Path("evil")):
        (pod_dir / "net" / "state.json").write_text(
            evil_state(plugin).replace('"/"', json.dumps(str(tmp_path)))
        )
        with pytest.raises(Exception):  # noqa: B017 - NetworkError: the DEL is refused, not run
            network.teardown("x", pod_dir, local_config=tmp_path)
    assert not pwned.exists()


def test_stop_signals_only_the_lock_holder(rktd: Rktd) -> None:
    """A pid file naming another process (here a sleep of ours) gets no signal from `rktd stop`."""
    from rktd_units.pods import Pods, State

    pod = Pods(rktd.dir).create()
    pod.move(State.RUN)  # locked by this test process, as stage1 would hold it
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        pod.write_atomic("pid", f"{sleeper.pid}\n".encode())
        proc = rktd("stop", "--timeout=0", pod.uuid, timeout=20)
        assert proc.returncode == 254 and "does not name the process holding its lock" in proc.stderr
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        pod.unlock()


def test_rm_removes_only_the_pods_own_cgroups(rktd: Rktd, tmp_path: Path) -> None:
    from rktd_units.pods import Pods, State

    victim = tmp_path / "victim"
    victim.mkdir()
    pod = Pods(rktd.dir).create()
    pod.move(State.RUN)
    (pod.path / "cgroups").write_text(f"{victim}\n/sys/fs/cgroup/rktd-{pod.uuid}/../x\n")
    pod.unlock()
    assert rktd("rm", pod.uuid).returncode == 0
    assert victim.is_dir()


# -- 2: the init is the host's binary, bound read-only ----------------------------------------------


@needs_nspawn
def test_a_pod_cannot_replace_the_init_of_later_pods(rktd: Rktd) -> None:
    from rktd_units.stage1.nspawn import find_init

    init = Path(find_init())
    before = _sha(init)
    proc = run_sh(
        rktd, "nspawn",
        "cp /bin/busybox /proc/1/root/rktd/init 2>&1; echo x >> /proc/1/root/rktd/init 2>&1; "
        "mount -o remount,rw /proc/1/root/rktd/init 2>&1; true",
        app=("--cap-retain=CAP_SYS_PTRACE,CAP_DAC_OVERRIDE",),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Read-only file system" in proc.stdout, proc.stdout  # it did reach the init's binary
    assert _sha(init) == before
    again = run_sh(rktd, "nspawn", "echo second")
    assert again.returncode == 0 and app_lines(again.stdout) == ["second"], again.stderr


# -- 3: pod directories are root's alone ------------------------------------------------------------


def _as_nobody(action: str) -> int:
    """Run `action` (python source) as uid/gid 65534 in a child; its exit status."""
    code = f"import os\nos.setgroups([]); os.setgid(65534); os.setuid(65534)\n{action}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True).returncode


@pytest.mark.parametrize("flavour", [pytest.param("nspawn", marks=needs_nspawn), "fly"])
def test_other_users_cannot_enter_pods_or_read_their_env(rktd: Rktd, flavour: str) -> None:
    script = "cp /bin/busybox /suid && chmod 4755 /suid; true"
    proc = run_sh(rktd, flavour, script, "--set-env=SECRET=hunter2")
    assert proc.returncode == 0, proc.stderr
    pod = only_pod(rktd)
    upper = pod / "overlay" / "busybox" / "upper" / "suid"
    assert upper.exists() and upper.stat().st_mode & stat.S_ISUID  # what the app planted
    for path in (rktd.dir / "pods", pod):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for name in ("stage1.json", "pod", *(["init.cfg"] if flavour == "nspawn" else [])):
        assert stat.S_IMODE((pod / name).stat().st_mode) == 0o600, name
    assert _as_nobody(f"os.listdir({str(pod.parent)!r})") != 0
    assert _as_nobody(f"open({str(pod / 'stage1.json')!r}).read()") != 0
    assert _as_nobody(f"os.execv({str(upper)!r}, ['suid', 'id'])") != 0


# -- 5, 6, 7: capabilities ------------------------------------------------------------------------------


@needs_nspawn
def test_retain_set_limits_every_capability_set(rktd: Rktd) -> None:
    script = "grep ^Cap /proc/self/status; chown 1 /tmp && echo CHOWN-WORKED; true"
    proc = run_sh(rktd, "nspawn", script, app=("--cap-retain=CAP_NET_BIND_SERVICE",))
    caps = caps_of(proc.stdout)
    want = 1 << CAP["CAP_NET_BIND_SERVICE"]
    # Inheritable empty: a non-root app could otherwise gain what a file grants as inheritable
    # (CVE-2022-24769); as root the bounding set is what survives exec.
    assert (caps["CapEff"], caps["CapPrm"], caps["CapInh"], caps["CapBnd"], caps["CapAmb"]) == (
        want, want, 0, want, 0,
    )  # fmt: skip
    assert "CHOWN-WORKED" not in proc.stdout


@pytest.mark.parametrize("flavour", ["nspawn", "fly"])
def test_no_app_has_an_inheritable_capability(rktd: Rktd, flavour: str) -> None:
    """Neither flavour's apps (the C init's, and fly's become()) keep an inheritable set, with a
    retain set or the default one."""
    for app in ((), ("--cap-retain=CAP_NET_BIND_SERVICE",)):
        proc = run_sh(rktd, flavour, "grep ^Cap /proc/self/status", app=app)
        assert proc.returncode == 0, proc.stderr
        caps = caps_of(proc.stdout)
        assert caps["CapInh"] == 0 and caps["CapBnd"] != 0, (flavour, app, caps)


@needs_nspawn
def test_default_app_capabilities_exclude_the_dangerous_ones(rktd: Rktd) -> None:
    proc = run_sh(rktd, "nspawn", "grep ^Cap /proc/self/status; ls /proc/1/root/ 2>&1; true")
    caps = caps_of(proc.stdout)
    for name in ("CAP_SYS_ADMIN", "CAP_SYS_PTRACE", "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_NET_ADMIN"):
        for kind in ("CapEff", "CapPrm", "CapInh", "CapBnd"):
            assert not caps[kind] & (1 << CAP[name]), (name, kind)
    assert caps["CapEff"] & (1 << CAP["CAP_CHOWN"]) and caps["CapEff"] & (1 << CAP["CAP_SYS_CHROOT"])
    assert "Permission denied" in proc.stdout  # the init's root is out of reach


@needs_nspawn
def test_a_read_only_rootfs_cannot_be_remounted_to_change_the_store(rktd: Rktd) -> None:
    rootfs = rktd.dir / "cas" / "images" / rktd.image.id / "rootfs"
    script = "mount -o remount,bind,rw / 2>&1; echo x > /etc/TAMPERED 2>&1; true"
    proc = run_sh(rktd, "nspawn", script, app=("--readonly-rootfs=true",))
    assert proc.returncode == 0, proc.stderr
    assert not (rootfs / "etc" / "TAMPERED").exists()


@needs_nspawn
def test_an_image_cannot_widen_its_capabilities(rktd: Rktd, tmp_path: Path) -> None:
    """An image's retain set naming CAP_SYS_ADMIN and CAP_NET_ADMIN gets neither; the same set from
    the command line (trusted) does."""
    retain = ["CAP_CHOWN", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]
    app = {"isolators": [{"name": "os/linux/capabilities-retain-set", "value": {"set": retain}}]}
    aci = make_busybox_aci(tmp_path / "greedy.aci", "example.com/greedy", app=app)
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    script = ("--exec=/bin/sh", "--", "-c", "grep ^Cap /proc/self/status")
    proc = rktd("--insecure-options=image", "run", "--net=host", "example.com/greedy", *script)
    caps = caps_of(proc.stdout, "greedy")
    assert caps["CapEff"] == caps["CapBnd"] == 1 << CAP["CAP_CHOWN"], proc.stderr
    assert "not granting CAP_NET_ADMIN, CAP_SYS_ADMIN" in proc.stderr
    trusted = rktd(
        "--insecure-options=image", "run", "--net=host", "example.com/greedy",
        f"--cap-retain={','.join(retain)}", *script,
    )  # fmt: skip
    want = sum(1 << CAP[c] for c in retain)
    assert caps_of(trusted.stdout, "greedy")["CapEff"] == want, trusted.stderr


# -- 8: enter -------------------------------------------------------------------------------------------


@pytest.fixture
def running(rktd: Rktd, tmp_path: Path) -> Iterator[tuple[str, int]]:
    uuid_file = tmp_path / "uuid"
    proc = rktd.start(
        "run", "--net=host", f"--uuid-file-save={uuid_file}", IMG, "--user=1000", "--group=1000",
        "--cap-retain=CAP_CHOWN,CAP_KILL", "--exec=/bin/sh", "--", "-c", "echo up; exec sleep 600",
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "up")
    try:
        yield uuid, int(rktd.status(uuid)["pid"])
    finally:
        assert rktd("stop", uuid).returncode == 0
        proc.communicate(timeout=30)


@needs_nspawn
def test_enter_is_confined_as_the_app(rktd: Rktd, running: tuple[str, int]) -> None:
    uuid, stage1 = running
    script = (
        "id -u; id -g; grep -E '^(Cap|NoNewPrivs)' /proc/self/status; cat /proc/self/cgroup /proc/1/cgroup"
    )
    entered = rktd("enter", uuid, "/bin/sh", "-c", script)
    assert entered.returncode == 0, entered.stderr
    lines = entered.stdout.splitlines()
    assert lines[:2] == ["1000", "1000"]
    caps = {k: int(v, 16) for k, v in (line.split(":\t") for line in lines if line.startswith("Cap"))}
    assert caps["CapEff"] == caps["CapPrm"] == 0  # a uid other than 0 keeps none
    assert caps["CapBnd"] == (1 << CAP["CAP_CHOWN"]) | (1 << 5)
    cgroups = [line for line in lines if line[:1].isdigit() and line.count(":") >= 2]
    half = len(cgroups) // 2
    own, init = cgroups[:half], cgroups[half:]
    assert own and own == init  # the entered command is in the cgroup of the pod's init (PID 1)
    assert stage1 > 0


# -- 11: deep trees ----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", [pytest.param("nspawn", marks=needs_nspawn), "fly"])
def test_rm_and_gc_survive_deep_trees(rktd: Rktd, flavour: str) -> None:
    deep = "cd /tmp; i=0; while [ $i -lt 1500 ]; do mkdir d; cd d; i=$((i+1)); done; echo made"
    for _ in range(2):
        proc = run_sh(rktd, flavour, deep)
        assert app_lines(proc.stdout) == ["made"], proc.stderr
    first, _ = sorted((rktd.dir / "pods").glob("*/*"), key=lambda p: p.stat().st_mtime)
    assert rktd("rm", first.name).returncode == 0 and not first.exists()
    gc = rktd("gc", "--grace-period=0s")
    assert gc.returncode == 0, gc.stderr
    assert not list((rktd.dir / "pods").glob("*/*"))


# -- 14: the notify socket cannot be taken first ----------------------------------------------------


@needs_nspawn
def test_a_host_user_cannot_block_notify_apps(rktd: Rktd, tmp_path: Path) -> None:
    aci = make_busybox_aci(
        tmp_path / "notify.aci", "example.com/notifier",
        annotations={"appc.io/executor/supports-systemd-notify": "true"},
    )  # fmt: skip
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    squatter.bind("\0rktd-notify-notifier")  # the name the init used to take, on the host's network
    try:
        proc = rktd(
            "--insecure-options=image", "run", "--net=host", "example.com/notifier",
            "--exec=/bin/sh", "--", "-c", 'echo "$NOTIFY_SOCKET"',
        )  # fmt: skip
    finally:
        squatter.close()
    assert proc.returncode == 0, proc.stderr
    [name] = app_lines(proc.stdout, "notifier")
    assert name.startswith("@rktd-notify-") and name != "@rktd-notify-notifier"


# (a notify message from outside the pod's PID namespace: tests/test_stage1_init_c.py)


# -- 15: an image's /etc/passwd that is a FIFO ---------------------------------------------------------


def test_a_fifo_passwd_does_not_hang_stage0(tmp_path: Path) -> None:
    from rktd_units import stage0
    from rktd_units.errors import PodError

    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    os.mkfifo(rootfs / "etc" / "passwd")
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(AssertionError("stage0 hangs")))
    signal.alarm(5)
    try:
        with pytest.raises(PodError, match="not found"):
            stage0.resolve_user(rootfs, "web")
    finally:
        signal.alarm(0)


# -- 20: mount points through the image's symlinks ---------------------------------------------------


@pytest.mark.parametrize("flavour", [pytest.param("nspawn", marks=needs_nspawn), "fly"])
def test_proc_is_mounted_inside_the_image_through_its_symlinks(
    rktd: Rktd, flavour: str, tmp_path: Path
) -> None:
    """The image's /sys is a symlink to an absolute path: it resolves inside the image, as the app
    sees it, not in stage1's (or the host's) root."""
    from tests.helpers.aci import Entry, busybox_entries, image_manifest, write_aci

    entries = [
        e
        for e in busybox_entries(image_manifest("example.com/linky", exec=["/bin/sh"]))
        if e.path != "rootfs/sys"
    ]
    entries += [Entry("rootfs/data", "dir", mode=0o755), Entry("rootfs/sys", "symlink", target="/data/sys")]
    aci = write_aci(tmp_path / "linky.aci", entries)
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    net = ("--net=host",) if flavour == "nspawn" else ()
    proc = rktd(
        "--insecure-options=image", "run", f"--stage1={flavour}", *net, "example.com/linky",
        "--exec=/bin/sh", "--", "-c", "ls /data/sys/kernel >/dev/null && echo mounted",
    )  # fmt: skip
    assert app_lines(proc.stdout, "linky") == ["mounted"], proc.stderr
    assert not Path("/data/sys").exists()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@needs_nspawn
def test_insecure_options_capabilities_and_seccomp_take_effect(rktd: Rktd) -> None:
    script = ("--exec=/bin/sh", "--", "-c", "grep -E '^(Cap|Seccomp)' /proc/self/status")
    default = rktd("run", "--net=host", IMG, *script)
    lax = rktd("--insecure-options=image,capabilities,seccomp", "run", "--net=host", IMG, *script)
    assert default.returncode == 0 and lax.returncode == 0, (default.stderr, lax.stderr)
    assert not caps_of(default.stdout)["CapEff"] & (1 << CAP["CAP_SYS_ADMIN"])
    assert caps_of(lax.stdout)["CapEff"] & (1 << CAP["CAP_SYS_ADMIN"])
    seccomp = [
        line
        for out in (default.stdout, lax.stdout)
        for line in app_lines(out)
        if line.startswith("Seccomp:")
    ]
    assert seccomp[0] != seccomp[1] and seccomp[1].endswith("\t0"), seccomp


ESCAPE_C = r"""
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>
int main(void) {
    mkdir("/.esc", 0700);
    if (chroot("/.esc") != 0) { perror("chroot"); return 2; }
    for (int i = 0; i < 64; i++) chdir("..");
    chroot(".");
    puts(access("/rktd/init.cfg", F_OK) == 0 ? "ESCAPED" : "contained");
    return 0;
}
"""


@needs_nspawn
def test_the_chroot_escape_leads_nowhere(rktd: Rktd, tmp_path: Path) -> None:
    """CAP_SYS_CHROOT is in the default set (as rkt's and Docker's): the classic escape (chroot into a
    subdirectory, `..` up from the cwd left outside it) must not reach stage1's root, /rktd and the
    other apps' trees: the app's rootfs is the root of a mount namespace of its own."""
    source = tmp_path / "esc.c"
    source.write_text(ESCAPE_C)
    binary = tmp_path / "esc"
    if subprocess.run(["gcc", "-static", "-O", "-o", binary, source], capture_output=True).returncode:
        pytest.skip("no static C toolchain")
    aci = make_busybox_aci(tmp_path / "esc.aci", "example.com/esc", extra_files={"esc": binary.read_bytes()})
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    proc = rktd(
        "--insecure-options=image",
        "run",
        "--net=host",
        "example.com/esc",
        "--exec=/bin/sh",
        "--",
        "-c",
        "chmod 755 /esc; /esc",
    )
    assert app_lines(proc.stdout, "esc") == ["contained"], proc.stderr
