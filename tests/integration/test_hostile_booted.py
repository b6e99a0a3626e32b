"""Issue #3's last acceptance check, under the booted systemd: the generator installed by the package,
`systemctl daemon-reload`, and the ExecStart= systemd itself parsed (read over D-Bus, argv exactly) is the
intended command line for every hostile value a manifest can put on it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from rktd_units.unitfile import expand_env
from tests.integration.machine import Machine
from tests.integration.pods import PODS, Pods, app, manifest

# Values that reach the command line (the rktd/dns* annotations are split on whitespace into words).
HOSTILE = [
    "%n",
    "%%",
    "%",
    "100%",
    "$VAR",
    "$",
    "$$",
    "${HOME}",
    ";",
    "\\;",
    "a;b",
    "--net=evil;/bin/sh",
    "trailing\\",
    "\\",
    "\\\\",
    '"',
    "'",
    "\"quoted\"'single'",
    "é-ü-漢字-🐳",
    "\u2028",  # whitespace to str.split: no word at all, as U+00A0 splits the next one
    "nbsp\u00a0inside",
    "zero\u200bwidth",
    "x" * 5000,
]


def exec_start(m: Machine, unit: str) -> list[list[str]]:
    """ExecStart of `unit` as the manager holds it: the argv of each command, over D-Bus."""
    path = m.run(
        [
            "busctl",
            "call",
            "--json=short",
            "org.freedesktop.systemd1",
            "/org/freedesktop/systemd1",
            "org.freedesktop.systemd1.Manager",
            "LoadUnit",
            "s",
            unit,
        ]
    )
    obj = json.loads(path.stdout)["data"][0]
    prop = m.run(
        [
            "busctl",
            "get-property",
            "--json=short",
            "org.freedesktop.systemd1",
            obj,
            "org.freedesktop.systemd1.Service",
            "ExecStart",
        ]
    )
    data: list[list[Any]] = json.loads(prop.stdout)["data"]
    return [cmd[1] for cmd in data]


@pytest.fixture(scope="module")
def hostile_pods(images: Machine) -> Iterator[Pods]:
    pods = Pods(images)
    try:
        for i, word in enumerate(HOSTILE):
            annotations = {"rktd/dns": word, "rktd/dns-search": f"{word} plain", "rktd/dns-opt": word}
            pods.add(f"hostile-{i}", manifest(app("a", "/bin/true"), annotations=annotations), reload=False)
        pods.m.run(["systemctl", "daemon-reload"])
        yield pods
    finally:
        pods.cleanup()


@pytest.mark.parametrize("index", range(len(HOSTILE)), ids=[repr(w)[:20] for w in HOSTILE])
def test_hostile_values_reach_execstart_as_themselves(hostile_pods: Pods, index: int) -> None:
    word = HOSTILE[index]
    unit = f"pod@hostile-{index}.service"
    assert hostile_pods.show(unit, "FragmentPath") == f"/run/systemd/generator/{unit}"
    (argv,) = exec_start(hostile_pods.m, unit)
    # `$` is expanded only at exec time, with the unit's environment: what the process will receive.
    argv = expand_env(argv, {})
    assert argv[:3] == ["/usr/bin/rktd", "run", f"--pod-manifest={PODS}/hostile-{index}.json"]
    words = word.split()  # the annotations are word lists (`str.split`: U+2028, U+00A0 separate too)
    assert [a for a in argv if a.startswith("--dns=")] == [f"--dns={w}" for w in words]
    search = [f"--dns-search={w}" for w in [*words, "plain"]]
    assert [a for a in argv if a.startswith("--dns-search=")] == search
    assert [a for a in argv if a.startswith("--dns-opt=")] == [f"--dns-opt={w}" for w in words]
    assert all(a.startswith("--") for a in argv[2:]), argv
    for prop in ("ExecStartPre", "ExecStartPost", "ExecStop", "ExecReload"):
        assert hostile_pods.show(unit, prop) == "", prop
