"""stage1 fly: the app *is* stage1 (exec), chrooted in a private mount namespace on the host network;
only an app with post-stop handlers runs as stage1's child, so that stage1 can run them after it.
(Exit codes, environment, user, volumes, rootfs, memory, stop and SIGKILL are shared with nspawn
and run for both flavours in test_stage1_nspawn.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.test_stage1_nspawn import IMG, Rktd, busybox_aci, needs_root, rktd, socket_activated

__all__ = ["busybox_aci", "rktd"]
pytestmark = [needs_root, pytest.mark.slow]


def test_fly_app_is_stage1_on_the_host_network(rktd: Rktd, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    proc = rktd.start(
        "run", "--stage1=fly", f"--uuid-file-save={uuid_file}", IMG, "--exec=/bin/sh", "--", "-c",
        "readlink /proc/self/ns/net; readlink /proc/self/ns/mnt; echo $$; exec sleep 600",
    )  # fmt: skip
    try:
        uuid = rktd.wait_running(uuid_file, proc)
        assert proc.stdout is not None
        net, mnt, shell_pid = (proc.stdout.readline().strip() for _ in range(3))
        assert net == os.readlink("/proc/self/ns/net")  # host network
        assert mnt != os.readlink("/proc/self/ns/mnt")  # its own mount namespace
        assert int(shell_pid) == proc.pid == rktd.status(uuid)["pid"]  # stage0 → stage1 → app: one pid
        assert Path(f"/proc/{proc.pid}/root").resolve() != Path("/")  # chrooted
    finally:
        assert rktd("stop", "--timeout=5", uuid).returncode == 0
        proc.communicate(timeout=30)


def test_fly_rejects_private_networks(rktd: Rktd) -> None:
    proc = rktd("run", "--stage1=fly", "--net=none", IMG)
    assert proc.returncode == 254 and "host network" in proc.stderr


def test_fly_pod_manifest_with_pre_start(rktd: Rktd, tmp_path: Path) -> None:
    path, out = _fly_pod(tmp_path, "cat /out/pre; id -u > /out/uid", {"pre-start": "echo pre > /out/pre"})
    proc = rktd("run", f"--pod-manifest={path}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "pre\n"
    assert (out / "uid").read_text() == "5\n"
    assert json.loads(rktd("list", "--format=json").stdout)[0]["stage1"] == "fly"


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate absent")
def test_fly_socket_activation(rktd: Rktd, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "web",
                "image": {"name": IMG},
                "app": {
                    "exec": [
                        "/bin/sh",
                        "-c",
                        'echo "$LISTEN_FDS $([ "$LISTEN_PID" = $$ ] && echo own-pid)"',
                    ],
                    "user": "0",
                    "group": "0",
                    "ports": [{"name": "http", "protocol": "tcp", "port": 80, "socketActivated": True}],
                },
            }
        ],
        "ports": [{"name": "http", "hostPort": port}],
    }
    path = tmp_path / "web.json"
    path.write_text(json.dumps(manifest))
    out, err = socket_activated(rktd, port, [], "run", "--stage1=fly", f"--pod-manifest={path}")
    assert out == "1 own-pid\n", out + err


def test_fly_tells_a_notify_unit_it_is_ready(rktd: Rktd, tmp_path: Path) -> None:
    path = tmp_path / "notify.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(20)
        proc = rktd.start(
            "run", "--stage1=fly", "--inherit-env", IMG, "--exec=/bin/sh", "--", "-c",
            "echo ${NOTIFY_SOCKET:-unset}; exec sleep 600",
            env={"NOTIFY_SOCKET": str(path)},
        )  # fmt: skip
        try:
            message = notify.recv(4096)
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "unset"  # the app is not the unit's notifier
        finally:
            proc.terminate()
            proc.communicate(timeout=30)
    assert message == b"READY=1"


# -- post-stop handlers: only then does fly keep a process behind the app ----------------------------


def _fly_pod(tmp_path: Path, script: str, handlers: dict[str, str], **annotations: str) -> tuple[Path, Path]:
    """A fly pod manifest: one app running `script` as uid 5 with a host volume at /out (world
    writable), and event handlers (event name: script); returns (manifest, the volume's host dir)."""
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o777)
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "tool",
                "image": {"name": IMG},
                "app": {
                    "exec": ["/bin/sh", "-c", script],
                    "user": "5",
                    "group": "5",
                    "eventHandlers": [
                        {"name": event, "exec": ["/bin/sh", "-c", cmd]} for event, cmd in handlers.items()
                    ],
                },
                "mounts": [{"volume": "out", "path": "/out"}],
            }
        ],
        "volumes": [{"name": "out", "kind": "host", "source": str(out)}],
        "annotations": [{"name": k, "value": v} for k, v in {"rktd/stage1": "fly", **annotations}.items()],
    }
    path = tmp_path / "tool.json"
    path.write_text(json.dumps(manifest))
    return path, out


def _post_stop_pod(tmp_path: Path, script: str, post: str, **annotations: str) -> tuple[Path, Path]:
    return _fly_pod(tmp_path, script, {"post-stop": post}, **annotations)


# What the handler records: that the app's file was there before it ran, its uid, and its root (the
# app's rootfs, in which /out is the volume: the host's /out does not exist).
POST = "cat /out/app > /out/post; id -u >> /out/post; [ -d /out ] && echo in-rootfs >> /out/post"


@pytest.mark.parametrize(
    ("script", "status"),
    [("exit 3", 3), ("kill -KILL $$", 128 + 9)],  # a signal death as the nspawn init reports it
    ids=["exit-3", "sigkill"],
)
def test_fly_post_stop_runs_after_the_app_exits(
    rktd: Rktd, tmp_path: Path, script: str, status: int
) -> None:
    manifest, out = _post_stop_pod(tmp_path, f"echo $$ > /out/app; {script}", POST)
    proc = rktd("run", f"--pod-manifest={manifest}")
    assert proc.returncode == status, proc.stderr
    app_pid, uid, where = (out / "post").read_text().split()
    assert (uid, where) == ("5", "in-rootfs")
    assert int(app_pid) > 0


@pytest.mark.parametrize("with_handler", [True, False], ids=["post-stop", "none"])
def test_fly_stays_the_app_unless_it_has_post_stop(rktd: Rktd, tmp_path: Path, with_handler: bool) -> None:
    """With a post-stop handler the app is a child of stage1 (which stays the pod's process, stop
    reaching the app through it); without one, stage1 execs the app (one pid) and dies of SIGTERM."""
    uuid_file = tmp_path / "uuid"
    manifest, out = _post_stop_pod(
        tmp_path, "echo $$ > /out/app.tmp; mv /out/app.tmp /out/app; exec sleep 600", POST
    )
    if not with_handler:
        doc = json.loads(manifest.read_text())
        del doc["apps"][0]["app"]["eventHandlers"]
        manifest.write_text(json.dumps(doc))
    proc = rktd.start("run", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    uuid = rktd.wait_running(uuid_file, proc)
    try:
        _wait_file(out / "app", proc)
        app_pid = int((out / "app").read_text())
        assert rktd.status(uuid)["pid"] == proc.pid
        if with_handler:
            assert app_pid != proc.pid and _ppid(app_pid) == proc.pid
        else:
            assert app_pid == proc.pid
    finally:
        assert rktd("stop", "--timeout=5", uuid).returncode == 0
        proc.communicate(timeout=30)
    assert proc.returncode == (0 if with_handler else -signal.SIGTERM)
    assert (out / "post").exists() == with_handler


def _wait_file(path: Path, proc: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 20
    while not path.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.05)


def _ppid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"no PPid for {pid}")


def test_fly_post_stop_runs_after_rktd_stop(rktd: Rktd, tmp_path: Path) -> None:
    """`rktd stop`: SIGTERM reaches the app through stage1, the handler runs after it died, and the
    pod's status is a stopped pod's (0), as with the nspawn init."""
    uuid_file = tmp_path / "uuid"
    script = (
        "trap 'echo got-term > /out/term; exit 143' TERM; echo up > /out/app; while :; do sleep 0.1; done"
    )
    manifest, out = _post_stop_pod(tmp_path, script, "cat /out/term > /out/post; echo done >> /out/post")
    proc = rktd.start("run", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    uuid = rktd.wait_running(uuid_file, proc)
    _wait_file(out / "app", proc)
    stop = rktd("stop", uuid)
    assert stop.returncode == 0, stop.stderr
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (out / "post").read_text() == "got-term\ndone\n"  # the app's trap ran first, then the handler
    assert rktd.status(uuid)["state"] == "exited"


def test_fly_post_stop_after_the_stop_timeout(rktd: Rktd, tmp_path: Path) -> None:
    """An app that ignores SIGTERM is SIGKILLed by stage1 after the pod's stop timeout (before `rktd
    stop` would SIGKILL stage1 itself, 5 s later), and the handler still runs."""
    uuid_file = tmp_path / "uuid"
    script = "trap '' TERM; echo up > /out/app; while :; do sleep 0.1; done"
    manifest, out = _post_stop_pod(tmp_path, script, "echo ran > /out/post", **{"rktd/stop-timeout": "1"})
    proc = rktd.start("run", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    uuid = rktd.wait_running(uuid_file, proc)
    _wait_file(out / "app", proc)
    assert rktd("stop", uuid).returncode == 0
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert (out / "post").read_text() == "ran\n"


def test_fly_post_stop_failure_keeps_the_app_status(rktd: Rktd, tmp_path: Path) -> None:
    manifest, out = _post_stop_pod(tmp_path, "exit 4", "echo ran > /out/post; exit 9")
    proc = rktd("run", f"--pod-manifest={manifest}")
    assert proc.returncode == 4, proc.stderr
    assert (out / "post").read_text() == "ran\n"
    assert "post-stop handler /bin/sh failed with status 9" in proc.stderr


def test_fly_force_stop_kills_a_non_root_app_kept_below_stage1(rktd: Rktd, tmp_path: Path) -> None:
    """`rktd stop --force` on a fly pod that keeps a parent (post-stop): the app runs as uid 5, so
    setuid cleared its parent-death signal; killing stage1 alone left it holding the pod's lock and
    the stop waiting for ever. Every process of the pod goes, and the stop returns."""
    uuid_file = tmp_path / "uuid"
    script = "trap '' TERM; echo $$ > /out/app.tmp; mv /out/app.tmp /out/app; while :; do sleep 0.1; done"
    manifest, out = _post_stop_pod(tmp_path, script, "echo ran > /out/post")
    proc = rktd.start("run", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    uuid = rktd.wait_running(uuid_file, proc)
    _wait_file(out / "app", proc)
    app_pid = int((out / "app").read_text())
    assert _ppid(app_pid) == proc.pid
    stop = rktd("stop", "--force", uuid, timeout=60)
    assert stop.returncode == 0, stop.stderr
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert _gone(app_pid)
    assert rktd.status(uuid)["state"] == "exited"


def _gone(pid: int) -> bool:
    """Is `pid` dead (gone, or a zombie its new parent has not reaped yet)?"""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            state = next(
                li for li in Path(f"/proc/{pid}/status").read_text().splitlines() if li.startswith("State:")
            )
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state.split()[1] in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_fly_non_root_app_dies_with_a_killed_stage1(rktd: Rktd, tmp_path: Path) -> None:
    """SIGKILL of a fly stage1 that keeps the app below it (post-stop): the app, running as uid 5,
    dies too. Its parent-death signal is set again after the uid change, which clears it."""
    uuid_file = tmp_path / "uuid"
    script = "trap '' TERM; echo $$ > /out/app.tmp; mv /out/app.tmp /out/app; while :; do sleep 0.1; done"
    manifest, out = _post_stop_pod(tmp_path, script, "echo ran > /out/post")
    proc = rktd.start("run", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    rktd.wait_running(uuid_file, proc)
    _wait_file(out / "app", proc)
    app_pid = int((out / "app").read_text())
    assert _ppid(app_pid) == proc.pid
    proc.kill()
    proc.communicate(timeout=30)
    assert _gone(app_pid)
