"""Kubernetes v1 Pod YAML <-> `rktd_units.model.Pod`: the subset rktnetes mapped, and nothing silently.

Every Kubernetes field rktd understands is one entry of `FIELDS`; unknown-field checks, the
order of dumped keys and the reference table (`reference()`) derive from it. Any other field is an error
naming its path (`spec.containers[0].livenessProbe: not supported by rktd (supported: ...)`).

The mapping, and the decisions where Kubernetes and appc differ:
- `metadata.name` is the pod name (an AC Name; `load_named` returns it so the caller can compare it
  with the file name's stem). `metadata.labels` are the pod's userLabels; `metadata.annotations`
  its annotations (names must be both Kubernetes keys and AC Identifiers; `rktd/...` ones are checked
  against `rktd_units.annotations`). Annotations and labels are sorted by name.
- `metadata.creationTimestamp` and `status` are ignored: the API server sets them and ignores them
  on create, and `kubectl run --dry-run=client -o yaml` writes them. `metadata.namespace` is an
  error: rktd has no namespaces, and dropping it would move the pod on export.
- containers -> apps; `image` -> `docker://IMAGE`. `command` -> exec, with `args` appended; `args`
  without `command` is an error (it needs the image's entrypoint, which the generator cannot read).
  `$(VAR)` references in command, args and env values are expanded as Kubernetes does; dumping
  escapes every `$` as `$$`, so exports mean what the model means.
- A container that sets nothing an appc `app` holds keeps `app` unset (the image's app runs);
  otherwise the app holds what the container says (user and group "0" unless runAsUser/runAsGroup
  say), and `merge_image_app` is how it overrides the image's app, as Kubernetes means it.
- ports: `name` defaults to PORT-PROTOCOL as docker2aci named them (`80-tcp`); port names are unique
  in the pod (containers share one network namespace, and pod ports find app ports by name);
  `hostPort` (0 = none) and `hostIP` become pod `ports[]`; on the host's network (`hostNetwork`
  or `rktd/net: host`) hostPort must equal containerPort, as Kubernetes requires. SCTP is an error.
- resources: `cpu` and `memory` limits/requests -> `resource/cpu`, `resource/memory` isolators
  holding the quantities as written; a request above its limit is an error.
- capabilities follow the CRI runtimes: start from the default container set (`DEFAULT_CAPS`), add
  ALL / drop ALL first, then the named ones. With `add` given (even `[]`) the result is the exact
  `os/linux/capabilities-retain-set`; with only `drop` it is `os/linux/capabilities-remove-set`
  of the dropped ones (the runtime default minus those, as Kubernetes means it).
- volumes: `hostPath.path` (absolute) -> host volume, `emptyDir: {}` -> empty volume; hostPath
  types, emptyDir media and size limits are errors. volumeMounts -> a mount point named after the
  volume (with readOnly) and a pod mount; a container mounts a volume at most once.
- pod fields -> annotations: `restartPolicy` -> `rktd/restart` (always, on-failure, no; an explicit
  `rktd/restart` annotation refines it and wins), `hostNetwork: true` -> `rktd/net: host`,
  `terminationGracePeriodSeconds` -> `rktd/stop-timeout`, `dnsConfig` (only with `dnsPolicy: None`,
  whose meaning it has: rktd writes the pod's whole resolv.conf) -> `rktd/dns`, `rktd/dns-search`,
  `rktd/dns-opt`. `ClusterFirst` (the default), `ClusterFirstWithHostNet` and `Default` all mean
  rktd's default resolver setup: one host has no cluster DNS, and Kubernetes falls back to
  `Default` without one. A field and an annotation that disagree are an error.

`dump_pod` exports any model (also one read from appc) and raises ManifestError naming the model
field (appc spelling, e.g. `apps[0].image.id`) that Kubernetes cannot express; what it writes loads
back to the same model, up to the defaults Kubernetes makes explicit (`rktd/restart`).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from rktd_units import annotations as rktd_annotations
from rktd_units.errors import ManifestError
from rktd_units.formats.kube_yaml import (
    _at,
    _bool,
    _int,
    _kind,
    _list,
    _map,
    _show,
    _str,
    key_text,
    parse_yaml,
)
from rktd_units.formats.schema import fail as _fail
from rktd_units.model import (
    App,
    ImageRef,
    Isolator,
    Mount,
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
from rktd_units.names import AC_IDENTIFIER_RE, AC_NAME_RE
from rktd_units.stage1.init import CAPABILITIES, DEFAULT_APP_CAPS


@dataclass(frozen=True)
class Field:
    """A Kubernetes Pod field rktd maps; `[]` marks list items."""

    path: str
    meaning: str


FIELDS: tuple[Field, ...] = (
    Field("apiVersion", "must be v1"),
    Field("kind", "must be Pod"),
    Field("metadata", "required"),
    Field("metadata.name", "the pod's name: an AC Name, the file name's stem"),
    Field("metadata.labels", "pod userLabels"),
    Field("metadata.annotations", "pod annotations (names are AC Identifiers; rktd/... ones are checked)"),
    Field("metadata.creationTimestamp", "ignored: set by the API server"),
    Field("spec", "required"),
    Field("spec.containers", "apps, in order (at least one)"),
    Field("spec.containers[].name", "app name (AC Name, unique)"),
    Field("spec.containers[].image", "app image docker://IMAGE"),
    Field("spec.containers[].command", "app exec; $(VAR) expanded"),
    Field("spec.containers[].args", "appended to command (which is then required)"),
    Field("spec.containers[].workingDir", "app workingDirectory (absolute)"),
    Field("spec.containers[].ports", "app ports"),
    Field("spec.containers[].ports[].name", "port name (default PORT-PROTOCOL, e.g. 80-tcp)"),
    Field("spec.containers[].ports[].containerPort", "port number"),
    Field("spec.containers[].ports[].protocol", "TCP (default) or UDP"),
    Field("spec.containers[].ports[].hostPort", "pod ports[].hostPort (0: none)"),
    Field("spec.containers[].ports[].hostIP", "pod ports[].hostIP"),
    Field("spec.containers[].env", "app environment, in order"),
    Field("spec.containers[].env[].name", "variable name"),
    Field("spec.containers[].env[].value", "literal value; $(VAR) expanded"),
    Field("spec.containers[].resources", "isolators"),
    Field("spec.containers[].resources.limits", "cpu, memory: resource/cpu and resource/memory limit"),
    Field("spec.containers[].resources.requests", "cpu, memory: resource/cpu and resource/memory request"),
    Field("spec.containers[].volumeMounts", "app mount points and pod mounts"),
    Field("spec.containers[].volumeMounts[].name", "a volume of spec.volumes"),
    Field("spec.containers[].volumeMounts[].mountPath", "absolute path in the app"),
    Field("spec.containers[].volumeMounts[].readOnly", "mount point readOnly"),
    Field("spec.containers[].securityContext", "user, group, capabilities"),
    Field("spec.containers[].securityContext.runAsUser", "app user"),
    Field("spec.containers[].securityContext.runAsGroup", "app group"),
    Field("spec.containers[].securityContext.readOnlyRootFilesystem", "app readOnlyRootFS"),
    Field("spec.containers[].securityContext.capabilities", "capability isolators"),
    Field("spec.containers[].securityContext.capabilities.add", "-> os/linux/capabilities-retain-set"),
    Field("spec.containers[].securityContext.capabilities.drop", "-> remove-set, or out of the retain-set"),
    Field("spec.volumes", "pod volumes"),
    Field("spec.volumes[].name", "volume name (AC Name, unique)"),
    Field("spec.volumes[].hostPath", "host volume"),
    Field("spec.volumes[].hostPath.path", "absolute host path"),
    Field("spec.volumes[].hostPath.type", "only empty (no check)"),
    Field("spec.volumes[].emptyDir", "empty volume"),
    Field("spec.volumes[].emptyDir.medium", "only empty (disk)"),
    Field("spec.restartPolicy", "rktd/restart: Always -> always, OnFailure -> on-failure, Never -> no"),
    Field("spec.terminationGracePeriodSeconds", "rktd/stop-timeout"),
    Field("spec.hostNetwork", "true: rktd/net host"),
    Field("spec.dnsPolicy", "None (with dnsConfig), or ClusterFirst/Default: rktd's default"),
    Field("spec.dnsConfig", "resolv.conf of the pod (dnsPolicy None)"),
    Field("spec.dnsConfig.nameservers", "rktd/dns (IP addresses, 1 to 3)"),
    Field("spec.dnsConfig.searches", "rktd/dns-search"),
    Field("spec.dnsConfig.options", "rktd/dns-opt"),
    Field("spec.dnsConfig.options[].name", "option name"),
    Field("spec.dnsConfig.options[].value", "option value (NAME:VALUE)"),
    Field("status", "ignored: output only"),
)


def reference() -> str:
    """The supported fields as a Markdown table (for documentation and man pages)."""
    rows = [f"| `{f.path}` | {f.meaning} |" for f in FIELDS]
    return "\n".join(["| Kubernetes field | rktd |", "|---|---|", *rows]) + "\n"


def _children() -> dict[str, tuple[str, ...]]:
    out: dict[str, list[str]] = {}
    for f in FIELDS:
        parent, _, key = f.path.rpartition(".")
        out.setdefault(parent, []).append(key)
    return {k: tuple(v) for k, v in out.items()}


CHILDREN = _children()

# Why some fields people often write are refused.
_HINTS = {
    "metadata.namespace": "rktd has no namespaces; remove it and give kubectl -n NAMESPACE on a cluster",
    "spec.containers[].imagePullPolicy": "rktd fetches images itself; remove it",
    "spec.initContainers": "run the steps in the image or in an ExecStartPre= drop-in",
    "spec.containers[].env[].valueFrom": "only literal values are supported: give value",
}

RESTART_POLICIES = {"Always": "always", "OnFailure": "on-failure", "Never": "no"}
# rktd/restart -> the nearest restartPolicy, for the values Kubernetes has no word for.
_NEAREST_POLICY = {
    "always": "Always",
    "on-failure": "OnFailure",
    "no": "Never",
    "on-success": "Always",
    "on-abnormal": "OnFailure",
    "on-abort": "OnFailure",
    "on-watchdog": "OnFailure",
}
DNS_POLICIES = ("ClusterFirst", "ClusterFirstWithHostNet", "Default", "None")
RETAIN_SET = "os/linux/capabilities-retain-set"
REMOVE_SET = "os/linux/capabilities-remove-set"

# Kubernetes names capabilities without the prefix; these are stage1's own tables (the C init's
# default set is checked against DEFAULT_APP_CAPS by the tests), so `drop:` means what the pod gets.
ALL_CAPS = frozenset(CAPABILITIES)
DEFAULT_CAPS = frozenset(DEFAULT_APP_CAPS)  # the container runtimes' default set (Docker's, rkt's)

_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_DNS_SUBDOMAIN_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?\Z")
_PORT_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z_0-9.-]*\Z")
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_LABEL = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_IMAGE_RE = re.compile(
    rf"^(?:{_REF_LABEL}(?:\.{_REF_LABEL})*(?::[0-9]{{1,5}})?/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?\Z"
)
_QUANTITY_RE = re.compile(
    r"^\+?(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?[0-9]{1,3})?\Z"
)
_BINARY = {s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))}
_DECIMAL = {s: Decimal(10) ** e for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)}


def _fields(value: object, field: str, pattern: str) -> dict[str, Any]:
    """A mapping whose keys are all fields rktd maps under `pattern` (a FIELDS path)."""
    obj = _map(value, field)
    allowed = CHILDREN[pattern]
    for key in obj:
        if key not in allowed:
            hint = _HINTS.get(_at(pattern, key), "supported: " + ", ".join(allowed))
            raise _fail(_at(field, key), "not supported by rktd", hint=hint)
    return obj


def _required(obj: dict[str, Any], key: str, field: str) -> Any:
    if obj.get(key) is None:
        raise _fail(_at(field, key), "is required")
    return obj[key]


def _name(value: object, field: str, limit: int = 63) -> str:
    text = _str(value, field)
    if not AC_NAME_RE.fullmatch(text):
        raise _fail(
            field, f"{_show(text)} is not an AC Name", hint="lower-case letters, digits, single dashes"
        )
    if len(text) > limit:
        raise _fail(field, f"is longer than {limit} characters")
    return text


def _abs_path(value: object, field: str) -> str:
    text = _str(value, field, empty=False)
    if not text.startswith("/"):
        raise _fail(field, f"{_show(text)} is not an absolute path")
    return text


def _key_problem(key: str) -> str | None:
    """Why `key` is not a Kubernetes label or annotation key ([DNS-SUBDOMAIN/]NAME), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and (len(prefix) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(prefix)):
        return "its prefix is not a DNS subdomain"
    if len(name) > 63 or not _KEY_NAME_RE.fullmatch(name):
        return "its name is not 1 to 63 letters, digits, '-', '_' or '.'"
    return None


# ---------------------------------------------------------------------------------------------
# Kubernetes semantics: $(VAR) expansion, quantities, capabilities.


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' $(VAR) expansion: `$$` is `$`, unknown or unclosed references stay as written."""
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] != "$" or i + 1 == n:
            out.append(text[i])
            i += 1
            continue
        nxt = text[i + 1]
        close = text.find(")", i + 2) if nxt == "(" else -1
        if nxt == "$":
            out.append("$")
        elif close >= 0:
            out.append(env.get(text[i + 2 : close], text[i : close + 1]))
            i = close + 1
            continue
        else:
            out.append("$" + nxt)
        i += 2
    return "".join(out)


def escape(text: str) -> str:
    """The Kubernetes spelling of a literal string: `expand(escape(s), env) == s` for every env."""
    return text.replace("$", "$$")


def _quantity(value: object, field: str) -> tuple[str, Decimal]:
    """A Kubernetes resource quantity (500m, 1, 0.5, 128Mi, 1G, 1e3): its text and its amount."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 10**18:
        text = str(value)
    elif isinstance(value, float):
        text = repr(value)
    else:
        text = _str(value, field)
    m = _QUANTITY_RE.fullmatch(text) if len(text) <= 64 else None
    if m is None:
        raise _fail(field, f"{_show(value)} is not a Kubernetes quantity", hint="e.g. 500m, 1, 128Mi, 1G")
    suffix = m["suffix"] or ""
    if suffix[:1] in ("e", "E") and len(suffix) > 1:
        scale = Decimal(10) ** int(suffix[1:])
    else:
        scale = _BINARY.get(suffix) or _DECIMAL.get(suffix) or Decimal(1)
    return text, Decimal(m["num"]) * scale


def _caps(value: object, field: str) -> tuple[frozenset[str], bool]:
    """Capability names (with or without CAP_) as CAP_ names, and whether ALL was among them."""
    names: set[str] = set()
    has_all = False
    for i, item in enumerate(_list(value, field)):
        text = _str(item, f"{field}[{i}]")
        if text == "ALL":
            has_all = True
            continue
        name = text if text.startswith("CAP_") else "CAP_" + text
        if name not in ALL_CAPS:
            raise _fail(f"{field}[{i}]", f"{_show(text)} is not a Linux capability", hint="e.g. NET_ADMIN")
        names.add(name)
    return frozenset(names), has_all


def _capabilities(value: object, field: str) -> tuple[Isolator, ...]:
    obj = _fields(value, field, "spec.containers[].securityContext.capabilities")
    add, add_all = _caps(obj.get("add"), _at(field, "add"))
    drop, drop_all = _caps(obj.get("drop"), _at(field, "drop"))
    if obj.get("add") is None:
        if drop_all:
            return (Isolator(REMOVE_SET, {"set": sorted(ALL_CAPS)}),)
        return (Isolator(REMOVE_SET, {"set": sorted(drop)}),) if drop else ()
    keep = set(DEFAULT_CAPS)
    if add_all:
        keep |= ALL_CAPS
    if drop_all:
        keep.clear()
    keep = (keep | add) - drop
    if not keep:  # appc sets are never empty: nothing retained is everything removed
        return (Isolator(REMOVE_SET, {"set": sorted(ALL_CAPS)}),)
    return (Isolator(RETAIN_SET, {"set": sorted(keep)}),)


def _resources(value: object, field: str) -> tuple[Isolator, ...]:
    obj = _fields(value, field, "spec.containers[].resources")
    given: dict[str, dict[str, tuple[str, Decimal]]] = {"cpu": {}, "memory": {}}
    for kind in ("limits", "requests"):
        for name, amount in _map(obj.get(kind), _at(field, kind)).items():
            where = f"{field}.{kind}[{key_text(name)}]"
            if name not in given:
                raise _fail(where, "not supported by rktd", hint="supported: cpu, memory")
            given[name][kind[:-1]] = _quantity(amount, where)
    out = []
    for name, got in given.items():
        if "limit" in got and "request" in got and got["request"][1] > got["limit"][1]:
            limit = got["limit"][0]
            raise _fail(f"{field}.requests[{name}]", f"{got['request'][0]} is more than the limit {limit}")
        if got:
            out.append(Isolator(f"resource/{name}", {k: got[k][0] for k in sorted(got)}))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Loading: Kubernetes Pod -> model.


def _environment(value: object, field: str) -> tuple[NameValue, ...]:
    env: dict[str, str] = {}
    for i, item in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        obj = _fields(item, where, "spec.containers[].env[]")
        name = _str(_required(obj, "name", where), _at(where, "name"))
        if not _ENV_NAME_RE.fullmatch(name):
            raise _fail(_at(where, "name"), f"{_show(name)} is not an environment variable name")
        if name in env:
            raise _fail(_at(where, "name"), f"{_show(name)} is given twice")
        raw = obj.get("value")
        env[name] = expand(_str(raw, _at(where, "value")), env) if raw is not None else ""
    return tuple(NameValue(k, v) for k, v in env.items())


def _exec(obj: dict[str, Any], field: str, env: tuple[NameValue, ...]) -> tuple[str, ...]:
    values = {e.name: e.value for e in env}
    command = [
        _str(a, f"{field}.command[{i}]")
        for i, a in enumerate(_list(obj.get("command"), _at(field, "command")))
    ]
    args = [_str(a, f"{field}.args[{i}]") for i, a in enumerate(_list(obj.get("args"), _at(field, "args")))]
    if args and not command:
        raise _fail(
            _at(field, "args"),
            "args without command needs the image's entrypoint, which the generator cannot read",
            hint="give command (the entrypoint) too",
        )
    argv = tuple(expand(a, values) for a in command + args)
    if argv and not argv[0]:
        raise _fail(f"{field}.command[0]", "the program must not be empty")
    return argv


def _ports(value: object, field: str) -> tuple[tuple[Port, ...], tuple[PodPort, ...]]:
    ports: list[Port] = []
    pod_ports: list[PodPort] = []
    for i, item in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        obj = _fields(item, where, "spec.containers[].ports[]")
        number = _int(_required(obj, "containerPort", where), _at(where, "containerPort"), 1, 65535)
        proto = _str(obj.get("protocol", "TCP"), _at(where, "protocol"))
        if proto not in ("TCP", "UDP"):
            raise _fail(_at(where, "protocol"), f"{_show(proto)} is not supported", hint="TCP or UDP")
        name = f"{number}-{proto.lower()}"
        if obj.get("name") is not None:
            name = _str(obj["name"], _at(where, "name"))
            if len(name) > 15 or not _PORT_NAME_RE.fullmatch(name) or "--" in name or name.isdigit():
                raise _fail(
                    _at(where, "name"),
                    f"{_show(name)} is not a port name",
                    hint="1 to 15 lower-case letters, digits, single dashes, at least one letter",
                )
        if any((p.port, p.protocol) == (number, Protocol(proto.lower())) for p in ports):
            raise _fail(_at(where, "containerPort"), f"{number}/{proto} is given twice")
        if any(p.name == name for p in ports):
            raise _fail(_at(where, "name"), f"port name {_show(name)} is given twice")
        ports.append(Port(name, Protocol(proto.lower()), number))
        raw_host_port = obj.get("hostPort")
        host_port = 0 if raw_host_port is None else _int(raw_host_port, _at(where, "hostPort"), 0, 65535)
        host_ip = None
        if obj.get("hostIP") is not None:
            host_ip = _ip(obj["hostIP"], _at(where, "hostIP"))
            if not host_port:
                raise _fail(_at(where, "hostIP"), "needs a hostPort")
        if host_port:
            pod_ports.append(PodPort(name, host_port, host_ip))
    return tuple(ports), tuple(pod_ports)


def _ip(value: object, field: str) -> str:
    text = _str(value, field)
    if "%" in text:  # Python takes any text as an IPv6 zone, and it would reach unit files and iptables
        raise _fail(field, f"{_show(text)} is a scoped address (%ZONE): not supported", hint="e.g. fd00::1")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise _fail(field, f"{_show(text)} is not an IP address") from None


def _mounts(
    value: object, field: str, volumes: Mapping[str, Volume]
) -> tuple[list[MountPoint], list[Mount]]:
    points: list[MountPoint] = []
    mounts: list[Mount] = []
    for i, item in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        obj = _fields(item, where, "spec.containers[].volumeMounts[]")
        volume = _str(_required(obj, "name", where), _at(where, "name"))
        if volume not in volumes:
            raise _fail(_at(where, "name"), f"{_show(volume)} is not a volume of spec.volumes")
        if any(m.volume == volume for m in mounts):
            raise _fail(_at(where, "name"), f"volume {_show(volume)} is mounted twice in this container")
        path = _abs_path(_required(obj, "mountPath", where), _at(where, "mountPath"))
        if any(m.path == path for m in mounts):
            raise _fail(_at(where, "mountPath"), f"{_show(path)} is mounted twice in this container")
        read_only = _bool(obj.get("readOnly", False), _at(where, "readOnly"))
        points.append(MountPoint(volume, path, read_only))
        mounts.append(Mount(volume, path))
    return points, mounts


def _container(
    value: object, field: str, volumes: Mapping[str, Volume]
) -> tuple[RuntimeApp, tuple[PodPort, ...]]:
    obj = _fields(value, field, "spec.containers[]")
    name = _name(_required(obj, "name", field), _at(field, "name"))
    image = _str(_required(obj, "image", field), _at(field, "image"))
    if len(image) > 255 or not _IMAGE_RE.fullmatch(image):
        raise _fail(
            _at(field, "image"), f"{_show(image)} is not a Docker image reference", hint="e.g. busybox:1.36"
        )
    env = _environment(obj.get("env"), _at(field, "env"))
    exec_ = _exec(obj, field, env)
    workdir = None
    if obj.get("workingDir") is not None:
        workdir = _abs_path(obj["workingDir"], _at(field, "workingDir"))
    ports, pod_ports = _ports(obj.get("ports"), _at(field, "ports"))
    points, mounts = _mounts(obj.get("volumeMounts"), _at(field, "volumeMounts"), volumes)
    isolators = _resources(obj.get("resources"), _at(field, "resources"))
    sc_field = _at(field, "securityContext")
    sc = _fields(obj.get("securityContext"), sc_field, "spec.containers[].securityContext")
    ids = {}
    for key in ("runAsUser", "runAsGroup"):
        if sc.get(key) is not None:
            ids[key] = str(_int(sc[key], _at(sc_field, key), 0, 2**31 - 1))
    isolators += _capabilities(sc.get("capabilities"), _at(sc_field, "capabilities"))
    read_only = _bool(sc.get("readOnlyRootFilesystem", False), _at(sc_field, "readOnlyRootFilesystem"))
    app = App(
        exec=exec_,
        user=ids.get("runAsUser", "0"),
        group=ids.get("runAsGroup", "0"),
        working_directory=workdir,
        environment=env,
        mount_points=tuple(points),
        ports=ports,
        isolators=isolators,
    )
    runtime_app = RuntimeApp(
        name=name,
        image=ImageRef(name="docker://" + image),
        app=None if app == App() else app,
        read_only_rootfs=read_only,
        mounts=tuple(mounts),
    )
    return runtime_app, pod_ports


def _volumes(value: object, field: str) -> dict[str, Volume]:
    out: dict[str, Volume] = {}
    for i, item in enumerate(_list(value, field)):
        where = f"{field}[{i}]"
        obj = _fields(item, where, "spec.volumes[]")
        name = _name(_required(obj, "name", where), _at(where, "name"))
        if name in out:
            raise _fail(_at(where, "name"), f"{_show(name)} is given twice")
        kinds = [k for k in ("hostPath", "emptyDir") if k in obj]
        if len(kinds) != 1:
            raise _fail(where, "needs exactly one of hostPath, emptyDir")
        sub = _at(where, kinds[0])
        spec = _fields(obj[kinds[0]], sub, f"spec.volumes[].{kinds[0]}")
        for key in ("type", "medium"):
            if spec.get(key):
                raise _fail(
                    _at(sub, key), f"{_show(spec[key])} is not supported by rktd", hint="leave it empty"
                )
        if kinds[0] == "hostPath":
            source = _abs_path(_required(spec, "path", sub), _at(sub, "path"))
            out[name] = Volume(name, VolumeKind.HOST, source=source)
        else:
            out[name] = Volume(name, VolumeKind.EMPTY)
    return out


def _dns(spec: dict[str, Any]) -> dict[str, str]:
    """spec.dnsPolicy and spec.dnsConfig -> rktd/dns* annotations."""
    policy = _str(spec.get("dnsPolicy", "ClusterFirst"), "spec.dnsPolicy")
    if policy not in DNS_POLICIES:
        raise _fail("spec.dnsPolicy", f"{_show(policy)} is not a DNS policy", hint=", ".join(DNS_POLICIES))
    config = _fields(spec.get("dnsConfig"), "spec.dnsConfig", "spec.dnsConfig")
    if policy != "None":
        if spec.get("dnsConfig") is not None:
            raise _fail(
                "spec.dnsConfig", "needs dnsPolicy: None", hint="rktd writes the pod's whole resolv.conf"
            )
        return {}
    field = "spec.dnsConfig.nameservers"
    servers = [_ip(s, f"{field}[{i}]") for i, s in enumerate(_list(config.get("nameservers"), field))]
    if not 1 <= len(servers) <= 3:
        raise _fail(field, "dnsPolicy None needs 1 to 3 nameservers")
    searches = []
    for i, s in enumerate(_list(config.get("searches"), "spec.dnsConfig.searches")):
        text = _str(s, f"spec.dnsConfig.searches[{i}]", empty=False)
        if len(text) > 253 or not _DNS_SUBDOMAIN_RE.fullmatch(text.lower()):
            raise _fail(f"spec.dnsConfig.searches[{i}]", f"{_show(text)} is not a DNS domain")
        searches.append(text)
    options = []
    for i, item in enumerate(_list(config.get("options"), "spec.dnsConfig.options")):
        where = f"spec.dnsConfig.options[{i}]"
        obj = _fields(item, where, "spec.dnsConfig.options[]")
        name = _str(_required(obj, "name", where), _at(where, "name"), empty=False)
        if re.search(r"[\s:]", name):
            raise _fail(_at(where, "name"), f"{_show(name)} is not a resolver option name")
        if obj.get("value") is not None:
            opt_value = _str(obj["value"], _at(where, "value"))
            if re.search(r"\s", opt_value):
                raise _fail(_at(where, "value"), "must not contain whitespace")
            name += ":" + opt_value
        options.append(name)
    out = {"rktd/dns": " ".join(servers)}
    if searches:
        out["rktd/dns-search"] = " ".join(searches)
    if options:
        out["rktd/dns-opt"] = " ".join(options)
    return out


def _spec_annotations(spec: dict[str, Any], given: dict[str, str]) -> dict[str, str]:
    """Pod annotations: the given ones and those the pod fields mean; disagreements are errors."""
    out = dict(given)
    policy = _str(spec.get("restartPolicy", "Always"), "spec.restartPolicy")
    if policy not in RESTART_POLICIES:
        raise _fail(
            "spec.restartPolicy", f"{_show(policy)} is not a restart policy", hint="Always, OnFailure, Never"
        )
    out.setdefault("rktd/restart", RESTART_POLICIES[policy])  # the annotation refines the policy
    derived = _dns(spec)
    if spec.get("hostNetwork") is not None:
        host = _bool(spec["hostNetwork"], "spec.hostNetwork")
        if host:
            derived["rktd/net"] = "host"
        elif given.get("rktd/net") == "host":
            raise _fail("spec.hostNetwork", "is false, but metadata.annotations[rktd/net] is host")
    if spec.get("terminationGracePeriodSeconds") is not None:
        seconds = _int(
            spec["terminationGracePeriodSeconds"], "spec.terminationGracePeriodSeconds", 0, 9_999_999
        )
        derived["rktd/stop-timeout"] = str(seconds)
    for name, value in derived.items():
        if name in given and given[name] != value:
            raise _fail(
                f"metadata.annotations[{name}]", f"{_show(given[name])} contradicts the pod spec ({value})"
            )
        out[name] = value
    return out


def _metadata(value: object) -> tuple[str, dict[str, str], tuple[NameValue, ...]]:
    meta = _fields(value, "metadata", "metadata")
    name = _name(_required(meta, "name", "metadata"), "metadata.name", limit=253)
    given: dict[str, str] = {}
    for key, text in _map(meta.get("annotations"), "metadata.annotations").items():
        where = f"metadata.annotations[{key_text(key)}]"
        problem = _key_problem(key)
        if problem or not AC_IDENTIFIER_RE.fullmatch(key):
            raise _fail(where, f"is not an annotation name: {problem or 'not an AC Identifier'}")
        given[key] = _str(text, where)
    rktd_annotations.read(given, field_prefix="metadata.annotations")
    labels = []
    for key, text in sorted(_map(meta.get("labels"), "metadata.labels").items()):
        where = f"metadata.labels[{key_text(key)}]"
        problem = _key_problem(key)
        if problem:
            raise _fail(where, f"is not a label name: {problem}")
        label = _str(text, where)
        if len(label) > 63 or not _LABEL_VALUE_RE.fullmatch(label):
            raise _fail(where, f"{_show(label)} is not a label value", hint="up to 63 letters, digits, -_.")
        labels.append(NameValue(key, label))
    return name, given, tuple(labels)


def _pod(doc: object) -> tuple[str, Pod]:
    if not isinstance(doc, dict):
        raise _fail(
            "", f"is {_kind(doc)}, not a Kubernetes Pod (a mapping with apiVersion, kind, metadata, spec)"
        )
    top = _fields(doc, "", "")
    if _required(top, "kind", "") != "Pod":
        raise _fail("kind", f"rktd runs a Pod, not {_show(top['kind'])}")
    if _required(top, "apiVersion", "") != "v1":
        raise _fail("apiVersion", f"{_show(top['apiVersion'])} is not v1")
    _map(top.get("status"), "status")  # ignored, as the API server ignores it on create
    name, given, labels = _metadata(_required(top, "metadata", ""))
    spec = _fields(_required(top, "spec", ""), "spec", "spec")
    volumes = _volumes(spec.get("volumes"), "spec.volumes")
    containers = _list(_required(spec, "containers", "spec"), "spec.containers")
    if not containers:
        raise _fail("spec.containers", "a Pod needs at least one container")
    apps: list[RuntimeApp] = []
    pod_ports: list[PodPort] = []
    for i, item in enumerate(containers):
        app, ports = _container(item, f"spec.containers[{i}]", volumes)
        if any(a.name == app.name for a in apps):
            raise _fail(f"spec.containers[{i}].name", f"{_show(app.name)} is given twice")
        _unique_ports(apps, app, i)
        apps.append(app)
        pod_ports += ports
    annotations = _spec_annotations(spec, given)
    if annotations.get("rktd/net") == "host":
        _host_network_ports(apps, pod_ports)
    pod = Pod(
        apps=tuple(apps),
        volumes=tuple(volumes.values()),
        annotations=tuple(NameValue(k, annotations[k]) for k in sorted(annotations)),
        ports=tuple(pod_ports),
        user_labels=labels,
    )
    return name, pod


def _unique_ports(apps: list[RuntimeApp], app: RuntimeApp, index: int) -> None:
    """Port names and numbers are unique in the pod: its containers share one network namespace."""
    taken = {(p.name, (p.port, p.protocol)) for a in apps for p in (a.app.ports if a.app else ())}
    for j, port in enumerate(app.app.ports if app.app else ()):
        where = f"spec.containers[{index}].ports[{j}]"
        if any(port.name == name for name, _ in taken):
            raise _fail(_at(where, "name"), f"{_show(port.name)} is already a port of another container")
        if any((port.port, port.protocol) == number for _, number in taken):
            raise _fail(_at(where, "containerPort"), f"{port.port} is already a port of another container")


def _host_network_ports(apps: list[RuntimeApp], pod_ports: list[PodPort]) -> None:
    """On the host's network a port is the host's port: Kubernetes requires hostPort == containerPort."""
    host = {p.name: p.host_port for p in pod_ports}
    for i, app in enumerate(apps):
        for j, port in enumerate(app.app.ports if app.app else ()):
            if host.get(port.name, port.port) != port.port:
                where = f"spec.containers[{i}].ports[{j}].hostPort"
                raise _fail(
                    where, "must equal containerPort on the host's network (hostNetwork, rktd/net host)"
                )


def _one_line(text: str) -> str:
    """Errors are one line: escape the line breaks a YAML library message might carry."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def load_named(data: bytes, path: str) -> tuple[str, Pod]:
    """Parse a Kubernetes v1 Pod: its metadata.name and the pod. Every problem is a ManifestError."""
    try:
        return _pod(parse_yaml(data))
    except ManifestError as e:
        raise ManifestError(path, e.field, _one_line(e.message), hint=e.hint) from None


def load_pod(data: bytes, path: str) -> Pod:
    return load_named(data, path)[1]


def dump_pod(pod: Pod, name: str) -> str:
    """`pod` as Kubernetes v1 Pod YAML named `name` (see `kube_dump`); ManifestError if inexpressible."""
    from rktd_units.formats.kube_dump import dump_pod as dump

    return dump(pod, name)


def load_document(doc: object) -> tuple[str, Pod]:
    """Like `load_named`, for an already parsed document (what `yaml.safe_load` returns)."""
    return _pod(doc)


def merge_image_app(container: App | None, image: App | None) -> App | None:
    """The app a Kubernetes container runs: its settings over its image's, as container runtimes do.

    An appc pod's `app` replaces the image's; a Kubernetes container only overrides what it sets.
    Stage0 (which alone reads images) applies this to pods read from Kubernetes YAML: no command
    runs the image's exec; env adds to and overrides the image's; user and group "0" (unset:
    the model cannot tell them from an explicit runAsUser 0) and an unset workingDir are the image's;
    the image's mount points, ports and isolators stay unless the container covers them.
    """
    if container is None or image is None:
        return container or image
    env = {e.name: e.value for e in image.environment} | {e.name: e.value for e in container.environment}
    points = {p.path for p in container.mount_points} | {p.name for p in container.mount_points}
    ports = {(p.port, p.protocol) for p in container.ports} | {p.name for p in container.ports}
    isolators = {i.name for i in container.isolators}
    return App(
        exec=container.exec or image.exec,
        user=image.user if container.user == "0" else container.user,
        group=image.group if container.group == "0" else container.group,
        supplementary_gids=image.supplementary_gids,
        working_directory=container.working_directory or image.working_directory,
        environment=tuple(NameValue(k, v) for k, v in env.items()),
        mount_points=(
            *container.mount_points,
            *(p for p in image.mount_points if not {p.path, p.name} & points),
        ),
        ports=(*container.ports, *(p for p in image.ports if not {(p.port, p.protocol), p.name} & ports)),
        isolators=(*container.isolators, *(i for i in image.isolators if i.name not in isolators)),
        event_handlers=image.event_handlers,
        user_annotations=image.user_annotations,
        user_labels=image.user_labels,
    )
