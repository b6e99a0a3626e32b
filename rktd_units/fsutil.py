"""Atomic file writes (a temporary name in the same directory, fsync, rename: STYLE.md 12) and a tree
removal that no hostile tree can break (depth, symlinks, permissions)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, data: bytes, mode: int = 0o644, *, durable: bool = True) -> None:
    """Replace `path` with `data` (exactly `mode`, whatever the umask) so that readers see the old or the
    new content, never a torn file. `durable=False` skips the fsync: for files of a pod that is about to
    run and dies with it on a crash (fsync is slow on a busy disk). A failed write leaves no temporary."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_WINDOW = 64  # directory fds an rmtree keeps open; deeper levels are reopened through ".."


def rmtree(path: Path | str) -> None:
    """Remove the tree at `path` (a symlink or file: just that) at any depth: no recursion, so a deep
    tree (a hostile image's, a pod's) cannot raise RecursionError, and a bounded number of open
    descriptors. Never follows a symlink; makes unlistable or read-only directories writable first.
    """
    top = _open_dir(os.fspath(path), None)
    if top is None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    # One frame per directory being emptied: ([its fd, or -1 once closed], (dev, ino), name, subdirs left)
    frames: list[tuple[list[int], tuple[int, int], str, list[str]]] = []
    frames.append(([top], _ident(top), os.fspath(path), _clear(top)))
    try:
        while frames:
            fds, _, _, subdirs = frames[-1]
            if subdirs:
                name = subdirs.pop()
                child = _open_dir(name, fds[0])
                if child is None:  # not a directory (any more): gone or unlinked
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=fds[0])
                    continue
                frames.append(([child], _ident(child), name, _clear(child)))
                far = frames[-_WINDOW - 1][0] if len(frames) > _WINDOW else [-1]
                if far[0] >= 0:
                    os.close(far[0])
                    far[0] = -1
                continue
            fds, _, name, _ = frames.pop()
            if not frames:
                os.close(fds[0])
                _retry(os.rmdir, os.fspath(path), None)
                return
            parent_fds, ident, _, _ = frames[-1]
            try:
                if parent_fds[0] < 0:
                    parent_fds[0] = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fds[0])
                    if _ident(parent_fds[0]) != ident:
                        raise OSError(errno.ESTALE, "a directory moved while its tree was removed", name)
            finally:
                os.close(fds[0])
            _retry(os.rmdir, name, parent_fds[0])
    finally:
        for fds, _, _, _ in frames:
            if fds[0] >= 0:
                os.close(fds[0])


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _open_dir(name: str, dir_fd: int | None) -> int | None:
    """An fd of the directory `name` (relative to `dir_fd`); None if it is not a directory."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(name, flags, dir_fd=dir_fd)
    except PermissionError:
        os.chmod(name, 0o700, dir_fd=dir_fd)
        return os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            return None
        raise


def _retry(op: Callable[..., object], name: str, dir_fd: int | None) -> None:
    """`op(name, dir_fd=)` (unlink or rmdir), again after making its directory writable if refused."""
    try:
        op(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return
    except PermissionError:
        if dir_fd is not None:
            os.fchmod(dir_fd, 0o700)
        else:
            os.chmod(os.path.dirname(os.path.abspath(name)), 0o700)
        op(name, dir_fd=dir_fd)


def _clear(fd: int) -> list[str]:
    """Unlink everything in the directory `fd` but its subdirectories; their names."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
            else:
                _retry(os.unlink, entry.name, fd)
    return subdirs
