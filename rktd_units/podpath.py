"""Where pod manifests live: the search path, overrides, masks and StrictModes checks.

The directories are searched in order and the first one holding `NAME.<suffix>` wins, as for
systemd unit directories. An empty file or a symlink to /dev/null masks lower ones. Two formats
of one name in one directory are ambiguous: an error for that name (and lower directories are
not consulted for it, so a mistake never silently lets an older manifest through).

StrictModes (as sshd's), on the path as the kernel resolves it: the manifest, every directory on the
way to it and every symbolic link followed (a manifest may be a link to a file elsewhere) must be
owned by root (or, when not running as root, by root or us); the manifest and its own directory must
not be writable by group or others, and a directory further up only if it is sticky (as /tmp, where
others cannot rename what is not theirs). Whoever could change any of them could run anything as
root. A refused file is an error for its name: lower directories are not consulted for it.

Check and read are of the same file: the path is walked from / by file descriptors (openat with
O_NOFOLLOW, symbolic links read and followed here after their checks), the file opened is checked
with fstat, and the bytes parsed are read from that open file; nothing is opened a second time by
path. `find()` (stage0's `--pod-manifest=NAME|PATH`, `validate`) applies the same checks to a path.

Two passes (STYLE.md rule 4): `scan()` indexes every pod name without parsing anything (it reads
each winning file once, as checked), `load_all()` parses each winner; one bad file never stops the
others.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Sequence

from rktd_units import formats
from rktd_units.errors import ManifestError, PodError
from rktd_units.frozen import frozen
from rktd_units.model import ManifestFormat, PodFile
from rktd_units.names import AC_NAME_RE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path

DEFAULT_DIRS = ("/etc/rktd/pods", "/run/rktd/pods", "/usr/lib/rktd/pods")
ENV_PATH = "RKTD_PODS_PATH"
# Paths are strings inside this module: pathlib (with urllib.parse and ipaddress, which it imports)
# costs the generator a tenth of an interpreter start at every boot; the public functions that
# return paths still return `Path`s.
_StrPath = str | os.PathLike[str]


def _search_dirs() -> list[str]:
    env = os.environ.get(ENV_PATH)
    if env:
        return [p for p in env.split(":") if p]
    return list(DEFAULT_DIRS)


def search_path() -> list[Path]:
    """The manifest directories, highest priority first; `RKTD_PODS_PATH` (colon-separated) replaces them."""
    from pathlib import Path

    return [Path(p) for p in _search_dirs()]


@frozen
class Candidate:
    """The manifest file that wins for a pod name."""

    name: str
    path: Path
    kind: ManifestFormat


# What `_index` finds for one name, paths as strings: (name, path, kind, bytes read) of the winning
# file, or (name, path, None, None) for a mask, or the error.
_Found = tuple[str, str, ManifestFormat | None, bytes | None]
_Outcome = _Found | ManifestError


_O_STEP = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC  # a directory passed, or a symbolic link to read
_O_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC  # the manifest
_O_LIST = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_WRITABLE = stat.S_IWGRP | stat.S_IWOTH
_MAX_LINKS = 40  # as the kernel's limit on symbolic links in one lookup
_DEV_NULL = os.makedev(1, 3)
_IS_A_DIR = "is a directory, not a manifest file"


class _Refused(Exception):
    """StrictModes refuses something on the way to a manifest: what is wrong, and what to do."""

    def __init__(self, problem: str, hint: str) -> None:
        super().__init__(problem)
        self.problem, self.hint = problem, hint


def _owner_problem(st: os.stat_result) -> str | None:
    euid = os.geteuid()
    if st.st_uid in (0, euid):
        return None
    return f"is owned by uid {st.st_uid}, not {'root' if euid == 0 else f'root or uid {euid}'}"


class _Opened:
    """What a path led to: `st` of the object reached (None: a symbolic link to /dev/null), and the
    bytes read from that same open file if it is a regular, non-empty file."""

    __slots__ = ("data", "st")

    def __init__(self, st: os.stat_result | None, data: bytes | None = None) -> None:
        self.st, self.data = st, data

    @property
    def is_mask(self) -> bool:
        st = self.st
        if st is None:
            return True
        if stat.S_ISCHR(st.st_mode):
            return st.st_rdev == _DEV_NULL
        return stat.S_ISREG(st.st_mode) and st.st_size == 0


class _Walk:
    """Resolves a path one component at a time from /, by file descriptors: each step is an openat()
    with O_NOFOLLOW in the directory reached so far, and symbolic links are read and followed here.
    So everything that decides which file is read is checked, and the file checked (fstat) is the
    one read. StrictModes, as sshd's: every directory passed and every symbolic link followed is
    owned by root (or, not as root, by us); the manifest's own directory is writable by nobody else;
    a directory above it may be writable by others only if it is sticky (as /tmp: others cannot
    rename or remove what is ours there)."""

    def __init__(self, base: _Walk | None = None) -> None:
        # The directories of the real path so far, from / down: fd (O_PATH), real path, fstat.
        self.dirs: list[tuple[int, str, os.stat_result]] = list(base.dirs) if base else []
        self.own: set[int] = set()  # the fds opened here (a base's belong to the base)
        self.writable: list[tuple[str, os.stat_result]] = []  # directories passed that others can write
        self.links = 0

    def close(self) -> None:
        for fd in self.own:
            os.close(fd)
        self.own.clear()

    def _push(self, fd: int, path: str, st: os.stat_result) -> None:
        self.own.add(fd)
        self.dirs.append((fd, path, st))
        problem = _owner_problem(st)
        if problem:
            raise _Refused(f"directory {path} {problem}", f"chown root {path}, or move the manifest")
        if st.st_mode & _WRITABLE:
            self.writable.append((path, st))

    def _root(self) -> None:
        self.dirs = []
        fd = os.open("/", _O_STEP | os.O_DIRECTORY)
        self._push(fd, "/", os.fstat(fd))

    def _check_writable(self) -> None:
        """Before anything in the directory reached is opened for reading."""
        _, top, top_st = self.dirs[-1]
        if top_st.st_mode & _WRITABLE:
            shared = top_st.st_mode & stat.S_ISVTX  # as /tmp: not to be chmod-ed, the manifest moves
            hint = f"move the manifest to a directory only root can write, not {top}" if shared else None
            raise _Refused("its directory is writable by group or others", hint or f"chmod go-w {top}")
        for path, st in self.writable:
            if not st.st_mode & stat.S_ISVTX:
                problem = f"directory {path} above it is writable by group or others"
                raise _Refused(problem, f"chmod go-w {path}")

    def _link(self, fd: int, path: str) -> str:
        """The target of the symbolic link open as `fd` (O_PATH), after the checks."""
        self.links += 1
        if self.links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        problem = _owner_problem(os.fstat(fd))
        if problem:
            raise _Refused(f"the symbolic link {path} {problem}", f"chown -h root {path}")
        return os.readlink("", dir_fd=fd)

    def _walk(self, path: str, *, to_dir: bool) -> tuple[int, str, str]:
        """Follow `path` (absolute, or relative to the directory reached) to its last component:
        (the fd of the directory it is in, its real path, its name); with `to_dir`, to the directory
        it names: (its fd, its real path, "")."""
        if not self.dirs or path.startswith("/"):
            self._root()
        todo = [c for c in reversed(path.split("/")) if c not in ("", os.curdir)]
        while todo:
            name = todo.pop()
            if name == os.pardir:
                if len(self.dirs) > 1:
                    self.dirs.pop()  # its fd stays open (and owned) until close()
                continue
            top_fd, top, _ = self.dirs[-1]
            here = top.rstrip("/") + "/" + name
            if not todo and not to_dir:
                return top_fd, here, name
            fd = os.open(name, _O_STEP, dir_fd=top_fd)
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                self._push(fd, here, st)
                continue
            try:
                if not stat.S_ISLNK(st.st_mode):
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), here)
                target = self._link(fd, here)
            finally:
                os.close(fd)
            if target.startswith("/"):
                self._root()
            todo += [c for c in reversed(target.split("/")) if c not in ("", os.curdir)]
        if not to_dir:
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.dirs[-1][1])
        return self.dirs[-1][0], self.dirs[-1][1], ""

    def open_dir(self, path: str) -> int:
        """An fd to list the directory `path`, checked as a manifest's own directory is."""
        fd, _, _ = self._walk(_absolute(path), to_dir=True)
        self._check_writable()
        return os.open(os.curdir, _O_LIST, dir_fd=fd)

    def read(self, path: str) -> _Opened:
        """Open `path` (absolute, or relative to the base's directory) once, check what was opened
        (fstat), and read it from that same open file."""
        while True:
            dir_fd, here, name = self._walk(path, to_dir=False)
            self._check_writable()
            try:
                fd = os.open(name, _O_READ, dir_fd=dir_fd)
            except OSError as e:
                if e.errno != errno.ELOOP:
                    raise
                fd = os.open(name, _O_STEP, dir_fd=dir_fd)  # a symbolic link, to follow here
                try:
                    if not stat.S_ISLNK(os.fstat(fd).st_mode):
                        raise
                    path = self._link(fd, here)
                finally:
                    os.close(fd)
                if path == os.devnull:
                    return _Opened(None)  # a mask: nothing more to open
                continue
            try:
                return _opened(fd, here)
            finally:
                os.close(fd)


def _opened(fd: int, real: str) -> _Opened:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size == 0:
        return _Opened(st)  # a mask, or not a manifest: nothing to read
    if st.st_mode & _WRITABLE:
        raise _Refused("the manifest is writable by group or others", f"chmod go-w {real}")
    problem = _owner_problem(st)
    if problem:
        raise _Refused(f"the manifest {problem}", f"chown root {real}")
    chunks = []
    while chunk := os.read(fd, max(st.st_size + 1, 1 << 16)):
        chunks.append(chunk)
    return _Opened(st, b"".join(chunks))


def _as_path(path: str) -> str:
    """`str(Path(path))`: no empty or `.` components; one leading slash, or exactly two (POSIX)."""
    root = "//" if path.startswith("//") and not path.startswith("///") else "/" if path[:1] == "/" else ""
    return root + "/".join(p for p in path.split("/") if p and p != ".") or "."


def _absolute(path: str) -> str:
    """`path` from /, without resolving anything (the walk does, as the kernel would)."""
    return path if path.startswith("/") else os.getcwd() + "/" + path


def _entries(directory: str | int, shown: str) -> dict[str, list[tuple[str, formats.Format]]]:
    """Manifest files of one directory (a path, or an fd to list) grouped by stem, paths under `shown`."""
    out: dict[str, list[tuple[str, formats.Format]]] = {}
    for entry in sorted(os.listdir(directory)):
        fmt = formats.format_for(entry)
        if fmt is None or entry.startswith("."):
            continue
        out.setdefault(entry[: -len(os.path.splitext(entry)[1])], []).append(
            (os.path.join(shown, entry), fmt)
        )
    return out


def _refused(path: str, refusal: _Refused) -> ManifestError:
    return ManifestError(path, "", f"refused: {refusal.problem}", hint=refusal.hint)


def _read(path: str, base: _Walk | None = None) -> _Opened:
    """`_Walk.read()`: a manifest opened once, checked and read; ManifestError if refused or unreadable."""
    walk = _Walk(base)
    try:
        return walk.read(os.path.basename(path) if base else _absolute(path))
    except _Refused as r:
        raise _refused(path, r) from None
    except OSError as e:
        raise ManifestError(path, "", f"cannot read: {e.strerror or e}") from None
    finally:
        walk.close()


def _decide(name: str, files: list[tuple[str, formats.Format]], directory: _Walk) -> _Outcome:
    """What one directory says about one pod name."""
    if len(files) > 1:
        paths = " and ".join(p for p, _ in files)
        return ManifestError(
            files[0][0], "", f"pod {name!r} is given twice in one directory: {paths}", hint="remove one"
        )
    path, fmt = files[0]
    try:
        opened = _read(path, directory)
    except ManifestError as e:
        return e
    if opened.is_mask:
        return (name, path, None, None)
    if opened.data is None:
        return ManifestError(path, "", "not a regular file")
    return (name, path, fmt.kind, opened.data)


def _index(
    dirs: Sequence[_StrPath] | None, only: str | None = None
) -> tuple[dict[str, _Outcome], list[ManifestError]]:
    """Every pod name's outcome (first directory wins) and the errors of files that name no pod;
    with `only`, that name's alone (no other file is opened)."""
    outcomes: dict[str, _Outcome] = {}
    stray: list[ManifestError] = []
    for directory in (_as_path(os.fspath(d)) for d in (_search_dirs() if dirs is None else dirs)):
        walk = _Walk()
        refusal: ManifestError | None = None
        try:
            try:
                fd = walk.open_dir(directory)
            except _Refused as r:  # every manifest in it is refused (and hides lower ones): list them
                refusal = _refused(directory, r)
                groups = _entries(directory, directory)
            else:
                try:
                    groups = _entries(fd, directory)
                finally:
                    os.close(fd)
        except (FileNotFoundError, NotADirectoryError):
            walk.close()
            continue
        except OSError as e:  # EACCES, EIO, ELOOP: reported
            walk.close()
            stray.append(ManifestError(directory, "", f"cannot read: {e.strerror or e}"))
            continue
        try:
            for name, files in groups.items():
                if only is not None and name != only:
                    continue
                if not AC_NAME_RE.fullmatch(name):
                    stray += [_not_a_name(path, name) for path, _ in files]
                elif name not in outcomes:
                    outcomes[name] = (
                        refusal.with_path(files[0][0]) if refusal else _decide(name, files, walk)
                    )
        finally:
            walk.close()
    return outcomes, stray


def _not_a_name(path: str, name: str) -> ManifestError:
    return ManifestError(
        path,
        "",
        f"{name!r} is not a pod name (an AC Name)",
        hint="lower-case letters, digits and single dashes, e.g. my-pod.json",
    )


def _sorted_errors(errors: Iterable[ManifestError]) -> list[ManifestError]:
    return sorted(errors, key=lambda e: (e.path or "", e.field, e.message))


def scan_data(
    dirs: Sequence[_StrPath] | None = None,
) -> tuple[list[tuple[str, str, ManifestFormat, bytes]], list[ManifestError]]:
    """The winning manifest per pod name as (name, path, format, bytes), the bytes read from the very
    file StrictModes checked (parse them with `formats.load_bytes`), and the files refused. For the
    generator: no second open by path, so no window to swap the file in between."""
    outcomes, errors = _index(dirs)
    found = [o for _, o in sorted(outcomes.items()) if isinstance(o, tuple) and o[2] is not None]
    errors += [o for o in outcomes.values() if isinstance(o, ManifestError)]
    return found, _sorted_errors(errors)  # type: ignore[return-value]  # o[2] and o[3] are not None


def scan_files(
    dirs: Sequence[_StrPath] | None = None,
) -> tuple[list[tuple[str, str, ManifestFormat]], list[ManifestError]]:
    """`scan()` with (name, path, format) tuples and paths as strings."""
    found, errors = scan_data(dirs)
    return [(name, path, kind) for name, path, kind, _ in found], errors


def scan(dirs: Sequence[Path] | None = None) -> tuple[list[Candidate], list[ManifestError]]:
    """First pass: the winning manifest file per pod name (sorted by name), and the files refused."""
    from pathlib import Path

    found, errors = scan_files(dirs)
    return [Candidate(name, Path(path), kind) for name, path, kind in found], errors


def all_names(candidates: Iterable[Candidate]) -> frozenset[str]:
    """Every indexed pod name, for checking references such as `rktd/after`."""
    return frozenset(c.name for c in candidates)


def _load_checked(path: str, name: str) -> PodFile:
    """Open, check (StrictModes) and read the manifest file at `path` once, and parse those bytes."""
    formats.require_format(path)
    opened = _read(path)
    if opened.is_mask:
        raise PodError(f"{path} is a mask (an empty file or a link to /dev/null), not a manifest")
    if opened.data is None:
        is_dir = opened.st is not None and stat.S_ISDIR(opened.st.st_mode)
        raise ManifestError(path, "", _IS_A_DIR if is_dir else "not a regular file")
    return formats.load_bytes(opened.data, path, name)


def load_candidate(candidate: Candidate) -> PodFile:
    """Second pass for one candidate: the file is opened and checked again, and parsed as read then."""
    try:
        return _load_checked(str(candidate.path), candidate.name)
    except PodError as e:  # made a mask since the scan
        raise ManifestError(str(candidate.path), "", e.message) from None


def load_all(dirs: Sequence[Path] | None = None) -> tuple[list[PodFile], list[ManifestError]]:
    """Second pass: parse every winning manifest; one bad file never stops the others."""
    found, errors = scan_data(dirs)
    pods: list[PodFile] = []
    for name, path, _, data in found:
        try:
            pods.append(formats.load_bytes(data, path, name))
        except ManifestError as e:
            errors.append(e)
    return pods, _sorted_errors(errors)


def is_path(name_or_path: str) -> bool:
    """Does a command-line argument name a file (rather than a pod on the search path)?"""
    return "/" in name_or_path or formats.format_for(name_or_path) is not None


def find(name_or_path: str, dirs: Sequence[Path] | None = None) -> PodFile:
    """The pod for `rktd run --pod-manifest=NAME|PATH`: a file (named by its stem) or a search-path name."""
    if is_path(name_or_path):
        from pathlib import Path

        path = Path(name_or_path)
        name = path.name[: -len(path.suffix)] if path.suffix else path.name
        if not AC_NAME_RE.fullmatch(name):
            raise ManifestError(
                str(path), "", f"{name!r} is not a pod name (an AC Name)", hint="rename the file"
            )
        return _load_checked(str(path), name)
    if not AC_NAME_RE.fullmatch(name_or_path):
        raise PodError(f"{name_or_path!r} is not a pod name (an AC Name) or a manifest path")
    searched = search_path() if dirs is None else list(dirs)
    outcome = _index(searched, only=name_or_path)[0].get(name_or_path)
    if outcome is None:
        where = ":".join(str(d) for d in searched)
        raise PodError(f"no pod manifest named {name_or_path!r} in {where}", hint=f"add {name_or_path}.json")
    if isinstance(outcome, ManifestError):
        raise outcome
    _, found, kind, data = outcome
    if kind is None or data is None:
        raise PodError(f"pod {name_or_path!r} is masked by {found}")
    return formats.load_bytes(data, found, name_or_path)


def dangling_references(pod_file: PodFile, names: Iterable[str]) -> list[ManifestError]:
    """`rktd/after` and `rktd/requires` words that look like pod names but name no indexed pod."""
    known = set(names)
    prefix = "annotations" if pod_file.format is ManifestFormat.APPC else "metadata.annotations"
    errors = []
    for annotation in ("rktd/after", "rktd/requires"):
        for word in (pod_file.pod.annotation(annotation) or "").split():
            if AC_NAME_RE.fullmatch(word) and word not in known:
                errors.append(
                    ManifestError(
                        pod_file.path,
                        f"{prefix}[{annotation}]",
                        f"no pod named {word!r}",
                        hint="add its manifest, or name a unit such as NAME.service",
                    )
                )
    return errors
