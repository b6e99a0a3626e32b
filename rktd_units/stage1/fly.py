"""stage1 fly: one app, chrooted into its rootfs in a private mount namespace, on the host network.

No container manager and no init: after the mounts this process (still the unit's main process,
still holding the pod lock) becomes the app by `exec`, so the app's exit status and signals are
the pod's, and `SIGTERM` to the pod is `SIGTERM` to the app. pre-start handlers run before the exec.

Only an app with post-stop handlers keeps a process behind it, since something must be left to run
them: this process forks the app and waits, forwarding SIGTERM, SIGINT and SIGHUP to it (and
SIGKILL after the pod's stop timeout, once stopping), then runs the handlers in the app's rootfs as
the app, whatever its status, and exits with the app's status as the nspawn init reports it
(a signal death as 128 + the signal; 0 for an app that a stop ended).
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

from rktd_units.errors import PodError
from rktd_units.stage1 import STAGE2, assign_listen_fds, mount_app, setup_cgroups, write_config
from rktd_units.stage1.init import (
    become,
    bind,
    die_with,
    ensure_mountpoint,
    exit_status,
    in_root,
    sd_notify,
    unshare_mounts,
)

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from typing import Any, NoReturn

STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
WAITED = {*STOP_SIGNALS, signal.SIGCHLD}  # blocked while supervising: sigwaitinfo takes them in turn
SI_KERNEL = 0x80  # si_code of a signal the kernel sent: a terminal's ^C goes to its whole process group


def _host_mounts(rootfs: str) -> None:
    for sub, read_only in (("proc", False), ("dev", False), ("sys", True)):
        try:
            target = in_root(rootfs, sub)  # not through the image's own symlinks out of it
            ensure_mountpoint(target, is_dir=True)
        except OSError:
            continue  # a read-only rootfs without it: the app goes without
        bind(f"/{sub}", target, read_only=read_only)


def _reset_signals() -> None:
    for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)


def _fork_as_app(
    app: dict[str, Any],
    rootfs: str,
    argv: list[str],
    cgroup_dirs: dict[str, str],
    *,
    fds: list[int] | None = None,
    failed: int = 127,
) -> int:
    """Fork a child that becomes `argv` as the app (its rootfs, user, capabilities, cgroups), with
    default signal dispositions and none blocked; it exits `failed` if it cannot. Returns its pid."""
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:
        die_with(parent)  # with stage1 (SIGKILLed), as nspawn pods with theirs; become() renews it
        _reset_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, WAITED)
        # fly is for host tools: without a retain set the app keeps every capability (rkt fly did too)
        become(
            app, rootfs, argv, dict(app["env"]), fds=fds or [], cgroup_dirs=cgroup_dirs, default_caps=None,
            parent=parent,
        )  # fmt: skip
    except BaseException as e:
        why = f"{e.strerror}{f': {e.filename}' if e.filename else ''}" if isinstance(e, OSError) else str(e)
        os.write(2, f"rktd: app {app['name']}: {argv[0]}: {why}\n".encode(errors="replace"))
    os._exit(failed)


def _run_handlers(app: dict[str, Any], event: str, rootfs: str, cgroup_dirs: dict[str, str]) -> None:
    """Run the app's `event` handlers ("pre_start", "post_stop") in turn, until one fails: PodError."""
    for argv in app.get(event, []):
        code = exit_status(os.waitpid(_fork_as_app(app, rootfs, argv, cgroup_dirs), 0)[1])
        if code:
            kind = event.replace("_", "-")
            raise PodError(f"app {app['name']}: {kind} handler {argv[0]} failed with status {code}")


def _supervise(
    app: dict[str, Any], rootfs: str, fds: list[int], cgroup_dirs: dict[str, str], grace: float
) -> int:
    """Run the app as a child until it ends, then its post-stop handlers; the pod's exit status."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)  # none is lost between the checks below
    pid = _fork_as_app(app, rootfs, app["exec"], cgroup_dirs, fds=fds, failed=254)
    for fd in fds:
        os.close(fd)  # the app's now: a socket-activated app must see its peers' EOF, not ours
    stopping, kill_at = False, None
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        info: signal.struct_siginfo | None
        if kill_at is None:
            info = signal.sigwaitinfo(WAITED)
        else:
            info = signal.sigtimedwait(WAITED, max(0.0, kill_at - time.monotonic()))
        if info is None:  # the stop timeout: as the nspawn init, SIGKILL
            os.kill(pid, signal.SIGKILL)
            kill_at = None
        elif info.si_signo in STOP_SIGNALS:
            if not (info.si_signo == signal.SIGINT and info.si_code == SI_KERNEL):
                os.kill(pid, info.si_signo)  # (the app had a terminal's ^C itself: same process group)
            if not stopping:
                stopping, kill_at = True, time.monotonic() + grace
    code = exit_status(status)
    try:
        _run_handlers(app, "post_stop", rootfs, cgroup_dirs)
    except PodError as e:
        sys.stderr.write(f"rktd: {e}\n")  # the pod's status stays the app's
    stopped = (0, 128 + signal.SIGTERM, 128 + signal.SIGKILL) if stopping else (0,)
    return 0 if code in stopped else code


def exec_pod(pod_path: Path, cfg: dict[str, Any]) -> NoReturn:
    if len(cfg["apps"]) != 1:
        raise PodError("stage1 fly runs exactly one app", hint="use --stage1=nspawn for multi-app pods")
    app = cfg["apps"][0]
    rootfs = pod_path / "stage1" / "rootfs" / STAGE2 / app["name"] / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    assign_listen_fds(cfg)
    cgroup_dirs = setup_cgroups(pod_path, cfg)
    write_config(pod_path, cfg)
    unshare_mounts()
    mount_app(pod_path, app, str(rootfs))
    _host_mounts(str(rootfs))
    _run_handlers(app, "pre_start", str(rootfs), cgroup_dirs)
    fds = [3 + i for i in app.get("listen_fd_indexes", [])]
    sd_notify(b"READY=1")  # for a Type=notify unit: the app is about to start (no init to say so later)
    if app.get("post_stop"):
        sys.stdout.flush()
        sys.stderr.flush()
        code = _supervise(app, str(rootfs), fds, cgroup_dirs, float(cfg.get("stop_timeout", 30)))
        sys.stderr.flush()
        os._exit(code)
    _reset_signals()
    try:  # (every capability unless the pod retains a set, as in _fork_as_app)
        become(
            app,
            str(rootfs),
            app["exec"],
            dict(app["env"]),
            fds=fds,
            cgroup_dirs=cgroup_dirs,
            default_caps=None,
        )
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        raise PodError(f"app {app['name']}: {e.strerror or e}{where}") from None
    raise AssertionError("exec returned")
