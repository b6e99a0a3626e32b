"""The pod's init inside systemd-nspawn (PID 1 of the pod), and the syscalls stage1 shares.

Pure standard library, no rktd_units imports: stage0 copies this file (compiled once) into the
pod directory and nspawn runs it as `python3 -I -S /rktd/init.pyc`. It reads `/rktd/init.cfg`
(stage1.json as marshal data), then for each app: binds /proc, /dev and /sys into the app's rootfs
(`/opt/stage2/<app>/rootfs`, already mounted by stage1), runs pre-start handlers, forks the
app with its rootfs as the root of a mount namespace of its own (pivot_root), its environment,
user, groups, working directory, cgroup, capabilities (bounding, inheritable, permitted and
effective sets; the default set of container runtimes unless the pod says otherwise),
no-new-privileges, OOM score, AppArmor/SELinux exec label and, last before exec, its seccomp
filter (libseccomp through ctypes, loaded only for an app that has one), and relays its
stdout/stderr line by line to journald's native socket (or, without journald, to its own
stdout/stderr as `app[NAME]: line`). It reaps every process, sends READY=1 to $NOTIFY_SOCKET
once the apps are started (or once every app that supports sd_notify said READY=1), and ends
when all apps ended, or as soon as one failed (SIGTERM to the others, the stop timeout, SIGKILL);
its exit status is the failing app's.
"""

from __future__ import annotations

import errno
import os
import select
import struct
import sys
import time

# Imported only for the type checker: every millisecond of this file's start-up is on each pod start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import _socket
    import signal
    from typing import Any
else:
    # The C modules, here and for sockets (`_socket`): `signal` and `socket` wrap their constants in
    # enums, and `import enum` (with functools, collections, …) would be a third of this init's start.
    import _signal as signal

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
    """libc through ctypes, imported on first use (stage1's host side and the app children need it;
    the init only for PR_SET_PDEATHSIG)."""
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
    """Shrink the bounding set to `keep`, clear the ambient set and lower the inheritable set to
    `keep`: what survives exec as root is (inheritable | bounding), so both must shrink."""
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
    eff, perm, inh = _capget()
    mask = sum(1 << c for c in keep)
    _capset(eff, perm, inh & mask | perm & mask)


def drop_caps(keep: set[int]) -> None:
    """After setuid: effective and permitted down to `keep` (a uid other than 0 has none left)."""
    eff, perm, inh = _capget()
    mask = sum(1 << c for c in keep)
    _capset(eff & mask, perm & mask, inh & mask)


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
        _write(path if os.path.exists(path) else "/proc/self/attr/exec", f"exec {profile}")
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
) -> None:
    """Turn this (forked) process into the app: cgroups, fds, chroot, caps, user; then exec.
    `default_caps`: the capabilities kept when the app names no retain set (None: all); `pivot`:
    a mount namespace of the app's own with its rootfs as root (else a chroot)."""
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
    drop_caps(keep)
    if filt is not None:
        seccomp_load(*filt)
    os.execvpe(argv[0], argv, env)


# -- journald native protocol ------------------------------------------------------------------------


def journal_datagram(fields: list[tuple[str, bytes]]) -> bytes:
    """KEY=value lines; a value with a newline as KEY\\n<le64 length><value>\\n."""
    out = bytearray()
    for key, value in fields:
        if b"\n" in value:
            out += key.encode() + b"\n" + struct.pack("<Q", len(value)) + value + b"\n"
        else:
            out += key.encode() + b"=" + value + b"\n"
    return bytes(out)


# -- the init ------------------------------------------------------------------------------------------

CONFIG = "/rktd/init.cfg"
V2_ROOT = "/sys/fs/cgroup"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
MAX_LINE = 48 * 1024
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class App:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.rootfs = f"/opt/stage2/{self.name}/rootfs"
        self.pid = 0
        self.status: int | None = None
        self.buffers: dict[int, bytearray] = {}
        self.notify_sock: _socket.socket | None = None
        self.notify_name = ""
        self.ready = not spec.get("notify", False)


class Init:
    def __init__(self, cfg: dict[str, Any]) -> None:
        self.cfg = cfg
        self.apps = [App(a) for a in cfg["apps"]]
        self.streams: dict[int, tuple[App, int]] = {}  # read fd -> (app, 1 stdout | 2 stderr)
        self.journal: _socket.socket | None = None
        self.stopping = False
        self.kill_at: float | None = None
        self.failed: int | None = None
        self.wake_r, self.wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.listen_fds = self._inherited_fds()

    # -- setup -----------------------------------------------------------------------------------------
    def _inherited_fds(self) -> list[int]:
        try:
            n = int(os.environ.get("LISTEN_FDS", "0"))
        except ValueError:
            n = 0
        for var in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            os.environ.pop(var, None)
        return list(range(3, 3 + n))

    def open_journal(self) -> None:
        if os.path.exists(JOURNAL_SOCKET):
            import _socket

            sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
            try:
                sock.connect(JOURNAL_SOCKET)
            except OSError:
                sock.close()
                return
            self.journal = sock

    def prepare_rootfs(self, app: App) -> None:
        for sub, ro in (("proc", False), ("dev", False), ("sys", True)):
            try:
                target = in_root(app.rootfs, sub)
                ensure_mountpoint(target, is_dir=True)
                bind("/" + sub, target, read_only=ro)
            except OSError as e:
                self.log(f"{app.name}: cannot mount /{sub}: {e}")

    # -- output ----------------------------------------------------------------------------------------
    def log(self, message: str) -> None:
        os.write(2, f"rktd-init: {message}\n".encode(errors="replace"))

    def emit(self, app: App, stream: int, line: bytes) -> None:
        if self.journal is not None:
            fields = [
                ("MESSAGE", line),
                ("PRIORITY", b"6" if stream == 1 else b"3"),
                ("SYSLOG_IDENTIFIER", app.name.encode()),
                ("RKTD_POD", (self.cfg.get("name") or "").encode()),
                ("RKTD_APP", app.name.encode()),
                ("RKTD_UUID", self.cfg["uuid"].encode()),
            ]
            try:
                self.journal.send(journal_datagram(fields))
                return
            except OSError:
                pass
        _write_all(stream, b"app[" + app.name.encode() + b"]: " + line + b"\n")

    def relay(self, fd: int) -> None:
        app, stream = self.streams[fd]
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:
            return
        buf = app.buffers.setdefault(fd, bytearray())
        if not data:
            if buf:
                self.emit(app, stream, bytes(buf))
            del self.streams[fd]
            os.close(fd)
            return
        buf += data
        while True:
            nl = buf.find(b"\n")
            if nl < 0:
                if len(buf) >= MAX_LINE:
                    self.emit(app, stream, bytes(buf))
                    buf.clear()
                break
            self.emit(app, stream, bytes(buf[:nl]))
            del buf[: nl + 1]

    # -- starting apps ---------------------------------------------------------------------------------
    def app_fds(self, app: App) -> list[int]:
        """The inherited socket-activation fds that belong to this app (stage0 mapped them by index)."""
        return [
            self.listen_fds[i] for i in app.spec.get("listen_fd_indexes", []) if i < len(self.listen_fds)
        ]

    def spawn(self, app: App, argv: list[str], *, main: bool) -> int:
        outs: list[tuple[int, int]] = []
        if main and not self.cfg.get("interactive"):
            for stream in (1, 2):
                r, w = os.pipe2(os.O_CLOEXEC)
                os.set_blocking(r, False)
                outs.append((r, w))
                self.streams[r] = (app, stream)
        fds = self.app_fds(app) if main else []
        # A stop signal between fork and exec must reach the app, not the init's handler copied into
        # the child (which would swallow it, leaving the app to the stop timeout's SIGKILL).
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        pid = os.fork()
        if pid == 0:
            try:
                self.child(app, argv, [w for _, w in outs], fds, main=main)
            except BaseException as e:
                os.write(2, f"rktd-init: {app.name}: {argv[0]}: {e}\n".encode(errors="replace"))
            os._exit(127)
        if main:
            app.pid = pid  # before a pending stop signal runs on_signal
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for _, w in outs:
            os.close(w)
        return pid

    def child(self, app: App, argv: list[str], outs: list[int], fds: list[int], *, main: bool) -> None:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending one ends the child here
        os.setpgid(0, 0)
        if outs:
            os.dup2(outs[0], 1)
            os.dup2(outs[1], 2)
        env = dict(app.spec["env"])
        if main and app.spec.get("notify"):
            env["NOTIFY_SOCKET"] = "@" + app.notify_name
        cgroup_dirs = {c: V2_ROOT if c == "unified" else f"/cgroup/{c}" for c in app.spec.get("cgroups", {})}
        default = None if self.cfg.get("all_caps") else DEFAULT_APP_CAPS
        become(
            app.spec,
            app.rootfs,
            argv,
            env,
            fds=fds,
            cgroup_dirs=cgroup_dirs,
            default_caps=default,
            pivot=True,
        )

    def run_handler(self, app: App, event: str) -> int:
        for argv in app.spec.get(event, []):
            pid = self.spawn(app, argv, main=False)
            while True:
                try:
                    _, status = os.waitpid(pid, 0)
                    break
                except ChildProcessError:
                    return 0
            code = exit_status(status)
            if code != 0:
                self.log(f"{app.name}: {event} handler {argv[0]} failed with status {code}")
                return code
        return 0

    def prepare_rootfs_all(self) -> None:
        """Mount /proc, /dev, /sys into every app's rootfs, from a child (the mounts are the mount
        namespace's, so they stay, and the init's own memory stays small)."""
        pid = os.fork()
        if pid == 0:
            try:
                for app in self.apps:
                    self.prepare_rootfs(app)
            finally:
                os._exit(0)
        os.waitpid(pid, 0)

    def apply_sysctls(self) -> int:
        for name, value in sorted(self.cfg.get("sysctls", {}).items()):
            path = "/proc/sys/" + name.replace(".", "/")
            try:
                with open(path, "w") as f:
                    f.write(str(value))
            except OSError as e:
                self.log(
                    f"sysctl {name}={value}: {e.strerror} (only network-namespaced sysctls are writable)"
                )
                return 1
        return 0

    def setup_cgroup_v2(self) -> None:
        """Per-app cgroups in the pod's own cgroup v2 subtree (nspawn gives the container its
        delegated part of the unit's cgroup): the init moves itself to a leaf, enables the
        controllers below the pod's root, and each limited app gets `<root>/<app>` with its limits."""
        limited = [a for a in self.apps if a.spec.get("cgroup_v2")]
        if not limited:
            return
        need = sorted({key.split(".")[0] for a in limited for key in a.spec["cgroup_v2"]})
        try:
            with open(f"{V2_ROOT}/cgroup.controllers") as f:
                missing = set(need) - set(f.read().split())
            if missing:
                raise OSError(errno.ENOTSUP, f"controllers {', '.join(sorted(missing))} not delegated")
            os.makedirs(f"{V2_ROOT}/rktd-init", exist_ok=True)
            _write(f"{V2_ROOT}/rktd-init/cgroup.procs", "0")
            _write(f"{V2_ROOT}/cgroup.subtree_control", " ".join(f"+{c}" for c in need))
            for app in limited:
                os.makedirs(f"{V2_ROOT}/{app.name}", exist_ok=True)
                for key, value in app.spec["cgroup_v2"].items():
                    _write(f"{V2_ROOT}/{app.name}/{key}", value)
                app.spec.setdefault("cgroups", {})["unified"] = app.name
        except OSError as e:
            self.log(f"memory/CPU limits not enforced: cgroup v2: {e} (the unit's limits still apply)")

    def start(self) -> None:
        self.setup_cgroup_v2()
        if self.apply_sysctls():
            self.failed = 1
            return
        self.prepare_rootfs_all()
        for app in self.apps:
            code = self.run_handler(app, "pre_start")
            if code:
                self.fail(app, code)
                return
        for app in self.apps:
            if self.stopping:
                break  # stopped while starting: the rest never start
            if app.spec.get("notify"):
                self.open_notify(app)
            app.pid = self.spawn(app, app.spec["exec"], main=True)
        self.maybe_ready()

    def open_notify(self, app: App) -> None:
        """The app's NOTIFY_SOCKET. Abstract names belong to the network namespace, the host's for
        --net=host: a random one cannot be taken first by a host user, and on_notify ignores
        senders outside the pod's PID namespace."""
        import _socket

        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_CLOEXEC)
        app.notify_name = f"rktd-notify-{os.urandom(8).hex()}-{app.name}"
        sock.bind("\0" + app.notify_name)
        sock.setsockopt(_socket.SOL_SOCKET, _socket.SO_PASSCRED, 1)
        sock.setblocking(False)
        app.notify_sock = sock

    def maybe_ready(self) -> None:
        if all(a.ready for a in self.apps):
            sd_notify(b"READY=1")

    # -- lifecycle -------------------------------------------------------------------------------------
    def fail(self, app: App, code: int) -> None:
        if self.failed is None:
            self.failed = code
            self.log(f"app {app.name} failed with exit status {code}; stopping the pod")
        self.stop()

    def stop(self) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.kill_at = time.monotonic() + float(self.cfg.get("stop_timeout", 30))
        self.signal_apps(signal.SIGTERM)

    def signal_apps(self, sig: int) -> None:
        for app in self.apps:
            if app.pid and app.status is None:
                for target in (-app.pid, app.pid):
                    try:
                        os.kill(target, sig)
                    except ProcessLookupError:
                        pass

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for app in self.apps:
                if app.pid == pid and app.status is None:
                    self.app_exited(app, exit_status(status))

    def app_exited(self, app: App, code: int) -> None:
        app.status = code
        try:
            os.makedirs("/rktd/status", exist_ok=True)
            with open(f"/rktd/status/{app.name}", "w") as f:
                f.write(f"{code}\n")
        except OSError as e:
            self.log(f"cannot record the status of {app.name}: {e}")
        self.run_handler(app, "post_stop")
        for controller, path in app.spec.get("cgroups", {}).items():
            try:
                os.rmdir(f"{V2_ROOT if controller == 'unified' else '/cgroup/' + controller}/{path}")
            except OSError:
                pass  # processes the app left behind; gc removes it
        if code != 0 and not self.stopping:
            self.fail(app, code)

    def on_signal(self, signum: int, frame: Any) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            self.stop()

    def loop(self) -> int:
        while any(a.pid and a.status is None for a in self.apps) or self.streams:
            timeout = None
            if self.kill_at is not None:
                timeout = max(0.0, self.kill_at - time.monotonic())
                if timeout == 0.0:
                    self.signal_apps(signal.SIGKILL)
                    self.kill_at = None
                    timeout = None
            if not any(a.pid and a.status is None for a in self.apps):
                timeout = 0.5  # apps are gone: drain what their descendants still hold open
            socks = {a.notify_sock.fileno(): a for a in self.apps if a.notify_sock is not None}
            try:
                ready, _, _ = select.select([self.wake_r, *self.streams, *socks], [], [], timeout)
            except InterruptedError:
                ready = []
            if not ready and timeout == 0.5 and not any(a.status is None and a.pid for a in self.apps):
                break
            for fd in ready:
                if fd == self.wake_r:
                    _drain(fd)
                elif fd in socks:
                    self.on_notify(socks[fd])
                elif fd in self.streams:
                    self.relay(fd)
            self.reap()
        return self.result()

    def on_notify(self, app: App) -> None:
        assert app.notify_sock is not None
        import _socket

        try:
            data, anc, _, _ = app.notify_sock.recvmsg(4096, _socket.CMSG_SPACE(12))
        except OSError:
            return
        pids = [
            struct.unpack("=i", c[2][:4])[0]
            for c in anc
            if c[0] == _socket.SOL_SOCKET and c[1] == _socket.SCM_CREDENTIALS and len(c[2]) >= 12
        ]
        if pids and pids[0] <= 0:  # (the socket passes credentials: every datagram has them)
            return  # a process outside the pod's PID namespace (its pid reads 0 here): not the app
        if b"READY=1" in data.split(b"\n") and not app.ready:
            app.ready = True
            self.maybe_ready()

    def result(self) -> int:
        if self.failed is not None:
            return self.failed
        stopped = (0, 128 + signal.SIGTERM, 128 + signal.SIGKILL) if self.stopping else (0,)
        for app in self.apps:
            if app.status not in stopped:
                return app.status or 0
        return 0


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            n = os.write(fd, data)
        except InterruptedError:
            continue
        except OSError:
            return
        data = data[n:]


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


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else CONFIG
    with open(path, "rb") as f:
        if path.endswith(".json"):
            import json

            cfg = json.load(f)
        else:
            import marshal  # stage1 writes init.cfg as marshal data: no json (and re) to import

            cfg = marshal.load(f)
    # systemd-nspawn does not take its container down when it is SIGKILLed: the pod dies with it.
    # (This is what loads ctypes into the resident init, ~1 MB; nothing else there needs it.)
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    init = Init(cfg)
    signal.set_wakeup_fd(init.wake_w)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, init.on_signal)
    signal.signal(signal.SIGCHLD, lambda s, f: None)
    init.open_journal()
    init.start()
    return init.loop()


if __name__ == "__main__":
    sys.exit(main())
