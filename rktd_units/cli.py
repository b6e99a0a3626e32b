"""The `rktd` command: one click group; subcommands are imported only when invoked (lean start-up)."""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from typing import Any

import click

from rktd_units import __version__
from rktd_units.errors import EXIT_STAGE0, RktdError

# name -> "module:attribute". Each area owns its module; adding a verb is adding a line here.
COMMANDS: dict[str, str] = {
    "validate": "rktd_units.cli_validate:validate",
    "cat-manifest": "rktd_units.cli_validate:cat_manifest",
    "export-kube": "rktd_units.cli_validate:export_kube",
    "fetch": "rktd_units.cli_fetch:fetch",
    "trust": "rktd_units.cli_fetch:trust",
    "image": "rktd_units.cli_image:image",
    "run": "rktd_units.cli_pods:run",
    "prepare": "rktd_units.cli_pods:prepare",
    "run-prepared": "rktd_units.cli_pods:run_prepared",
    "list": "rktd_units.cli_pods:list_",
    "status": "rktd_units.cli_pods:status",
    "stop": "rktd_units.cli_pods:stop",
    "enter": "rktd_units.cli_pods:enter",
    "gc": "rktd_units.cli_pods:gc",
    "rm": "rktd_units.cli_pods:rm",
}


@dataclass(frozen=True)
class Globals:
    dir: str
    local_config: str
    system_config: str
    insecure_options: frozenset[str]
    debug: bool


INSECURE_OPTIONS = (
    "none",
    "image",
    "tls",
    "http",
    "pubkey",
    "capabilities",
    "paths",
    "seccomp",
    "ondisk",
    "all",
)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd


def _parse_insecure(value: str) -> frozenset[str]:
    opts = frozenset(v.strip() for v in value.split(",") if v.strip())
    bad = opts - set(INSECURE_OPTIONS)
    if bad:
        raise click.BadParameter(f"unknown: {', '.join(sorted(bad))}; known: {', '.join(INSECURE_OPTIONS)}")
    if "all" in opts:
        return frozenset(INSECURE_OPTIONS) - {"none", "all"}
    return opts - {"none"}


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rktd")
@click.option("--dir", "dir_", default="/var/lib/rktd", show_default=True, help="Image store and pod state.")
@click.option(
    "--local-config", default="/etc/rktd", show_default=True, help="Local configuration directory."
)
@click.option(
    "--system-config", default="/usr/lib/rktd", show_default=True, help="System configuration directory."
)
@click.option(
    "--insecure-options",
    default="none",
    show_default=True,
    help=f"Comma-separated checks to skip: {', '.join(INSECURE_OPTIONS)}.",
)
@click.option("--debug", is_flag=True, help="Log commands and show tracebacks.")
@click.pass_context
def cli(
    ctx: click.Context, dir_: str, local_config: str, system_config: str, insecure_options: str, debug: bool
) -> None:
    """rktd: rkt-style pods as systemd services (stage0 and operator verbs)."""
    if debug:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="rktd: %(message)s")
    ctx.obj = Globals(dir_, local_config, system_config, _parse_insecure(insecure_options), debug)


def globals_of(ctx: click.Context) -> Globals:
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


def main(argv: list[str] | None = None) -> Any:
    """The one exception boundary: typed errors become one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("RKTD_DEBUG") == "1"
    try:
        return cli.main(args=args, prog_name="rktd", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(EXIT_STAGE0 if e.exit_code == 1 else e.exit_code)
    except click.exceptions.Abort:
        click.echo("rktd: aborted", err=True)
        sys.exit(EXIT_STAGE0)
    except RktdError as e:
        if debug:
            raise
        click.echo(f"rktd: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        click.echo(
            f"rktd: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)", err=True
        )
        sys.exit(EXIT_STAGE0)
