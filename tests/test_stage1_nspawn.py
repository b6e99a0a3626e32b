"""Real pods under stage1 nspawn (and, where the semantics are shared, fly): busybox images built
by the test, imported into a per-test store, run with `rktd run` through real systemd-nspawn,
overlayfs and namespaces. Every test checks that no mount or process of its pods is left."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.aci import make_busybox_aci

ROOT = Path(__file__).resolve().parent.parent

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="pods need root")
needs_nspawn = pytest.mark.skipif(shutil.which("systemd-nspawn") is None, reason="systemd-nspawn absent")


def _mounts(marker: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return sorted(line.split()[4] for line in f if marker in line or "rktd-init" in line)


def _procs(marker: str) -> list[str]:
    """Processes of the test's pods: `marker` (the test's tmp dir) in their command line, or in the
    mount table of their own mount namespace (every pod mounts from its pod directory)."""
    own_ns = os.readlink("/proc/self/ns/mnt")
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ns = os.readlink(f"/proc/{pid}/ns/mnt")
            mine = marker in cmd or (ns != own_ns and marker in Path(f"/proc/{pid}/mountinfo").read_text())
        except OSError:
            continue
        if mine and cmd:
            out.append(f"{pid} {cmd}")
    return sorted(out)


class Rktd:
    """`rktd --dir=<tmp>` with a busybox image `example.com/busybox` in its store."""

    def __init__(self, tmp: Path, aci: Path) -> None:
        self.tmp = tmp
        self.dir = tmp / "data"
        from rktd_units.store import Store

        self.image = Store(self.dir).import_aci(aci)

    def argv(self, *args: str) -> list[str]:
        return [sys.executable, "-c", "from rktd_units.cli import main; main()", f"--dir={self.dir}", *args]

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_"))}
        env["PYTHONPATH"] = str(ROOT)
        env.update(extra or {})
        return env

    def __call__(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None) -> Any:
        return subprocess.run(
            self.argv(*args), capture_output=True, text=True, timeout=timeout, env=self.env(env)
        )

    def start(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env(env)
        )

    def status(self, ref: str) -> dict[str, Any]:
        proc = self("status", "--format=json", ref)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)  # type: ignore[no-any-return]

    def wait_running(self, uuid_file: Path, proc: subprocess.Popen[str], timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            if uuid_file.exists() and uuid_file.read_text().strip():
                uuid = uuid_file.read_text().strip()
                if self.status(uuid)["state"] == "running":
                    return uuid
            time.sleep(0.05)
        raise AssertionError("pod did not start")

    def wait_output(self, proc: subprocess.Popen[str], text: str, timeout: float = 20) -> str:
        """Read proc's stdout until a line contains `text`. A line that never comes would block
        readline() for ever: past `timeout` the process is killed, which ends the read."""
        assert proc.stdout is not None
        watchdog = threading.Timer(timeout, proc.kill)
        watchdog.start()
        seen = ""
        try:
            while True:
                line = proc.stdout.readline()
                seen += line
                if text in line:
                    return seen
                if not line:
                    break
        finally:
            watchdog.cancel()
        raise AssertionError(f"{text!r} not in output (within {timeout} s): {seen!r}")


@pytest.fixture(scope="session")
def busybox_aci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("aci") / "busybox.aci"
    return make_busybox_aci(path, app={"environment": [{"name": "FROM_IMAGE", "value": "yes"}]})


@pytest.fixture
def rktd(tmp_path: Path, busybox_aci: Path) -> Iterator[Rktd]:
    """A per-test store and pod dir; afterwards no mount and no process of the test's pods remains."""
    marker = str(tmp_path)
    mounts_before, procs_before = _mounts(marker), _procs(marker)
    r = Rktd(tmp_path, busybox_aci)
    yield r
    deadline = time.monotonic() + 5
    while _procs(marker) != procs_before and time.monotonic() < deadline:
        time.sleep(0.05)
    leftover = _procs(marker)
    for line in leftover:
        if line not in procs_before:
            os.kill(int(line.split()[0]), signal.SIGKILL)
    assert leftover == procs_before, "processes left behind"
    assert _mounts(marker) == mounts_before, "mounts left behind"


FLAVOURS = [pytest.param("nspawn", marks=needs_nspawn), "fly"]
pytestmark = [needs_root, pytest.mark.slow]
IMG = "example.com/busybox"


def socket_activated(rktd: Rktd, port: int, listen: list[str], *args: str) -> tuple[str, str]:
    """`rktd ARGS` behind `systemd-socket-activate --listen=127.0.0.1:PORT LISTEN…`: connect once (which
    starts the pod), then wait for it to end; its stdout and stderr."""
    proc = subprocess.Popen(
        ["systemd-socket-activate", f"--listen=127.0.0.1:{port}", *listen, *rktd.argv(*args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=rktd.env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        return proc.communicate(timeout=30)
    finally:
        proc.kill()


def run_sh(rktd: Rktd, flavour: str, script: str, *pre: str, app: tuple[str, ...] = ()) -> Any:
    net = ("--net=host",) if flavour == "nspawn" else ()
    return rktd("run", f"--stage1={flavour}", *net, *pre, IMG, *app, "--exec=/bin/sh", "--", "-c", script)


def app_lines(out: str, app: str = "busybox") -> list[str]:
    """What an app printed: nspawn's relay prefixes `app[NAME]: `, fly's app writes directly."""
    prefix = f"app[{app}]: "
    lines = out.splitlines()
    if any(line.startswith(prefix) for line in lines):
        return [line[len(prefix) :] for line in lines if line.startswith(prefix)]
    return lines


# -- exit codes, environment, user -----------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_exit_codes(rktd: Rktd, flavour: str) -> None:
    ok = run_sh(rktd, flavour, "echo hello")
    assert ok.returncode == 0, ok.stderr
    assert app_lines(ok.stdout) == ["hello"]
    assert run_sh(rktd, flavour, "exit 3").returncode == 3
    killed = run_sh(rktd, flavour, "kill -KILL $$")
    # nspawn's init reports a signal as a shell does (128 + 9); fly *is* the app, so it dies of it
    assert killed.returncode == (137 if flavour == "nspawn" else -signal.SIGKILL)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_environment(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    env_file = tmp_path / "env"
    env_file.write_text("FROM_FILE=f\n# comment\n")
    proc = run_sh(
        rktd,
        flavour,
        "echo $FROM_IMAGE $POD_WIDE $FROM_FILE $PER_APP $AC_APP_NAME $HOME; echo ${INHERITED:-none}",
        "--set-env=POD_WIDE=p",
        f"--set-env-file={env_file}",
        app=("--environment=PER_APP=a b",),
    )
    assert proc.returncode == 0, proc.stderr
    assert app_lines(proc.stdout) == ["yes p f a b busybox /root", "none"]
    inherited = rktd(
        "run", f"--stage1={flavour}", "--net=host", "--inherit-env", IMG, "--exec=/bin/sh", "--", "-c",
        "echo $INHERITED", env={"INHERITED": "from-host"},
    )  # fmt: skip
    assert app_lines(inherited.stdout) == ["from-host"], inherited.stderr


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_user_group_workdir(rktd: Rktd, flavour: str) -> None:
    proc = run_sh(
        rktd,
        flavour,
        "id; pwd; touch /root/x",
        app=("--user=1000", "--group=100", "--supplementary-gids=5,6", "--working-dir=/tmp"),
    )
    lines = app_lines(proc.stdout + proc.stderr)
    assert "uid=1000 gid=100 groups=5,6" in lines
    assert "/tmp" in lines
    assert proc.returncode == 1  # a non-root user cannot write root's home: the credentials are real


# -- filesystems -----------------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_volumes(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    rw, ro = tmp_path / "rw", tmp_path / "ro"
    rw.mkdir()
    ro.mkdir()
    (ro / "data").write_text("host data\n")
    proc = run_sh(
        rktd,
        flavour,
        "echo written > /rw/out; cat /ro/data; touch /ro/nope || echo ro-refused;"
        " stat -c '%a %u %g' /scratch",
        f"--volume=rw,kind=host,source={rw}",
        f"--volume=ro,kind=host,source={ro},readOnly=true",
        "--volume=scratch,kind=empty,mode=0700,uid=7,gid=8",
        app=(
            "--mount=volume=rw,target=/rw",
            "--mount=volume=ro,target=/ro",
            "--mount=volume=scratch,target=/scratch",
        ),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert app_lines(proc.stdout) == ["host data", "ro-refused", "700 7 8"]
    assert (rw / "out").read_text() == "written\n"
    assert not (ro / "nope").exists()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_rootfs_overlay_and_read_only(rktd: Rktd, flavour: str) -> None:
    store_tree = Path(rktd.image.path or "") / "rootfs"
    before = sorted(os.listdir(store_tree))
    proc = run_sh(rktd, flavour, "echo x > /etc/new && rm /bin/ls && echo changed")
    assert app_lines(proc.stdout) == ["changed"], proc.stderr
    assert sorted(os.listdir(store_tree)) == before  # writes went to the pod's upper dir
    assert (store_tree / "bin" / "ls").exists() and not (store_tree / "etc" / "new").exists()
    ro = run_sh(rktd, flavour, "touch /etc/new 2>&1 || echo refused", app=("--readonly-rootfs",))
    assert app_lines(ro.stdout)[-1] == "refused", ro.stdout + ro.stderr


def test_two_pods_share_the_image_tree(rktd: Rktd, tmp_path: Path) -> None:
    pods = []
    for i in range(2):
        uuid_file = tmp_path / f"uuid{i}"
        proc = rktd.start(
            "run", "--net=host", f"--uuid-file-save={uuid_file}", IMG, "--exec=/bin/sh", "--", "-c",
            "echo up; exec sleep 600",
        )  # fmt: skip
        pods.append((proc, rktd.wait_running(uuid_file, proc)))
    try:
        lowers = []
        for _, uuid in pods:
            init = rktd.status(uuid)["pid"]
            child = Path(f"/proc/{init}/task/{init}/children").read_text().split()[0]
            opts = [
                ln for ln in Path(f"/proc/{child}/mountinfo").read_text().splitlines() if " overlay " in ln
            ]
            assert opts, "the app's rootfs is an overlay"
            lowers.append(opts[0].split("lowerdir=")[1].split(",")[0])
        store_tree = str(Path(rktd.image.path or "") / "rootfs")
        assert lowers == [store_tree, store_tree]
        for _, uuid in pods:  # nothing of the image was copied into the pod
            pod_dir = rktd.dir / "pods" / "run" / uuid
            size = sum(p.stat().st_size for p in pod_dir.rglob("*") if p.is_file() and not p.is_symlink())
            assert size < 200_000
    finally:
        for proc, uuid in pods:
            assert rktd("stop", uuid).returncode == 0
            proc.communicate(timeout=30)


# -- multi-app pods ---------------------------------------------------------------------------------


@needs_nspawn
def test_multi_app_one_fails(rktd: Rktd, tmp_path: Path) -> None:
    start = time.monotonic()
    proc = rktd(
        "run", "--net=host", f"--uuid-file-save={tmp_path / 'uuid'}",
        IMG, "--name=sleeper", "--exec=/bin/sh", "--", "-c", "echo sleeping; exec sleep 600",
        "---", IMG, "--name=failer", "--exec=/bin/sh", "--", "-c", "sleep 0.5; echo failing; exit 5",
    )  # fmt: skip
    assert proc.returncode == 5, proc.stderr
    assert time.monotonic() - start < 20  # the sleeper was stopped, not waited for
    assert "app[sleeper]: sleeping" in proc.stdout and "app[failer]: failing" in proc.stdout
    statuses = rktd.status((tmp_path / "uuid").read_text().strip())["app_exit_statuses"]
    assert statuses == {"failer": 5, "sleeper": 128 + signal.SIGTERM}


@needs_nspawn
def test_pod_manifest_apps_share_network_and_ipc(rktd: Rktd, tmp_path: Path) -> None:
    hostdir = tmp_path / "shared"
    hostdir.mkdir()
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "a",
                "image": {"name": IMG, "id": rktd.image.id},
                "app": {
                    "exec": [
                        "/bin/sh",
                        "-c",
                        "(readlink /proc/self/ns/net; readlink /proc/self/ns/ipc) > /out/a",
                    ],
                    "user": "0",
                    "group": "0",
                    "eventHandlers": [
                        {"name": "pre-start", "exec": ["/bin/sh", "-c", "echo pre > /out/pre"]},
                        {"name": "post-stop", "exec": ["/bin/sh", "-c", "cat /out/a > /out/post"]},
                    ],
                    "mountPoints": [{"name": "out", "path": "/out"}],
                },
            },
            {
                "name": "b",
                "image": {"name": IMG},
                "app": {
                    "exec": [
                        "/bin/sh",
                        "-c",
                        "sleep 0.3; (readlink /proc/self/ns/net; readlink /proc/self/ns/ipc) > /out/b",
                    ],
                    "user": "0",
                    "group": "0",
                },
                "mounts": [{"volume": "out", "path": "/out"}],
            },
        ],
        "volumes": [{"name": "out", "kind": "host", "source": str(hostdir)}],
    }
    path = tmp_path / "twoapps.json"
    path.write_text(json.dumps(manifest))
    proc = rktd("run", "--net=none", f"--pod-manifest={path}")
    assert proc.returncode == 0, proc.stderr
    assert (hostdir / "a").read_text() == (hostdir / "b").read_text()
    assert (hostdir / "pre").read_text() == "pre\n"
    assert (hostdir / "post").read_text() == (hostdir / "a").read_text()  # post-stop ran after the app
    host_net = os.readlink("/proc/self/ns/net")
    assert host_net not in (hostdir / "a").read_text()  # --net=none: a private network namespace
    listing = json.loads(rktd("list", "--format=json").stdout)
    assert listing[0]["name"] == "twoapps" and [a["name"] for a in listing[0]["apps"]] == ["a", "b"]


# -- isolators ------------------------------------------------------------------------------------


def _memory_cgroup_writable() -> bool:
    return any(
        " - cgroup " in ln and "memory" in ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.skipif(
    not _memory_cgroup_writable(), reason="no cgroup v1 memory hierarchy: the unit enforces it"
)
def test_memory_limit(rktd: Rktd, flavour: str) -> None:
    hog = 'x=$(head -c 100000000 /dev/zero | tr "\\0" a); echo survived ${#x}'
    unlimited = run_sh(rktd, flavour, hog)
    assert app_lines(unlimited.stdout) == ["survived 100000000"], unlimited.stderr
    limited = run_sh(rktd, flavour, hog, app=("--memory=32M",))
    assert "survived" not in limited.stdout
    assert limited.returncode in (137, -signal.SIGKILL)  # the kernel's OOM killer, inside the limit
    uuids = [p["uuid"] for p in json.loads(rktd("list", "--format=json").stdout)]
    assert rktd("gc", "--grace-period=0s").returncode == 0
    assert not [p for u in uuids for p in Path("/sys/fs/cgroup/memory").rglob(f"rktd-{u}")]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_capabilities_and_no_new_privs(rktd: Rktd, flavour: str) -> None:
    proc = run_sh(
        rktd, flavour, "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status",
        app=("--cap-retain=CAP_CHOWN,CAP_KILL",),
    )  # fmt: skip
    lines = dict(line.split(":\t") for line in app_lines(proc.stdout))
    assert int(lines["CapBnd"], 16) == (1 << 0) | (1 << 5)  # exactly CAP_CHOWN and CAP_KILL


# -- stop and cleanup -----------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_stop_cleans_up(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    net = ["--net=host"] if flavour == "nspawn" else []
    proc = rktd.start(
        "run", f"--stage1={flavour}", *net, f"--uuid-file-save={uuid_file}", IMG, "--memory=64M",
        "--exec=/bin/sh", "--", "-c", "trap 'echo bye; exit 0' TERM; echo up; while :; do sleep 0.1; done",
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "up")
    assert [p for p in _procs(str(tmp_path)) if "sleep" in p], "the app runs inside the pod's root"
    stop = rktd("stop", uuid)
    assert stop.returncode == 0, stop.stderr
    out, _ = proc.communicate(timeout=30)
    assert "bye" in out  # the app got SIGTERM and ran its trap
    assert proc.returncode == 0
    assert rktd.status(uuid)["state"] == "exited"
    assert not list(Path("/sys/fs/cgroup").rglob(f"rktd-{uuid}"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_sigkill_of_stage1_leaves_nothing(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    net = ["--net=host"] if flavour == "nspawn" else []
    # nspawn: the pod's init and every app process die with stage1 (pid namespace + PDEATHSIG).
    # fly: stage1 *is* the app, so the test kills an app that has no children of its own.
    script = "echo up; sleep 600 & sleep 600" if flavour == "nspawn" else "echo up; exec sleep 600"
    proc = rktd.start(
        "run", f"--stage1={flavour}", *net, f"--uuid-file-save={uuid_file}", IMG,
        "--exec=/bin/sh", "--", "-c", script,
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "up")
    want, deadline = (2 if flavour == "nspawn" else 1), time.monotonic() + 5
    while True:  # "up" comes before the shell's children have exec'd sleep
        sleeps = [p for p in _procs(str(tmp_path)) if p.split(" ", 1)[1].startswith("sleep 600")]
        if len(sleeps) == want or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert len(sleeps) == want, sleeps
    os.kill(rktd.status(uuid)["pid"], signal.SIGKILL)
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 10
    while rktd.status(uuid)["state"] == "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert rktd.status(uuid)["state"] == "exited"
    gc = rktd("gc", "--grace-period=0s")
    assert gc.returncode == 0 and f"removed {uuid}" in gc.stdout, gc.stdout + gc.stderr
    assert not (rktd.dir / "pods" / "exited-garbage" / uuid).exists()


# -- journald, readiness, socket activation --------------------------------------------------------


def _parse_journal(datagram: bytes) -> dict[str, bytes]:
    fields: dict[str, bytes] = {}
    while datagram:
        line, _, rest = datagram.partition(b"\n")
        if b"=" in line:
            key, _, value = line.partition(b"=")
            fields[key.decode()] = value
            datagram = rest
        else:  # binary-safe form: KEY\n<le64 size><value>\n
            size = struct.unpack("<Q", rest[:8])[0]
            fields[line.decode()] = rest[8 : 8 + size]
            datagram = rest[8 + size + 1 :]
    return fields


@needs_nspawn
def test_journald_native_protocol(rktd: Rktd, tmp_path: Path) -> None:
    path = tmp_path / "journal.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
        journal.bind(str(path))
        proc = rktd(
            "run", "--net=host", "--name=logpod", f"--uuid-file-save={tmp_path / 'uuid'}",
            IMG, "--name=talker", "--exec=/bin/sh", "--", "-c", "echo out line; echo err line >&2",
            env={"RKTD_JOURNAL_SOCKET": str(path)},
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        journal.settimeout(5)
        entries = [_parse_journal(journal.recv(65536)) for _ in range(2)]
    uuid = (tmp_path / "uuid").read_text().strip()
    by_message = {e["MESSAGE"]: e for e in entries}
    assert set(by_message) == {b"out line", b"err line"}
    for entry in entries:
        assert entry["SYSLOG_IDENTIFIER"] == b"talker"
        assert entry["RKTD_APP"] == b"talker" and entry["RKTD_POD"] == b"logpod"
        assert entry["RKTD_UUID"] == uuid.encode()
    assert by_message[b"err line"]["PRIORITY"] == b"3" and by_message[b"out line"]["PRIORITY"] == b"6"
    assert "out line" not in proc.stdout  # journald got it instead


@needs_nspawn
def test_notify_ready_reaches_the_manager(rktd: Rktd, tmp_path: Path) -> None:
    path = tmp_path / "notify.socket"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(path))
        notify.settimeout(20)
        proc = rktd.start(
            "run", "--net=host", IMG, "--exec=/bin/sh", "--", "-c", "echo up; exec sleep 600",
            env={"NOTIFY_SOCKET": str(path)},
        )  # fmt: skip
        try:
            messages = b""
            while b"READY=1" not in messages:
                messages += notify.recv(4096) + b"\n"
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.communicate(timeout=30)
    assert b"READY=1" in messages


@needs_nspawn
@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd-socket-activate absent")
def test_socket_activation(rktd: Rktd, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "idle",
                "image": {"name": IMG},
                "app": {"exec": ["/bin/sh", "-c", "echo idle $LISTEN_FDS"], "user": "0", "group": "0"},
            },
            {
                "name": "web",
                "image": {"name": IMG},
                "app": {
                    "exec": [
                        "/bin/sh",
                        "-c",
                        'echo "fds=$LISTEN_FDS pidok=$([ "$LISTEN_PID" = $$ ] && echo yes)'
                        ' names=$LISTEN_FDNAMES"; ls -l /proc/self/fd/3',
                    ],
                    "user": "0",
                    "group": "0",
                    "ports": [{"name": "http", "protocol": "tcp", "port": 80, "socketActivated": True}],
                },
            },
        ],
        "ports": [{"name": "http", "hostPort": port}],
    }
    path = tmp_path / "web.json"
    path.write_text(json.dumps(manifest))
    out, err = socket_activated(rktd, port, ["--fdname=http"], "run", "--net=host", f"--pod-manifest={path}")
    assert "app[web]: fds=1 pidok=yes names=http" in out, out + err
    assert "socket:[" in out
    assert "app[idle]: idle" in out and "idle 1" not in out  # only the declaring app gets the fd


def _cpu_cgroup_writable() -> bool:
    return any(
        " - cgroup " in ln and ",cpu" in ln for ln in Path("/proc/self/mountinfo").read_text().splitlines()
    )


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.skipif(not _cpu_cgroup_writable(), reason="no cgroup v1 cpu hierarchy: the unit enforces it")
def test_cpu_limit_is_a_cfs_quota(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    net = ["--net=host"] if flavour == "nspawn" else []
    proc = rktd.start(
        "run", f"--stage1={flavour}", *net, f"--uuid-file-save={uuid_file}", IMG, "--cpu=250m",
        "--exec=/bin/sh", "--", "-c", "echo up; exec sleep 600",
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "up")
    try:
        (app_cg,) = Path("/sys/fs/cgroup/cpu").rglob(f"rktd-{uuid}/busybox")
        assert (app_cg / "cpu.cfs_quota_us").read_text().strip() == "25000"
        assert (app_cg / "cpu.cfs_period_us").read_text().strip() == "100000"
        assert (app_cg / "cgroup.procs").read_text().split(), "the app runs in its cgroup"
    finally:
        assert rktd("stop", uuid).returncode == 0
        proc.communicate(timeout=30)
    assert not list(Path("/sys/fs/cgroup/cpu").rglob(f"rktd-{uuid}"))


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_enter_a_running_app(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    net = ["--net=host"] if flavour == "nspawn" else []
    proc = rktd.start(
        "run", f"--stage1={flavour}", *net, f"--uuid-file-save={uuid_file}", IMG,
        "--exec=/bin/sh", "--", "-c", "echo inside > /tmp/marker; echo up; exec sleep 600",
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "up")
    try:
        entered = rktd("enter", uuid, "/bin/sh", "-c", "cat /tmp/marker; cat /proc/1/cmdline")
        assert entered.returncode == 0, entered.stderr
        lines = entered.stdout.split("\n", 1)
        assert lines[0] == "inside"  # the app's own rootfs (its overlay), not the host's /tmp
        if flavour == "nspawn":
            assert lines[1].startswith("/rktd/init\0")  # the pod's pid namespace: PID 1 is rktd-init
        missing = rktd("enter", uuid, "/no/such/tool")
        assert missing.returncode == 127
        want = "rktd: enter: /no/such/tool: No such file or directory"
        assert missing.stderr.strip() == want, missing.stderr
    finally:
        assert rktd("stop", uuid).returncode == 0
        proc.communicate(timeout=30)


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_manifest_isolators(rktd: Rktd, flavour: str, tmp_path: Path) -> None:
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "iso",
                "image": {"name": IMG},
                "app": {
                    "exec": ["/bin/sh", "-c", "grep -E '^(CapBnd|NoNewPrivs)' /proc/self/status"],
                    "user": "0",
                    "group": "0",
                    "isolators": [
                        {"name": "os/linux/no-new-privileges", "value": True},
                        {"name": "os/linux/capabilities-remove-set", "value": {"set": ["CAP_SYS_ADMIN"]}},
                    ],
                },
            }
        ],
        "annotations": [{"name": "rktd/stage1", "value": flavour}],
    }
    path = tmp_path / "iso.json"
    path.write_text(json.dumps(manifest))
    proc = rktd("run", "--net=host" if flavour == "nspawn" else "--net=default", f"--pod-manifest={path}")
    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(":\t") for line in app_lines(proc.stdout, "iso"))
    assert lines["NoNewPrivs"] == "1"
    caps = int(lines["CapBnd"], 16)
    assert caps & (1 << 0) and not caps & (1 << 21)  # CAP_CHOWN kept, CAP_SYS_ADMIN (21) removed


@needs_nspawn
def test_sysctls_in_the_pods_network_namespace(rktd: Rktd, tmp_path: Path) -> None:
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "a",
                "image": {"name": IMG},
                "app": {
                    "exec": ["/bin/cat", "/proc/sys/net/ipv4/tcp_fin_timeout"],
                    "user": "0",
                    "group": "0",
                },
            }
        ],
        "isolators": [{"name": "os/unix/sysctl", "value": {"net.ipv4.tcp_fin_timeout": "17"}}],
    }
    path = tmp_path / "sys.json"
    path.write_text(json.dumps(manifest))
    host_value = Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text()
    proc = rktd("run", "--net=none", f"--pod-manifest={path}")
    assert proc.returncode == 0, proc.stderr
    assert app_lines(proc.stdout, "a") == ["17"]
    assert Path("/proc/sys/net/ipv4/tcp_fin_timeout").read_text() == host_value  # the host's is untouched
    refused = rktd("run", "--net=host", f"--pod-manifest={path}")
    assert refused.returncode == 254 and "need a pod network namespace" in refused.stderr


@needs_nspawn
@pytest.mark.skipif(not Path("/usr/lib/cni/ptp").exists(), reason="CNI plugins absent")
def test_default_network_and_its_teardown(rktd: Rktd, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    proc = rktd(
        "run", "--net=default", "--dns=192.0.2.53", f"--uuid-file-save={uuid_file}", IMG,
        "--exec=/bin/sh", "--", "-c", "ip -4 -o addr show dev eth0; cat /etc/resolv.conf",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = "\n".join(app_lines(proc.stdout))
    assert " 172.16.28." in out and "nameserver 192.0.2.53" in out
    uuid = uuid_file.read_text().strip()
    assert Path(f"/run/netns/rktd-{uuid}").exists()  # kept until the pod is removed (ExecStopPost=rktd rm)
    assert rktd("rm", f"--uuid-file={uuid_file}").returncode == 0
    assert not Path(f"/run/netns/rktd-{uuid}").exists()


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_dns_flags_without_a_cni_network(rktd: Rktd, flavour: str) -> None:
    """--dns/--dns-search/--hosts-entry (as the generator passes them) work on host and none too."""
    net = "--net=none" if flavour == "nspawn" else "--net=host"
    proc = rktd(
        "run", f"--stage1={flavour}", net, "--dns=192.0.2.1", "--dns-search=example.org",
        "--hosts-entry=192.0.2.9=db", IMG, "--exec=/bin/sh", "--", "-c", "cat /etc/resolv.conf /etc/hosts",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = app_lines(proc.stdout)
    assert "nameserver 192.0.2.1" in lines and "search example.org" in lines
    assert "192.0.2.9\tdb" in lines
    assert rktd("gc", "--grace-period=0s").returncode == 0


@needs_nspawn
@pytest.mark.skipif(not Path("/usr/lib/cni/portmap").exists(), reason="CNI plugins absent")
def test_port_forwarding_and_stop_undoes_it(rktd: Rktd, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    www = tmp_path / "www"
    www.mkdir()
    (www / "index.html").write_text("hello from the pod\n")
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "web",
                "image": {"name": IMG},
                "app": {
                    "exec": ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/www"],
                    "user": "0",
                    "group": "0",
                    "ports": [{"name": "http", "protocol": "tcp", "port": 80}],
                },
                "mounts": [{"volume": "www", "path": "/www"}],
            }
        ],
        "volumes": [{"name": "www", "kind": "host", "source": str(www), "readOnly": True}],
        "ports": [{"name": "http", "hostPort": port}],
    }
    path = tmp_path / "web.json"
    path.write_text(json.dumps(manifest))
    uuid_file = tmp_path / "uuid"
    proc = rktd.start("run", "--net=default", f"--uuid-file-save={uuid_file}", f"--pod-manifest={path}")
    uuid = rktd.wait_running(uuid_file, proc)
    try:
        deadline, body = time.monotonic() + 15, ""
        while time.monotonic() < deadline and "hello" not in body:
            with socket.socket() as c:
                try:
                    c.connect(("127.0.0.1", port))
                    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
                    body = c.recv(4096).decode(errors="replace")
                except OSError:
                    time.sleep(0.1)
        assert "hello from the pod" in body
        info = rktd.status(uuid)  # status shows the CNI address, and the host end of the veth
        (itf,) = info["interfaces"]
        assert itf["ifname"] == "eth0" and itf["addresses"][0].startswith("172.16.28.")
        assert itf["host_ifname"] and Path(f"/sys/class/net/{itf['host_ifname']}").exists()
    finally:
        assert rktd("stop", uuid).returncode == 0
        proc.communicate(timeout=30)
    rules = subprocess.run(["iptables", "-t", "nat", "-S"], capture_output=True, text=True).stdout
    assert f"--dport {port} " not in rules and f"--dport {port}\n" not in rules  # DNAT removed
    assert not Path(f"/run/netns/rktd-{uuid}").exists()
