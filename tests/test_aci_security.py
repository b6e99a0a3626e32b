"""Extraction is a security boundary: a catalogue of hostile ACIs, each refused, the store unchanged
and nothing written outside the store's own staging directory (which is gone afterwards)."""

from __future__ import annotations

import gzip
import lzma
import os
import stat
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rktd_units import aci
from rktd_units.errors import ImageError
from rktd_units.store import Store
from tests.helpers.aci import Entry, busybox_entries, compress, image_manifest, tar_bytes, write_aci

MANIFEST = Entry("manifest", data=image_manifest("example.com/hostile"))
ROOTFS = Entry("rootfs", "dir", mode=0o755)


def snapshot(root: Path) -> list[tuple[str, int, int, str]]:
    """Every path below root with its mode, size and symlink target: what 'unchanged' compares."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            p = Path(dirpath, name)
            st = p.lstat()
            target = os.readlink(p) if p.is_symlink() else ""
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out.append((str(p.relative_to(root)), st.st_mode, size, target))
    return out


@pytest.fixture
def env(tmp_path: Path) -> tuple[Store, Path]:
    """A store holding one valid image, and an `outside` directory hostile archives aim at."""
    store = Store(tmp_path / "store")
    store.import_aci(write_aci(tmp_path / "ok.aci", busybox_entries(image_manifest("example.com/ok"))))
    outside = tmp_path / "outside"
    outside.mkdir()
    return store, outside


def refuse(env: tuple[Store, Path], tmp_path: Path, entries: list[Entry], match: str, **kw: object) -> None:
    store, outside = env
    before = snapshot(store.root)
    path = write_aci(tmp_path / "hostile.aci", entries, "gz")
    with pytest.raises(ImageError, match=match):
        store.import_aci(path, **kw)  # type: ignore[arg-type]
    assert snapshot(store.root) == before
    assert list(outside.iterdir()) == []
    assert os.listdir(store.tmp_dir) == []


def out(env: tuple[Store, Path], name: str = "pwned") -> str:
    return str(env[1] / name)


# (id, entries given the `outside` directory, message)
CATALOGUE: list[tuple[str, Callable[[Path], list[Entry]], str]] = [
    ("absolute-path", lambda o: [MANIFEST, ROOTFS, Entry(str(o / "pwned"), data=b"x")], "absolute path"),
    ("absolute-in-rootfs", lambda o: [MANIFEST, ROOTFS, Entry("/rootfs/x", data=b"x")], "absolute path"),
    ("dotdot", lambda o: [MANIFEST, ROOTFS, Entry("rootfs/../../outside/pwned", data=b"x")], r"'\.\.'"),
    ("dotdot-top", lambda o: [MANIFEST, ROOTFS, Entry("../outside/pwned", data=b"x")], r"'\.\.'"),
    (
        "symlink-then-write-through",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/link", "symlink", target=str(o)),
            Entry("rootfs/link/pwned"),
        ],
        "goes through the symlink",
    ),
    (
        "symlink-to-etc-then-passwd",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/link", "symlink", target="/etc"),
            Entry("rootfs/link/passwd"),
        ],
        "goes through the symlink",
    ),
    (
        "symlink-inside-then-write-through",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/etc", "dir"),
            Entry("rootfs/e", "symlink", target="etc"),
            Entry("rootfs/e/x"),
        ],
        "goes through the symlink",
    ),
    (
        "symlink-relative-escape",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/a/link", "symlink", target="../../../outside")],
        "escapes rootfs",
    ),
    (
        "symlink-replaced-by-file",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/x", "symlink", target=str(o / "pwned")),
            Entry("rootfs/x"),
        ],
        "duplicate entry",
    ),
    (
        "hardlink-absolute",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/h", "hardlink", target=str(o / "pwned"))],
        "absolute hardlink target",
    ),
    (
        "hardlink-dotdot",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/h", "hardlink", target="rootfs/../../x")],
        r"'\.\.'",
    ),
    (
        "hardlink-to-manifest",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/h", "hardlink", target="manifest")],
        "not an earlier regular file",
    ),
    (
        "hardlink-to-symlink-outside",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/l", "symlink", target=str(o / "pwned")),
            Entry("rootfs/h", "hardlink", target="rootfs/l"),
        ],
        "not an earlier regular file",
    ),
    (
        "hardlink-forward",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/h", "hardlink", target="rootfs/later"),
            Entry("rootfs/later"),
        ],
        "not an earlier regular file",
    ),
    (
        "hardlink-to-directory",
        lambda o: [
            MANIFEST,
            ROOTFS,
            Entry("rootfs/d", "dir"),
            Entry("rootfs/h", "hardlink", target="rootfs/d"),
        ],
        "not an earlier regular file",
    ),
    (
        "char-device",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/mem", "chr", major=1, minor=1)],
        "device node",
    ),
    (
        "block-device",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/sda", "blk", major=8, minor=0)],
        "device node",
    ),
    ("setuid", lambda o: [MANIFEST, ROOTFS, Entry("rootfs/su", data=b"x", mode=0o4755)], "setuid/setgid"),
    ("setgid", lambda o: [MANIFEST, ROOTFS, Entry("rootfs/sg", data=b"x", mode=0o2755)], "setuid/setgid"),
    ("outside-top-file", lambda o: [MANIFEST, ROOTFS, Entry("etc/passwd", data=b"x")], "outside manifest"),
    ("outside-top-dir", lambda o: [MANIFEST, ROOTFS, Entry("rootfs2", "dir")], "outside manifest"),
    (
        "under-manifest",
        lambda o: [MANIFEST, ROOTFS, Entry("manifest/x", data=b"x")],
        "outside manifest|through",
    ),
    (
        "duplicate-file",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/a"), Entry("rootfs/a")],
        "duplicate entry",
    ),
    (
        "duplicate-dotslash",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/a"), Entry("./rootfs/a")],
        "duplicate",
    ),
    ("duplicate-manifest", lambda o: [MANIFEST, ROOTFS, MANIFEST], "duplicate entry"),
    (
        "duplicate-dir",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/d", "dir"), Entry("rootfs/d/", "dir")],
        "duplicate",
    ),
    (
        "file-over-implicit-dir",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/d/x"), Entry("rootfs/d", data=b"x")],
        "duplicate entry",
    ),
    (
        "through-a-file",
        lambda o: [MANIFEST, ROOTFS, Entry("rootfs/f", data=b"x"), Entry("rootfs/f/x")],
        "non-directory",
    ),
    (
        "manifest-symlink",
        lambda o: [Entry("manifest", "symlink", target="/etc/passwd"), ROOTFS],
        "regular file",
    ),
    ("rootfs-symlink", lambda o: [MANIFEST, Entry("rootfs", "symlink", target=str(o))], "not a directory"),
    ("no-manifest", lambda o: [ROOTFS, Entry("rootfs/a")], "no manifest"),
    ("no-rootfs", lambda o: [MANIFEST], "no rootfs"),
    ("bad-manifest-json", lambda o: [Entry("manifest", data=b"{not json"), ROOTFS], "bad image manifest"),
    (
        "bad-manifest-kind",
        lambda o: [Entry("manifest", data=b'{"acKind": "PodManifest", "acVersion": "0.8.11"}'), ROOTFS],
        "bad image manifest",
    ),
]


@pytest.mark.parametrize("name,build,match", CATALOGUE, ids=[c[0] for c in CATALOGUE])
def test_hostile_archive_is_refused(
    env: tuple[Store, Path], tmp_path: Path, name: str, build: Callable[[Path], list[Entry]], match: str
) -> None:
    refuse(env, tmp_path, build(env[1]), match)


def test_size_limit(env: tuple[Store, Path], tmp_path: Path) -> None:
    entries = [MANIFEST, ROOTFS, Entry("rootfs/big", data=os.urandom(2 << 20))]
    refuse(env, tmp_path, entries, "size limit", max_size=1 << 20)
    # the same archive passes with room to spare
    info = env[0].import_aci(write_aci(tmp_path / "big.aci", entries), max_size=4 << 20)
    assert (env[0].rootfs(info.id) / "big").stat().st_size == 2 << 20


def test_entry_count_and_name_length_limits(env: tuple[Store, Path], tmp_path: Path) -> None:
    store = env[0]
    before = snapshot(store.root)
    many = [MANIFEST, ROOTFS, *(Entry(f"rootfs/f{i}") for i in range(50))]
    (tmp_path / "x").mkdir()
    with (
        open(write_aci(tmp_path / "many.aci", many), "rb") as f,
        pytest.raises(ImageError, match="more than 40"),
    ):
        aci.read_aci(f, tmp_path / "x", aci.Policy(max_entries=40))
    for name in ("rootfs/" + "n" * 256, "rootfs/" + "/".join(["d" * 200] * 21)):
        with pytest.raises(ImageError, match="longer than"):
            store.import_aci(write_aci(tmp_path / "long.aci", [MANIFEST, ROOTFS, Entry(name)]))
    assert snapshot(store.root) == before


def test_compression_bomb(env: tuple[Store, Path], tmp_path: Path) -> None:
    store = env[0]
    before = snapshot(store.root)
    zeros = tar_bytes([MANIFEST, ROOTFS, Entry("rootfs/zeros", data=bytes(96 << 20))])
    bomb = tmp_path / "bomb.aci"
    bomb.write_bytes(lzma.compress(zeros, preset=9))
    assert len(zeros) > aci.DEFAULT_MAX_RATIO * bomb.stat().st_size
    with pytest.raises(ImageError, match="compression bomb"):
        store.import_aci(bomb)
    assert snapshot(store.root) == before


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_sparse_files_are_refused(env: tuple[Store, Path], tmp_path: Path, fmt: str) -> None:
    """A sparse member declares a large real size with little data (a disk bomb): refused, GNU or pax."""
    tree = tmp_path / "tree"
    (tree / "rootfs").mkdir(parents=True)
    (tree / "manifest").write_bytes(image_manifest("example.com/sparse"))
    with open(tree / "rootfs/sparse", "wb") as f:
        f.truncate(8 << 20)
    path = tmp_path / "sparse.aci"
    subprocess.run(
        ["tar", "--sparse", f"--format={fmt}", "-C", str(tree), "-cf", str(path), "manifest", "rootfs"],
        check=True,
    )
    assert path.stat().st_size < 1 << 20
    store = env[0]
    before = snapshot(store.root)
    with pytest.raises(ImageError, match="sparse files are not supported"):
        store.import_aci(path)
    assert snapshot(store.root) == before


def test_devices_allowed_when_asked(env: tuple[Store, Path], tmp_path: Path) -> None:
    entries = [MANIFEST, ROOTFS, Entry("rootfs/null", "chr", mode=0o666, major=1, minor=3)]
    info = env[0].import_aci(write_aci(tmp_path / "dev.aci", entries), allow_devices=True)
    st = (env[0].rootfs(info.id) / "null").lstat()
    assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1 and os.minor(st.st_rdev) == 3


def test_setuid_kept_when_trusted(env: tuple[Store, Path], tmp_path: Path) -> None:
    entries = [MANIFEST, ROOTFS, Entry("rootfs/su", data=b"x", mode=0o4755)]
    info = env[0].import_aci(write_aci(tmp_path / "su.aci", entries), trusted=True)
    assert stat.S_IMODE((env[0].rootfs(info.id) / "su").stat().st_mode) == 0o4755


def test_safe_links_are_kept(env: tuple[Store, Path], tmp_path: Path) -> None:
    """Absolute symlinks (resolved in the pod), relative ones inside rootfs, hardlinks, fifos, setgid
    directories (setgid on a directory grants nothing; Debian ships /var/mail 2775)."""
    entries = [
        MANIFEST,
        ROOTFS,
        Entry("rootfs/bin/busybox", data=b"bb", mode=0o755),
        Entry("rootfs/bin/sh", "symlink", target="/bin/busybox"),
        Entry("rootfs/usr/bin/env", "symlink", target="../../bin/busybox"),
        Entry("rootfs/bin/ash", "hardlink", target="rootfs/bin/busybox"),
        Entry("rootfs/run/fifo", "fifo", mode=0o600),
        Entry("rootfs/var/mail", "dir", mode=0o2775),
        Entry("rootfs/home/user/.profile", data=b"x", uid=1000, gid=100, mode=0o600),
    ]
    info = env[0].import_aci(write_aci(tmp_path / "links.aci", entries))
    root = env[0].rootfs(info.id)
    if os.geteuid() == 0:
        st = (root / "home/user/.profile").stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 100, 0o600)
    assert os.readlink(root / "bin/sh") == "/bin/busybox"
    assert os.readlink(root / "usr/bin/env") == "../../bin/busybox"
    assert (root / "bin/ash").stat().st_ino == (root / "bin/busybox").stat().st_ino
    assert stat.S_ISFIFO((root / "run/fifo").lstat().st_mode)
    assert stat.S_IMODE((root / "var/mail").stat().st_mode) == 0o2775


@pytest.mark.parametrize(
    "data,match",
    [
        (b"", "empty archive"),
        (b"this is not a tar archive at all" * 40, "not a tar archive"),
        (gzip.compress(b"x" * 4096)[:-20], "truncated gzip data"),
        (b"\x1f\x8b\x08\x00garbage-garbage-garbage", "corrupt"),
        (compress(tar_bytes([MANIFEST, ROOTFS]), "xz") + b"trailing junk", "garbage after"),
    ],
    ids=["empty", "not-tar", "truncated-gzip", "corrupt-gzip", "junk-after-xz"],
)
def test_unreadable_archives(env: tuple[Store, Path], tmp_path: Path, data: bytes, match: str) -> None:
    store = env[0]
    before = snapshot(store.root)
    path = tmp_path / "bad.aci"
    path.write_bytes(data)
    with pytest.raises(ImageError, match=match):
        store.import_aci(path)
    assert snapshot(store.root) == before


def test_extract_directly_never_follows_a_preexisting_symlink(tmp_path: Path) -> None:
    """read_aci records what it created: an entry through a symlink is refused even if it is its own."""
    dest = tmp_path / "dest"
    dest.mkdir()
    data = tar_bytes(
        [MANIFEST, ROOTFS, Entry("rootfs/l", "symlink", target=str(tmp_path)), Entry("rootfs/l/x")]
    )
    with pytest.raises(ImageError, match="symlink"), open(write_aci(tmp_path / "a.aci", []), "rb"):
        import io

        aci.read_aci(io.BytesIO(data), dest)
    assert not (tmp_path / "x").exists()


def test_tar_formats(env: tuple[Store, Path], tmp_path: Path) -> None:
    """GNU and ustar headers are read as well as pax; long names survive."""
    long = "rootfs/" + "/".join(["d" * 60] * 5) + "/file"
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        path = tmp_path / f"f{fmt}.aci"
        path.write_bytes(tar_bytes([MANIFEST, ROOTFS, Entry(long, data=b"deep")], fmt=fmt))
        info = env[0].import_aci(path)
        assert (info.path / long).read_bytes() == b"deep"  # type: ignore[operator]


LONG = "d" * 120


@pytest.mark.parametrize(
    "fmt,entry,match",
    [
        (tarfile.PAX_FORMAT, Entry(f"rootfs/{LONG}/../../../outside/pwned", data=b"x"), r"'\.\.'"),
        (tarfile.PAX_FORMAT, Entry(f"/rootfs/{LONG}", data=b"x"), "absolute path"),
        (tarfile.GNU_FORMAT, Entry(f"rootfs/{LONG}/../../x", data=b"x"), r"'\.\.'"),
        (tarfile.GNU_FORMAT, Entry(f"/{LONG}/pwned", data=b"x"), "absolute path"),
        (tarfile.GNU_FORMAT, Entry("rootfs/h", "hardlink", target=f"/{LONG}"), "absolute hardlink target"),
        (tarfile.PAX_FORMAT, Entry("rootfs/l", "symlink", target=f"../{LONG}/../.."), "escapes rootfs"),
    ],
    ids=[
        "pax-path-dotdot",
        "pax-path-absolute",
        "gnu-longname-dotdot",
        "gnu-longname-absolute",
        "gnu-longlink-absolute",
        "pax-linkpath-escape",
    ],
)
def test_extended_headers_are_checked_too(
    env: tuple[Store, Path], tmp_path: Path, fmt: int, entry: Entry, match: str
) -> None:
    data = tar_bytes([MANIFEST, ROOTFS, entry], fmt=fmt)
    assert b"././@LongLink" in data or b"PaxHeader" in data  # the name really is in an extended header
    path = tmp_path / "ext.aci"
    path.write_bytes(data)
    store = env[0]
    before = snapshot(store.root)
    with pytest.raises(ImageError, match=match):
        store.import_aci(path)
    assert snapshot(store.root) == before and list(env[1].iterdir()) == []


def test_damaged_headers_and_truncation(env: tuple[Store, Path], tmp_path: Path) -> None:
    good = tar_bytes([MANIFEST, ROOTFS, Entry("rootfs/a", data=os.urandom(5000))])
    flipped = bytearray(good)
    flipped[1024 + 10] ^= 0x01  # a byte of the second header's name: the checksum no longer matches
    for data, match in (
        (bytes(flipped), "bad header checksum"),
        (good[: 1536 + 3000], "ends in the middle of an entry"),
        (good[: 2048 + 5120 + 100], "middle of a tar header"),
        (good[: 2048 + 5120], "no end-of-archive marker"),
    ):
        path = tmp_path / "bad.aci"
        path.write_bytes(data)
        with pytest.raises(ImageError, match=match):
            env[0].import_aci(path)
    assert os.listdir(env[0].tmp_dir) == []


def test_numbers_in_headers() -> None:
    assert aci._num(b"0000644\0", "mode") == 0o644
    assert aci._num(b"  755 \0", "mode") == 0o755
    assert aci._num(b"\x80" + (8 << 30).to_bytes(11, "big"), "size") == 8 << 30  # GNU base-256
    with pytest.raises(ImageError, match="negative"):
        aci._num(b"\xff" * 12, "size")
    with pytest.raises(ImageError, match="bad mode"):
        aci._num(b"12x4\0", "mode")


def test_global_pax_header_is_ignored(env: tuple[Store, Path], tmp_path: Path) -> None:
    """git archive writes a global pax header (its commit ID): the image is still read."""
    import io

    buf = io.BytesIO()
    with tarfile.open(
        fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "abc"}
    ) as tf:
        for e in (MANIFEST, ROOTFS):
            ti = tarfile.TarInfo(e.path)
            ti.type = tarfile.DIRTYPE if e.kind == "dir" else tarfile.REGTYPE
            ti.size = len(e.data)
            tf.addfile(ti, io.BytesIO(e.data))
    assert b"PaxHeader" in buf.getvalue() or b"GlobalHead" in buf.getvalue()
    path = tmp_path / "g.aci"
    path.write_bytes(buf.getvalue())
    assert env[0].import_aci(path).name == "example.com/hostile"


# --- property: whatever the archive, nothing escapes, and an accepted one round-trips exactly -----------

HOSTILE = (
    ["a", "b", "..", ".", "", "link", "rootfs", "manifest", "/", "/etc", "x/y"],
    ["/etc", "..", "../.."],
)


def _entries(names: list[str], targets: list[str]) -> st.SearchStrategy[list[Entry]]:
    path = st.lists(st.sampled_from(names), min_size=1, max_size=4).map(lambda ps: "rootfs/" + "/".join(ps))
    target = st.one_of(path, st.sampled_from(targets))
    entry = st.one_of(
        st.builds(Entry, path, st.just("file"), st.binary(max_size=600), st.sampled_from([0o644, 0o4755])),
        st.builds(Entry, path, st.just("dir"), st.just(b""), st.just(0o755)),
        st.builds(lambda p, t: Entry(p, "symlink", target=t), path, target),
        st.builds(lambda p, t: Entry(p, "hardlink", target=t), path, target),
        st.builds(lambda p: Entry(p, "fifo", mode=0o600), path),
    )
    return st.lists(entry, max_size=8).map(lambda es: [MANIFEST, ROOTFS, *es])


def _check_one(base: Path, entries: list[Entry], fmt: int) -> bool:
    """Extract into a fresh sandbox: nothing may appear beside `dest`; an accepted archive must come
    back byte for byte from its skeleton and tree. Returns whether it was accepted."""
    import io
    import tempfile

    with tempfile.TemporaryDirectory(dir=base) as sandbox:
        box = Path(sandbox)
        (box / "outside").mkdir()
        dest = box / "dest"
        dest.mkdir()
        data = tar_bytes(entries, fmt=fmt)
        skeleton = io.BytesIO()
        try:
            result = aci.read_aci(io.BytesIO(data), dest, skeleton=skeleton)
        except ImageError:
            result = None
        assert list((box / "outside").iterdir()) == []
        assert sorted(p.name for p in box.iterdir()) == ["dest", "outside"]
        if result is None:
            return False
        out = io.BytesIO()
        aci.write_tar(io.BytesIO(skeleton.getvalue()), dest, out, result.image_id)
        assert out.getvalue() == data
        return True


FORMATS = st.sampled_from([tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(entries=_entries(*HOSTILE), fmt=FORMATS)
def test_random_hostile_archives_never_escape(tmp_path: Path, entries: list[Entry], fmt: int) -> None:
    _check_one(tmp_path, entries, fmt)


@st.composite
def _benign(draw: st.DrawFn) -> list[Entry]:
    """Valid archives: unique paths, parents that are directories, hardlinks to earlier files."""
    paths = draw(
        st.lists(
            st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3).map("/".join),
            unique=True,
            max_size=10,
        )
    )
    parents = {p[:i] for p in paths for i, ch in enumerate(p) if ch == "/"}  # every proper ancestor
    out, files = [MANIFEST, ROOTFS], []
    for p in paths:
        kind = (
            "dir" if p in parents else draw(st.sampled_from(["file", "file", "symlink", "hardlink", "fifo"]))
        )
        if kind == "hardlink" and not files:
            kind = "file"
        name = f"rootfs/{p}"
        if kind == "file":
            out.append(
                Entry(name, data=draw(st.binary(max_size=1500)), mode=draw(st.sampled_from([0o644, 0o755])))
            )
            files.append(name)
        elif kind == "hardlink":
            out.append(Entry(name, "hardlink", target=draw(st.sampled_from(files))))
        elif kind == "symlink":
            out.append(Entry(name, "symlink", target=draw(st.sampled_from(["/bin/sh", "a", "./b", "/"]))))
        else:
            out.append(Entry(name, kind, mode=0o755 if kind == "dir" else 0o600))
    return out


@SETTINGS
@given(entries=_benign(), fmt=FORMATS)
def test_random_valid_archives_are_accepted_and_round_trip(
    tmp_path: Path, entries: list[Entry], fmt: int
) -> None:
    assert _check_one(tmp_path, entries, fmt)
