"""`rktd enter`: a command in a running pod's app, confined as the app is.

The command joins the pod's cgroup (before it leaves the host's namespaces), then the namespaces of
the pod's first process (nspawn: the pod's init, so its mount, UTS, IPC, network, PID and cgroup
namespaces; fly: the app's mount namespace), forks (a PID namespace applies to children), and the
child becomes the app as stage1 made it: chrooted into its rootfs, with its capability sets, user,
groups, working directory, no-new-privileges and environment. The caller waits and exits with the
command's status.

It also gets the app's own exec isolators, by the same `become()` as the app: its seccomp filter
(the flat `seccomp` set stage0 expanded), AppArmor profile or SELinux context, and OOM score.
What it does not get, or gets differently:
- nspawn's own system call filter, which nspawn installs on the pod's init and the apps inherit:
  the command is forked from the host, so only the app's own filter confines it, and with no
  seccomp isolator it runs with no filter at all (`Seccomp: 0` in /proc/self/status), the
  capability bounding set and the user being what still stand between it and the kernel;
- the app's stdio: its output goes to the caller's terminal, not through the pod's log relay;
- (nspawn) the app's own mount namespace: the command gets a fresh one from the pod's, as the app
  did at its start, so mounts the app made since are out of its sight.
"""

from __future__ import annotations

import os
import signal
import sys

from rktd_units.errors import PodError
from rktd_units.stage1.init import DEFAULT_APP_CAPS, _check, become, exit_status, libc, seccomp_library

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

# setns order: the mount namespace last (after it, /proc/<pid>/ns of the host is out of sight)
NSPAWN_NAMESPACES = ("cgroup", "ipc", "uts", "net", "pid", "mnt")
FLY_NAMESPACES = ("mnt",)
CGROUP_ROOT = "/sys/fs/cgroup"


def join_cgroups(pid: int) -> None:
    """Move this process into the cgroups of `pid` (the pod's init or fly app)."""
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise PodError(f"cannot read the cgroups of the pod's process {pid}: {e.strerror}") from None
    unified = os.path.exists(f"{CGROUP_ROOT}/cgroup.controllers")
    for line in lines:
        hierarchy, controllers, path = line.split(":", 2)
        if hierarchy == "0":
            base = CGROUP_ROOT if unified else f"{CGROUP_ROOT}/unified"
        else:
            base = f"{CGROUP_ROOT}/{controllers.removeprefix('name=')}"
        try:
            with open(f"{base}{path.rstrip('/')}/cgroup.procs", "w") as f:
                f.write(str(os.getpid()))
        except OSError as e:
            if hierarchy == "0" and os.path.isdir(base):
                raise PodError(f"cannot join the pod's cgroup {path}: {e.strerror}") from None
            # a cgroup v1 hierarchy mounted elsewhere or not at all: nothing to join there


def join_namespaces(pid: int, kinds: tuple[str, ...]) -> None:
    fds = []
    for kind in kinds:
        theirs = f"/proc/{pid}/ns/{kind}"
        try:
            if os.readlink(theirs) == os.readlink(f"/proc/self/ns/{kind}"):
                continue
            fds.append((kind, os.open(theirs, os.O_RDONLY | os.O_CLOEXEC)))
        except FileNotFoundError:
            continue  # a kernel without that namespace type
        except OSError as e:
            raise PodError(
                f"cannot open the {kind} namespace of the pod's process {pid}: {e.strerror}"
            ) from None
    lib = libc()  # loaded from the host's file system, before the mount namespace changes
    for kind, fd in fds:
        try:
            _check(lib.setns(fd, 0), f"setns({kind})")
        except OSError as e:
            raise PodError(f"cannot enter the pod's {kind} namespace: {e}") from None
        finally:
            os.close(fd)


def enter_app(pid: int, cfg: dict[str, Any], spec: dict[str, Any], rootfs: str, argv: list[str]) -> NoReturn:
    """Run `argv` as the app `spec` of the pod whose first process is `pid`; exit with its status."""
    fly = cfg.get("stage1") == "fly"
    all_caps = fly or cfg.get("all_caps")
    if spec.get("seccomp"):
        seccomp_library()  # loaded from the host's file system, like libc, before the mount namespace
    join_cgroups(pid)
    join_namespaces(pid, FLY_NAMESPACES if fly else NSPAWN_NAMESPACES)
    env = dict(spec.get("env") or ())
    if "TERM" in os.environ:
        env["TERM"] = os.environ["TERM"]
    confined = {**spec, "cgroups": {}}  # the pod's cgroup is joined already
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        try:
            become(
                confined,
                rootfs,
                argv,
                env,
                fds=[],
                cgroup_dirs={},
                default_caps=None if all_caps else DEFAULT_APP_CAPS,
                pivot=not fly,
            )
        except BaseException as e:
            why: object = e
            if isinstance(e, OSError):  # "[Errno 2] ..." is Python's, not the operator's wording
                why = e.strerror if e.filename in (None, argv[0]) else f"{e.strerror}: {e.filename}"
            os.write(2, f"rktd: enter: {argv[0]}: {why}\n".encode(errors="replace"))
        os._exit(127)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # ^C is the command's (in the same terminal)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    while True:
        try:
            _, status = os.waitpid(child, 0)
            break
        except InterruptedError:
            continue
    sys.exit(exit_status(status))
