"""ACI reading: compression by magic, the image ID (sha512 of the uncompressed tar), safe extraction.

An ACI is a tar (plain, gzip, bzip2 or xz) holding exactly `manifest` and `rootfs/...`. Everything is
done in one streaming pass: the raw bytes may be copied to a blob file, the decompressed bytes are
hashed (the image ID) and counted (size limit, compression-bomb ratio), and the tar is extracted.

Extraction is a security boundary. It writes only below a fresh directory and never follows a
symlink: every path component is checked against what this extraction has itself created, and
files are created with O_EXCL|O_NOFOLLOW. Refused: absolute paths, `..`, entries outside `manifest`
and `rootfs/`, duplicate entries, paths through a symlink or non-directory, relative symlinks that
leave `rootfs/`, hardlinks to anything but an earlier regular file in `rootfs/`, device nodes
(unless `allow_devices`), setuid/setgid files (unless `trusted`), archives that expand past
`max_size` or inflate more than `max_ratio` times.
"""

from __future__ import annotations

import bz2
import enum
import hashlib
import lzma
import os
import stat
import sys
import tarfile
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO

from rktd_units.errors import ImageError, ManifestError
from rktd_units.model import ImageManifest

CHUNK = 1 << 20
MAX_MANIFEST = 1 << 20
DEFAULT_MAX_SIZE = 16 << 30
DEFAULT_MAX_RATIO = 1000
RATIO_FLOOR = 64 << 20  # the ratio is checked only once this much has been inflated
ID_PREFIX = "sha512-"


class Compression(enum.StrEnum):
    NONE = "none"
    GZIP = "gzip"
    BZIP2 = "bzip2"
    XZ = "xz"


_MAGICS = (
    (b"\x1f\x8b", Compression.GZIP),
    (b"BZh", Compression.BZIP2),
    (b"\xfd7zXZ\x00", Compression.XZ),
)


def detect_compression(head: bytes) -> Compression:
    """The compression of a stream, from its first bytes (at least 6)."""
    for magic, comp in _MAGICS:
        if head.startswith(magic):
            return comp
    return Compression.NONE


@dataclass(frozen=True)
class Policy:
    """What an extraction accepts beyond the always-safe subset."""

    trusted: bool = False  # setuid/setgid files
    allow_devices: bool = False  # character and block devices
    max_size: int = DEFAULT_MAX_SIZE  # bytes of uncompressed tar, and of file data written
    max_ratio: int = DEFAULT_MAX_RATIO  # uncompressed / compressed


@dataclass(frozen=True)
class AciResult:
    image_id: str
    manifest: ImageManifest
    size: int  # bytes of uncompressed tar
    raw_size: int  # bytes read from the source
    compression: Compression


def parse_manifest(data: bytes, path: str = "manifest") -> ImageManifest:
    """Parse an ImageManifest; ImageError saying what is wrong."""
    from rktd_units.formats.appc import load_image_manifest

    try:
        return load_image_manifest(data, path)
    except ManifestError as e:
        raise ImageError(f"bad image manifest: {e}") from None


# --- decompression ------------------------------------------------------------------------------------


class _Inflater:
    """Decompresses one format, multi-stream (pigz, pbzip2, xz -T), in bounded output pieces."""

    def __init__(self, comp: Compression) -> None:
        self.comp = comp
        self.magic = next(m for m, c in _MAGICS if c is comp)
        self.dec: Any = self._new()
        self.trailing = False

    def _new(self) -> Any:
        if self.comp is Compression.GZIP:
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.comp is Compression.BZIP2:
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor(lzma.FORMAT_XZ)

    def feed(self, data: bytes) -> Iterator[bytes]:
        while True:
            if self.dec.eof:
                data = self.dec.unused_data + data
                if not data:
                    return
                if self.trailing or not data.startswith(self.magic):
                    if data.strip(b"\0"):
                        raise ImageError(f"garbage after the {self.comp} data")
                    self.trailing = True
                    self.dec = _Done()
                    return
                self.dec = self._new()
            try:
                if self.comp is Compression.GZIP:
                    out = self.dec.decompress(data, CHUNK)
                    data = self.dec.unconsumed_tail
                else:
                    out = self.dec.decompress(data, CHUNK)
                    data = b""
            except (zlib.error, OSError, EOFError, lzma.LZMAError) as e:
                raise ImageError(f"corrupt {self.comp} data: {e}") from None
            if out:
                yield out
            if self.dec.eof:
                continue
            if self.comp is Compression.GZIP:
                if not data:
                    return
            elif self.dec.needs_input:
                return

    def finish(self) -> None:
        if not self.dec.eof:
            raise ImageError(f"truncated {self.comp} data")


class _Done:
    eof = True
    unused_data = b""


class _Stream:
    """File-like view of the uncompressed tar: hashes, counts and limits what it hands to tarfile."""

    def __init__(
        self,
        src: IO[bytes],
        policy: Policy,
        *,
        blob: IO[bytes] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        self.src = src
        self.policy = policy
        self.blob = blob
        self.progress = progress
        self.raw_size = 0
        self.size = 0
        self.hash = hashlib.sha512()
        head = self._raw(CHUNK)
        while 0 < len(head) < 6:
            more = self._raw(CHUNK)
            if not more:
                break
            head += more
        self.compression = detect_compression(head)
        self._pieces = self._inflate(head)
        self._buf = b""
        self._pos = 0

    def _raw(self, n: int) -> bytes:
        data = self.src.read(n)
        if data:
            self.raw_size += len(data)
            if self.blob is not None:
                self.blob.write(data)
            if self.progress is not None:
                self.progress(self.raw_size)
        return data

    def _inflate(self, head: bytes) -> Iterator[bytes]:
        if self.compression is Compression.NONE:
            data = head
            while data:
                yield data
                data = self._raw(CHUNK)
            return
        inflater = _Inflater(self.compression)
        data = head
        while data:
            yield from inflater.feed(data)
            data = self._raw(CHUNK)
        inflater.finish()

    def _next(self) -> bytes:
        piece = next(self._pieces, b"")
        if piece:
            self.size += len(piece)
            self.hash.update(piece)
            self._check_limits()
        return piece

    def _check_limits(self) -> None:
        p = self.policy
        if self.size > p.max_size:
            raise ImageError(f"image expands past the size limit ({p.max_size} bytes)")
        if self.size > RATIO_FLOOR and self.size > p.max_ratio * max(self.raw_size, 1):
            raise ImageError(f"image inflates more than {p.max_ratio} times (a compression bomb?)")

    def read(self, n: int = -1) -> bytes:
        if self._pos >= len(self._buf):
            self._buf = self._next()
            self._pos = 0
        if n < 0:
            n = len(self._buf) - self._pos
        out = self._buf[self._pos : self._pos + n]
        self._pos += len(out)
        return out

    def drain(self) -> None:
        """Hash what tarfile left unread (end-of-archive padding), so the ID covers the whole tar."""
        self._buf = b""
        while self._next():
            pass

    @property
    def image_id(self) -> str:
        return ID_PREFIX + self.hash.hexdigest()


def image_id(src: IO[bytes], policy: Policy = Policy()) -> str:
    """The image ID of an ACI stream, without extracting it."""
    stream = _Stream(src, policy)
    stream.drain()
    return stream.image_id


# --- extraction ---------------------------------------------------------------------------------------

_DIR, _FILE, _LINK, _OTHER = "d", "f", "l", "o"


def _split(name: str, what: str = "path") -> list[str]:
    if "\0" in name:
        raise ImageError(f"{what} {name!r} contains a NUL byte")
    if name.startswith("/"):
        raise ImageError(f"absolute {what} {name!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{what} {name!r} contains '..'")
    return parts


def _symlink_escapes(parts: list[str], target: str) -> bool:
    """Whether a relative symlink at rootfs/`parts` leaves rootfs/ when resolved lexically."""
    stack = parts[1:-1]
    for comp in target.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                return True
            stack.pop()
        else:
            stack.append(comp)
    return False


class _Extractor:
    """Creates the entries of one archive below `root` (a fresh, private, empty directory)."""

    def __init__(self, root: Path, policy: Policy) -> None:
        self.root = os.fspath(root)
        self.policy = policy
        self.kinds: dict[str, str] = {}
        self.explicit: set[str] = set()
        self.dirs: list[tuple[str, tarfile.TarInfo]] = []
        self.budget = policy.max_size
        self.chown = os.geteuid() == 0
        self.manifest: bytes | None = None

    def _path(self, rel: str) -> str:
        return self.root + "/" + rel

    def add(self, tf: tarfile.TarFile, ti: tarfile.TarInfo) -> None:
        parts = _split(ti.name)
        if not parts:
            if ti.isdir():
                return  # the archive's own root, "./"
            raise ImageError(f"entry with an empty name ({ti.name!r})")
        rel = "/".join(parts)
        self._check_entry(ti, parts, rel)
        self._make_parents(parts)
        if rel in self.explicit:
            raise ImageError(f"duplicate entry {rel!r}")
        if rel in self.kinds and not ti.isdir():
            raise ImageError(f"duplicate entry {rel!r} (an earlier entry made it a directory)")
        self.explicit.add(rel)
        self._create(tf, ti, parts, rel)

    def _check_entry(self, ti: tarfile.TarInfo, parts: list[str], rel: str) -> None:
        if parts[0] not in ("manifest", "rootfs") or (parts[0] == "manifest" and len(parts) > 1):
            raise ImageError(f"entry {rel!r} is outside manifest and rootfs/")
        if parts == ["manifest"] and not ti.isreg():
            raise ImageError("manifest is not a regular file")
        if parts == ["rootfs"] and not ti.isdir():
            raise ImageError("rootfs is not a directory")
        if not (ti.isreg() or ti.isdir() or ti.issym() or ti.islnk() or ti.isfifo() or ti.isdev()):
            raise ImageError(f"entry {rel!r} has an unsupported type {ti.type!r}")
        if (ti.ischr() or ti.isblk()) and not self.policy.allow_devices:
            raise ImageError(f"device node {rel!r} refused (devices are not allowed)")
        if not (ti.isdir() or ti.issym() or ti.islnk()) and ti.mode & (stat.S_ISUID | stat.S_ISGID):
            if not self.policy.trusted:
                raise ImageError(f"setuid/setgid file {rel!r} refused (the image is not trusted)")

    def _make_parents(self, parts: list[str]) -> None:
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            kind = self.kinds.get(prefix)
            if kind == _DIR:
                continue
            if kind == _LINK:
                raise ImageError(f"entry {'/'.join(parts)!r} goes through the symlink {prefix!r}")
            if kind is not None:
                raise ImageError(f"entry {'/'.join(parts)!r} goes through the non-directory {prefix!r}")
            os.mkdir(self._path(prefix), 0o700)
            os.chmod(self._path(prefix), 0o755)
            self.kinds[prefix] = _DIR

    def _create(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parts: list[str], rel: str) -> None:
        path = self._path(rel)
        if ti.isdir():
            if rel not in self.kinds:
                os.mkdir(path, 0o700)
                self.kinds[rel] = _DIR
            self.dirs.append((path, ti))
        elif ti.isreg():
            self._file(tf, ti, parts, path)
            self.kinds[rel] = _FILE
        elif ti.issym():
            self._symlink(ti, parts, path)
            self.kinds[rel] = _LINK
        elif ti.islnk():
            self._hardlink(ti, rel, path)
            self.kinds[rel] = _FILE
        else:
            if ti.isfifo():
                os.mkfifo(path, 0o600)
            else:
                kind = stat.S_IFCHR if ti.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(ti.devmajor, ti.devminor))
            self._attrs(path, ti)
            self.kinds[rel] = _OTHER

    def _file(self, tf: tarfile.TarFile, ti: tarfile.TarInfo, parts: list[str], path: str) -> None:
        self.budget -= ti.size
        if self.budget < 0:
            raise ImageError(f"image expands past the size limit ({self.policy.max_size} bytes)")
        src = tf.extractfile(ti)
        assert src is not None
        is_manifest = parts == ["manifest"]
        if is_manifest and ti.size > MAX_MANIFEST:
            raise ImageError(f"manifest is larger than {MAX_MANIFEST} bytes")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            kept: list[bytes] = []
            remaining = ti.size
            while remaining > 0:
                data = src.read(min(remaining, CHUNK))
                if not data:
                    raise ImageError(f"archive ends inside {'/'.join(parts)!r}")
                remaining -= len(data)
                _write_all(fd, data)
                if is_manifest:
                    kept.append(data)
            if is_manifest:
                self.manifest = b"".join(kept)
            if self.chown:
                os.fchown(fd, ti.uid, ti.gid)
            os.fchmod(fd, ti.mode & 0o7777)
            os.utime(fd, (ti.mtime, ti.mtime))
        finally:
            os.close(fd)

    def _symlink(self, ti: tarfile.TarInfo, parts: list[str], path: str) -> None:
        target = ti.linkname
        if not target or "\0" in target:
            raise ImageError(f"symlink {'/'.join(parts)!r} has an empty or NUL-containing target")
        if not target.startswith("/") and _symlink_escapes(parts, target):
            raise ImageError(f"symlink {'/'.join(parts)!r} -> {target!r} escapes rootfs/")
        os.symlink(target, path)
        if self.chown:
            os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
        os.utime(path, (ti.mtime, ti.mtime), follow_symlinks=False)

    def _hardlink(self, ti: tarfile.TarInfo, rel: str, path: str) -> None:
        target = "/".join(_split(ti.linkname, "hardlink target"))
        if (
            not target.startswith("rootfs/")
            or self.kinds.get(target) != _FILE
            or target not in self.explicit
            or not rel.startswith("rootfs/")
        ):
            raise ImageError(f"hardlink {rel!r} -> {ti.linkname!r}: not an earlier regular file in rootfs/")
        os.link(self._path(target), path, follow_symlinks=False)

    def _attrs(self, path: str, ti: tarfile.TarInfo) -> None:
        if self.chown:
            os.chown(path, ti.uid, ti.gid, follow_symlinks=False)
        os.chmod(path, ti.mode & 0o7777, follow_symlinks=False)
        os.utime(path, (ti.mtime, ti.mtime), follow_symlinks=False)

    def finish(self) -> bytes:
        if self.manifest is None:
            raise ImageError("the archive has no manifest")
        if self.kinds.get("rootfs") != _DIR:
            raise ImageError("the archive has no rootfs/ directory")
        for path, ti in sorted(self.dirs, key=lambda d: d[0].count("/"), reverse=True):
            self._attrs(path, ti)
        return self.manifest


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_aci(
    src: BinaryIO,
    dest: Path,
    policy: Policy = Policy(),
    *,
    blob: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AciResult:
    """Check and extract the ACI read from `src` into `dest` (an empty directory nobody else writes).

    The raw bytes are copied to `blob` when given. Raises ImageError on anything refused; `dest` is
    then left half-written for the caller to remove.
    """
    stream = _Stream(src, policy, blob=blob, progress=progress)
    extractor = _Extractor(dest, policy)
    try:
        with tarfile.open(fileobj=stream, mode="r|", bufsize=CHUNK) as tf:  # type: ignore[call-overload]
            for ti in tf:
                extractor.add(tf, ti)
    except tarfile.TarError as e:
        raise ImageError(f"not a valid tar archive: {e}") from None
    except UnicodeError as e:
        raise ImageError(f"undecodable tar header: {e}") from None
    manifest_bytes = extractor.finish()
    stream.drain()
    manifest = parse_manifest(manifest_bytes)
    return AciResult(stream.image_id, manifest, stream.size, stream.raw_size, stream.compression)


# --- progress -----------------------------------------------------------------------------------------


class TtyProgress:
    """A progress counter on stderr for a terminal; use as `progress=` callback. Call `done()` after."""

    def __init__(self, label: str, total: int | None = None) -> None:
        self.label = label
        self.total = total
        self.last = 0.0
        self.shown = False

    def __call__(self, n: int) -> None:
        now = time.monotonic()
        if now - self.last < 0.1:
            return
        self.last = now
        if self.total:
            pct = min(100, n * 100 // self.total)
            bar = "#" * (pct // 4)
            text = f"\r{self.label} [{bar:<25}] {pct:3d}% {n >> 20} MiB"
        else:
            text = f"\r{self.label} {n >> 20} MiB"
        sys.stderr.write(text)
        sys.stderr.flush()
        self.shown = True

    def done(self) -> None:
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()


def tty_progress(label: str, total: int | None = None) -> TtyProgress | None:
    """A TtyProgress when stderr is a terminal, otherwise None (quiet)."""
    return TtyProgress(label, total) if sys.stderr.isatty() else None
