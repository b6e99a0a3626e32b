"""`rktd validate`, `rktd cat-manifest` and `rktd export-kube`: check and show pod manifests."""

from __future__ import annotations

from pathlib import Path

import click

from rktd_units import formats, podpath
from rktd_units.errors import ManifestError, RktdError
from rktd_units.model import ManifestFormat, PodFile


def _check_one(target: str) -> tuple[list[PodFile], list[ManifestError | RktdError]]:
    """Load one command-line target: a directory of manifests, a manifest file, or a pod name."""
    if Path(target).is_dir():
        pods, errors = podpath.load_all([Path(target)])
        return pods, list(errors)
    try:
        return [podpath.find(target)], []
    except RktdError as e:
        return [], [e]


def _report(error: RktdError) -> None:
    if isinstance(error, ManifestError):
        click.echo(str(error), err=True)
    else:
        click.echo(f"rktd: {error}", err=True)


@click.command()
@click.argument("targets", nargs=-1, metavar="[PATH|NAME]...")
@click.pass_context
def validate(ctx: click.Context, targets: tuple[str, ...]) -> None:
    """Check pod manifests: every one on the search path, or the given files, directories or names.

    Prints `PATH: ok` for each valid manifest; each problem is one line on stderr,
    `PATH: field: message (hint)`, and the exit status is 1 if there was any.
    """
    pods: list[PodFile] = []
    errors: list[ManifestError | RktdError] = []
    if targets:
        for target in targets:
            found, problems = _check_one(target)
            pods += found
            errors += problems
        names = podpath.all_names(podpath.scan()[0]) | {p.name for p in pods}
    else:
        candidates, scan_errors = podpath.scan()
        names = podpath.all_names(candidates)
        errors += scan_errors
        for candidate in candidates:
            try:
                pods.append(podpath.load_candidate(candidate))
            except ManifestError as e:
                errors.append(e)
    for pod_file in pods:
        dangling = podpath.dangling_references(pod_file, names)
        if dangling:
            errors += dangling
        else:
            click.echo(f"{pod_file.path}: ok")
    for error in errors:
        _report(error)
    if not targets and not pods and not errors:
        where = ":".join(str(d) for d in podpath.search_path())
        click.echo(f"no pod manifests in {where}", err=True)
    if errors:
        ctx.exit(1)


@click.command("cat-manifest")
@click.argument("pod", metavar="NAME|PATH")
def cat_manifest(pod: str) -> None:
    """Print a pod's manifest as canonical appc PodManifest JSON."""
    click.echo(formats.dump(podpath.find(pod), ManifestFormat.APPC), nl=False)


@click.command("export-kube")
@click.argument("pod", metavar="NAME|PATH")
def export_kube(pod: str) -> None:
    """Print a pod as a Kubernetes v1 Pod (YAML), to move it to a cluster."""
    click.echo(formats.dump(podpath.find(pod), ManifestFormat.KUBERNETES), nl=False)
