"""stage1 nspawn: the pod as a systemd-nspawn container running rktd's init.

The init is `rktd-init` (stage1-init/, a small C program: no second interpreter on each
pod start, a few hundred KiB per idle pod). The stage1 root is `<pod>/stage1/rootfs`: the host's
/usr (read-only: the init's libc and libseccomp), at /rktd the init binary (a read-only bind of the
host's), its config `init.cfg` (read-only) and the per-app exit statuses (not the pod directory:
what the host trusts later stays out of the container's reach), each app's rootfs at
/opt/stage2/<app>/rootfs, as rkt laid it out. All of it is mounted in a private mount namespace
that this process enters before it `exec`s systemd-nspawn, so the mounts end with the pod.

`init.cfg` is stage1.json's pod reduced to what the init uses, as `key\\0value\\0` records (the format
is documented at the top of stage1-init/config.c; `init_config` writes it).
"""

from __future__ import annotations

import os
from pathlib import Path

from rktd_units.errors import PodError
from rktd_units.fsutil import write_atomic
from rktd_units.pods import STATUS_DIR
from rktd_units.stage1 import (
    STAGE2,
    assign_listen_fds,
    mount_app,
    notice,
    setup_cgroups,
    write_config,
)
from rktd_units.stage1.init import DEFAULT_APP_CAPS, bind, ensure_mountpoint, mount, unshare_mounts

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from typing import Any, NoReturn

NSPAWN_PATHS = ("/usr/bin/systemd-nspawn", "/bin/systemd-nspawn")
INSTALLED_INIT = "/usr/libexec/rktd/rktd-init"
SOURCE_TREE = Path(__file__).resolve().parent.parent.parent  # when running from a checkout
SYSTEM_BUS = "/run/dbus/system_bus_socket"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# Capabilities systemd-nspawn keeps by default; an app's retain set beyond these is added.
NSPAWN_DEFAULT_CAPS = frozenset(
    "CAP_AUDIT_CONTROL CAP_AUDIT_WRITE CAP_CHOWN CAP_DAC_OVERRIDE CAP_DAC_READ_SEARCH CAP_FOWNER "
    "CAP_FSETID CAP_IPC_OWNER CAP_KILL CAP_LEASE CAP_LINUX_IMMUTABLE CAP_MKNOD CAP_NET_BIND_SERVICE "
    "CAP_NET_BROADCAST CAP_NET_RAW CAP_SETFCAP CAP_SETGID CAP_SETPCAP CAP_SETUID CAP_SYS_ADMIN "
    "CAP_SYS_BOOT CAP_SYS_CHROOT CAP_SYS_NICE CAP_SYS_PTRACE CAP_SYS_RESOURCE CAP_SYS_TTY_CONFIG".split()
)


def machine_name(cfg: dict[str, Any]) -> str:
    """`rktd-<pod name>-<uuid prefix>` (or `rktd-<uuid>`): what `machinectl list` shows."""
    name = cfg.get("name")
    text = f"rktd-{name}-{cfg['uuid'][:8]}" if name else f"rktd-{cfg['uuid']}"
    return text[:64]


def under_systemd() -> bool:
    """Are we a unit's process (so nspawn must keep the unit rather than make a scope)?"""
    return bool(os.environ.get("INVOCATION_ID")) and os.path.isdir("/run/systemd/system")


def has_system_bus() -> bool:
    return os.path.exists(SYSTEM_BUS)


def find_nspawn() -> str:
    for path in NSPAWN_PATHS:
        if os.access(path, os.X_OK):
            return path
    raise PodError("systemd-nspawn not found", hint="install systemd-container, or use --stage1=fly")


def build_root(root: Path, cfg: dict[str, Any]) -> None:
    for sub in ("usr", "rktd", "proc", "sys", "dev", "run", "tmp", "etc", "cgroup"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for link in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        if os.path.isdir(f"/usr/{link}") and not os.path.lexists(root / link):
            os.symlink(f"usr/{link}", root / link)
    for app in cfg["apps"]:
        (root / STAGE2 / app["name"] / "rootfs").mkdir(parents=True, exist_ok=True)


def registers_itself(cfg: dict[str, Any]) -> bool:
    """Does stage1 register the pod with machined itself (machined.py), so that the registration
    carries the host side of the pod's CNI interfaces? Only for a unit's pod with a network namespace
    of its own and a system bus; otherwise nspawn registers it (or, without a bus, nobody does)."""
    return bool(cfg.get("netns")) and has_system_bus() and under_systemd()


def nspawn_argv(root: Path, cfg: dict[str, Any]) -> list[str]:
    bus = has_system_bus()
    argv = [
        find_nspawn(),
        "--quiet",
        f"--directory={root}",
        f"--machine={machine_name(cfg)}",
        f"--register={'yes' if bus and not registers_itself(cfg) else 'no'}",
        "--kill-signal=SIGTERM",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
        f"--console={'interactive' if cfg.get('interactive') else 'pipe'}",
    ]
    if not bus:
        notice("no system bus: the pod is not registered with systemd-machined (--register=no)")
    if under_systemd() or not bus:
        argv.append("--keep-unit")
    if cfg.get("hostname"):
        argv.append(f"--hostname={cfg['hostname']}")
    net = cfg.get("net") or "host"
    if cfg.get("netns"):
        argv.append(f"--network-namespace-path={cfg['netns']}")
    elif net == "none":
        argv.append("--private-network")
    if os.environ.get("NOTIFY_SOCKET"):
        argv.append("--notify-ready=yes")
    journal = os.environ.get("RKTD_JOURNAL_SOCKET", JOURNAL_SOCKET)  # another journald, for tests
    if os.path.exists(journal):
        argv.append(f"--bind-ro={journal}:{JOURNAL_SOCKET}")
    # Only a retain set from the pod manifest or the command line widens the container's own set
    wanted = {c for app in cfg["apps"] if not app.get("image_caps") for c in app.get("caps_retain") or ()}
    extra = sorted(wanted - NSPAWN_DEFAULT_CAPS)
    if extra:
        argv.append(f"--capability={','.join(extra)}")
    argv += ["--", "/rktd/init", "/rktd/init.cfg"]
    return argv


def find_init() -> str:
    """The pod's init: `$RKTD_STAGE1_INIT`, else the installed one, else a source tree's meson build."""
    path = os.environ.get("RKTD_STAGE1_INIT")
    if path:
        if not os.access(path, os.X_OK):
            raise PodError(f"RKTD_STAGE1_INIT={path}: not an executable file")
        return path
    if os.access(INSTALLED_INIT, os.X_OK):
        return INSTALLED_INIT
    built = SOURCE_TREE / "build" / "meson" / "rktd-init"
    if (SOURCE_TREE / "meson.build").exists() and os.access(built, os.X_OK):
        return str(built)
    raise PodError(
        f"the pod init rktd-init is missing (not {INSTALLED_INIT}, nor {built})",
        hint="build it: meson setup build/meson && meson compile -C build/meson rktd-init, "
        "or install the package",
    )


def _record(out: bytearray, key: str, value: object, where: str) -> None:
    data = (value if isinstance(value, str) else str(value)).encode("utf-8", "surrogateescape")
    if b"\0" in data:
        raise PodError(f"{where}: {key}: contains a NUL byte")
    out += key.encode() + b"\0" + data + b"\0"


def _flag(value: object) -> str:
    return "1" if value else "0"


def init_config(cfg: dict[str, Any]) -> bytes:
    """The init's config (format: stage1-init/config.c): `key\\0value\\0` records, one section per app."""
    out = bytearray()
    _record(out, "rktd-init-config", "1", "pod")
    _record(out, "uuid", cfg["uuid"], "pod")
    if cfg.get("name"):
        _record(out, "name", cfg["name"], "pod")
    _record(out, "stop_timeout", repr(float(cfg.get("stop_timeout", 30))), "pod")
    _record(out, "interactive", _flag(cfg.get("interactive")), "pod")
    _record(out, "all_caps", _flag(cfg.get("all_caps")), "pod")
    _record(out, "api_vfs_writable", _flag(cfg.get("insecure_paths")), "pod")
    for name, value in sorted(cfg.get("sysctls", {}).items()):
        _record(out, "sysctl", f"{name}={value}", "pod")
    for app in cfg["apps"]:
        _app_records(out, app)
    _record(out, "end", "", "pod")
    return bytes(out)


def _app_records(out: bytearray, app: dict[str, Any]) -> None:
    where = f"app {app['name']}"
    _record(out, "app", app["name"], where)

    def argv(key: str, args: list[str]) -> None:
        _record(out, key, len(args), where)
        for arg in args:
            _record(out, "arg", arg, where)

    argv("exec", app["exec"])
    for key in ("pre_start", "post_stop"):
        for handler in app.get(key, []):
            argv(key, handler)
    for k, v in app.get("env", []):
        if "=" in k or not k:
            raise PodError(f"{where}: environment variable name {k!r} is empty or has a '='")
        _record(out, "env", f"{k}={v}", where)
    _record(out, "uid", app["uid"], where)
    _record(out, "gid", app["gid"], where)
    for gid in app.get("gids", []):
        _record(out, "group", gid, where)
    _record(out, "workdir", app.get("workdir") or "/", where)
    _record(out, "notify", _flag(app.get("notify")), where)
    if app.get("caps_retain") is not None:
        _record(out, "caps_retain_set", "1", where)
        for cap in app["caps_retain"]:
            _record(out, "caps_retain", cap, where)
    for cap in app.get("caps_remove", []):
        _record(out, "caps_remove", cap, where)
    _record(out, "no_new_privs", _flag(app.get("no_new_privs")), where)
    if app.get("oom_score_adj") is not None:
        _record(out, "oom_score_adj", app["oom_score_adj"], where)
    for key in ("apparmor_profile", "selinux_context"):
        if app.get(key):
            _record(out, key, app[key], where)
    seccomp = app.get("seccomp")
    if seccomp:
        _record(out, "seccomp", seccomp["mode"], where)
        if seccomp.get("errno") is not None:
            _record(out, "seccomp_errno", seccomp["errno"], where)
        for name in seccomp["set"]:
            _record(out, "syscall", name, where)
    for index in app.get("listen_fd_indexes", []):
        _record(out, "listen_fd", index, where)
    for fd_name in app.get("listen_fd_names", []):
        _record(out, "listen_fd_name", fd_name, where)
    for controller, path in sorted(app.get("cgroups", {}).items()):
        _record(out, "cgroup", f"{controller}={path}", where)
    for key, value in app.get("cgroup_v2", {}).items():
        _record(out, "cgroup_v2", f"{key}={value}", where)


def confine_image_caps(cfg: dict[str, Any]) -> None:
    """An image's own capability retain set can narrow the default app set, never widen it: a
    manifest from the image store must not hand its app CAP_SYS_ADMIN and the like."""
    for app in cfg["apps"]:
        if not app.get("image_caps") or app.get("caps_retain") is None:
            continue
        refused = sorted(set(app["caps_retain"]) - set(DEFAULT_APP_CAPS))
        if refused:
            notice(
                f"app {app['name']}: not granting {', '.join(refused)} asked for by image "
                f"{app.get('image_name')} (a pod manifest's isolator or --cap-retain can grant them)"
            )
            app["caps_retain"] = [c for c in app["caps_retain"] if c in DEFAULT_APP_CAPS]


def bind_rktd(pod_path: Path, rktd: Path, init: str) -> None:
    """What the init needs at /rktd, and nothing else of the pod directory: its program (the host's
    binary) and config read-only, and `status/` (the apps' exit statuses) writable. The pod
    directory's network state, pid and cgroup lists, which the host trusts later, stay out of the
    container's reach."""
    for source, name in ((init, "init"), (str(pod_path / "init.cfg"), "init.cfg")):
        ensure_mountpoint(str(rktd / name), is_dir=False)
        bind(source, str(rktd / name), read_only=True, recursive=False)
    ensure_mountpoint(str(rktd / STATUS_DIR), is_dir=True)
    bind(str(pod_path / STATUS_DIR), str(rktd / STATUS_DIR), recursive=False)


def _fstype(path: str) -> str | None:
    best, kind = "", None
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            target = left.split()[4]
            if (path == target or path.startswith(target.rstrip("/") + "/")) and len(target) >= len(best):
                best, kind = target, right.split()[0]
    return kind


def exec_pod(pod_path: Path, cfg: dict[str, Any]) -> NoReturn:
    root = pod_path / "stage1" / "rootfs"
    init = find_init()
    build_root(root, cfg)
    assign_listen_fds(cfg)
    cgroup_dirs = setup_cgroups(pod_path, cfg)
    confine_image_caps(cfg)
    write_config(pod_path, cfg)
    write_atomic(pod_path / "init.cfg", init_config(cfg), 0o600, durable=False)
    os.makedirs(pod_path / STATUS_DIR, mode=0o700, exist_ok=True)
    argv = nspawn_argv(root, cfg)
    if registers_itself(cfg):
        from rktd_units.stage1 import machined

        # Forked before the private mount namespace, so it holds none of the pod's mounts.
        machined.spawn(os.getpid(), machine_name(cfg), cfg["uuid"], root, pod_path)
    unshare_mounts()
    if _fstype("/run") != "tmpfs":
        # nspawn keeps /run/systemd/nspawn/propagate/<machine> and refuses to delete it from a
        # disk file system: give it a tmpfs that ends with this namespace.
        os.makedirs("/run/systemd/nspawn", exist_ok=True)
        mount("tmpfs", "/run/systemd/nspawn", "tmpfs", 0, "mode=0755")
    bind("/usr", str(root / "usr"), read_only=True, recursive=False)
    bind_rktd(pod_path, root / "rktd", init)
    for app in cfg["apps"]:
        mount_app(pod_path, app, str(root / STAGE2 / app["name"] / "rootfs"))
    for controller, directory in cgroup_dirs.items():
        target = root / "cgroup" / controller
        target.mkdir(exist_ok=True)
        bind(directory, str(target), recursive=False)
    env = dict(os.environ)
    if cfg.get("no_seccomp"):
        env["SYSTEMD_SECCOMP"] = "0"  # --insecure-options=seccomp: nspawn installs no system call filter
    if cfg.get("insecure_paths"):
        env["SYSTEMD_NSPAWN_API_VFS_WRITABLE"] = "1"  # --insecure-options=paths: /proc/sys, /sys writable
    os.execve(argv[0], argv, env)
