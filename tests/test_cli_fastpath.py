"""`rktd run` is parsed without click (start-up time); it must mean exactly what click's parse means.

Every command line here goes through both parsers with stage0.run captured: where the fast path
accepts a line, the RunOptions must be equal; lines it must leave to click (help, errors, other verbs)
must return None from `fast_run`.
"""

from __future__ import annotations

from typing import Any, NoReturn

import click
import pytest

from rktd_units import cli, stage0

ACCEPTED = [
    ["run", "IMG"],
    ["--dir=/x", "run", "--net=host", "example.com/busybox", "--exec=/bin/echo", "--", "hi"],
    [
        "--dir", "/x", "--local-config", "/c", "--system-config=/s", "--insecure-options=image,http",
        "--debug", "run", "--net", "default", "--stage1=fly", "IMG",
    ],
    ["run", "--pod-manifest=web", "--uuid-file-save=/run/rktd/pod@web/uuid"],
    [
        "run", "--set-env=A=1", "--set-env", "B=2", "--volume=v,kind=empty", "--dns=192.0.2.1", "--dns",
        "192.0.2.2", "--dns-search=a.b", "--dns-opt=ndots:1", "--dns-domain=x.y", "--hosts-entry=1.2.3.4=h",
        "--hostname=hh", "--port=http:8080", "--interactive", "--inherit-env", "--name=p", "IMG",
        "--name=a", "--user=1", "--group=2", "---", "IMG2", "--exec=/x", "--", "a", "b",
    ],
    ["run", "--net=host", "--net=none", "IMG"],
    ["--insecure-options=all", "run", "IMG"],
    ["run", "IMG", "---", "IMG2"],
    ["run", "IMG", "--readonly-rootfs", "--mount", "volume=v,target=/t"],
]  # fmt: skip

LEFT_TO_CLICK = [
    ["run", "--help"], ["--help"], ["-h", "run"], ["--version"], ["run", "--bogus", "IMG"],
    ["run", "--stage1=bad", "IMG"], ["run", "--net"], ["--insecure-options=bad", "run", "IMG"],
    ["list"], [], ["--debug=1", "run", "IMG"],
]  # fmt: skip


class Captured(Exception):
    def __init__(self, opts: Any) -> None:
        self.opts = opts


def _capture(opts: Any) -> NoReturn:
    raise Captured(opts)


def _via_click(args: list[str]) -> Any:
    try:
        cli._cli().main(args=list(args), prog_name="rktd", standalone_mode=False)
    except Captured as c:
        return c.opts
    raise AssertionError(f"click did not reach stage0.run for {args}")


@pytest.mark.parametrize("args", ACCEPTED, ids=lambda a: " ".join(a)[:60])
def test_fast_path_equals_click(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stage0, "run", _capture)
    fast = cli.fast_run(list(args))
    assert fast is not None, "the fast path should take this command line"
    with pytest.raises(Captured) as got:
        fast()
    assert got.value.opts == _via_click(args)


@pytest.mark.parametrize("args", LEFT_TO_CLICK, ids=lambda a: " ".join(a)[:60] or "empty")
def test_fast_path_leaves_the_rest_to_click(args: list[str]) -> None:
    assert cli.fast_run(list(args)) is None


def test_click_tree_still_has_every_verb() -> None:
    group = cli._cli()
    ctx = click.Context(group)
    assert set(group.list_commands(ctx)) >= {"run", "prepare", "validate", "fetch", "trust", "image", "gc"}
