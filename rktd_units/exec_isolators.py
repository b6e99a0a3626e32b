"""The isolators an app's own process applies just before its exec (stage1/init.py `become()`):
`os/linux/seccomp-remove-set` / `-retain-set`, `os/linux/oom-score-adj`,
`os/linux/apparmor-profile` and `os/linux/selinux-context`.

stage0 turns their manifest values into what the kernel takes (system call names checked against
libseccomp, errno numbers, a label string), and refuses a pod whose isolator the host cannot honour
(an LSM that is not enabled, a syscall group) rather than run it without.
"""

from __future__ import annotations

import errno
import os

from rktd_units.errors import PodError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

SECCOMP_REMOVE = "os/linux/seccomp-remove-set"
SECCOMP_RETAIN = "os/linux/seccomp-retain-set"
OOM_SCORE_ADJ = "os/linux/oom-score-adj"
APPARMOR = "os/linux/apparmor-profile"
SELINUX = "os/linux/selinux-context"
NAMES = (SECCOMP_REMOVE, SECCOMP_RETAIN, OOM_SCORE_ADJ, APPARMOR, SELINUX)

APPARMOR_ENABLED = "/sys/module/apparmor/parameters/enabled"
SELINUX_FS = "/sys/fs/selinux"


def apparmor_enabled() -> bool:
    try:
        with open(APPARMOR_ENABLED) as f:
            return f.read().strip() == "Y"
    except OSError:
        return False


def selinux_enabled() -> bool:
    return os.path.isdir(SELINUX_FS)


def exec_isolators(values: dict[str, Any], app: str, *, no_seccomp: bool) -> dict[str, Any]:
    """stage1.json's keys for one app from its merged isolators (pod's, then the app's):
    `seccomp`, `oom_score_adj`, `apparmor_profile`, `selinux_context`. `no_seccomp`:
    --insecure-options=seccomp, the filter is not installed."""
    out: dict[str, Any] = {
        "seccomp": None,
        "oom_score_adj": values.get(OOM_SCORE_ADJ),
        "apparmor_profile": None,
        "selinux_context": None,
    }
    for name, mode in ((SECCOMP_REMOVE, "remove"), (SECCOMP_RETAIN, "retain")):
        value = values.get(name)
        if isinstance(value, dict) and not no_seccomp:
            out["seccomp"] = _seccomp(value, mode, name, app)
    profile = values.get(APPARMOR)
    if isinstance(profile, dict):
        _require(apparmor_enabled(), APPARMOR, app, f"AppArmor is not enabled ({APPARMOR_ENABLED} is not Y)")
        out["apparmor_profile"] = profile["profile"]
    context = values.get(SELINUX)
    if isinstance(context, dict):
        _require(selinux_enabled(), SELINUX, app, f"SELinux is not enabled (no {SELINUX_FS})")
        out["selinux_context"] = ":".join(context[k] for k in ("user", "role", "type", "level"))
    return out


def _require(ok: bool, isolator: str, app: str, why: str) -> None:
    if not ok:
        raise PodError(
            f"app {app}: isolator {isolator} cannot be applied: {why}",
            hint="remove the isolator, or run the pod on a host with that LSM enabled",
        )


def _seccomp(value: dict[str, Any], mode: str, isolator: str, app: str) -> dict[str, Any]:
    names = list(value["set"])
    unsupported = [n for n in names if n.startswith(("@", "-"))]
    if unsupported:
        raise UsageError(
            f"app {app}: isolator {isolator}: {', '.join(unsupported)}: syscall groups and negated "
            "entries are not supported",
            hint="list plain system call names, e.g. mkdir, reboot",
        )
    errno_name = value.get("errno") or ("EPERM" if mode == "remove" else None)
    number = None
    if errno_name is not None:
        number = getattr(errno, errno_name, None)
        if not isinstance(number, int):
            raise UsageError(f"app {app}: isolator {isolator}: unknown errno {errno_name!r}")
    unknown = _unknown_syscalls(names)
    if unknown:
        raise UsageError(f"app {app}: isolator {isolator}: unknown system calls: {', '.join(unknown)}")
    return {"mode": mode, "set": sorted(set(names)), "errno": number}


def _unknown_syscalls(names: list[str]) -> list[str]:
    from rktd_units.stage1.init import seccomp_library

    try:
        lib = seccomp_library()
    except OSError as e:
        raise UsageError(f"seccomp isolators need libseccomp: {e}", hint="install libseccomp2") from None
    return sorted({n for n in names if lib.seccomp_syscall_resolve_name(n.encode()) < 0})
