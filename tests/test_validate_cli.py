"""`rktd validate`, `rktd cat-manifest`, `rktd export-kube`, run as a user would: the real entry point."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rktd_units.formats import appc
from tests.conftest import ROOT
from tests.helpers.manifests import pod_manifest

RKTD = Path(sys.executable).parent / "rktd"
LINE = re.compile(r"^/\S+: (\S+: )?\S.*$")  # PATH: [field: ]message (hint)


def rktd(*args: str, pods_path: list[Path] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [str(RKTD)] if RKTD.exists() else [sys.executable, "-m", "rktd_units"]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
    if pods_path is not None:
        env["RKTD_PODS_PATH"] = ":".join(str(p) for p in pods_path)
    return subprocess.run([*argv, *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=60)


def pod(exec_: str, annotations: dict[str, str] | None = None) -> str:
    return pod_manifest(exec_, annotations)


def put(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o755)
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> list[Path]:
    """Three manifest directories the way an administrator would leave them, warts included."""
    etc, run, lib = tmp_path / "etc", tmp_path / "run", tmp_path / "lib"
    put(lib / "web.json", pod("/bin/packaged-web"))  # overridden by etc
    put(etc / "web.json", pod("/bin/local-web", {"rktd/after": "db"}))
    put(lib / "db.json", pod("/bin/db"))
    put(lib / "old.json", pod("/bin/old"))
    put(etc / "old.json", "")  # masked by an empty file
    put(lib / "legacy.json", "{broken")  # broken, but masked: never read
    put(run / "bad.json", pod("/bin/bad").replace('"user": "0"', '"user": 0'))  # a bad file among good ones
    put(run / "loose.json", pod("/bin/loose"), 0o664)  # group-writable
    put(run / "twice.json", pod("/bin/twice"))  # same name in two formats
    put(run / "twice.yaml", "apiVersion: v1\nkind: Pod\n")
    (run / "legacy.json").symlink_to(os.devnull)
    return [etc, run, lib]


def test_validate_search_path_reports_every_problem_and_the_rest(tree: list[Path]) -> None:
    etc, run, lib = tree
    proc = rktd("validate", pods_path=tree)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout.splitlines() == [f"{lib}/db.json: ok", f"{etc}/web.json: ok"]
    errors = proc.stderr.splitlines()
    assert len(errors) == 3, proc.stderr
    assert all(LINE.match(line) for line in errors), errors
    by_file = {line.split(":")[0]: line for line in errors}
    assert set(by_file) == {f"{run}/bad.json", f"{run}/loose.json", f"{run}/twice.json"}
    assert by_file[f"{run}/bad.json"] == f"{run}/bad.json: apps[0].app.user: must be a string, not a number"
    assert "writable by group or others" in by_file[f"{run}/loose.json"]
    assert "given twice in one directory" in by_file[f"{run}/twice.json"]
    assert "Traceback" not in proc.stderr and "old" not in proc.stderr and "legacy" not in proc.stderr


def test_validate_all_good_exits_zero(tree: list[Path]) -> None:
    etc, run, lib = tree
    for name in ("bad.json", "loose.json", "twice.yaml"):
        (run / name).unlink()
    proc = rktd("validate", pods_path=tree)
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.splitlines() == [f"{lib}/db.json: ok", f"{run}/twice.json: ok", f"{etc}/web.json: ok"]


def test_validate_named_paths_and_names(tree: list[Path]) -> None:
    etc, run, _ = tree
    proc = rktd(
        "validate",
        "web",
        str(run / "bad.json"),
        "nope",
        str(ROOT / "examples" / "hello.json"),
        pods_path=tree,
    )
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [f"{etc}/web.json: ok", f"{ROOT}/examples/hello.json: ok"]
    assert proc.stderr.splitlines() == [
        f"{run}/bad.json: apps[0].app.user: must be a string, not a number",
        f"rktd: no pod manifest named 'nope' in {':'.join(map(str, tree))} (add nope.json)",
    ]


def test_validate_a_directory_and_dangling_references(tmp_path: Path) -> None:
    d = tmp_path / "pods"
    put(d / "web.json", pod("/bin/web", {"rktd/requires": "db cache.service", "rktd/after": "ghost"}))
    put(d / "db.json", pod("/bin/db"))
    proc = rktd("validate", str(d), pods_path=[tmp_path / "empty"])
    assert proc.returncode == 1
    assert proc.stdout == f"{d}/db.json: ok\n"
    hint = "add its manifest, or name a unit such as NAME.service"
    assert proc.stderr == f"{d}/web.json: annotations[rktd/after]: no pod named 'ghost' ({hint})\n"


def test_validate_nothing_to_check(tmp_path: Path) -> None:
    proc = rktd("validate", pods_path=[tmp_path / "none"])
    assert proc.returncode == 0 and proc.stdout == ""
    assert "no pod manifests in" in proc.stderr


def test_cat_manifest_prints_canonical_json(tree: list[Path]) -> None:
    proc = rktd("cat-manifest", "web", pods_path=tree)
    assert proc.returncode == 0, proc.stderr
    loaded = appc.load_pod(proc.stdout.encode(), "stdout")
    assert loaded.apps[0].app is not None and loaded.apps[0].app.exec == ("/bin/local-web",)
    assert proc.stdout == appc.dump_pod(loaded)
    assert list(json.loads(proc.stdout))[:2] == ["acKind", "acVersion"]  # input had acVersion first
    missing = rktd("cat-manifest", "old", pods_path=tree)
    assert missing.returncode == 254 and missing.stdout == ""
    assert missing.stderr == f"rktd: pod 'old' is masked by {tree[0]}/old.json\n"
    bad = rktd("cat-manifest", str(tree[1] / "bad.json"), pods_path=tree)
    assert bad.returncode == 1
    assert bad.stderr == f"rktd: {tree[1]}/bad.json: apps[0].app.user: must be a string, not a number\n"


def test_export_kube(tmp_path: Path) -> None:
    from rktd_units.formats import kube

    if not hasattr(kube, "dump_pod"):
        pytest.fail("rktd_units.formats.kube has no dump_pod: remove export-kube from cli.COMMANDS")
    d = tmp_path / "pods"
    put(d / "web.json", pod("/bin/local-web").replace("example.com/busybox", "docker://busybox:1.36"))
    put(d / "aci.json", pod("/bin/aci"))
    proc = rktd("export-kube", "web", pods_path=[d])
    assert proc.returncode == 0, proc.stderr
    import yaml

    doc = yaml.safe_load(proc.stdout)
    assert (doc["apiVersion"], doc["kind"], doc["metadata"]["name"]) == ("v1", "Pod", "web")
    container = doc["spec"]["containers"][0]
    assert container["name"] == "main" and "busybox:1.36" in container["image"]
    assert "/bin/local-web" in [*container.get("command", []), *container.get("args", [])]
    refused = rktd("export-kube", "aci", pods_path=[d])
    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.startswith(f"rktd: {d}/aci.json: apps[0].image.name: ")
    assert len(refused.stderr.splitlines()) == 1
