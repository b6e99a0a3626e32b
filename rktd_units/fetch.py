"""`rktd fetch`: get an image into the store from a file, an https URL, appc discovery or a registry.

Sources, as rkt:
- a path or `file://` URL to an ACI (its signature is `PATH.asc` next to it);
- an `https://` URL to an ACI (signature at `URL.asc`); `http://` only with `--insecure-options=http`;
- an appc image string `example.com/app:1.0,os=linux`, resolved by appc meta discovery;
- `docker://[REGISTRY[:PORT]/]NAME[:TAG]`, converted like docker2aci (docker.py); unsigned, so it
  needs `--insecure-options=image`.

Nothing reaches the store before its signature verified (or the user skipped verification), so a
refused image leaves the store exactly as it was.

TLS: certificates are checked against the system CAs; `SSL_CERT_FILE` / `SSL_CERT_DIR` (OpenSSL's
own variables) name other CAs, e.g. a private registry's; `--insecure-options=tls` skips the check.
"""

from __future__ import annotations

import http.client
import ipaddress
import shutil
import ssl
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from rktd_units.errors import ImageError, TrustError
from rktd_units.model import ImageManifest, ImageRef

if TYPE_CHECKING:
    import hashlib

    from rktd_units.appc_discovery import AppRef
    from rktd_units.store import ImageInfo, Store
    from rktd_units.trust import KeyStore

PULL_POLICIES = ("new", "update", "never")
MAX_SMALL = 4 << 20  # discovery pages, signatures, keys, registry manifests
CHUNK = 1 << 20
DEFAULT_TIMEOUT = 60.0
MAX_IMAGE = 16 << 30  # bytes of a downloaded ACI, as the store's default size limit


class HttpError(ImageError):
    """An HTTP request failed; `status` is the HTTP status, None when no answer came."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.headers = {k.lower(): v for k, v in (headers or {}).items()}


def warn(message: str) -> None:
    print(f"rktd: warning: {message}", file=sys.stderr, flush=True)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects (at most 10, urllib's limit), never from https down to plain http."""

    def __init__(self, allow_http: bool) -> None:
        self.allow_http = allow_http

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        scheme = urllib.parse.urlsplit(newurl).scheme
        if scheme not in ("https", "http") or (scheme == "http" and not self.allow_http):
            raise HttpError(
                f"{req.full_url}: refusing redirect to {newurl}",
                hint="plain http needs --insecure-options=http",
            )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


@dataclass
class Http:
    """HTTPS (and, when allowed, plain HTTP) GETs with timeouts, size limits and TTY progress."""

    allow_http: bool = False
    verify_tls: bool = True
    timeout: float = DEFAULT_TIMEOUT
    progress: bool = field(default_factory=lambda: sys.stderr.isatty())

    _built: tuple[urllib.request.OpenerDirector, urllib.request.OpenerDirector] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def _openers(self) -> tuple[urllib.request.OpenerDirector, urllib.request.OpenerDirector]:
        """(through the environment's proxies, direct), built on first use: loading the system's CAs
        costs ~20 ms, and a pod whose image is already in the store never opens a URL."""
        if self._built is None:
            ctx = ssl.create_default_context()  # honours SSL_CERT_FILE and SSL_CERT_DIR
            if not self.verify_tls:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            handlers = [urllib.request.HTTPSHandler(context=ctx), _Redirects(self.allow_http)]
            # Loopback never goes through a proxy from the environment.
            direct = urllib.request.build_opener(urllib.request.ProxyHandler({}), *handlers)
            self._built = (urllib.request.build_opener(*handlers), direct)
        return self._built

    def check_url(self, url: str) -> None:
        scheme = urllib.parse.urlsplit(url).scheme
        if scheme == "https" or (scheme == "http" and self.allow_http):
            return
        if scheme == "http":
            raise HttpError(f"refusing plain http URL {url}", hint="allow it with --insecure-options=http")
        raise HttpError(f"unsupported URL scheme in {url}", hint="use https://")

    def open(self, url: str, headers: Mapping[str, str] | None = None) -> http.client.HTTPResponse:
        """GET `url`; HttpError with the status on any failure."""
        self.check_url(url)
        req = urllib.request.Request(url, method="GET")
        for k, v in (headers or {}).items():
            # Unredirected: credentials are not sent on to where a registry redirects blobs.
            req.add_unredirected_header(k, v)
        proxied, direct = self._openers()
        opener = direct if _is_loopback(urllib.parse.urlsplit(url).hostname) else proxied
        try:
            resp = opener.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            headers = dict(e.headers.items()) if e.headers else {}
            e.close()
            raise HttpError(f"{url}: HTTP {e.code} {e.reason}", status=e.code, headers=headers) from None
        except urllib.error.URLError as e:
            raise HttpError(f"{url}: {e.reason}", hint=_tls_hint(e.reason)) from None
        except (OSError, http.client.HTTPException) as e:
            raise HttpError(f"{url}: {e}") from None
        assert isinstance(resp, http.client.HTTPResponse)
        return resp

    def get(self, url: str, *, limit: int = MAX_SMALL, headers: Mapping[str, str] | None = None) -> bytes:
        with self.open(url, headers) as resp:
            try:
                data = resp.read(limit + 1)
            except (OSError, http.client.HTTPException) as e:
                raise HttpError(f"{url}: {e}") from None
        if len(data) > limit:
            raise HttpError(f"{url}: answer larger than {limit} bytes")
        return data

    def download(
        self,
        url: str,
        dest: BinaryIO,
        *,
        headers: Mapping[str, str] | None = None,
        limit: int | None = None,
        label: str | None = None,
        hasher: hashlib._Hash | None = None,
    ) -> int:
        """Stream `url` into `dest`; the byte count. Progress on stderr when it is a terminal.
        `hasher` (a hashlib object) is updated with every chunk written."""
        from rktd_units.aci import tty_progress

        with self.open(url, headers) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = tty_progress(f"Downloading {label or url}", total) if self.progress else None
            n = 0
            try:
                while chunk := resp.read(CHUNK):
                    n += len(chunk)
                    if limit is not None and n > limit:
                        raise HttpError(f"{url}: larger than the limit of {limit} bytes")
                    dest.write(chunk)
                    if hasher is not None:
                        hasher.update(chunk)
                    if bar:
                        bar(n)
            except (OSError, http.client.HTTPException) as e:
                raise HttpError(f"{url}: download interrupted: {e}") from None
            finally:
                if bar:
                    bar.done()
        if total is not None and n != total:
            raise HttpError(f"{url}: got {n} bytes of {total}")
        return n


def _tls_hint(reason: object) -> str | None:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return "name the CA with SSL_CERT_FILE=..., or skip the check with --insecure-options=tls"
    return None


# ---------------------------------------------------------------------------------------------------


@dataclass
class Fetcher:
    """Everything one fetch needs: where images go, which keys are trusted, what may be skipped."""

    store: Store
    keys: KeyStore
    insecure: frozenset[str] = frozenset()
    pull_policy: str = "new"
    http: Http = field(default_factory=Http)

    def __post_init__(self) -> None:
        if self.pull_policy not in PULL_POLICIES:
            raise ImageError(
                f"unknown pull policy {self.pull_policy!r}", hint=f"use {'|'.join(PULL_POLICIES)}"
            )

    @property
    def skip_verify(self) -> bool:
        return "image" in self.insecure

    def fetch(self, image: str, *, signature: str | None = None) -> ImageInfo:
        if image.startswith("docker://"):
            return self.fetch_docker(image)
        scheme = urllib.parse.urlsplit(image).scheme
        if scheme in ("https", "http"):
            return self.fetch_url(image, signature=signature)
        if scheme == "file":
            return self.fetch_file(Path(urllib.parse.unquote(urllib.parse.urlsplit(image).path)), signature)
        if image.startswith("sha512-"):
            return self.store.get(image)
        if "://" in image:
            raise ImageError(
                f"unsupported image source {image!r}", hint="use a path, https://, docker:// or a name"
            )
        path = Path(image)
        if image.startswith(("/", "./", "../")) or image.endswith(".aci") or path.exists():
            return self.fetch_file(path, signature)
        return self.fetch_name(image)

    # --- verification and import -------------------------------------------------------------------

    def _checked_import(
        self, aci: Path, sig: Path | None, source: str, app: AppRef | None = None
    ) -> ImageInfo:
        """Check and import `aci` (when it is to be verified: a file only this process writes, so the
        signature covers the very bytes imported). One tar reader, rktd's own, gives the manifest whose
        name selects the keys (and which discovery must have asked for), and the import commits only if
        the manifest it extracted is that same one: the name checked is the name stored.
        """
        manifest = read_manifest(aci)
        if app is not None:
            check_discovered(manifest, app)
        if self.skip_verify:
            warn(f"not verifying the signature of {manifest.name} from {source} (--insecure-options=image)")
        elif sig is None:
            raise TrustError(
                f"image {manifest.name} from {source} has no signature",
                hint="publish its detached signature as IMAGE.asc (or give --signature), "
                "or skip the check with --insecure-options=image",
            )
        else:
            from rktd_units.trust import verify

            verify(manifest.name, aci, sig, self.keys)

        def same(extracted: ImageManifest) -> None:
            if extracted != manifest:
                raise TrustError(f"{source}: the image's manifest is not the one that was checked")

        return self._import(aci, trusted=not self.skip_verify, source=source, check=same)

    def _import(
        self,
        aci: Path,
        *,
        trusted: bool,
        source: str,
        check: Callable[[ImageManifest], object] | None = None,
    ) -> ImageInfo:
        from rktd_units.aci import tty_progress

        bar = tty_progress("Importing") if self.http.progress else None
        try:
            return self.store.import_aci(aci, trusted=trusted, source=source, progress=bar, check=check)
        finally:
            if bar:
                bar.done()

    # --- sources -------------------------------------------------------------------------------------

    def fetch_file(self, path: Path, signature: str | None = None) -> ImageInfo:
        if not path.is_file():
            raise ImageError(f"{path}: no such image file")
        sig = Path(signature) if signature else path.with_name(path.name + ".asc")
        if signature and not sig.is_file():
            raise ImageError(f"{sig}: no such signature file")
        if self.pull_policy == "never":
            found = self._by_source(str(path.resolve()))
            if found is None:
                raise ImageError(f"{path} is not in the store and the pull policy is never")
            return found
        if self.skip_verify or not sig.is_file():
            return self._checked_import(path, None, str(path))
        # Verify and import one private copy, so that the file cannot be swapped between the two reads.
        with tempfile.TemporaryDirectory(prefix="rktd-fetch-") as tmp:
            copy = Path(tmp) / "image.aci"
            with open(path, "rb") as src, open(copy, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            return self._checked_import(copy, sig, str(path))

    def fetch_url(self, url: str, *, signature: str | None = None) -> ImageInfo:
        if self.pull_policy != "update":
            found = self._by_source(url)
            if found is not None or self.pull_policy == "never":
                if found is None:
                    raise ImageError(f"{url} is not in the store and the pull policy is never")
                return found
        self.http.check_url(url)
        with tempfile.TemporaryDirectory(prefix="rktd-fetch-") as tmp:
            aci, sig = self._download_pair(url, signature or url + ".asc", Path(tmp))
            return self._checked_import(aci, sig, url)

    def _download_pair(self, url: str, sig_url: str, tmp: Path) -> tuple[Path, Path | None]:
        aci, sig = tmp / "image.aci", tmp / "image.aci.asc"
        with open(aci, "wb") as f:
            self.http.download(url, f, label=url, limit=MAX_IMAGE)
        if self.skip_verify:
            return aci, None
        if urllib.parse.urlsplit(sig_url).scheme not in ("https", "http"):
            local = Path(sig_url)
            if not local.is_file():
                raise ImageError(f"{sig_url}: no such signature file")
            return aci, local
        try:
            sig.write_bytes(self.http.get(sig_url))
        except HttpError as e:
            if e.status == 404:
                return aci, None
            raise
        return aci, sig

    def fetch_name(self, image: str) -> ImageInfo:
        from rktd_units.appc_discovery import parse_app

        return self.fetch_app(parse_app(image))

    def fetch_app(self, app: AppRef) -> ImageInfo:
        """An appc image by name and labels: from the store per the pull policy, else by discovery."""
        from rktd_units.appc_discovery import discover

        if self.pull_policy != "update":
            found = self.store.find_verified(app.name, dict(app.labels), insecure=self.insecure)
            if found is not None:
                return found
            if self.pull_policy == "never":
                raise ImageError(f"image {app} is not in the store and the pull policy is never")
        full = app.with_defaults()
        allow_http = "http" in self.insecure
        eps = discover(full, self.http.get, allow_http=allow_http)
        usable = [
            e
            for e in eps.acis
            if urllib.parse.urlsplit(e.aci).scheme in (("https", "http") if allow_http else ("https",))
        ]
        if not usable:
            raise ImageError(
                f"discovery of {app} found no endpoint this host can use: "
                + ", ".join(e.aci for e in eps.acis),
                hint="an https:// template is needed (http:// with --insecure-options=http)",
            )
        errors = []
        for ep in usable:
            with tempfile.TemporaryDirectory(prefix="rktd-fetch-") as tmp:
                try:
                    aci, sig = self._download_pair(ep.aci, ep.asc, Path(tmp))
                except HttpError as e:
                    errors.append(e.message)
                    continue
                return self._checked_import(aci, sig, ep.aci, app)
        raise ImageError(f"could not download {app}: {'; '.join(errors)}")

    def fetch_docker(self, image: str) -> ImageInfo:
        from rktd_units import docker

        ref = docker.parse_ref(image)
        if self.pull_policy != "update":
            if ref.digest:  # a digest names exactly one image: the one fetched by that reference
                found = self._by_source(image)
            else:
                found = self.store.find(ref.aci_name, {"version": ref.tag or "latest"}, with_docker=True)
            if found is not None:
                return found
            if self.pull_policy == "never":
                raise ImageError(f"image {image} is not in the store and the pull policy is never")
        if not self.skip_verify:
            raise TrustError(
                f"docker images carry no signature: {image} cannot be verified",
                hint="fetch it with --insecure-options=image if you trust the registry",
            )
        warn(f"not verifying {image}: docker images are unsigned (--insecure-options=image)")
        with tempfile.TemporaryDirectory(prefix="rktd-docker-") as tmp:
            aci = docker.fetch_aci(ref, self.http, Path(tmp))
            return self._import(aci, trusted=False, source=image)

    def _by_source(self, source: str) -> ImageInfo | None:
        for info in self.store.list():
            if getattr(info, "source", None) == source:
                return info
        return None


# ---------------------------------------------------------------------------------------------------


def read_manifest(aci: Path) -> ImageManifest:
    """The image manifest of the ACI at `aci` (any compression), read without extracting anything, by
    the tar reader that imports it (aci.py): never by another one, which may read another manifest."""
    from rktd_units import aci as aci_mod

    try:
        with open(aci, "rb") as f:
            return aci_mod.read_manifest(f)
    except OSError as e:
        raise ImageError(f"{aci}: not a readable ACI: {e.strerror}") from None
    except ImageError as e:
        raise ImageError(f"{aci}: not a usable ACI: {e.message}", hint=e.hint) from None


def check_discovered(manifest: ImageManifest, app: AppRef) -> None:
    """The spec's rule: the name and the labels asked for must be those of the image found."""
    if manifest.name != app.name:
        raise ImageError(f"discovery for {app.name} returned image {manifest.name}")
    for key, value in app.labels:
        have = manifest.label(key)
        if have != value:
            raise ImageError(f"discovery for {app} returned an image with {key}={have or '(none)'}")


def fetch(
    image: str,
    *,
    store: Store,
    keys: KeyStore,
    insecure: frozenset[str] = frozenset(),
    pull_policy: str = "new",
    signature: str | None = None,
    http: Http | None = None,
) -> ImageInfo:
    """Fetch one image into `store` (see the module doc); the store's ImageInfo of it."""
    h = http or Http(allow_http="http" in insecure, verify_tls="tls" not in insecure)
    return Fetcher(store, keys, insecure, pull_policy, h).fetch(image, signature=signature)


def fetch_ref(
    ref: ImageRef,
    *,
    store: Store,
    keys: KeyStore,
    insecure: frozenset[str] = frozenset(),
    pull_policy: str = "new",
) -> ImageInfo:
    """The image a pod manifest's app names (by ID, docker:// name, or appc name and labels)."""
    from rktd_units.appc_discovery import AC_IDENTIFIER, AppRef

    if ref.id:
        return store.get(ref.id)
    if not ref.name:
        raise ImageError("the image has neither a name nor an id")
    h = Http(allow_http="http" in insecure, verify_tls="tls" not in insecure)
    fetcher = Fetcher(store, keys, insecure, pull_policy, h)
    if ref.is_docker:
        return fetcher.fetch_docker(ref.name)
    if not AC_IDENTIFIER.match(ref.name):
        raise ImageError(f"invalid image name {ref.name!r}")
    return fetcher.fetch_app(AppRef(ref.name, tuple(sorted((nv.name, nv.value) for nv in ref.labels))))
