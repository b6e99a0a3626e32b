"""ACI reading: compression by magic, the image ID (sha512 of the uncompressed tar), safe extraction.

An ACI is a tar (plain, gzip, bzip2 or xz) holding exactly `manifest` and `rootfs/...`. Everything is
done in one streaming pass: the decompressed bytes are hashed (the image ID, in a thread of its own)
and counted (size limit, compression-bomb ratio), the tar headers are parsed here (ustar, GNU long
names, pax; nothing else is accepted), file data goes straight to the extracted files, and every
other byte of the tar (headers, padding) to a "skeleton", from which and the tree `write_tar` gives
back the exact tar: the store never keeps a second copy of an image's data.

Extraction is a security boundary. It writes only below a fresh directory and never follows a
symlink: every path component is checked against what this extraction has itself created, and
files are created with O_EXCL|O_NOFOLLOW. Refused: absolute paths, `..`, entries outside `manifest`
and `rootfs/`, duplicate entries, paths through a symlink or non-directory, relative symlinks that
leave `rootfs/`, hardlinks to anything but an earlier regular file in `rootfs/`, device nodes
(unless `allow_devices`), setuid/setgid files (unless `trusted`), archives that expand past
`max_size` or inflate more than `max_ratio` times, more than `max_entries` inodes (the parent
directories an entry implies count too), paths deeper than MAX_DEPTH, and extended headers that other
readers resolve differently (a name or link given twice for one entry, GNU `L`/`K` and pax
`path`/`linkpath`; a global pax header setting a field): this reader is the only one rktd uses on an
image, so the manifest a signature is checked against is the manifest imported (fetch.py).
"""

from __future__ import annotations

import bz2
import enum
import hashlib
import lzma
import os
import queue
import stat
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from rktd_units.errors import ImageError, ManifestError
from rktd_units.model import ImageManifest

CHUNK = 1 << 20
MAX_MANIFEST = 1 << 20
DEFAULT_MAX_SIZE = 16 << 30
DEFAULT_MAX_RATIO = 1000
DEFAULT_MAX_ENTRIES = 1_000_000
PATH_MAX = 4000  # bytes of a path inside the image (the host adds the store's own prefix)
NAME_MAX = 255
# Components of a path inside the image. Real trees stay far below (a Debian root: ~20); a deep tree
# costs every recursive walker (removal, layering, pathWhitelist pruning) a frame per level.
MAX_DEPTH = 256
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
    max_entries: int = DEFAULT_MAX_ENTRIES  # inodes (and memory for the extraction's own records)


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


class _Hasher:
    """sha512 in a thread of its own (hashlib releases the GIL), beside decompression and writing."""

    def __init__(self) -> None:
        self._hash = hashlib.sha512()
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=8)
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while (piece := self._queue.get()) is not None:
            self._hash.update(piece)

    def update(self, piece: bytes) -> None:
        if len(piece) < 1 << 16 and self._thread is None:
            self._hash.update(piece)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="sha512", daemon=True)
            self._thread.start()
        self._queue.put(piece)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.close()
        return self._hash.hexdigest()


class _Stream:
    """The uncompressed tar as a stream of bytes: hashed, counted and limited as it is produced.

    Header bytes are read with `meta()` and also handed to `meta_sink` (the skeleton of an import,
    the output of an export); file data is handed to a caller's sink with `data()` and is not.
    """

    def __init__(
        self,
        src: IO[bytes],
        policy: Policy,
        *,
        meta_sink: Callable[[bytes], object] | None = None,
        progress: Callable[[int], None] | None = None,
        detect: bool = True,
    ) -> None:
        self.src = src
        self.policy = policy
        self.meta_sink = meta_sink
        self.progress = progress
        self.raw_size = 0
        self.size = 0
        self.hash = _Hasher()
        head = self._raw(CHUNK)
        while 0 < len(head) < 6:
            more = self._raw(CHUNK)
            if not more:
                break
            head += more
        self.compression = detect_compression(head) if detect else Compression.NONE
        self._pieces = self._inflate(head)
        self._buf = b""
        self._pos = 0

    def _raw(self, n: int) -> bytes:
        try:
            data = self.src.read(n)
        except OSError as e:
            raise ImageError(f"cannot read the image: {e}") from None
        if data:
            self.raw_size += len(data)
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

    def _fill(self) -> bool:
        """Make the buffer non-empty; False at the end of the stream."""
        while self._pos >= len(self._buf):
            piece = next(self._pieces, b"")
            if not piece:
                return False
            self.size += len(piece)
            self.hash.update(piece)
            self._check_limits()
            self._buf, self._pos = piece, 0
        return True

    def _check_limits(self) -> None:
        p = self.policy
        if self.size > p.max_size:
            raise ImageError(f"image expands past the size limit ({p.max_size} bytes)")
        if self.size > RATIO_FLOOR and self.size > p.max_ratio * max(self.raw_size, 1):
            raise ImageError(f"image inflates more than {p.max_ratio} times (a compression bomb?)")

    def data(self, n: int, sink: Callable[[memoryview], object] | None) -> None:
        """Pass the next `n` bytes to `sink` in pieces (or drop them); ImageError if the stream ends."""
        while n > 0:
            if not self._fill():
                raise ImageError("the archive ends in the middle of an entry")
            k = min(n, len(self._buf) - self._pos)
            if sink is not None:
                sink(memoryview(self._buf)[self._pos : self._pos + k])
            self._pos += k
            n -= k

    def meta(self, n: int) -> bytes:
        """The next `n` bytes (at most n at the end of the stream), copied to the meta sink."""
        parts: list[bytes] = []
        got = 0
        while got < n and self._fill():
            k = min(n - got, len(self._buf) - self._pos)
            parts.append(self._buf[self._pos : self._pos + k])
            self._pos += k
            got += k
        out = b"".join(parts)
        if self.meta_sink is not None and out:
            self.meta_sink(out)
        return out

    def drain(self) -> None:
        """Everything after the end-of-archive blocks: hashed (the ID covers the whole tar), kept as meta."""
        while self._fill():
            self.meta(len(self._buf) - self._pos)

    @property
    def image_id(self) -> str:
        return ID_PREFIX + self.hash.hexdigest()

    def close(self) -> None:
        self.hash.close()


def image_id(src: IO[bytes], policy: Policy = Policy()) -> str:
    """The image ID of an ACI stream, without extracting it."""
    stream = _Stream(src, policy)
    try:
        stream.drain()
        return stream.image_id
    finally:
        stream.close()


# --- tar headers --------------------------------------------------------------------------------------

BLOCK = 512
MAX_EXTENDED = 1 << 20  # pax and GNU long-name headers
_REGULAR = (b"0", b"\0", b"7")
_TYPES = {b"1": "hardlink", b"2": "symlink", b"3": "chr", b"4": "blk", b"5": "dir", b"6": "fifo"}
_PAX_KEYS = ("path", "linkpath", "size", "uid", "gid", "mtime")


@dataclass
class Member:
    """One tar entry, headers (ustar, GNU long names, pax) merged."""

    name: str
    kind: str  # "file", "dir", "symlink", "hardlink", "chr", "blk", "fifo"
    mode: int
    uid: int
    gid: int
    size: int
    mtime: float
    linkname: str
    devmajor: int
    devminor: int


def _num(field: bytes, what: str) -> int:
    if field[:1] and field[0] & 0x80:
        if field[0] == 0xFF:
            raise ImageError(f"negative {what} in a tar header")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ImageError(f"bad {what} {text!r} in a tar header") from None


def _text(field: bytes) -> str:
    return os.fsdecode(field.split(b"\0", 1)[0])


def _pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    while data:
        sp = data.find(b" ")
        try:
            length = int(data[:sp])
        except ValueError:
            raise ImageError("bad pax extended header") from None
        record, data = data[:length], data[length:]
        if sp <= 0 or length <= sp or not record.endswith(b"\n"):
            raise ImageError("bad pax extended header")
        key, eq, value = record[sp + 1 : -1].partition(b"=")
        if not eq:
            raise ImageError("bad pax extended header record")
        k = key.decode("utf-8", "surrogateescape")
        if k.startswith("GNU.sparse."):
            raise ImageError("sparse files are not supported in ACIs")
        if k in out and k in _PAX_KEYS:
            raise ImageError(f"pax extended header gives {k} twice")
        out[k] = value.decode("utf-8", "surrogateescape")
    return out


def _header(block: bytes, ext: dict[str, str]) -> Member:
    try:
        stored = _num(block[148:156], "checksum")
    except ImageError:
        raise ImageError("not a tar archive (bad header checksum field)") from None
    plain = sum(block[:148]) + 256 + sum(block[156:])
    if stored != plain and stored != plain - 256 * sum(1 for b in block[:148] + block[156:] if b > 127):
        raise ImageError("not a tar archive, or a damaged one (bad header checksum)")
    name = _text(block[0:100])
    if block[257:263] == b"ustar\0" and block[345] != 0:
        name = _text(block[345:500]) + "/" + name
    typ = block[156:157]
    if typ in _REGULAR:
        kind = "dir" if name.endswith("/") else "file"
    elif typ in _TYPES:
        kind = _TYPES[typ]
    elif typ == b"S":
        raise ImageError(f"entry {name!r}: sparse files are not supported in ACIs")
    else:
        raise ImageError(f"entry {name!r} has an unsupported type {typ.decode(errors='replace')!r}")
    try:
        mtime = float(ext["mtime"]) if "mtime" in ext else float(_num(block[136:148], "mtime"))
        return Member(
            name=ext.get("path", name),
            kind=kind,
            mode=_num(block[100:108], "mode"),
            uid=int(ext["uid"]) if "uid" in ext else _num(block[108:116], "uid"),
            gid=int(ext["gid"]) if "gid" in ext else _num(block[116:124], "gid"),
            size=int(ext["size"]) if "size" in ext else _num(block[124:136], "size"),
            mtime=mtime,
            linkname=ext.get("linkpath", _text(block[157:257])),
            devmajor=_num(block[329:337], "devmajor"),
            devminor=_num(block[337:345], "devminor"),
        )
    except ValueError:
        raise ImageError(f"entry {name!r}: bad number in a pax header") from None


def _extend(ext: dict[str, str], typ: bytes, data: bytes) -> None:
    """Merge one extended header (pax `x`/`g`, GNU `L`/`K`) into the next entry's `ext`.

    Readers disagree on which of two long names wins (GNU `L` and a pax `path`, two pax headers) and on
    whether a global header's `path` applies: any such archive reads as two different archives, and a
    signature checked over one reading would vouch for the other. So each field may be given once per
    entry, and a global header may not set a field that frames or names entries.
    """
    if typ == b"g":
        found = sorted(k for k in _pax(data) if k in _PAX_KEYS)
        if found:
            raise ImageError(f"a global pax header sets {', '.join(found)} (readers apply it differently)")
        return  # the rest (e.g. git archive's comment) changes nothing we use
    if typ == b"x":
        new = {k: v for k, v in _pax(data).items() if k in _PAX_KEYS}
    else:
        new = {"path" if typ == b"L" else "linkpath": os.fsdecode(data.split(b"\0", 1)[0])}
    twice = sorted(new.keys() & ext.keys())
    if twice:
        raise ImageError(f"an entry's {twice[0]} is given twice in its extended headers (GNU and pax?)")
    ext.update(new)


def members(stream: _Stream) -> Iterator[Member]:
    """The entries of the tar in `stream`. The consumer must take each regular file's `size` data bytes
    (`stream.data`) before asking for the next entry (in a skeleton, there are none to take).
    """
    ext: dict[str, str] = {}
    while True:
        block = stream.meta(BLOCK)
        if len(block) < BLOCK:
            if block or stream.size == 0:
                raise ImageError(
                    "the archive ends in the middle of a tar header" if block else "empty archive"
                )
            raise ImageError("the archive has no end-of-archive marker (truncated?)")
        if block == bytes(BLOCK):
            stream.drain()
            return
        typ = block[156:157]
        if typ in (b"x", b"g", b"L", b"K"):
            size = _num(block[124:136], "size")
            if size > MAX_EXTENDED:
                raise ImageError(f"extended tar header of {size} bytes")
            data = stream.meta(size + (-size) % BLOCK)[:size]
            if len(data) < size:
                raise ImageError("the archive ends in the middle of an extended header")
            _extend(ext, typ, data)
            continue
        member = _header(block, ext)
        ext = {}
        yield member
        if member.kind == "file":
            pad = (-member.size) % BLOCK
            if len(stream.meta(pad)) < pad:
                raise ImageError("the archive ends in the middle of an entry")


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

    def __init__(self, root: Path, policy: Policy, stream: _Stream) -> None:
        self.root = os.fspath(root)
        self.policy = policy
        self.stream = stream
        self.kinds: dict[str, str] = {}
        self.explicit: set[str] = set()
        self.dirs: list[tuple[str, Member]] = []
        self.budget = policy.max_size
        self.chown = os.geteuid() == 0
        self.owner = (os.geteuid(), os.getegid())
        self.manifest: ImageManifest | None = None

    def _path(self, rel: str) -> str:
        return self.root + "/" + rel

    def add(self, m: Member) -> None:
        parts = _split(m.name)
        if not parts:
            if m.kind == "dir":
                return  # the archive's own root, "./"
            raise ImageError(f"entry with an empty name ({m.name!r})")
        rel = "/".join(parts)
        if len(os.fsencode(rel)) > PATH_MAX or any(len(os.fsencode(p)) > NAME_MAX for p in parts):
            raise ImageError(
                f"entry {rel[:80]!r}...: path longer than {PATH_MAX} or a name longer than {NAME_MAX}"
            )
        if len(parts) > MAX_DEPTH:
            raise ImageError(f"entry {rel[:80]!r}...: deeper than {MAX_DEPTH} directories")
        self._check_entry(m, parts, rel)
        self._make_parents(parts)
        if rel in self.explicit:
            raise ImageError(f"duplicate entry {rel!r}")
        if rel in self.kinds and m.kind != "dir":
            raise ImageError(f"duplicate entry {rel!r} (an earlier entry made it a directory)")
        if rel not in self.kinds:
            self._count()
        self.explicit.add(rel)
        self._create(m, parts, rel)

    def _count(self) -> None:
        """Before a new path: the limit counts entries and the parent directories they imply."""
        if len(self.kinds) >= self.policy.max_entries:
            raise ImageError(
                f"the archive has more than {self.policy.max_entries} entries "
                "(counting the directories they imply)"
            )

    def _check_entry(self, m: Member, parts: list[str], rel: str) -> None:
        if parts[0] not in ("manifest", "rootfs") or (parts[0] == "manifest" and len(parts) > 1):
            raise ImageError(f"entry {rel!r} is outside manifest and rootfs/")
        if parts == ["manifest"] and m.kind != "file":
            raise ImageError("manifest is not a regular file")
        if parts == ["rootfs"] and m.kind != "dir":
            raise ImageError("rootfs is not a directory")
        if m.kind in ("chr", "blk") and not self.policy.allow_devices:
            raise ImageError(f"device node {rel!r} refused (devices are not allowed)")
        if m.kind in ("file", "fifo", "chr", "blk") and m.mode & (stat.S_ISUID | stat.S_ISGID):
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
            self._count()
            os.mkdir(self._path(prefix), 0o700)
            os.chmod(self._path(prefix), 0o755)
            self.kinds[prefix] = _DIR

    def _create(self, m: Member, parts: list[str], rel: str) -> None:
        path = self._path(rel)
        if m.kind == "dir":
            if rel not in self.kinds:
                os.mkdir(path, 0o700)
                self.kinds[rel] = _DIR
            self.dirs.append((path, m))
        elif m.kind == "file":
            self._file(m, parts, path)
            self.kinds[rel] = _FILE
        elif m.kind == "symlink":
            self._symlink(m, parts, path)
            self.kinds[rel] = _LINK
        elif m.kind == "hardlink":
            self._hardlink(m, rel, path)
            self.kinds[rel] = _FILE
        else:
            if m.kind == "fifo":
                os.mkfifo(path, 0o600)
            else:
                kind = stat.S_IFCHR if m.kind == "chr" else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            self._attrs(path, m)
            self.kinds[rel] = _OTHER

    def _file(self, m: Member, parts: list[str], path: str) -> None:
        self.budget -= m.size
        if self.budget < 0:
            raise ImageError(f"image expands past the size limit ({self.policy.max_size} bytes)")
        is_manifest = parts == ["manifest"]
        if is_manifest and m.size > MAX_MANIFEST:
            raise ImageError(f"manifest is larger than {MAX_MANIFEST} bytes")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            kept: list[bytes] = []

            def sink(view: memoryview) -> None:
                _write_all(fd, view)
                if is_manifest:
                    kept.append(bytes(view))

            self.stream.data(m.size, sink)
            if is_manifest:
                self.manifest = parse_manifest(b"".join(kept))
            if self.chown and (m.uid, m.gid) != self.owner:  # a new file is already the creator's
                os.fchown(fd, m.uid, m.gid)
            os.fchmod(fd, m.mode & 0o7777)
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)

    def _symlink(self, m: Member, parts: list[str], path: str) -> None:
        target = m.linkname
        if not target or "\0" in target:
            raise ImageError(f"symlink {'/'.join(parts)!r} has an empty or NUL-containing target")
        if not target.startswith("/") and _symlink_escapes(parts, target):
            raise ImageError(f"symlink {'/'.join(parts)!r} -> {target!r} escapes rootfs/")
        os.symlink(target, path)
        if self.chown:
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def _hardlink(self, m: Member, rel: str, path: str) -> None:
        target = "/".join(_split(m.linkname, "hardlink target"))
        if (
            not target.startswith("rootfs/")
            or self.kinds.get(target) != _FILE
            or target not in self.explicit
            or not rel.startswith("rootfs/")
        ):
            raise ImageError(f"hardlink {rel!r} -> {m.linkname!r}: not an earlier regular file in rootfs/")
        os.link(self._path(target), path, follow_symlinks=False)

    def _attrs(self, path: str, m: Member) -> None:
        if self.chown:
            os.chown(path, m.uid, m.gid, follow_symlinks=False)
        os.chmod(path, m.mode & 0o7777, follow_symlinks=False)
        os.utime(path, (m.mtime, m.mtime), follow_symlinks=False)

    def finish(self) -> ImageManifest:
        if self.manifest is None:
            raise ImageError("the archive has no manifest")
        if self.kinds.get("rootfs") != _DIR:
            raise ImageError("the archive has no rootfs/ directory")
        for path, m in sorted(self.dirs, key=lambda d: d[0].count("/"), reverse=True):
            self._attrs(path, m)
        return self.manifest


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_aci(
    src: IO[bytes],
    dest: Path,
    policy: Policy = Policy(),
    *,
    skeleton: IO[bytes] | None = None,
    progress: Callable[[int], None] | None = None,
) -> AciResult:
    """Check and extract the ACI read from `src` into `dest` (an empty directory nobody else writes).

    `skeleton` receives the uncompressed tar minus the regular files' data: with the extracted tree
    it gives back the exact tar (`write_tar`). Raises ImageError on anything refused; `dest` is then
    left half-written for the caller to remove.
    """
    stream = _Stream(src, policy, meta_sink=skeleton.write if skeleton else None, progress=progress)
    try:
        extractor = _Extractor(dest, policy, stream)
        for member in members(stream):
            extractor.add(member)
        manifest = extractor.finish()
        return AciResult(stream.image_id, manifest, stream.size, stream.raw_size, stream.compression)
    finally:
        stream.close()


def read_manifest(src: IO[bytes], policy: Policy = Policy()) -> ImageManifest:
    """The manifest of the ACI read from `src`, read by the same tar reader as `read_aci`, without
    extracting anything. A caller that checks it (a trust prefix) must still compare it with the
    manifest `read_aci` returns: only that one is imported.
    """
    stream = _Stream(src, policy)
    try:
        for m in members(stream):
            if _split(m.name) == ["manifest"] and m.kind == "file":
                if m.size > MAX_MANIFEST:
                    raise ImageError(f"manifest is larger than {MAX_MANIFEST} bytes")
                data = bytearray()
                stream.data(m.size, data.extend)
                return parse_manifest(bytes(data))
            if m.kind == "file":
                stream.data(m.size, None)
    finally:
        stream.close()
    raise ImageError("the archive has no manifest")


def write_tar(skeleton: IO[bytes], tree: Path, out: IO[bytes], image_id: str) -> None:
    """Reassemble an image's uncompressed tar from its skeleton and tree, checking it hashes to its ID."""
    digest = hashlib.sha512()

    def emit(data: bytes | memoryview) -> None:
        digest.update(data)
        out.write(data)

    policy = Policy(trusted=True, allow_devices=True, max_size=1 << 62)
    stream = _Stream(skeleton, policy, meta_sink=emit, detect=False)
    try:
        _reassemble(stream, tree, emit)
    finally:
        stream.close()
    if ID_PREFIX + digest.hexdigest() != image_id:
        raise ImageError(f"{tree}: the stored image no longer matches its ID {image_id[:39]}")


def _reassemble(stream: _Stream, tree: Path, emit: Callable[[bytes], object]) -> None:
    for m in members(stream):
        if m.kind != "file":
            continue
        damaged = f"{tree}: the stored image no longer matches its ID"
        fd = os.open(os.path.join(tree, *_split(m.name)), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd, "rb", buffering=0) as f:
            if os.fstat(f.fileno()).st_size != m.size:
                raise ImageError(f"{damaged} ({m.name} changed size)")
            left = m.size
            while left > 0:
                data = f.read(min(left, CHUNK))
                if not data:
                    raise ImageError(f"{damaged} ({m.name} changed size)")
                emit(data)
                left -= len(data)


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
