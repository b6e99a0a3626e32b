"""Property tests: for any bytes, parsing either succeeds or raises ManifestError (never anything else),
and every manifest that loads round-trips through the canonical dump unchanged.

Hypothesis draws a seed and the generators below build documents from it with `random.Random`
(building a pod from hypothesis primitives costs ~40 ms an example; from a seed, well under 1 ms),
plus one pure-hypothesis strategy of arbitrary JSON. The file runs > 10,000 examples in ~30 s.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rktd_units.errors import ManifestError
from rktd_units.formats import appc
from rktd_units.model import ImageManifest, Pod
from tests.conftest import VECTORS

VECTOR_DOCS = [json.loads((VECTORS / n).read_text()) for n in ("pod_runtime.json", "pod_template.json")]
IMAGE_DOC = json.loads((VECTORS / "image.json").read_text())

# Every key spelling the appc tables know, so random objects hit real parsers, not only "unknown key".
KEYS = sorted(
    {k.name for table in (appc.POD_KEYS, appc.APP_KEYS, appc.IMAGE_MANIFEST_KEYS) for k in table}
    | {"name", "value", "kind", "source", "mode", "uid", "gid", "volume", "path", "appVolume", "image", "id"}
    | {"labels", "hostPort", "hostIP", "protocol", "port", "count", "set", "errno", "limit", "request"}
)
ODD = ["", " ", "\n", "\x00", "\x7f", "\u2028", "é", "😀", "\\", '"', "]", ".", "A", "-", "/", "0"]
NAMES = ["a", "web", "db-1", "x0", "reduce-worker", "a-b-c", "9", "api", "cache", "z-1-2"]
IDENTIFIERS = ["example.com/web", "a", "coreos.com/etcd", "x/y~z", "a.b_c", "docker://busybox:1.36"]
SCALARS = [None, True, False, 0, -1, 1, 65535, 65536, 2**63, -(2**70), 0.5, 1e300, "", "0755", "/x", "tcp"]
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


def fast(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )


# --- seeded generators -------------------------------------------------------------------------


def rand_text(r: random.Random, *, nul: bool = True) -> str:
    """Random text; without NUL when it must be valid (nothing in a pod may contain NUL)."""
    alphabet = ODD + list("abcXYZ019") if nul else [c for c in ODD if c != "\x00"] + list("abcXYZ019")
    return "".join(r.choice(alphabet) for _ in range(r.randint(0, 6)))


def valid_text(r: random.Random) -> str:
    return rand_text(r, nul=False)


def rand_json(r: random.Random, depth: int = 0) -> Any:
    roll = r.random()
    if depth > 3 or roll < 0.5:
        return r.choice([*SCALARS, rand_text(r), r.choice(NAMES), r.choice(IDENTIFIERS)])
    if roll < 0.7:
        return [rand_json(r, depth + 1) for _ in range(r.randint(0, 3))]
    keys = [r.choice(KEYS) if r.random() < 0.7 else rand_text(r) for _ in range(r.randint(0, 4))]
    return {k: rand_json(r, depth + 1) for k in keys}


def rand_app(r: random.Random, index: int) -> dict[str, Any]:
    app: dict[str, Any] = {"exec": ["/bin/x", *(valid_text(r) for _ in range(r.randint(0, 2)))]}
    app["user"], app["group"] = r.choice(["0", "nobody", "1000", "/bin/ping"]), r.choice(["0", "users"])
    optional: dict[str, Any] = {
        "supplementaryGIDs": lambda: r.sample([0, 1, 100, 4294967294], r.randint(0, 3)),
        "workingDirectory": lambda: r.choice(["/", "/srv", "/var/lib/x"]),
        "environment": lambda: [
            {"name": n, "value": valid_text(r)} for n in r.sample(["A", "_B", "C.d", "e-1"], 2)
        ],
        "eventHandlers": lambda: [
            {"name": n, "exec": ["/hook"]} for n in r.sample(["pre-start", "post-stop"], r.randint(0, 2))
        ],
        "mountPoints": lambda: [
            {"name": n, "path": f"/mnt/{n}", "readOnly": r.random() < 0.5} for n in r.sample(NAMES, 2)
        ],
        "ports": lambda: [
            {
                "name": f"a{index}-{n}",
                "protocol": r.choice(["tcp", "udp"]),
                "port": r.randint(1, 60000),
                "count": r.randint(1, 9),
            }
            | ({"socketActivated": True} if r.random() < 0.3 else {})
            for n in r.sample(NAMES, r.randint(0, 3))
        ],
        "isolators": lambda: r.sample(VALID_ISOLATORS, r.randint(0, 4)),
        "userAnnotations": lambda: {valid_text(r): valid_text(r) for _ in range(r.randint(0, 2))},
    }
    for key in r.sample(sorted(optional), r.randint(0, len(optional))):
        app[key] = optional[key]()
    return app


def rand_pod(r: random.Random) -> dict[str, Any]:
    """A valid appc PodManifest exercising most of the schema."""
    volumes = r.sample(NAMES, r.randint(0, 3))
    doc: dict[str, Any] = {
        "acKind": "PodManifest",
        "acVersion": r.choice(["0.8.11", "0.3.0", "0.8.11-rc.1+b2"]),
    }
    doc["volumes"] = [
        {"name": n, "kind": "host", "source": f"/srv/{n}", "readOnly": r.random() < 0.5}
        if r.random() < 0.5
        else {"name": n, "kind": "empty", "mode": "0750", "uid": r.randint(0, 9), "gid": 100}
        for n in volumes
    ]
    doc["apps"] = []
    for i, name in enumerate(r.sample(NAMES, r.randint(1, 3))):
        image: dict[str, Any] = {"name": r.choice(IDENTIFIERS)}
        if r.random() < 0.5:
            image["id"] = "sha512-" + "".join(
                r.choice("0123456789abcdef") for _ in range(r.randint(12, 128))
            )
        ra: dict[str, Any] = {"name": name, "image": image, "readOnlyRootFS": r.random() < 0.5}
        if r.random() < 0.7:
            ra["app"] = rand_app(r, i)
        ra["mounts"] = [{"volume": v, "path": f"/v/{v}"} for v in volumes[: r.randint(0, len(volumes))]]
        doc["apps"].append(ra)
    doc["ports"] = [
        {"name": f"a0-{n}", "hostPort": r.randint(1, 65535)} for n in r.sample(NAMES, r.randint(0, 2))
    ]
    doc["annotations"] = r.choice([[], [{"name": "rktd/wanted-by", "value": "multi-user.target"}]])
    doc["userLabels"] = {valid_text(r): valid_text(r) for _ in range(r.randint(0, 2))}
    return doc


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def mutate(doc: Any, r: random.Random) -> Any:
    """One structural change somewhere in a document: replace, null, delete, re-case or add."""
    doc = copy.deepcopy(doc)
    path = r.choice(_paths(doc))
    if not path:
        return rand_json(r)
    parent = doc
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    action = r.choice(["replace", "delete", "recase", "add", "null"])
    if action == "replace":
        parent[last] = rand_json(r)
    elif action == "null":
        parent[last] = None
    elif action == "delete":
        del parent[last]
    elif action == "recase" and isinstance(last, str):
        parent[last.swapcase()] = parent.pop(last)
    elif isinstance(parent, dict):
        parent[r.choice(KEYS)] = rand_json(r)
    else:
        parent.append(rand_json(r))
    return doc


def must_load_or_refuse(data: bytes) -> Pod | None:
    """The property: a Pod that round-trips, or a one-line ManifestError naming the file; nothing else."""
    try:
        pod = appc.load_pod(data, "fuzz.json")
    except ManifestError as e:
        assert e.path == "fuzz.json" and len(str(e).splitlines()) == 1, repr(str(e))
        return None
    text = appc.dump_pod(pod)
    assert appc.load_pod(text.encode(), "again.json") == pod
    assert appc.dump_pod(appc.load_pod(text.encode(), "again.json")) == text
    return pod


seeds = st.integers(0, 2**64)


# --- properties ---------------------------------------------------------------------------------


@fast(2500)
@given(seeds)
def test_valid_pods_load_and_round_trip(seed: int) -> None:
    doc = rand_pod(random.Random(seed))
    assert must_load_or_refuse(json.dumps(doc).encode()) is not None, doc


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.sampled_from(ODD + KEYS),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(KEYS + ODD), inner, max_size=4)
    ),
    max_leaves=12,
)


@fast(1500)
@given(json_values)
def test_random_json_never_escapes(value: object) -> None:
    must_load_or_refuse(json.dumps(value).encode())
    if isinstance(value, dict):
        must_load_or_refuse(json.dumps({"acKind": "PodManifest", "acVersion": "0.8.11", **value}).encode())


@fast(3500)
@given(seeds, st.integers(1, 3))
def test_mutated_manifests_never_escape(seed: int, rounds: int) -> None:
    r = random.Random(seed)
    doc = r.choice(VECTOR_DOCS) if r.random() < 0.3 else rand_pod(r)
    for _ in range(rounds):
        doc = mutate(doc, r)
    must_load_or_refuse(json.dumps(doc, ensure_ascii=r.random() < 0.5).encode())


@fast(2000)
@given(seeds, st.integers(1, 4))
def test_mutated_bytes_never_escape(seed: int, rounds: int) -> None:
    r = random.Random(seed)
    raw = bytearray(json.dumps(r.choice(VECTOR_DOCS) if r.random() < 0.5 else rand_pod(r)).encode())
    for _ in range(rounds):
        at = r.randrange(len(raw))
        how = r.choice(["set", "cut", "insert"])
        if how == "set":
            raw[at] = r.randrange(256)
        elif how == "cut":
            del raw[at : at + r.randint(1, 40)]
        else:
            raw[at:at] = r.choice([b'"', b"{", b"}", b"]", b",", b"\\u0000", b"\\ud800", b"\xff", b"1e999"])
        raw = raw or bytearray(b"{")
    must_load_or_refuse(bytes(raw))


@fast(1000)
@given(seeds, st.integers(1, 3))
def test_image_manifests_never_escape(seed: int, rounds: int) -> None:
    r = random.Random(seed)
    doc = IMAGE_DOC
    for _ in range(rounds):
        doc = mutate(doc, r)
    try:
        m = appc.load_image_manifest(json.dumps(doc).encode(), "manifest")
    except ManifestError as e:
        assert e.path == "manifest" and len(str(e).splitlines()) == 1
        return
    assert isinstance(m, ImageManifest)
    text = appc.dump_image_manifest(m)
    assert appc.load_image_manifest(text.encode(), "manifest") == m
