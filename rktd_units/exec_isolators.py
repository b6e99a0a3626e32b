"""The isolators an app's own process applies just before its exec (rktd-init for nspawn pods;
stage1/init.py `become()` for fly and `rktd enter`):
`os/linux/seccomp-remove-set` / `-retain-set`, `os/linux/oom-score-adj`,
`os/linux/apparmor-profile` and `os/linux/selinux-context`.

stage0 turns their manifest values into what the kernel takes (system call names checked against
libseccomp, syscall groups expanded from seccomp_groups.py, errno numbers, a label string), and
refuses a pod whose isolator the host cannot honour (an LSM that is not enabled) rather than run it
without.

A seccomp set's entries: a system call name, a group (`@scope/name`, see seccomp_groups.py), or
either negated (`-name`, `-@scope/name`, an extension of rktd's: neither appc nor rkt define one).
The set is the union of the plain entries less the union of the negated ones, whatever their order:
a retain set `["@docker/default-whitelist", "-mkdir"]` allows that group but mkdir. A name the host's
libseccomp does not know is an error when given by itself, and skipped inside a group.
"""

from __future__ import annotations

import errno
import os

from rktd_units.errors import PodError, UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

SECCOMP_REMOVE = "os/linux/seccomp-remove-set"
SECCOMP_RETAIN = "os/linux/seccomp-retain-set"
OOM_SCORE_ADJ = "os/linux/oom-score-adj"
APPARMOR = "os/linux/apparmor-profile"
SELINUX = "os/linux/selinux-context"

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


def _seccomp(value: dict[str, Any], mode: str, isolator: str, app: str) -> dict[str, Any] | None:
    """The flat filter stage1 applies: `set` is the entries' union, groups expanded, less the
    negated entries (`-name`, `-@group`); None when nothing is to be filtered. A retain set holding
    `@appc.io/all`, or a remove set holding `@appc.io/empty`, is no filter of the app's own (the
    appc spec: that wildcard masks the rest of the set). A remove set of `@appc.io/all` less some
    calls becomes the retain set of those calls."""
    from rktd_units import seccomp_groups

    where = f"app {app}: isolator {isolator}"
    errno_name = value.get("errno") or ("EPERM" if mode == "remove" else None)
    number = None
    if errno_name is not None:
        number = getattr(errno, errno_name, None)
        if not isinstance(number, int):
            raise UsageError(f"{where}: unknown errno {errno_name!r}")
    known = _resolver()
    wanted: set[str] = set()
    unwanted: set[str] = set()
    wildcards: set[str] = set()  # "@appc.io/all", "-@appc.io/all", ...
    unknown: list[str] = []
    for entry in value["set"]:
        name = entry.removeprefix("-")
        into = unwanted if entry.startswith("-") else wanted
        if name in (seccomp_groups.ALL, seccomp_groups.EMPTY):
            wildcards.add(entry)
        elif name.startswith("@"):
            members = seccomp_groups.GROUPS.get(name)
            if members is None:
                raise UsageError(
                    f"{where}: unknown syscall group {entry}",
                    hint=f"known groups: {', '.join(seccomp_groups.KNOWN)}",
                )
            into.update(n for n in members if known(n))  # a group names calls of every architecture
        elif known(name):
            into.add(name)
        else:
            unknown.append(name)
    if unknown:
        raise UsageError(f"{where}: unknown system calls: {', '.join(sorted(set(unknown)))}")
    if mode == "retain" and seccomp_groups.ALL in wildcards:
        return None
    if mode == "remove" and seccomp_groups.EMPTY in wildcards:
        return None
    if "-" + seccomp_groups.ALL in wildcards:
        wanted = set()
    elif seccomp_groups.ALL in wildcards:  # a remove set: all but the negated entries
        if not unwanted:
            raise UsageError(f"{where}: {seccomp_groups.ALL} would block every system call, exec too")
        return {"mode": "retain", "set": sorted(unwanted), "errno": number}
    names = sorted(wanted - unwanted)
    if not names and mode == "retain":
        raise UsageError(f"{where}: no system call is left in the set", hint="the app could not run")
    return {"mode": mode, "set": names, "errno": number} if names else None


def _resolver() -> Callable[[str], bool]:
    """Does the host's libseccomp know a system call of this name on its own architecture?"""
    from rktd_units.stage1.init import seccomp_library

    try:
        lib = seccomp_library()
    except OSError as e:
        raise UsageError(f"seccomp isolators need libseccomp: {e}", hint="install libseccomp2") from None
    return lambda name: bool(lib.seccomp_syscall_resolve_name(name.encode()) >= 0)
