"""Images and trust, against the attacks of the security review: a signed name that is not the stored
name (one tar, two readings), extraction limits that ignore implied directories, deep trees that
break removal, and plain names that quietly resolve to unverified images. Real tar bytes, real gpg
signatures checked by real sqv, a real store on disk."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from rktd_units import aci
from rktd_units.errors import ImageError, TrustError
from rktd_units.fetch import fetch
from rktd_units.store import Store
from rktd_units.trust import KeyStore, parse_keys
from tests.helpers.aci import MTIME, Entry, busybox_entries, image_manifest, tar_bytes, write_aci
from tests.helpers.gpg import gpg_home
from tests.test_aci_security import snapshot
from tests.test_stage1_nspawn import IMG, Rktd, busybox_aci, needs_root, rktd

__all__ = ["busybox_aci", "rktd"]

needs_sqv = pytest.mark.skipif(not (shutil.which("gpg") and shutil.which("sqv")), reason="needs gpg and sqv")
MANIFEST = Entry("manifest", data=image_manifest("example.com/hostile"))
ROOTFS = Entry("rootfs", "dir", mode=0o755)


# --- raw tar pieces: what tarfile will not write ----------------------------------------------------------


def _header(name: bytes, typ: bytes, size: int) -> bytes:
    """One ustar header block."""
    h = bytearray(512)
    h[: len(name)] = name
    for offset, value in ((100, 0o644), (108, 0), (116, 0), (136, MTIME)):
        field = 12 if offset == 136 else 8
        h[offset : offset + field] = b"%0*o\0" % (field - 1, value)
    h[124:136] = b"%011o\0" % size
    h[156:157] = typ
    h[257:265] = b"ustar\x0000"
    h[148:156] = b" " * 8
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def _pax(*records: tuple[str, str]) -> bytes:
    out = b""
    for key, value in records:
        body = f" {key}={value}\n".encode()
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        out += str(n).encode() + body
    return out


def _extended(typ: bytes, payload: bytes) -> bytes:
    name = b"././@LongLink" if typ in (b"L", b"K") else b"PaxHeader/x"
    return _header(name, typ, len(payload)) + _padded(payload)


def _file(name: bytes, data: bytes) -> bytes:
    return _header(name, b"0", len(data)) + _padded(data)


def _without_end(tar: bytes) -> bytes:
    end = len(tar)
    while end >= 512 and tar[end - 512 : end] == bytes(512):
        end -= 512
    return tar[:end]


def _archive(*pieces: bytes, rest: bytes = b"") -> bytes:
    return b"".join(pieces) + _without_end(rest) + bytes(1024)


def _tarfile_manifest(data: bytes) -> bytes:
    """The manifest Python's tarfile (what fetch used to check signatures with) reads from `data`."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for ti in tf:
            if ti.name.lstrip("./") == "manifest":
                f = tf.extractfile(ti)
                assert f is not None
                return f.read()
    raise AssertionError("tarfile found no manifest")


# --- finding 4: the name whose prefix is checked is the name stored ---------------------------------------


@needs_sqv
def test_signature_for_one_prefix_cannot_store_another_name(tmp_path: Path) -> None:
    """A key trusted for example.com/attacker signs an archive whose `manifest` reads as the attacker's
    to tarfile but whose imported manifest is victim.com/app's: GNU long name plus pax path."""
    attacker = image_manifest("example.com/attacker", exec=["/bin/true"])
    victim = busybox_entries(image_manifest("victim.com/app", exec=["/bin/sh", "-c", "echo pwned"]))
    data = _archive(
        _extended(b"L", b"manifest\0"),
        _extended(b"x", _pax(("path", "rootfs/innocent"))),
        _file(b"placeholder", attacker),
        rest=tar_bytes(victim),
    )
    assert b'"example.com/attacker"' in _tarfile_manifest(data)  # what the old signature check saw
    evil = tmp_path / "evil.aci"
    evil.write_bytes(data)
    store, keys = Store(tmp_path / "store"), KeyStore(tmp_path / "etc")
    with gpg_home() as gpg:
        key = gpg.make_key("Attacker <attacker@example.com>")
        keys.add(parse_keys(key.armored)[0], prefix="example.com/attacker")
        gpg.sign(key, evil)
        # The attacker's own image, signed with the same key, is accepted: the key is trusted for it.
        own = write_aci(tmp_path / "own.aci", busybox_entries(attacker))
        gpg.sign(key, own)
    before = snapshot(tmp_path / "store") if (tmp_path / "store").exists() else []
    with pytest.raises(ImageError, match="given twice"):
        fetch(str(evil), store=store, keys=keys)
    after = snapshot(tmp_path / "store") if (tmp_path / "store").exists() else []
    assert after == before
    assert fetch(str(own), store=store, keys=keys).trusted
    assert store.find("victim.com/app") is None
    assert [i.name for i in store.list()] == ["example.com/attacker"]


@pytest.mark.parametrize(
    ("pieces", "match"),
    [
        pytest.param(
            [_extended(b"L", b"manifest\0"), _extended(b"x", _pax(("path", "rootfs/m")))],
            "path is given twice",
            id="gnu-longname-and-pax-path",
        ),
        pytest.param(
            [_extended(b"x", _pax(("path", "rootfs/m"))), _extended(b"L", b"manifest\0")],
            "path is given twice",
            id="pax-path-and-gnu-longname",
        ),
        pytest.param(
            [_extended(b"x", _pax(("path", "manifest"))), _extended(b"x", _pax(("path", "rootfs/m")))],
            "path is given twice",
            id="two-pax-paths",
        ),
        pytest.param(
            [_extended(b"x", _pax(("path", "manifest"), ("path", "rootfs/m")))],
            "gives path twice",
            id="one-pax-header-two-paths",
        ),
        pytest.param(
            [_extended(b"K", b"rootfs/a\0"), _extended(b"x", _pax(("linkpath", "rootfs/b")))],
            "linkpath is given twice",
            id="gnu-longlink-and-pax-linkpath",
        ),
        pytest.param(
            [_extended(b"g", _pax(("path", "manifest")))],
            "global pax header sets path",
            id="global-path",
        ),
        pytest.param(
            [_extended(b"g", _pax(("comment", "x"), ("linkpath", "/etc")))],
            "global pax header sets linkpath",
            id="global-linkpath",
        ),
    ],
)
def test_ambiguous_extended_headers_are_refused(tmp_path: Path, pieces: list[bytes], match: str) -> None:
    store = Store(tmp_path / "store")
    store.import_aci(write_aci(tmp_path / "ok.aci", busybox_entries(image_manifest("example.com/ok"))))
    before = snapshot(store.root)
    path = tmp_path / "ambiguous.aci"
    path.write_bytes(_archive(*pieces, _file(b"placeholder", MANIFEST.data), rest=tar_bytes([ROOTFS])))
    with pytest.raises(ImageError, match=match):
        store.import_aci(path)
    with open(path, "rb") as f, pytest.raises(ImageError, match=match):
        aci.read_manifest(f)  # the reader fetch checks signatures with refuses it the same way
    assert snapshot(store.root) == before


def test_one_extended_header_per_field_is_still_read(tmp_path: Path) -> None:
    long = "rootfs/" + "d" * 150
    for pieces in (
        [_extended(b"L", long.encode() + b"\0")],
        [_extended(b"x", _pax(("path", long), ("mtime", "1500000000.5")))],
        [_extended(b"g", _pax(("comment", "git commit"))), _extended(b"L", long.encode() + b"\0")],
    ):
        path = tmp_path / "ok.aci"
        path.write_bytes(
            _archive(
                _file(b"manifest", MANIFEST.data), _header(b"rootfs/", b"5", 0), *pieces, _file(b"x", b"hi")
            )
        )
        store = Store(tmp_path / "store")
        info = store.import_aci(path)
        assert (store.rootfs(info.id) / ("d" * 150)).read_bytes() == b"hi"
        store.remove(info.id)


def test_import_commits_only_what_the_check_accepts(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.import_aci(write_aci(tmp_path / "ok.aci", busybox_entries(image_manifest("example.com/ok"))))
    before = snapshot(store.root)
    path = write_aci(tmp_path / "other.aci", busybox_entries(image_manifest("example.com/other")))
    seen = []

    def refuse(manifest: object) -> None:
        seen.append(manifest)
        raise TrustError("not this one")

    with pytest.raises(TrustError, match="not this one"):
        store.import_aci(path, trusted=True, check=refuse)
    assert [m.name for m in seen] == ["example.com/other"]  # type: ignore[attr-defined]
    assert snapshot(store.root) == before
    assert store.import_aci(path, check=seen.append).name == "example.com/other"


# --- finding 10: implied directories count, depth is bounded ----------------------------------------------


def _chain(letter: str, depth: int) -> Entry:
    return Entry("rootfs/" + "/".join([letter] * depth) + "/f")


def test_implied_directories_count_against_max_entries(tmp_path: Path) -> None:
    """Two explicit files 60 directories deep: 124 inodes (manifest, rootfs, 2 x 60 dirs + file)."""
    data = tar_bytes([MANIFEST, ROOTFS, _chain("a", 60), _chain("b", 60)])
    for limit, ok in ((123, False), (124, True)):
        dest = tmp_path / f"x{limit}"
        dest.mkdir()
        with io.BytesIO(data) as f:
            if ok:
                aci.read_aci(f, dest, aci.Policy(max_entries=limit))
                assert sum(len(d) + len(n) for _, d, n in os.walk(dest)) == limit
            else:
                with pytest.raises(ImageError, match=f"more than {limit} entries"):
                    aci.read_aci(f, dest, aci.Policy(max_entries=limit))
                assert sum(len(d) + len(n) for _, d, n in os.walk(dest)) <= limit


def test_small_archive_cannot_create_many_directories(tmp_path: Path) -> None:
    entries = [MANIFEST, ROOTFS, *(_chain(f"d{i}", 200) for i in range(40))]
    path = write_aci(tmp_path / "dirs.aci", entries, "gz")
    assert path.stat().st_size < 16 << 10
    (tmp_path / "x").mkdir()
    with open(path, "rb") as f, pytest.raises(ImageError, match="more than 1000 entries"):
        aci.read_aci(f, tmp_path / "x", aci.Policy(max_entries=1000))
    assert sum(len(d) for _, d, _ in os.walk(tmp_path / "x")) <= 1000


def test_path_depth_is_bounded(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    store.import_aci(write_aci(tmp_path / "ok.aci", busybox_entries(image_manifest("example.com/ok"))))
    before = snapshot(store.root)
    deep = Entry("rootfs/" + "/".join(["d"] * aci.MAX_DEPTH) + "/f")
    with pytest.raises(ImageError, match=f"deeper than {aci.MAX_DEPTH}"):
        store.import_aci(write_aci(tmp_path / "deep.aci", [MANIFEST, ROOTFS, deep]))
    assert snapshot(store.root) == before
    at_limit = Entry("rootfs/" + "/".join(["d"] * (aci.MAX_DEPTH - 2)) + "/f")
    store.import_aci(write_aci(tmp_path / "ok2.aci", [MANIFEST, ROOTFS, at_limit]))


# --- finding 11: deep trees and failed removals -----------------------------------------------------------


def _deepen(root: Path, depth: int = 3000) -> None:
    """Nest `depth` directories below `root` (as a pod can in a tree it writes), fd by fd."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(depth):
            os.mkdir("d", dir_fd=fd)
            if i % 500 == 0:
                os.close(os.open("file", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=fd))
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def test_deep_image_tree_is_removed_and_imports_go_on(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    info = store.import_aci(write_aci(tmp_path / "a.aci", busybox_entries(image_manifest("example.com/a"))))
    _deepen(store.rootfs(info.id) / "tmp")
    store.remove(info.id)
    assert os.listdir(store.tmp_dir) == [] and store.list() == []
    assert store.import_aci(tmp_path / "a.aci").id == info.id


def test_dead_importers_deep_staging_dir_does_not_block_imports(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    path = write_aci(tmp_path / "a.aci", busybox_entries(image_manifest("example.com/a")))
    store.import_aci(path)
    dead = store.tmp_dir / "import-dead"
    dead.mkdir()
    _deepen(dead)
    assert store.import_aci(path).name == "example.com/a"
    assert os.listdir(store.tmp_dir) == []


@pytest.fixture
def busy_staging_dir(tmp_path: Path) -> Iterator[tuple[Store, Path]]:
    """A dead importer's staging dir that cannot be removed: a filesystem is mounted in it."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    store = Store(tmp_path / "store")
    store.import_aci(write_aci(tmp_path / "a.aci", busybox_entries(image_manifest("example.com/a"))))
    mnt = store.tmp_dir / "import-dead" / "mnt"
    mnt.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "rktd-test", str(mnt)], check=True)
    try:
        yield store, mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_failed_removal_does_not_make_later_imports_fail(
    busy_staging_dir: tuple[Store, Path], tmp_path: Path
) -> None:
    store, mnt = busy_staging_dir
    other = write_aci(tmp_path / "b.aci", busybox_entries(image_manifest("example.com/b")))
    assert store.import_aci(other).name == "example.com/b"
    assert store.import_aci(other).name == "example.com/b"
    assert mnt.parent.exists()  # still there, for the next clean-up
    subprocess.run(["umount", str(mnt)], check=True)
    store.gc()
    assert os.listdir(store.tmp_dir) == []


# --- finding 12: plain names prefer verified images, unverified ones are named --------------------------


def test_verified_image_wins_over_a_newer_unverified_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "store")
    signed = store.import_aci(
        write_aci(tmp_path / "s.aci", busybox_entries(image_manifest(IMG, exec=["/bin/signed"]))),
        trusted=True,
    )
    unsigned = store.import_aci(
        write_aci(tmp_path / "u.aci", busybox_entries(image_manifest(IMG, exec=["/bin/unsigned"])))
    )
    assert unsigned.import_time >= signed.import_time and unsigned.id != signed.id
    found = store.find_verified(IMG, {"version": "1.0.0"})
    assert found is not None and found.id == signed.id
    assert capsys.readouterr().err == ""


def test_unverified_image_is_named_loudly_unless_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = Store(tmp_path / "store")
    path = write_aci(tmp_path / "u.aci", busybox_entries(image_manifest(IMG)))
    info = store.import_aci(path)
    found = store.find_verified(IMG)
    assert found is not None and found.id == info.id
    err = capsys.readouterr().err
    assert (
        "without a verified signature" in err and info.short_id in err and "--insecure-options=image" in err
    )
    assert store.find_verified(IMG, insecure=frozenset({"image"})) == found
    assert capsys.readouterr().err == ""
    # A later verified import of the same bytes records the verification: no more warning.
    assert store.import_aci(path, trusted=True).trusted
    assert store.find_verified(IMG) is not None and capsys.readouterr().err == ""


def test_docker_image_never_answers_an_appc_name(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    path = write_aci(tmp_path / "d.aci", busybox_entries(image_manifest(IMG)))
    info = store.import_aci(path, source=f"docker://{IMG}:latest")
    assert store.find(IMG) is None and store.find_verified(IMG, insecure=frozenset({"image"})) is None
    found = store.find(IMG, with_docker=True)
    assert found is not None and found.id == info.id


@needs_root
def test_stage0_warns_when_a_name_resolves_to_an_unverified_image(rktd: Rktd) -> None:
    """The fixture's store holds example.com/busybox imported without a signature."""
    for insecure, warned in (([], True), (["--insecure-options=image"], False)):
        uuid_file = rktd.tmp / f"uuid{len(insecure)}"
        proc = rktd(*insecure, "prepare", "--net=host", f"--uuid-file-save={uuid_file}", IMG)
        assert proc.returncode == 0, proc.stderr
        assert ("without a verified signature" in proc.stderr) is warned, proc.stderr
        assert rktd("rm", f"--uuid-file={uuid_file}").returncode == 0
