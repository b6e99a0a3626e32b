"""The grammar of `rktd run --net` and of the `rktd/net` annotation: one parser for both.

    default | host | none | all | NAME[:K=V[;K2=V2...]][,NAME2[:...]...]

NAME is an AC Name, K letters, digits and `_`, V anything but `;`, `=`, `,`, whitespace and
control characters (the arguments become the plugins' CNI_ARGS). `host` and `none` stand alone;
`host`, `none` and `all` take no arguments; a network is listed once. The generator checks the
annotation with this parser and stage0 parses `--net` with it, so what the generator accepts is
what stage0 runs. (A small module on purpose: the generator imports it at every boot, and
network.py, with CNI, ipaddress and pathlib, is far heavier.)
"""

from __future__ import annotations

import re

from rktd_units.names import AC_NAME_RE

ALONE = ("host", "none")  # networks that cannot be combined with others
NO_ARGS = ("host", "none", "all")
_CNI_ARG_RE = re.compile(r"\A[A-Za-z0-9_]+=[^;=,\s\x00-\x1f\x7f]*\Z")


def parse(nets: str) -> list[tuple[str, str]]:
    """`NAME[:K=V;K2=V2],...` -> [(name, CNI_ARGS)]; an empty string is `default`. ValueError says
    what is wrong (callers add which flag or annotation it was)."""
    out: list[tuple[str, str]] = []
    for item in (nets or "default").split(","):
        name, _, args = item.partition(":")
        if not AC_NAME_RE.match(name):
            raise ValueError(f"{name!r} is not a network name (an AC Name)")
        for kv in args.split(";") if args else ():
            if not _CNI_ARG_RE.match(kv):
                raise ValueError(f"{item!r}: {kv!r} is not K=V (no whitespace or control characters)")
        if any(name == n for n, _ in out):
            raise ValueError(f"network {name!r} is listed twice")
        out.append((name, args))
    alone = [n for n, _ in out if n in ALONE]
    if alone and len(out) > 1:
        raise ValueError(f"{alone[0]} cannot be combined with other networks")
    if any(a for n, a in out if n in NO_ARGS):
        raise ValueError("host, none and all take no arguments")
    return out
