"""The pod's init in C (stage1-init/, its map at the top of rktd-init.c): its config parser fed bad and
random configs straight, and real nspawn pods showing what only it decides (the process tree, sd_notify
gating, the API file systems under --insecure-options=paths)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rktd_units.errors import PodError
from rktd_units.stage1.init import DEFAULT_APP_CAPS
from rktd_units.stage1.nspawn import find_init, init_config
from tests.helpers.aci import make_busybox_aci
from tests.test_stage1_nspawn import (
    IMG,
    Rktd,
    _parse_journal,
    app_lines,
    busybox_aci,
    needs_nspawn,
    needs_root,
    rktd,
)

__all__ = ["busybox_aci", "rktd"]
ROOT = Path(__file__).resolve().parent.parent
REFUSED = 254


@pytest.fixture(scope="module")
def init() -> str:
    return find_init()


def cfg(**pod: Any) -> dict[str, Any]:
    app = {
        "name": "web", "exec": ["/bin/sh", "-c", "echo hi"], "env": [["PATH", "/bin"], ["A", "b=c"]],
        "uid": 0, "gid": 0, "gids": [10, 20], "workdir": "/", "caps_retain": None, "caps_remove": [],
        "pre_start": [["/bin/true"], ["/bin/echo", "x"]], "post_stop": [["/bin/true"]],
        "seccomp": {"mode": "retain", "set": ["read", "write"], "errno": 1}, "oom_score_adj": 5,
        "listen_fd_indexes": [0], "listen_fd_names": ["http"], "cgroups": {"memory": "web"},
        "cgroup_v2": {"memory.max": "1000000"}, "notify": True,
    }  # fmt: skip
    return {"uuid": "u-1", "name": "pod", "stop_timeout": 3, "sysctls": {"net.x": "1"}, "apps": [app], **pod}


def check(init: str, data: bytes, tmp_path: Path, *, dry: bool = True) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "init.cfg"
    path.write_bytes(data)
    argv = [init, "--check", str(path)] if dry else [init, str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)


def assert_refused(proc: subprocess.CompletedProcess[str], what: str = "") -> None:
    assert proc.returncode == REFUSED, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("rktd-init: "), proc.stderr
    assert what in lines[0] and proc.stdout == ""


# -- the config ---------------------------------------------------------------------------------------


def test_the_written_config_is_accepted(init: str, tmp_path: Path) -> None:
    proc = check(init, init_config(cfg()), tmp_path)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_every_truncation_is_refused(init: str, tmp_path: Path) -> None:
    data = init_config(cfg())
    for size in range(len(data)):
        assert_refused(check(init, data[:size], tmp_path))


BAD = {
    "not a rktd-init config": b"hello\0world\0end\0\0",
    "truncated (no end record)": b"rktd-init-config\x001\0uuid\0u\0",
    "data after the end record": b"rktd-init-config\x001\0uuid\0u\0end\0\0x",
    "unknown key bogus": b"rktd-init-config\x001\0uuid\0u\0bogus\0x\0end\0\0",
    "outside an app": b"rktd-init-config\x001\0uuid\0u\0uid\x000\0end\0\0",
    "app: bad name": b"rktd-init-config\x001\0uuid\0u\0app\0../x\0end\0\0",
    "no exec": b"rktd-init-config\x001\0uuid\0u\0app\0a\0uid\x000\0gid\x000\0end\0\0",
    "not a number": b"rktd-init-config\x001\0uuid\0u\0app\0a\0uid\0-x\0end\0\0",
    "exec: expected argument 2 of 2": (
        b"rktd-init-config\x001\0uuid\0u\0app\0a\0exec\x002\0arg\0/bin/sh\0uid\x000\0end\0\0"
    ),
    "stop_timeout": b"rktd-init-config\x001\0uuid\0u\0stop_timeout\0soon\0end\0\0",
    "no uuid": b"rktd-init-config\x001\0end\0\0",
    "empty key": b"rktd-init-config\x001\0\0x\0end\0\0",
}


@pytest.mark.parametrize("what", sorted(BAD))
def test_malformed_configs_are_refused_in_one_line(init: str, tmp_path: Path, what: str) -> None:
    assert_refused(check(init, BAD[what], tmp_path), what)


@pytest.mark.parametrize("value", [" 5", "0x10", "+1", "-1", "inf", "nan", "1e10", "5s", ""])
def test_a_stop_timeout_is_plain_decimal_seconds(init: str, tmp_path: Path, value: str) -> None:
    """strtod alone took blanks, a sign and hex; what init_config writes (repr of a float) still passes."""
    good = init_config(cfg())
    assert b"\0stop_timeout\x003.0\0" in good
    for ok in ("0.0", "1e-05", "9999999.0"):
        accepted = check(init, good.replace(b"\x003.0\0", f"\0{ok}\0".encode(), 1), tmp_path)
        assert accepted.returncode == 0, (ok, accepted.stderr)
    bad = good.replace(b"\x003.0\0", f"\0{value}\0".encode(), 1)
    assert_refused(check(init, bad, tmp_path), "stop_timeout: not a number of seconds")


@needs_root
def test_the_init_itself_refuses_before_doing_anything(init: str, tmp_path: Path) -> None:
    """Run for real (not --check): the bad config is refused before any mount, fork or signal."""
    for what in ("truncated (no end record)", "app: bad name"):
        assert_refused(check(init, BAD[what], tmp_path, dry=False), what)
    missing = subprocess.run([init, str(tmp_path / "absent")], capture_output=True, text=True, timeout=30)
    assert_refused(missing, "No such file or directory")


def test_a_nul_byte_in_a_value_is_refused_by_stage1() -> None:
    bad = cfg()
    bad["apps"][0]["env"] = [["X", "a\0b"]]
    with pytest.raises(PodError, match="app web: env: contains a NUL byte"):
        init_config(bad)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=400))
@example(b"")
@example(b"rktd-init-config\x001\0")
def test_random_bytes_never_crash_the_parser(init: str, tmp_path: Path, data: bytes) -> None:
    proc = check(init, data, tmp_path)
    assert proc.returncode == REFUSED, (data, proc.returncode, proc.stderr)  # never a signal
    assert len(proc.stderr.splitlines()) == 1


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_mutated_configs_never_crash_the_parser(init: str, tmp_path: Path, data: st.DataObject) -> None:
    good = bytearray(init_config(cfg()))
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(0, len(good) - 1))
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "nul"]))
        if kind == "flip":
            good[at] ^= data.draw(st.integers(1, 255))
        elif kind == "cut":
            del good[at : at + data.draw(st.integers(1, 20))]
        elif kind == "insert":
            good[at:at] = data.draw(st.binary(min_size=1, max_size=20))
        else:
            good[at] = 0
        if not good:
            good = bytearray(b"x")
    proc = check(init, bytes(good), tmp_path)
    assert proc.returncode in (0, REFUSED), (bytes(good), proc.returncode, proc.stderr)
    assert len(proc.stderr.splitlines()) == (0 if proc.returncode == 0 else 1), proc.stderr


def test_the_default_capabilities_agree() -> None:
    """The C init's default app set is DEFAULT_APP_CAPS (which enter and the stage1 checks use)."""
    source = (ROOT / "stage1-init" / "confine.c").read_text()
    block = source.split("DEFAULT_APP_CAPS[] = {", 1)[1].split("};", 1)[0]
    assert sorted(c.strip().strip('"') for c in block.split(",") if c.strip()) == sorted(DEFAULT_APP_CAPS)


def test_the_development_build_is_not_stale(init: str) -> None:
    """Tests run the C init found as stage1 finds it: a source-tree build older than its source would
    test yesterday's init (rebuild: meson compile -C build/meson rktd-init). Every source counts: each
    .c file and the header they share."""
    sources = sorted((ROOT / "stage1-init").glob("*.[ch]"))
    assert ROOT / "stage1-init" / "rktd-init.h" in sources and len(sources) > 2
    if Path(init).resolve() == (ROOT / "build" / "meson" / "rktd-init").resolve():
        newest = max(sources, key=lambda p: p.stat().st_mtime)
        assert os.stat(init).st_mtime >= newest.stat().st_mtime, (
            f"stale: {newest.relative_to(ROOT)} is newer: meson compile -C build/meson rktd-init"
        )


def test_meson_builds_every_source_of_the_init() -> None:
    """The executable's sources in meson.build are the .c files in stage1-init/: one left out would make
    a link error in the packages only, or the staleness check above watch a file that is not built."""
    build = (ROOT / "meson.build").read_text()
    block = build.split("executable(\n  'rktd-init',", 1)[1].split("dependencies:", 1)[0]
    listed = sorted(line.strip().strip("',") for line in block.splitlines() if ".c'" in line)
    on_disk = sorted(f"stage1-init/{p.name}" for p in (ROOT / "stage1-init").glob("*.c"))
    assert "stage1-init/rktd-init.c" in listed and listed == on_disk


def test_a_missing_init_is_reported_with_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rktd_units.stage1 import nspawn

    monkeypatch.setenv("RKTD_STAGE1_INIT", str(tmp_path / "nowhere"))
    with pytest.raises(PodError, match=r"RKTD_STAGE1_INIT=.*nowhere: not an executable file"):
        find_init()
    monkeypatch.delenv("RKTD_STAGE1_INIT")
    monkeypatch.setattr(nspawn, "INSTALLED_INIT", str(tmp_path / "libexec" / "rktd-init"))
    monkeypatch.setattr(nspawn, "SOURCE_TREE", tmp_path)
    (tmp_path / "meson.build").touch()
    with pytest.raises(PodError) as refused:
        find_init()
    assert "meson compile -C build/meson rktd-init" in str(refused.value.hint)
    built = tmp_path / "build" / "meson" / "rktd-init"
    built.parent.mkdir(parents=True)
    built.write_bytes(b"")
    built.chmod(0o755)
    assert find_init() == str(built)


# -- real pods ----------------------------------------------------------------------------------------

NOTIFY_C = r"""
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    if (argc != 2 || !path || strlen(path) >= sizeof sa.sun_path) return 2;
    strcpy(sa.sun_path, path);
    if (path[0] == '@') sa.sun_path[0] = 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    socklen_t len = offsetof(struct sockaddr_un, sun_path) + strlen(path);
    return sendto(fd, argv[1], strlen(argv[1]), 0, (struct sockaddr *)&sa, len) < 0;
}
"""


@pytest.fixture
def notifier(rktd: Rktd, tmp_path: Path) -> str:
    """An image `example.com/notifier` that supports sd_notify, with a static `/notify MESSAGE`."""
    source = tmp_path / "notify.c"
    source.write_text(NOTIFY_C)
    binary = tmp_path / "notify"
    built = subprocess.run(["gcc", "-static", "-O", "-o", binary, source], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    aci = make_busybox_aci(
        tmp_path / "notifier.aci", "example.com/notifier",
        annotations={"appc.io/executor/supports-systemd-notify": "true"},
        extra_files={"notify": binary.read_bytes()},
    )  # fmt: skip
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    return "example.com/notifier"


def _ready_sent(manager: socket.socket) -> bool:
    """Has READY=1 reached the manager (nspawn also sends it STATUS= and X_NSPAWN_LEADER_PID=)?"""
    lines: list[bytes] = []
    for _ in range(100):
        try:
            lines += manager.recv(4096).split(b"\n")
        except BlockingIOError:
            break
    return b"READY=1" in lines


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        for task in os.listdir(f"/proc/{p}/task"):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{task}/children").read_text().split()]
    return out


@needs_root
@needs_nspawn
def test_an_idle_pod_runs_no_python(rktd: Rktd, init: str, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    proc = rktd.start(
        "run", "--net=host", f"--uuid-file-save={uuid_file}", IMG, "--exec=/bin/sh", "--", "-c",
        "echo up; exec sleep 600",
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "up")
    try:
        nspawn = int(rktd.status(uuid)["pid"])
        [pod_init] = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
        assert os.path.samefile(f"/proc/{pod_init}/exe", init)  # PID 1 of the pod is rktd-init
        tree = _descendants(nspawn)
        exes = {os.path.basename(os.readlink(f"/proc/{p}/exe")) for p in tree}
        assert len(tree) == 3 and not any(e.startswith("python") for e in exes), exes
        status = Path(f"/proc/{pod_init}/status").read_text()
        assert "\nSigBlk:\t0000000000014003\n" in status  # TERM, INT, HUP and CHLD go to its signalfd
    finally:
        assert rktd("stop", uuid).returncode == 0
        proc.communicate(timeout=30)


@needs_root
@needs_nspawn
def test_ready_waits_for_every_notify_app(rktd: Rktd, notifier: str, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    gate.mkdir()
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "manager.sock"))
    manager.setblocking(False)
    script = (
        "chmod 755 /notify; /notify 'STATUS=warming up'; echo waiting; "
        "while [ ! -e /gate/go ]; do sleep 0.05; done; "
        "/notify \"$(printf 'STATUS=serving\\nREADY=1')\"; exec sleep 600"
    )
    proc = rktd.start(
        "--insecure-options=image", "run", "--net=host", f"--volume=gate,kind=host,source={gate}", notifier,
        "--mount=volume=gate,target=/gate", "--exec=/bin/sh", "--", "-c", script,
        IMG, "--exec=/bin/sh", "--", "-c", "echo plain; exec sleep 600",
        env={"NOTIFY_SOCKET": str(tmp_path / "manager.sock")},
    )  # fmt: skip
    try:
        seen = rktd.wait_output(proc, "app[notifier]: waiting")
        # An init sending READY=1 too early would send it before it relays any output: none came.
        assert not _ready_sent(manager)
        (gate / "go").touch()
        manager.settimeout(20)
        messages = b""
        while b"READY=1" not in messages.split(b"\n"):
            messages += manager.recv(4096) + b"\n"  # a timeout ends the test
        assert b"STATUS=serving" not in messages, seen  # the app's own messages stay in the pod
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
        manager.close()


@needs_root
@needs_nspawn
def test_notify_from_outside_the_pod_is_ignored(rktd: Rktd, notifier: str, tmp_path: Path) -> None:
    """A host process that found the app's socket name (in /proc/net/unix) cannot make the pod ready:
    its pid reads 0 in the pod's PID namespace."""
    gate = tmp_path / "gate"
    gate.mkdir()
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "manager.sock"))
    manager.setblocking(False)
    proc = rktd.start(
        "--insecure-options=image", "run", "--net=host", f"--volume=gate,kind=host,source={gate}", notifier,
        "--mount=volume=gate,target=/gate", "--exec=/bin/sh", "--", "-c",
        'echo "name $NOTIFY_SOCKET"; while [ ! -e /gate/go ]; do sleep 0.05; done; echo done',
        env={"NOTIFY_SOCKET": str(tmp_path / "manager.sock")},
    )  # fmt: skip
    try:
        seen = rktd.wait_output(proc, "app[notifier]: name @rktd-notify-")
        name = seen.split("app[notifier]: name @", 1)[1].split("\n", 1)[0]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as outsider:
            outsider.sendto(b"READY=1", "\0" + name)  # queued before the app ends
        (gate / "go").touch()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0 and "app[notifier]: done" in out, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert not _ready_sent(manager)
    manager.close()


@needs_root
@needs_nspawn
@pytest.mark.parametrize("insecure", [False, True])
def test_insecure_paths_makes_the_api_file_systems_writable(rktd: Rktd, insecure: bool) -> None:
    """kernel/msgmax belongs to the pod's own IPC namespace: writable only with --insecure-options=paths
    (and /sys stays read-only without it)."""
    host = Path("/proc/sys/kernel/msgmax").read_text()
    script = (
        "echo 12345 > /proc/sys/kernel/msgmax 2>/dev/null && echo proc-rw; cat /proc/sys/kernel/msgmax; "
        "grep -E ' /(sys|proc/sys) ' /proc/self/mounts | cut -d' ' -f2,4 | cut -d, -f1"
    )
    options = "--insecure-options=image,paths" if insecure else "--insecure-options=image"
    proc = rktd(options, "run", "--net=none", IMG, "--exec=/bin/sh", "--", "-c", script)
    assert proc.returncode == 0, proc.stderr
    lines = app_lines(proc.stdout)
    mounts = dict(line.split(" ") for line in lines[-2:] if " " in line)
    if insecure:
        assert lines[:2] == ["proc-rw", "12345"], lines
        assert mounts.get("/sys") == "rw", lines
    else:
        assert "proc-rw" not in lines and lines[0] == host.strip(), lines
        assert mounts.get("/sys") == "ro" and mounts.get("/proc/sys") == "ro", lines
    assert Path("/proc/sys/kernel/msgmax").read_text() == host  # the host's IPC namespace is untouched


@needs_root
@needs_nspawn
def test_an_app_ignoring_sigterm_is_killed_after_the_stop_timeout(rktd: Rktd, tmp_path: Path) -> None:
    """`rktd/stop-timeout` seconds after SIGTERM the init sends SIGKILL; a stopped pod ends with 0 and
    the app's status file says 137 (128 + SIGKILL)."""
    script = "trap '' TERM; echo up; while :; do sleep 1; done"
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "stubborn",
                "image": {"name": IMG},
                "app": {"exec": ["/bin/sh", "-c", script], "user": "0", "group": "0"},
            }
        ],
        "annotations": [{"name": "rktd/stop-timeout", "value": "1"}],
    }
    path = tmp_path / "stubborn.json"
    path.write_text(json.dumps(manifest))
    uuid_file = tmp_path / "uuid"
    proc = rktd.start("run", "--net=host", f"--uuid-file-save={uuid_file}", f"--pod-manifest={path}")
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "app[stubborn]: up")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    [pod] = (rktd.dir / "pods").glob(f"*/{uuid}")
    assert (pod / "status" / "stubborn").read_text() == "137\n"


@needs_root
@needs_nspawn
def test_exec_searches_the_apps_path_and_reports_a_missing_program(rktd: Rktd) -> None:
    found = rktd("run", "--net=host", IMG, "--exec=sh", "--", "-c", "echo found")
    assert found.returncode == 0 and app_lines(found.stdout) == ["found"], found.stderr
    missing = rktd("run", "--net=host", IMG, "--exec=/nonexistent")
    assert missing.returncode == 127, missing.stderr
    assert "rktd-init: busybox: /nonexistent: exec /nonexistent: No such file or directory" in missing.stderr
    unset = rktd("run", "--net=host", "--set-env=PATH=/nowhere", IMG, "--exec=sh")
    assert unset.returncode == 127 and "exec sh: No such file or directory" in unset.stderr, unset.stderr
    # A newline (or escape) in the program's name cannot split or colour the init's one-line error.
    odd = rktd("run", "--net=host", IMG, "--exec=/no\nsuch\x1b[31m")
    assert odd.returncode == 127, odd.stderr
    lines = [line for line in odd.stderr.splitlines() if "No such file" in line]
    want = "rktd-init: busybox: /no?such?[31m: exec /no?such?[31m: No such file or directory"
    assert lines == [f"app[busybox]: {want}"], odd.stderr


# -- hostile apps: what they send the init, and what they leave behind ------------------------------


def _manifest(tmp_path: Path, script: str, handlers: dict[str, str], stop_timeout: str = "1") -> Path:
    """A one-app pod `a` running `script`, with the given event handlers (name -> shell script)."""
    app: dict[str, Any] = {"exec": ["/bin/sh", "-c", script], "user": "0", "group": "0"}
    app["eventHandlers"] = [{"name": n, "exec": ["/bin/sh", "-c", h]} for n, h in handlers.items()]
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [{"name": "a", "image": {"name": IMG}, "app": app}],
        "annotations": [{"name": "rktd/stop-timeout", "value": stop_timeout}],
    }
    path = tmp_path / "pod.json"
    path.write_text(json.dumps(manifest))
    return path


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM to stage1, then its output; a pod that never ends fails the test (TimeoutExpired)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise


@needs_root
@needs_nspawn
def test_a_process_left_writing_does_not_keep_the_pod(rktd: Rktd) -> None:
    """The app ended; a background child it left writes forever. The init relays its output for a
    bounded time, then ends the pod (the child dies with the pod's PID 1); it used to wait forever."""
    script = "(while :; do echo left; sleep 0.1; done) & echo main; exit 0"
    proc = rktd("run", "--net=host", IMG, "--exec=/bin/sh", "--", "-c", script, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = app_lines(proc.stdout)
    assert "main" in lines and "left" in lines, lines
    assert "rktd-init: output still open 2 s after the apps ended" in proc.stderr


@needs_root
@needs_nspawn
def test_a_hanging_post_stop_handler_is_killed_at_the_stop_timeout(rktd: Rktd, tmp_path: Path) -> None:
    """The init used to wait for a post-stop handler deaf to stop signals: one that hung kept the pod
    for ever. Now a stop still works: the handler is killed when the stop timeout has passed."""
    hang = "trap '' TERM; echo hanging; while :; do sleep 1; done"
    manifest = _manifest(tmp_path, "echo up; exit 0", {"post-stop": hang})
    uuid_file = tmp_path / "uuid"
    proc = rktd.start("run", "--net=host", f"--uuid-file-save={uuid_file}", f"--pod-manifest={manifest}")
    uuid = rktd.wait_running(uuid_file, proc)
    rktd.wait_output(proc, "hanging")  # the app ended and its handler runs
    _, err = _stop(proc)
    assert proc.returncode == 0, err
    assert "rktd-init: a: post_stop handler /bin/sh killed: the stop timeout passed" in err
    [pod] = (rktd.dir / "pods").glob(f"*/{uuid}")
    assert (pod / "status" / "a").read_text() == "0\n"


@needs_root
@needs_nspawn
def test_a_pod_stopped_in_its_pre_start_handler_ends_without_starting(rktd: Rktd, tmp_path: Path) -> None:
    """A stop during a pre-start handler sends it SIGTERM and the app never starts (the init used
    to wait for the handler, however long, before hearing the stop)."""
    manifest = _manifest(tmp_path, "echo app-started", {"pre-start": "echo pre; exec sleep 600"}, "30")
    proc = rktd.start("run", "--net=host", f"--pod-manifest={manifest}")
    rktd.wait_output(proc, "pre")
    out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert "app-started" not in out and "failed" not in err, (out, err)


@needs_root
@needs_nspawn
def test_a_stop_timeout_of_months_still_stops(rktd: Rktd, tmp_path: Path) -> None:
    """The longest stop timeout an annotation allows (9999999 s) overflowed the init's poll timeout
    in milliseconds (undefined behaviour, caught by -fsanitize=float-cast-overflow)."""
    manifest = _manifest(tmp_path, "echo up; exec sleep 600", {}, "9999999")
    proc = rktd.start("run", "--net=host", f"--pod-manifest={manifest}")
    rktd.wait_output(proc, "app[a]: up")
    _, err = _stop(proc)
    assert proc.returncode == 0, err


PASSFD_C = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
/* passfd N: 20 datagrams "READY=1" to $NOTIFY_SOCKET, each carrying N fds of /passfd (SCM_RIGHTS). */
int main(int argc, char **argv) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    int n = argc == 2 ? atoi(argv[1]) : 0, fds[200];
    if (!path || strlen(path) >= sizeof sa.sun_path || n < 1 || n > 200) return 2;
    strcpy(sa.sun_path, path);
    if (path[0] == '@') sa.sun_path[0] = 0;
    for (int i = 0; i < n; i++)
        if ((fds[i] = open("/passfd", O_RDONLY)) < 0) return 3;
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof fds)]; } control;
    struct iovec iov = {"READY=1", 7};
    struct msghdr mh = {.msg_name = &sa,
                        .msg_namelen = offsetof(struct sockaddr_un, sun_path) + strlen(path),
                        .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                        .msg_controllen = CMSG_SPACE(n * sizeof(int))};
    struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(n * sizeof(int));
    memcpy(CMSG_DATA(c), fds, n * sizeof(int));
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    for (int k = 0; k < 20; k++)
        if (sendmsg(fd, &mh, 0) < 0) {
            perror("sendmsg");
            return 4;
        }
    return 0;
}
"""


def _static_binary(tmp_path: Path, name: str, source: str) -> bytes:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    built = subprocess.run(
        ["gcc", "-static", "-O", "-o", tmp_path / name, src], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    return (tmp_path / name).read_bytes()


def _pod_init(rktd: Rktd, uuid: str) -> int:
    nspawn = int(rktd.status(uuid)["pid"])
    [pod_init] = Path(f"/proc/{nspawn}/task/{nspawn}/children").read_text().split()
    return int(pod_init)


@needs_root
@needs_nspawn
def test_fds_an_app_passes_with_its_notifications_are_not_kept(rktd: Rktd, tmp_path: Path) -> None:
    """An app sending READY=1 with fds attached (SCM_RIGHTS, 20 datagrams of 40 fds: in flight at once,
    they stay under the sender's RLIMIT_NOFILE) neither leaks them into the init (whose fd table would
    fill) nor stops READY=1 from counting."""
    aci = make_busybox_aci(
        tmp_path / "passer.aci", "example.com/passer",
        annotations={"appc.io/executor/supports-systemd-notify": "true"},
        extra_files={"passfd": _static_binary(tmp_path, "passfd", PASSFD_C)},
    )  # fmt: skip
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    manager = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    manager.bind(str(tmp_path / "manager.sock"))
    uuid_file = tmp_path / "uuid"
    proc = rktd.start(
        "--insecure-options=image", "run", "--net=host", f"--uuid-file-save={uuid_file}",
        "example.com/passer", "--exec=/bin/sh", "--", "-c",
        "chmod 755 /passfd; /passfd 40; echo sent $?; exec sleep 600",
        env={"NOTIFY_SOCKET": str(tmp_path / "manager.sock")},
    )  # fmt: skip
    try:
        uuid = rktd.wait_running(uuid_file, proc)
        assert "app[passer]: sent 0\n" in rktd.wait_output(proc, "app[passer]: sent")
        manager.settimeout(20)
        messages = b""
        while b"READY=1" not in messages.split(b"\n"):
            messages += manager.recv(4096) + b"\n"  # a timeout ends the test
        pid = _pod_init(rktd, uuid)
        fds = os.listdir(f"/proc/{pid}/fd")
        targets = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in fds]
        assert not [t for t in targets if t.endswith("passfd")] and len(fds) < 20, targets
    finally:
        _stop(proc)
        manager.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[tuple[Path, list[bytes]]]:
    """A socket standing in for journald's, read as the pod writes (a full queue would block the
    init): its path and the datagrams received."""
    path = tmp_path / "journal.socket"
    got: list[bytes] = []
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    stop = threading.Event()

    def read() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                got.append(sock.recv(1 << 20))
            except TimeoutError:
                continue

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    yield path, got
    stop.set()
    reader.join(timeout=10)
    sock.close()


def _settled(got: list[bytes], want: int) -> list[dict[str, bytes]]:
    """The first `want` journal entries (waiting for the reader, boundedly)."""
    for _ in range(200):
        if len(got) >= want:
            break
        threading.Event().wait(0.05)
    return [_parse_journal(d) for d in got]


@needs_root
@needs_nspawn
def test_a_megabyte_line_of_binary_reaches_the_journal_whole(
    rktd: Rktd, tmp_path: Path, journal: tuple[Path, list[bytes]]
) -> None:
    """1 MiB without a newline, every byte value but newline (NUL included): split into entries of
    at most 48 KiB + one read (each under the datagram limit, no memfd needed), nothing lost or
    changed, then the next line as its own entry."""
    path, got = journal
    blob = bytes(b for b in range(256) if b != 10) * (1 << 20 // 255 + 1)
    blob = blob[: 1 << 20]
    data = tmp_path / "blob"
    data.mkdir()
    (data / "blob").write_bytes(blob + b"\nafter\n")
    proc = rktd(
        "run", "--net=host", f"--volume=data,kind=host,source={data}", IMG,
        "--mount=volume=data,target=/data", "--exec=/bin/cat", "--", "/data/blob",
        env={"RKTD_JOURNAL_SOCKET": str(path)}, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entries = _settled(got, 2)
    messages = [e["MESSAGE"] for e in entries if e.get("RKTD_APP") == b"busybox"]
    assert messages[-1] == b"after" and b"".join(messages[:-1]) == blob
    assert all(len(m) <= 48 * 1024 + 65536 for m in messages), [len(m) for m in messages]
    assert {e["PRIORITY"] for e in entries} == {b"6"}


@needs_root
@needs_nspawn
def test_no_fd_of_the_init_reaches_an_app(
    rktd: Rktd, notifier: str, journal: tuple[Path, list[bytes]], tmp_path: Path
) -> None:
    """Two apps, one with a notify socket, output to the journal: each app has exactly its stdin and
    its two output pipes (ls adds its own fd 3), no signal blocked or ignored, no ambient capability
    (`; true`: busybox sh execs a last command itself, with SIGINT ignored)."""
    path, got = journal
    script = (
        "/bin/sh",
        "-c",
        "ls -l /proc/self/fd; grep -E '^(SigBlk|SigIgn|CapAmb)' /proc/self/status; true",
    )
    proc = rktd(
        "--insecure-options=image", "run", "--net=host", notifier, "--exec=/bin/sh", "--", *script[1:],
        "---", IMG, "--exec=/bin/sh", "--", *script[1:],
        env={"RKTD_JOURNAL_SOCKET": str(path), "NOTIFY_SOCKET": str(tmp_path / "nobody")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    entries = _settled(got, 14)
    for app in (b"notifier", b"busybox"):
        lines = [e["MESSAGE"].decode() for e in entries if e["RKTD_APP"] == app]
        fds = sorted(line.split(" -> ")[0].split()[-1] for line in lines if line.startswith(("lr", "l-")))
        assert fds == ["0", "1", "2", "3"], lines
        status = dict(line.split(":\t") for line in lines if ":\t" in line)
        assert status == {"SigBlk": "0" * 16, "SigIgn": "0" * 16, "CapAmb": "0" * 16}, lines


@needs_root
@needs_nspawn
def test_every_mount_under_a_read_only_sys_is_read_only(rktd: Rktd) -> None:
    """The init made /sys read-only with one remount, which changes one mount: the cgroup file systems
    below it stayed writable, and an app (root, default capabilities) could make a cgroup and move
    itself out of its limits (here, on a host with a cgroup v1/v2 hybrid, into the host's tree)."""
    script = (
        "grep -E ' /sys[/ ]' /proc/self/mounts | cut -d' ' -f2,4 | cut -d, -f1; "
        "for d in $(grep -E ' /sys/fs/cgroup' /proc/self/mounts | cut -d' ' -f2); do "
        "mkdir $d/rktd-probe 2>/dev/null && rmdir $d/rktd-probe && echo WRITABLE $d; done; true"
    )
    proc = rktd("run", "--net=none", IMG, "--exec=/bin/sh", "--", "-c", script)
    assert proc.returncode == 0, proc.stderr
    mounts = dict(line.split(" ") for line in app_lines(proc.stdout) if not line.startswith("WRITABLE"))
    assert "/sys" in mounts and any(m.startswith("/sys/fs/cgroup") for m in mounts), mounts
    assert set(mounts.values()) == {"ro"}, mounts
    assert "WRITABLE" not in proc.stdout, proc.stdout
    assert "cannot mount" not in proc.stderr, proc.stderr


@needs_root
@needs_nspawn
def test_post_stop_still_runs_after_the_stop_timeout_killed_the_app(rktd: Rktd, tmp_path: Path) -> None:
    """A handler started once the stop timeout has passed gets a stop timeout of its own (it is not
    killed at once for being late)."""
    script = "trap '' TERM; echo up; while :; do sleep 1; done"
    manifest = _manifest(tmp_path, script, {"post-stop": "sleep 0.2; echo post-ran"})
    proc = rktd.start("run", "--net=host", f"--pod-manifest={manifest}")
    rktd.wait_output(proc, "app[a]: up")
    out, err = _stop(proc)
    assert proc.returncode == 0, err
    assert "post-ran" in out and "handler" not in err, (out, err)
