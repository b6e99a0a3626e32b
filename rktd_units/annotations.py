"""Pod annotations the project reads: one table, from which lookups, checks, --help and man pages derive."""

from __future__ import annotations

import re
from collections.abc import Callable

from rktd_units import netspec
from rktd_units.errors import ManifestError
from rktd_units.frozen import frozen
from rktd_units.names import AC_NAME_RE as AC_NAME_RE  # re-exported: stage0 imports it from here

TYPE_CHECKING = False  # typing costs a fifth of an interpreter start: only for mypy (STYLE.md 13)
if TYPE_CHECKING:
    from typing import Any

PREFIX = "rktd/"

RESTART_VALUES = ("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always")
STAGE1_VALUES = ("nspawn", "fly")

# A unit name as systemd accepts it (unit_name_is_valid): no whitespace, quotes, or control characters.
_UNIT_RE = re.compile(
    r"[A-Za-z0-9:_.\\@-]+\.(?:service|socket|target|mount|path|timer|slice|scope|device|swap|automount)"
)


def _words(value: str) -> tuple[str, ...]:
    return tuple(value.split())


def _units_or_pods(value: str) -> tuple[str, ...]:
    out = []
    for word in value.split():
        if not (AC_NAME_RE.fullmatch(word) or _UNIT_RE.fullmatch(word)):
            raise ValueError(f"{word!r} is neither a pod name nor a unit name")
        out.append(word)
    return tuple(out)


def _targets(value: str) -> tuple[str, ...]:
    out = []
    for word in value.split():
        if not (_UNIT_RE.fullmatch(word) and word.endswith(".target")):
            raise ValueError(f"{word!r} is not a target unit name (e.g. multi-user.target)")
        out.append(word)
    return tuple(out)


def _choice(values: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in values:
            raise ValueError(f"{value!r} is not one of {', '.join(values)}")
        return value

    return parse


def _seconds(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,7}", value):
        raise ValueError(f"{value!r} is not a whole number of seconds")
    return int(value)


def _net(value: str) -> str:
    # What `rktd run --net` accepts, by the same parser (netspec.py); empty means no network list here.
    if not value:
        raise ValueError("'' is not a network list (e.g. default, host, none, NAME:K=V)")
    netspec.parse(value)
    return value


@frozen
class Annotation:
    """One `rktd/` annotation: its parser, default, and the help text derived from it."""

    name: str
    parse: Callable[[str], Any]
    default: Any
    default_text: str
    help: str


ANNOTATIONS: tuple[Annotation, ...] = (
    Annotation(
        "rktd/wanted-by",
        _targets,
        (),
        "none: not started at boot",
        "space-separated targets that start the pod (the generator writes the .wants links)",
    ),
    Annotation(
        "rktd/restart",
        _choice(RESTART_VALUES),
        None,
        "appc: on-failure; Kubernetes: from restartPolicy",
        "systemd Restart= of the pod's service",
    ),
    Annotation(
        "rktd/after",
        _units_or_pods,
        (),
        "none",
        "pods (by name) or units to order the pod after",
    ),
    Annotation(
        "rktd/requires",
        _units_or_pods,
        (),
        "none",
        "pods (by name) or units the pod requires",
    ),
    Annotation("rktd/stage1", _choice(STAGE1_VALUES), "nspawn", "nspawn", "stage1 flavour: nspawn or fly"),
    Annotation("rktd/net", _net, "default", "default", "networks, as `rktd run --net`"),
    Annotation("rktd/stop-timeout", _seconds, 30, "30", "seconds from SIGTERM to SIGKILL on stop"),
    Annotation("rktd/dns", _words, (), "none", "space-separated nameservers, as `rktd run --dns`"),
    Annotation("rktd/dns-search", _words, (), "none", "space-separated search domains, as `--dns-search`"),
    Annotation("rktd/dns-opt", _words, (), "none", "space-separated resolver options, as `--dns-opt`"),
)

BY_NAME = {a.name: a for a in ANNOTATIONS}


def read(values: dict[str, str], *, field_prefix: str = "annotations") -> dict[str, Any]:
    """Parse every `rktd/` annotation; unknown `rktd/` names and bad values raise ManifestError."""
    out = {a.name: a.default for a in ANNOTATIONS}
    for name in sorted(values):
        if not name.startswith(PREFIX):
            continue
        spec = BY_NAME.get(name)
        if spec is None:
            known = ", ".join(sorted(BY_NAME))
            raise ManifestError(
                None, f"{field_prefix}[{name}]", "unknown rktd annotation", hint=f"known: {known}"
            )
        try:
            out[name] = spec.parse(values[name])
        except ValueError as e:
            raise ManifestError(None, f"{field_prefix}[{name}]", str(e)) from None
    return out
