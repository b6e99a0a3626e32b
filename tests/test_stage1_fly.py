"""stage1 fly: the app *is* stage1 (exec), chrooted in a private mount namespace on the host network.
(Exit codes, environment, user, volumes, rootfs, memory, stop and SIGKILL are shared with nspawn
and run for both flavours in test_stage1_nspawn.py.)"""

from __future__ import annotations

import json
import os
import shutil
import socket
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
    out = tmp_path / "out"
    out.mkdir()
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "tool",
                "image": {"name": IMG},
                "app": {
                    "exec": ["/bin/sh", "-c", "cat /out/pre; id -u > /out/uid"],
                    "user": "5",
                    "group": "5",
                    "eventHandlers": [
                        {"name": "pre-start", "exec": ["/bin/sh", "-c", "echo pre > /out/pre"]}
                    ],
                },
                "mounts": [{"volume": "out", "path": "/out"}],
            }
        ],
        "volumes": [{"name": "out", "kind": "host", "source": str(out)}],
        "annotations": [{"name": "rktd/stage1", "value": "fly"}],
    }
    os.chmod(out, 0o777)
    path = tmp_path / "tool.json"
    path.write_text(json.dumps(manifest))
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
