"""The isolators an app applies just before its exec, in real pods of both flavours: seccomp
remove and retain sets (libseccomp through ctypes), with syscall groups and negated entries,
`--insecure-options=seccomp`, oom-score-adj,
and stage0's refusal of AppArmor/SELinux labels on a host without that LSM."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rktd_units.errors import PodError, UsageError
from rktd_units.exec_isolators import apparmor_enabled, exec_isolators, selinux_enabled
from tests.test_stage1_nspawn import FLAVOURS, IMG, Rktd, app_lines, busybox_aci, needs_root, rktd

__all__ = ["busybox_aci", "rktd"]

# What a static busybox `echo` needs from the kernel (strace), for retain sets
BUSYBOX_SYSCALLS = (
    "arch_prctl brk exit_group getrandom getuid mprotect prctl prlimit64 readlink rseq set_robust_list "
    "set_tid_address write"
).split()


def _run(
    rktd: Rktd, tmp_path: Path, flavour: str, isolators: list[dict[str, Any]], exec_: list[str], *pre: str
) -> Any:
    manifest = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": [
            {
                "name": "iso",
                "image": {"name": IMG},
                "app": {"exec": exec_, "user": "0", "group": "0", "isolators": isolators},
            }
        ],
        "annotations": [{"name": "rktd/stage1", "value": flavour}],
    }
    path = tmp_path / "iso.json"
    path.write_text(json.dumps(manifest))
    return rktd(*pre, "run", "--net=host", f"--pod-manifest={path}")


def _lines(proc: Any, flavour: str) -> list[str]:
    """The app's output lines (stdout and stderr), without stage0's notices."""
    out = app_lines(proc.stdout, "iso") + app_lines(proc.stderr, "iso")
    if flavour == "fly":  # the app is stage1: its output is not prefixed
        out = [*proc.stdout.splitlines(), *proc.stderr.splitlines()]
    return [line for line in out if not line.startswith("rktd")]


MKDIR_SH = ["/bin/sh", "-c", "touch /tmp/t && echo touched; mkdir /tmp/x; echo mkdir=$?"]
REMOVE_MKDIR = [{"name": "os/linux/seccomp-remove-set", "value": {"set": ["mkdir"], "errno": "EPERM"}}]


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_seccomp_remove_set_and_insecure_option(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    proc = _run(rktd, tmp_path, flavour, REMOVE_MKDIR, MKDIR_SH)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc, flavour)
    assert "touched" in lines and "mkdir=1" in lines, lines
    assert any("/tmp/x" in line and "Operation not permitted" in line for line in lines), lines
    # the same pod with --insecure-options=seccomp: no filter, mkdir works
    proc = _run(rktd, tmp_path, flavour, REMOVE_MKDIR, MKDIR_SH, "--insecure-options=seccomp")
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc, flavour)
    assert "mkdir=0" in lines and not any("Operation not permitted" in line for line in lines), lines


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_seccomp_retain_set(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    with_errno = [
        {"name": "os/linux/seccomp-retain-set", "value": {"set": BUSYBOX_SYSCALLS, "errno": "EACCES"}}
    ]
    proc = _run(rktd, tmp_path, flavour, with_errno, ["/bin/echo", "retained"])
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc, flavour) == ["retained"]
    # openat is not retained: it fails with the isolator's errno
    proc = _run(rktd, tmp_path, flavour, with_errno, ["/bin/cat", "/etc/passwd"])
    assert proc.returncode == 1
    assert any("/etc/passwd" in line and "Permission denied" in line for line in _lines(proc, flavour))
    # without an errno, a system call outside the set kills the app (SIGSYS)
    kill = [{"name": "os/linux/seccomp-retain-set", "value": {"set": BUSYBOX_SYSCALLS}}]
    proc = _run(rktd, tmp_path, flavour, kill, ["/bin/cat", "/etc/passwd"])
    assert proc.returncode in (128 + 31, -31), (proc.returncode, proc.stderr)  # fly: stage1 is the app
    assert "root:" not in proc.stdout


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_oom_score_adj(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    iso = [{"name": "os/linux/oom-score-adj", "value": 567}]
    proc = _run(rktd, tmp_path, flavour, iso, ["/bin/cat", "/proc/self/oom_score_adj"])
    assert proc.returncode == 0, proc.stderr
    assert _lines(proc, flavour) == ["567"]
    assert Path("/proc/self/oom_score_adj").read_text().strip() != "567"  # not the host's (ours)


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_unknown_seccomp_group_is_refused(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    iso = [
        {"name": "os/linux/seccomp-retain-set", "value": {"set": ["@rkt/default-whitelist", "@rkt/nope"]}}
    ]
    proc = _run(rktd, tmp_path, flavour, iso, ["/bin/echo", "ran"])
    assert proc.returncode == 254
    assert "ran" not in proc.stdout
    error = proc.stderr.strip().splitlines()[-1]
    assert "app iso: isolator os/linux/seccomp-retain-set: unknown syscall group @rkt/nope" in error
    assert "known groups: @appc.io/all, @appc.io/empty, @docker/default-blacklist" in error
    states = [pod["state"] for pod in json.loads(rktd("list", "--format=json").stdout)]
    assert states in ([], ["garbage"]), states  # nothing prepared or run


# -- syscall groups and negated entries in real pods ------------------------------------------------

# busybox's unshare applet calls unshare(2): in both rkt/docker groups' blacklist, not in their whitelist;
# its mount applet calls mount(2), in the blacklist too. EXDEV is an errno neither call returns by
# itself here, so seeing it proves the filter (nspawn's own filter and caps would give EPERM).
UNSHARE_MOUNT = [
    "/bin/sh",
    "-c",
    "echo ran; unshare -u true; echo unshare=$?; mount -t tmpfs none /tmp; echo mount=$?",
]
EXDEV = "Invalid cross-device link"


def _group(name: str) -> tuple[str, ...]:
    from rktd_units.seccomp_groups import GROUPS

    return GROUPS[name]


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_seccomp_retain_docker_default_whitelist(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    assert "unshare" not in _group("@docker/default-whitelist")
    iso = [
        {
            "name": "os/linux/seccomp-retain-set",
            "value": {"set": ["@docker/default-whitelist"], "errno": "EXDEV"},
        }
    ]
    proc = _run(rktd, tmp_path, flavour, iso, UNSHARE_MOUNT)
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc, flavour)
    assert lines[0] == "ran" and "unshare=1" in lines and "mount=255" in lines, lines
    assert any(line.startswith("unshare:") and EXDEV in line for line in lines), lines
    assert any(line.startswith("mount:") and EXDEV in line for line in lines), lines


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_seccomp_remove_rkt_default_blacklist_and_a_negated_entry(
    rktd: Rktd, tmp_path: Path, flavour: str
) -> None:
    assert {"unshare", "mount"} <= set(_group("@rkt/default-blacklist"))
    blacklist = {"set": ["@rkt/default-blacklist"], "errno": "EXDEV"}
    proc = _run(
        rktd, tmp_path, flavour, [{"name": "os/linux/seccomp-remove-set", "value": blacklist}], UNSHARE_MOUNT
    )
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc, flavour)
    assert any(line.startswith("unshare:") and EXDEV in line for line in lines), lines
    assert any(line.startswith("mount:") and EXDEV in line for line in lines), lines
    # less unshare: the filter lets it through (fly's root app may unshare; nspawn's caps refuse it
    # with EPERM), while mount is still refused by the filter
    less = {"set": ["-unshare", "@rkt/default-blacklist"], "errno": "EXDEV"}
    proc = _run(
        rktd, tmp_path, flavour, [{"name": "os/linux/seccomp-remove-set", "value": less}], UNSHARE_MOUNT
    )
    assert proc.returncode == 0, proc.stderr
    lines = _lines(proc, flavour)
    assert not any(line.startswith("unshare:") and EXDEV in line for line in lines), lines
    assert any(line.startswith("mount:") and EXDEV in line for line in lines), lines
    if flavour == "fly":
        assert "unshare=0" in lines, lines


LSMS = [
    pytest.param(
        "os/linux/apparmor-profile",
        {"profile": "rktd-test"},
        marks=pytest.mark.skipif(apparmor_enabled(), reason="AppArmor is enabled on this host"),
    ),
    pytest.param(
        "os/linux/selinux-context",
        {"user": "system_u", "role": "system_r", "type": "svirt_lxc_net_t", "level": "s0"},
        marks=pytest.mark.skipif(selinux_enabled(), reason="SELinux is enabled on this host"),
    ),
]


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize(("isolator", "value"), LSMS)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lsm_label_without_the_lsm_is_refused(
    rktd: Rktd, tmp_path: Path, flavour: str, isolator: str, value: dict[str, str]
) -> None:
    proc = _run(rktd, tmp_path, flavour, [{"name": isolator, "value": value}], ["/bin/echo", "ran"])
    assert proc.returncode == 254
    assert "ran" not in proc.stdout
    errors = [line for line in proc.stderr.splitlines() if isolator in line]
    assert len(errors) == 1 and "app iso" in errors[0] and "not enabled" in errors[0], proc.stderr
    states = [pod["state"] for pod in json.loads(rktd("list", "--format=json").stdout)]
    assert states in ([], ["garbage"]), states  # nothing prepared or run


# -- stage0's conversion ------------------------------------------------------------------------------


def test_exec_isolators_values() -> None:
    values = {
        "os/linux/seccomp-remove-set": {"set": ["reboot", "mkdir", "reboot"]},
        "os/linux/oom-score-adj": -5,
    }
    out = exec_isolators(values, "a", no_seccomp=False)
    assert out["seccomp"] == {"mode": "remove", "set": ["mkdir", "reboot"], "errno": 1}  # EPERM
    assert out["oom_score_adj"] == -5
    assert exec_isolators(values, "a", no_seccomp=True)["seccomp"] is None
    retain = exec_isolators({"os/linux/seccomp-retain-set": {"set": ["read"]}}, "a", no_seccomp=False)
    assert retain["seccomp"] == {"mode": "retain", "set": ["read"], "errno": None}  # kill


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"set": ["@rkt/nope"]}, "unknown syscall group @rkt/nope"),
        ({"set": ["no_such_call"]}, "unknown system calls: no_such_call"),
        ({"set": ["mkdir"], "errno": "ENOTANERRNO"}, "unknown errno 'ENOTANERRNO'"),
    ],
)
def test_exec_isolators_refusals(value: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        exec_isolators({"os/linux/seccomp-remove-set": value}, "a", no_seccomp=False)


@pytest.mark.skipif(apparmor_enabled(), reason="AppArmor is enabled on this host")
def test_apparmor_refusal_names_app_and_isolator() -> None:
    with pytest.raises(PodError, match=r"app web: isolator os/linux/apparmor-profile cannot be applied"):
        exec_isolators({"os/linux/apparmor-profile": {"profile": "p"}}, "web", no_seccomp=False)


@needs_root
@pytest.mark.slow
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_negative_oom_score_adj(rktd: Rktd, tmp_path: Path, flavour: str) -> None:
    """Lowering the score needs CAP_SYS_RESOURCE: applied where the host grants it, else the app
    does not start, with an error naming the isolator (never run without it)."""
    iso = [{"name": "os/linux/oom-score-adj", "value": -500}]
    proc = _run(rktd, tmp_path, flavour, iso, ["/bin/cat", "/proc/self/oom_score_adj"])
    if proc.returncode == 0:
        assert _lines(proc, flavour) == ["-500"]
    else:
        assert proc.returncode == (127 if flavour == "nspawn" else 254)
        assert "os/linux/oom-score-adj -500: Permission denied" in proc.stderr
        assert "-500" not in proc.stdout
