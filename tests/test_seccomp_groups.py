"""Syscall groups and negated entries in seccomp sets: stage0's expansion into the flat set stage1
applies, checked against the host's real libseccomp (and, for the @systemd/ groups, systemd-analyze);
the refusals; and that the group table is imported only for a pod with a seccomp isolator.
Real pods with groups are in test_isolators.py and test_enter_confined.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from rktd_units import seccomp_groups
from rktd_units.errors import UsageError
from rktd_units.exec_isolators import exec_isolators
from rktd_units.stage1.init import seccomp_library

ROOT = Path(__file__).resolve().parent.parent
REMOVE = "os/linux/seccomp-remove-set"
RETAIN = "os/linux/seccomp-retain-set"
EPERM = 1


def resolves(name: str) -> bool:
    return bool(seccomp_library().seccomp_syscall_resolve_name(name.encode()) >= 0)


def expand(isolator: str, *entries: str, errno: str | None = None) -> Any:
    value: dict[str, Any] = {"set": list(entries)}
    if errno:
        value["errno"] = errno
    return exec_isolators({isolator: value}, "web", no_seccomp=False)["seccomp"]


def host(group: str) -> list[str]:
    """The group's names this host's libseccomp knows, sorted."""
    return sorted(n for n in seccomp_groups.GROUPS[group] if resolves(n))


@pytest.mark.parametrize("group", sorted(seccomp_groups.GROUPS))
def test_a_group_expands_to_its_names_the_host_knows(group: str) -> None:
    out = expand(RETAIN, group)
    assert out == {"mode": "retain", "set": host(group), "errno": None}
    assert out["set"], group  # every group has members on this architecture


def test_names_of_other_architectures_in_a_group_are_skipped_given_alone_refused() -> None:
    foreign = [n for n in seccomp_groups.GROUPS["@rkt/default-whitelist"] if not resolves(n)]
    assert foreign  # e.g. chown32 or breakpoint: the group is written for several architectures
    assert not set(foreign) & set(expand(RETAIN, "@rkt/default-whitelist")["set"])
    with pytest.raises(UsageError, match=f"unknown system calls: {re.escape(foreign[0])}$"):
        expand(RETAIN, foreign[0])


def test_groups_and_names_combine_as_a_union() -> None:
    out = expand(REMOVE, "@rkt/default-blacklist", "mkdir", "@systemd/clock")
    want = set(host("@rkt/default-blacklist")) | {"mkdir"} | set(host("@systemd/clock"))
    assert out == {"mode": "remove", "set": sorted(want), "errno": EPERM}


def test_rkt_groups_are_dockers_plus_arm_calls() -> None:
    groups = seccomp_groups.GROUPS
    assert groups["@rkt/default-blacklist"] == groups["@docker/default-blacklist"]
    extra = set(groups["@rkt/default-whitelist"]) - set(groups["@docker/default-whitelist"])
    assert extra == {"arm_fadvise64_64", "arm_sync_file_range", "breakpoint", "cacheflush", "set_tls"} | {
        "sync_file_range2"
    }
    assert not set(groups["@docker/default-whitelist"]) & set(groups["@docker/default-blacklist"])
    for group, names in groups.items():
        assert len(set(names)) == len(names), group


# -- negated entries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "entries",
    [("@docker/default-whitelist", "-mkdir"), ("-mkdir", "@docker/default-whitelist")],  # any order
)
def test_a_retain_set_less_a_name(entries: tuple[str, ...]) -> None:
    out = expand(RETAIN, *entries, errno="EXDEV")
    want = [n for n in host("@docker/default-whitelist") if n != "mkdir"]
    assert out == {"mode": "retain", "set": want, "errno": 18}


def test_a_remove_set_less_a_group() -> None:
    out = expand(REMOVE, "@rkt/default-blacklist", "reboot", "-@systemd/mount", "-reboot")
    want = set(host("@rkt/default-blacklist")) - set(host("@systemd/mount")) - {"reboot"}
    assert out["set"] == sorted(want)
    assert "unshare" in out["set"] and "mount" not in out["set"] and "umount2" not in out["set"]


def test_a_remove_set_left_empty_is_no_filter() -> None:
    assert expand(REMOVE, "mkdir", "-mkdir") is None


def test_a_retain_set_left_empty_is_refused() -> None:
    with pytest.raises(UsageError) as e:
        expand(RETAIN, "@systemd/clock", "-@systemd/clock")
    assert str(e.value) == (
        f"app web: isolator {RETAIN}: no system call is left in the set (the app could not run)"
    )


# -- the appc wildcards -------------------------------------------------------------------------------


def test_appc_all_in_a_retain_set_and_empty_in_a_remove_set_mean_no_filter() -> None:
    """The spec: each masks the rest of its set (opt out of filtering; opt in to the
    implementation's default, which for an app is none of its own)."""
    assert expand(RETAIN, "@appc.io/all") is None
    assert expand(RETAIN, "read", "@appc.io/all", "-write") is None
    assert expand(REMOVE, "@appc.io/empty", "mkdir") is None


def test_appc_all_less_some_names_in_a_remove_set_retains_them() -> None:
    out = expand(REMOVE, "@appc.io/all", "-read", "-@systemd/clock")
    assert out == {"mode": "retain", "set": sorted({"read", *host("@systemd/clock")}), "errno": EPERM}


def test_appc_empty_in_a_retain_set_adds_nothing() -> None:
    assert expand(RETAIN, "@appc.io/empty", "read") == {"mode": "retain", "set": ["read"], "errno": None}


def test_a_remove_set_of_every_call_is_refused() -> None:
    with pytest.raises(UsageError, match=r"@appc\.io/all would block every system call"):
        expand(REMOVE, "@appc.io/all")


# -- golden errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("entry", ["@rkt/no-such-group", "-@rkt/no-such-group", "@nogroup", "@appc.io/none"])
def test_an_unknown_group_is_one_line_naming_app_isolator_and_group(entry: str) -> None:
    with pytest.raises(UsageError) as e:
        expand(REMOVE, "mkdir", entry)
    known = ", ".join(seccomp_groups.KNOWN)
    assert (
        str(e.value) == f"app web: isolator {REMOVE}: unknown syscall group {entry} (known groups: {known})"
    )
    assert "\n" not in str(e.value)


def test_unknown_names_are_listed_once_each() -> None:
    with pytest.raises(UsageError) as e:
        expand(RETAIN, "no_such_call", "-also_not", "read", "no_such_call")
    assert str(e.value) == f"app web: isolator {RETAIN}: unknown system calls: also_not, no_such_call"


def test_insecure_seccomp_skips_the_expansion_and_its_errors() -> None:
    values = {REMOVE: {"set": ["@rkt/no-such-group"]}}
    assert exec_isolators(values, "web", no_seccomp=True)["seccomp"] is None


# -- the @systemd/ groups are systemd's -----------------------------------------------------------------


def _systemd_version() -> int | None:
    if shutil.which("systemd-analyze") is None:
        return None
    out = subprocess.run(["systemd-analyze", "--version"], capture_output=True, text=True).stdout
    match = re.match(r"systemd (\d+)", out)
    return int(match.group(1)) if match else None


def _systemd_group(name: str) -> set[str]:
    out = subprocess.run(
        ["systemd-analyze", "syscall-filter", "--no-pager", name], capture_output=True, text=True, check=True
    ).stdout
    names: set[str] = set()
    for line in out.splitlines()[1:]:
        item = line.strip()
        if item.startswith("@"):
            names |= _systemd_group(item)
        elif item and not item.startswith("#"):
            names.add(item)
    return names


@pytest.mark.skipif(
    _systemd_version() != seccomp_groups.SYSTEMD_VERSION,
    reason=f"the @systemd/ groups are systemd {seccomp_groups.SYSTEMD_VERSION}'s",
)
@pytest.mark.parametrize("group", sorted(seccomp_groups.SYSTEMD_NAMES))
def test_systemd_groups_match_systemd_analyze(group: str) -> None:
    assert set(seccomp_groups.GROUPS[group]) == _systemd_group(seccomp_groups.SYSTEMD_NAMES[group])


# -- imports ------------------------------------------------------------------------------------------

IMPORTS = """
import json, sys
from rktd_units.exec_isolators import exec_isolators
exec_isolators(json.loads(sys.argv[1]), "web", no_seccomp=False)
print("rktd_units.seccomp_groups" in sys.modules)
"""


@pytest.mark.parametrize(
    ("values", "imported"),
    [
        ({"os/linux/oom-score-adj": 5}, False),
        ({REMOVE: {"set": ["mkdir"]}}, True),
    ],
)
def test_the_group_table_is_imported_only_for_a_seccomp_isolator(
    values: dict[str, Any], imported: bool
) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", IMPORTS, json.dumps(values)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(imported)


def test_the_pod_man_page_lists_every_group(tmp_path: Path) -> None:
    page = tmp_path / "rktd.pod.5"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "man/make-man.py"), "--page", "rktd.pod.5", str(page)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    roff = page.read_text()
    assert ".SH SECCOMP ISOLATORS" in roff
    for group in seccomp_groups.KNOWN:
        assert f"\\fB{group.replace('-', chr(92) + '-')}\\fR" in roff, group
