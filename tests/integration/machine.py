"""A disposable Debian 12 booted with systemd as PID 1 under systemd-nspawn, for end-to-end tests.

The root is built once with debootstrap and cached outside the git tree (``$RKTD_TEST_CACHE``, default
``/var/cache/rktd-tests``), keyed by a hash of everything that goes into it, so it is rebuilt when the
package list changes. Each `Machine` boots a throwaway overlay over that cache, in its own network
namespace (loopback only), and is torn down leaving nothing mounted or running.

Also usable from the command line (``python3 tests/integration/machine.py build|shell``), which the
demo script uses.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
VARIANT = "minbase"
# What the machine needs: systemd as PID 1 with D-Bus and machined, the package's runtime dependencies
# (so `dpkg -i` of the built .deb needs no network), and the tools the scenarios use.
PACKAGES = (
    "busybox-static",
    "containernetworking-plugins",
    "dbus",
    "iproute2",
    "iptables",
    "libseccomp2",  # stage1 loads seccomp isolators through it (ctypes)
    "procps",
    "python3",
    "python3-cffi-backend",  # debootstrap cannot resolve the virtual python3-cffi-backend-api-*
    "python3-click",
    "python3-cryptography",
    "python3-jeepney",
    "python3-jinja2",
    "python3-systemd",
    "python3-yaml",
    "sqv",
    "systemd",
    "systemd-container",
    "systemd-sysv",
)
# Units that only make noise in a test machine.
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "console-getty.service",
    "getty@.service",
    "e2scrub_all.timer",
    "fstrim.timer",
)
# Bump when the post-debootstrap setup below changes, so cached roots are rebuilt.
SETUP_VERSION = "1"

SOURCE = Path(__file__).resolve().parent.parent.parent
BOOT_TIMEOUT = 90.0
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def cache_dir() -> Path:
    return Path(os.environ.get("RKTD_TEST_CACHE", "/var/cache/rktd-tests"))


def root_key() -> str:
    spec = json.dumps(
        {
            "suite": SUITE,
            "mirror": MIRROR,
            "variant": VARIANT,
            "packages": sorted(PACKAGES),
            "masked": sorted(MASKED_UNITS),
            "setup": SETUP_VERSION,
        },
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _log(msg: str) -> None:
    print(f"machine: {msg}", file=sys.stderr, flush=True)


def _setup_root(root: Path) -> None:
    """Make a debootstrapped tree boot quietly under nspawn."""
    (root / "etc/hostname").write_text("rktd-test\n")
    # Empty: systemd takes the machine ID from nspawn's --uuid, which stays the same across reboots.
    (root / "etc/machine-id").write_text("")
    for unit in MASKED_UNITS:
        link = root / "etc/systemd/system" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    # Keep the journal on disk so a reboot keeps the previous boot's lines.
    (root / "var/log/journal").mkdir(parents=True, exist_ok=True)
    # A root of busybox for nested-nspawn checks, without reaching for any image.
    bb = root / "srv/busybox-root"
    for d in ("bin", "dev", "proc", "sys", "tmp", "etc", "usr/lib", "run", "var/tmp"):
        (bb / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / "bin/busybox", bb / "bin/busybox")
    for applet in ("sh", "echo", "sleep", "cat", "ls", "id", "true", "hostname"):
        (bb / "bin" / applet).symlink_to("busybox")
    (bb / "usr/lib/os-release").write_text('ID=busybox\nNAME="busybox"\n')
    (bb / "etc/os-release").symlink_to("../usr/lib/os-release")


def _debootstrap(tree: Path, packages: Iterable[str]) -> None:
    """A Debian root at `tree` with `packages`, without the package cache (dead weight in every copy)."""
    argv = [
        "debootstrap",
        f"--variant={VARIANT}",
        f"--include={','.join(sorted(packages))}",
        "--components=main",
        SUITE,
        str(tree),
        MIRROR,
    ]
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if proc.returncode != 0:
        log = tree / "debootstrap/debootstrap.log"
        detail = log.read_text()[-3000:] if log.exists() else proc.stderr[-3000:]
        raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{detail}")
    for deb in (tree / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()


def build_root(*, force: bool = False) -> Path:
    """Return the cached root for the current package list, building it with debootstrap if needed."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = root_key()
    root = cache / f"root-{key}"
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if root.is_dir() and (cache / f"root-{key}.done").exists() and not force:
            return root
        _log(f"building {root} with debootstrap from {MIRROR} (a few minutes, once)")
        tmp = cache / f"root-{key}.tmp"
        for stale in (tmp, root):
            if stale.exists():
                shutil.rmtree(stale)
        _debootstrap(tmp, PACKAGES)
        _setup_root(tmp)
        tmp.rename(root)
        (cache / f"root-{key}.done").write_text(" ".join(sorted(PACKAGES)) + "\n")
        # Roots for older package lists are not used any more (unless a running machine still has one).
        mountinfo = Path("/proc/self/mountinfo").read_text()
        for old in cache.glob("root-*"):
            if old.name.startswith(f"root-{key}") or f"lowerdir={old}," in mountinfo:
                continue
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
        return root


def build_deb(out: Path) -> Path:
    """Build the .deb with packaging/build-deb (dpkg-buildpackage in a copy of the tree) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [str(SOURCE / "packaging/build-deb"), str(out)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"packaging/build-deb failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    debs = sorted(out.glob("rktd-units_*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"expected one .deb in {out}: {sorted(p.name for p in out.iterdir())}")
    return debs[0]


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path)
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                out.append(target)
    return out


def sweep_stale(min_age: float = 600.0) -> list[Path]:
    """Unmount and remove the trees of machines whose test run died (no nspawn left running on them).

    Only trees older than `min_age` seconds are looked at, so a machine another run is just booting
    is never touched.
    """
    base = Path(os.environ.get("RKTD_TEST_TMP") or tempfile.gettempdir())
    swept = []
    cmdlines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmdlines.append(Path(f"/proc/{entry}/cmdline").read_bytes())
    for tree in base.glob("rktd-test-*.*"):
        if not tree.is_dir() or time.time() - tree.stat().st_mtime < min_age:
            continue
        if any(f"--directory={tree}/root".encode() in c for c in cmdlines):
            continue
        for target in sorted(_mounts_under(tree), key=len, reverse=True):
            subprocess.run(["umount", "--lazy", target], check=False)
        if not _mounts_under(tree):
            shutil.rmtree(tree, ignore_errors=True)
            swept.append(tree)
    return swept


class _Guest:
    """What Machine and VirtualMachine share on top of their own `run()` and `console` file."""

    console: Path
    run: Callable[..., subprocess.CompletedProcess[str]]  # each runs commands its own way

    def sh(self, script: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return self.run(["sh", "-ec", script], **kwargs)

    def journal(self, unit: str | None = None, *args: str) -> str:
        """Journal lines of this boot (of one unit when given), as `short` output with identifiers."""
        argv = ["journalctl", "--no-pager", "-b", "-o", "short", *args]
        if unit:
            argv += ["-u", unit]
        return self.run(argv, check=False).stdout

    def console_tail(self, lines: int = 40) -> str:
        try:
            text = self.console.read_text(errors="replace")
        except OSError:
            return ""
        return "--- console\n" + "\n".join(text.splitlines()[-lines:])


def _die_with_parent(sig: int) -> Callable[[], None]:
    """A preexec_fn: the child gets `sig` when the test process dies."""

    def preexec() -> None:
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, sig, 0, 0, 0)

    return preexec


class Machine(_Guest):
    """One booted machine: an overlay over the cached root, systemd-nspawn -b, commands via nsenter."""

    def __init__(self, base: Path, *, name: str | None = None) -> None:
        self.base = base
        self.name = name or f"rktd-test-{uuid.uuid4().hex[:8]}"
        self.uuid = uuid.uuid4().hex
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir=os.environ.get("RKTD_TEST_TMP")))
        self.root = self.tmp / "root"
        self.state = self.tmp / "var-lib-rktd"
        self.console = self.tmp / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        self.boots = 0

    # -- lifecycle ---------------------------------------------------------------------------------

    def _mount(self) -> None:
        for d in ("upper", "work", "root", "var-lib-rktd"):
            (self.tmp / d).mkdir(exist_ok=True)
        opts = f"lowerdir={self.base},upperdir={self.tmp / 'upper'},workdir={self.tmp / 'work'}"
        subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(self.root)], check=True)

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        if not _mounts_under(self.root):
            self._mount()
        argv = [
            "systemd-nspawn",
            "--quiet",
            "--keep-unit",
            "--register=no",
            "--boot",
            f"--directory={self.root}",
            f"--machine={self.name}",
            f"--uuid={self.uuid}",
            "--capability=all",
            # Loopback only: nothing in the machine reaches (or changes) the host's network.
            "--private-network",
            "--console=read-only",
            # Pod state on a plain filesystem, not on the overlay (stage1 may use overlayfs itself).
            f"--bind={self.state}:/var/lib/rktd",
            # nspawn hides /dev/kmsg; generators log there, and the machine's journald reads it back
            # (`journalctl -k`). It is the host's kernel log: lines written inside show up in dmesg.
            "--bind=/dev/kmsg",
        ]
        console = open(self.console, "ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            env={"PATH": PATH, "SYSTEMD_LOG_LEVEL": "info"},
            start_new_session=True,
            preexec_fn=_die_with_parent(signal.SIGTERM),  # a clean poweroff
        )
        console.close()
        self.boots += 1
        deadline = time.monotonic() + timeout
        self.leader = self._find_leader(deadline)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: not booted after {timeout}s\n{self.console_tail()}")
            proc = self.run(
                ["systemctl", "is-system-running", "--wait"], check=False, timeout=max(left, 1.0)
            )
            state = proc.stdout.strip()
            if state in ("running", "degraded"):
                return
            # "offline": the manager is not answering yet.
            if state not in ("initializing", "starting", "offline", ""):
                raise RuntimeError(f"{self.name}: system is {state!r}\n{self.console_tail()}")
            time.sleep(0.2)

    def _find_leader(self, deadline: float) -> int:
        """The container's PID 1: a descendant of the nspawn process that is PID 1 in its namespace."""
        assert self.proc is not None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name}: systemd-nspawn exited {self.proc.returncode}\n{self.console_tail()}"
                )
            for pid in _descendants(self.proc.pid):
                nspid = _status_field(pid, "NSpid")
                if nspid and len(nspid.split()) > 1 and nspid.split()[-1] == "1":
                    # Before systemd is exec'd, PID 1 is still nspawn's inner child.
                    if _status_field(pid, "Name") == "systemd":
                        return pid
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: no container PID 1 found\n{self.console_tail()}")

    def shutdown(self, timeout: float = 60.0) -> None:
        """Power the machine off (SIGTERM to nspawn = clean shutdown), SIGKILL if it takes too long."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log(f"{self.name}: no clean shutdown in {timeout}s, killing")
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self.leader = 0

    def reboot(self, timeout: float = BOOT_TIMEOUT) -> None:
        """Shut down cleanly and boot the same root again (its overlay keeps every change)."""
        self.shutdown()
        self.boot(timeout)

    def destroy(self) -> None:
        """Shut down, unmount, remove the throwaway tree; raise if anything stays mounted."""
        try:
            self.shutdown()
        finally:
            for target in sorted(_mounts_under(self.tmp), key=len, reverse=True):
                subprocess.run(["umount", "--lazy", target], check=False)
            left = _mounts_under(self.tmp)
            if not left:
                shutil.rmtree(self.tmp, ignore_errors=True)
        if left:
            raise RuntimeError(f"{self.name}: still mounted after teardown: {left}")

    # -- using it ----------------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv inside the machine (every namespace of its PID 1, its root), with a clean environment."""
        if not self.leader:
            raise RuntimeError(f"{self.name} is not running")
        full = [
            "nsenter",
            f"--target={self.leader}",
            "--mount",
            "--uts",
            "--ipc",
            "--net",
            "--pid",
            "--cgroup",
            "--root",
            "--wd",
            "env",
            "-i",
            f"PATH={PATH}",
            "LANG=C.UTF-8",
            "SYSTEMD_PAGER=",
            "SYSTEMD_COLORS=0",
            *argv,
        ]
        proc = subprocess.run(
            full,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in {self.name}: {shlex.join(argv)} exited {proc.returncode}\n"
                f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
            )
        return proc

    def path(self, inside: str) -> Path:
        """The host path of a path inside the machine (through the overlay, not following its symlinks)."""
        return self.root / inside.lstrip("/")

    def copy_in(self, src: str | os.PathLike[str], dst: str) -> None:
        """Copy a host file or tree to `dst` inside the machine."""
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(src).is_dir():
            shutil.copytree(src, target, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(src, target)

    def write(self, dst: str, content: str, mode: int = 0o644) -> None:
        target = self.path(dst)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
        target.chmod(mode)


def _status_field(pid: int, name: str) -> str | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        ppid = _status_field(int(entry), "PPid")
        if ppid is not None:
            children.setdefault(int(ppid), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for c in children.get(p, ()):
            out.append(c)
            todo.append(c)
    return sorted(out)


@contextlib.contextmanager
def booted(timeout: float = BOOT_TIMEOUT) -> Iterator[Machine]:
    for tree in sweep_stale():
        _log(f"removed the remains of a dead run: {tree}")
    machine = Machine(build_root())
    try:
        machine.boot(timeout)
        yield machine
    finally:
        machine.destroy()


# -- a virtual machine: what a container cannot show -------------------------------------------------
#
# A container shares the host's kernel, hence its cgroup layout: on a hybrid (v1 + v2) host no
# container gets a unified hierarchy with the memory and cpu controllers. `VirtualMachine` boots the
# same Debian root, plus Debian's kernel, under qemu (KVM, or TCG where KVM cannot run a stock kernel:
# see `accelerator`), where systemd mounts a pure cgroup v2 hierarchy. The host drives it through an
# agent on a virtio-serial port (`AGENT_SOURCE`): one JSON line per request, one per answer, so tests
# use it as they use `Machine` (`run`, `sh`, `write`, `copy_in`, `journal`). No network: the VM has
# loopback only. Its root is a snapshot of the cached image (qemu discards the writes).

# apparmor: its userspace (apparmor_parser), so tests can load profiles of their own into the VM's
# kernel (Debian's kernel enables the AppArmor LSM by default; the container shares the host's kernel).
VM_PACKAGES = ("apparmor", "initramfs-tools", "kmod", "linux-image-amd64", "udev")
VM_SETUP_VERSION = "1"
VM_MEMORY_MB = 2048
AGENT_PORT = "org.rktd.agent"
# The guest's side of the agent, stdlib only. qemu hands it to the guest as a firmware config file
# (fw_cfg), so the cached image holds only the unit that runs it, and changing it rebuilds nothing.
AGENT_FW_CFG = "opt/org.rktd.agent"
AGENT_SOURCE = """\
import base64, glob, json, os, subprocess, sys, time

NAME = sys.argv[1]
ENV = {"PATH": sys.argv[2], "LANG": "C.UTF-8", "SYSTEMD_PAGER": "", "SYSTEMD_COLORS": "0"}


def port():
    for name in glob.glob("/sys/class/virtio-ports/*/name"):
        with open(name) as f:
            if f.read().strip() == NAME:
                return "/dev/" + name.split("/")[-2]
    raise SystemExit(f"no virtio port {NAME}")


def answer(req):
    if "write" in req:
        path = req["write"]
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(base64.b64decode(req["data"]))
        os.chmod(path, req["mode"])
        return {"rc": 0, "stdout": "", "stderr": ""}
    try:
        proc = subprocess.run(
            req["argv"], input=req.get("input"), capture_output=True, text=True, env=ENV,
            stdin=None if req.get("input") is not None else subprocess.DEVNULL,
            timeout=req["timeout"], errors="replace",
        )
    except subprocess.TimeoutExpired as e:
        return {"rc": -1, "stdout": "", "stderr": f"agent: timed out after {e.timeout}s"}
    except OSError as e:
        return {"rc": 127, "stdout": "", "stderr": f"agent: {e}"}
    return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def main():
    fd = os.open(port(), os.O_RDWR | os.O_CLOEXEC)
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # the host is not connected (yet, or any more)
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\\n" in buf:
            line, buf = buf.split(b"\\n", 1)
            req = json.loads(line)
            out = json.dumps({"id": req["id"], **answer(req)}).encode() + b"\\n"
            while out:
                out = out[os.write(fd, out):]


main()
"""
AGENT_UNIT = f"""\
[Unit]
Description=rktd test agent (the host's commands over virtio-serial)

[Service]
ExecStartPre=/sbin/modprobe -a qemu_fw_cfg virtio_console
ExecStart=/usr/bin/python3 -I /sys/firmware/qemu_fw_cfg/by_name/{AGENT_FW_CFG}/raw {AGENT_PORT} {PATH}
Restart=always
RestartSec=1

[Install]
WantedBy=multi-user.target
"""


def vm_key() -> str:
    spec = json.dumps(
        {
            "root": root_key(),
            "packages": sorted(VM_PACKAGES),
            "setup": VM_SETUP_VERSION,
            "unit": AGENT_UNIT,
        },
        sort_keys=True,
    )
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


def _setup_vm_root(root: Path) -> None:
    """What a VM needs beyond the container's root: the agent's unit, an fstab, no serial login."""
    _setup_root(root)
    (root / "etc/systemd/system/rktd-test-agent.service").write_text(AGENT_UNIT)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "rktd-test-agent.service").symlink_to("/etc/systemd/system/rktd-test-agent.service")
    (root / "etc/systemd/system/serial-getty@.service").symlink_to("/dev/null")
    (root / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")


def build_vm_image(*, force: bool = False) -> tuple[Path, Path, Path]:
    """(ext4 root image, kernel, initrd) for `VirtualMachine`, built once with debootstrap and
    mkfs.ext4 -d (no mount needed), cached next to the container's roots."""
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    key = vm_key()
    base = cache / f"vm-{key}"
    parts = (base / "root.ext4", base / "vmlinuz", base / "initrd.img")
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (cache / f"vm-{key}.done").exists() and not force:
            return parts
        _log(f"building {base} with debootstrap from {MIRROR} (a few minutes, once)")
        tmp = cache / f"vm-{key}.tmp"
        for stale in (tmp, base):
            if stale.exists():
                shutil.rmtree(stale)
        tree = tmp / "tree"
        tmp.mkdir()
        _debootstrap(tree, {*PACKAGES, *VM_PACKAGES})
        _setup_vm_root(tree)
        (kernel,) = sorted((tree / "boot").glob("vmlinuz-*"))
        (initrd,) = sorted((tree / "boot").glob("initrd.img-*"))
        shutil.copy2(kernel, tmp / "vmlinuz")
        shutil.copy2(initrd, tmp / "initrd.img")
        used = int(
            subprocess.run(["du", "-sb", str(tree)], capture_output=True, text=True).stdout.split()[0]
        )
        size_mb = used // 2**20 + 2048  # room for the package, images and pods
        subprocess.run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-L",
                "rktd-vm",
                "-d",
                str(tree),
                str(tmp / "root.ext4"),
                f"{size_mb}M",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
        )
        shutil.rmtree(tree)
        tmp.rename(base)
        (cache / f"vm-{key}.done").write_text(" ".join(sorted({*PACKAGES, *VM_PACKAGES})) + "\n")
        for old in cache.glob("vm-*"):
            if not old.name.startswith(f"vm-{key}"):
                if old.is_dir():
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    old.unlink(missing_ok=True)
        return parts


class VirtualMachine(_Guest):
    """One Debian VM under qemu/KVM, its root a throwaway snapshot of the cached image, driven by the
    agent. Same command interface as `Machine`."""

    def __init__(self, image: Path, kernel: Path, initrd: Path, *, name: str | None = None) -> None:
        self.image, self.kernel, self.initrd = image, kernel, initrd
        self.name = name or f"rktd-vm-{uuid.uuid4().hex[:8]}"
        self.uuid = str(uuid.uuid4())
        self.tmp = Path(tempfile.mkdtemp(prefix=f"{self.name}.", dir=os.environ.get("RKTD_TEST_TMP")))
        self.console = self.tmp / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.buf = b""
        self.next_id = 0

    def argv(self) -> list[str]:
        return [
            "qemu-system-x86_64",
            "-accel", accelerator(),
            "-machine", "q35",
            "-smp", "2",
            "-m", str(VM_MEMORY_MB),
            "-uuid", self.uuid,
            "-display", "none",
            "-nic", "none",  # no network: pods use their own namespaces inside the VM
            "-no-reboot",
            "-serial", f"file:{self.console}",
            "-kernel", str(self.kernel),
            "-initrd", str(self.initrd),
            # systemd 252 mounts the unified hierarchy by default; said here because it is the point.
            "-append", "root=/dev/vda rw console=ttyS0 panic=-1 systemd.unified_cgroup_hierarchy=1",
            # snapshot=on: writes go to a temporary file qemu deletes; the cached image never changes.
            "-drive", f"file={self.image},format=raw,if=virtio,snapshot=on",
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=agent,path={self.tmp / 'agent.sock'},server=on,wait=off",
            "-device", f"virtserialport,chardev=agent,name={AGENT_PORT}",
            "-fw_cfg", f"name={AGENT_FW_CFG},file={self.tmp / 'agent.py'}",
        ]  # fmt: skip

    def boot(self, timeout: float = BOOT_TIMEOUT) -> None:
        (self.tmp / "agent.py").write_text(AGENT_SOURCE)
        log = open(self.tmp / "qemu.log", "wb")
        self.proc = subprocess.Popen(
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log,
            env={"PATH": PATH, "TMPDIR": str(self.tmp)},
            start_new_session=True,
            preexec_fn=_die_with_parent(signal.SIGKILL),  # a VM holds nothing of the host's
        )
        log.close()
        deadline = time.monotonic() + timeout
        path = self.tmp / "agent.sock"
        while not path.exists():
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: qemu made no agent socket\n{self.console_tail()}")
            time.sleep(0.05)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        # The first answer says the agent (a unit of multi-user.target) is up; then systemd settles.
        self.run(["true"], timeout=max(deadline - time.monotonic(), 1.0))
        left = max(deadline - time.monotonic(), 1.0)
        state = self.run(["systemctl", "is-system-running", "--wait"], check=False, timeout=left)
        if state.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"{self.name}: system is {state.stdout.strip()!r}\n{self.console_tail()}")

    def _check_alive(self) -> None:
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.tmp / "qemu.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"{self.name}: qemu exited {self.proc.returncode}\n{log}\n{self.console_tail()}"
            )

    def _request(self, req: dict[str, object], timeout: float) -> dict[str, object]:
        if self.sock is None:
            raise RuntimeError(f"{self.name} is not running")
        self.next_id += 1
        req_id = self.next_id
        self.sock.sendall(json.dumps({"id": req_id, **req}).encode() + b"\n")
        deadline = time.monotonic() + timeout + 30.0  # the agent's own timeout comes first
        while True:
            while b"\n" in self.buf:
                line, self.buf = self.buf.split(b"\n", 1)
                answer: dict[str, object] = json.loads(line)
                if answer.get("id") == req_id:
                    return answer
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.name}: no answer to {req}\n{self.console_tail()}")
            self._check_alive()
            self.sock.settimeout(min(left, 1.0))
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            if not chunk:
                raise RuntimeError(f"{self.name}: the agent's socket closed\n{self.console_tail()}")
            self.buf += chunk

    def run(
        self,
        argv: Sequence[str],
        *,
        check: bool = True,
        timeout: float = 60.0,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run argv in the VM (as root, from the agent's service), with a clean environment."""
        answer = self._request({"argv": list(argv), "input": input, "timeout": timeout}, timeout)
        rc, out, err = int(str(answer["rc"])), str(answer["stdout"]), str(answer["stderr"])
        if check and rc != 0:
            raise AssertionError(
                f"in {self.name}: {shlex.join(argv)} exited {rc}\n--- stdout\n{out}\n--- stderr\n{err}"
            )
        return subprocess.CompletedProcess(list(argv), rc, out, err)

    def write_bytes(self, dst: str, data: bytes, mode: int = 0o644) -> None:
        answer = self._request({"write": dst, "data": base64.b64encode(data).decode(), "mode": mode}, 60.0)
        assert answer["rc"] == 0, answer

    def write(self, dst: str, content: str, mode: int = 0o644) -> None:
        self.write_bytes(dst, content.encode(), mode)

    def copy_in(self, src: str | os.PathLike[str], dst: str) -> None:
        self.write_bytes(dst, Path(src).read_bytes(), Path(src).stat().st_mode & 0o7777)

    def shutdown(self, timeout: float = 60.0) -> None:
        """Power off through systemd; SIGKILL qemu if it takes too long."""
        if self.proc is None:
            return
        if self.proc.poll() is None and self.sock is not None:
            with contextlib.suppress(OSError):  # no answer comes: the agent is stopped by the poweroff
                self.sock.sendall(
                    json.dumps({"id": 0, "argv": ["systemctl", "poweroff"], "timeout": 5}).encode() + b"\n"
                )
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                _log(f"{self.name}: no clean poweroff in {timeout}s, killing")
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        self.proc = None

    def destroy(self) -> None:
        try:
            self.shutdown()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


def sweep_stale_vms(min_age: float = 600.0) -> list[Path]:
    """Remove the directories of VMs whose test run died (qemu dies with it: nothing is mounted)."""
    base = Path(os.environ.get("RKTD_TEST_TMP") or tempfile.gettempdir())
    cmdlines = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                cmdlines.append(Path(f"/proc/{entry}/cmdline").read_bytes())
    swept = []
    for tree in base.glob("rktd-vm-*.*"):
        if not tree.is_dir() or time.time() - tree.stat().st_mtime < min_age:
            continue
        if any(f"{tree}/".encode() in c for c in cmdlines):
            continue
        shutil.rmtree(tree, ignore_errors=True)
        swept.append(tree)
    return swept


def vm_unavailable() -> str | None:
    """Why a VM cannot be booted here, or None."""
    if shutil.which("qemu-system-x86_64") is None:
        return "qemu-system-x86_64 is not installed (scripts/install-deps installs qemu-system-x86)"
    return None


def accelerator() -> str:
    """KVM on hardware virtualization (kvm_intel, kvm_amd); else qemu's own emulator, TCG: slower, but
    the same kernel. (KVM can also be PVM, paravirtual nesting without hardware support: it runs only
    kernels built as its guests, and a stock kernel never gets past its decompressor there.)"""
    hardware = any(os.path.isdir(f"/sys/module/{m}") for m in ("kvm_intel", "kvm_amd"))
    if hardware and os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "kvm"
    return "tcg,thread=multi"


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        print(build_root(force="--force" in argv))
        return 0
    if argv[:1] == ["shell"]:
        with booted() as m:
            print(f"booted {m.name}: leader {m.leader}; exit the shell to tear it down", file=sys.stderr)
            return subprocess.call(
                ["nsenter", f"--target={m.leader}", "-m", "-u", "-i", "-n", "-p", "-C", "-r", "-w", "bash"]
            )
    print("usage: machine.py build [--force] | shell", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
