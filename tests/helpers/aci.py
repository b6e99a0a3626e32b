"""Build ACIs for tests: a real busybox-static rootfs, deterministic bytes, any compression.

from tests.helpers.aci import make_busybox_aci
aci = make_busybox_aci(tmp_path / "bb.aci", exec=["/bin/sh", "-c", "echo hi"], compression="xz")
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import tarfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
MTIME = 1_500_000_000
APPLETS = ("sh", "echo", "cat", "ls", "sleep", "true", "false", "env", "id", "touch", "mkdir", "rm", "nc")
DEFAULT_LABELS = {"version": "1.0.0", "os": "linux", "arch": "amd64"}

_COMPRESSIONS = {
    "none": "none",
    "plain": "none",
    "gz": "gzip",
    "gzip": "gzip",
    "bz2": "bzip2",
    "bzip2": "bzip2",
    "xz": "xz",
}


@dataclass(frozen=True)
class Entry:
    """One tar member: kind is "file", "dir", "symlink", "hardlink", "fifo", "chr" or "blk"."""

    path: str
    kind: str = "file"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""
    uid: int = 0
    gid: int = 0
    major: int = 0
    minor: int = 0


def image_manifest(
    name: str,
    labels: Mapping[str, str] | None = None,
    exec: Sequence[str] | None = None,
    *,
    app: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """An appc ImageManifest as JSON bytes; `extra` adds top-level fields (dependencies, pathWhitelist)."""
    doc: dict[str, Any] = {"acKind": "ImageManifest", "acVersion": "0.8.11", "name": name}
    merged = dict(DEFAULT_LABELS if labels is None else labels)
    if merged:
        doc["labels"] = [{"name": k, "value": v} for k, v in sorted(merged.items())]
    if app is not None or exec is not None:
        doc["app"] = {"exec": list(exec or ["/bin/sh"]), "user": "0", "group": "0", **(app or {})}
    if annotations:
        doc["annotations"] = [{"name": k, "value": v} for k, v in sorted(annotations.items())]
    doc.update(extra or {})
    return json.dumps(doc, indent=2, sort_keys=True).encode()


def tar_bytes(entries: Iterable[Entry], *, fmt: int = tarfile.PAX_FORMAT) -> bytes:
    """A tar archive of `entries`, in order, exactly as given (no checks: hostile archives too)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, MTIME
            ti.uname = ti.gname = "root" if e.uid == 0 else ""
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
                continue
            ti.type = {
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
                "fifo": tarfile.FIFOTYPE,
                "chr": tarfile.CHRTYPE,
                "blk": tarfile.BLKTYPE,
            }[e.kind]
            ti.linkname = e.target
            ti.devmajor, ti.devminor = e.major, e.minor
            tf.addfile(ti)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    kind = _COMPRESSIONS[compression]
    if kind == "gzip":
        return gzip.compress(data, compresslevel=6, mtime=0)
    if kind == "bzip2":
        return bz2.compress(data, 9)
    if kind == "xz":
        return lzma.compress(data, preset=1)
    return data


def write_aci(path: Path, entries: Iterable[Entry], compression: str = "none") -> Path:
    path.write_bytes(compress(tar_bytes(entries), compression))
    return path


def busybox_entries(
    manifest: bytes,
    extra_files: Mapping[str, bytes | str] | None = None,
) -> list[Entry]:
    """manifest + a rootfs with busybox, applet symlinks, /etc/passwd, /etc/group and `extra_files`
    (paths relative to the rootfs, parents created as needed)."""
    entries = [
        Entry("manifest", data=manifest),
        Entry("rootfs", "dir", mode=0o755),
    ]
    dirs = ["bin", "dev", "etc", "proc", "sys", "tmp", "var", "root"]
    for d in dirs:
        entries.append(Entry(f"rootfs/{d}", "dir", mode=0o1777 if d == "tmp" else 0o755))
    entries.append(Entry("rootfs/bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    entries += [Entry(f"rootfs/bin/{a}", "symlink", target="busybox", mode=0o777) for a in APPLETS]
    entries.append(Entry("rootfs/etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\n"))
    entries.append(Entry("rootfs/etc/group", data=b"root:x:0:\n"))
    made = {f"rootfs/{d}" for d in dirs} | {"rootfs"}
    for rel, content in sorted((extra_files or {}).items()):
        rel = rel.strip("/")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            d = "rootfs/" + "/".join(parts[:i])
            if d not in made:
                made.add(d)
                entries.append(Entry(d, "dir", mode=0o755))
        data = content.encode() if isinstance(content, str) else content
        entries.append(Entry(f"rootfs/{rel}", data=data, mode=0o755 if data.startswith(b"#!") else 0o644))
    return entries


def make_busybox_aci(
    path: Path,
    name: str = "example.com/busybox",
    labels: Mapping[str, str] | None = None,
    exec: Sequence[str] = ("/bin/sh",),
    compression: str = "gz",
    extra_files: Mapping[str, bytes | str] | None = None,
    *,
    app: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> Path:
    """Write an ACI of busybox-static to `path`; `labels` default to version 1.0.0, linux, amd64.

    `app` adds appc app fields (e.g. {"environment": [...], "ports": [...]}); the same arguments give
    the same bytes, hence the same image ID.
    """
    manifest = image_manifest(name, labels, exec, app=app, annotations=annotations)
    return write_aci(path, busybox_entries(manifest, extra_files), compression)
