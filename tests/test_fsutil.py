"""The one atomic write: old or new content, the exact mode, no temporary left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from rktd_units.fsutil import write_atomic


def test_write_atomic_leaves_no_temporary(tmp_path: Path) -> None:
    write_atomic(tmp_path / "f", b"one")
    write_atomic(tmp_path / "f", b"two", durable=False)
    assert (tmp_path / "f").read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f"]


def test_mode_is_exact_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_atomic(tmp_path / "public", b"x", 0o644)
    finally:
        os.umask(old)
    write_atomic(tmp_path / "secret", b"x", 0o600)
    assert stat.S_IMODE((tmp_path / "public").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "secret").stat().st_mode) == 0o600


def test_a_failed_rename_leaves_the_target_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "d"
    target.mkdir()
    (target / "kept").write_text("k")
    with pytest.raises(OSError):
        write_atomic(target, b"x")  # a directory cannot be replaced by a file
    assert sorted(os.listdir(tmp_path)) == ["d"] and (target / "kept").read_text() == "k"
