"""App-level sd_notify: a pod whose image says `appc.io/executor/supports-systemd-notify: true` is
ready only once its app said READY=1 on the NOTIFY_SOCKET the pod's init gave it.

The app is tests/helpers/notify_app.c, compiled static by the test: it prints "sending READY=1 at NS"
(CLOCK_MONOTONIC, which the host, the test machine and the pod share) just before it sends, so the
tests order the app's READY against what systemd and the test itself observed, by cause rather than
by timing. Under a real systemd (the booted test machine) and, first, without one: `rktd run` with a
NOTIFY_SOCKET the test owns.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.notify_aci import NAME, PROGRAM, have_compiler, make_notify_aci, sent_at
from tests.integration.machine import Machine
from tests.integration.pods import Pods, app, manifest, wait_for
from tests.test_stage1_nspawn import Rktd, app_lines, busybox_aci, needs_nspawn, needs_root, rktd

__all__ = ["busybox_aci", "rktd"]
pytestmark = [
    needs_root,
    pytest.mark.skipif(not have_compiler(), reason="gcc and libc6-dev are needed to build the notify app"),
]
JOB_DONE = "39f53479d3a045ac8e11786248231fbf"  # systemd's catalog: a unit's start (or stop) job finished
NO_JOURNAL = "/nonexistent/journal-socket"  # the pod's output goes to stage1's stdout: the test reads it


# -- without systemd: `rktd run` with the test's own NOTIFY_SOCKET ------------------------------------


def _run_notify_pod(
    rktd: Rktd, tmp_path: Path, *, supports_notify: bool, delay: str
) -> tuple[subprocess.Popen[str], socket.socket]:
    aci = make_notify_aci(tmp_path / "notify.aci", supports_notify=supports_notify, delay=delay)
    from rktd_units.store import Store

    Store(rktd.dir).import_aci(aci)
    path = tmp_path / "notify.socket"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(path))
    notify.settimeout(30)
    proc = rktd.start(
        "run", "--net=host", NAME, env={"NOTIFY_SOCKET": str(path), "RKTD_JOURNAL_SOCKET": NO_JOURNAL}
    )
    return proc, notify


def _ready(notify: socket.socket) -> int:
    """Wait for the pod's READY=1; when it came (CLOCK_MONOTONIC, ns)."""
    messages = b""
    while b"READY=1" not in messages.split(b"\n"):
        messages += notify.recv(4096) + b"\n"
    return time.monotonic_ns()


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=60)


@needs_nspawn
def test_ready_only_after_the_app_said_so(rktd: Rktd, tmp_path: Path) -> None:
    proc, notify = _run_notify_pod(rktd, tmp_path, supports_notify=True, delay="1500")
    with notify:
        try:
            ready = _ready(notify)
            seen = rktd.wait_output(proc, "sent READY=1")
        finally:
            out, err = _stop(proc)
    out = seen + out
    lines = app_lines(out, "notify-app")
    sent = sent_at(lines)
    assert lines[0] == "notify-app: started", out + err
    assert sent is not None and sent <= ready, (sent, ready, out, err)  # the app's READY came first
    assert "notify-app: stopping" in lines  # SIGTERM reached the app


@needs_nspawn
def test_without_the_annotation_ready_does_not_wait(rktd: Rktd, tmp_path: Path) -> None:
    """The control: the same app in an image that does not claim sd_notify support never sends (it
    waits for SIGUSR1, which nobody sends), and the pod is ready all the same."""
    proc, notify = _run_notify_pod(rktd, tmp_path, supports_notify=False, delay="usr1")
    with notify:
        try:
            _ready(notify)
            seen = rktd.wait_output(proc, "notify-app: started")
        finally:
            out, err = _stop(proc)
    out = seen + out
    lines = app_lines(out, "notify-app")
    assert sent_at(lines) is None and "notify-app: stopped before READY" in lines, out + err


# -- under systemd, in the booted test machine ------------------------------------------------------


@pytest.fixture(scope="module")
def notify_image(images: Machine, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The notify app image in the machine's store (removed afterwards); its name."""
    aci = make_notify_aci(tmp_path_factory.mktemp("notify") / "notify.aci")
    images.copy_in(aci, "/root/notify.aci")
    image_id = images.run(["rktd", "--insecure-options=image", "fetch", "/root/notify.aci"]).stdout.strip()
    try:
        yield NAME
    finally:
        images.run(["rktd", "image", "rm", image_id], check=False)
        images.run(["rm", "-f", "/root/notify.aci"])


def _pod(pods: Pods, name: str, *args: str) -> str:
    pods.add(name, manifest(app("notify", PROGRAM, *args, image=NAME)))
    return f"pod@{name}.service"


def _monotonic_ns(pods: Pods, unit: str, prop: str) -> int:
    return int(pods.show(unit, prop)) * 1000  # systemd's *TimestampMonotonic: CLOCK_MONOTONIC, µs


def _started_index(entries: list[dict[str, Any]], unit: str) -> int:
    for i, e in enumerate(entries):
        if e.get("MESSAGE_ID") == JOB_DONE and e.get("JOB_TYPE") == "start" and e.get("UNIT") == unit:
            return i
    raise AssertionError(f"no start job message for {unit}: {json.dumps(entries)[-3000:]}")


def test_start_returns_after_the_apps_ready(pods: Pods, notify_image: str) -> None:
    """`systemctl start` blocks until the app's READY=1, two seconds after it started, and the journal
    has the app's line before systemd's "Started"."""
    unit = _pod(pods, "notify-delay", "2000")
    pods.m.run(["systemctl", "start", unit], timeout=120)
    returned = time.monotonic_ns()
    assert pods.active(unit) == "active", pods.status(unit)
    lines = pods.lines_of(unit, "notify")
    sent = sent_at(lines)
    assert sent is not None, pods.status(unit)
    assert sent <= returned  # `systemctl start` came back after the app's READY=1 ...
    assert sent <= _monotonic_ns(pods, unit, "ActiveEnterTimestampMonotonic")  # ... and so did "active"
    # ... which the app sent two seconds (its nanosleep) after systemd started the unit's main process
    assert sent - _monotonic_ns(pods, unit, "ExecMainStartTimestampMonotonic") >= 2_000_000_000
    # The app wrote the line before it sent READY=1: the init relays it to journald before it tells
    # nspawn (and so systemd, which logs "Started" on the same journald socket) that the pod is ready.
    entries = pods.entries(unit)
    sending = next(i for i, e in enumerate(entries) if sent_at([str(e.get("MESSAGE", ""))]) == sent)
    assert sending < _started_index(entries, unit), pods.status(unit)


def test_unit_activating_until_the_app_is_ready(pods: Pods, notify_image: str) -> None:
    """`systemctl start --no-block`: the unit stays "activating" while the app runs without having
    said READY=1 (it waits for SIGUSR1), and becomes "active" once it did."""
    unit = _pod(pods, "notify-usr1", "usr1")
    pods.m.run(["systemctl", "start", "--no-block", unit])
    assert wait_for(lambda: "notify-app: started" in pods.lines_of(unit, "notify"), 90), pods.status(unit)
    assert pods.show(unit, "ActiveState") == "activating", pods.status(unit)
    assert sent_at(pods.lines_of(unit, "notify")) is None
    pid = pods.m.run(["pgrep", "-x", "notify-app"]).stdout.split()
    assert len(pid) == 1, pid
    pods.m.run(["kill", "-USR1", pid[0]])
    pods.wait_active(unit)
    sent = sent_at(pods.lines_of(unit, "notify"))
    assert sent is not None and sent <= _monotonic_ns(pods, unit, "ActiveEnterTimestampMonotonic")
    entries = pods.entries(unit)
    sending = next(i for i, e in enumerate(entries) if sent_at([str(e.get("MESSAGE", ""))]) == sent)
    assert sending < _started_index(entries, unit), pods.status(unit)


def test_start_times_out_when_the_app_is_never_ready(pods: Pods, notify_image: str) -> None:
    """An app that never says READY=1 within TimeoutStartSec (a drop-in) fails the start: result
    "timeout", though the app did run; and the pod is torn down."""
    unit = _pod(pods, "notify-never", "600000")
    pods.m.write(
        f"/etc/systemd/system/{unit}.d/timeout.conf", "[Service]\nTimeoutStartSec=10s\nRestart=no\n"
    )
    pods.m.run(["systemctl", "daemon-reload"])
    start = pods.m.run(["systemctl", "start", unit], check=False, timeout=120)
    assert start.returncode != 0, pods.status(unit)
    assert pods.show(unit, "Result") == "timeout", pods.status(unit)
    assert pods.active(unit) == "failed"
    lines = pods.lines_of(unit, "notify")
    assert "notify-app: started" in lines and sent_at(lines) is None, pods.status(unit)
    assert re.search(r"start operation timed out", pods.m.journal(unit)), pods.status(unit)
    assert pods.m.run(["pgrep", "-x", "notify-app"], check=False).stdout == ""
