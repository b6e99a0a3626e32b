"""Where pod manifests live: the search path, overrides, masks and StrictModes checks.

The directories are searched in order and the first one holding `NAME.<suffix>` wins, as for
systemd unit directories. An empty file or a symlink to /dev/null masks lower ones. Two formats
of one name in one directory are ambiguous: an error for that name (and lower directories are
not consulted for it, so a mistake never silently lets an older manifest through).

StrictModes (as sshd's): a manifest, or the directory it is in, that is writable by group or
others, or owned by anyone but root (or, when not running as root, by anyone but root or us), is
refused: whoever can write it could run anything as root.

Two passes (STYLE.md rule 4): `scan()` indexes every pod name without parsing anything,
`load_all()` parses each winner; one bad file never stops the others.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence

from rktd_units import formats
from rktd_units.annotations import AC_NAME_RE
from rktd_units.errors import ManifestError, PodError
from rktd_units.frozen import frozen
from rktd_units.model import ManifestFormat, PodFile

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


# What `_index` finds for one name, paths as strings: (name, path, kind) of the winning file, or
# (name, path, None) for a mask, or the error.
_Found = tuple[str, str, ManifestFormat | None]
_Outcome = _Found | ManifestError


def _is_mask(path: _StrPath, st: os.stat_result) -> bool:
    if os.path.islink(path) and os.path.realpath(path) == os.devnull:
        return True
    return stat.S_ISREG(st.st_mode) and st.st_size == 0


def _mode_problem(st: os.stat_result, what: str) -> str | None:
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by group or others"
    euid = os.geteuid()
    if st.st_uid not in (0, euid):
        owner = "root" if euid == 0 else f"root or uid {euid}"
        return f"{what} is owned by uid {st.st_uid}, not {owner}"
    return None


def _strict(path: str, dir_st: os.stat_result, st: os.stat_result) -> ManifestError | None:
    problem = _mode_problem(dir_st, "its directory") or _mode_problem(st, "the manifest")
    if problem:
        return ManifestError(
            path, "", f"refused: {problem}", hint=f"chmod go-w and chown root {_parent(path)} and {path}"
        )
    return None


def _parent(path: str) -> str:
    """`str(Path(path).parent)` of a path `_as_path` made."""
    return os.path.dirname(path) or "."


def _as_path(path: str) -> str:
    """`str(Path(path))`: no empty or `.` components; one leading slash, or exactly two (POSIX)."""
    root = "//" if path.startswith("//") and not path.startswith("///") else "/" if path[:1] == "/" else ""
    return root + "/".join(p for p in path.split("/") if p and p != ".") or "."


def _entries(directory: str) -> dict[str, list[tuple[str, formats.Format]]] | None:
    """Manifest files of one directory grouped by stem; None if the directory does not exist."""
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return None  # other OSErrors (EACCES, EIO) reach the caller, who reports them
    out: dict[str, list[tuple[str, formats.Format]]] = {}
    for entry in names:
        fmt = formats.format_for(entry)
        if fmt is None or entry.startswith("."):
            continue
        out.setdefault(entry[: -len(os.path.splitext(entry)[1])], []).append(
            (os.path.join(directory, entry), fmt)
        )
    return out


def _decide(name: str, files: list[tuple[str, formats.Format]], dir_st: os.stat_result) -> _Outcome:
    """What one directory says about one pod name."""
    if len(files) > 1:
        paths = " and ".join(p for p, _ in files)
        return ManifestError(
            files[0][0], "", f"pod {name!r} is given twice in one directory: {paths}", hint="remove one"
        )
    path, fmt = files[0]
    try:
        st = os.stat(path)
    except OSError as e:
        return ManifestError(path, "", f"cannot read: {e.strerror or e}")
    if _is_mask(path, st):
        dir_problem = _mode_problem(dir_st, "its directory")
        if dir_problem:
            return ManifestError(path, "", f"refused: {dir_problem}", hint=f"chmod go-w {_parent(path)}")
        return (name, path, None)
    if not stat.S_ISREG(st.st_mode):
        return ManifestError(path, "", "not a regular file")
    return _strict(path, dir_st, st) or (name, path, fmt.kind)


def _index(dirs: Sequence[_StrPath] | None) -> tuple[dict[str, _Outcome], list[ManifestError]]:
    """Every pod name's outcome (first directory wins) and the errors of files that name no pod."""
    outcomes: dict[str, _Outcome] = {}
    stray: list[ManifestError] = []
    for directory in (_as_path(os.fspath(d)) for d in (_search_dirs() if dirs is None else dirs)):
        try:
            groups = _entries(directory)
            if groups is None:
                continue
            dir_st = os.stat(directory)
        except OSError as e:
            stray.append(ManifestError(directory, "", f"cannot read: {e.strerror or e}"))
            continue
        for name, files in groups.items():
            if not AC_NAME_RE.match(name):
                for path, _ in files:
                    stray.append(
                        ManifestError(
                            path,
                            "",
                            f"{name!r} is not a pod name (an AC Name)",
                            hint="lower-case letters, digits and single dashes, e.g. my-pod.json",
                        )
                    )
            elif name not in outcomes:
                outcomes[name] = _decide(name, files, dir_st)
    return outcomes, stray


def _sorted_errors(errors: Iterable[ManifestError]) -> list[ManifestError]:
    return sorted(errors, key=lambda e: (e.path or "", e.field, e.message))


def scan_files(
    dirs: Sequence[_StrPath] | None = None,
) -> tuple[list[tuple[str, str, ManifestFormat]], list[ManifestError]]:
    """`scan()` with (name, path, format) tuples and paths as strings, for the generator."""
    outcomes, errors = _index(dirs)
    found = [o for _, o in sorted(outcomes.items()) if isinstance(o, tuple) and o[2] is not None]
    errors += [o for o in outcomes.values() if isinstance(o, ManifestError)]
    return found, _sorted_errors(errors)  # type: ignore[return-value]  # o[2] is not None


def scan(dirs: Sequence[Path] | None = None) -> tuple[list[Candidate], list[ManifestError]]:
    """First pass: the winning manifest file per pod name (sorted by name), and the files refused."""
    from pathlib import Path

    found, errors = scan_files(dirs)
    return [Candidate(name, Path(path), kind) for name, path, kind in found], errors


def all_names(candidates: Iterable[Candidate]) -> frozenset[str]:
    """Every indexed pod name, for checking references such as `rktd/after`."""
    return frozenset(c.name for c in candidates)


def load_candidate(candidate: Candidate) -> PodFile:
    return formats.load(candidate.path, candidate.name)


def load_all(dirs: Sequence[Path] | None = None) -> tuple[list[PodFile], list[ManifestError]]:
    """Second pass: parse every winning manifest; one bad file never stops the others."""
    candidates, errors = scan(dirs)
    pods: list[PodFile] = []
    for candidate in candidates:
        try:
            pods.append(load_candidate(candidate))
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
        if not AC_NAME_RE.match(name):
            raise ManifestError(
                str(path), "", f"{name!r} is not a pod name (an AC Name)", hint="rename the file"
            )
        if os.path.isdir(path):
            raise ManifestError(str(path), "", "is a directory, not a manifest file")
        try:
            masked = _is_mask(path, path.stat())
        except OSError:
            masked = False  # formats.load() reports why it cannot be read
        if masked:
            raise PodError(f"{path} is a mask (an empty file or a link to /dev/null), not a manifest")
        return formats.load(path, name)
    if not AC_NAME_RE.match(name_or_path):
        raise PodError(f"{name_or_path!r} is not a pod name (an AC Name) or a manifest path")
    searched = search_path() if dirs is None else list(dirs)
    outcome = _index(searched)[0].get(name_or_path)
    if outcome is None:
        where = ":".join(str(d) for d in searched)
        raise PodError(f"no pod manifest named {name_or_path!r} in {where}", hint=f"add {name_or_path}.json")
    if isinstance(outcome, ManifestError):
        raise outcome
    _, found, kind = outcome
    if kind is None:
        raise PodError(f"pod {name_or_path!r} is masked by {found}")
    return formats.load(found, name_or_path)


def dangling_references(pod_file: PodFile, names: Iterable[str]) -> list[ManifestError]:
    """`rktd/after` and `rktd/requires` words that look like pod names but name no indexed pod."""
    known = set(names)
    prefix = "annotations" if pod_file.format is ManifestFormat.APPC else "metadata.annotations"
    errors = []
    for annotation in ("rktd/after", "rktd/requires"):
        for word in (pod_file.pod.annotation(annotation) or "").split():
            if AC_NAME_RE.match(word) and word not in known:
                errors.append(
                    ManifestError(
                        pod_file.path,
                        f"{prefix}[{annotation}]",
                        f"no pod named {word!r}",
                        hint="add its manifest, or name a unit such as NAME.service",
                    )
                )
    return errors
