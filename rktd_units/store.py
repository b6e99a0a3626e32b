"""The image store: content-addressed (sha512 image IDs), written atomically, safe under concurrency.

Layout under `root` (the `--dir`, default /var/lib/rktd):

    cas/lock                      flock: commits, removals and the clean-up of stale staging dirs
    cas/tmp/<random>/             staging: one import (flock held on the directory while it runs)
    cas/images/sha512-<hex>/      one image, complete or absent:
        manifest, rootfs/         the extracted tree, shared read-only by every pod of the image
        skeleton                  the uncompressed tar minus the files' data: with the tree, it gives
                                  back the exact tar (`image export`, checked against the ID)
        info.json                 import time, source, policy (`trusted`: a trusted key's signature
                                  was verified; plain names prefer such images), sizes
        last-used                 its mtime is when a pod last held the image
    cas/rendered/<key>/           an image with a pathWhitelist, rendered over its dependencies once
                                  (key: sha256 of the layer IDs) and shared by its pods; `layers`
                                  lists those IDs and commits it; gc removes it with any of them

An import streams the ACI into a staging directory (hash, checks, extraction, skeleton), syncs the
filesystem, and renames the whole directory to `images/<id>` under the store lock: that rename is
the only commit point, so an import killed at any moment leaves nothing visible, and of two
concurrent imports of one image exactly one directory survives. Staging directories whose flock is
free belong to dead importers and are removed by the next import or `gc()`.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path

from rktd_units.errors import ImageError, RktdError, StoreError
from rktd_units.frozen import frozen
from rktd_units.fsutil import rmtree as _rmtree
from rktd_units.model import Dependency, ImageManifest, NameValue

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    import logging
    from typing import BinaryIO

    from rktd_units.aci import AciResult, Policy

# logging, shutil and tempfile are imported where they are used: `rktd run` reads the store on every
# pod start and writes nothing to it (STYLE.md 13).


def _log() -> logging.Logger:
    import logging

    return logging.getLogger("rktd")


ID_RE = re.compile(r"^sha512-[0-9a-f]{128}$")
_PREFIX_RE = re.compile(r"^(sha512-)?([0-9a-f]{1,128})$")
CHUNK = 1 << 20
INFO = "info.json"
SKELETON = "skeleton"
LAST_USED = "last-used"
LAYERS = "layers"  # in cas/rendered/<key>/: the layer IDs a rendering was made of, bottom first


class MissingDependency(ImageError):
    """An image's dependency is not in the store: `dependency` says which (stage0 may fetch it)."""

    def __init__(self, dependency: Dependency, of: str) -> None:
        labels = sorted((lab.name, lab.value) for lab in dependency.labels)
        self.wanted = ",".join([dependency.image_name, *(f"{k}={v}" for k, v in labels)])
        super().__init__(
            f"dependency {self.wanted} of {of} is not in the store", hint=f"rktd fetch {self.wanted}"
        )
        self.dependency = dependency
        self.of = of


@frozen
class ImageInfo:
    """One stored image: its manifest and what info.json says of it."""

    id: str
    name: str
    labels: tuple[NameValue, ...]
    size: int  # bytes of the uncompressed ACI tar
    import_time: float  # seconds since the epoch
    manifest: ImageManifest
    source: str | None = None
    path: Path | None = None  # the image's directory in the store
    raw_size: int = 0  # bytes of the ACI as imported (compressed)
    compression: str = "none"
    trusted: bool = False
    allow_devices: bool = False
    last_used: float | None = None

    def label(self, name: str) -> str | None:
        return self.manifest.label(name)

    @property
    def short_id(self) -> str:
        return self.id[: len("sha512-") + 32]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _syncfs(fd: int) -> None:
    """Flush the filesystem holding `fd` (one call instead of an fsync per extracted file)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syncfs(fd) != 0:
        os.sync()


class Store:
    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        self.cas = self.root / "cas"
        self.images_dir = self.cas / "images"
        self.tmp_dir = self.cas / "tmp"
        self.lock_path = self.cas / "lock"
        self.rendered_dir = self.cas / "rendered"

    # --- locking and staging ------------------------------------------------------------------------

    def _ensure(self) -> None:
        try:
            for d in (self.root, self.cas, self.images_dir, self.tmp_dir):
                if not d.is_dir():
                    d.mkdir(mode=0o700 if d != self.root else 0o755, parents=True, exist_ok=True)
            if not self.lock_path.exists():
                self.lock_path.touch(mode=0o600)
        except OSError as e:
            raise StoreError(f"cannot create the image store in {self.root}: {e.strerror}") from None

    @contextlib.contextmanager
    def _lock(self, shared: bool = False) -> Iterator[None]:
        self._ensure()
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def _staging(self) -> Iterator[Path]:
        """A fresh private directory in cas/tmp, flocked while it is used, removed unless renamed away."""
        import tempfile

        with self._lock(shared=True):
            path = Path(tempfile.mkdtemp(prefix="import-", dir=self.tmp_dir))
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield path
        finally:
            try:
                if path.exists():
                    _rmtree(path)
            finally:
                os.close(fd)

    def _clean_stale(self) -> list[str]:
        """Remove staging directories of importers that died (their flock is free)."""
        if not self.tmp_dir.is_dir():
            return []
        taken: list[tuple[str, int]] = []
        with self._lock():
            for name in sorted(os.listdir(self.tmp_dir)):
                path = self.tmp_dir / name
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
                except OSError:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    os.close(fd)
                    continue
                taken.append((name, fd))
        removed = []
        for name, fd in taken:
            try:
                _rmtree(self.tmp_dir / name)
                removed.append(name)
            except OSError as e:  # the next clean-up tries again; an import must not fail for it
                _log().warning("cannot remove %s: %s", self.tmp_dir / name, e)
            finally:
                os.close(fd)
        return removed

    # --- import -------------------------------------------------------------------------------------

    def import_aci(
        self,
        src: Path | str | BinaryIO,
        *,
        trusted: bool = False,
        allow_devices: bool = False,
        max_size: int | None = None,
        progress: Callable[[int], None] | None = None,
        source: str | None = None,
        check: Callable[[ImageManifest], object] | None = None,
    ) -> ImageInfo:
        """Check, extract and store an ACI; return the stored image (an existing one if already there).

        `check` is called with the manifest exactly as extracted, before anything is committed: the
        trust decision (signer's prefix, discovery's name and labels) is made on the image that will be
        stored, and an exception from it refuses the import. Raises ImageError for a refused image,
        leaving the store as it was.
        """
        from rktd_units import aci

        policy = aci.Policy(trusted=trusted, allow_devices=allow_devices)
        if max_size is not None:
            policy = aci.Policy(trusted, allow_devices, max_size=max_size)
        self._ensure()
        self._clean_stale()
        with self._staging() as stage:
            if isinstance(src, (str, os.PathLike)):
                try:
                    f: BinaryIO = open(src, "rb")
                except OSError as e:
                    raise ImageError(f"{src}: cannot read: {e.strerror}") from None
                with f:
                    result = self._extract_into(stage, f, policy, progress)
                source = source or os.path.abspath(src)
            else:
                result = self._extract_into(stage, src, policy, progress)
            if check is not None:
                check(result.manifest)
            info = {
                "id": result.image_id,
                "name": result.manifest.name,  # for find(), which reads no manifest of another name
                "importTime": time.time(),
                "source": source,
                "size": result.size,
                "rawSize": result.raw_size,
                "compression": str(result.compression),
                "trusted": trusted,
                "allowDevices": allow_devices,
            }
            (stage / INFO).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
            (stage / LAST_USED).touch()
            os.chmod(stage, 0o700)
            return self._commit(stage, result.image_id)

    def _extract_into(
        self, stage: Path, f: BinaryIO, policy: Policy, progress: Callable[[int], None] | None
    ) -> AciResult:
        from rktd_units import aci

        try:
            fd = os.open(stage / SKELETON, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            with open(fd, "wb", buffering=CHUNK) as skeleton:
                return aci.read_aci(f, stage, policy, skeleton=skeleton, progress=progress)
        except OSError as e:
            raise StoreError(f"cannot extract the image into {stage}: {e}") from None

    def _commit(self, stage: Path, image_id: str) -> ImageInfo:
        fd = os.open(stage, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _syncfs(fd)
        finally:
            os.close(fd)
        dest = self.images_dir / image_id
        with self._lock():
            if dest.exists():
                _log().debug("image %s is already in the store", image_id)
                self._adopt_verification(stage, dest)
            else:
                try:
                    os.rename(stage, dest)
                except OSError as e:
                    if e.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise StoreError(f"cannot store {image_id}: {e.strerror}") from None
                _fsync_dir(self.images_dir)
        return self._load(image_id)

    def _adopt_verification(self, stage: Path, dest: Path) -> None:
        """Under the store lock, for an image already stored: record this import's verified signature
        if the stored copy had none. The trees are the same (same ID, and an unverified import
        refuses the setuid files a verified one may keep), so only info.json changes.
        """
        try:
            new = json.loads((stage / INFO).read_text())
            old = json.loads((dest / INFO).read_text())
        except (OSError, ValueError):
            return
        if not new.get("trusted") or old.get("trusted"):
            return
        old.update(trusted=True, source=new.get("source"))
        tmp = dest / f".{INFO}.new"
        tmp.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
        os.rename(tmp, dest / INFO)
        _fsync_dir(dest)

    # --- reading ------------------------------------------------------------------------------------

    def _load(self, image_id: str) -> ImageInfo:
        # Not through rktd_units.aci: stage0 resolves images on every pod start, keep its imports lean.
        from rktd_units.formats.appc import load_image_manifest

        d = self.images_dir / image_id
        try:
            meta = json.loads((d / INFO).read_text())
            manifest = load_image_manifest((d / "manifest").read_bytes(), str(d / "manifest"))
            last_used: float | None = (d / LAST_USED).stat().st_mtime
        except FileNotFoundError:
            raise ImageError(f"no image {image_id} in the store") from None
        except (OSError, ValueError, RktdError) as e:
            raise StoreError(f"image {image_id} in {self.images_dir} is damaged: {e}") from None
        return ImageInfo(
            id=image_id,
            name=manifest.name,
            labels=manifest.labels,
            size=int(meta["size"]),
            import_time=float(meta["importTime"]),
            manifest=manifest,
            source=meta.get("source"),
            path=d,
            raw_size=int(meta.get("rawSize", 0)),
            compression=str(meta.get("compression", "none")),
            trusted=bool(meta.get("trusted", False)),
            allow_devices=bool(meta.get("allowDevices", False)),
            last_used=last_used,
        )

    def _ids(self) -> list[str]:
        try:
            names = os.listdir(self.images_dir)
        except FileNotFoundError:
            return []
        except OSError as e:
            raise StoreError(f"cannot read the image store {self.images_dir}: {e.strerror}") from None
        return sorted(n for n in names if ID_RE.match(n))

    def resolve(self, id_or_prefix: str) -> str:
        """The full ID of the one stored image whose ID starts with `id_or_prefix`."""
        m = _PREFIX_RE.match(id_or_prefix.strip().lower())
        if not m:
            raise ImageError(f"{id_or_prefix!r} is not an image ID (sha512-HEX, or a prefix of one)")
        prefix = "sha512-" + m.group(2)
        found = [i for i in self._ids() if i.startswith(prefix)]
        if not found:
            raise ImageError(f"no image {id_or_prefix} in the store", hint="see: rktd image list")
        if len(found) > 1:
            raise ImageError(f"image ID {id_or_prefix} is ambiguous ({len(found)} images match)")
        return found[0]

    def get(self, id_or_prefix: str) -> ImageInfo:
        return self._load(self.resolve(id_or_prefix))

    def list(self) -> list[ImageInfo]:
        out = []
        for image_id in self._ids():
            try:
                out.append(self._load(image_id))
            except ImageError:
                continue  # removed meanwhile
        return sorted(out, key=lambda i: (i.import_time, i.id))

    def find(
        self, name: str, labels: Mapping[str, str] = {}, *, with_docker: bool = False
    ) -> ImageInfo | None:
        """The image whose name is `name` and whose labels include all of `labels`: of several, a verified
        one (a trusted key signed it) before any unverified one, so that an image fetched with
        --insecure-options=image never shadows a signed one of the same name; then the newest.
        Images converted from docker:// references (unsigned, named by whoever runs the registry) never
        answer an appc name; only a docker reference (`with_docker=True`) may use them.
        """
        best: ImageInfo | None = None
        for image_id in self._ids():
            if not self._may_be_named(image_id, name):
                continue
            try:
                info = self._load(image_id)
            except ImageError:
                continue  # removed meanwhile
            if info.name != name or (is_docker(info) and not with_docker):
                continue
            if any(info.label(k) != v for k, v in labels.items()):
                continue
            if best is None or (info.trusted, info.import_time, info.id) > (
                best.trusted,
                best.import_time,
                best.id,
            ):
                best = info
        return best

    def _may_be_named(self, image_id: str, name: str) -> bool:
        """False if the image's info.json names another image: `find` runs on every pod start, and
        info.json is a few bytes where the manifest is parsed whole (images stored before info.json
        recorded the name are read whole)."""
        try:
            with open(self.images_dir / image_id / INFO, "rb") as f:
                recorded = json.loads(f.read()).get("name", name)
        except (OSError, ValueError, AttributeError):
            return True  # _load says what is wrong
        return bool(recorded == name)

    def find_verified(
        self, name: str, labels: Mapping[str, str] = {}, *, insecure: Collection[str] = ()
    ) -> ImageInfo | None:
        """`find` for running an appc name: an unverified match is used, but with a warning on stderr
        (the journal, under a unit) unless the caller skips verification (`--insecure-options=image`)."""
        found = self.find(name, labels)
        if found is not None and not found.trusted and "image" not in insecure:
            import sys

            print(
                f"rktd: warning: image {name} ({found.short_id}, from {found.source or 'an import'}) "
                "was stored without a verified signature; pass --insecure-options=image to run it "
                f"knowingly, or fetch a signed copy: rktd fetch --pull-policy=update {name}",
                file=sys.stderr,
                flush=True,
            )
        return found

    def image_dir(self, image_id: str) -> Path:
        return self.images_dir / self.resolve(image_id)

    def rootfs(self, image_id: str) -> Path:
        """The image's extracted rootfs: shared by every pod of the image, never to be written."""
        return self.image_dir(image_id) / "rootfs"

    def rootfs_of(self, info: ImageInfo) -> Path:
        """`rootfs()` of an image already loaded (no lookup of its ID in the store again)."""
        return (info.path or self.image_dir(info.id)) / "rootfs"

    def layers(self, image: str | ImageInfo) -> builtins.list[ImageInfo]:
        """The image (an ID, or its info already loaded) and its appc dependencies, bottom first (a
        dependency's own dependencies before it): the rootfs dirs to stack (overlayfs `lowerdir`, top
        first there) or to render in this order. ImageError if a dependency is not in the store or the
        dependencies form a cycle.
        """
        out: builtins.list[ImageInfo] = []
        self._add_layers(image if isinstance(image, ImageInfo) else self.get(image), out, ())
        return out

    def _add_layers(self, info: ImageInfo, out: builtins.list[ImageInfo], path: tuple[str, ...]) -> None:
        if info.id in path:
            raise ImageError(f"image {info.name} depends on itself (through {len(path)} images)")
        for dep in info.manifest.dependencies:
            self._add_layers(self._dependency(info, dep), out, (*path, info.id))
        if all(o.id != info.id for o in out):
            out.append(info)

    def _dependency(self, info: ImageInfo, dep: Dependency) -> ImageInfo:
        labels = {lab.name: lab.value for lab in dep.labels}
        found: ImageInfo | None = None
        if dep.image_id:
            with contextlib.suppress(ImageError):  # not in the store: MissingDependency below
                found = self.get(dep.image_id)
            if found is not None and found.name != dep.image_name:
                raise ImageError(
                    f"dependency {dep.image_id[:39]} of {info.name} is {found.name}, not {dep.image_name}"
                )
        else:
            found = self.find(dep.image_name, labels)
        if found is None:
            raise MissingDependency(dep, info.name)
        return found

    def rendered(self, layers: builtins.list[ImageInfo]) -> Path:
        """The rootfs of `layers` (bottom first, as `layers()` gives them) laid down into one tree
        with the top image's pathWhitelist applied: rendered once into `cas/rendered/<key>`, keyed by
        the layer IDs, and shared read-only by every pod of that set like an image's own rootfs."""
        import hashlib

        key = hashlib.sha256("\n".join(layer.id for layer in layers).encode()).hexdigest()
        dest = self.rendered_dir / key
        if not (dest / LAYERS).is_file():
            with self._lock():  # one renderer; gc (which removes stale renderings) waits
                if not (dest / LAYERS).is_file():
                    self.rendered_dir.mkdir(mode=0o700, exist_ok=True)
                    self.render(layers[-1].id, dest, overwrite=True)
                    write = dest / f".{LAYERS}.tmp"
                    write.write_text("".join(f"{layer.id}\n" for layer in layers))
                    os.rename(write, dest / LAYERS)  # the commit point: a rendering without it is stale
        return dest / "rootfs"

    def _clean_rendered(self) -> None:
        """Under the store lock: remove renderings any of whose layers is gone (or never finished)."""
        try:
            keys = sorted(os.listdir(self.rendered_dir))
        except FileNotFoundError:
            return
        present = set(self._ids())
        for key in keys:
            try:
                ids = (self.rendered_dir / key / LAYERS).read_text().split()
            except OSError:
                ids = []
            if not ids or not set(ids) <= present:
                _rmtree(self.rendered_dir / key)

    # --- use, removal, gc ---------------------------------------------------------------------------

    def hold(self, image_id: str) -> int:
        """Mark the image in use: returns a file descriptor holding a shared flock (os.set_inheritable
        it to keep it across exec into stage1). `remove()` and `gc()` refuse held images. Close to release.
        """
        d = self.image_dir(image_id)
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            if os.fstat(fd).st_ino != os.stat(d).st_ino:
                raise FileNotFoundError(d)
            os.utime(d / LAST_USED)
        except FileNotFoundError:
            os.close(fd)
            raise ImageError(f"image {image_id} was removed") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def remove(self, image_id: str) -> None:
        """Remove an image; StoreError if a pod holds it."""
        full = self.resolve(image_id)
        with self._lock():
            fd, moved = self._take(full)
        try:
            _rmtree(moved)
        except OSError as e:  # already invisible: the next import or gc removes what is left
            _log().warning("image %s removed, but not all of %s: %s", full, moved, e)
        finally:
            os.close(fd)

    def _take(self, full: str) -> tuple[int, Path]:
        """Under the store lock: flock the image exclusively and move it into tmp (invisible at once)."""
        d = self.images_dir / full
        try:
            fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ImageError(f"no image {full} in the store") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise StoreError(f"image {full} is in use by a pod") from None
        import tempfile

        moved = Path(tempfile.mkdtemp(prefix="removed-", dir=self.tmp_dir))
        os.rename(d, moved)
        _fsync_dir(self.images_dir)
        return fd, moved

    def gc(self, *, keep: Collection[str] = (), grace_period: float | None = None) -> builtins.list[str]:
        """Remove dead importers' staging dirs and, when `grace_period` is given, every image not in
        `keep`, not held, and not used (imported or held) for `grace_period` seconds. Returns removed IDs.
        """
        self._clean_stale()
        if grace_period is None:
            return []
        removed = []
        now = time.time()
        for info in self.list():
            used = max(info.import_time, info.last_used or 0.0)
            if info.id in keep or now - used < grace_period:
                continue
            try:
                self.remove(info.id)
            except (StoreError, ImageError) as e:
                _log().info("gc: keeping %s: %s", info.id, e)
                continue
            removed.append(info.id)
        with self._lock():
            self._clean_rendered()
        return removed

    # --- export and extraction ----------------------------------------------------------------------

    def write_tar(self, image_id: str, out: BinaryIO) -> None:
        """Write the image's uncompressed ACI (whose sha512 is its ID) to `out`; ImageError if the
        stored tree no longer hashes to the ID.
        """
        from rktd_units import aci

        d = self.image_dir(image_id)
        with open(d / SKELETON, "rb") as skeleton:
            aci.write_tar(skeleton, d, out, d.name)

    def export(self, image_id: str, out: Path, *, overwrite: bool = False) -> None:
        """Write the image as an uncompressed ACI to `out` (atomically; same bytes, same ID)."""
        import tempfile

        _check_target(out, overwrite)
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as dst:
                self.write_tar(image_id, dst)
                dst.flush()
                os.fsync(dst.fileno())
            os.chmod(tmp, 0o644)
            os.rename(tmp, out)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def extract(
        self, image_id: str, dest: Path, *, rootfs_only: bool = False, overwrite: bool = False
    ) -> None:
        """Extract the image (manifest and rootfs/, or the rootfs' content) into a new directory `dest`:
        its tar, reassembled and checked against the ID, goes through the import's checks again.
        """
        import tempfile
        import threading

        from rktd_units import aci

        info = self.get(image_id)
        _check_target(dest, overwrite)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        rfd, wfd = os.pipe()
        errors: builtins.list[BaseException] = []

        def produce() -> None:
            try:
                with open(wfd, "wb", buffering=CHUNK) as w:
                    self.write_tar(info.id, w)
            except BaseException as e:  # reported below, after the reader has finished
                errors.append(e)

        writer = threading.Thread(target=produce, daemon=True)
        writer.start()
        try:
            with open(rfd, "rb", buffering=0) as r:
                policy = aci.Policy(trusted=info.trusted, allow_devices=info.allow_devices)
                try:
                    aci.read_aci(r, stage, policy)
                except ImageError as e:
                    read_error: ImageError | None = e
                else:
                    read_error = None
                finally:
                    r.close()
                    writer.join()
            # The writer's error explains the reader's (a stream cut short), unless the reader stopped first.
            if errors and not isinstance(errors[0], BrokenPipeError):
                raise errors[0]
            if read_error is not None:
                raise read_error
            if dest.exists() or dest.is_symlink():
                _rmtree(dest) if dest.is_dir() and not dest.is_symlink() else dest.unlink()
            os.rename(stage / "rootfs" if rootfs_only else stage, dest)
        finally:
            if stage.exists():
                _rmtree(stage)

    def render(
        self, image_id: str, dest: Path, *, rootfs_only: bool = False, overwrite: bool = False
    ) -> None:
        """Like `extract`, with the image's dependencies laid down first and its pathWhitelist applied."""
        import shutil
        import tempfile

        layers = self.layers(image_id)
        top = layers[-1]
        if len(layers) == 1 and not top.manifest.path_whitelist:
            self.extract(image_id, dest, rootfs_only=rootfs_only, overwrite=overwrite)
            return
        _check_target(dest, overwrite)
        stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
        try:
            root = stage / "rootfs"
            root.mkdir()
            links: dict[tuple[int, int], str] = {}
            for layer in layers:
                src = self.images_dir / layer.id / "rootfs"
                _overlay_copy(str(src), str(root), links)
                _copy_attrs(str(root), os.lstat(src))
            if top.manifest.path_whitelist:
                _prune(str(root), "", frozenset(top.manifest.path_whitelist))
            shutil.copyfile(self.images_dir / top.id / "manifest", stage / "manifest")
            os.chmod(stage, 0o755)
            if dest.exists() or dest.is_symlink():
                _rmtree(dest) if dest.is_dir() and not dest.is_symlink() else dest.unlink()
            os.rename(root if rootfs_only else stage, dest)
        finally:
            if stage.exists():
                _rmtree(stage)


def is_docker(info: ImageInfo) -> bool:
    """Whether the image was converted from a docker:// reference (those carry no signature)."""
    return (info.source or "").startswith("docker://")


def _check_target(path: Path, overwrite: bool) -> None:
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ImageError(f"{path} exists", hint="pass --overwrite to replace it")
    if not path.parent.is_dir():
        raise ImageError(f"{path.parent} is not a directory")


# --- rendering layers ----------------------------------------------------------------------------------


def _copy_attrs(path: str, st: os.stat_result) -> None:
    if os.geteuid() == 0:
        os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(path, stat.S_IMODE(st.st_mode))
    os.utime(path, ns=(st.st_mtime_ns, st.st_mtime_ns), follow_symlinks=False)


def _remove(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        _rmtree(path)
    else:
        os.unlink(path)


def _overlay_copy(src: str, dst: str, links: dict[tuple[int, int], str]) -> None:
    """Copy the tree `src` over `dst` (a tree only this process writes): upper entries replace lower
    ones, directories merge. Never follows a symlink: one in the way of a directory is replaced.
    Hardlinks within a layer stay hardlinks.
    """
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        d = os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        try:
            old: os.stat_result | None = os.lstat(d)
        except FileNotFoundError:
            old = None
        if stat.S_ISDIR(st.st_mode):
            if old is not None and not stat.S_ISDIR(old.st_mode):
                _remove(d, old)
                old = None
            if old is None:
                os.mkdir(d, 0o700)
            _overlay_copy(entry.path, d, links)
        else:
            if old is not None:
                _remove(d, old)
            _copy_entry(entry.path, d, st, links)
        _copy_attrs(d, st)


def _copy_entry(src: str, d: str, st: os.stat_result, links: dict[tuple[int, int], str]) -> None:
    key = (st.st_dev, st.st_ino)
    if stat.S_ISREG(st.st_mode):
        if st.st_nlink > 1 and key in links and os.path.lexists(links[key]):
            os.link(links[key], d, follow_symlinks=False)
            return
        sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            dfd = os.open(d, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                while os.sendfile(dfd, sfd, None, CHUNK * 8) > 0:
                    pass
            finally:
                os.close(dfd)
        finally:
            os.close(sfd)
        links[key] = d
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), d)
    elif stat.S_ISFIFO(st.st_mode):
        os.mkfifo(d, 0o600)
    else:
        os.mknod(d, st.st_mode, st.st_rdev)


def _prune(root: str, rel: str, whitelist: frozenset[str]) -> bool:
    """Remove what the appc pathWhitelist does not name; keep a whitelisted directory's content and the
    directories leading to whitelisted paths. Returns whether anything below `rel` was kept."""
    kept = False
    for entry in sorted(os.scandir(root + rel), key=lambda e: e.name):  # rel is "" or "/a/b"
        path = f"{rel}/{entry.name}"
        if path in whitelist:
            kept = True
        elif entry.is_dir(follow_symlinks=False) and _prune(root, path, whitelist):
            kept = True
        else:
            _remove(entry.path, entry.stat(follow_symlinks=False))
    return kept
