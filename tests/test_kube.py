"""Kubernetes v1 Pod YAML: fixtures -> exact models, round trips, appc export, golden errors, fuzzing."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rktd_units.errors import ManifestError
from rktd_units.formats import appc, kube
from rktd_units.formats.kube_yaml import MAX_NODES, parse_yaml
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

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
VALID = sorted((FIXTURES / "kube").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("kube-*.yaml"))


def load(path: Path) -> tuple[str, Pod]:
    return kube.load_named(path.read_bytes(), str(path))


def reload(pod: Pod, name: str) -> tuple[str, Pod]:
    return kube.load_named(kube.dump_pod(pod, name).encode(), "exported.yaml")


# --- valid fixtures map to exact models ---------------------------------------------------------


def test_hello_fixture() -> None:
    assert load(FIXTURES / "kube" / "hello.yaml") == (
        "hello",
        Pod(
            apps=(
                RuntimeApp(
                    name="hello",
                    image=ImageRef(name="docker://busybox:1.36"),
                    app=App(exec=("/bin/echo", "hello from rktd")),
                ),
            ),
            annotations=(NameValue("rktd/restart", "no"),),
        ),
    )


def test_kubectl_dry_run_output_loads() -> None:
    """`kubectl run --dry-run=client -o yaml` output: creationTimestamp null, status {}, resources {}."""
    assert load(FIXTURES / "kube" / "kubectl-run.yaml") == (
        "kubectl-run",
        Pod(
            apps=(
                RuntimeApp(
                    name="kubectl-run",
                    image=ImageRef(name="docker://nginx:1.25"),
                    app=App(ports=(Port("80-tcp", Protocol.TCP, 80),)),
                ),
            ),
            annotations=(NameValue("rktd/restart", "always"),),
            user_labels=(NameValue("run", "kubectl-run"),),
        ),
    )


def test_web_fixture_every_field() -> None:
    name, pod = load(FIXTURES / "kube" / "web.yaml")
    assert name == "web"
    assert pod.annotations == (
        NameValue("example.com/owner", "ops"),
        NameValue("rktd/dns", "192.0.2.53 2001:db8::53"),
        NameValue("rktd/dns-opt", "ndots:2 rotate"),
        NameValue("rktd/dns-search", "example.com svc.example.com"),
        NameValue("rktd/restart", "on-abnormal"),  # the annotation refines restartPolicy: OnFailure
        NameValue("rktd/stop-timeout", "10"),
        NameValue("rktd/wanted-by", "multi-user.target"),
    )
    assert pod.user_labels == (NameValue("app.kubernetes.io/name", "web"), NameValue("tier", "frontend"))
    assert pod.volumes == (
        Volume("content", VolumeKind.HOST, source="/srv/www"),
        Volume("cache", VolumeKind.EMPTY),
    )
    assert pod.ports == (PodPort("http", 8080), PodPort("443-tcp", 8443, "127.0.0.1"))
    assert pod.isolators == () and pod.user_annotations == ()
    nginx, logger = pod.apps
    assert nginx.image == ImageRef(
        name="docker://registry.example.com:5000/web/nginx:1.25@sha256:" + "0123456789abcdef" * 4
    )
    assert nginx.read_only_rootfs is True
    assert nginx.mounts == (Mount("content", "/usr/share/nginx/html"), Mount("cache", "/var/cache/nginx"))
    keep = sorted((kube.DEFAULT_CAPS | {"CAP_NET_ADMIN"}) - {"CAP_MKNOD", "CAP_NET_RAW"})
    assert nginx.app == App(
        # $(CONF) expands; CONF's own $(SITE) does not (SITE comes later); $$ is a literal $.
        exec=("nginx", "-g", "daemon off;", "-c", "/etc/nginx/$(SITE).conf", "$(LITERAL)"),
        user="101",
        group="101",
        working_directory="/var/www",
        environment=(
            NameValue("CONF", "/etc/nginx/$(SITE).conf"),
            NameValue("SITE", "main"),
            NameValue("EMPTY", ""),
        ),
        mount_points=(
            MountPoint("content", "/usr/share/nginx/html", read_only=True),
            MountPoint("cache", "/var/cache/nginx", read_only=False),
        ),
        ports=(
            Port("http", Protocol.TCP, 80),
            Port("443-tcp", Protocol.TCP, 443),
            Port("53-udp", Protocol.UDP, 53),
        ),
        isolators=(
            Isolator("resource/cpu", {"limit": "500m", "request": "0.25"}),
            Isolator("resource/memory", {"limit": "128Mi", "request": "64Mi"}),
            Isolator(kube.RETAIN_SET, {"set": keep}),
        ),
    )
    assert logger.app is not None and logger.app.user == "0"
    assert logger.app.isolators == (Isolator(kube.REMOVE_SET, {"set": sorted(kube.ALL_CAPS)}),)
    assert logger.app.mount_points == (MountPoint("cache", "/var/cache/nginx", read_only=True),)


def test_hello_kube_example_is_the_hello_example() -> None:
    """examples/hello-kube.yaml is examples/hello.json with a Docker image and an explicit restart."""
    name, pod = load(ROOT / "examples" / "hello-kube.yaml")
    ref = appc.load_pod((ROOT / "examples" / "hello.json").read_bytes(), "hello.json")
    assert name == "hello-kube"
    assert pod.apps[0].image == ImageRef(name="docker://busybox:1.36")
    assert dataclasses.replace(pod.apps[0], image=ref.apps[0].image) == ref.apps[0]
    assert pod.annotations == (NameValue("rktd/restart", "on-failure"), *ref.annotations)


@pytest.mark.parametrize("path", VALID, ids=[p.stem for p in VALID])
def test_fixture_round_trip(path: Path) -> None:
    name, pod = load(path)
    text = kube.dump_pod(pod, name)
    assert reload(pod, name) == (name, pod)
    assert kube.dump_pod(reload(pod, name)[1], name) == text  # dumps are canonical and stable
    assert text.startswith("apiVersion: v1\nkind: Pod\nmetadata:\n")
    assert appc.load_pod(appc.dump_pod(pod).encode(), "back.json") == pod


def test_defaults_and_ignored_fields() -> None:
    doc = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "p", "creationTimestamp": "2024-01-01T00:00:00Z"},
        "spec": {"containers": [{"name": "a", "image": "busybox", "resources": {}}], "hostNetwork": True},
        "status": {"phase": "Running"},
    }
    assert kube.load_document(doc) == (
        "p",
        Pod(
            apps=(RuntimeApp("a", ImageRef(name="docker://busybox")),),  # nothing set: the image's app
            annotations=(NameValue("rktd/net", "host"), NameValue("rktd/restart", "always")),
        ),
    )


def test_args_append_to_command_and_expand() -> None:
    container = {
        "name": "a",
        "image": "busybox",
        "command": ["/bin/sh", "-c"],
        "args": ["echo $(GREETING) $(UNSET) $$(GREETING) $(GREETING"],
        "env": [{"name": "WHO", "value": "world"}, {"name": "GREETING", "value": "hello $(WHO)"}],
    }
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": [container]}}
    app = kube.load_document(doc)[1].apps[0].app
    assert app is not None
    assert app.exec == ("/bin/sh", "-c", "echo hello world $(UNSET) $(GREETING) $(GREETING")
    assert app.environment[1] == NameValue("GREETING", "hello world")


@given(st.text(alphabet="$()ab", max_size=12))
@settings(max_examples=300, deadline=None)
def test_escape_is_literal_under_expansion(text: str) -> None:
    assert kube.expand(kube.escape(text), {"a": "X", "b": "$(a)", "": "E"}) == text


def test_reference_table_lists_every_field_once() -> None:
    table = kube.reference().splitlines()
    assert table[:2] == ["| Kubernetes field | rktd |", "|---|---|"]
    assert [row.split("`")[1] for row in table[2:]] == [f.path for f in kube.FIELDS]
    assert len({f.path for f in kube.FIELDS}) == len(kube.FIELDS)
    assert kube.CHILDREN["spec.containers[].ports[]"] == (
        "name",
        "containerPort",
        "protocol",
        "hostPort",
        "hostIP",
    )


def test_merge_image_app_is_kubernetes_override() -> None:
    image = App(
        exec=("/docker-entrypoint.sh", "nginx"),
        user="101",
        group="101",
        working_directory="/usr/share/nginx",
        environment=(NameValue("PATH", "/usr/bin"), NameValue("NGINX_VERSION", "1.25")),
        mount_points=(MountPoint("volume-cache", "/var/cache/nginx"), MountPoint("logs", "/var/log")),
        ports=(Port("80-tcp", Protocol.TCP, 80), Port("443-tcp", Protocol.TCP, 443)),
        isolators=(Isolator("resource/memory", {"limit": "1G"}),),
    )
    container = App(
        environment=(NameValue("NGINX_VERSION", "custom"), NameValue("MODE", "prod")),
        mount_points=(MountPoint("cache", "/var/cache/nginx", read_only=True),),
        ports=(Port("http", Protocol.TCP, 80),),
        isolators=(Isolator("resource/cpu", {"limit": "1"}),),
    )
    assert kube.merge_image_app(container, image) == App(
        exec=("/docker-entrypoint.sh", "nginx"),
        user="101",
        group="101",
        working_directory="/usr/share/nginx",
        environment=(
            NameValue("PATH", "/usr/bin"),
            NameValue("NGINX_VERSION", "custom"),
            NameValue("MODE", "prod"),
        ),
        mount_points=(
            MountPoint("cache", "/var/cache/nginx", read_only=True),
            MountPoint("logs", "/var/log"),
        ),
        ports=(Port("http", Protocol.TCP, 80), Port("443-tcp", Protocol.TCP, 443)),
        isolators=(Isolator("resource/cpu", {"limit": "1"}), Isolator("resource/memory", {"limit": "1G"})),
    )
    explicit = App(exec=("/bin/sh",), user="1000", group="1000", working_directory="/tmp")
    merged = kube.merge_image_app(explicit, image)
    assert merged is not None
    assert (merged.exec, merged.user, merged.group, merged.working_directory) == (
        ("/bin/sh",),
        "1000",
        "1000",
        "/tmp",
    )
    assert kube.merge_image_app(None, image) == image and kube.merge_image_app(container, None) == container


# --- appc pods export as far as Kubernetes can express ------------------------------------------

APPC_WEB = {
    "acKind": "PodManifest",
    "acVersion": "0.8.11",
    "apps": [
        {
            "name": "web",
            "image": {"name": "docker://nginx:1.25"},
            "app": {
                "exec": ["/usr/sbin/nginx", "-g", "daemon off; pid $(PID);"],
                "user": "101",
                "group": "0",
                "workingDirectory": "/srv",
                "environment": [{"name": "PRICE", "value": "$5"}],
                "mountPoints": [{"name": "data", "path": "/data", "readOnly": True}],
                "ports": [{"name": "http", "protocol": "tcp", "port": 80}],
                "isolators": [
                    {"name": "resource/cpu", "value": {"limit": "1", "request": "500m"}},
                    {"name": "resource/memory", "value": {"limit": "1Gi"}},
                    {"name": kube.RETAIN_SET, "value": {"set": ["CAP_CHOWN", "CAP_NET_BIND_SERVICE"]}},
                ],
            },
            "readOnlyRootFS": True,
            "mounts": [{"volume": "data", "path": "/data"}],
        },
        {"name": "side", "image": {"name": "docker://busybox"}},
    ],
    "volumes": [
        {"name": "data", "kind": "host", "source": "/var/lib/web"},
        {"name": "tmp", "kind": "empty"},
    ],
    "annotations": [
        {"name": "rktd/net", "value": "host"},
        {"name": "rktd/stop-timeout", "value": "5"},
        {"name": "rktd/wanted-by", "value": "multi-user.target"},
    ],
    "ports": [{"name": "http", "hostPort": 80}],  # on the host's network, the port itself
    "userLabels": {"tier": "front"},
}


def test_appc_pod_exports_and_loads_back_equal() -> None:
    pod = appc.load_pod(json.dumps(APPC_WEB).encode(), "web.json")
    text = kube.dump_pod(pod, "web")
    doc = yaml.safe_load(text)
    spec = doc["spec"]
    assert spec["hostNetwork"] is True and spec["terminationGracePeriodSeconds"] == 5
    assert spec["restartPolicy"] == "OnFailure"  # appc's default, made explicit
    assert spec["containers"][0]["securityContext"]["capabilities"] == {
        "add": [],
        "drop": sorted(c[4:] for c in kube.DEFAULT_CAPS - {"CAP_CHOWN", "CAP_NET_BIND_SERVICE"}),
    }
    assert spec["containers"][0]["command"][2] == "daemon off; pid $$(PID);"
    assert spec["containers"][0]["ports"] == [
        {"name": "http", "containerPort": 80, "protocol": "TCP", "hostPort": 80}
    ]
    name, back = kube.load_named(text.encode(), "web.yaml")
    expected = dataclasses.replace(
        pod,
        annotations=tuple(sorted((*pod.annotations, NameValue("rktd/restart", "on-failure")), key=str)),
    )
    assert (name, back) == ("web", expected)


def _hello() -> Pod:
    return appc.load_pod((ROOT / "examples" / "hello.json").read_bytes(), "hello.json")


def _with_app(**changes: Any) -> Pod:
    pod = _hello()
    ra = dataclasses.replace(pod.apps[0], image=ImageRef(name="docker://busybox"))
    app = pod.apps[0].app
    assert app is not None
    app_changes = {k: v for k, v in changes.items() if hasattr(App, k)}
    ra_changes = {k: v for k, v in changes.items() if k not in app_changes}
    ra = dataclasses.replace(ra, app=dataclasses.replace(app, **app_changes), **ra_changes)
    return dataclasses.replace(pod, apps=(ra,))


INEXPRESSIBLE = [
    ("appc-image", _hello(), "apps[0].image.name", "is not a docker:// image"),
    (
        "image-id-only",
        dataclasses.replace(
            _hello(), apps=(dataclasses.replace(_hello().apps[0], image=ImageRef(id="sha512-" + "a" * 64)),)
        ),
        "apps[0].image.id",
        "an image ID",
    ),
    ("user-name", _with_app(user="nobody"), "apps[0].app.user", "is not a numeric ID"),
    (
        "socket-activated",
        _with_app(ports=(Port("http", Protocol.TCP, 80, socket_activated=True),)),
        "apps[0].app.ports[0].socketActivated",
        "socket activation",
    ),
    (
        "port-range",
        _with_app(ports=(Port("r", Protocol.UDP, 6000, count=10),)),
        "apps[0].app.ports[0].count",
        "",
    ),
    (
        "seccomp",
        _with_app(isolators=(Isolator("os/linux/seccomp-retain-set", {"set": ["@rkt/default-whitelist"]}),)),
        "apps[0].app.isolators[0]",
        "os/linux/seccomp-retain-set",
    ),
    ("app-annotation", _with_app(annotations=(NameValue("a", "b"),)), "apps[0].annotations", ""),
    ("gids", _with_app(supplementary_gids=(10,)), "apps[0].app.supplementaryGIDs", ""),
    (
        "port-name-too-long",
        _with_app(ports=(Port("a-very-long-port-name", Protocol.TCP, 80),)),
        "spec.containers[0].ports[0].name",
        "is not a port name",
    ),
    (
        "forwarding-on-host-network",
        dataclasses.replace(
            _with_app(ports=(Port("http", Protocol.TCP, 80),)),
            annotations=(NameValue("rktd/net", "host"),),
            ports=(PodPort("http", 8080),),
        ),
        "spec.containers[0].ports[0].hostPort",
        "must equal containerPort",
    ),
    (
        "annotation-not-a-kube-key",
        dataclasses.replace(_with_app(), annotations=(NameValue("example.com/a/b", "x"),)),
        "metadata.annotations[example.com/a/b]",
        "is not an annotation name",
    ),
]


@pytest.mark.parametrize(
    ("pod", "field", "message"), [c[1:] for c in INEXPRESSIBLE], ids=[c[0] for c in INEXPRESSIBLE]
)
def test_inexpressible_pods_name_the_field(pod: Pod, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        kube.dump_pod(pod, "p")
    assert info.value.field == field, str(info.value)
    assert "cannot be expressed in a Kubernetes Pod" in info.value.message and message in info.value.message


def test_rktd_annotations_without_kube_fields_stay_annotations() -> None:
    """What no Kubernetes field says (rktd/net networks, odd DNS spellings) travels as annotations."""
    pod = dataclasses.replace(
        _with_app(),
        annotations=(
            NameValue("rktd/dns", "resolver.example"),  # not an IP: dnsConfig could not say it
            NameValue("rktd/net", "default"),
            NameValue("rktd/restart", "always"),
            NameValue("rktd/stop-timeout", "030"),
        ),
    )
    doc = yaml.safe_load(kube.dump_pod(pod, "p"))
    assert doc["metadata"]["annotations"] == {
        "rktd/dns": "resolver.example",
        "rktd/net": "default",
        "rktd/stop-timeout": "030",
    }
    assert doc["spec"]["restartPolicy"] == "Always" and "dnsPolicy" not in doc["spec"]
    assert reload(pod, "p") == ("p", pod)


# --- golden invalid manifests (the shared driver runs them too, through the format registry) ----


def test_enough_invalid_kube_fixtures() -> None:
    assert len(INVALID) >= 12


@pytest.mark.parametrize("path", INVALID, ids=[p.stem for p in INVALID])
def test_invalid_fixture(path: Path) -> None:
    field, message = path.with_suffix(".expect").read_text().split("\n")[:2]
    with pytest.raises(ManifestError) as info:
        kube.load_pod(path.read_bytes(), str(path))
    err = info.value
    assert (err.path, err.field) == (str(path), field), str(err)
    assert message in err.message, str(err)
    assert str(err).startswith(f"{path}: {field}: ") and "\n" not in str(err)
    assert yaml.safe_load(path.read_text())["metadata"]["name"] == path.stem


BAD_YAML = [
    ("not-utf8", b"apiVersion: v1\nkind: \xff\xfe\n", "", "is not UTF-8 (at byte offset 21)"),
    ("syntax", b"apiVersion: v1\nkind: [Pod\n", "", "invalid YAML"),
    ("two-documents", b"kind: Pod\n---\nkind: Pod\n", "", "invalid YAML"),
    ("empty", b"# nothing\n", "", "empty YAML document"),
    ("a-list", b"- apiVersion: v1\n", "", "is a list, not a Kubernetes Pod"),
    ("python-tag", b"kind: !!python/object:os.system {}\n", "", "invalid YAML"),
    ("bad-date", b"metadata: {name: 2024-13-45}\n", "", "invalid YAML value"),
    ("recursive-alias", b"spec: &a {containers: [*a]}\n", "spec.containers[0]", "alias"),
    (
        "billion-laughs",
        b"a: &a [x, x, x, x, x, x, x, x, x, x]\n"
        + b"".join(
            b"%c: &%c [*%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c, *%c]\n" % ((c, c) + (c - 1,) * 10)
            for c in b"bcdefghi"
        ),
        "",
        f"expands to more than {MAX_NODES} YAML nodes",
    ),
    ("deep", b"spec: " + b"[" * 100 + b"]" * 100 + b"\n", "", "nested more than"),
    ("deep-enough-to-crash-libyaml", b"[" * 500_000, "", "nested more than"),
    ("deep-block", b"".join(b" " * i + b"k:\n" for i in range(200)), "", "nested more than"),
    ("duplicate-top-key", b"kind: Pod\nkind: Pod\n", "kind", "is given twice"),
    ("huge", b"#" * (1 << 21), "", "larger than"),
    (
        "non-string-key",
        b"apiVersion: v1\nkind: Pod\nmetadata: {1: x}\n",
        "metadata",
        "key 1 is not a string",
    ),
    (
        "huge-int",
        b"kind: Pod\napiVersion: v1\nmetadata: {name: 0x" + b"f" * 5000 + b"}\n",
        "metadata.name",
        "a number",
    ),
]


@pytest.mark.parametrize(
    ("data", "field", "message"), [c[1:] for c in BAD_YAML], ids=[c[0] for c in BAD_YAML]
)
def test_bad_yaml_is_one_manifest_error(data: bytes, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        kube.load_pod(data, "/etc/rktd/pods/p.yaml")
    err = info.value
    assert message in str(err) and err.path == "/etc/rktd/pods/p.yaml", str(err)
    if field:
        assert err.field.startswith(field), str(err)
    assert "\n" not in str(err)


def test_aliases_within_limits_are_fine() -> None:
    doc = parse_yaml(b"env: &e [{name: A, value: b}]\nagain: *e\n")
    assert doc == {"env": [{"name": "A", "value": "b"}], "again": [{"name": "A", "value": "b"}]}


# --- hypothesis: valid Kubernetes pods round-trip; anything else is only ever a ManifestError ----

NAMES = st.from_regex(r"[a-z][a-z0-9]{0,6}(-[a-z0-9]{1,4})?", fullmatch=True)
TEXT = st.text(
    alphabet=st.sampled_from([*"ab $()Z:#'\"\\\t\n-é", "\u2028", "\x85", "😀"])
    | st.characters(blacklist_categories=("Cs",)),
    max_size=12,
).filter(lambda s: "\x00" not in s)
IMAGES = st.sampled_from(["busybox", "busybox:1.36", "quay.io/org/app:v1.2-rc.3", "localhost:5000/a/b_c"])
QUANTITIES = st.sampled_from(
    [("cpu", "500m", "250m"), ("cpu", "2", "1.5"), ("memory", "1Gi", "512Mi"), ("memory", "1G", "1e3")]
)
CAP_NAMES = st.sampled_from(["NET_ADMIN", "CAP_SYS_TIME", "CHOWN", "MKNOD", "ALL", "KILL"])


@st.composite
def containers(draw: st.DrawFn, name: str, index: int, volumes: list[str], host_net: bool) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name, "image": draw(IMAGES)}
    if draw(st.booleans()):
        c["command"] = [
            draw(st.sampled_from(["/bin/sh", "nginx", "$(A)x", "$$1"])),
            *draw(st.lists(TEXT, max_size=2)),
        ]
        if draw(st.booleans()):
            c["args"] = draw(st.lists(TEXT, max_size=3))
    if draw(st.booleans()):
        c["workingDir"] = "/" + draw(NAMES)
    envs = draw(
        st.lists(st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,5}", fullmatch=True), unique=True, max_size=3)
    )
    if envs:
        c["env"] = [{"name": n, **({"value": draw(TEXT)} if draw(st.booleans()) else {})} for n in envs]
    ports = []
    for j, number in enumerate(draw(st.lists(st.integers(1, 999), unique=True, max_size=3))):
        port: dict[str, Any] = {"containerPort": index * 1000 + number}
        if draw(st.booleans()):
            port["name"] = f"p{index}x{j}"
        port["protocol"] = draw(st.sampled_from(["TCP", "UDP"]))
        if draw(st.booleans()):
            port["hostPort"] = port["containerPort"] if host_net else 10000 + index * 1000 + number
            if draw(st.booleans()):
                port["hostIP"] = draw(st.sampled_from(["127.0.0.1", "::1"]))
        ports.append(port)
    if ports:
        c["ports"] = ports
    mounts = draw(st.lists(st.sampled_from(volumes), unique=True)) if volumes else []
    if mounts:
        c["volumeMounts"] = [
            {"name": v, "mountPath": "/mnt/" + v, "readOnly": draw(st.booleans())} for v in mounts
        ]
    resources: dict[str, dict[str, str]] = {}
    for kind, limit, request in draw(st.lists(QUANTITIES, unique_by=lambda q: q[0], max_size=2)):
        resources.setdefault("limits", {})[kind] = limit
        if draw(st.booleans()):
            resources.setdefault("requests", {})[kind] = request
    if resources:
        c["resources"] = resources
    security: dict[str, Any] = {}
    for key in ("runAsUser", "runAsGroup"):
        if draw(st.booleans()):
            security[key] = draw(st.integers(0, 65535))
    if draw(st.booleans()):
        security["readOnlyRootFilesystem"] = draw(st.booleans())
    caps = {k: draw(st.lists(CAP_NAMES, max_size=3)) for k in ("add", "drop") if draw(st.booleans())}
    if caps:
        security["capabilities"] = caps
    if security:
        c["securityContext"] = security
    return c


@st.composite
def kube_pods(draw: st.DrawFn) -> dict[str, Any]:
    volumes = draw(st.lists(NAMES, unique=True, max_size=3))
    apps = draw(st.lists(NAMES, unique=True, min_size=1, max_size=3))
    net = draw(
        st.sampled_from([None, "hostNetwork", "no-hostNetwork", "default", "host", "none", "cni1:a=b"])
    )
    host = net in ("hostNetwork", "host")
    spec: dict[str, Any] = {
        "containers": [draw(containers(n, i, volumes, host)) for i, n in enumerate(apps)]
    }
    if net in ("hostNetwork", "no-hostNetwork"):
        spec["hostNetwork"] = net == "hostNetwork"
    if volumes:
        spec["volumes"] = [
            {"name": v, **draw(st.sampled_from([{"hostPath": {"path": "/srv/" + v}}, {"emptyDir": {}}]))}
            for v in volumes
        ]
    for key, values in (
        ("restartPolicy", ["Always", "OnFailure", "Never"]),
        ("terminationGracePeriodSeconds", [0, 1, 30, 600]),
        ("dnsPolicy", ["ClusterFirst", "Default"]),
    ):
        if draw(st.booleans()):
            spec[key] = draw(st.sampled_from(values))
    if draw(st.booleans()):
        spec["dnsPolicy"] = "None"
        spec["dnsConfig"] = {
            "nameservers": draw(
                st.lists(st.sampled_from(["10.0.0.1", "fd00::1", "192.0.2.9"]), min_size=1, max_size=3)
            ),
            "searches": draw(st.lists(st.sampled_from(["example.com", "a.b"]), max_size=2)),
            "options": draw(
                st.lists(st.sampled_from([{"name": "ndots", "value": "3"}, {"name": "edns0"}]), max_size=2)
            ),
        }
    metadata: dict[str, Any] = {"name": draw(NAMES)}
    annotations = {f"example.com/{k}": v for k, v in draw(st.dictionaries(NAMES, TEXT, max_size=2)).items()}
    if draw(st.booleans()):
        annotations["rktd/restart"] = draw(st.sampled_from(["on-abnormal", "always", "no"]))
    if net and "hostNetwork" not in net:
        annotations["rktd/net"] = net
    if annotations:
        metadata["annotations"] = annotations
    labels = draw(
        st.dictionaries(
            st.from_regex(r"([a-z]{1,5}\.io/)?[A-Za-z][A-Za-z0-9_.-]{0,6}[A-Za-z0-9]", fullmatch=True),
            st.from_regex(r"([A-Za-z0-9][A-Za-z0-9_.-]{0,5}[A-Za-z0-9])?", fullmatch=True),
            max_size=2,
        )
    )
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


@given(kube_pods())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_generated_pods_round_trip(doc: dict[str, Any]) -> None:
    try:
        name, pod = kube.load_named(yaml.safe_dump(doc, allow_unicode=True).encode(), "gen.yaml")
    except ManifestError as e:
        # The strategy only builds valid pods but for args without command; nothing else may fail.
        assert e.field.endswith(".args"), str(e)
        return
    text = kube.dump_pod(pod, name)
    assert kube.load_named(text.encode(), "back.yaml") == (name, pod)
    assert kube.dump_pod(kube.load_named(text.encode(), "back.yaml")[1], name) == text
    # Every Kubernetes pod is also a valid appc pod: stage0 and `rktd cat-manifest` rely on it.
    assert appc.load_pod(appc.dump_pod(pod).encode(), "back.json") == pod


# Fuzzing: mutated valid documents, random structures and random text reach the loader.

JUNK = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | TEXT,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(kube.CHILDREN[""] + ("name", "x")) | TEXT, inner, max_size=3)
    ),
    max_leaves=8,
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


BASES = [yaml.safe_load(p.read_bytes()) for p in VALID + INVALID]


@st.composite
def mutated_documents(draw: st.DrawFn) -> bytes:
    doc = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_paths(doc)))
        if not path:
            doc = draw(JUNK)
            continue
        parent = doc
        for step in path[:-1]:
            parent = parent[step]
        if isinstance(parent, dict) and draw(st.booleans()):
            parent[draw(st.sampled_from(sorted({p.rpartition(".")[2] for p in kube.CHILDREN})) | TEXT)] = (
                draw(JUNK)
            )
        else:
            parent[path[-1]] = draw(JUNK)
    return yaml.safe_dump(doc, allow_unicode=True).encode()


@st.composite
def mutated_text(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from([p.read_bytes() for p in VALID + INVALID])))
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(data)))
        piece = draw(
            st.sampled_from(
                [
                    b"&a ",
                    b"*a",
                    b": ",
                    b"- ",
                    b"\n  ",
                    b"{",
                    b"]",
                    b"!!binary ",
                    b'"\\ud800"',
                    b"\x00",
                    b"~",
                    b"<<: *a",
                ]
            )
            | st.binary(max_size=4)
        )
        if draw(st.booleans()):
            data[at:at] = piece
        else:
            del data[at : at + draw(st.integers(1, 20))]
    return bytes(data)


@given(st.one_of(mutated_documents(), mutated_text(), st.binary(max_size=64)))
@settings(max_examples=3000, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_only_manifest_errors_escape(data: bytes) -> None:
    try:
        name, pod = kube.load_named(data, "fuzz.yaml")
    except ManifestError as e:
        assert e.path == "fuzz.yaml" and "\n" not in str(e)
        return
    assert kube.load_named(kube.dump_pod(pod, name).encode(), "again.yaml") == (name, pod)
