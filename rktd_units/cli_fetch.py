"""`rktd fetch` and `rktd trust`."""

from __future__ import annotations

import urllib.parse
from pathlib import Path

import click

from rktd_units.cli import globals_of
from rktd_units.errors import ImageError, TrustError, UsageError
from rktd_units.fetch import PULL_POLICIES


@click.command("fetch")
@click.argument("images", nargs=-1, required=True)
@click.option(
    "--pull-policy",
    type=click.Choice(PULL_POLICIES),
    default="new",
    show_default=True,
    help="new: use the store's copy if any; update: always fetch; never: only the store.",
)
@click.option("--signature", help="Detached signature of a local or https ACI (default: IMAGE.asc).")
@click.pass_context
def fetch(ctx: click.Context, images: tuple[str, ...], pull_policy: str, signature: str | None) -> None:
    """Fetch IMAGES (path, file://, https://, NAME[:VERSION][,LABEL=VALUE], docker://...) into the store.

    Prints each image's ID on stdout. Signatures are verified against the keys trusted with
    `rktd trust`, unless --insecure-options=image.
    """
    from rktd_units import fetch as fetch_mod
    from rktd_units.store import Store
    from rktd_units.trust import KeyStore

    g = globals_of(ctx)
    if signature and len(images) > 1:
        raise UsageError("--signature applies to one image; give one image with it")
    store = Store(Path(g.dir))
    keys = KeyStore(g.local_config, g.system_config)
    for image in images:
        info = fetch_mod.fetch(
            image,
            store=store,
            keys=keys,
            insecure=g.insecure_options,
            pull_policy=pull_policy,
            signature=signature,
        )
        click.echo(info.id)


def _spaced(fingerprint: str) -> str:
    f = fingerprint.upper()
    return " ".join(f[i : i + 4] for i in range(0, len(f), 4))


def _read_key_source(source: str, allow_http: bool, verify_tls: bool) -> bytes:
    scheme = urllib.parse.urlsplit(source).scheme
    if scheme in ("https", "http"):
        from rktd_units.fetch import Http

        return Http(allow_http=allow_http, verify_tls=verify_tls).get(source)
    path = Path(urllib.parse.unquote(urllib.parse.urlsplit(source).path) if scheme == "file" else source)
    try:
        return path.read_bytes()
    except OSError as e:
        raise TrustError(f"{path}: cannot read key: {e.strerror}") from None


def _discover_keys(prefix: str, allow_http: bool, verify_tls: bool) -> list[str]:
    from rktd_units.appc_discovery import AppRef, discover
    from rktd_units.fetch import Http

    eps = discover(
        AppRef(prefix),
        Http(allow_http=allow_http, verify_tls=verify_tls).get,
        allow_http=allow_http,
        want="keys",
    )
    return list(eps.keys)


@click.command("trust")
@click.argument("keys", nargs=-1)
@click.option("--prefix", help="Trust the keys for images whose name is PREFIX or under PREFIX/.")
@click.option("--root", is_flag=True, help="Trust the keys for every image.")
@click.option(
    "--skip-fingerprint-review", is_flag=True, help="Do not ask to confirm each key's fingerprint."
)
@click.option(
    "--insecure-allow-http", is_flag=True, help="Allow key discovery and download over plain http."
)
@click.pass_context
def trust(
    ctx: click.Context,
    keys: tuple[str, ...],
    prefix: str | None,
    root: bool,
    skip_fingerprint_review: bool,
    insecure_allow_http: bool,
) -> None:
    """Trust OpenPGP public KEYS (files or URLs) for --prefix or as --root keys.

    With --prefix and no KEYS, the keys are found by appc discovery (ac-discovery-pubkeys).
    Keys are stored under LOCAL-CONFIG/trustedkeys/; each stored key's path is printed on stdout.
    """
    from rktd_units.trust import KeyStore, check_prefix, parse_keys

    g = globals_of(ctx)
    if root == (prefix is not None):
        raise UsageError("give exactly one of --prefix=PREFIX and --root")
    # rkt's "pubkey" insecure option allowed fetching keys over insecure connections.
    allow_http = insecure_allow_http or bool({"http", "pubkey"} & g.insecure_options)
    verify_tls = "tls" not in g.insecure_options
    if prefix is not None:
        prefix = check_prefix(prefix)
    sources = list(keys)
    if not sources:
        if prefix is None:
            raise UsageError("--root needs a KEYFILE")
        sources = _discover_keys(prefix, allow_http, verify_tls)
    store = KeyStore(g.local_config, g.system_config)
    for source in sources:
        try:
            found = parse_keys(_read_key_source(source, allow_http, verify_tls))
        except TrustError as e:
            raise TrustError(f"{source}: {e.message}", hint=e.hint) from None
        for key in found:
            what = f'prefix "{prefix}"' if prefix else "all images (root key)"
            click.echo(f'Key "{source}" for {what}', err=True)
            click.echo(f"  fingerprint: {_spaced(key.fingerprint)}", err=True)
            for uid in key.user_ids:
                click.echo(f"  user ID: {uid}", err=True)
            if not skip_fingerprint_review and not _confirm():
                click.echo(f"rktd: not trusting key {key.fingerprint}", err=True)
                continue
            path = store.add(key, prefix=prefix, root=root)
            click.echo(f"rktd: added key {key.fingerprint} for {what}", err=True)
            click.echo(str(path))


def _confirm() -> bool:
    try:
        return click.confirm("Are you sure you want to trust this key?", default=False, err=True)
    except click.exceptions.Abort:
        raise ImageError(
            "no answer to the fingerprint review",
            hint="answer on a terminal or pass --skip-fingerprint-review",
        ) from None
