"""`rktd image …`: list, import, rm, export, extract, render and gc over the image store."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click

from rktd_units import cli
from rktd_units.errors import ImageError, UsageError
from rktd_units.store import ImageInfo, Store

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _store(ctx: click.Context) -> Store:
    return Store(Path(cli.globals_of(ctx).dir))


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def parse_duration(value: str) -> float:
    """`90`, `30s`, `15m`, `24h`, `7d` -> seconds."""
    text = value.strip()
    unit = DURATION_UNITS.get(text[-1:], 0)
    number = text[:-1] if unit else text
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        raise UsageError(f"bad duration {value!r}", hint="e.g. 30s, 15m, 24h, 7d") from None
    if seconds < 0:
        raise UsageError(f"bad duration {value!r}: negative")
    return seconds


def _as_json(info: ImageInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "name": info.name,
        "labels": {lab.name: lab.value for lab in info.labels},
        "size": info.size,
        "importTime": info.import_time,
        "lastUsed": info.last_used,
        "source": info.source,
        "compression": info.compression,
    }


def _stamp(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + " UTC" if t else "-"


@click.group()
def image() -> None:
    """Operate on the image store."""


@image.command("list")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
@click.option("--full", is_flag=True, help="Show full image IDs.")
@click.option("--no-legend", is_flag=True, help="Do not print the header line.")
@click.pass_context
def list_(ctx: click.Context, fmt: str, full: bool, no_legend: bool) -> None:
    """List the images in the store (ID, name, labels, size, import time)."""
    infos = _store(ctx).list()
    if fmt == "json":
        click.echo(json.dumps([_as_json(i) for i in infos], indent=2, sort_keys=True))
        return
    rows = [("ID", "NAME", "LABELS", "SIZE", "IMPORTED")] if not no_legend else []
    for i in infos:
        labels = ",".join(f"{lab.name}={lab.value}" for lab in sorted(i.labels, key=lambda x: x.name))
        rows.append(
            (i.id if full else i.short_id, i.name, labels or "-", human_size(i.size), _stamp(i.import_time))
        )
    widths = [max(len(r[c]) for r in rows) for c in range(4)] if rows else []
    for r in rows:
        click.echo("  ".join(r[c].ljust(widths[c]) for c in range(4)) + "  " + r[4])


@image.command("import")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-devices", is_flag=True, help="Accept device nodes in the rootfs.")
@click.pass_context
def import_(ctx: click.Context, path: Path, allow_devices: bool) -> None:
    """Import a local ACI without signature checks (needs --insecure-options=image; `fetch` verifies)."""
    from rktd_units import aci

    if "image" not in cli.globals_of(ctx).insecure_options:
        raise ImageError(
            f"{path}: `image import` does not verify signatures",
            hint="use `rktd fetch`, or pass --insecure-options=image",
        )
    total = path.stat().st_size if path.exists() else None
    bar = aci.tty_progress(f"importing {path.name}", total)
    try:
        info = _store(ctx).import_aci(path, allow_devices=allow_devices, progress=bar)
    finally:
        if bar is not None:
            bar.done()
    click.echo(info.id)


@image.command("rm")
@click.argument("ids", nargs=-1, required=True)
@click.pass_context
def rm(ctx: click.Context, ids: tuple[str, ...]) -> None:
    """Remove images by ID (or unique ID prefix)."""
    store = _store(ctx)
    failed = False
    for image_id in ids:
        try:
            full = store.resolve(image_id)
            store.remove(full)
            click.echo(f"removed {full}")
        except ImageError as e:
            click.echo(f"rktd: {e}", err=True)
            failed = True
    if failed:
        raise ImageError("some images were not removed")


@image.command("export")
@click.argument("image_id")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.pass_context
def export(ctx: click.Context, image_id: str, out: Path, overwrite: bool) -> None:
    """Write the image's ACI, byte for byte as imported, to OUT."""
    _store(ctx).export(image_id, out, overwrite=overwrite)


def _extract_command(name: str, doc: str) -> click.Command:
    @click.argument("image_id")
    @click.argument("dest", type=click.Path(file_okay=False, path_type=Path))
    @click.option("--rootfs-only", is_flag=True, help="Write only the rootfs' content, without manifest.")
    @click.option("--overwrite", is_flag=True, help="Replace DEST if it exists.")
    @click.pass_context
    def command(ctx: click.Context, image_id: str, dest: Path, rootfs_only: bool, overwrite: bool) -> None:
        store = _store(ctx)
        do = store.render if name == "render" else store.extract
        do(image_id, dest, rootfs_only=rootfs_only, overwrite=overwrite)

    command.__doc__ = doc
    return image.command(name)(command)


extract = _extract_command(
    "extract", "Extract the image's manifest and rootfs/ into DEST (a new directory)."
)
render = _extract_command(
    "render", "Render the image with its dependencies below it and its pathWhitelist applied into DEST."
)


@image.command("cat-manifest")
@click.argument("image_id")
@click.pass_context
def cat_manifest(ctx: click.Context, image_id: str) -> None:
    """Print the image's manifest as stored."""
    store = _store(ctx)
    click.echo((store.image_dir(image_id) / "manifest").read_text(), nl=False)


@image.command("gc")
@click.option(
    "--grace-period",
    default="24h",
    show_default=True,
    help="Remove images not used for this long (s, m, h, d); 0 removes every unused image.",
)
@click.pass_context
def gc(ctx: click.Context, grace_period: str) -> None:
    """Remove leftovers of interrupted imports and images not used for the grace period."""
    store = _store(ctx)
    keep = _images_in_use(ctx)
    for image_id in store.gc(keep=keep, grace_period=parse_duration(grace_period)):
        click.echo(f"removed {image_id}")


def _images_in_use(ctx: click.Context) -> set[str]:
    """IDs of images that pods on this host (in any state, until gc deletes them) refer to, with
    the dependencies they run on."""
    from rktd_units.pods import Pods

    used: set[str] = set()
    for pod in Pods(cli.globals_of(ctx).dir).all():
        for app in pod.config().get("apps", []):
            if not isinstance(app, dict):
                continue
            layers = app.get("layer_ids")
            ids = [app.get("image_id"), *(layers if isinstance(layers, list) else [])]
            used.update(i for i in ids if isinstance(i, str))
    return used
