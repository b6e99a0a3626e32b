"""Pod verbs of `rktd`: run, prepare, run-prepared, list, status, stop, enter, gc, rm (rkt's spellings).

`run` and `prepare` take pod-wide flags first, then `IMAGE [per-app flags] [-- ARGS] --- IMAGE2 …`;
click parses the pod-wide flags and stops at the first IMAGE, the rest is parsed from the PER_APP
table (one entry per flag: its field, parser and help). Both tables are in rktd_units.cli, which
parses a plain `rktd run` itself, without click.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import click

from rktd_units.cli import POD_OPTIONS, globals_of, run_options
from rktd_units.cli import parse_images as parse_images
from rktd_units.cli import parse_mount as parse_mount
from rktd_units.cli import parse_volume as parse_volume
from rktd_units.errors import PodError, UsageError
from rktd_units.pods import children

if TYPE_CHECKING:
    from rktd_units.pods import PodDir

# -- run, prepare, run-prepared ---------------------------------------------------------------------


def pod_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """The pod-wide options (rktd_units.cli.POD_OPTIONS), then the images and their flags unparsed."""
    options = [
        *(opt.click_option() for opt in POD_OPTIONS),
        click.argument("tail", nargs=-1, type=click.UNPROCESSED),
    ]
    for option in reversed(options):
        f = option(f)
    return f


RUN_SETTINGS = {"ignore_unknown_options": True, "allow_interspersed_args": False}


def _run_options(ctx: click.Context, kw: dict[str, Any], tail: tuple[str, ...] = ()) -> Any:
    return run_options(globals_of(ctx), kw, tail)


@click.command(context_settings=RUN_SETTINGS)
@pod_options
@click.pass_context
def run(ctx: click.Context, tail: tuple[str, ...], **kw: Any) -> NoReturn:
    """Run a pod: IMAGE [--exec=… --user=… --mount=…] [-- ARGS] [--- IMAGE2 …], or --pod-manifest."""
    from rktd_units import stage0

    stage0.run(_run_options(ctx, kw, tail))


@click.command(context_settings=RUN_SETTINGS)
@pod_options
@click.pass_context
def prepare(ctx: click.Context, tail: tuple[str, ...], **kw: Any) -> None:
    """Prepare a pod (resolve images, write its directory) without running it; prints its UUID."""
    from rktd_units import stage0
    from rktd_units.pods import State

    pod_dir = stage0.prepare(_run_options(ctx, kw, tail))
    pod_dir.move(State.PREPARED)
    pod_dir.unlock()
    click.echo(pod_dir.uuid)


@click.command("run-prepared")
@click.option("--interactive", is_flag=True, help="(accepted for rkt compatibility)")
@click.argument("pod")
@click.pass_context
def run_prepared(ctx: click.Context, interactive: bool, pod: str) -> NoReturn:
    """Run a prepared pod (by UUID, UUID prefix or name)."""
    from rktd_units import stage0

    g = globals_of(ctx)
    opts = stage0.RunOptions(data_dir=g.dir, local_config=g.local_config, system_config=g.system_config)
    stage0.run_prepared(opts, pod)


# -- list, status -----------------------------------------------------------------------------------


def _pods(ctx: click.Context) -> Any:
    from rktd_units.pods import Pods

    return Pods(globals_of(ctx).dir)


def _each_pod(
    ctx: click.Context, pods: tuple[str, ...], uuid_file: str | None, act: Callable[[PodDir], None]
) -> None:
    """`act` on every pod named (its UUID printed when done); each failure reported on one line, the
    others still done; exit 254 at the end if any failed."""
    failed = 0
    for ref in _refs(ctx, pods, uuid_file):
        try:
            pod_dir = _pods(ctx).find(ref)
            act(pod_dir)
            click.echo(pod_dir.uuid)
        except PodError as e:
            click.echo(f"rktd: {e}", err=True)
            failed += 1
    if failed:
        sys.exit(254)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@click.command("list")
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--full", is_flag=True, help="full UUIDs and image IDs")
@click.option("--no-legend", is_flag=True, help="no header line")
@click.pass_context
def list_(ctx: click.Context, fmt: str, full: bool, no_legend: bool) -> None:
    """List pods with their apps and state."""
    infos = [p.info() for p in _pods(ctx).all()]
    infos.sort(key=lambda i: i["created"])
    if fmt == "json":
        click.echo(json.dumps(infos, indent=2, sort_keys=True))
        return
    rows = [] if no_legend else [("UUID", "NAME", "APP", "IMAGE NAME", "STATE", "CREATED")]
    for info in infos:
        apps = info["apps"] or [{"name": "-", "image_name": "-"}]
        for i, app in enumerate(apps):
            first = i == 0
            uuid = info["uuid"] if full else info["uuid"][:8]
            rows.append(
                (
                    uuid if first else "",
                    (info["name"] or "-") if first else "",
                    app["name"] or "-",
                    app["image_name"] or "-",
                    info["state"] if first else "",
                    _when(info["created"]) if first else "",
                )
            )
    widths = [max(len(r[c]) for r in rows) for c in range(6)] if rows else []
    for r in rows:
        click.echo("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())


@click.command()
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--wait", is_flag=True, help="wait until the pod has exited")
@click.argument("pod")
@click.pass_context
def status(ctx: click.Context, fmt: str, wait: bool, pod: str) -> None:
    """Show a pod's state (by UUID, unique UUID prefix, or pod name)."""
    pod_dir = _pods(ctx).find(pod)
    if wait:
        while pod_dir.is_locked():
            time.sleep(0.1)
    info = pod_dir.info()
    if fmt == "json":
        click.echo(json.dumps(info, indent=2, sort_keys=True))
        return
    click.echo(f"uuid={info['uuid']}")
    click.echo(f"name={info['name'] or ''}")
    click.echo(f"state={info['state']}")
    click.echo(f"stage1={info['stage1'] or ''}")
    click.echo(f"created={_when(info['created'])}")
    click.echo(f"networks={info['networks'] or ''}")
    if "pid" in info:
        click.echo(f"pid={info['pid']}")
    for itf in info.get("interfaces", []):
        click.echo(f"{itf['network']}:{itf['ifname']}={','.join(itf['addresses'])}")
    for app, code in sorted(info.get("app_exit_statuses", {}).items()):
        click.echo(f"app-{app}={code}")


# -- stop, enter, gc, rm ----------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 100_000:
        p = todo.pop()
        out.append(p)
        todo += children(p)
    return out


def _kill_pod(pod_dir: Any, pid: int, cfg: dict[str, Any], *, stage1: bool) -> None:
    """SIGKILL the pod. nspawn: its init (PID 1 of the pod's namespace, so every app dies with it),
    and with `stage1` systemd-nspawn too (else it notices and cleans up after itself). fly: stage1
    and every process below it, listed first: a fly stage1 that keeps a parent for post-stop
    handlers has the app as its child, and an app that changed its uid has lost its parent-death
    signal, so it would outlive stage1 and keep the pod's lock."""
    targets: list[int] = []
    if cfg.get("stage1") == "fly":
        targets = _descendants(pid)
    else:
        with contextlib.suppress(PodError):
            targets.append(pod_init_pid(pod_dir))
        if stage1:
            targets.append(pid)
    for target in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(target, signal.SIGKILL)


def pod_init_pid(pod_dir: Any) -> int:
    """The pod's first process: nspawn's child (the init, PID 1 of the pod), or the fly app itself."""
    pid = pod_dir.pid()
    if pid is None or not pod_dir.is_locked():
        raise PodError(f"pod {pod_dir.uuid} is not running")
    if pod_dir.config().get("stage1") == "fly":
        return int(pid)
    kids = children(pid)
    if not kids:
        raise PodError(f"pod {pod_dir.uuid}: its init is not running yet")
    return kids[0]


def stop_pod(pod_dir: Any, *, force: bool, timeout: float | None) -> None:
    """SIGTERM (the pod's stop timeout, then SIGKILL) and wait; then release what it leaves."""
    from rktd_units.pods import release_resources

    if not pod_dir.is_locked():
        raise PodError(f"pod {pod_dir.uuid} is not running")
    cfg = pod_dir.config()
    grace = float(cfg.get("stop_timeout", 30)) if timeout is None else timeout
    pid = pod_dir.pid()
    if pid is None:
        raise PodError(f"pod {pod_dir.uuid}: its pid file does not name the process holding its lock")
    if force:
        _kill_pod(pod_dir, pid, cfg, stage1=False)
    else:
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace + 5
    killed = force
    while pod_dir.is_locked():
        now = time.monotonic()
        if now > deadline and not killed:
            _kill_pod(pod_dir, pid, cfg, stage1=True)
            killed, deadline = True, now + 10
        elif now > deadline:
            raise PodError(
                f"pod {pod_dir.uuid}: still running 10 s after SIGKILL (its lock is held)",
                hint=f"look for its processes: fuser -v {pod_dir.path}",
            )
        time.sleep(0.05)
    release_resources(pod_dir)


def _refs(ctx: click.Context, pods: tuple[str, ...], uuid_file: str | None) -> list[str]:
    refs = list(pods)
    if uuid_file:
        refs.append(_pods(ctx).read_uuid_file(uuid_file))
    if not refs:
        raise UsageError("name a pod (UUID, UUID prefix or name) or give --uuid-file")
    return refs


UUID_FILE = click.option("--uuid-file", help="read the pod's UUID from this file (see run --uuid-file-save)")


@click.command()
@click.option("--force", is_flag=True, help="SIGKILL at once")
@click.option("--timeout", type=float, help="seconds before SIGKILL (default: the pod's stop timeout)")
@UUID_FILE
@click.argument("pods", nargs=-1)
@click.pass_context
def stop(
    ctx: click.Context, force: bool, timeout: float | None, uuid_file: str | None, pods: tuple[str, ...]
) -> None:
    """Stop running pods and wait until they are gone."""
    _each_pod(ctx, pods, uuid_file, lambda pod_dir: stop_pod(pod_dir, force=force, timeout=timeout))


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option("--app", help="the app to enter (default: the only one)")
@click.argument("pod")
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@click.pass_context
def enter(ctx: click.Context, app: str | None, pod: str, command: tuple[str, ...]) -> NoReturn:
    """Run a command (default /bin/sh) in a running pod's app, as the app: its user, capabilities,
    cgroup, seccomp filter."""
    pod_dir = _pods(ctx).find(pod)
    cfg = pod_dir.config()
    names = [a["name"] for a in cfg.get("apps", [])]
    if app is None:
        if len(names) != 1:
            raise UsageError(f"pod has apps {', '.join(names)}: choose one with --app")
        app = names[0]
    if app not in names:
        raise UsageError(f"pod has no app {app!r}", hint=f"apps: {', '.join(names)}")
    pid = pod_init_pid(pod_dir)
    if cfg.get("stage1") == "fly":
        rootfs = f"{pod_dir.path}/stage1/rootfs/opt/stage2/{app}/rootfs"
    else:
        rootfs = f"/opt/stage2/{app}/rootfs"
    from rktd_units.stage1.enter import enter_app

    spec = next(a for a in cfg["apps"] if a["name"] == app)
    enter_app(pid, cfg, spec, rootfs, list(command or ("/bin/sh",)))


def parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise UsageError(f"{text!r} is not a duration (e.g. 30m, 10s)") from None


@click.command()
@click.option("--grace-period", default="30m", show_default=True, help="keep exited pods this long")
@click.pass_context
def gc(ctx: click.Context, grace_period: str) -> None:
    """Mark exited pods as garbage and remove garbage older than the grace period."""
    from rktd_units import pods

    report = pods.gc(_pods(ctx), grace=parse_duration(grace_period))
    for uuid in report.marked:
        click.echo(f"marked {uuid}")
    for uuid in report.removed:
        click.echo(f"removed {uuid}")
    for err in report.errors:
        click.echo(f"rktd: gc: {err}", err=True)
    if report.errors:
        sys.exit(254)


@click.command()
@UUID_FILE
@click.argument("pods", nargs=-1)
@click.pass_context
def rm(ctx: click.Context, uuid_file: str | None, pods: tuple[str, ...]) -> None:
    """Remove pods that are not running (with their network, cgroups and files)."""
    from rktd_units.pods import remove

    def remove_stopped(pod_dir: PodDir) -> None:
        if pod_dir.is_locked():
            raise PodError(f"pod {pod_dir.uuid} is running or being prepared", hint="rktd stop it first")
        remove(pod_dir)

    _each_pod(ctx, pods, uuid_file, remove_stopped)
