"""stage1: what runs a prepared pod. Flavours `nspawn` (default) and `fly`; this module holds the
host-side setup they share.

stage0 calls `exec_stage1()` in its own process: the flavour enters a private mount namespace,
mounts each app's rootfs (overlayfs over the store's read-only trees, the image's over its
dependencies', upper and work directories in the pod directory; or, for `readOnlyRootFS`, a
read-only bind, or an overlay of the layers alone) and its volumes, then `exec`s systemd-nspawn
(nspawn) or the app itself (fly). Every mount lives in that namespace only, so when the pod's last
process ends the kernel drops them all: nothing is left to unmount, even after SIGKILL.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from rktd_units.errors import PodError
from rktd_units.fsutil import write_atomic
from rktd_units.stage1.init import MS_RDONLY, bind, ensure_mountpoint, in_root, mount

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from typing import Any, NoReturn

FLAVOURS = {"nspawn": "rktd_units.stage1.nspawn", "fly": "rktd_units.stage1.fly"}
STAGE2 = "opt/stage2"
MAX_LOWERDIR = 3500  # the kernel takes a page of overlayfs options; the upper and work dirs need the rest


def exec_stage1(pod_path: Path, cfg: dict[str, Any]) -> NoReturn:
    """Hand the pod to its stage1 flavour; returns only by raising."""
    flavour = cfg.get("stage1", "nspawn")
    if flavour not in FLAVOURS:
        raise PodError(f"unknown stage1 flavour {flavour!r}", hint=f"one of {', '.join(FLAVOURS)}")
    module = importlib.import_module(FLAVOURS[flavour])
    module.exec_pod(pod_path, cfg)
    raise AssertionError("stage1 returned")


def notice(message: str) -> None:
    sys.stderr.write(f"rktd: {message}\n")
    sys.stderr.flush()


def resolve_in_root(root: str, path: str) -> str:
    """`path` inside `root` with symlinks resolved as if `root` were `/`: an image cannot point a
    mount target at the host (`/data -> /etc` in the image stays inside the image)."""
    try:
        return in_root(root, path)
    except OSError as e:
        raise PodError(f"{path}: {e.strerror} in the image") from None


def mount_app(pod_path: Path, app: dict[str, Any], target: str) -> None:
    """Mount one app's rootfs at `target` and its volumes inside it."""
    lowers = app.get("lowers") or [app["lower"]]  # top first: an image over its dependencies
    lowerdir = ":".join(lowers)
    if len(lowerdir) > MAX_LOWERDIR:
        raise PodError(
            f"app {app['name']}: its image and dependencies are {len(lowers)} layers, too many to stack",
            hint="flatten some of them into one image",
        )
    if app.get("read_only_rootfs"):
        if len(lowers) == 1:
            bind(lowers[0], target, read_only=True, recursive=False)
        else:  # an overlay with no upper directory is read-only; MS_RDONLY says so to the VFS too
            mount("overlay", target, "overlay", MS_RDONLY, f"lowerdir={lowerdir}")
    else:
        base = pod_path / "overlay" / app["name"]
        upper, work = base / "upper", base / "work"
        upper.mkdir(parents=True, exist_ok=True)
        work.mkdir(parents=True, exist_ok=True)
        mount("overlay", target, "overlay", 0, f"lowerdir={lowerdir},upperdir={upper},workdir={work}")
    for m in app.get("mounts", []):
        source = os.path.join(pod_path, m["source"])  # relative sources are inside the pod directory
        dst = resolve_in_root(target, m["target"])
        try:
            ensure_mountpoint(dst, is_dir=os.path.isdir(source))
        except OSError as e:
            raise PodError(
                f"app {app['name']}: cannot create mount point {m['target']}: {e.strerror}",
                hint="a read-only rootfs must already contain its mount points",
            ) from None
        bind(source, dst, read_only=bool(m.get("read_only")))


def write_config(pod_path: Path, cfg: dict[str, Any]) -> None:
    """The pod's stage1.json as stage1 runs it, replaced atomically (`rktd list` and gc read it while
    the pod runs); root-only: it holds the environment (secrets of --set-env)."""
    import json

    from rktd_units.pods import STAGE1_CONFIG

    data = json.dumps(cfg, indent=1, sort_keys=True).encode()
    write_atomic(pod_path / STAGE1_CONFIG, data, 0o600, durable=False)


def listen_fd_names() -> list[str]:
    names = os.environ.get("LISTEN_FDNAMES", "")
    return names.split(":") if names else []


def inherited_listen_fds() -> int:
    """How many socket-activation fds systemd passed to this process (0 if they are not ours)."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return 0
    try:
        return int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return 0


def assign_listen_fds(cfg: dict[str, Any]) -> None:
    """Give each app the indexes (and names) of the inherited fds for its socket-activated ports:
    by LISTEN_FDNAMES when a name matches a port name, else in the pod's port order."""
    count = inherited_listen_fds()
    if not count:
        return
    names = listen_fd_names()
    ordered = [(app, port) for app in cfg["apps"] for port in app.get("socket_ports", [])]
    for index in range(count):
        name = names[index] if index < len(names) else ""
        match = next(((a, p) for a, p in ordered if p == name), None)
        if match is None and index < len(ordered):
            match = ordered[index]
        if match is None:
            continue
        app, port = match
        app.setdefault("listen_fd_indexes", []).append(index)
        app.setdefault("listen_fd_names", []).append(name or port)


# -- cgroups: memory and CPU limits ------------------------------------------------------------------
#
# Under systemd the unit delegates its cgroup (Delegate=yes) and stage1 enforces the per-app limits
# itself: on cgroup v1 in `<own cgroup>/rktd-<uuid>/<app>`, which the app joins before exec; on v2 in
# the delegated subtree (nspawn: the init makes `payload/<app>`; fly: setup_cgroups makes
# `<unit>/<app>`). The generator writes no MemoryMax=/CPUQuota= for the unit as a whole.


def _v1_mounts() -> dict[str, str]:
    """cgroup v1 controller -> mount point."""
    out: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = right.split()
            if len(fields) >= 3 and fields[0] == "cgroup":
                for opt in fields[2].split(","):
                    if opt in ("memory", "cpu"):
                        out.setdefault(opt, left.split()[4])
    return out


def _own_v1_path(controller: str) -> str:
    """Our cgroup in `controller`'s v1 hierarchy; with "", in the unified (v2) one (its `0::` line)."""
    with open("/proc/self/cgroup", encoding="utf-8") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            if controller in controllers.split(","):
                return path
    return "/"


def _limits(app: dict[str, Any]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    if app.get("memory"):
        out["memory"] = {"memory.limit_in_bytes": str(app["memory"])}
    if app.get("cpu_millis"):
        period = 100_000
        quota = max(1000, app["cpu_millis"] * period // 1000)
        out["cpu"] = {"cpu.cfs_period_us": str(period), "cpu.cfs_quota_us": str(quota)}
    return out


def _v2_limits(app: dict[str, Any]) -> dict[str, str]:
    out = {}
    if app.get("memory"):
        out["memory.max"] = str(app["memory"])
    if app.get("cpu_millis"):
        out["cpu.max"] = f"{max(1000, app['cpu_millis'] * 100)} 100000"
    return out


def setup_cgroups(pod_path: Path, cfg: dict[str, Any]) -> dict[str, str]:
    """Create per-app cgroups with the apps' limits; returns controller -> the pod's cgroup dir.

    Each limited app's spec gets `cgroups: {controller: path relative to the pod's dir}`. On a
    cgroup v2-only host the cgroup must be delegated to us (the unit's `Delegate=yes`; nspawn's
    scope from machined): nspawn's init makes the per-app cgroups inside the pod's subtree
    (`cgroup_v2` in the app's spec); fly, whose stage1 becomes the app, moves to a leaf of its own
    (`_rktd-stage1`, which no app can be named: cgroup v2 lets only a cgroup without processes hand
    controllers down) and makes `<unit's cgroup>/<app>`. fly outside a delegated cgroup (from a shell)
    enforces nothing, and says so.
    """
    wanted = {app["name"]: _limits(app) for app in cfg["apps"]}
    controllers = sorted({c for lim in wanted.values() for c in lim})
    if not controllers:
        return {}
    mounts = _v1_mounts()
    if not mounts and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        for app in cfg["apps"]:
            if limits := _v2_limits(app):
                app["cgroup_v2"] = limits
        if cfg.get("stage1") != "fly":
            return {}
        app, base = cfg["apps"][0], "/sys/fs/cgroup" + _own_v1_path("").rstrip("/")
        limits = app.pop("cgroup_v2", {})
        try:
            delegated = os.getxattr(base, "trusted.delegate") == b"1"  # systemd's mark (v251+)
        except OSError:
            delegated = False
        if not delegated:
            notice(f"fly: memory/CPU limits not enforced: cgroup {base} is not delegated (run it as a unit)")
            return {}
        try:
            for path, value in (
                (f"{base}/_rktd-stage1/cgroup.procs", "0"),
                (f"{base}/cgroup.subtree_control", " ".join(f"+{c}" for c in controllers)),
                *((f"{base}/{app['name']}/{key}", value) for key, value in limits.items()),
            ):
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="ascii") as f:
                    f.write(value)
        except OSError as e:
            notice(f"fly: memory/CPU limits not enforced: {e.filename}: {e.strerror}")
            return {}
        app["cgroups"] = {"unified": app["name"]}
        return {"unified": base}
    pod_dirs: dict[str, str] = {}
    for controller in controllers:
        if controller not in mounts:
            notice(f"{controller} limits not enforced by stage1 (no cgroup v1 {controller} hierarchy)")
            continue
        base = os.path.join(mounts[controller], _own_v1_path(controller).lstrip("/"))
        pod_dirs[controller] = os.path.join(base, f"rktd-{cfg['uuid']}")
    if not pod_dirs:
        return {}
    from rktd_units.pods import CGROUPS_FILE

    (pod_path / CGROUPS_FILE).write_text("".join(f"{d}\n" for d in pod_dirs.values()))
    for controller, pod_dir in pod_dirs.items():
        os.makedirs(pod_dir, exist_ok=True)
        for app in cfg["apps"]:
            settings = wanted[app["name"]].get(controller)
            if not settings:
                continue
            app_dir = os.path.join(pod_dir, app["name"])
            os.makedirs(app_dir, exist_ok=True)
            for key, value in settings.items():
                with open(os.path.join(app_dir, key), "w") as f:
                    f.write(value)
            app.setdefault("cgroups", {})[controller] = app["name"]
    return pod_dirs
