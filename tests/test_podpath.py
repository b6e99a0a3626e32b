"""The manifest search path: overrides, masks, ambiguity, StrictModes, two passes, find()."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rktd_units import podpath
from rktd_units.errors import ManifestError, PodError
from rktd_units.model import ManifestFormat
from tests.helpers.manifests import pod_manifest


def manifest(exec_: str = "/bin/true", annotations: dict[str, str] | None = None) -> str:
    return pod_manifest(exec_, annotations)


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chmod(path, mode)
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> list[Path]:
    out = [tmp_path / "etc", tmp_path / "run", tmp_path / "lib"]
    for d in out:
        d.mkdir()
        os.chmod(d, 0o755)
    return out


def test_search_path_defaults_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RKTD_PODS_PATH", raising=False)
    assert podpath.search_path() == [
        Path("/etc/rktd/pods"),
        Path("/run/rktd/pods"),
        Path("/usr/lib/rktd/pods"),
    ]
    monkeypatch.setenv("RKTD_PODS_PATH", "/a::/b")
    assert podpath.search_path() == [Path("/a"), Path("/b")]


def test_first_directory_wins_and_names_are_sorted(dirs: list[Path]) -> None:
    etc, run, lib = dirs
    write(etc / "web.json", manifest("/bin/etc-web"))
    write(lib / "web.json", manifest("/bin/lib-web"))
    write(run / "db.yaml", "apiVersion: v1\n")
    write(lib / "alpha.json", manifest())
    candidates, errors = podpath.scan(dirs)
    assert errors == []
    assert [(c.name, c.path, c.kind) for c in candidates] == [
        ("alpha", lib / "alpha.json", ManifestFormat.APPC),
        ("db", run / "db.yaml", ManifestFormat.KUBERNETES),
        ("web", etc / "web.json", ManifestFormat.APPC),
    ]
    assert podpath.all_names(candidates) == {"alpha", "db", "web"}


def test_masks_hide_lower_manifests(dirs: list[Path]) -> None:
    etc, run, lib = dirs
    write(lib / "web.json", manifest())
    write(lib / "db.json", manifest())
    write(etc / "web.json", "")
    (run / "db.yaml").symlink_to(os.devnull)
    candidates, errors = podpath.scan(dirs)
    assert candidates == [] and errors == []
    with pytest.raises(PodError, match="masked by"):
        podpath.find("db", dirs)


def test_two_formats_in_one_directory_is_an_error_for_that_name_only(dirs: list[Path]) -> None:
    etc, _, lib = dirs
    write(etc / "web.json", manifest())
    write(etc / "web.yml", "kind: Pod\n")
    write(lib / "web.json", manifest())  # must not silently take over
    write(lib / "db.json", manifest())
    candidates, errors = podpath.scan(dirs)
    assert [c.name for c in candidates] == ["db"]
    assert len(errors) == 1 and "given twice in one directory" in errors[0].message
    assert str(etc / "web.json") in str(errors[0]) and str(etc / "web.yml") in str(errors[0])


def test_other_files_are_ignored_and_bad_stems_reported(dirs: list[Path]) -> None:
    etc = dirs[0]
    for name in ("README", "web.json~", ".web.json", "web.json.bak", "notes.txt"):
        write(etc / name, "x")
    write(etc / "My_Pod.json", manifest())
    candidates, errors = podpath.scan(dirs)
    assert candidates == []
    assert [(e.path, e.field) for e in errors] == [(str(etc / "My_Pod.json"), "")]
    assert "is not a pod name" in errors[0].message


def test_missing_directories_are_skipped(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[1] / "web.json", manifest())
    candidates, errors = podpath.scan([tmp_path / "nope", *dirs])
    assert [c.name for c in candidates] == ["web"] and errors == []


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_strict_modes_refuse_writable_manifest(dirs: list[Path], mode: int) -> None:
    path = write(dirs[0] / "web.json", manifest(), mode)
    write(dirs[2] / "web.json", manifest())  # refused is not a fallback to a lower file
    candidates, errors = podpath.scan(dirs)
    assert candidates == []
    assert [e.path for e in errors] == [str(path)]
    assert "writable by group or others" in errors[0].message and "chmod go-w" in (errors[0].hint or "")


def test_strict_modes_refuse_writable_directory(dirs: list[Path]) -> None:
    os.chmod(dirs[1], 0o775)
    path = write(dirs[1] / "web.json", manifest())
    write(dirs[1] / "db.json", "")  # even a mask in such a directory is refused
    candidates, errors = podpath.scan(dirs)
    assert candidates == []
    assert sorted(e.path or "" for e in errors) == sorted([str(path), str(dirs[1] / "db.json")])
    assert all("its directory is writable" in e.message for e in errors)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown needs root")
def test_strict_modes_refuse_foreign_owner_when_root(dirs: list[Path]) -> None:
    path = write(dirs[0] / "web.json", manifest())
    os.chown(path, 1000, 1000)
    candidates, errors = podpath.scan(dirs)
    assert candidates == []
    assert "owned by uid 1000, not root" in errors[0].message


def test_symlinks_and_odd_entries(tmp_path: Path, dirs: list[Path]) -> None:
    target = write(tmp_path / "elsewhere" / "real.json", manifest())
    (dirs[0] / "linked.json").symlink_to(target)
    (dirs[0] / "dangling.json").symlink_to(tmp_path / "gone.json")
    (dirs[0] / "adir.json").mkdir()
    candidates, errors = podpath.scan(dirs)
    assert [(c.name, c.path) for c in candidates] == [("linked", dirs[0] / "linked.json")]
    assert [(Path(e.path or "").name, e.message.split(":")[0]) for e in errors] == [
        ("adir.json", "not a regular file"),
        ("dangling.json", "cannot read"),
    ]


def test_load_all_isolates_bad_files(dirs: list[Path]) -> None:
    write(dirs[0] / "a.json", manifest())
    write(dirs[0] / "b.json", "{not json")
    write(dirs[1] / "c.json", manifest("relative/ok"))
    write(dirs[2] / "d.json", manifest(annotations={"rktd/restart": "sometimes"}))
    pods, errors = podpath.load_all(dirs)
    assert [p.name for p in pods] == ["a", "c"]
    assert pods[1].pod.apps[0].app is not None and pods[1].pod.apps[0].app.exec == ("relative/ok",)
    assert [(Path(e.path or "").name, e.field) for e in errors] == [
        ("b.json", ""),
        ("d.json", "annotations[rktd/restart]"),
    ]


def test_find_by_name_and_by_path(tmp_path: Path, dirs: list[Path]) -> None:
    write(dirs[1] / "web.json", manifest("/bin/web"))
    pod_file = podpath.find("web", dirs)
    assert (pod_file.name, pod_file.path) == ("web", str(dirs[1] / "web.json"))
    other = write(tmp_path / "x" / "api.json", manifest("/bin/api"))
    by_path = podpath.find(str(other), dirs)
    assert by_path.name == "api" and by_path.pod.apps[0].app is not None
    assert by_path.pod.apps[0].app.exec == ("/bin/api",)
    with pytest.raises(PodError, match="no pod manifest named 'nope'"):
        podpath.find("nope", dirs)
    with pytest.raises(PodError, match="not a pod name"):
        podpath.find("Bad_Name", dirs)
    with pytest.raises(ManifestError, match="cannot read"):
        podpath.find(str(tmp_path / "missing.json"), dirs)
    with pytest.raises(PodError, match="is a mask"):
        podpath.find(str(write(tmp_path / "x" / "empty.json", "")), dirs)
    bad_stem = write(tmp_path / "x" / "Bad.json", manifest())
    with pytest.raises(ManifestError, match="not a pod name"):
        podpath.find(str(bad_stem), dirs)
    write(dirs[0] / "dup.json", manifest())
    write(dirs[0] / "dup.yaml", "kind: Pod\n")
    with pytest.raises(ManifestError, match="given twice"):
        podpath.find("dup", dirs)


def test_find_uses_the_environment(monkeypatch: pytest.MonkeyPatch, dirs: list[Path]) -> None:
    write(dirs[2] / "web.json", manifest())
    monkeypatch.setenv("RKTD_PODS_PATH", ":".join(str(d) for d in dirs))
    assert podpath.find("web").path == str(dirs[2] / "web.json")


def test_dangling_references(dirs: list[Path]) -> None:
    write(dirs[0] / "web.json", manifest(annotations={"rktd/after": "db network-online.target cache"}))
    write(dirs[0] / "db.json", manifest())
    candidates, _ = podpath.scan(dirs)
    pods, _ = podpath.load_all(dirs)
    web = next(p for p in pods if p.name == "web")
    errors = podpath.dangling_references(web, podpath.all_names(candidates))
    assert [(e.field, e.message) for e in errors] == [("annotations[rktd/after]", "no pod named 'cache'")]


def test_find_by_name_reads_only_that_manifest(dirs: list[Path]) -> None:
    write(dirs[0] / "web.json", manifest("/bin/web"))
    write(dirs[0] / "other.json", manifest(), 0o666)  # refused, but not the pod asked for
    os.mkfifo(dirs[0] / "fifo.json")  # never opened: a FIFO would block a plain open
    assert podpath.find("web", dirs).pod.apps[0].app is not None
    with pytest.raises(ManifestError, match="writable by group or others"):
        podpath.find("other", dirs)
    with pytest.raises(ManifestError, match="not a regular file"):
        podpath.find("fifo", dirs)
