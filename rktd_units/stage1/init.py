"""What stage1's host side and the apps' own processes share: mounts, capabilities, the exec isolators
(seccomp through libseccomp via ctypes, AppArmor/SELinux labels, OOM score) and `become()`, which
turns a forked process into an app (fly's app, `rktd enter`'s command).

The pod's init inside systemd-nspawn (PID 1 of the pod) is not Python: it is `rktd-init`
(stage1-init/), which applies the same sets and isolators to each app of an nspawn pod;
DEFAULT_APP_CAPS here and its default set (stage1-init/confine.c) must agree
(tests/test_stage1_init_c.py checks).
Pure standard library, no rktd_units imports, and nothing imported at module level that the run
path does not need.
"""

from __future__ import annotations

import errno
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# -- syscalls (shared with the host side of stage1) ---------------------------------------------------

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000
PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
CAP_VERSION_3 = 0x20080522

CAPABILITIES = (
    "CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER CAP_FSETID CAP_KILL CAP_SETGID "
    "CAP_SETUID CAP_SETPCAP CAP_LINUX_IMMUTABLE CAP_NET_BIND_SERVICE CAP_NET_BROADCAST CAP_NET_ADMIN "
    "CAP_NET_RAW CAP_IPC_LOCK CAP_IPC_OWNER CAP_SYS_MODULE CAP_SYS_RAWIO CAP_SYS_CHROOT CAP_SYS_PTRACE "
    "CAP_SYS_PACCT CAP_SYS_ADMIN CAP_SYS_BOOT CAP_SYS_NICE CAP_SYS_RESOURCE CAP_SYS_TIME "
    "CAP_SYS_TTY_CONFIG CAP_MKNOD CAP_LEASE CAP_AUDIT_WRITE CAP_AUDIT_CONTROL CAP_SETFCAP "
    "CAP_MAC_OVERRIDE CAP_MAC_ADMIN CAP_SYSLOG CAP_WAKE_ALARM CAP_BLOCK_SUSPEND CAP_AUDIT_READ "
    "CAP_PERFMON CAP_BPF CAP_CHECKPOINT_RESTORE"
).split()
# What an app of an nspawn pod keeps unless its pod manifest or the command line says otherwise: the
# container runtimes' default set (rkt's, Docker's). No CAP_SYS_ADMIN (remounting its read-only
# rootfs, the store's tree, read-write), CAP_SYS_PTRACE (the init's /proc/1/root), CAP_SYS_MODULE...
DEFAULT_APP_CAPS = (
    "CAP_AUDIT_WRITE CAP_CHOWN CAP_DAC_OVERRIDE CAP_FOWNER CAP_FSETID CAP_KILL CAP_MKNOD "
    "CAP_NET_BIND_SERVICE CAP_NET_RAW CAP_SETFCAP CAP_SETGID CAP_SETPCAP CAP_SETUID CAP_SYS_CHROOT"
).split()

_libc: Any = None


def libc() -> Any:
    """libc through ctypes, imported on first use (stage1's host side and the app children need it)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    import ctypes

    ret = libc().mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    _check(ret, f"mount {source} on {target}")


def bind(source: str, target: str, *, read_only: bool = False, recursive: bool = True) -> None:
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    if read_only:
        mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | (MS_REC if recursive else 0))


def unshare_mounts() -> None:
    """A private mount namespace: what we mount dies with the last process in it."""
    _check(libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE)


def prctl(option: int, arg: int) -> None:
    import ctypes

    _check(libc().prctl(option, ctypes.c_ulong(arg), 0, 0, 0), f"prctl({option})")


def die_with(parent: int) -> None:
    """SIGKILL this (forked) process when `parent` dies; exit at once if it already has. The kernel
    keeps the setting over exec but clears it when the uid or gid changes: set it again after."""
    prctl(PR_SET_PDEATHSIG, 9)  # SIGKILL
    if os.getppid() != parent:
        os._exit(128 + 9)


def app_caps(retain: list[str] | None, remove: list[str], default: list[str] | None) -> set[int]:
    """The capability numbers an app keeps: `retain` (else `default`, else all), less `remove`."""
    names = retain if retain is not None else default if default is not None else CAPABILITIES
    return {CAPABILITIES.index(n) for n in names if n in CAPABILITIES and n not in remove}


def _capget() -> list[int]:
    """[effective, permitted, inheritable] of this process, as 64-bit masks."""
    import ctypes

    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    _check(libc().capget(header, data), "capget")
    return [data[i] | (data[i + 3] << 32) for i in range(3)]


def _capset(effective: int, permitted: int, inheritable: int) -> None:
    import ctypes

    header = (ctypes.c_uint32 * 2)(CAP_VERSION_3, 0)
    m32 = 0xFFFFFFFF
    sets = (effective, permitted, inheritable)
    data = (ctypes.c_uint32 * 6)(*(v & m32 for v in sets), *(v >> 32 for v in sets))
    _check(libc().capset(header, data), "capset")


def restrict_caps(keep: set[int]) -> None:
    """Shrink the bounding set to `keep` (what survives exec as root) and clear the ambient set."""
    for cap in range(len(CAPABILITIES)):
        if cap in keep:
            continue
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as e:
            if e.errno != errno.EINVAL:  # a capability this kernel does not know
                raise
    import ctypes

    ret = libc().prctl(PR_CAP_AMBIENT, ctypes.c_ulong(PR_CAP_AMBIENT_CLEAR_ALL), 0, 0, 0)
    if ret != 0 and ctypes.get_errno() != errno.EINVAL:  # EINVAL: a kernel without ambient caps
        _check(ret, "prctl(PR_CAP_AMBIENT_CLEAR_ALL)")


def drop_caps(keep: set[int]) -> None:
    """After setuid: effective and permitted down to `keep` (a uid other than 0 has none left), and
    the inheritable set emptied: with it, a non-root app could gain the capabilities a file grants as
    inheritable (CVE-2022-24769; runc and moby empty it too)."""
    eff, perm, _ = _capget()
    mask = sum(1 << c for c in keep)
    _capset(eff & mask, perm & mask, 0)


# -- isolators applied just before exec: LSM labels, OOM score, seccomp --------------------------------

SCMP_ACT_KILL_PROCESS = 0x80000000
SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_ACT_ERRNO = 0x00050000
SECCOMP_LIBRARY = "libseccomp.so.2"  # Debian's libseccomp2 (systemd depends on it)


def seccomp_library() -> Any:
    import ctypes

    lib = ctypes.CDLL(SECCOMP_LIBRARY, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    return lib


def seccomp_filter(seccomp: dict[str, Any]) -> tuple[Any, Any]:
    """Build (not load) the app's filter: `mode` "remove" allows all but `set` (which fail with
    `errno`), "retain" allows only `set` (the rest fail with `errno`, or kill the process without
    one). Built while the host's libraries are still reachable (before the app's root), loaded by
    `seccomp_load` just before exec. Returns (library, filter context)."""
    lib = seccomp_library()
    number = seccomp["errno"]
    fail_action = SCMP_ACT_ERRNO | (number & 0xFFFF) if number is not None else SCMP_ACT_KILL_PROCESS
    retain = seccomp["mode"] == "retain"
    ctx = lib.seccomp_init(fail_action if retain else SCMP_ACT_ALLOW)
    if not ctx:
        raise OSError(errno.EINVAL, "seccomp_init failed")
    names = list(seccomp["set"]) + (["execve"] if retain else [])  # the exec itself must pass
    for name in names:
        nr = lib.seccomp_syscall_resolve_name(name.encode())
        if nr < 0:
            raise OSError(errno.EINVAL, f"seccomp: unknown system call {name!r}")
        ret = lib.seccomp_rule_add(ctx, SCMP_ACT_ALLOW if retain else fail_action, nr, 0)
        if ret < 0 and ret != -errno.EEXIST:
            raise OSError(-ret, f"seccomp rule for {name}: {os.strerror(-ret)}")
    return lib, ctx


def seccomp_load(lib: Any, ctx: Any) -> None:
    ret = lib.seccomp_load(ctx)
    if ret < 0:
        raise OSError(-ret, f"seccomp_load: {os.strerror(-ret)}")


def set_exec_labels(spec: dict[str, Any]) -> None:
    """The app's AppArmor profile or SELinux context, taking effect at its exec (stage0 checked
    that the LSM is enabled), and its OOM score adjustment."""
    profile = spec.get("apparmor_profile")
    if profile:
        path = "/proc/self/attr/apparmor/exec"
        try:
            _write(path if os.path.exists(path) else "/proc/self/attr/exec", f"exec {profile}")
        except OSError as e:  # the app never runs unconfined: the caller fails before the exec
            why = " (no such profile is loaded: see aa-status)" if e.errno == errno.ENOENT else ""
            raise OSError(e.errno, f"os/linux/apparmor-profile {profile}: {e.strerror}{why}") from None
    context = spec.get("selinux_context")
    if context:
        _write("/proc/self/attr/exec", context)
    oom = spec.get("oom_score_adj")
    if oom is not None:
        try:
            _write("/proc/self/oom_score_adj", str(oom))
        except OSError as e:
            why = " (lowering it needs CAP_SYS_RESOURCE)" if e.errno in (errno.EACCES, errno.EPERM) else ""
            raise OSError(e.errno, f"os/linux/oom-score-adj {oom}: {e.strerror}{why}") from None


def in_root(root: str, path: str) -> str:
    """`path` inside `root` with symlinks resolved as if `root` were `/`: an image's symlink never
    points a mount target (its /proc, /dev, a volume's path) outside the image."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > 40:
                raise OSError(errno.ELOOP, "too many levels of symbolic links")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = []
            parts = [p for p in link.split("/") if p and p != "."] + parts
            continue
        resolved.append(part)
    return os.path.join(root, *resolved)


# pivot_root(2) has no libc wrapper: its system call number per architecture (os.uname().machine)
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217, "i686": 217}


def enter_root(rootfs: str) -> None:
    """Make `rootfs` this process's root in a mount namespace of its own (pivot_root, the old root
    detached), so that no chroot escape leads back to stage1's root and the other apps; a plain
    chroot where pivot_root is not available."""
    number = SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        os.chroot(rootfs)
        return
    _check(libc().unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    mount("none", "/", None, MS_REC | MS_PRIVATE)
    os.chdir(rootfs)
    _check(libc().syscall(number, b".", b"."), f"pivot_root {rootfs}")
    _check(libc().umount2(b".", MNT_DETACH), "umount the old root")
    os.chdir("/")


def ensure_mountpoint(path: str, *, is_dir: bool) -> None:
    if os.path.lexists(path):
        return
    if is_dir:
        os.makedirs(path, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a"):
            pass


def exit_status(wait_status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def become(
    spec: dict[str, Any],
    rootfs: str,
    argv: list[str],
    env: dict[str, str],
    *,
    fds: list[int],
    cgroup_dirs: dict[str, str],
    default_caps: list[str] | None = DEFAULT_APP_CAPS,
    pivot: bool = False,
    parent: int = 0,
) -> None:
    """Turn this (forked) process into the app: cgroups, fds, chroot, caps, user; then exec.
    `default_caps`: the capabilities kept when the app names no retain set (None: all); `pivot`:
    a mount namespace of the app's own with its rootfs as root (else a chroot); `parent`: the pid
    of a parent the app must die with (SIGKILL), set again after the uid and gid change, which
    clears it."""
    for controller, path in spec.get("cgroups", {}).items():
        with open(f"{cgroup_dirs[controller]}/{path}/cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    if fds:
        for i, fd in enumerate(fds):
            if fd != 3 + i:
                os.dup2(fd, 3 + i)
            os.set_inheritable(3 + i, True)
        env["LISTEN_FDS"] = str(len(fds))
        env["LISTEN_PID"] = str(os.getpid())
        names = spec.get("listen_fd_names")
        if names:
            env["LISTEN_FDNAMES"] = ":".join(names)
    set_exec_labels(spec)
    seccomp = spec.get("seccomp")
    filt = seccomp_filter(seccomp) if seccomp else None
    if pivot:
        enter_root(rootfs)
    else:
        os.chroot(rootfs)
    os.chdir(spec.get("workdir") or "/")
    keep = app_caps(spec.get("caps_retain"), spec.get("caps_remove", []), default_caps)
    restrict_caps(keep)
    if spec.get("no_new_privs") or filt is not None:  # a filter needs it without CAP_SYS_ADMIN
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    os.setgroups(spec.get("gids", []))
    os.setgid(spec["gid"])
    os.setuid(spec["uid"])
    if parent:
        die_with(parent)
    drop_caps(keep)
    if filt is not None:
        seccomp_load(*filt)
    os.execvpe(argv[0], argv, env)


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def sd_notify(message: bytes) -> None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return
    if path.startswith("@"):
        path = "\0" + path[1:]
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
    try:
        sock.sendto(message, path)
    except OSError:
        pass
    finally:
        sock.close()
