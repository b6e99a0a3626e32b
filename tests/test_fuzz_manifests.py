"""Property tests: for any bytes, parsing either succeeds or raises ManifestError (never anything else),
and every manifest that loads round-trips through the canonical dump unchanged.

Examples per test are set so that the file runs > 10,000 examples in total in well under a minute.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rktd_units.errors import ManifestError
from rktd_units.formats import appc
from rktd_units.model import ImageManifest, Pod
from tests.conftest import VECTORS


def fast(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


VECTOR_DOCS = [json.loads((VECTORS / n).read_text()) for n in ("pod_runtime.json", "pod_template.json")]
IMAGE_DOC = json.loads((VECTORS / "image.json").read_text())

# Every key spelling the appc tables know, so random objects hit real parsers, not only "unknown key".
KEYS = sorted(
    {k.name for table in (appc.POD_KEYS, appc.APP_KEYS, appc.IMAGE_MANIFEST_KEYS) for k in table}
    | {"name", "value", "kind", "source", "mode", "uid", "gid", "volume", "path", "appVolume", "image", "id"}
    | {"labels", "hostPort", "hostIP", "protocol", "port", "count", "set", "errno", "limit", "request"}
)

text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
ac_name = st.from_regex(r"[a-z0-9]{1,6}(-[a-z0-9]{1,4}){0,2}", fullmatch=True)
ac_identifier = st.from_regex(r"[a-z0-9]{1,6}([-._~/][a-z0-9]{1,6}){0,3}", fullmatch=True)
abs_path = st.from_regex(r"/[a-z0-9._-]{0,8}(/[a-z0-9._-]{1,8}){0,2}", fullmatch=True)
scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | text
json_values = st.recursive(
    scalars | st.sampled_from(["PodManifest", "0.8.11", "tcp", "host", "empty", "/x", "sha512-" + "a" * 12]),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS) | text, inner, max_size=5)
    ),
    max_leaves=20,
)

VALID_ISOLATORS = [
    {"name": "resource/cpu", "value": {"limit": "500m"}},
    {"name": "resource/memory", "value": {"request": "64Mi", "limit": "1G"}},
    {"name": "resource/block-iops", "value": {"default": True, "limit": 100}},
    {"name": "os/linux/capabilities-retain-set", "value": {"set": ["CAP_NET_BIND_SERVICE"]}},
    {"name": "os/linux/no-new-privileges", "value": True},
    {"name": "os/linux/seccomp-remove-set", "value": {"set": ["reboot"], "errno": "EPERM"}},
    {"name": "os/linux/oom-score-adj", "value": 100},
    {"name": "os/unix/sysctl", "value": {"net.core.somaxconn": "512"}},
]


@st.composite
def apps(draw: st.DrawFn, index: int) -> dict[str, Any]:
    app: dict[str, Any] = {"exec": draw(st.lists(text, max_size=3).map(lambda a: ["/bin/x", *a]))}
    app["user"], app["group"] = draw(text.filter(bool)), draw(text.filter(bool))
    optional = {
        "supplementaryGIDs": st.lists(st.integers(0, 2**32 - 2), max_size=3),
        "workingDirectory": abs_path,
        "environment": st.lists(
            st.from_regex(r"[A-Z_][A-Z0-9_]{0,5}", fullmatch=True), unique=True, max_size=3
        ).map(lambda names: [{"name": n, "value": n.lower()} for n in names]),
        "eventHandlers": st.lists(st.sampled_from(["pre-start", "post-stop"]), unique=True).map(
            lambda names: [{"name": n, "exec": ["/bin/hook", n]} for n in names]
        ),
        "mountPoints": st.lists(ac_name, unique=True, max_size=2).map(
            lambda names: [{"name": n, "path": f"/mnt/{n}", "readOnly": len(n) % 2 == 0} for n in names]
        ),
        "ports": st.lists(
            st.tuples(ac_name, st.integers(1, 60000), st.booleans()), max_size=3, unique_by=lambda t: t[0]
        ).map(
            lambda ports: [
                {
                    "name": f"a{index}-{n}",
                    "protocol": "udp" if p % 2 else "tcp",
                    "port": p,
                    "socketActivated": s,
                }
                for n, p, s in ports
            ]
        ),
        "isolators": st.lists(st.sampled_from(VALID_ISOLATORS), unique_by=lambda i: i["name"], max_size=4),
        "userAnnotations": st.dictionaries(text, text, max_size=2),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), unique=True)):
        app[key] = draw(optional[key])
    return app


@st.composite
def pods(draw: st.DrawFn) -> dict[str, Any]:
    volumes = draw(st.lists(st.tuples(ac_name, st.booleans()), max_size=3, unique_by=lambda t: t[0]))
    doc: dict[str, Any] = {
        "acKind": "PodManifest",
        "acVersion": draw(st.sampled_from(["0.8.11", "0.3.0", "0.8.11-rc.1"])),
    }
    doc["volumes"] = [
        {"name": n, "kind": "host", "source": f"/srv/{n}", "readOnly": True}
        if host
        else {"name": n, "kind": "empty", "mode": "0750", "uid": 0, "gid": 100}
        for n, host in volumes
    ]
    doc["apps"] = []
    for i, name in enumerate(draw(st.lists(ac_name, min_size=1, max_size=3, unique=True))):
        image: dict[str, Any] = {"name": draw(ac_identifier | st.just("docker://busybox:latest"))}
        if draw(st.booleans()):
            image["id"] = "sha512-" + draw(st.from_regex(r"[0-9a-f]{12,128}", fullmatch=True))
        ra: dict[str, Any] = {"name": name, "image": image, "readOnlyRootFS": draw(st.booleans())}
        if draw(st.booleans()):
            ra["app"] = draw(apps(i))
        ra["mounts"] = [
            {"volume": n, "path": f"/v/{n}"} for n, _ in volumes[: draw(st.integers(0, len(volumes)))]
        ]
        doc["apps"].append(ra)
    doc["ports"] = [
        {"name": f"a0-{n}", "hostPort": p}
        for n, p in draw(st.dictionaries(ac_name, st.integers(1, 65535), max_size=2)).items()
    ]
    doc["annotations"] = draw(
        st.sampled_from([[], [{"name": "rktd/wanted-by", "value": "multi-user.target"}]])
    )
    doc["userLabels"] = draw(st.dictionaries(text, text, max_size=2))
    return doc


def must_load_or_refuse(data: bytes) -> Pod | None:
    """The property: a Pod, or a ManifestError naming the file; nothing else escapes."""
    try:
        pod = appc.load_pod(data, "fuzz.json")
    except ManifestError as e:
        assert e.path == "fuzz.json" and "\n" not in str(e)
        return None
    text = appc.dump_pod(pod)
    assert appc.load_pod(text.encode(), "again.json") == pod
    assert appc.dump_pod(appc.load_pod(text.encode(), "again.json")) == text
    return pod


@fast(1500)
@given(pods())
def test_valid_pods_load_and_round_trip(doc: dict[str, Any]) -> None:
    assert must_load_or_refuse(json.dumps(doc).encode()) is not None


@fast(3000)
@given(json_values)
def test_random_json_never_escapes(value: object) -> None:
    must_load_or_refuse(json.dumps(value).encode())
    for kind in ("PodManifest", "ImageManifest"):
        if isinstance(value, dict):
            must_load_or_refuse(json.dumps({"acKind": kind, "acVersion": "0.8.11", **value}).encode())


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, data: st.DataObject) -> Any:
    doc = copy.deepcopy(doc)
    path = data.draw(st.sampled_from(_paths(doc)))
    if not path:
        return data.draw(json_values)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = data.draw(st.sampled_from(["replace", "delete", "recase", "add", "null"]))
    if action == "replace":
        parent[last] = data.draw(json_values)
    elif action == "null":
        parent[last] = None
    elif action == "delete":
        del parent[last]
    elif action == "recase" and isinstance(last, str):
        parent[last.swapcase()] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[data.draw(st.sampled_from(KEYS) | text)] = data.draw(json_values)
    else:
        parent.append(data.draw(json_values))
    return doc


@fast(3000)
@given(st.data())
def test_mutated_manifests_never_escape(data: st.DataObject) -> None:
    doc = data.draw(st.sampled_from(VECTOR_DOCS) | pods())
    for _ in range(data.draw(st.integers(1, 3))):
        doc = _mutate(doc, data)
    must_load_or_refuse(json.dumps(doc).encode())


@fast(2000)
@given(st.data())
def test_mutated_bytes_never_escape(data: st.DataObject) -> None:
    raw = bytearray(json.dumps(data.draw(st.sampled_from(VECTOR_DOCS))).encode())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(raw) - 1))
        how = data.draw(st.sampled_from(["set", "cut", "insert"]))
        if how == "set":
            raw[at] = data.draw(st.integers(0, 255))
        elif how == "cut":
            del raw[at : at + data.draw(st.integers(1, 40))]
        else:
            raw[at:at] = data.draw(
                st.binary(max_size=8) | st.sampled_from([b'"', b"{", b"}", b"]", b",", b"\\u0000"])
            )
        if not raw:
            raw = bytearray(b"{")
    must_load_or_refuse(bytes(raw))


@fast(1000)
@given(st.data())
def test_image_manifests_never_escape(data: st.DataObject) -> None:
    doc = IMAGE_DOC
    for _ in range(data.draw(st.integers(1, 3))):
        doc = _mutate(doc, data)
    try:
        m = appc.load_image_manifest(json.dumps(doc).encode(), "manifest")
    except ManifestError as e:
        assert e.path == "manifest"
        return
    assert isinstance(m, ImageManifest)
    text = appc.dump_image_manifest(m)
    assert appc.load_image_manifest(text.encode(), "manifest") == m
