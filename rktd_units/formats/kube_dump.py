"""Export any pod (also one read from appc) as a Kubernetes v1 Pod: `rktd_units.formats.kube`'s
mapping, backwards.

What Kubernetes has no field for is an error naming the model's field in appc spelling
(`apps[0].image.id: cannot be expressed in a Kubernetes Pod: an image ID`); where only Kubernetes'
grammar is narrower (port names of at most 15 characters, label and annotation keys), the error
names the Kubernetes field the pod would have had, because the document is checked by loading it.
rktd annotations no Kubernetes field says (`rktd/net` networks, `rktd/wanted-by`, a systemd-only
`rktd/restart` next to its nearest restartPolicy) travel as annotations. Whatever is written loads
back to the same pod, up to the defaults Kubernetes makes explicit (`rktd/restart` is on-failure
when an appc pod leaves it out) and canonical order (annotations and labels sorted).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml

from rktd_units.errors import ManifestError
from rktd_units.formats.kube import (
    _NEAREST_POLICY,
    ALL_CAPS,
    CHILDREN,
    DEFAULT_CAPS,
    REMOVE_SET,
    RESTART_POLICIES,
    RETAIN_SET,
    _dns,
    _name,
    _pod,
    escape,
)
from rktd_units.formats.kube_yaml import _at, _show
from rktd_units.formats.schema import fail as _fail
from rktd_units.model import App, ImageRef, Isolator, Pod, PodPort, Port, RuntimeApp, VolumeKind

_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _inexpressible(field: str, why: str | None = None, hint: str | None = None) -> ManifestError:
    text = "cannot be expressed in a Kubernetes Pod"
    return _fail(field, f"{text}: {why}" if why else text, hint=hint)


def _ordered(obj: dict[str, Any], pattern: str) -> dict[str, Any]:
    """`obj`'s keys in FIELDS order: dumps are deterministic and read like the table."""
    return {k: obj[k] for k in CHILDREN[pattern] if k in obj}


def _dump_image(image: ImageRef, field: str) -> str:
    if image.id is not None:
        raise _inexpressible(_at(field, "id"), "an image ID", hint="name a docker:// image instead")
    if image.labels:
        raise _inexpressible(_at(field, "labels"), "image labels", hint="put the tag in the docker:// name")
    if image.name is None or not image.is_docker:
        what = f"{_show(image.name)} is not a docker:// image" if image.name else "no image name"
        raise _inexpressible(_at(field, "name"), what, hint="Kubernetes runs Docker/OCI images")
    return image.name.removeprefix("docker://")


def _dump_caps(name: str, value: object, field: str) -> dict[str, Any]:
    names = value.get("set") if isinstance(value, dict) else None
    if not isinstance(names, list) or not names or not all(n in ALL_CAPS for n in names):
        raise _inexpressible(field, "the set is not a non-empty list of Linux capabilities")
    given = frozenset(names)
    if name == REMOVE_SET:
        return {"drop": ["ALL"] if given == ALL_CAPS else [n[4:] for n in sorted(given)]}
    out: dict[str, Any] = {"add": [n[4:] for n in sorted(given - DEFAULT_CAPS)]}
    if DEFAULT_CAPS - given:
        out["drop"] = [n[4:] for n in sorted(DEFAULT_CAPS - given)]
    return out


def _dump_isolators(isolators: tuple[Isolator, ...], field: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """App isolators -> (resources, capabilities)."""
    resources: dict[str, dict[str, Any]] = {}
    caps: dict[str, Any] = {}
    for j, iso in enumerate(isolators):
        where = f"{field}[{j}]"
        if iso.name in ("resource/cpu", "resource/memory"):
            value = iso.value if isinstance(iso.value, dict) else {}
            if not value or set(value) - {"limit", "request"}:
                raise _inexpressible(where, f"{iso.name} other than limit and request")
            for kind in sorted(value):
                resources.setdefault(kind + "s", {})[iso.name.removeprefix("resource/")] = value[kind]
        elif iso.name in (RETAIN_SET, REMOVE_SET):
            if caps:
                raise _inexpressible(where, "a second capability set")
            caps = _dump_caps(iso.name, iso.value, where)
        else:
            raise _inexpressible(where, f"the isolator {_show(iso.name)}")
    return _ordered(resources, "spec.containers[].resources"), caps


def _dump_mounts(ra: RuntimeApp, app: App, field: str) -> list[dict[str, Any]]:
    out = []
    for k, mount in enumerate(ra.mounts):
        if mount.app_volume is not None:
            raise _inexpressible(
                f"{field}.mounts[{k}].appVolume", hint="declare the volume in the pod's volumes"
            )
        point = next((p for p in app.mount_points if p.path == mount.path), None)
        entry: dict[str, Any] = {"name": mount.volume, "mountPath": mount.path}
        if point is not None and point.read_only:
            entry["readOnly"] = True
        out.append(entry)
    for j, point in enumerate(app.mount_points):
        if not any(m.path == point.path for m in ra.mounts):
            raise _inexpressible(f"{field}.app.mountPoints[{j}]", "a mount point no mount fills")
    return out


def _dump_security(ra: RuntimeApp, app: App, field: str, caps: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, attr, value in (("runAsUser", "user", app.user), ("runAsGroup", "group", app.group)):
        if value != "0":
            if not re.fullmatch(r"[1-9][0-9]{0,9}", value) or int(value) >= 2**31:
                raise _inexpressible(f"{field}.app.{attr}", f"{_show(value)} is not a numeric ID")
            out[key] = int(value)
    if ra.read_only_rootfs:
        out["readOnlyRootFilesystem"] = True
    if caps:
        out["capabilities"] = caps
    return _ordered(out, "spec.containers[].securityContext")


def _dump_app(ra: RuntimeApp, field: str, host_ports: Mapping[str, PodPort]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": ra.name, "image": _dump_image(ra.image, _at(field, "image"))}
    if ra.annotations:
        raise _inexpressible(_at(field, "annotations"), "app annotations")
    app = ra.app or App()
    for attr, what in (
        ("supplementary_gids", "supplementaryGIDs"),
        ("event_handlers", "eventHandlers"),
        ("user_annotations", "userAnnotations"),
        ("user_labels", "userLabels"),
    ):
        if getattr(app, attr, ()):
            raise _inexpressible(f"{field}.app.{what}")
    if app.exec:
        out["command"] = [escape(a) for a in app.exec]
    if app.working_directory is not None:
        out["workingDir"] = app.working_directory
    ports = [_dump_port(p, f"{field}.app.ports[{j}]", host_ports) for j, p in enumerate(app.ports)]
    if ports:
        out["ports"] = ports
    if app.environment:
        out["env"] = [{"name": e.name, "value": escape(e.value)} for e in app.environment]
    resources, caps = _dump_isolators(app.isolators, f"{field}.app.isolators")
    if resources:
        out["resources"] = resources
    mounts = _dump_mounts(ra, app, field)
    if mounts:
        out["volumeMounts"] = mounts
    security = _dump_security(ra, app, field, caps)
    if security:
        out["securityContext"] = security
    return _ordered(out, "spec.containers[]")


def _dump_port(port: Port, field: str, host_ports: Mapping[str, PodPort]) -> dict[str, Any]:
    if port.count != 1:
        raise _inexpressible(_at(field, "count"), "a range of ports")
    if port.socket_activated:
        raise _inexpressible(_at(field, "socketActivated"), "socket activation")
    out: dict[str, Any] = {
        "name": port.name,
        "containerPort": port.port,
        "protocol": port.protocol.value.upper(),
    }
    host = host_ports.get(port.name)
    if host is not None:
        out["hostPort"] = host.host_port
        if host.host_ip is not None:
            out["hostIP"] = host.host_ip
    return out


def _host_ports(pod: Pod) -> dict[str, PodPort]:
    app_ports = [p.name for ra in pod.apps for p in (ra.app.ports if ra.app else ())]
    out: dict[str, PodPort] = {}
    for k, port in enumerate(pod.ports):
        if app_ports.count(port.name) != 1 or port.name in out:
            why = "it names no app port, or more than one" if port.name not in out else "given twice"
            raise _inexpressible(f"ports[{k}]", f"{_show(port.name)}: {why}")
        out[port.name] = port
    return out


def _dump_dns(annotations: dict[str, str], spec: dict[str, Any]) -> None:
    """rktd/dns* -> dnsPolicy None and dnsConfig, when they say exactly what those would say."""
    if "rktd/dns" not in annotations:
        return
    names = ("rktd/dns", "rktd/dns-search", "rktd/dns-opt")
    words = [annotations.get(n, "").split() for n in names]
    options = [dict(zip(("name", "value"), w.split(":", 1), strict=False)) for w in words[2]]
    config = {"nameservers": words[0], "searches": words[1], "options": options}
    fields = {"dnsPolicy": "None", "dnsConfig": {k: v for k, v in config.items() if v}}
    try:
        derived = _dns(fields)
    except ManifestError:
        return  # not in Kubernetes' grammar: the annotations stay annotations
    if all(derived.get(n) == annotations.get(n) for n in names):
        for n in names:
            annotations.pop(n, None)
        spec.update(fields)


def _dump_spec_annotations(pod: Pod) -> tuple[dict[str, str], dict[str, Any]]:
    """Pod annotations -> (what stays an annotation, the pod fields that say the rest)."""
    annotations: dict[str, str] = {}
    for k, a in enumerate(pod.annotations):
        if a.name in annotations:
            raise _inexpressible(f"annotations[{k}]", f"{_show(a.name)} is given twice")
        annotations[a.name] = a.value
    spec: dict[str, Any] = {}
    restart = annotations.pop("rktd/restart", "on-failure")  # appc's default
    spec["restartPolicy"] = _NEAREST_POLICY.get(restart, "OnFailure")
    if RESTART_POLICIES.get(spec["restartPolicy"]) != restart:
        annotations["rktd/restart"] = restart  # refines the nearest policy
    timeout = annotations.get("rktd/stop-timeout", "")
    if re.fullmatch(r"0|[1-9][0-9]{0,6}", timeout):
        spec["terminationGracePeriodSeconds"] = int(annotations.pop("rktd/stop-timeout"))
    if annotations.get("rktd/net") == "host":
        del annotations["rktd/net"]
        spec["hostNetwork"] = True
    _dump_dns(annotations, spec)
    return annotations, spec


def to_document(pod: Pod, name: str) -> dict[str, Any]:
    """The Kubernetes Pod document for `pod`; ManifestError names what Kubernetes cannot express."""
    _name(name, "metadata.name", limit=253)
    for attr, what in (("user_annotations", "userAnnotations"), ("isolators", "isolators")):
        if getattr(pod, attr):
            raise _inexpressible(what, f"pod {what}")
    if not pod.apps:
        raise _inexpressible("apps", "a Pod needs at least one container")
    annotations, spec = _dump_spec_annotations(pod)
    host_ports = _host_ports(pod)
    spec["containers"] = [_dump_app(ra, f"apps[{i}]", host_ports) for i, ra in enumerate(pod.apps)]
    volumes = []
    for k, v in enumerate(pod.volumes):
        for attr in ("read_only", "recursive", "mode", "uid", "gid"):
            if getattr(v, attr) is not None:
                key = {"read_only": "readOnly"}.get(attr, attr)
                raise _inexpressible(f"volumes[{k}].{key}", hint="Kubernetes volumes have no such option")
        kind = {"hostPath": {"path": v.source}} if v.kind is VolumeKind.HOST else {"emptyDir": {}}
        volumes.append({"name": v.name, **kind})
    if volumes:
        spec["volumes"] = volumes
    labels = {label.name: label.value for label in sorted(pod.user_labels, key=lambda x: x.name)}
    if len(labels) != len(pod.user_labels):
        raise _inexpressible("userLabels", "a label is given twice")
    metadata: dict[str, Any] = {
        "name": name,
        "labels": labels,
        "annotations": dict(sorted(annotations.items())),
    }
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {k: v for k, v in metadata.items() if v},
        "spec": _ordered(spec, "spec"),
    }
    try:
        _pod(doc)  # what we write must load: Kubernetes' grammar is narrower than appc's
    except ManifestError as e:
        raise _inexpressible(e.field, e.message, hint=e.hint) from None
    return doc


def dump_pod(pod: Pod, name: str) -> str:
    """`pod` as Kubernetes v1 Pod YAML named `name`: deterministic, and loads back to the same pod."""
    text = yaml.dump(
        to_document(pod, name),
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=1 << 16,
    )
    assert isinstance(text, str)
    return text
