"""The `rktd` command: one click group; subcommands are imported only when invoked (lean start-up).

`rktd run` starts every pod (it is the units' ExecStart), and importing click and building its
command tree is a good part of a pod's start: a command line that uses only the options of the
tables below (GLOBAL_OPTIONS, then `run` and POD_OPTIONS, then images with PER_APP flags) is parsed
here without click. Anything else (another verb, `--help`, `--version`, an unknown or malformed
option, a value click would refuse) goes to click, whose options are made from the same tables, so
both read a command line alike and click alone words the errors and the help.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
from collections.abc import Callable

from rktd_units import __version__
from rktd_units.errors import EXIT_STAGE0, RktdError, UsageError
from rktd_units.frozen import frozen

TYPE_CHECKING = False  # typing and click are imported only for the type checker (lean start-up)
if TYPE_CHECKING:
    from typing import Any, NoReturn

    import click

    from rktd_units.model import Mount, NameValue, Volume
    from rktd_units.stage0 import ImageArg, RunOptions

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


@frozen
class Globals:
    """The global options, as every verb gets them."""

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


# -- the option tables ------------------------------------------------------------------------------


@frozen
class Option:
    """A `--long` option: a string (the last one given wins), a repeatable one, or a flag."""

    name: str
    dest: str
    help: str | None = None
    default: str | None = None
    multiple: bool = False
    flag: bool = False
    choices: tuple[str, ...] = ()

    def click_option(self) -> Callable[[Any], Any]:
        import click

        kw: dict[str, Any] = {"help": self.help}
        if self.flag:
            kw["is_flag"] = True
        if self.multiple:
            kw["multiple"] = True
        if self.default is not None:
            kw.update(default=self.default, show_default=True)
        if self.choices:
            kw["type"] = click.Choice(list(self.choices))
        return click.option(self.name, self.dest, **kw)


GLOBAL_OPTIONS = (
    Option("--dir", "dir_", "Image store and pod state.", default="/var/lib/rktd"),
    Option("--local-config", "local_config", "Local configuration directory.", default="/etc/rktd"),
    Option("--system-config", "system_config", "System configuration directory.", default="/usr/lib/rktd"),
    Option(
        "--insecure-options",
        "insecure_options",
        f"Comma-separated checks to skip: {', '.join(INSECURE_OPTIONS)}.",
        default="none",
    ),
    Option("--debug", "debug", "Log commands and show tracebacks.", flag=True),
)

# `rktd run` and `rktd prepare`: the pod-wide flags, before the first IMAGE.
POD_OPTIONS = (
    Option("--pod-manifest", "pod_manifest", "pod manifest: a pod NAME on the search path, or a PATH"),
    Option("--name", "pod_name", "pod name (status/list show it; defaults to the manifest's)"),
    Option("--set-env", "set_env", "NAME=VALUE for every app", multiple=True),
    Option("--set-env-file", "set_env_file", "file of NAME=VALUE lines for every app", multiple=True),
    Option("--inherit-env", "inherit_env", "apps inherit rktd's environment", flag=True),
    Option(
        "--volume",
        "volume",
        "NAME,kind=host,source=PATH[,readOnly=true] or kind=empty",
        multiple=True,
    ),
    Option("--net", "net", "networks: default, host, none, NAME[:ARGS],… (default: default)"),
    Option("--dns", "dns", "nameserver for the pod (or host, none)", multiple=True),
    Option("--dns-search", "dns_search", "DNS search domain", multiple=True),
    Option("--dns-opt", "dns_opt", "resolver option (resolv.conf `options`)", multiple=True),
    Option("--dns-domain", "dns_domain", "DNS domain (resolv.conf `domain`)"),
    Option("--hosts-entry", "hosts_entry", "IP=HOSTNAME for /etc/hosts (or host)", multiple=True),
    Option("--hostname", "hostname", "the pod's hostname (default rkt-UUID)"),
    Option("--port", "port", "NAME:[IP:]HOSTPORT: forward a host port to an app port", multiple=True),
    Option("--uuid-file-save", "uuid_file_save", "write the pod's UUID to this file"),
    Option("--interactive", "interactive", "connect the terminal to the (single) app", flag=True),
    Option("--stage1", "stage1", "stage1 flavour", choices=("nspawn", "fly")),
    Option("--pull-policy", "pull_policy", default="new", choices=("new", "update", "never")),
)


def parse_options(args: list[str], options: tuple[Option, ...]) -> tuple[dict[str, Any], list[str]] | None:
    """Parse `options` off the front of `args` as click does, up to the first positional argument:
    (values by dest, the rest). None when click must decide: an option not in the table (`--help`,
    `--`, a short option), a flag given a value, a missing value or one that looks like an option,
    a value not among the choices."""
    by_name = {o.name: o for o in options}
    values: dict[str, Any] = {o.dest: () if o.multiple else False if o.flag else o.default for o in options}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        name, sep, value = args[i].partition("=")
        opt = by_name.get(name)
        if opt is None or (opt.flag and sep):
            return None
        if opt.flag:
            values[opt.dest] = True
        else:
            if not sep:
                i += 1
                if i == len(args) or args[i].startswith("-"):
                    return None
                value = args[i]
            if opt.choices and value not in opt.choices:
                return None
            values[opt.dest] = (*values[opt.dest], value) if opt.multiple else value
        i += 1
    return values, args[i:]


# -- per-app flags, after each IMAGE: parsed here in both paths (click passes them on unprocessed) ---


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1", ""):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise UsageError(f"{text!r} is not a boolean")


def name_value(text: str) -> NameValue:
    from rktd_units.model import NameValue

    name, sep, value = text.partition("=")
    if not sep or not name:
        raise UsageError(f"{text!r} is not NAME=VALUE")
    return NameValue(name, value)


def _kv(text: str, what: str) -> dict[str, str]:
    """`a=1,b=2` (rkt's --volume/--mount syntax); a leading bare word is returned as `name`."""
    out: dict[str, str] = {}
    for i, item in enumerate(text.split(",")):
        key, sep, value = item.partition("=")
        if not sep and i == 0:
            out["name"] = key
        elif not sep:
            raise UsageError(f"{what} {text!r}: {item!r} is not KEY=VALUE")
        else:
            out[key] = value
    return out


def parse_mount(text: str) -> Mount:
    from rktd_units.model import Mount

    kv = _kv(text, "--mount")
    if "volume" not in kv or "target" not in kv:
        raise UsageError(f"--mount {text!r}: expected volume=NAME,target=PATH")
    return Mount(kv["volume"], kv["target"])


def parse_volume(text: str) -> Volume:
    from rktd_units.model import Volume, VolumeKind

    kv = _kv(text, "--volume")
    name = kv.pop("name", None)
    if not name:
        raise UsageError(f"--volume {text!r}: expected NAME,kind=host,source=PATH or NAME,kind=empty")
    try:
        kind = VolumeKind(kv.pop("kind", "host"))
    except ValueError:
        raise UsageError(f"--volume {text!r}: kind must be host or empty") from None
    ro = kv.pop("readOnly", None)
    uid, gid = kv.pop("uid", None), kv.pop("gid", None)
    vol = Volume(
        name,
        kind,
        source=kv.pop("source", None),
        read_only=_bool(ro) if ro is not None else None,
        recursive=_bool(kv.pop("recursive")) if "recursive" in kv else None,
        mode=kv.pop("mode", None),
        uid=int(uid) if uid is not None else None,
        gid=int(gid) if gid is not None else None,
    )
    if kv:
        raise UsageError(f"--volume {text!r}: unknown keys {', '.join(sorted(kv))}")
    if kind == VolumeKind.HOST and not vol.source:
        raise UsageError(f"--volume {text!r}: a host volume needs source=PATH")
    return vol


def _words(text: str) -> tuple[str, ...]:
    return tuple(w for w in text.split(",") if w)


@frozen
class Flag:
    """A per-app flag of `rktd run IMAGE --flag=VALUE`: the ImageArg field it sets, parsed by `parse`."""

    field: str
    parse: Callable[[str], Any]
    repeat: bool = False
    flag_only: bool = False  # --readonly-rootfs without a value means true
    help: str = ""


PER_APP: dict[str, Flag] = {
    "--exec": Flag("exec", str, help="executable to run instead of the image's"),
    "--name": Flag("name", str, help="the app's name in the pod"),
    "--user": Flag("user", str, help="user (number, name in the image, or path)"),
    "--group": Flag("group", str, help="group (number, name in the image, or path)"),
    "--supplementary-gids": Flag(
        "supplementary_gids", lambda t: tuple(int(x) for x in _words(t)), help="comma-separated gids"
    ),
    "--working-dir": Flag("working_dir", str, help="working directory"),
    "--environment": Flag("environment", name_value, repeat=True, help="NAME=VALUE for this app"),
    "--mount": Flag("mounts", parse_mount, repeat=True, help="volume=NAME,target=PATH"),
    "--readonly-rootfs": Flag("readonly_rootfs", _bool, flag_only=True, help="read-only rootfs"),
    "--memory": Flag("memory", str, help="memory limit, e.g. 64M"),
    "--cpu": Flag("cpu", str, help="CPU limit, e.g. 500m"),
    "--cap-retain": Flag("cap_retain", _words, help="capabilities to keep (comma-separated)"),
    "--cap-remove": Flag("cap_remove", _words, help="capabilities to drop (comma-separated)"),
}


def parse_images(tail: list[str]) -> tuple[ImageArg, ...]:
    """`IMAGE [flags] [-- ARGS] --- IMAGE2 …` → ImageArg per image."""
    from rktd_units.stage0 import ImageArg

    groups: list[list[str]] = [[]]
    for token in tail:
        if token == "---":
            groups.append([])
        else:
            groups[-1].append(token)
    out = []
    for group in groups:
        if not group:
            if len(groups) > 1:
                raise UsageError("empty image between '---' separators")
            continue
        image, rest = group[0], group[1:]
        if image.startswith("-"):
            raise UsageError(f"{image}: pod-wide flags go before the first IMAGE, per-app flags after it")
        out.append(ImageArg(image=image, **_per_app(image, rest)))
    return tuple(out)


def _per_app(image: str, tokens: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token == "--":
            values["args"] = tuple(tokens[i + 1 :])
            break
        name, sep, value = token.partition("=")
        flag = PER_APP.get(name)
        if flag is None:
            known = ", ".join(sorted(PER_APP))
            raise UsageError(
                f"{image}: unknown per-app flag {token!r}", hint=f"known: {known}; args after --"
            )
        if not sep:
            if flag.flag_only:
                value = "true"
            elif i + 1 < len(tokens):
                i += 1
                value = tokens[i]
            else:
                raise UsageError(f"{image}: {name} needs a value")
        parsed = flag.parse(value)
        values[flag.field] = (*values.get(flag.field, ()), parsed) if flag.repeat else parsed
        i += 1
    return values


def _read_env_files(paths: tuple[str, ...]) -> tuple[NameValue, ...]:
    out = []
    for path in paths:
        try:
            lines = open(path, encoding="utf-8").read().splitlines()
        except OSError as e:
            raise UsageError(f"--set-env-file {path}: {e.strerror}") from None
        out += [name_value(line) for line in lines if line.strip() and not line.startswith("#")]
    return tuple(out)


def run_options(g: Globals, kw: dict[str, Any], tail: tuple[str, ...] | list[str] = ()) -> RunOptions:
    """stage0's options from the globals, the pod-wide options (by POD_OPTIONS dest) and the images."""
    from rktd_units.stage0 import RunOptions

    return RunOptions(
        data_dir=g.dir,
        local_config=g.local_config,
        system_config=g.system_config,
        insecure=g.insecure_options,
        pod_manifest=kw["pod_manifest"],
        images=parse_images(list(tail)),
        name=kw["pod_name"],
        set_env=tuple(name_value(e) for e in kw["set_env"]) + _read_env_files(kw["set_env_file"]),
        inherit_env=kw["inherit_env"],
        volumes=tuple(parse_volume(v) for v in kw["volume"]),
        net=kw["net"],
        dns=tuple(kw["dns"]),
        dns_search=tuple(kw["dns_search"]),
        dns_opt=tuple(kw["dns_opt"]),
        dns_domain=kw["dns_domain"],
        hosts_entries=tuple(kw["hosts_entry"]),
        hostname=kw["hostname"],
        ports=tuple(kw["port"]),
        uuid_file_save=kw["uuid_file_save"],
        interactive=kw["interactive"],
        stage1=kw["stage1"],
        pull_policy=kw["pull_policy"],
        environ=dict(os.environ),
    )


# -- the globals, and `rktd run` without click ------------------------------------------------------


def _insecure(value: str) -> frozenset[str] | None:
    """The checks `--insecure-options` skips; None if it names an unknown one."""
    opts = frozenset(v.strip() for v in value.split(",") if v.strip())
    if opts - set(INSECURE_OPTIONS):
        return None
    if "all" in opts:
        return frozenset(INSECURE_OPTIONS) - {"none", "all"}
    return opts - {"none"}


def _parse_insecure(value: str) -> frozenset[str]:
    opts = _insecure(value)
    if opts is None:
        import click

        bad = {v.strip() for v in value.split(",") if v.strip()} - set(INSECURE_OPTIONS)
        raise click.BadParameter(f"unknown: {', '.join(sorted(bad))}; known: {', '.join(INSECURE_OPTIONS)}")
    return opts


def _globals(values: dict[str, Any], insecure: frozenset[str]) -> Globals:
    """What the group's callback makes of the global options (and --debug's logging)."""
    if values["debug"]:
        import logging

        logging.basicConfig(level=logging.DEBUG, format="rktd: %(message)s")
    return Globals(
        values["dir_"], values["local_config"], values["system_config"], insecure, values["debug"]
    )


def fast_run(args: list[str]) -> Callable[[], NoReturn] | None:
    """`rktd [GLOBAL OPTIONS] run [POD OPTIONS] IMAGE…`, parsed without click, as a function that runs
    it; None for any other command line."""
    parsed = parse_options(args, GLOBAL_OPTIONS)
    if parsed is None or parsed[1][:1] != ["run"]:
        return None
    values, rest = parsed
    insecure = _insecure(values["insecure_options"])
    pod = parse_options(rest[1:], POD_OPTIONS)
    if insecure is None or pod is None:
        return None
    kw, tail = pod

    def run() -> NoReturn:
        from rktd_units import stage0

        stage0.run(run_options(_globals(values, insecure), kw, tail))

    return run


# -- the click group: made on first use (`rktd_units.cli.cli`) ---------------------------------------


def _make_cli() -> click.Group:
    import click

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

    def cli(ctx: click.Context, **values: Any) -> None:
        """rktd: rkt-style pods as systemd services (stage0 and operator verbs)."""
        ctx.obj = _globals(values, _parse_insecure(values["insecure_options"]))

    callback: Any = click.pass_context(cli)
    for opt in reversed(GLOBAL_OPTIONS):
        callback = opt.click_option()(callback)
    callback = click.version_option(__version__, prog_name="rktd")(callback)
    group = click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})(callback)
    assert isinstance(group, click.Group)
    return group


def _cli() -> click.Group:
    group = globals().get("cli")
    if group is None:
        group = globals()["cli"] = _make_cli()
    assert group is not None
    return group


def __getattr__(name: str) -> Any:
    if name == "cli":
        return _cli()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def globals_of(ctx: click.Context) -> Globals:
    obj = ctx.find_root().obj
    assert isinstance(obj, Globals)
    return obj


# Verbs that are stage0 (a unit's ExecStart): any error of their own, a bad manifest included, is 254,
# so that systemd and operators tell "stage0 refused" from an app's exit status (rkt's convention).
STAGE0_VERBS = frozenset({"run", "prepare", "run-prepared"})


def _exit_code(error: RktdError, args: list[str]) -> int:
    verb = next((a for a in args if not a.startswith("-") and a in COMMANDS), None)
    return EXIT_STAGE0 if verb in STAGE0_VERBS else error.exit_code


def main(argv: list[str] | None = None) -> Any:
    """The one exception boundary: typed errors become one line on stderr and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    debug = "--debug" in args or os.environ.get("RKTD_DEBUG") == "1"
    try:
        run = fast_run(args)
        if run is not None:
            # stage0 lives for milliseconds and execs stage1: the cyclic collector's passes over the
            # objects its imports create are pure start-up cost (~1 ms of every pod start).
            gc.disable()
            run()
        import click

        try:
            return _cli().main(args=args, prog_name="rktd", standalone_mode=False)
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
        _echo_err(f"rktd: {e}")
        sys.exit(_exit_code(e, args))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as e:
        if debug:
            raise
        _echo_err(f"rktd: internal error: {type(e).__name__}: {e} (rerun with --debug for a traceback)")
        sys.exit(EXIT_STAGE0)


def _echo_err(message: str) -> None:
    """`click.echo(message, err=True)`, without importing click for it."""
    if "click" in sys.modules:
        import click

        click.echo(message, err=True)
        return
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
