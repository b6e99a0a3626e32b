"""appc (spec 0.8.11) PodManifest and ImageManifest: JSON <-> `rktd_units.model`.

Every JSON object is declared once as a table of `schema.Key`s (appc spelling, model attribute,
parser, dumper); loading, unknown-key checks and canonical dumping are derived from those tables.

Decisions, where the spec or rkt's Go decoder left room:
- Keys match case-insensitively, as Go's encoding/json did (`supplementaryGids` is
  `supplementaryGIDs`), but unknown keys are errors (Go dropped them silently; that hides typos),
  and a key given twice (in any spelling) is an error. `null` means "absent", as rkt wrote it.
- Strings may not contain NUL or unpaired surrogates: nothing in a pod can carry them.
- A pod's `apps[].image.id` is `sha512-` and 12 to 128 lower-case hex digits: a full ID or a
  prefix of one, resolved in the image store as `rkt image list` IDs were. Image manifests'
  `dependencies[].imageID` follow the Go schema (`sha512-` and any value), as the spec's own
  example uses `sha512-...`.
- `apps[].image.name` may be `docker://REF` (rktd extension) so Kubernetes pods can name
  Docker images.
- Ports' protocol is `tcp` or `udp`; mount and mount-point paths must be absolute; the pod needs
  at least one app; `ports[].podPort` is refused (rktd exposes only ports that apps declare).
- Dumps are canonical: 4-space indented JSON, keys in the spec's order, defaults left out,
  free-form maps (`userAnnotations`, `userLabels`, `os/unix/sysctl`) sorted, trailing newline.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence

from rktd_units import annotations as rktd_annotations
from rktd_units.errors import ManifestError
from rktd_units.formats.schema import (
    Key,
    abs_path,
    boolean,
    check_dups,
    constant,
    decode_json,
    describe,
    dump_list,
    dump_members,
    dump_string_map,
    dumper,
    fail,
    index,
    integer,
    join,
    list_of,
    matching,
    members,
    nonempty,
    object_of,
    string,
    string_map,
    unique,
)
from rktd_units.frozen import frozen
from rktd_units.model import (
    App,
    Dependency,
    EventHandler,
    ImageManifest,
    ImageRef,
    Isolator,
    MountPoint,
    NameValue,
    Pod,
    PodPort,
    Port,
    Protocol,
    RuntimeApp,
    Volume,
    VolumeKind,
)
from rktd_units.model import Mount as PodMount
from rktd_units.names import AC_IDENTIFIER_RE, AC_NAME_RE

TYPE_CHECKING = False  # typing costs a fifth of an interpreter start: only for mypy (STYLE.md 13)
if TYPE_CHECKING:
    from typing import Any

    from rktd_units.formats.schema import Parser

AC_VERSION = "0.8.11"
_SEMVER_RE = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(-(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*)(\.(0|[1-9][0-9]*|[0-9]*[a-zA-Z-][0-9a-zA-Z-]*))*)?"
    r"(\+[0-9a-zA-Z-]+(\.[0-9a-zA-Z-]+)*)?\Z"
)
_POD_IMAGE_ID_RE = re.compile(r"^sha512-[0-9a-f]{12,128}\Z")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z_0-9.-]*\Z")
_OCTAL_MODE_RE = re.compile(r"^0?[0-7]{3,4}\Z")
_DOCKER_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOCKER_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# Patterns few manifests need stay strings, compiled by re on first use: compiling every one at
# import would cost the generator at every boot (STYLE.md 13).
_DOCKER_REF = (
    rf"^(?:{_DOCKER_LABEL}(?:\.{_DOCKER_LABEL})*(?::[0-9]{{1,5}})?/)?"
    rf"{_DOCKER_COMPONENT}(?:/{_DOCKER_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?\Z"
)
_QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)([KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?\Z"
_RFC3339 = r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))\Z"
_CAPABILITY = r"^CAP_[A-Z0-9_]+\Z"
_ERRNO = r"^E[A-Z0-9]*\Z"
_VALID_OS_ARCH = {
    "linux": (
        "amd64",
        "i386",
        "aarch64",
        "aarch64_be",
        "armv6l",
        "armv7l",
        "armv7b",
        "ppc64",
        "ppc64le",
        "s390x",
    ),
    "freebsd": ("amd64", "i386", "arm"),
    "darwin": ("x86_64", "i386"),
}


# ---------------------------------------------------------------------------------------------
# Scalars


_ac_name = matching(AC_NAME_RE, "an AC Name", "lower-case letters, digits and single dashes, e.g. my-app")
_ac_identifier = matching(
    AC_IDENTIFIER_RE,
    "an AC Identifier",
    "lower-case letters, digits and -._~/ between them, e.g. example.com/app",
)


_semver_syntax = matching(_SEMVER_RE, "a semantic version", "e.g. 0.8.11")


def _semver(value: object, field: str) -> str:
    s: str = _semver_syntax(value, field)
    if s.split("+")[0].split("-")[0] == "0.0.0":
        raise fail(field, "must not be 0.0.0", f"e.g. {AC_VERSION}")
    if not s.startswith("0."):
        raise fail(field, f"appc {s} is not compatible with appc {AC_VERSION}", "use 0.x, e.g. 0.8.11")
    return s


def _image_name(value: object, field: str) -> str:
    s = string(value, field)
    if s.startswith("docker://"):
        ref = s[len("docker://") :]
        if len(ref) > 255 or not re.fullmatch(_DOCKER_REF, ref):
            raise fail(field, f"{s!r} is not a Docker image reference", "e.g. docker://busybox:1.36")
        return s
    return str(_ac_identifier(s, field))


_pod_image_id = matching(_POD_IMAGE_ID_RE, "an image ID", "sha512- and 12 to 128 lower-case hex digits")


def _hash(value: object, field: str) -> str:
    s = string(value, field)
    algo, sep, digest = s.partition("-")
    if algo != "sha512" or not sep or not digest or "-" in digest:
        raise fail(field, f"{s!r} is not an image ID", "sha512-HEX")
    return s


def _ip(value: object, field: str) -> str:
    import ipaddress  # only when a manifest has a hostIP: start-up time matters (STYLE.md 13)

    s = string(value, field)
    if "%" in s:  # Python takes any text as an IPv6 zone, and it would reach unit files and iptables
        raise fail(field, f"{s!r} is a scoped address (%ZONE): not supported", "e.g. 127.0.0.1 or fd00::1")
    try:
        ipaddress.ip_address(s)
    except ValueError:
        raise fail(field, f"{s!r} is not an IP address", "e.g. 127.0.0.1") from None
    return s


_env_name = matching(_ENV_NAME_RE, "an environment variable name", "letters, digits, _ . -")


# ---------------------------------------------------------------------------------------------
# Labels, annotations, environment


def _name_values(name: Parser, *, what: str) -> Callable[[object, str], tuple[NameValue, ...]]:
    keys = (Key("name", "name", name, required=True), Key("value", "value", string, required=True))
    items_of = list_of(object_of(NameValue, keys))

    def parse(value: object, field: str) -> tuple[NameValue, ...]:
        items = items_of(value, field)
        unique(items, lambda nv: nv.name, field, "name", f"{what} name")
        return items

    return parse


def _dump_name_values(values: tuple[NameValue, ...]) -> list[dict[str, str]]:
    return [{"name": nv.name, "value": nv.value} for nv in values]


_label_list = _name_values(_ac_identifier, what="label")
_annotation_list = _name_values(_ac_identifier, what="annotation")


def _labels(value: object, field: str) -> tuple[NameValue, ...]:
    labels = _label_list(value, field)
    by_name = {}
    for i, nv in enumerate(labels):
        if nv.name == "name":
            raise fail(
                f"{field}[{i}].name", "a label cannot be called 'name'", "the image name is not a label"
            )
        by_name[nv.name] = i
    if "os" in by_name:
        os_name = labels[by_name["os"]].value
        arches = _VALID_OS_ARCH.get(os_name)
        if arches is None:
            raise fail(
                f"{field}[{by_name['os']}].value",
                f"unknown os {os_name!r}",
                "one of " + ", ".join(sorted(_VALID_OS_ARCH)),
            )
        if "arch" in by_name and labels[by_name["arch"]].value not in arches:
            arch = labels[by_name["arch"]].value
            raise fail(
                f"{field}[{by_name['arch']}].value",
                f"unknown arch {arch!r} for {os_name}",
                "one of " + ", ".join(arches),
            )
    return labels


def _annotations(value: object, field: str) -> tuple[NameValue, ...]:
    items = _annotation_list(value, field)
    for i, nv in enumerate(items):
        where = f"{field}[{i}].value"
        if nv.name == "created":
            _rfc3339(nv.value, where)
        elif nv.name in ("homepage", "documentation"):
            from urllib.parse import urlsplit  # (with ipaddress) only for these annotations: STYLE.md 13

            try:
                scheme = urlsplit(nv.value).scheme
            except ValueError:
                scheme = ""
            if scheme not in ("http", "https"):
                raise fail(where, f"{nv.value!r} is not an http or https URL")
    return items


def _rfc3339(value: str, field: str) -> None:
    import datetime  # only for a `created` annotation

    m = re.fullmatch(_RFC3339, value)
    try:
        if not m:
            raise ValueError(value)
        y, mo, d, h, mi, s = (int(m.group(i)) for i in range(1, 7))
        datetime.datetime(y, mo, d, h, mi, min(s, 59))  # a leap second (60) is allowed
        if s > 60 or (m.group(9) and (int(m.group(9)) > 23 or int(m.group(10)) > 59)):
            raise ValueError(value)
    except ValueError:
        raise fail(field, f"{value!r} is not an RFC 3339 date", "e.g. 2026-01-31T12:00:00Z") from None


_environment = _name_values(_env_name, what="environment variable")


# ---------------------------------------------------------------------------------------------
# Isolators: one entry per known isolator name, each with the parser of its value's shape.


def _quantity(value: object, field: str) -> str | int:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise fail(field, "must not be negative")
        return value
    s = string(value, field)
    if not re.fullmatch(_QUANTITY, s):
        raise fail(field, f"{s!r} is not a quantity", "e.g. 512M, 1Gi, 500m, 2")
    return s


_RESOURCE_KEYS = (
    Key("limit", "limit", _quantity),
    Key("request", "request", _quantity),
    Key("default", "default", boolean),
)


def _resource(*, default: bool) -> Parser:
    """appc resource isolators: cpu and memory take limit/request; bandwidths need default=true."""

    def parse(value: object, field: str) -> dict[str, Any]:
        m = members(value, field, _RESOURCE_KEYS)
        if m.get("default", False) != default:
            raise fail(join(field, "default"), "must be true" if default else "must be false or absent")
        if default and "request" in m:
            raise fail(join(field, "request"), "is not supported by this resource", "give only a limit")
        if "limit" not in m and ("request" not in m or default):
            raise fail(
                join(field, "limit"), "is required" if default else "a limit or a request is required"
            )
        return {k.name: m[k.attr] for k in _RESOURCE_KEYS if k.attr in m}

    return parse


def _set_of(item: Parser) -> Parser:
    keys = (Key("set", "set", list_of(item, nonempty=True), required=True),)

    def parse(value: object, field: str) -> dict[str, Any]:
        return {"set": list(members(value, field, keys)["set"])}

    return parse


_capability = matching(_CAPABILITY, "a capability name", "e.g. CAP_NET_BIND_SERVICE")
_syscall = matching(
    r"^-?@?[A-Za-z0-9_./-]+\Z",
    "a syscall or syscall group",
    "e.g. reboot or @rkt/default-whitelist",
)
_SECCOMP_KEYS = (
    Key("set", "set", list_of(_syscall, nonempty=True), required=True),
    Key("errno", "errno", matching(_ERRNO, "an errno name", "e.g. EPERM")),
)


def _seccomp(value: object, field: str) -> dict[str, Any]:
    m = members(value, field, _SECCOMP_KEYS)
    out: dict[str, Any] = {"set": list(m["set"])}
    if "errno" in m:
        out["errno"] = m["errno"]
    return out


def _no_colon(value: object, field: str) -> str:
    s = nonempty(value, field)
    if ":" in s:
        raise fail(field, f"{s!r} must not contain ':'")
    return s


_SELINUX_KEYS = (
    Key("user", "user", _no_colon, required=True),
    Key("role", "role", _no_colon, required=True),
    Key("type", "type", _no_colon, required=True),
    Key("level", "level", nonempty, required=True),
)
_APPARMOR_KEYS = (Key("profile", "profile", nonempty, required=True),)


def _fields_of(keys: Sequence[Key]) -> Parser:
    def parse(value: object, field: str) -> dict[str, Any]:
        m = members(value, field, keys)
        return {k.name: m[k.attr] for k in keys if k.attr in m}

    return parse


def _sysctl(value: object, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise fail(field, f"must be an object, not {describe(value)}")
    check_dups(value, field)
    out = {}
    for key in sorted(value):
        if not re.fullmatch(r"[A-Za-z0-9_.\-/]+", key):
            raise fail(index(field, key), f"{key!r} is not a sysctl name", "e.g. net.ipv4.tcp_fin_timeout")
        out[key] = string(value[key], index(field, key))
    return out


@frozen
class IsolatorKind:
    """A known isolator: the parser of its value, and how it combines with others in one list."""

    name: str
    parse: Parser
    multiple: bool = False  # may the same isolator appear more than once in one list?
    conflicts: tuple[str, ...] = ()


ISOLATORS: tuple[IsolatorKind, ...] = (
    IsolatorKind("resource/cpu", _resource(default=False), multiple=True),
    IsolatorKind("resource/memory", _resource(default=False), multiple=True),
    IsolatorKind("resource/block-bandwidth", _resource(default=True), multiple=True),
    IsolatorKind("resource/block-iops", _resource(default=True), multiple=True),
    IsolatorKind("resource/network-bandwidth", _resource(default=True), multiple=True),
    IsolatorKind("os/linux/capabilities-retain-set", _set_of(_capability), multiple=True),
    IsolatorKind("os/linux/capabilities-remove-set", _set_of(_capability), multiple=True),
    IsolatorKind("os/linux/no-new-privileges", boolean, multiple=True),
    IsolatorKind("os/linux/seccomp-retain-set", _seccomp, conflicts=("os/linux/seccomp-remove-set",)),
    IsolatorKind("os/linux/seccomp-remove-set", _seccomp, conflicts=("os/linux/seccomp-retain-set",)),
    IsolatorKind("os/linux/oom-score-adj", integer(-1000, 1000)),
    IsolatorKind("os/linux/cpu-shares", integer(2, 262144)),
    IsolatorKind("os/linux/selinux-context", _fields_of(_SELINUX_KEYS)),
    IsolatorKind("os/linux/apparmor-profile", _fields_of(_APPARMOR_KEYS)),
    IsolatorKind("os/unix/sysctl", _sysctl),
)
ISOLATOR_BY_NAME = {k.name: k for k in ISOLATORS}

_ISOLATOR_KEYS = (
    Key("name", "name", _ac_identifier, required=True),
    Key("value", "value", lambda value, field: value, required=True),
)


def _isolator(value: object, field: str) -> Isolator:
    m = members(value, field, _ISOLATOR_KEYS)
    kind = ISOLATOR_BY_NAME.get(m["name"])
    if kind is None:
        known = ", ".join(sorted(ISOLATOR_BY_NAME))
        raise fail(join(field, "name"), f"unknown isolator {m['name']!r}", f"known: {known}")
    return Isolator(kind.name, kind.parse(m["value"], join(field, "value")))


_isolator_list = list_of(_isolator)


def _isolators(value: object, field: str) -> tuple[Isolator, ...]:
    items = _isolator_list(value, field)
    seen: set[str] = set()
    for i, iso in enumerate(items):
        kind = ISOLATOR_BY_NAME[iso.name]
        if iso.name in seen and not kind.multiple:
            raise fail(f"{field}[{i}].name", f"{iso.name} may be given only once")
        for other in kind.conflicts:
            if other in seen:
                raise fail(
                    f"{field}[{i}].name", f"{iso.name} conflicts with {other}", "keep only one of them"
                )
        seen.add(iso.name)
    return items


def _dump_isolator(iso: Isolator) -> dict[str, Any]:
    return {"name": iso.name, "value": iso.value}


# ---------------------------------------------------------------------------------------------
# App (shared by pod and image manifests)


def _event_name(value: object, field: str) -> str:
    s = string(value, field)
    if s not in ("pre-start", "post-stop"):
        raise fail(field, f"{s!r} is not an event handler name", "pre-start or post-stop")
    return s


_strings = list_of(string)


def _exec(value: object, field: str) -> tuple[str, ...]:
    argv = _strings(value, field)
    if argv and not argv[0]:
        raise fail(f"{field}[0]", "the program must not be empty")
    return argv


_EVENT_HANDLER_KEYS = (
    Key("name", "name", _event_name, required=True),
    Key("exec", "exec", list_of(string, nonempty=True), required=True),
)
_MOUNT_POINT_KEYS = (
    Key("name", "name", _ac_name, required=True),
    Key("path", "path", abs_path, required=True),
    Key("readOnly", "read_only", boolean),
)
_PORT_KEYS = (
    Key("name", "name", _ac_name, required=True),
    Key("protocol", "protocol", matching(re.compile(r"tcp|udp"), "a protocol", "tcp or udp"), str, True),
    Key("port", "port", integer(1, 65535), required=True),
    Key("count", "count", integer(1, 65535)),
    Key("socketActivated", "socket_activated", boolean),
)


def _port(value: object, field: str) -> Port:
    m = members(value, field, _PORT_KEYS)
    port = Port(**{**m, "protocol": Protocol(m["protocol"])})
    if port.port + port.count > 65536:
        raise fail(join(field, "count"), f"ports {port.port}+{port.count} run past 65535")
    return port


_GID = integer(0, 4294967294)
APP_KEYS: tuple[Key, ...] = (
    Key("exec", "exec", _exec),
    Key(
        "eventHandlers",
        "event_handlers",
        list_of(object_of(EventHandler, _EVENT_HANDLER_KEYS)),
        dump_list(dumper(_EVENT_HANDLER_KEYS)),
    ),
    Key("user", "user", nonempty, required=True, always=True),
    Key("group", "group", nonempty, required=True, always=True),
    Key("supplementaryGIDs", "supplementary_gids", list_of(_GID)),
    Key("workingDirectory", "working_directory", abs_path),
    Key("environment", "environment", _environment, _dump_name_values),
    Key(
        "mountPoints",
        "mount_points",
        list_of(object_of(MountPoint, _MOUNT_POINT_KEYS)),
        dump_list(dumper(_MOUNT_POINT_KEYS)),
    ),
    Key("ports", "ports", list_of(_port), dump_list(dumper(_PORT_KEYS))),
    Key("isolators", "isolators", _isolators, dump_list(_dump_isolator)),
    Key("userAnnotations", "user_annotations", string_map, dump_string_map),
    Key("userLabels", "user_labels", string_map, dump_string_map),
)


def parse_app(obj: object, field: str) -> App:
    """Parse an appc App object (pod `apps[].app` or image `app`); errors name `field`."""
    app = App(**members(obj, field, APP_KEYS))
    unique(app.event_handlers, lambda e: e.name, join(field, "eventHandlers"), "name", "event handler")
    unique(app.mount_points, lambda m: m.name, join(field, "mountPoints"), "name", "mount point name")
    unique(app.ports, lambda p: p.name, join(field, "ports"), "name", "port name")
    return app


def dump_app(app: App) -> dict[str, Any]:
    """The appc JSON object of an App (canonical: spec key order, defaults left out)."""
    return dump_members(app, APP_KEYS)


# ---------------------------------------------------------------------------------------------
# Pod manifest


_VOLUME_KEYS = (
    Key("name", "name", _ac_name, required=True),
    Key("kind", "kind", matching(re.compile(r"host|empty"), "a volume kind", "host or empty"), str, True),
    Key("source", "source", abs_path),
    Key("readOnly", "read_only", boolean),
    Key("recursive", "recursive", boolean),
    Key("mode", "mode", matching(_OCTAL_MODE_RE, "an octal mode", 'e.g. "0755"')),
    Key("uid", "uid", _GID),
    Key("gid", "gid", _GID),
)


def _volume(value: object, field: str) -> Volume:
    m = members(value, field, _VOLUME_KEYS)
    vol = Volume(**{**m, "kind": VolumeKind(m["kind"])})
    if vol.kind is VolumeKind.HOST:
        if vol.source is None:
            raise fail(
                join(field, "source"), "is required for a host volume", "an absolute path on the host"
            )
        for attr, name in (("mode", "mode"), ("uid", "uid"), ("gid", "gid")):
            if getattr(vol, attr) is not None:
                raise fail(join(field, name), "is only for empty volumes")
    elif vol.source is not None:
        raise fail(join(field, "source"), "is only for host volumes")
    return vol


_dump_volume = dumper(_VOLUME_KEYS)
_MOUNT_KEYS = (
    Key("volume", "volume", _ac_name, required=True),
    Key("path", "path", abs_path, required=True),
    Key("appVolume", "app_volume", _volume, _dump_volume),
)
_IMAGE_KEYS = (
    Key("name", "name", _image_name),
    Key("id", "id", _pod_image_id),
    Key("labels", "labels", _labels, _dump_name_values),
)


def _image(value: object, field: str) -> ImageRef:
    ref = ImageRef(**members(value, field, _IMAGE_KEYS))
    if ref.name is None and ref.id is None:
        raise fail(join(field, "name"), "an image needs a name or an id", "e.g. example.com/app")
    return ref


_RUNTIME_APP_KEYS = (
    Key("name", "name", _ac_name, required=True),
    Key("image", "image", _image, dumper(_IMAGE_KEYS), required=True),
    Key("app", "app", parse_app, dump_app),
    Key("readOnlyRootFS", "read_only_rootfs", boolean),
    Key("mounts", "mounts", list_of(object_of(PodMount, _MOUNT_KEYS)), dump_list(dumper(_MOUNT_KEYS))),
    Key("annotations", "annotations", _annotations, _dump_name_values),
)


def _refuse_pod_port(value: object, field: str) -> None:
    raise fail(field, "is not supported", "declare the port in the app's ports and map it by name")


_POD_PORT_KEYS = (
    Key("name", "name", _ac_name, required=True),
    Key("hostPort", "host_port", integer(1, 65535), required=True),
    Key("hostIP", "host_ip", _ip),
    Key("podPort", "", _refuse_pod_port),
)
POD_KEYS: tuple[Key, ...] = (
    Key("acKind", "", constant("PodManifest"), required=True),
    Key("acVersion", "ac_version", _semver, required=True, always=True),
    Key(
        "apps",
        "apps",
        list_of(object_of(RuntimeApp, _RUNTIME_APP_KEYS), nonempty=True),
        dump_list(dumper(_RUNTIME_APP_KEYS)),
        required=True,
        always=True,
    ),
    Key("volumes", "volumes", list_of(_volume), dump_list(_dump_volume)),
    Key("isolators", "isolators", _isolators, dump_list(_dump_isolator)),
    Key("annotations", "annotations", _annotations, _dump_name_values),
    Key("ports", "ports", list_of(object_of(PodPort, _POD_PORT_KEYS)), dump_list(dumper(_POD_PORT_KEYS))),
    Key("userAnnotations", "user_annotations", string_map, dump_string_map),
    Key("userLabels", "user_labels", string_map, dump_string_map),
)


def _check_pod(pod: Pod) -> None:
    """Rules across objects: unique names, mounts naming volumes, port names, rktd annotations."""
    unique(pod.apps, lambda a: a.name, "apps", "name", "app name")
    unique(pod.volumes, lambda v: v.name, "volumes", "name", "volume name")
    unique(pod.ports, lambda p: p.name, "ports", "name", "pod port name")
    volumes = {v.name for v in pod.volumes}
    port_names: set[str] = set()
    for i, ra in enumerate(pod.apps):
        for j, mount in enumerate(ra.mounts):
            where = f"apps[{i}].mounts[{j}]"
            if mount.app_volume is not None:
                if mount.app_volume.name != mount.volume:
                    raise fail(f"{where}.appVolume.name", f"must be the mount's volume {mount.volume!r}")
            elif mount.volume not in volumes:
                raise fail(
                    f"{where}.volume",
                    f"no volume named {mount.volume!r}",
                    "declare it in volumes or give an appVolume",
                )
        unique(ra.mounts, lambda m: m.path, f"apps[{i}].mounts", "path", "mount path")
        for j, port in enumerate(ra.app.ports if ra.app else ()):
            if port.name in port_names:
                raise fail(
                    f"apps[{i}].app.ports[{j}].name", f"port name {port.name!r} is used by another app"
                )
            port_names.add(port.name)
    rktd_annotations.read({a.name: a.value for a in pod.annotations}, field_prefix="annotations")


def parse_pod(obj: object) -> Pod:
    """Check and convert a decoded appc PodManifest; ManifestError (without path) on any problem."""
    pod = Pod(**members(obj, "", POD_KEYS))
    _check_pod(pod)
    return pod


def load_pod(data: bytes, path: str) -> Pod:
    """Parse appc PodManifest JSON; any problem raises `ManifestError(path, field, message)`."""
    try:
        return parse_pod(decode_json(data))
    except ManifestError as e:
        raise e.with_path(path) from None


def _to_json(obj: object) -> str:
    return json.dumps(obj, indent=4, ensure_ascii=False) + "\n"


def pod_to_json(pod: Pod) -> dict[str, Any]:
    return dump_members(pod, POD_KEYS, {"acKind": "PodManifest"})


def dump_pod(pod: Pod) -> str:
    """Canonical appc PodManifest JSON (4-space indent, spec key order, defaults left out, newline)."""
    return _to_json(pod_to_json(pod))


# ---------------------------------------------------------------------------------------------
# Image manifest


_DEPENDENCY_KEYS = (
    Key("imageName", "image_name", _ac_identifier, required=True),
    Key("imageID", "image_id", _hash),
    Key("labels", "labels", _labels, _dump_name_values),
    Key("size", "size", integer(0, 2**63 - 1)),
)
IMAGE_MANIFEST_KEYS: tuple[Key, ...] = (
    Key("acKind", "", constant("ImageManifest"), required=True),
    Key("acVersion", "ac_version", _semver, required=True, always=True),
    Key("name", "name", _ac_identifier, required=True),
    Key("labels", "labels", _labels, _dump_name_values),
    Key("app", "app", parse_app, dump_app),
    Key("annotations", "annotations", _annotations, _dump_name_values),
    Key(
        "dependencies",
        "dependencies",
        list_of(object_of(Dependency, _DEPENDENCY_KEYS)),
        dump_list(dumper(_DEPENDENCY_KEYS)),
    ),
    Key("pathWhitelist", "path_whitelist", list_of(abs_path)),
)


def load_image_manifest(data: bytes, path: str) -> ImageManifest:
    """Parse an ACI's `manifest` (appc ImageManifest JSON); problems raise ManifestError(path, ...)."""
    try:
        return ImageManifest(**members(decode_json(data), "", IMAGE_MANIFEST_KEYS))
    except ManifestError as e:
        raise e.with_path(path) from None


def dump_image_manifest(m: ImageManifest) -> str:
    """Canonical appc ImageManifest JSON."""
    return _to_json(dump_members(m, IMAGE_MANIFEST_KEYS, {"acKind": "ImageManifest"}))
