"""Pod directories: states by atomic rename, running vs exited read from the flock, gc."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from rktd_units import pods
from rktd_units.errors import PodError
from rktd_units.pods import Pods, State


def _hold_lock_in_child(pod: pods.PodDir) -> int:
    """A process that takes the pod's lock (as stage1 does) and sleeps; returns its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        fresh = pods.PodDir(pod.root, pod.uuid, pod.state)
        fresh.lock()
        os.write(w, b"x")
        time.sleep(60)
        os._exit(0)
    os.close(w)
    assert os.read(r, 1) == b"x"
    os.close(r)
    return pid


def _write_config(pod: pods.PodDir, name: str) -> None:
    pod.write_atomic(
        pods.STAGE1_CONFIG, json.dumps({"name": name, "apps": [], "created": time.time()}).encode()
    )


def test_create_moves_embryo_to_prepare_locked(tmp_path: Path) -> None:
    p = Pods(tmp_path)
    pod = p.create()
    assert pod.state == State.PREPARE and pod.path.is_dir()
    assert pod.path.parent == tmp_path / "pods" / "prepare"
    assert not (tmp_path / "pods" / "embryo" / pod.uuid).exists()
    assert pods.PodDir(pod.root, pod.uuid, pod.state).display_state() == "preparing"
    with pytest.raises(PodError, match="locked"):
        pods.PodDir(pod.root, pod.uuid, pod.state).lock()
    pod.unlock()
    assert pod.display_state() == "abort-prepare"  # stage0 died while preparing


def test_running_versus_exited_is_read_from_the_lock(tmp_path: Path) -> None:
    p = Pods(tmp_path)
    pod = p.create()
    pod.move(State.RUN)
    pod.unlock()
    child = _hold_lock_in_child(pod)
    try:
        assert p.find(pod.uuid).display_state() == "running"
        os.kill(child, signal.SIGKILL)  # stage1 dies without cleaning anything up
        os.waitpid(child, 0)
        assert p.find(pod.uuid).display_state() == "exited"
    finally:
        try:
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def test_move_keeps_the_lock_and_is_atomic(tmp_path: Path) -> None:
    pod = Pods(tmp_path).create()
    inode = pod.path.stat().st_ino
    pod.move(State.PREPARED)
    pod.move(State.RUN)
    assert pod.path.stat().st_ino == inode
    assert pods.PodDir(pod.root, pod.uuid, pod.state).is_locked()
    assert sorted(os.listdir(tmp_path / "pods" / "prepared")) == []
    pod.unlock()


def test_find_by_uuid_prefix_and_name(tmp_path: Path) -> None:
    p = Pods(tmp_path)
    a = p.create("aaaa1111-0000-4000-8000-000000000000")
    b = p.create("aaaa2222-0000-4000-8000-000000000000")
    _write_config(a, "web")
    _write_config(b, "db")
    a.unlock()
    b.unlock()
    assert p.find("aaaa1").uuid == a.uuid
    assert p.find("db").uuid == b.uuid
    assert p.find(a.uuid).uuid == a.uuid
    with pytest.raises(PodError, match="ambiguous"):
        p.find("aaaa")
    with pytest.raises(PodError, match="no pod"):
        p.find("nothere")


def test_gc_marks_exited_and_respects_the_grace_period(tmp_path: Path) -> None:
    p = Pods(tmp_path)
    exited = p.create()
    exited.move(State.RUN)
    exited.unlock()
    running = p.create()
    running.move(State.RUN)
    running.unlock()
    child = _hold_lock_in_child(running)
    aborted = p.create()  # stage0 died while preparing
    aborted.unlock()
    prepared = p.create()
    prepared.move(State.PREPARED)
    prepared.unlock()
    try:
        report = pods.gc(p, grace=3600)
        assert sorted(report.marked) == sorted([exited.uuid, aborted.uuid])
        assert report.removed == [aborted.uuid]  # garbage of a failed preparation needs no grace
        assert (tmp_path / "pods" / "exited-garbage" / exited.uuid).is_dir()
        assert (tmp_path / "pods" / "run" / running.uuid).is_dir()
        assert (tmp_path / "pods" / "prepared" / prepared.uuid).is_dir()
        report = pods.gc(p, grace=0)
        assert report.removed == [exited.uuid]
        assert not (tmp_path / "pods" / "exited-garbage" / exited.uuid).exists()
        assert (tmp_path / "pods" / "run" / running.uuid).is_dir()  # still locked: never touched
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


def test_gc_removes_leftover_cgroups(tmp_path: Path) -> None:
    p = Pods(tmp_path)
    pod = p.create()
    pod.move(State.RUN)
    fake = tmp_path / "cg" / f"rktd-{pod.uuid}"
    (fake / "app").mkdir(parents=True)
    pod.write_atomic(pods.CGROUPS_FILE, f"{fake}\n".encode())
    pod.unlock()
    report = pods.gc(p, grace=0)
    assert report.removed == [pod.uuid] and not report.errors
    assert not fake.exists()


def test_pod_dir_compares_and_shows_as_the_dataclass_it_was(tmp_path: Path) -> None:
    a = pods.PodDir(tmp_path, "u", pods.State.RUN)
    assert a == pods.PodDir(tmp_path, "u", pods.State.RUN) != pods.PodDir(tmp_path, "u", pods.State.RUN, 3)
    assert repr(a) == f"PodDir(root={tmp_path!r}, uuid='u', state={pods.State.RUN!r})"  # no lock_fd
    with pytest.raises(TypeError):
        hash(a)
