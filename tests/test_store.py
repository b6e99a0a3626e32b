"""The image store: IDs, compressions, lookups, sharing, removal, gc, export/extract, the CLI,
atomicity under SIGKILL and concurrent imports of one image."""

from __future__ import annotations

import bz2
import fcntl
import gzip
import hashlib
import io
import json
import lzma
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rktd_units import aci
from rktd_units.cli import cli
from rktd_units.errors import ImageError, StoreError
from rktd_units.store import Store
from tests.helpers.aci import (
    Entry,
    busybox_entries,
    image_manifest,
    make_busybox_aci,
    write_aci,
)
from tests.test_aci_security import snapshot

ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def sha512_cli(argv: list[str]) -> str:
    """`argv | sha512sum`, computed by the system's tools."""
    producer = subprocess.Popen(argv, stdout=subprocess.PIPE)
    out = subprocess.run(["sha512sum"], stdin=producer.stdout, capture_output=True, check=True).stdout
    assert producer.wait() == 0
    return "sha512-" + out.split()[0].decode()


@pytest.fixture
def plain(tmp_path: Path) -> Path:
    return make_busybox_aci(tmp_path / "bb.tar", compression="none")


def test_id_is_sha512_of_uncompressed_tar_in_every_compression(tmp_path: Path, plain: Path) -> None:
    expected = sha512_cli(["cat", str(plain)])
    for tool, ext in (("gzip", "gz"), ("bzip2", "bz2"), ("xz", "xz")):
        dst = tmp_path / f"bb.{ext}.aci"
        with open(dst, "wb") as f:
            subprocess.run([tool, "-c", str(plain)], stdout=f, check=True)
        assert sha512_cli([tool, "-dc", str(dst)]) == expected
    store = Store(tmp_path / "store")
    ids = {store.import_aci(p).id for p in sorted(tmp_path.glob("bb.*"))}
    assert ids == {expected}
    assert len(store.list()) == 1
    with open(tmp_path / "bb.xz.aci", "rb") as f:
        assert aci.image_id(f) == expected


def test_id_covers_gnu_tar_padding_and_multistream(tmp_path: Path) -> None:
    """A tar written by GNU tar (10 KiB records) and a concatenated multi-member gzip (as pigz writes)."""
    tree = tmp_path / "tree"
    (tree / "rootfs/bin").mkdir(parents=True)
    (tree / "manifest").write_bytes(image_manifest("example.com/gnu"))
    (tree / "rootfs/bin/hello").write_text("hello\n" * 3000)
    tar = tmp_path / "gnu.aci"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(tar), "manifest", "rootfs"], check=True)
    assert tar.stat().st_size % 10240 == 0
    data = tar.read_bytes()
    multi = tmp_path / "multi.aci"
    with open(multi, "wb") as f:
        for piece in (data[:7000], data[7000:20000], data[20000:]):
            f.write(subprocess.run(["gzip", "-c"], input=piece, capture_output=True, check=True).stdout)
    store = Store(tmp_path / "store")
    a = store.import_aci(tar)
    b = store.import_aci(multi)
    assert (
        a.id
        == b.id
        == "sha512-" + hashlib.sha512(data).hexdigest()
        == sha512_cli(["gzip", "-dc", str(multi)])
    )
    assert (store.rootfs(a.id) / "bin/hello").read_text() == "hello\n" * 3000


def test_info_find_get_and_prefixes(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    one = store.import_aci(make_busybox_aci(tmp_path / "1.aci", labels={"version": "1.0", "os": "linux"}))
    two = store.import_aci(make_busybox_aci(tmp_path / "2.aci", labels={"version": "2.0", "os": "linux"}))
    other = store.import_aci(make_busybox_aci(tmp_path / "o.aci", name="example.com/other"))
    assert one.name == "example.com/busybox" and one.label("version") == "1.0"
    assert one.size == len(gzip.decompress((tmp_path / "1.aci").read_bytes()))
    assert one.source == str(tmp_path / "1.aci") and one.compression == "gzip"
    assert [i.id for i in store.list()] == [one.id, two.id, other.id]  # by import time
    assert store.find("example.com/busybox") == two  # newest import
    assert store.find("example.com/busybox", {"version": "1.0"}) == one
    assert store.find("example.com/busybox", {"version": "3.0"}) is None
    assert store.find("example.com/nothing") is None
    assert store.get(one.id[:20]) == one
    assert store.get(one.id[7:30]) == one  # bare hex prefix
    with pytest.raises(ImageError, match="no image"):
        store.get("sha512-" + "0" * 128)
    with pytest.raises(ImageError, match="not an image ID"):
        store.get("example.com/busybox")
    by_first: dict[str, str] = {}
    for i in range(17):  # pigeonhole: two IDs share a first hex digit
        image_id = store.import_aci(
            make_busybox_aci(tmp_path / "x.aci", name="example.com/x", labels={"n": str(i)})
        ).id
        if image_id[7] in by_first:
            break
        by_first[image_id[7]] = image_id
    with pytest.raises(ImageError, match="ambiguous"):
        store.get(image_id[:8])
    assert store.rootfs(one.id) == tmp_path / "store/cas/images" / one.id / "rootfs"
    assert (store.rootfs(one.id) / "bin/busybox").read_bytes() == Path("/bin/busybox").read_bytes()


def test_find_reads_only_the_manifests_of_the_name(tmp_path: Path) -> None:
    """`find` runs on every pod start: info.json records the name, and other images' manifests stay
    unread (a damaged one does not stop it); an info.json from before the name was recorded still works."""
    store = Store(tmp_path / "store")
    ids = {}
    for name in ("a.b/w", "a.b/o"):
        entries = [Entry("manifest", data=image_manifest(name)), Entry("rootfs", "dir", mode=0o755)]
        ids[name] = store.import_aci(write_aci(tmp_path / "x.aci", entries)).id
    wanted, other = store.image_dir(ids["a.b/w"]), store.image_dir(ids["a.b/o"])
    assert json.loads((other / "info.json").read_text())["name"] == "a.b/o"
    (other / "manifest").write_text("not json")
    assert store.find("a.b/w") == store.get(ids["a.b/w"])
    meta = json.loads((wanted / "info.json").read_text())
    del meta["name"]
    (wanted / "info.json").write_text(json.dumps(meta))
    assert store.find("a.b/w") == store.get(ids["a.b/w"])
    with pytest.raises(StoreError, match="damaged"):
        store.find("a.b/o")


def test_second_use_copies_nothing(tmp_path: Path) -> None:
    """Importing again finds the image; every user gets the same tree (same inode), nothing copied."""
    store = Store(tmp_path / "store")
    path = make_busybox_aci(tmp_path / "bb.aci")
    first = store.import_aci(path)
    before = snapshot(store.root)
    again = store.import_aci(path)
    assert again == first and snapshot(store.root) == before
    r1, r2 = store.rootfs(first.id), store.rootfs(first.id[:24])
    assert r1 == r2 and r1.stat().st_ino == r2.stat().st_ino
    assert os.listdir(store.images_dir) == [first.id]


def test_stream_source_and_progress(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    data = make_busybox_aci(tmp_path / "bb.aci", compression="xz").read_bytes()
    seen: list[int] = []
    info = store.import_aci(io.BytesIO(data), progress=seen.append, source="https://example.com/bb.aci")
    assert info.source == "https://example.com/bb.aci"
    assert seen == sorted(seen) and seen[-1] == len(data) == info.raw_size
    out = io.BytesIO()
    store.write_tar(info.id, out)
    assert out.getvalue() == lzma.decompress(data)


def test_export_gives_back_the_exact_tar_and_extract_the_same_tree(tmp_path: Path) -> None:
    """The store keeps the tree plus a skeleton (headers, padding), never a second copy of the data;
    export reassembles the uncompressed tar byte for byte (so its sha512 is the ID)."""
    store = Store(tmp_path / "store")
    src = make_busybox_aci(tmp_path / "bb.aci", compression="bz2", extra_files={"etc/motd": "hi\n"})
    info = store.import_aci(src)
    skeleton = info.path / "skeleton"  # type: ignore[operator]
    assert skeleton.stat().st_size < info.size // 50
    store.export(info.id, tmp_path / "out.aci")
    assert (tmp_path / "out.aci").read_bytes() == bz2.decompress(src.read_bytes())
    with pytest.raises(ImageError, match="exists"):
        store.export(info.id, tmp_path / "out.aci")
    assert Store(tmp_path / "other").import_aci(tmp_path / "out.aci").id == info.id
    with pytest.raises(ImageError, match="is not a directory"):
        store.extract(info.id, tmp_path / "no/such/dir")
    store.extract(info.id, tmp_path / "full")
    assert snapshot(tmp_path / "full/rootfs") == snapshot(store.rootfs(info.id))
    assert (tmp_path / "full/manifest").read_bytes() == (store.image_dir(info.id) / "manifest").read_bytes()
    store.extract(info.id, tmp_path / "rootfs-only", rootfs_only=True)
    assert snapshot(tmp_path / "rootfs-only") == snapshot(store.rootfs(info.id))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_tampered_tree_is_detected_on_export(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    info = store.import_aci(make_busybox_aci(tmp_path / "bb.aci"))
    passwd = store.rootfs(info.id) / "etc/passwd"
    passwd.write_bytes(passwd.read_bytes().replace(b"root:x:", b"root::x"))  # same size
    with pytest.raises(ImageError, match="no longer matches its ID"):
        store.export(info.id, tmp_path / "out.aci")
    passwd.write_bytes(b"root::0:0:root:/root:/bin/sh\n")
    with pytest.raises(ImageError, match="no longer matches its ID"):
        store.export(info.id, tmp_path / "out.aci")
    assert not (tmp_path / "out.aci").exists()
    with pytest.raises(ImageError, match="no longer matches"):
        store.extract(info.id, tmp_path / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bb.aci", "store"]  # no staging left behind


def test_remove_hold_and_gc(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    a = store.import_aci(make_busybox_aci(tmp_path / "a.aci", name="example.com/a"))
    b = store.import_aci(make_busybox_aci(tmp_path / "b.aci", name="example.com/b"))
    c = store.import_aci(make_busybox_aci(tmp_path / "c.aci", name="example.com/c"))
    fd = store.hold(a.id)
    try:
        with pytest.raises(StoreError, match="in use"):
            store.remove(a.id)
        assert store.gc(grace_period=3600) == []  # all recently imported
        assert store.gc(keep={b.id}, grace_period=0) == [c.id]  # a held, b kept
    finally:
        os.close(fd)
    assert [i.id for i in store.list()] == [a.id, b.id]
    store.remove(a.id)
    assert [i.id for i in store.list()] == [b.id]
    with pytest.raises(ImageError, match="no image"):
        store.rootfs(a.id)
    assert os.listdir(store.tmp_dir) == []


def test_gc_removes_dead_importers_staging_only(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.import_aci(make_busybox_aci(tmp_path / "a.aci"))
    dead = store.tmp_dir / "import-dead"
    (dead / "rootfs").mkdir(parents=True)
    (dead / "rootfs/file").write_text("x")
    os.chmod(dead / "rootfs", 0o555)
    alive = store.tmp_dir / "import-alive"
    alive.mkdir()
    fd = os.open(alive, os.O_RDONLY | os.O_DIRECTORY)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        assert store.gc() == []
        assert sorted(os.listdir(store.tmp_dir)) == ["import-alive"]
        assert len(store.list()) == 1
    finally:
        os.close(fd)


def test_failed_stream_leaves_store_unchanged(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.import_aci(make_busybox_aci(tmp_path / "a.aci", name="example.com/a"))
    before = snapshot(store.root)
    data = make_busybox_aci(tmp_path / "b.aci", name="example.com/b", compression="none").read_bytes()

    class Broken(io.BytesIO):
        def read(self, n: int | None = -1) -> bytes:
            if self.tell() > len(data) // 2:
                raise ConnectionResetError("peer went away")
            return super().read(n)

    with pytest.raises(ImageError, match="cannot read the image: peer went away"):
        store.import_aci(Broken(data))
    assert snapshot(store.root) == before


def test_layers_and_render_with_dependencies(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    base = store.import_aci(make_busybox_aci(tmp_path / "base.aci", extra_files={"etc/motd": "base\n"}))
    dep = {"imageName": "example.com/busybox", "labels": [{"name": "version", "value": "1.0.0"}]}
    app_entries = [
        Entry("manifest", data=image_manifest("example.com/app", extra={"dependencies": [dep]})),
        Entry("rootfs", "dir", mode=0o755),
        Entry("rootfs/etc", "dir", mode=0o755),
        Entry("rootfs/etc/motd", data=b"app\n"),
        Entry("rootfs/bin/sh", data=b"not a symlink any more", mode=0o755),
        Entry("rootfs/app", "dir", mode=0o750),
        Entry("rootfs/app/run", data=b"#!/bin/sh\n", mode=0o755),
        Entry("rootfs/app/run2", "hardlink", target="rootfs/app/run"),
    ]
    app = store.import_aci(write_aci(tmp_path / "app.aci", app_entries))
    assert [i.id for i in store.layers(app.id)] == [base.id, app.id]
    store.render(app.id, tmp_path / "out")
    root = tmp_path / "out/rootfs"
    assert (root / "etc/motd").read_text() == "app\n"  # upper wins
    assert (root / "etc/passwd").is_file() and (root / "bin/busybox").is_file()  # lower kept
    assert not (root / "bin/sh").is_symlink() and (root / "bin/sh").read_bytes() == b"not a symlink any more"
    assert os.readlink(root / "bin/ls") == "busybox"
    assert (root / "app/run").stat().st_ino == (root / "app/run2").stat().st_ino
    assert (root / "app").stat().st_mode & 0o777 == 0o750
    assert json.loads((tmp_path / "out/manifest").read_text())["name"] == "example.com/app"
    assert (store.rootfs(base.id) / "etc/motd").read_text() == "base\n"  # the store is untouched
    # a dependency that is not there, and a pathWhitelist
    missing = {"imageName": "example.com/nothing"}
    wl = {"dependencies": [dep], "pathWhitelist": ["/bin/busybox", "/etc/passwd", "/app"]}
    for name, extra in (("example.com/broken", {"dependencies": [missing]}), ("example.com/wl", wl)):
        entries = [Entry("manifest", data=image_manifest(name, extra=extra)), *app_entries[1:]]
        store.import_aci(write_aci(tmp_path / "x.aci", entries))
    with pytest.raises(ImageError, match=r"example\.com/nothing of example\.com/broken is not in the store"):
        store.render(store.find("example.com/broken").id, tmp_path / "broken")  # type: ignore[union-attr]
    assert not (tmp_path / "broken").exists()
    store.render(store.find("example.com/wl").id, tmp_path / "wl", rootfs_only=True)  # type: ignore[union-attr]
    kept = sorted(str(p.relative_to(tmp_path / "wl")) for p in (tmp_path / "wl").rglob("*"))
    assert kept == ["app", "app/run", "app/run2", "bin", "bin/busybox", "etc", "etc/passwd"]


# --- SIGKILL and concurrency ----------------------------------------------------------------------------

IMPORTER = """
import sys
from pathlib import Path
sys.path.insert(0, {root!r})
from rktd_units.store import Store
import rktd_units.aci, rktd_units.formats.appc
store = Store(Path(sys.argv[1]))
print("ready", flush=True)
print(store.import_aci(Path(sys.argv[2])).id, flush=True)
"""


def big_aci(path: Path, files: int = 1500, size: int = 24 << 20) -> tuple[Path, set[str]]:
    """An ACI with many files and some incompressible data: something to interrupt."""
    rng = random.Random(4)
    entries = busybox_entries(image_manifest("example.com/big"))
    entries.append(Entry("rootfs/data", "dir", mode=0o755))
    for i in range(files):
        entries.append(
            Entry(
                f"rootfs/data/f{i:05d}", data=rng.randbytes(size // files // 2) + bytes(size // files // 2)
            )
        )
    write_aci(path, entries, "gz")
    return path, {e.path for e in entries}


def tree_paths(image_dir: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(image_dir):
        for name in dirnames + filenames:
            rel = str(Path(dirpath, name).relative_to(image_dir))
            if rel.split("/")[0] in ("manifest", "rootfs"):
                out.add(rel)
    return out


def check_consistent(store: Store, expected: set[str]) -> list[str]:
    """Every visible image is complete; list() works; returns the visible IDs."""
    ids = [i.id for i in store.list()]
    assert sorted(os.listdir(store.images_dir)) == sorted(ids)
    for image_id in ids:
        assert tree_paths(store.images_dir / image_id) == expected
    return ids


def test_sigkill_at_random_points_leaves_store_consistent(tmp_path: Path) -> None:
    path, expected = big_aci(tmp_path / "big.aci", files=300, size=16 << 20)
    script = tmp_path / "importer.py"
    script.write_text(IMPORTER.format(root=str(ROOT)))
    store = Store(tmp_path / "store")
    t0 = time.monotonic()
    image_id = store.import_aci(path).id
    duration = time.monotonic() - t0
    store.remove(image_id)
    rng = random.Random(1)
    outcomes = {"killed-before-commit": 0, "killed-mid-import": 0, "completed": 0}
    for _ in range(20):
        proc = subprocess.Popen([PY, str(script), str(store.root), str(path)], stdout=subprocess.PIPE)
        assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
        time.sleep(rng.uniform(0, duration * 1.25))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        ids = check_consistent(store, expected)
        outcomes["completed" if ids else "killed-before-commit"] += 1
        outcomes["killed-mid-import"] += bool(not ids and os.listdir(store.tmp_dir))  # a staging dir left
        assert store.import_aci(path).id == image_id  # the next import succeeds
        assert check_consistent(store, expected) == [image_id]
        store.remove(image_id)
    assert outcomes["killed-mid-import"] >= 8, outcomes
    print(outcomes)
    store.gc()
    assert os.listdir(store.tmp_dir) == [] and os.listdir(store.images_dir) == []


def test_concurrent_imports_of_one_image_leave_one_copy(tmp_path: Path) -> None:
    path, expected = big_aci(tmp_path / "big.aci", files=200, size=8 << 20)
    script = tmp_path / "importer.py"
    script.write_text(IMPORTER.format(root=str(ROOT)))
    store = Store(tmp_path / "store")
    for _ in range(2):
        procs = [
            subprocess.Popen([PY, str(script), str(store.root), str(path)], stdout=subprocess.PIPE)
            for _ in range(3)
        ]
        outs = {p.communicate()[0].split()[-1] for p in procs}
        assert all(p.returncode == 0 for p in procs)
        ids = check_consistent(store, expected)
        assert len(ids) == 1 and outs == {ids[0].encode()}
        assert os.listdir(store.tmp_dir) == []
        store.remove(ids[0])


# --- CLI ----------------------------------------------------------------------------------------------


def test_cli(tmp_path: Path) -> None:
    runner = CliRunner(mix_stderr=False)
    base = ["--dir", str(tmp_path / "store")]
    path = make_busybox_aci(tmp_path / "bb.aci", labels={"version": "1.2"})
    res = runner.invoke(cli, [*base, "image", "import", str(path)])
    assert res.exit_code != 0 and "does not verify signatures" in str(res.exception)
    res = runner.invoke(cli, [*base, "--insecure-options=image", "image", "import", str(path)])
    assert res.exit_code == 0, res.output
    image_id = res.stdout.strip()
    res = runner.invoke(cli, [*base, "image", "list", "--format=json"])
    (doc,) = json.loads(res.stdout)
    assert (
        doc["id"] == image_id
        and doc["name"] == "example.com/busybox"
        and doc["labels"] == {"version": "1.2"}
    )
    res = runner.invoke(cli, [*base, "image", "list"])
    lines = res.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "LABELS", "SIZE"]
    assert lines[1].startswith(image_id[:39]) and "version=1.2" in lines[1]
    res = runner.invoke(cli, [*base, "image", "export", image_id[:20], str(tmp_path / "out.aci")])
    assert res.exit_code == 0 and (tmp_path / "out.aci").read_bytes() == gzip.decompress(path.read_bytes())
    res = runner.invoke(
        cli, [*base, "image", "extract", "--rootfs-only", image_id[:20], str(tmp_path / "x")]
    )
    assert res.exit_code == 0 and (tmp_path / "x/bin/busybox").is_file()
    res = runner.invoke(cli, [*base, "image", "render", image_id[:20], str(tmp_path / "r")])
    assert (
        res.exit_code == 0 and (tmp_path / "r/manifest").is_file() and (tmp_path / "r/rootfs/bin").is_dir()
    )
    res = runner.invoke(cli, [*base, "image", "cat-manifest", image_id[:20]])
    assert res.exit_code == 0 and json.loads(res.stdout)["name"] == "example.com/busybox"
    res = runner.invoke(cli, [*base, "image", "gc", "--grace-period=1h"])
    assert res.exit_code == 0 and res.stdout == ""
    # a pod that refers to the image keeps it through gc, even with no grace at all
    from rktd_units.pods import STAGE1_CONFIG, Pods

    pod = Pods(tmp_path / "store").create()
    pod.write_atomic(STAGE1_CONFIG, json.dumps({"apps": [{"name": "a", "image_id": image_id}]}).encode())
    pod.unlock()
    res = runner.invoke(cli, [*base, "image", "gc", "--grace-period=0"])
    assert res.exit_code == 0 and res.stdout == "" and Store(tmp_path / "store").get(image_id)
    res = runner.invoke(cli, [*base, "image", "rm", image_id[:20]])
    assert res.exit_code == 0 and res.stdout.strip() == f"removed {image_id}"
    res = runner.invoke(cli, [*base, "image", "list", "--no-legend"])
    assert res.stdout == ""


def test_progress_is_quiet_off_a_terminal_and_counts_on_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert aci.tty_progress("importing x") is None  # pytest's stderr is not a terminal
    bar = aci.TtyProgress("importing x", total=4 << 20)
    bar(2 << 20)
    bar.done()
    err = capsys.readouterr().err
    assert err == "\rimporting x [############             ]  50% 2 MiB\n"
