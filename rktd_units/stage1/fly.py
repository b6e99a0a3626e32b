"""stage1 fly: one app, chrooted into its rootfs in a private mount namespace, on the host network.

No container manager and no init: after the mounts this process (still the unit's main process,
still holding the pod lock) becomes the app by `exec`, so the app's exit status and signals are
the pod's, and `SIGTERM` to the pod is `SIGTERM` to the app. post-stop handlers cannot run (no
process is left to run them); pre-start handlers run before the exec.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from rktd_units.errors import PodError
from rktd_units.stage1 import STAGE2, assign_listen_fds, mount_app, setup_cgroups, write_private
from rktd_units.stage1.init import (
    become,
    bind,
    ensure_mountpoint,
    exit_status,
    in_root,
    sd_notify,
    unshare_mounts,
)

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from typing import Any, NoReturn


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


def _run_handlers(app: dict[str, Any], rootfs: str, cgroup_dirs: dict[str, str]) -> None:
    for argv in app.get("pre_start", []):
        pid = os.fork()
        if pid == 0:
            try:
                _reset_signals()
                become(
                    app, rootfs, argv, dict(app["env"]), fds=[], cgroup_dirs=cgroup_dirs, default_caps=None
                )
            finally:
                os._exit(127)
        _, status = os.waitpid(pid, 0)
        code = exit_status(status)
        if code:
            raise PodError(f"app {app['name']}: pre-start handler {argv[0]} failed with status {code}")


def exec_pod(pod_path: Path, cfg: dict[str, Any]) -> NoReturn:
    if len(cfg["apps"]) != 1:
        raise PodError("stage1 fly runs exactly one app", hint="use --stage1=nspawn for multi-app pods")
    app = cfg["apps"][0]
    rootfs = pod_path / "stage1" / "rootfs" / STAGE2 / app["name"] / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    assign_listen_fds(cfg)
    cgroup_dirs = setup_cgroups(pod_path, cfg)
    write_private(pod_path / "stage1.json", json.dumps(cfg, indent=1, sort_keys=True).encode())
    unshare_mounts()
    mount_app(pod_path, app, str(rootfs))
    _host_mounts(str(rootfs))
    _run_handlers(app, str(rootfs), cgroup_dirs)
    fds = [3 + i for i in app.get("listen_fd_indexes", [])]
    sd_notify(b"READY=1")  # for a Type=notify unit: the app is about to start (no init to say so later)
    _reset_signals()
    # fly is for host tools: without a retain set the app keeps every capability (rkt fly did too)
    try:
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
