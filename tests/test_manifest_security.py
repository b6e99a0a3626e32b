"""Manifests only root can change, read as checked; one grammar per name type; no zone in hostIP.

- StrictModes on the real path (review finding 9a): `rktd prepare --pod-manifest=PATH` (stage0),
  `validate` and the generator refuse a manifest that anyone but root could change: the file, its
  directory, any directory above it (sticky ones, as /tmp, excepted), and the directories and links a
  symbolic link leads through.
- One open per check (9b): the file checked is the file read. A RENAME_EXCHANGE loop run by the
  owner of a directory on the way never gets its own manifest turned into a unit or a pod.
- `$` lets a trailing newline through (16): every validation pattern is anchored with \\Z or used
  with fullmatch (the golden fixtures in tests/fixtures/invalid hold the manifests).
- The `rktd/net` annotation is read with stage0's own `--net` parser (17).
- A hostIP with an IPv6 zone never reaches ListenStream= (18).
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rktd_units import annotations, formats, generator, netspec, podpath, units
from rktd_units.errors import ManifestError, PodError, UsageError
from rktd_units.model import ManifestFormat, PodFile
from tests.helpers.manifests import pod_manifest

ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def manifest(exec_: str = "/bin/web", image: str = "example.com/absent") -> str:
    return pod_manifest(exec_, app="web", image=image)


def mkdir(path: Path, mode: int = 0o755, owner: int = 0) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    os.chown(path, owner, owner)
    return path


def put(path: Path, text: str, mode: int = 0o644, owner: int = 0) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    os.chown(path, owner, owner)
    return path


def link(path: Path, target: Path | str, owner: int = 0) -> Path:
    path.symlink_to(target)
    os.lchown(path, owner, owner)
    return path


# -- 9a: stage0 applies StrictModes to the path it is given -----------------------------------------------


def _world_writable(base: Path) -> tuple[Path, str, str]:
    path = put(mkdir(base / "pods") / "web.json", manifest(), 0o666)
    return path, "the manifest is writable by group or others", f"chmod go-w {path}"


def _nobody_owned(base: Path) -> tuple[Path, str, str]:
    path = put(mkdir(base / "pods") / "web.json", manifest(), owner=NOBODY)
    return path, f"the manifest is owned by uid {NOBODY}, not root", f"chown root {path}"


def _writable_directory(base: Path) -> tuple[Path, str, str]:
    pods = mkdir(base / "pods", 0o777)
    return (
        put(pods / "web.json", manifest()),
        "its directory is writable by group or others",
        f"chmod go-w {pods}",
    )


def _writable_ancestor(base: Path) -> tuple[Path, str, str]:
    shared = mkdir(base / "shared", 0o775)
    path = put(mkdir(shared / "pods") / "web.json", manifest())
    return path, f"directory {shared} above it is writable by group or others", f"chmod go-w {shared}"


def _link_into_a_users_directory(base: Path) -> tuple[Path, str, str]:
    alice = mkdir(base / "alice", owner=NOBODY)
    put(alice / "web.json", manifest())  # root's file, in a directory alice can change at will
    path = link(mkdir(base / "pods") / "web.json", alice / "web.json")
    return (
        path,
        f"directory {alice} is owned by uid {NOBODY}, not root",
        f"chown root {alice}, or move the manifest",
    )


def _users_link_in_a_sticky_directory(base: Path) -> tuple[Path, str, str]:
    trusted = mkdir(base / "trusted")
    put(trusted / "web.json", manifest())
    sticky = mkdir(base / "sticky", 0o1777)
    alias = link(sticky / "pods", trusted, owner=NOBODY)  # alice could point it anywhere
    path = alias / "web.json"
    return path, f"the symbolic link {alias} is owned by uid {NOBODY}, not root", f"chown -h root {alias}"


REFUSED = [
    _world_writable,
    _nobody_owned,
    _writable_directory,
    _writable_ancestor,
    _link_into_a_users_directory,
    _users_link_in_a_sticky_directory,
]


def rktd(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "rktd_units", f"--dir={tmp_path / 'state'}", *args]
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


@needs_root
@pytest.mark.parametrize("layout", REFUSED, ids=[f.__name__.strip("_") for f in REFUSED])
def test_stage0_refuses_a_manifest_others_can_change(
    tmp_path: Path, layout: Callable[[Path], tuple[Path, str, str]]
) -> None:
    path, problem, hint = layout(mkdir(tmp_path / "m"))
    proc = rktd(tmp_path, "prepare", "--pull-policy=never", f"--pod-manifest={path}")
    assert proc.returncode != 0
    assert proc.stderr == f"rktd: {path}: refused: {problem} ({hint})\n"
    assert not (tmp_path / "state" / "pods" / "prepared").exists() or not any(
        (tmp_path / "state" / "pods" / "prepared").iterdir()
    )
    validate = rktd(tmp_path, "validate", str(path))
    assert validate.returncode == 1 and f"refused: {problem}" in validate.stderr
    with pytest.raises(ManifestError, match="refused"):
        podpath.find(str(path))


@needs_root
def test_stage0_accepts_root_manifests_under_a_sticky_directory(tmp_path: Path) -> None:
    """/tmp is sticky: others cannot rename what is root's there, so it may be above a manifest."""
    sticky = mkdir(tmp_path / "tmp", 0o1777)
    path = put(mkdir(sticky / "pods") / "web.json", manifest())
    linked = link(mkdir(tmp_path / "etc") / "web.json", Path("..") / "tmp" / "pods" / "web.json")
    for given_path in (path, linked):
        proc = rktd(tmp_path, "prepare", "--pull-policy=never", f"--pod-manifest={given_path}")
        assert proc.returncode == 254, proc.stderr
        assert "refused" not in proc.stderr and "example.com/absent" in proc.stderr  # got as far as images
    assert podpath.find(str(linked)).pod.apps[0].app is not None
    # Directly in a sticky directory, anyone could have made the file: refused, and not by chmod.
    loose = put(sticky / "web.json", manifest())
    with pytest.raises(ManifestError, match=f"its directory is writable .*move the manifest.*not {sticky}"):
        podpath.find(str(loose))


# -- 9a: the search path, symbolic links and masks -------------------------------------------------------


@needs_root
def test_links_on_the_search_path_are_followed_checked(tmp_path: Path) -> None:
    etc = mkdir(tmp_path / "etc")
    shared = put(mkdir(tmp_path / "srv" / "pods") / "shared.json", manifest("/bin/shared"))
    link(etc / "rel.json", Path("..") / "srv" / "pods" / "shared.json")
    link(etc / "abs.json", shared)
    link(etc / "chain.json", etc / "abs.json")
    link(etc / "loop.json", etc / "loop.json")
    link(etc / "nul.json", os.devnull)
    link(etc / "nulchain.json", etc / "nul.json")
    alice = mkdir(tmp_path / "alice", owner=NOBODY)
    put(alice / "theirs.json", manifest("/bin/evil"))
    link(etc / "theirs.json", alice / "theirs.json")
    link(etc / "viadir.json", Path("..") / "alice" / ".." / "srv" / "pods" / "shared.json")
    pods, errors = podpath.load_all([etc])
    assert sorted(p.name for p in pods) == ["abs", "chain", "rel"]
    for pod in pods:
        assert pod.pod.apps[0].app is not None and pod.pod.apps[0].app.exec == ("/bin/shared",)
    assert [(Path(e.path or "").name, e.message.split(":")[0]) for e in errors] == [
        ("loop.json", "cannot read"),
        ("theirs.json", "refused"),
        ("viadir.json", "refused"),  # every directory passed counts, even one left by ..
    ]
    assert f"directory {alice} is owned by uid {NOBODY}" in errors[1].message
    with pytest.raises(PodError, match="masked by"):
        podpath.find("nulchain", [etc])


@needs_root
def test_a_refused_search_directory_hides_lower_ones(tmp_path: Path) -> None:
    shared = mkdir(tmp_path / "shared", 0o770)
    upper = mkdir(shared / "pods")
    lower = mkdir(tmp_path / "lib")
    put(upper / "web.json", manifest("/bin/upper"))
    put(lower / "web.json", manifest("/bin/lower"))
    put(lower / "db.json", manifest("/bin/db"))
    found, errors = podpath.scan_files([upper, lower])
    assert [name for name, _, _ in found] == ["db"]
    assert [(e.path, e.message) for e in errors] == [
        (str(upper / "web.json"), f"refused: directory {shared} above it is writable by group or others")
    ]


# -- 9b: one open per check: a swap loop never gets its manifest run --------------------------------------

SWAPPER = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
a, b, stop = sys.argv[1].encode(), sys.argv[2].encode(), sys.argv[3]
swaps = 0
print("go", flush=True)
while swaps < 5_000_000 and not os.path.exists(stop):
    swaps += libc.renameat2(-100, a, -100, b, 2) == 0  # AT_FDCWD, RENAME_EXCHANGE
print(swaps)
"""


@pytest.fixture
def world_reachable() -> Iterator[Path]:
    """A directory under /tmp that user nobody can reach (pytest's tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="rktd-race-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path)


@needs_root
def test_rename_exchange_race_never_runs_the_attackers_manifest(
    world_reachable: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reviewer's race: pods/web.json links to alice/real.json, which alice keeps exchanging
    (renameat2 RENAME_EXCHANGE, as user nobody) between a link to root's good manifest and her own.
    Checked by one path and read by another, her manifest became a unit 43 times in 200."""
    base = world_reachable
    good = put(mkdir(base / "trusted") / "web.json", manifest("/bin/good"))
    alice = mkdir(base / "alice", owner=NOBODY)
    link(alice / "real.json", good, owner=NOBODY)
    put(alice / "mine.json", manifest("/bin/evil"), owner=NOBODY)
    pods = mkdir(base / "pods")
    link(pods / "web.json", alice / "real.json")
    monkeypatch.setenv("RKTD_PODS_PATH", str(pods))
    stop = base / "stop"
    swapper = subprocess.Popen(
        [
            "/usr/bin/python3",
            "-I",
            "-c",
            SWAPPER,
            str(alice / "real.json"),
            str(alice / "mine.json"),
            str(stop),
        ],
        user=NOBODY,
        group=NOBODY,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert swapper.stdout is not None and swapper.stdout.readline() == "go\n"  # swapping from now on
    outcomes: set[str] = set()

    def generate() -> tuple[list[str], list[str]]:
        written: list[str] = []
        logged: list[str] = []
        generator.generate(lambda _, text, __: written.append(text or ""), lambda _, m: logged.append(m))
        return written, logged

    try:
        for _ in range(200):
            written, logged = generate()
            assert not any("/bin/evil" in text for text in written)
            outcomes.add("unit" if written else " ".join(logged))
            pods_loaded, _ = podpath.load_all([pods])
            assert all(p.pod.apps[0].app and p.pod.apps[0].app.exec != ("/bin/evil",) for p in pods_loaded)
            try:
                found = podpath.find(str(pods / "web.json"))  # stage0's path
                assert found.pod.apps[0].app and found.pod.apps[0].app.exec != ("/bin/evil",)
            except ManifestError as e:
                outcomes.add(str(e))
    finally:
        stop.touch()
        out, _ = swapper.communicate(timeout=60)
    assert int(out) > 0  # the attack really ran alongside
    refusal = f"refused: directory {alice} is owned by uid {NOBODY}, not root"
    assert outcomes and all(refusal in o for o in outcomes), outcomes


# -- 16: no pattern anchored with $ -----------------------------------------------------------------------

# `$` matches before a trailing newline. Patterns in modules outside this change, each a known case for
# their owners (at most this many per module): docker.py's reference, tag and digest patterns, store.py's
# image IDs, network.py's host names and container IDs, templatec.py's (trusted) template syntax.
KNOWN_DOLLAR = {"docker.py": 5, "store.py": 2, "network.py": 2, "templatec.py": 3}


def _dollar_patterns(tree: ast.AST) -> list[str]:
    """Patterns (string literals starting with ^, or given to re's functions) that end in `$`."""
    given = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.args:
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("compile", "match", "search", "fullmatch", "matching", "sub"):
                given.add(id(node.args[0]))
    found = []
    for node in ast.walk(tree):
        text = None
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
        elif isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[-1], ast.Constant):
            text = str(node.values[-1].value)
        if not text or not (text.startswith("^") or id(node) in given):
            continue
        if text.endswith("$") and not text.endswith("\\$"):
            found.append(text)
    return found


def test_no_validation_pattern_ends_in_dollar() -> None:
    for path in sorted((ROOT / "rktd_units").rglob("*.py")):
        patterns = _dollar_patterns(ast.parse(path.read_text()))
        assert len(patterns) <= KNOWN_DOLLAR.get(path.name, 0), f"{path}: use \\Z or fullmatch: {patterns}"


@pytest.mark.parametrize(
    "parse, value",
    [
        (lambda v: annotations.read({"rktd/stage1": v}), "fly\n"),
        (lambda v: annotations.read({"rktd/net": v}), "host\n"),
        (netspec.parse, "default\n"),
        (netspec.parse, "default:IP=1\n"),
    ],
)
def test_trailing_newlines_are_refused(parse: Callable[[str], object], value: str) -> None:
    with pytest.raises((ValueError, ManifestError)):
        parse(value)


def test_name_patterns_are_defined_once() -> None:
    from rktd_units import appc_discovery, names, trust
    from rktd_units.formats import appc, kube

    assert appc.AC_IDENTIFIER_RE is kube.AC_IDENTIFIER_RE is trust.AC_IDENTIFIER is names.AC_IDENTIFIER_RE
    assert appc_discovery.AC_IDENTIFIER is names.AC_IDENTIFIER_RE
    assert (
        annotations.AC_NAME_RE
        is appc.AC_NAME_RE
        is kube.AC_NAME_RE
        is podpath.AC_NAME_RE
        is names.AC_NAME_RE
    )
    own = re.compile(r"\[a-z0-9\]\+\((?:\?:)?(?:-|\[-\._~/\])\[a-z0-9\]\+\)\*")
    assert own.search((ROOT / "rktd_units" / "names.py").read_text())
    for path in sorted((ROOT / "rktd_units").rglob("*.py")):
        if path.name != "names.py":
            assert not own.search(path.read_text()), (
                f"{path} defines its own AC Name or AC Identifier pattern"
            )


# -- 17: the rktd/net annotation is checked by stage0's --net parser ---------------------------------------

NET_WORDS = [
    "default",
    "host",
    "none",
    "all",
    "lan",
    "La",
    "-",
    ":",
    "=",
    ";",
    ",",
    "_",
    "IP",
    "9",
    " ",
    "\n",
]
NET_TEXT = st.lists(st.sampled_from(NET_WORDS), min_size=1, max_size=12).map("".join)


@given(NET_TEXT)
@settings(max_examples=400, deadline=None)
def test_annotation_accepts_exactly_what_stage0_runs(value: str) -> None:
    from rktd_units import network

    try:
        network.parse_nets(value)
        stage0_ok = True
    except UsageError:
        stage0_ok = False
    try:
        annotations.read({"rktd/net": value})
        generator_ok = True
    except ManifestError:
        generator_ok = False
    assert generator_ok == stage0_ok, value


def test_the_reviewers_net_annotation_is_refused_by_both() -> None:
    from rktd_units import network

    with pytest.raises(UsageError, match="'notkv' is not K=V"):
        network.parse_nets("default:notkv,default")
    with pytest.raises(ManifestError, match=r"annotations\[rktd/net\]: 'default:notkv': 'notkv' is not K=V"):
        annotations.read({"rktd/net": "default:notkv,default"})


# -- 18: an IPv6 zone never reaches a unit ---------------------------------------------------------------


@pytest.mark.parametrize("host_ip", ["fe80::1%eth0]:99 x", "fe80::1%eth0", "fe80::1%1"])
def test_scoped_host_ips_are_refused_by_every_path(host_ip: str) -> None:
    app = {"exec": ["/bin/web"], "user": "0", "group": "0"}
    app["ports"] = [{"name": "http", "protocol": "tcp", "port": 80, "socketActivated": True}]
    doc = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [{"name": "web", "image": {"name": "example.com/web"}, "app": app}],
        "ports": [{"name": "http", "hostPort": 8080, "hostIP": host_ip}],
    }
    with pytest.raises(ManifestError, match=r"ports\[0\]\.hostIP: .* is a scoped address"):
        formats.load_bytes(json.dumps(doc).encode(), "/pods/web.json", "web")
    port = f"{{containerPort: 80, hostPort: 8080, hostIP: {json.dumps(host_ip)}}}"
    kube_doc = (
        "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec:\n  containers:\n  - name: web\n"
        f"    image: busybox\n    ports: [{port}]\n"
    )
    with pytest.raises(
        ManifestError, match=r"spec\.containers\[0\]\.ports\[0\]\.hostIP: .* is a scoped address"
    ):
        formats.load_bytes(kube_doc.encode(), "/pods/web.yaml", "web")
    # A pod made some other way is refused by the converter too, never written into ListenStream=.
    doc["ports"] = [{"name": "http", "hostPort": 8080, "hostIP": "fd00::1"}]
    pod = formats.load_bytes(json.dumps(doc).encode(), "/pods/web.json", "web").pod
    from dataclasses import replace

    scoped = replace(pod, ports=(replace(pod.ports[0], host_ip=host_ip),))
    with pytest.raises(ManifestError, match="is a scoped address"):
        units.convert(PodFile("web", "/pods/web.json", ManifestFormat.APPC, scoped), {"web"})
