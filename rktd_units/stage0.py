"""stage0: turn a pod manifest (or images named on the command line) into a prepared pod directory,
then hand it to stage1 by `exec`, so stage1 is the unit's main process and nothing of stage0 stays.

`prepare()` resolves every image in the store (fetching when allowed), merges each image's app
with the pod's overrides, writes the final pod manifest (`pod`, with image IDs, as rkt) and the
runtime description stage1 reads (`stage1.json`: per app the store tree, argv, environment,
numeric user and groups, mounts, limits). `run_prepared()` locks the pod, moves it to `run`, sets
up the network and execs stage1 with the lock (and the store's image holds) inherited.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from rktd_units.errors import ImageError, PodError, UsageError
from rktd_units.frozen import field, frozen, replace
from rktd_units.fsutil import write_atomic
from rktd_units.model import (
    App,
    ImageManifest,
    ImageRef,
    ManifestFormat,
    Mount,
    NameValue,
    Pod,
    RuntimeApp,
    Volume,
    VolumeKind,
)
from rktd_units.pods import MANIFEST, STAGE1_CONFIG, PodDir, Pods, State

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from typing import Any, NoReturn

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NOTIFY_ANNOTATION = "appc.io/executor/supports-systemd-notify"


@frozen
class ImageArg:
    """One IMAGE of `rktd run IMAGE [flags] [-- args] --- IMAGE2 ...` with its per-app flags."""

    image: str
    exec: str | None = None
    args: tuple[str, ...] | None = None
    name: str | None = None
    user: str | None = None
    group: str | None = None
    supplementary_gids: tuple[int, ...] | None = None
    working_dir: str | None = None
    environment: tuple[NameValue, ...] = ()
    mounts: tuple[Mount, ...] = ()
    readonly_rootfs: bool | None = None
    memory: str | None = None
    cpu: str | None = None
    cap_retain: tuple[str, ...] | None = None
    cap_remove: tuple[str, ...] = ()


@frozen
class RunOptions:
    """Everything `rktd run`/`prepare` was told: global options, pod-wide flags, the images."""

    data_dir: str
    local_config: str = "/etc/rktd"
    system_config: str = "/usr/lib/rktd"
    insecure: frozenset[str] = frozenset()
    pod_manifest: str | None = None
    images: tuple[ImageArg, ...] = ()
    name: str | None = None
    set_env: tuple[NameValue, ...] = ()
    inherit_env: bool = False
    volumes: tuple[Volume, ...] = ()
    net: str | None = None
    dns: tuple[str, ...] = ()
    dns_search: tuple[str, ...] = ()
    dns_opt: tuple[str, ...] = ()
    dns_domain: str | None = None
    hosts_entries: tuple[str, ...] = ()
    hostname: str | None = None
    ports: tuple[str, ...] = ()
    uuid_file_save: str | None = None
    interactive: bool = False
    stage1: str | None = None
    pull_policy: str = "new"
    environ: dict[str, str] = field(default_factory=dict)


@frozen
class Resolved:
    """An app of the pod with its image found in the store."""

    app: RuntimeApp
    image_id: str
    manifest: ImageManifest
    rootfs: Path  # the top lower directory: the image's rootfs, or its rendering with its dependencies
    layers: tuple[Path, ...] = ()  # every lower directory, top first (overlayfs `lowerdir` order)
    layer_ids: tuple[str, ...] = ()  # the image and its dependencies, all held while the pod runs


# -- the pod to run ----------------------------------------------------------------------------------


def pod_from_options(opts: RunOptions) -> tuple[Pod, str | None, ManifestFormat]:
    """The pod, its name and format: from `--pod-manifest`, or built from the images on the command line."""
    if opts.pod_manifest:
        if opts.images:
            raise UsageError("--pod-manifest and images on the command line exclude each other")
        from rktd_units import podpath

        pod_file = podpath.find(opts.pod_manifest)
        pod = pod_file.pod
        if opts.volumes:
            pod = replace(pod, volumes=_merge_volumes(pod.volumes, opts.volumes))
        _check_name(opts.name, "--name")
        return pod, opts.name or pod_file.name, pod_file.format
    if not opts.images:
        raise UsageError("nothing to run", hint="give an IMAGE or --pod-manifest=NAME|PATH")
    _check_name(opts.name, "--name (the pod's)")
    apps: list[RuntimeApp] = []
    taken: set[str] = set()
    for arg in opts.images:
        _check_name(arg.name, f"{arg.image}: --name")
        name = arg.name or _app_name(arg.image, taken)
        if name in taken:
            raise UsageError(f"two apps are named {name!r}", hint="set --name after each IMAGE")
        taken.add(name)
        apps.append(RuntimeApp(name=name, image=_image_ref(arg.image), mounts=arg.mounts))
    return Pod(apps=tuple(apps), volumes=opts.volumes), opts.name, ManifestFormat.APPC


def _check_name(name: str | None, what: str) -> None:
    """Pod and app names become paths, cgroup and machine names: only AC Names pass."""
    from rktd_units.annotations import AC_NAME_RE

    if name is not None and not AC_NAME_RE.match(name):
        raise UsageError(f"{what} {name!r} is not an AC Name", hint="lower-case letters, digits and dashes")


def _merge_volumes(base: tuple[Volume, ...], extra: tuple[Volume, ...]) -> tuple[Volume, ...]:
    names = {v.name for v in extra}
    return tuple(v for v in base if v.name not in names) + extra


def _app_name(image: str, taken: set[str]) -> str:
    """rkt's default app name: the image name's last path component, made an AC Name."""
    base = image.rstrip("/").rsplit("/", 1)[-1].split(":", 1)[0].split(",", 1)[0]
    for suffix in (".aci", ".tar", ".gz"):
        base = base.removesuffix(suffix)
    base = "".join(c if c.isalnum() else "-" for c in base.lower()).strip("-") or "app"
    name, n = base, 1
    while name in taken:
        n += 1
        name = f"{base}-{n}"
    return name


def _is_fetchable(image: str) -> bool:
    return "://" in image or image.startswith((".", "/")) or image.endswith(".aci")


def _image_ref(image: str) -> ImageRef:
    """`sha512-…` is an ID; `name:version` and `name,label=value,…` carry labels (rkt's syntax)."""
    if image.startswith("sha512-"):
        return ImageRef(id=image)
    if _is_fetchable(image):
        return ImageRef(name=image)
    name, *pairs = image.split(",")
    labels = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UsageError(f"image {image!r}: label {pair!r} is not NAME=VALUE")
        labels.append(NameValue(key, value))
    if ":" in name:
        name, version = name.rsplit(":", 1)
        labels.append(NameValue("version", version))
    return ImageRef(name=name, labels=tuple(labels))


# -- images ------------------------------------------------------------------------------------------


def resolve_images(pod: Pod, opts: RunOptions) -> list[Resolved]:
    from rktd_units.store import Store

    store = Store(opts.data_dir)
    out = []
    for ra in pod.apps:
        info = _find_image(store, ra.image, opts)
        layers = _layers(store, info, opts)
        ids = tuple(layer.id for layer in reversed(layers))
        if info.manifest.path_whitelist:  # only the whitelisted paths: one rendered tree, made once
            lowers: tuple[Path, ...] = (store.rendered(layers),)
        else:
            lowers = tuple(store.rootfs_of(layer) for layer in reversed(layers))
        out.append(Resolved(ra, info.id, info.manifest, lowers[0], lowers, ids))
    return out


def _layers(store: Any, info: Any, opts: RunOptions) -> list[Any]:
    """The image and its dependencies, bottom first; a dependency the store lacks is fetched as an
    image named on the command line would be (pull policy, --insecure-options), or named in the error."""
    from rktd_units.store import MissingDependency

    tried: set[str] = set()
    while True:
        try:
            return list(store.layers(info))
        except MissingDependency as e:
            if opts.pull_policy == "never" or e.wanted in tried:
                raise
            tried.add(e.wanted)
            ref = ImageRef(name=e.dependency.image_name, labels=e.dependency.labels)
            try:
                _find_image(store, ref, opts, fetch_plain=True)
            except ImageError as err:
                raise ImageError(f"dependency {e.wanted} of {e.of}: {err.message}", hint=err.hint) from None


def _find_image(store: Any, ref: ImageRef, opts: RunOptions, *, fetch_plain: bool = False) -> Any:
    """The store's image for `ref`: a plain name is looked up here first (the fast, usual path);
    anything else, or a name not in the store, goes to the fetcher with the pull policy
    (`fetch_plain`: the store was just asked, go to the fetcher for a plain name)."""
    if ref.id:
        return store.get(ref.id)
    assert ref.name is not None
    plain = not _is_fetchable(ref.name) and not ref.is_docker
    if plain and opts.pull_policy != "update" and not fetch_plain:
        found = store.find_verified(
            ref.name, {label.name: label.value for label in ref.labels}, insecure=opts.insecure
        )
        if found is not None:
            return found
        if opts.pull_policy == "never":
            raise ImageError(f"image {ref.name} is not in the store", hint="rktd fetch it, or allow pulling")
    from rktd_units import fetch
    from rktd_units.trust import KeyStore

    keys = KeyStore(opts.local_config, opts.system_config)
    common = {"store": store, "keys": keys, "insecure": opts.insecure, "pull_policy": opts.pull_policy}
    if ref.is_docker or plain:
        return fetch.fetch_ref(ref, **common)
    return fetch.fetch(ref.name, **common)  # a path or URL


def final_manifest(resolved: Sequence[Resolved], pod: Pod, kind: ManifestFormat) -> Pod:
    """The pod manifest as run: every image pinned by ID, every app spelled out (rkt's `pod` file).

    An appc app replaces its image's app; a Kubernetes container overrides only what it sets."""
    apps = []
    for r in resolved:
        image = ImageRef(name=r.manifest.name, id=r.image_id, labels=r.manifest.labels)
        if kind is ManifestFormat.KUBERNETES:
            from rktd_units.formats.kube import merge_image_app

            app = merge_image_app(r.app.app, r.manifest.app)
        else:
            app = r.app.app or r.manifest.app
        apps.append(replace(r.app, image=image, app=app))
    return replace(pod, apps=tuple(apps))


# -- what stage1 runs: one app ---------------------------------------------------------------------


def app_spec(r: Resolved, ra: RuntimeApp, pod: Pod, opts: RunOptions, pod_path: Path) -> dict[str, Any]:
    """One app of stage1.json: everything resolved to what the kernel takes (paths, numbers)."""
    arg = _image_arg_for(ra.name, opts, pod)
    app = ra.app or App()
    exec_ = _exec(app, arg, ra.name)
    layers = r.layers or (r.rootfs,)
    uid, home = resolve_user(layers, (arg and arg.user) or app.user)
    gid = resolve_group(layers, (arg and arg.group) or app.group)
    merged = {i.name: i.value for i in (*pod.isolators, *app.isolators)}  # the app's override the pod's
    isolators = _isolators(merged, arg)
    isolators["image_caps"] = _retain_from_image(r, app, arg)
    isolators.update(_exec_isolators(merged, ra.name, opts))
    env = _environment(app, arg, opts, ra.name, home)
    socket_ports = [port.name for a, port, _ in pod.socket_activated_ports() if a.name == ra.name]
    read_only = arg.readonly_rootfs if arg and arg.readonly_rootfs is not None else ra.read_only_rootfs
    return {
        "name": ra.name,
        "image_name": r.manifest.name,
        "image_id": r.image_id,
        "lower": str(r.rootfs),
        "lowers": [str(p) for p in layers],
        "layer_ids": list(r.layer_ids or (r.image_id,)),
        "read_only_rootfs": read_only,
        "exec": exec_,
        "env": sorted(env.items()),
        "uid": uid,
        "gid": gid,
        "gids": list(
            arg.supplementary_gids if arg and arg.supplementary_gids is not None else app.supplementary_gids
        ),
        "workdir": (arg and arg.working_dir) or app.working_directory or "/",
        "mounts": _mounts(r, ra, app, pod, pod_path),
        "ports": [
            {"name": p.name, "port": p.port, "protocol": str(p.protocol), "socket": p.socket_activated}
            for p in app.ports
        ],
        "socket_ports": socket_ports,
        "notify": r.manifest.annotation(NOTIFY_ANNOTATION) == "true",
        "pre_start": [list(h.exec) for h in app.event_handlers if h.name == "pre-start"],
        "post_stop": [list(h.exec) for h in app.event_handlers if h.name == "post-stop"],
        **isolators,
    }


def _image_arg_for(name: str, opts: RunOptions, pod: Pod) -> ImageArg | None:
    if opts.pod_manifest:
        return None
    index = [a.name for a in pod.apps].index(name)
    return opts.images[index]


def _exec(app: App, arg: ImageArg | None, name: str) -> list[str]:
    exec_ = list(app.exec)
    if arg is not None:
        if arg.exec:
            exec_ = [arg.exec, *(arg.args or ())]
        elif arg.args is not None:
            exec_ = [*exec_[:1], *arg.args]
    if not exec_:
        raise PodError(f"app {name}: nothing to execute", hint="the image has no app.exec: give --exec")
    return exec_


_MANAGER_ENV = frozenset(
    ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "INVOCATION_ID", "JOURNAL_STREAM")
)


def _environment(app: App, arg: ImageArg | None, opts: RunOptions, name: str, home: str) -> dict[str, str]:
    env: dict[str, str] = {}
    if opts.inherit_env:  # stage0's own environment, less what systemd meant for stage0 itself
        env = {k: v for k, v in opts.environ.items() if k not in _MANAGER_ENV}
    env.update({e.name: e.value for e in app.environment})
    env.update({e.name: e.value for e in opts.set_env})
    if arg is not None:
        env.update({e.name: e.value for e in arg.environment})
    if opts.interactive and "TERM" in opts.environ:
        env.setdefault("TERM", opts.environ["TERM"])
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("HOME", home)
    env["AC_APP_NAME"] = name
    return env


def _in_layers(rootfs: Path | Sequence[Path], path: str) -> str:
    """`path` in the topmost layer (top first) that has it, as the overlay shows it; else in the top one."""
    from rktd_units.stage1 import resolve_in_root

    layers = [rootfs] if isinstance(rootfs, Path) else list(rootfs)
    for layer in layers:
        found = resolve_in_root(str(layer), path)
        if os.path.lexists(found):
            return found
    return resolve_in_root(str(layers[0]), path)


def _passwd(rootfs: Path | Sequence[Path], name: str) -> list[list[str]]:
    from rktd_units.pods import read_regular

    try:  # a regular file only: an image's FIFO there must not hang stage0, nor a huge file fill memory
        text = read_regular(Path(_in_layers(rootfs, f"/etc/{name}")), MAX_PASSWD)
    except OSError:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


MAX_PASSWD = 4 << 20  # bytes of an image's /etc/passwd or /etc/group worth reading


def resolve_user(rootfs: Path | Sequence[Path], user: str) -> tuple[int, str]:
    """appc `user`: a number, a name in the image's /etc/passwd, or a path whose owner it is."""
    entries = _passwd(rootfs, "passwd")
    if user.isdigit():
        uid = int(user)
        home = next((e[5] for e in entries if len(e) > 5 and e[2] == user), "/root" if uid == 0 else "/")
        return uid, home
    if user.startswith("/"):
        return os.stat(_in_layers(rootfs, user)).st_uid, "/"
    for e in entries:
        if len(e) > 5 and e[0] == user and e[2].isdigit():
            return int(e[2]), e[5]
    raise PodError(f"user {user!r} not found in the image's /etc/passwd", hint="give a number")


def resolve_group(rootfs: Path | Sequence[Path], group: str) -> int:
    if group.isdigit():
        return int(group)
    if group.startswith("/"):
        return os.stat(_in_layers(rootfs, group)).st_gid
    for e in _passwd(rootfs, "group"):
        if len(e) > 2 and e[0] == group and e[2].isdigit():
            return int(e[2])
    raise PodError(f"group {group!r} not found in the image's /etc/group", hint="give a number")


def _mounts(r: Resolved, ra: RuntimeApp, app: App, pod: Pod, pod_path: Path) -> list[dict[str, Any]]:
    """Each mount as {source on the host, target in the app, read_only}; rkt's implicit volumes for
    mount points nothing mounts (a pod volume of the same name, else an empty one)."""
    volumes = {v.name: v for v in pod.volumes}
    points = {mp.name: mp for mp in app.mount_points}
    out = []
    done: set[str] = set()
    for m in ra.mounts:
        vol = m.app_volume or volumes.get(m.volume)
        if vol is None:
            raise PodError(f"app {ra.name}: mount of unknown volume {m.volume!r}", hint="add --volume")
        point = points.get(m.path)
        target = point.path if point is not None and not m.path.startswith("/") else m.path
        if not target.startswith("/"):
            raise PodError(f"app {ra.name}: mount target {m.path!r} is neither a path nor a mount point")
        ro = bool(vol.read_only) or bool(point and point.read_only)
        out.append({"source": _volume_source(vol, pod_path), "target": target, "read_only": ro})
        done.add(target)
        if point is not None:
            done.add(point.path)
    for mp in app.mount_points:
        if mp.path in done:
            continue
        vol = volumes.get(mp.name) or Volume(mp.name, VolumeKind.EMPTY)
        ro = bool(vol.read_only) or mp.read_only
        out.append({"source": _volume_source(vol, pod_path), "target": mp.path, "read_only": ro})
    return out


def _volume_source(vol: Volume, pod_path: Path) -> str:
    if vol.kind == VolumeKind.HOST:
        if not vol.source or not os.path.exists(vol.source):
            raise PodError(f"volume {vol.name}: host path {vol.source!r} does not exist")
        return vol.source
    path = pod_path / "volumes" / vol.name
    if not path.exists():
        path.mkdir(parents=True)
        os.chmod(path, int(vol.mode or "0755", 8))
        os.chown(path, vol.uid or 0, vol.gid or 0)
    return f"volumes/{vol.name}"  # relative: the pod directory moves between states


_SUFFIXES = {
    "k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}  # fmt: skip


def parse_quantity(text: str, *, millis: bool = False) -> int:
    """A Kubernetes-style quantity: bytes (`512M`, `1Gi`), or with `millis` CPU millicores (`500m`)."""
    text = str(text).strip()
    try:
        if text.endswith("m") and millis:
            return int(float(text[:-1]))
        for suffix in sorted(_SUFFIXES, key=len, reverse=True):
            if text.endswith(suffix):
                return int(float(text[: -len(suffix)]) * _SUFFIXES[suffix])
        value = float(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a quantity (e.g. 512M, 1Gi, 500m)") from None
    return int(value * 1000) if millis else int(value)


def _sysctls(pod: Pod, net: str, flavour: str) -> dict[str, str]:
    """The pod's `os/unix/sysctl` isolators (pod-wide, and the apps'), set by the pod's init.
    Only namespaced ones can work, so a pod on the host network (or fly) may not set any."""
    out: dict[str, str] = {}
    for iso in (*pod.isolators, *(i for ra in pod.apps for i in (ra.app.isolators if ra.app else ()))):
        if iso.name == "os/unix/sysctl" and isinstance(iso.value, dict):
            out.update(iso.value)
    if out and (flavour == "fly" or net == "host"):
        raise UsageError(
            f"sysctls ({', '.join(sorted(out))}) need a pod network namespace",
            hint="they would change the host: use --net=none or a CNI network, and stage1 nspawn",
        )
    return out


RETAIN_SET = "os/linux/capabilities-retain-set"


def _retain_from_image(r: Resolved, app: App, arg: ImageArg | None) -> bool:
    """Does the app's capability retain set come from its image (not the pod manifest or the command
    line)? Such a set may only narrow the default: stage1 never widens the container's for it."""
    if arg is not None and arg.cap_retain is not None:
        return False
    own = r.app.app  # the pod manifest's app (a Kubernetes container) before the image's is merged in
    if own is not None and any(i.name == RETAIN_SET for i in own.isolators):
        return False
    return any(i.name == RETAIN_SET for i in app.isolators)  # the final app: then it is the image's


_EXEC_ISOLATORS = ("os/linux/seccomp-", "os/linux/oom-", "os/linux/apparmor-", "os/linux/selinux-")


def _exec_isolators(values: dict[str, Any], name: str, opts: RunOptions) -> dict[str, Any]:
    """seccomp, OOM score, AppArmor and SELinux (rktd_units/exec_isolators.py, imported only when a
    pod has one of them), from the app's merged isolator values."""
    if not any(n.startswith(_EXEC_ISOLATORS) for n in values):
        return {}
    from rktd_units.exec_isolators import exec_isolators

    return exec_isolators(values, name, no_seccomp="seccomp" in opts.insecure)


def _isolators(values: dict[str, Any], arg: ImageArg | None) -> dict[str, Any]:
    """The app's merged isolator values (pod's, overridden by the app's), overridden by the command
    line."""
    out: dict[str, Any] = {"memory": None, "cpu_millis": None, "caps_retain": None, "caps_remove": []}
    mem = values.get("resource/memory")
    if isinstance(mem, dict) and mem.get("limit"):
        out["memory"] = parse_quantity(mem["limit"])
    cpu = values.get("resource/cpu")
    if isinstance(cpu, dict) and cpu.get("limit"):
        out["cpu_millis"] = parse_quantity(cpu["limit"], millis=True)
    retain = values.get(RETAIN_SET)
    if isinstance(retain, dict):
        out["caps_retain"] = list(retain.get("set", []))
    remove = values.get("os/linux/capabilities-remove-set")
    if isinstance(remove, dict):
        out["caps_remove"] = list(remove.get("set", []))
    out["no_new_privs"] = values.get("os/linux/no-new-privileges") is True
    if arg is not None:
        if arg.memory:
            out["memory"] = parse_quantity(arg.memory)
        if arg.cpu:
            out["cpu_millis"] = parse_quantity(arg.cpu, millis=True)
        if arg.cap_retain is not None:
            out["caps_retain"] = list(arg.cap_retain)
        if arg.cap_remove:
            out["caps_remove"] = list(arg.cap_remove)
    return out


# -- preparing the pod directory -------------------------------------------------------------------


def prepare(opts: RunOptions, *, durable: bool = True) -> PodDir:
    """Create, fill and return a pod directory in state `prepare`, locked by this process
    (`durable`: fsync its files, for a pod that waits in `prepared` for `run-prepared`)."""
    from rktd_units import annotations

    pod, name, kind = pod_from_options(opts)
    notes = annotations.read({a.name: a.value for a in pod.annotations})
    flavour = opts.stage1 or notes["rktd/stage1"]
    net = opts.net or notes["rktd/net"]
    if flavour == "fly":
        if len(pod.apps) != 1:
            raise UsageError("--stage1=fly runs exactly one app")
        if opts.net not in (None, "host", "default"):
            raise UsageError("--stage1=fly always uses the host network", hint="drop --net")
        net = "host"
    resolved = resolve_images(pod, opts)
    pod = final_manifest(resolved, pod, kind)
    pods = Pods(opts.data_dir)
    pod_dir = pods.create()
    try:
        if opts.uuid_file_save:
            write_atomic(Path(opts.uuid_file_save), f"{pod_dir.uuid}\n".encode(), durable=durable)
        apps = [app_spec(r, ra, pod, opts, pod_dir.path) for r, ra in zip(resolved, pod.apps, strict=True)]
        cfg = {
            "uuid": pod_dir.uuid,
            "name": name,
            "stage1": flavour,
            "created": time.time(),
            "net": net,
            "dns": list(opts.dns or notes["rktd/dns"]),
            "dns_search": list(opts.dns_search or notes["rktd/dns-search"]),
            "dns_opt": list(opts.dns_opt or notes["rktd/dns-opt"]),
            "dns_domain": opts.dns_domain,
            "hosts_entries": list(opts.hosts_entries),
            "hostname": opts.hostname or f"rkt-{pod_dir.uuid}",
            "ports": list(opts.ports),
            "pod_ports": [{"name": p.name, "host_port": p.host_port, "ip": p.host_ip} for p in pod.ports],
            "stop_timeout": notes["rktd/stop-timeout"],
            "interactive": opts.interactive,
            "sysctls": _sysctls(pod, net, flavour),
            # --insecure-options=capabilities: apps keep the container's whole set, seccomp: no filter,
            # paths: the kernel's API file systems (/proc/sys, /sys, ...) stay writable
            "all_caps": "capabilities" in opts.insecure,
            "no_seccomp": "seccomp" in opts.insecure,
            "insecure_paths": "paths" in opts.insecure,
            "apps": apps,
        }
        from rktd_units.formats import appc

        pod_dir.write_atomic(MANIFEST, appc.dump_pod(pod).encode(), durable=durable)
        pod_dir.write_atomic(
            STAGE1_CONFIG, json.dumps(cfg, indent=1, sort_keys=True).encode(), durable=durable
        )
    except BaseException:
        _abandon(pod_dir)
        raise
    return pod_dir


def _abandon(pod_dir: PodDir) -> None:
    try:
        pod_dir.move(State.GARBAGE)
    except PodError:
        pass
    pod_dir.unlock()


# -- running -----------------------------------------------------------------------------------------


def run(opts: RunOptions) -> NoReturn:
    """`rktd run`: prepare and run in one go (prepare → run, skipping `prepared`)."""
    pod_dir = prepare(opts, durable=False)
    exec_prepared(pod_dir, opts)


def run_prepared(opts: RunOptions, ref: str) -> NoReturn:
    pod_dir = Pods(opts.data_dir).find(ref)
    if pod_dir.state != State.PREPARED:
        raise PodError(f"pod {pod_dir.uuid} is {pod_dir.display_state()}, not prepared")
    pod_dir.lock()
    exec_prepared(pod_dir, opts)


def exec_prepared(pod_dir: PodDir, opts: RunOptions) -> NoReturn:
    """Move the locked pod to `run`, set up its network, and exec stage1 holding the lock."""
    from rktd_units.stage1 import exec_stage1

    pod_dir.move(State.RUN)
    pod_dir.write_atomic("pid", f"{os.getpid()}\n".encode(), durable=False)
    cfg = pod_dir.config()
    holds = _hold_images(opts, cfg)
    _setup_network(pod_dir, cfg, opts)
    assert pod_dir.lock_fd is not None
    for fd in (pod_dir.lock_fd, *holds):
        os.set_inheritable(fd, True)
    sys.stdout.flush()
    sys.stderr.flush()
    exec_stage1(pod_dir.path, cfg)


def _hold_images(opts: RunOptions, cfg: dict[str, Any]) -> list[int]:
    """Shared locks on the pod's images and their dependencies, inherited by stage1, so image gc
    leaves them (and a rendering made of them) alone."""
    from rktd_units.store import Store

    store = Store(opts.data_dir)
    ids = {i for app in cfg["apps"] for i in app.get("layer_ids") or (app["image_id"],)}
    return [store.hold(i) for i in sorted(ids)]


def _setup_network(pod_dir: PodDir, cfg: dict[str, Any], opts: RunOptions) -> None:
    net = cfg.get("net") or "default"
    dns_flags = any(cfg.get(k) for k in ("dns", "dns_search", "dns_opt", "dns_domain", "hosts_entries"))
    if net in ("host", "none") and not dns_flags:
        return  # the fast path: nothing to set up (nspawn makes `none` with --private-network)
    from rktd_units import network

    ports = _port_forwards(network, cfg, opts)
    dns = network.DnsOptions(
        servers=tuple(cfg.get("dns") or ()),
        search=tuple(cfg.get("dns_search") or ()),
        options=tuple(cfg.get("dns_opt") or ()),
        domain=cfg.get("dns_domain"),
        hosts_entries=tuple(cfg.get("hosts_entries") or ()),
    )
    result = network.setup(
        pod_dir.uuid,
        pod_dir.path,
        net,
        local_config=Path(opts.local_config),
        ports=ports,
        dns=dns,
        hostname=cfg.get("hostname"),
        data_dir=Path(opts.data_dir) / "networks",
    )
    cfg["netns"] = result.netns_path
    for app in cfg["apps"]:
        _network_files(app, result)  # stage1 writes the config with these before anything reads it


def _network_files(app: dict[str, Any], result: Any) -> None:
    """Mount the network's resolv.conf and hosts into an app, unless a volume covers the path; the
    fallback hosts file only where the image has none (rkt's order: flags, volume, image, fallback)."""
    taken = {m["target"] for m in app["mounts"]}
    for target, source, wanted in (
        ("/etc/resolv.conf", result.resolv_conf, True),
        ("/etc/hosts", result.hosts, result.hosts_source in ("flags", "host")),
    ):
        if source is None or target in taken:
            continue
        in_image = os.path.lexists(
            _in_layers([Path(p) for p in app.get("lowers") or [app["lower"]]], target)
        )
        if not wanted and in_image:
            continue
        if app.get("read_only_rootfs") and not in_image:
            continue  # no mount point, and none can be made in a read-only rootfs
        app["mounts"].append({"source": str(source), "target": target, "read_only": True})


def _port_forwards(network: Any, cfg: dict[str, Any], opts: RunOptions) -> list[Any]:
    """`--port=NAME:[IP:]PORT` (and the manifest's ports) → forwards to the app port of that name."""
    app_ports = {p["name"]: p for app in cfg["apps"] for p in app.get("ports", [])}
    out = []
    for flag in cfg.get("ports", []):
        name, ip, host_port = network.parse_port_flag(flag)
        port = app_ports.get(name)
        if port is None:
            raise UsageError(f"--port={flag}: no app declares a port named {name!r}")
        out.append(network.PortForward(host_port, port["port"], port["protocol"], ip, name))
    for pp in cfg.get("pod_ports", []):
        port = app_ports.get(pp["name"])
        if port is None or port.get("socket"):
            continue  # a socket-activated port: systemd listens on the host port and passes the fd
        if pp["name"] not in {p.name for p in out}:
            out.append(
                network.PortForward(pp["host_port"], port["port"], port["protocol"], pp["ip"], pp["name"])
            )
    return out
