"""appc PodManifest / ImageManifest parsing, canonical dumping, the format registry, golden invalid files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rktd_units import formats
from rktd_units.errors import ManifestError, UsageError
from rktd_units.formats import appc
from rktd_units.model import App, ManifestFormat, NameValue, Pod, PodFile, Protocol, VolumeKind
from tests.conftest import ROOT, VECTORS

INVALID = Path(__file__).resolve().parent / "fixtures" / "invalid"
FULL_ID = "sha512-" + "0123456789abcdef" * 8


def pod_json(**top: object) -> dict[str, object]:
    doc: dict[str, object] = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "web",
                "image": {"name": "example.com/web"},
                "app": {"exec": ["/bin/web"], "user": "0", "group": "0"},
            }
        ],
    }
    doc.update(top)
    return doc


def load(doc: object) -> Pod:
    return appc.load_pod(json.dumps(doc).encode(), "t.json")


def error_of(doc: object) -> ManifestError:
    with pytest.raises(ManifestError) as info:
        load(doc)
    return info.value


# --- public vectors ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pod_runtime.json", "pod_template.json"])
def test_pod_vectors_load_and_round_trip(name: str) -> None:
    pod = appc.load_pod((VECTORS / name).read_bytes(), name)
    text = appc.dump_pod(pod)
    assert appc.load_pod(text.encode(), name) == pod
    assert appc.dump_pod(appc.load_pod(text.encode(), name)) == text
    assert text.endswith("}\n")
    # What the vector says survives, key by key (the dump is not just self-consistent).
    original = json.loads((VECTORS / name).read_text())
    dumped = json.loads(text)
    assert [a["name"] for a in dumped["apps"]] == [a["name"] for a in original["apps"]]
    assert [a["image"] for a in dumped["apps"]] == [a["image"] for a in original["apps"]]
    assert dumped["isolators"] == original["isolators"]


def test_pod_runtime_vector_model() -> None:
    pod = appc.load_pod((VECTORS / "pod_runtime.json").read_bytes(), "v")
    worker = pod.app_named("reduce-worker")
    assert worker is not None and worker.app is not None
    assert worker.app.exec == ("/usr/bin/reduce-worker", "--debug=true", "--data-dir=/mnt/foo")
    assert worker.app.mount_points[0].path == "/var/lib/db"
    assert worker.image.id is not None and len(worker.image.id) == len("sha512-") + 128
    backup = pod.app_named("backup")
    assert backup is not None and backup.app is None
    assert [m.volume for m in backup.mounts] == ["dbvolume", "buildoutput"]
    assert backup.annotations == (NameValue("foo", "baz"),)
    host, empty = pod.volumes
    assert (host.kind, host.source, host.read_only) == (VolumeKind.HOST, "/opt/tenant1/database", True)
    assert (empty.kind, empty.mode, empty.uid, empty.gid) == (VolumeKind.EMPTY, "0777", 0, 0)
    assert pod.isolators[1].value == {"net.ipv4.tcp_fin_timeout": "6"}
    assert pod.annotation("ip-address") == "10.1.2.3"


def test_image_vector_round_trip() -> None:
    m = appc.load_image_manifest((VECTORS / "image.json").read_bytes(), "image.json")
    assert m.name == "example.com/reduce-worker"
    assert m.label("os") == "linux" and m.label("arch") == "amd64"
    assert m.app is not None and (m.app.user, m.app.group) == ("100", "300")
    assert [e.name for e in m.app.event_handlers] == ["pre-start", "post-stop"]
    assert m.app.ports[0].socket_activated and m.app.ports[0].protocol is Protocol.TCP
    assert m.dependencies[0].image_name == "example.com/reduce-worker-base"
    assert m.path_whitelist[-1] == "/etc/systemd/system/"
    text = appc.dump_image_manifest(m)
    assert appc.load_image_manifest(text.encode(), "x") == m
    assert appc.dump_image_manifest(appc.load_image_manifest(text.encode(), "x")) == text


def test_image_manifest_errors_name_path_and_field() -> None:
    doc = json.loads((VECTORS / "image.json").read_text())
    doc["acKind"] = "PodManifest"
    with pytest.raises(ManifestError) as info:
        appc.load_image_manifest(json.dumps(doc).encode(), "/x/manifest")
    assert (info.value.path, info.value.field) == ("/x/manifest", "acKind")
    doc = json.loads((VECTORS / "image.json").read_text())
    del doc["name"]
    with pytest.raises(ManifestError, match="name: is required"):
        appc.load_image_manifest(json.dumps(doc).encode(), "m")


# --- decisions ---------------------------------------------------------------------------------


def test_keys_match_case_insensitively_and_dump_in_appc_spelling() -> None:
    doc = pod_json()
    doc["APPS"] = doc.pop("apps")
    doc["APPS"][0]["app"]["supplementaryGids"] = [10, 20]  # type: ignore[index]
    pod = load(doc)
    app = pod.apps[0].app
    assert app is not None and app.supplementary_gids == (10, 20)
    dumped = json.loads(appc.dump_pod(pod))
    assert dumped["apps"][0]["app"]["supplementaryGIDs"] == [10, 20]
    assert "APPS" not in dumped


def test_unknown_key_is_an_error_with_a_suggestion() -> None:
    doc = pod_json()
    doc["apps"][0]["app"]["enviroment"] = []  # type: ignore[index]
    err = error_of(doc)
    assert err.field == "apps[0].app.enviroment"
    assert err.hint == "did you mean 'environment'?"
    assert str(err) == "t.json: apps[0].app.enviroment: unknown key (did you mean 'environment'?)"


def test_null_is_absent_as_rkt_wrote_it() -> None:
    pod = load(pod_json(volumes=None, isolators=None, annotations=None, ports=None))
    assert pod.volumes == () and pod.ports == ()


def test_docker_image_names_are_accepted() -> None:
    for ref in (
        "docker://busybox",
        "docker://quay.io:443/coreos/etcd:v3.5.0",
        "docker://library/nginx@sha256:" + "a" * 64,
    ):
        doc = pod_json()
        doc["apps"][0]["image"] = {"name": ref}  # type: ignore[index]
        pod = load(doc)
        assert pod.apps[0].image.name == ref and pod.apps[0].image.is_docker


@pytest.mark.parametrize(
    ("image_id", "ok"),
    [
        (FULL_ID, True),
        (FULL_ID[:19], True),
        (FULL_ID[:18], False),
        (FULL_ID + "0", False),
        (FULL_ID.upper(), False),
    ],
)
def test_image_id_full_or_prefix_of_12_hex(image_id: str, ok: bool) -> None:
    doc = pod_json()
    doc["apps"][0]["image"]["id"] = image_id  # type: ignore[index]
    if ok:
        assert load(doc).apps[0].image.id == image_id
    else:
        assert error_of(doc).field == "apps[0].image.id"


def test_every_known_isolator_round_trips() -> None:
    isolators = [
        {"name": "resource/cpu", "value": {"request": "250m", "limit": 2}},
        {"name": "resource/memory", "value": {"limit": "512Mi"}},
        {"name": "resource/block-bandwidth", "value": {"default": True, "limit": "10M"}},
        {"name": "resource/block-iops", "value": {"default": True, "limit": "1000"}},
        {"name": "resource/network-bandwidth", "value": {"default": True, "limit": "1e6"}},
        {"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_NET_BIND_SERVICE"]}},
        {"name": "os/linux/capabilities-remove-set", "value": {"set": ["CAP_SYS_ADMIN"]}},
        {"name": "os/linux/no-new-privileges", "value": True},
        {
            "name": "os/linux/seccomp-remove-set",
            "value": {"set": ["reboot", "@rkt/default-blacklist"], "errno": "EPERM"},
        },
        {"name": "os/linux/oom-score-adj", "value": -500},
        {"name": "os/linux/cpu-shares", "value": 512},
        {
            "name": "os/linux/selinux-context",
            "value": {"user": "u", "role": "r", "type": "t", "level": "s0"},
        },
        {"name": "os/linux/apparmor-profile", "value": {"profile": "rktd-default"}},
        {"name": "os/unix/sysctl", "value": {"net.core.somaxconn": "1024", "kernel.msgmax": "8192"}},
    ]
    retain = {"name": "os/linux/seccomp-retain-set", "value": {"set": ["@rkt/default-whitelist"]}}
    assert {i["name"] for i in [*isolators, retain]} == set(appc.ISOLATOR_BY_NAME)
    doc = pod_json(isolators=[retain])
    doc["apps"][0]["app"]["isolators"] = isolators  # type: ignore[index]
    pod = load(doc)
    app = pod.apps[0].app
    assert app is not None
    assert [i.name for i in app.isolators] == [i["name"] for i in isolators]
    assert app.isolators[0].value == {"limit": 2, "request": "250m"}
    assert list(app.isolators[-1].value) == ["kernel.msgmax", "net.core.somaxconn"]  # sorted: canonical
    assert pod.isolators[0].value == {"set": ["@rkt/default-whitelist"]}
    assert load(json.loads(appc.dump_pod(pod))) == pod


def test_rktd_annotations_are_checked_and_others_are_free() -> None:
    pod = load(pod_json(annotations=[{"name": "rktd/wanted-by", "value": "multi-user.target"}]))
    assert pod.annotation("rktd/wanted-by") == "multi-user.target"
    err = error_of(pod_json(annotations=[{"name": "rktd/stage1", "value": "kvm"}]))
    assert err.field == "annotations[rktd/stage1]" and err.path == "t.json"
    assert load(pod_json(annotations=[{"name": "example.com/owner", "value": "ops"}])).annotations


def test_mount_with_app_volume_needs_no_pod_volume() -> None:
    doc = pod_json()
    doc["apps"][0]["mounts"] = [  # type: ignore[index]
        {
            "volume": "scratch",
            "path": "/tmp",
            "appVolume": {"name": "scratch", "kind": "empty", "mode": "1777"},
        }
    ]
    mount = load(doc).apps[0].mounts[0]
    assert mount.app_volume is not None and mount.app_volume.mode == "1777"


def test_parse_app_is_reusable_with_its_own_field_prefix() -> None:
    app = appc.parse_app({"exec": ["/bin/sh"], "user": "nobody", "group": "nogroup"}, "spec.app")
    assert app == App(exec=("/bin/sh",), user="nobody", group="nogroup")
    with pytest.raises(ManifestError) as info:
        appc.parse_app({"exec": ["/bin/sh"], "user": "0"}, "spec.app")
    assert (info.value.path, info.value.field) == (None, "spec.app.group")
    assert appc.dump_app(app) == {"exec": ["/bin/sh"], "user": "nobody", "group": "nogroup"}


def test_dump_is_canonical_whatever_the_input_spelling() -> None:
    a = pod_json(userLabels={"b": "2", "a": "1"})
    b = {k.upper(): v for k, v in reversed(list(pod_json(userLabels={"a": "1", "b": "2"}).items()))}
    text = appc.dump_pod(load(a))
    assert text == appc.dump_pod(load(b))
    assert list(json.loads(text)) == ["acKind", "acVersion", "apps", "userLabels"]
    assert text.startswith('{\n    "acKind": "PodManifest",\n    "acVersion": "0.8.11",\n')
    assert text.endswith("}\n") and "\n\n" not in text


def test_errors_are_one_line() -> None:
    doc = pod_json()
    doc["apps"][0]["app"]["exec"] = ["/bin/echo", "two\nlines"]  # type: ignore[index]
    doc["apps"][0]["app"]["user"] = ""  # type: ignore[index]
    err = error_of(doc)
    assert "\n" not in str(err)
    assert str(err) == "t.json: apps[0].app.user: must not be empty"


def test_bad_bytes_are_manifest_errors() -> None:
    for data in (b"", b"\xef\xbb\xbf{}", b"{" * 100_000, b'{"a": 1e999999}', b"[" + b"1," * 10 + b"]"):
        with pytest.raises(ManifestError) as info:
            appc.load_pod(data, "bad.json")
        assert info.value.path == "bad.json"


# --- the registry ------------------------------------------------------------------------------


def test_registry_maps_suffixes_once() -> None:
    assert formats.format_for("/etc/rktd/pods/web.json") == formats.by_kind(ManifestFormat.APPC)
    assert (
        formats.format_for("a.yaml")
        == formats.format_for("a.yml")
        == formats.by_kind(ManifestFormat.KUBERNETES)
    )
    assert formats.format_for("web.json~") is None and formats.format_for("README") is None
    assert sorted(formats.SUFFIXES) == [".json", ".yaml", ".yml"]


def test_registry_load_and_dump(tmp_path: Path) -> None:
    path = tmp_path / "hello.json"
    path.write_bytes((ROOT / "examples" / "hello.json").read_bytes())
    pod_file = formats.load(path, "hello")
    assert pod_file == PodFile("hello", str(path), ManifestFormat.APPC, pod_file.pod)
    assert formats.dump(pod_file, ManifestFormat.APPC) == path.read_text()  # the example is canonical
    assert formats.dump(pod_file.pod, ManifestFormat.APPC) == path.read_text()
    with pytest.raises(UsageError):
        formats.dump(pod_file.pod, ManifestFormat.KUBERNETES)
    with pytest.raises(ManifestError, match="not a manifest file name"):
        formats.load(tmp_path / "hello.toml", "hello")
    with pytest.raises(ManifestError, match="cannot read") as info:
        formats.load(tmp_path / "missing.json", "missing")
    assert info.value.path == str(tmp_path / "missing.json")


def test_reading_json_does_not_import_yaml() -> None:
    code = (
        "import sys; from pathlib import Path; from rktd_units import formats, podpath;"
        f"formats.load(Path({str(ROOT / 'examples' / 'hello.json')!r}), 'hello');"
        "lazy = ('yaml', 'rktd_units.formats.kube', 'difflib', 'click');"
        "print(sorted(m for m in lazy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


# --- golden invalid manifests: NAME.<suffix> + NAME.expect (line 1: field path, line 2: message part) ---


def _golden() -> list[tuple[Path, str, str]]:
    cases = []
    for expect in sorted(INVALID.glob("*.expect")):
        manifests = [expect.with_suffix(s) for s in formats.SUFFIXES if expect.with_suffix(s).exists()]
        assert len(manifests) == 1, f"{expect}: needs exactly one manifest beside it, found {manifests}"
        field, message = expect.read_text().split("\n")[:2]
        cases.append((manifests[0], field, message))
    return cases


GOLDEN = _golden()


def test_golden_set_is_large_enough() -> None:
    assert sum(1 for m, _, _ in GOLDEN if m.suffix == ".json") >= 30


@pytest.mark.parametrize(("manifest", "field", "message"), GOLDEN, ids=[m.name for m, _, _ in GOLDEN])
def test_golden_invalid_manifest(manifest: Path, field: str, message: str) -> None:
    with pytest.raises(ManifestError) as info:
        formats.load(manifest, manifest.stem)
    err = info.value
    assert err.path == str(manifest)
    assert err.field == field, str(err)
    assert message in err.message, str(err)
    assert "\n" not in str(err) and str(err).startswith(f"{manifest}: ")


def test_kubernetes_pods_dump_to_appc_that_loads_back_equal() -> None:
    """The registry's two formats meet in one model: a Kubernetes pod is expressible as appc JSON."""
    yaml_text = b"""apiVersion: v1
kind: Pod
metadata:
  name: res
spec:
  volumes:
  - {name: data, hostPath: {path: /srv/data}}
  containers:
  - name: app
    image: busybox:1.36
    command: ["/bin/sh", "-c", "sleep 1"]
    env: [{name: FOO, value: bar}]
    resources:
      limits: {memory: 128Mi, cpu: 500m}
    volumeMounts: [{name: data, mountPath: /data}]
"""
    pod = formats.loads(yaml_text, "res.yaml", ManifestFormat.KUBERNETES)
    assert pod.apps[0].image.name == "docker://busybox:1.36"
    text = formats.dump(pod, ManifestFormat.APPC)
    assert appc.load_pod(text.encode(), "res.json") == pod
