"""An ACI whose app speaks sd_notify: busybox plus tests/helpers/notify_app.c, compiled static here.

from tests.helpers.notify_aci import make_notify_aci
aci = make_notify_aci(tmp_path / "notify.aci", delay=2000)     # READY=1 two seconds after start
aci = make_notify_aci(tmp_path / "notify.aci", delay="usr1")   # READY=1 once the app gets SIGUSR1

The image carries the annotation `appc.io/executor/supports-systemd-notify: true`, so the pod's
init hands the app a NOTIFY_SOCKET of its own and says READY=1 to systemd only after the app did.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

from tests.helpers.aci import Entry, busybox_entries, image_manifest, write_aci

SOURCE = Path(__file__).with_name("notify_app.c")
NAME = "example.com/notify-app"
PROGRAM = "/bin/notify-app"
NOTIFY_ANNOTATION = "appc.io/executor/supports-systemd-notify"


def have_compiler() -> bool:
    """gcc and glibc's static libraries (libc6-dev) are there to build the app."""
    return shutil.which("gcc") is not None and any(
        Path(d, "libc.a").exists()
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib")
    )


def build_notify_app(out: Path) -> Path:
    """Compile notify_app.c to a static executable at `out`."""
    proc = subprocess.run(
        ["gcc", "-static", "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(out), str(SOURCE)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"gcc failed to build {SOURCE.name}:\n{proc.stderr}")
    return out


def make_notify_aci(
    path: Path,
    name: str = NAME,
    *,
    delay: int | str = 0,
    status: str | None = None,
    supports_notify: bool = True,
    labels: Mapping[str, str] | None = None,
) -> Path:
    """Write an ACI (gzip) of busybox plus `/bin/notify-app`, whose exec is
    `/bin/notify-app DELAY [STATUS]` (DELAY: milliseconds, or "usr1": until the app gets SIGUSR1);
    the notify annotation is "true" unless `supports_notify` is false (then the image says nothing,
    and the pod is ready without waiting for the app)."""
    binary = build_notify_app(path.with_name(path.name + ".notify-app"))
    exec_ = [PROGRAM, str(delay), *([status] if status is not None else [])]
    annotations = {NOTIFY_ANNOTATION: "true"} if supports_notify else None
    manifest = image_manifest(name, labels, exec_, annotations=annotations)
    entries = busybox_entries(manifest)
    entries.append(Entry(f"rootfs{PROGRAM}", data=binary.read_bytes(), mode=0o755))
    binary.unlink()
    return write_aci(path, entries, "gz")


SENDING = re.compile(r"notify-app: sending READY=1 at (\d+)\Z")


def sent_at(lines: Iterable[str]) -> int | None:
    """When the app sent READY=1 (CLOCK_MONOTONIC, ns: `time.monotonic_ns()` on the same kernel),
    from its output lines (with or without a relay's `app[NAME]: ` prefix); None if it did not."""
    for line in lines:
        m = SENDING.search(line)
        if m:
            return int(m.group(1))
    return None
