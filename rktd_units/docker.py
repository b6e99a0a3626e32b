"""`docker://` images: a Docker registry v2 client and a docker2aci-like conversion to one ACI.

Reference: `docker://[REGISTRY[:PORT]/]NAME[:TAG|@DIGEST]`. The first component is a registry when
it holds a `.` or `:` or is `localhost` (Docker's rule); otherwise the registry is Docker Hub and a
one-component name gets `library/`. The tag defaults to `latest`.

Registry: HTTPS (`SSL_CERT_FILE` for a private CA, `--insecure-options=tls` to skip the check);
plain HTTP only with `--insecure-options=http`, as a fallback when HTTPS cannot connect, as Docker
does for insecure registries. Anonymous bearer tokens (`WWW-Authenticate: Bearer realm=...`) are
fetched as needed. Manifests: Docker schema 2 and OCI, and their lists/indexes (the entry for
linux and this host's architecture is used). Every blob is checked against its sha256 digest.

Conversion (as docker2aci squashed images): the layers are applied in order into one tree, with
whiteouts (`.wh.NAME` hides NAME of lower layers, `.wh..wh..opq` hides a directory's lower-layer
content); the image is named `REGISTRY/REPOSITORY` (sanitized to an AC Identifier, e.g.
`127.0.0.1_5000/busybox`) with labels version=TAG, os, arch. Entrypoint+Cmd become exec;
User `u[:g]` becomes user u and group g (g = u when absent, `0:0` when empty); Env, WorkingDir;
ExposedPorts `80/tcp` become ports named `80-tcp`; Volumes become mount points `volume-PATH`;
Labels and the docker facts become annotations (`appc.io/docker/...`). setuid/setgid bits and
device nodes are dropped (the image is unverified), with a notice.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import re
import shutil
import sys
import tarfile
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rktd_units.errors import ImageError
from rktd_units.fetch import Http, HttpError
from rktd_units.model import App, ImageManifest, MountPoint, NameValue, Port, Protocol

DEFAULT_REGISTRY = "registry-1.docker.io"
MAX_MANIFEST = 4 << 20
MAX_LAYER = 16 << 30  # as the store's default limit on an image's size

MT_DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MT_DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
MT_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_OCI_INDEX = "application/vnd.oci.image.index.v1+json"
ACCEPT = ", ".join((MT_OCI_INDEX, MT_DOCKER_LIST, MT_OCI_MANIFEST, MT_DOCKER_MANIFEST))
_INDEXES = (MT_DOCKER_LIST, MT_OCI_INDEX)

_INVALID_ID_CHARS = re.compile(r"[^a-z0-9\-._~/]")
_ID_EDGES = re.compile(r"(^[-._~/]+)|([-._~/]+$)")
_INVALID_NAME_CHARS = re.compile(r"[^a-z0-9]+")
_RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})\Z")
_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*\Z")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}\Z")
# docker GOARCH -> appc arch
_ARCH = {"amd64": "amd64", "386": "i386", "arm64": "aarch64", "ppc64le": "ppc64le", "s390x": "s390x"}
_ANNOTATION_PREFIX = "appc.io/docker/"


def sanitize_identifier(s: str) -> str:
    """An AC Identifier made from `s`, as appc's SanitizeACIdentifier (invalid characters -> `_`)."""
    out = _ID_EDGES.sub("", _INVALID_ID_CHARS.sub("_", s.lower()))
    if not out:
        raise ImageError(f"cannot make an image name from {s!r}")
    return out


def sanitize_name(s: str) -> str:
    """An AC Name made from `s` (runs of other characters, dashes included, -> one `-`)."""
    return _INVALID_NAME_CHARS.sub("-", s.lower()).strip("-")


@dataclass(frozen=True)
class DockerRef:
    registry: str  # host[:port]
    repository: str  # e.g. library/busybox
    tag: str | None
    digest: str | None
    original: str

    @property
    def reference(self) -> str:
        return self.digest or self.tag or "latest"

    @property
    def aci_name(self) -> str:
        return sanitize_identifier(f"{self.registry}/{self.repository}")


def parse_ref(image: str) -> DockerRef:
    """Parse `docker://[REGISTRY[:PORT]/]NAME[:TAG|@DIGEST]`."""
    rest = image.removeprefix("docker://")
    rest, at, digest = rest.partition("@")
    first, slash, remainder = rest.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        registry, name = first, remainder
    else:
        registry, name = DEFAULT_REGISTRY, rest
    tag: str | None = None
    last = name.rsplit("/", 1)[-1]
    if ":" in last:
        name, _, tag = name.rpartition(":")
    if registry == DEFAULT_REGISTRY and "/" not in name:
        name = f"library/{name}"
    if not _REPO.match(name):
        raise ImageError(f"invalid docker repository name {name!r} in {image}", hint="names are lower-case")
    if tag is not None and not _TAG.match(tag):
        raise ImageError(f"invalid docker tag {tag!r} in {image}")
    if at and not _DIGEST.match(digest):
        raise ImageError(f"invalid digest {digest!r} in {image}", hint="use @sha256:<64 hex digits>")
    if not at and tag is None:
        tag = "latest"
    return DockerRef(registry, name, tag, digest if at else None, image)


# ---------------------------------------------------------------------------------------------------
# Registry v2


def _challenge(header: str) -> dict[str, str]:
    scheme, _, params = header.strip().partition(" ")
    out = dict(re.findall(r'(\w+)="([^"]*)"', params))
    out["scheme"] = scheme.lower()
    return out


class Registry:
    """One repository on one registry: ping, token auth, manifests and digest-checked blobs."""

    def __init__(self, ref: DockerRef, http: Http) -> None:
        self.ref = ref
        self.http = http
        self.base = self._ping()
        self.token: str | None = None

    def _ping(self) -> str:
        schemes = ["https", "http"] if self.http.allow_http else ["https"]
        errors = []
        for scheme in schemes:
            base = f"{scheme}://{self.ref.registry}"
            try:
                self.http.get(f"{base}/v2/", limit=MAX_MANIFEST)
                return base
            except HttpError as e:
                if e.status is not None:  # an answer (401 and all): this scheme works
                    return base
                errors.append(e.message)
        hint = None if self.http.allow_http else "a plain-http registry needs --insecure-options=http"
        raise ImageError(f"registry {self.ref.registry} does not answer: {'; '.join(errors)}", hint=hint)

    def _authorize(self, err: HttpError) -> None:
        ch = _challenge((err.headers or {}).get("www-authenticate", ""))
        if ch.get("scheme") != "bearer" or "realm" not in ch:
            raise ImageError(
                f"registry {self.ref.registry} wants authentication ({err.message})",
                hint="only anonymous token authentication is supported",
            )
        query = {"scope": ch.get("scope") or f"repository:{self.ref.repository}:pull"}
        if "service" in ch:
            query["service"] = ch["service"]
        url = f"{ch['realm']}?{urllib.parse.urlencode(query)}"
        try:
            doc = json.loads(self.http.get(url))
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise ImageError(f"registry {self.ref.registry}: no token from {ch['realm']}")
        self.token = token

    def _headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        h = dict(extra or {})
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def _with_auth(self, call: Any) -> Any:
        try:
            return call()
        except HttpError as e:
            if e.status != 401 or self.token:
                raise
            self._authorize(e)
            return call()

    def manifest(self, reference: str) -> tuple[str, bytes, str]:
        """(media type, bytes, sha256 digest) of the manifest for a tag or digest."""
        url = f"{self.base}/v2/{self.ref.repository}/manifests/{reference}"

        def call() -> tuple[str, bytes]:
            with self.http.open(url, self._headers({"Accept": ACCEPT})) as resp:
                try:
                    body = resp.read(MAX_MANIFEST + 1)
                except OSError as e:
                    raise HttpError(f"{url}: {e}") from None
                ctype = (resp.headers.get("Content-Type") or "").split(";")[0].strip()
            return ctype, body

        try:
            ctype, body = self._with_auth(call)
        except HttpError as e:
            if e.status == 404:
                raise ImageError(f"{self.ref.original}: no such image on {self.ref.registry}") from None
            raise
        if len(body) > MAX_MANIFEST:
            raise ImageError(f"{url}: manifest too large")
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        if reference.startswith("sha256:") and digest != reference:
            raise ImageError(f"{url}: manifest digest is {digest}, expected {reference}")
        if not ctype or ctype == "application/json":
            ctype = str(_json(body, f"manifest of {self.ref.original}").get("mediaType") or "")
        return ctype, body, digest

    def blob(self, digest: str, dest: Path, *, label: str | None = None, limit: int | None = None) -> None:
        """Download blob `digest` into `dest`, checking its sha256."""
        if not _DIGEST.match(digest):
            raise ImageError(f"unsupported blob digest {digest!r}", hint="only sha256 is supported")
        url = f"{self.base}/v2/{self.ref.repository}/blobs/{digest}"

        h = hashlib.sha256()  # checked as it is downloaded, not read back: layers can be gigabytes

        def call() -> None:
            nonlocal h
            h = hashlib.sha256()  # afresh on a retry (after a 401)
            with open(dest, "wb") as f:
                self.http.download(
                    url, f, headers=self._headers(), label=label or digest[:19], limit=limit, hasher=h
                )

        self._with_auth(call)
        if "sha256:" + h.hexdigest() != digest:
            raise ImageError(f"blob {digest} of {self.ref.original}: content does not match its digest")


def _json(data: bytes, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(data)
    except ValueError as e:
        raise ImageError(f"{what}: not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ImageError(f"{what}: not a JSON object")
    return doc


def _pick_platform(index: dict[str, Any], ref: DockerRef, arch: str) -> str:
    for m in index.get("manifests") or []:
        p = m.get("platform") or {}
        if p.get("os") == "linux" and p.get("architecture") == arch and isinstance(m.get("digest"), str):
            return str(m["digest"])
    raise ImageError(f"{ref.original}: no image for linux/{arch} in its manifest list")


def _docker_arch() -> str:
    from rktd_units.appc_discovery import host_arch

    return {v: k for k, v in _ARCH.items()}.get(host_arch(), host_arch())


def resolve_manifest(reg: Registry) -> tuple[dict[str, Any], str]:
    """The image manifest (following a list/index to this platform) and its digest."""
    ctype, body, digest = reg.manifest(reg.ref.reference)
    if ctype in _INDEXES:
        target = _pick_platform(_json(body, "manifest list"), reg.ref, _docker_arch())
        ctype, body, digest = reg.manifest(target)
    if ctype not in (MT_DOCKER_MANIFEST, MT_OCI_MANIFEST):
        raise ImageError(
            f"{reg.ref.original}: unsupported manifest type {ctype or '(none)'}",
            hint="docker schema 2 or OCI images are supported (schema 1 is not)",
        )
    return _json(body, "image manifest"), digest


# ---------------------------------------------------------------------------------------------------
# Image manifest mapping


def _user_group(user: str) -> tuple[str, str]:
    if not user:
        return "0", "0"
    u, colon, g = user.partition(":")
    return (u, g) if colon and g else (u, u)


def _ports(exposed: Mapping[str, Any]) -> tuple[Port, ...]:
    out = []
    for spec in exposed:
        num, _, proto = spec.partition("/")
        proto = proto or "tcp"
        if proto not in ("tcp", "udp") or not num.isdigit():
            print(f"rktd: notice: ignoring exposed port {spec!r}", file=sys.stderr)
            continue
        out.append(Port(sanitize_name(f"{num}-{proto}"), Protocol(proto), int(num)))
    return tuple(sorted(out, key=lambda p: p.name))


def _mount_points(volumes: Mapping[str, Any]) -> tuple[MountPoint, ...]:
    out: dict[str, MountPoint] = {}
    for path in sorted(volumes):
        name = sanitize_name(f"volume-{path}") or "volume"
        base, n = name, 1
        while name in out:
            name, n = f"{base}-{n}", n + 1
        out[name] = MountPoint(name, path)
    return tuple(sorted(out.values(), key=lambda m: m.name))


def image_manifest(
    ref: DockerRef, config: dict[str, Any], manifest_digest: str, image_id: str
) -> ImageManifest:
    """The appc ImageManifest docker2aci would have written for this squashed image."""
    cfg = config.get("config") or {}
    arch = _ARCH.get(str(config.get("architecture") or "amd64"), str(config.get("architecture")))
    labels = [NameValue("version", ref.tag or ref.reference.replace(":", "-")), NameValue("os", "linux")]
    labels.append(NameValue("arch", arch))
    entrypoint, cmd = list(cfg.get("Entrypoint") or []), list(cfg.get("Cmd") or [])
    user, group = _user_group(str(cfg.get("User") or ""))
    env = [NameValue(*e.split("=", 1)) for e in cfg.get("Env") or [] if "=" in e]
    app = App(
        exec=tuple(str(a) for a in entrypoint + cmd),
        user=user,
        group=group,
        working_directory=cfg.get("WorkingDir") or None,
        environment=tuple(env),
        mount_points=_mount_points(cfg.get("Volumes") or {}),
        ports=_ports(cfg.get("ExposedPorts") or {}),
    )
    ann: dict[str, str] = {}
    for key, value in sorted((cfg.get("Labels") or {}).items()):
        name = sanitize_identifier(str(key))
        if (
            value
            and not name.startswith(_ANNOTATION_PREFIX)
            and name not in ("created", "homepage", "documentation")
        ):
            ann[name] = str(value)
    created = str(config.get("created") or "")
    if _RFC3339.match(created):
        ann["created"] = created
    if config.get("author"):
        ann["author"] = str(config["author"])
    facts = {
        "originalname": ref.original.removeprefix("docker://"),
        "registryurl": ref.registry,
        "repository": ref.repository,
        "imageid": image_id,
        "manifesthash": manifest_digest,
        "entrypoint": json.dumps(entrypoint) if entrypoint else "",
        "cmd": json.dumps(cmd) if cmd else "",
        "tag": ref.tag or "",
    }
    ann.update({_ANNOTATION_PREFIX + k: v for k, v in facts.items() if v})
    annotations = tuple(NameValue(k, v) for k, v in sorted(ann.items()))
    return ImageManifest(name=ref.aci_name, labels=tuple(labels), app=app, annotations=annotations)


# ---------------------------------------------------------------------------------------------------
# Fetch and convert


def _plain_tar(blob: Path, dest: Path, media_type: str) -> Path:
    with open(blob, "rb") as f:
        head = f.read(4)
    if head.startswith(b"\x28\xb5\x2f\xfd") or media_type.endswith("zstd"):
        raise ImageError(
            f"layer {blob.name}: zstd layers are not supported", hint="push the image with gzip layers"
        )
    if head.startswith(b"\x1f\x8b"):
        try:
            with gzip.open(blob, "rb") as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
        except (OSError, EOFError) as e:
            raise ImageError(f"layer {blob.name}: bad gzip data: {e}") from None
        blob.unlink()
        return dest
    blob.rename(dest)
    return dest


def fetch_aci(ref: DockerRef, http: Http, workdir: Path) -> Path:
    """Download `ref` from its registry into `workdir` and convert it; the path of the ACI."""
    reg = Registry(ref, http)
    manifest, digest = resolve_manifest(reg)
    config_desc = manifest.get("config") or {}
    config_path = workdir / "config.json"
    reg.blob(str(config_desc.get("digest")), config_path, label="config", limit=MAX_MANIFEST)
    config = _json(config_path.read_bytes(), "image config")
    layers = []
    for i, desc in enumerate(manifest.get("layers") or []):
        if not isinstance(desc, dict) or "foreign" in str(desc.get("mediaType", "")):
            raise ImageError(f"{ref.original}: layer {i} is a foreign or malformed layer")
        blob = workdir / f"layer-{i}.blob"
        reg.blob(str(desc.get("digest")), blob, label=f"{ref.repository} layer {i + 1}", limit=MAX_LAYER)
        layers.append(_plain_tar(blob, workdir / f"layer-{i}.tar", str(desc.get("mediaType", ""))))
    im = image_manifest(ref, config, digest, str(config_desc.get("digest")))
    out = workdir / "image.aci"
    write_aci(out, im, layers)
    return out


# ---------------------------------------------------------------------------------------------------
# Layers -> one tree -> one ACI

_OPAQUE = ".wh..wh..opq"
_WHITEOUT = ".wh."
# docker2aci added these so apps find their stdio where Docker puts it.
_STDIO_LINKS = (
    ("dev/stdin", "/proc/self/fd/0"),
    ("dev/stdout", "/dev/console"),
    ("dev/stderr", "/dev/console"),
    ("dev/fd", "/proc/self/fd"),
)


@dataclass(frozen=True)
class _Entry:
    layer: int
    index: int
    info: tarfile.TarInfo


def _norm(name: str, layer: int) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"layer {layer}: entry {name!r} contains '..'")
    return "/".join(parts)


class _Tree:
    """path -> surviving entry, plus every path that has (or had) something below it."""

    def __init__(self) -> None:
        self.entries: dict[str, _Entry] = {}
        self.parents: set[str] = {""}

    def put(self, path: str, entry: _Entry) -> None:
        self.entries[path] = entry
        parts = path.split("/")
        self.parents.update("/".join(parts[:i]) for i in range(1, len(parts)))

    def drop(self, path: str, *, below: int, self_too: bool) -> None:
        """Remove `path`'s descendants (and `path` if `self_too`) that come from layers < below."""
        e = self.entries.get(path)
        if self_too and e is not None and e.layer < below:
            del self.entries[path]
        if path not in self.parents:
            return  # nothing was ever below it: no scan
        under = f"{path}/" if path else ""
        for key in [k for k, e in self.entries.items() if e.layer < below and k.startswith(under)]:
            del self.entries[key]


def squash(layers: list[tarfile.TarFile]) -> dict[str, _Entry]:
    """Apply the layers in order; path -> the entry that survives, whiteouts applied."""
    tree = _Tree()
    for n, tf in enumerate(layers):
        for i, ti in enumerate(tf.getmembers()):
            path = _norm(ti.name, n)
            if not path:
                continue
            parent, _, base = path.rpartition("/")
            if base == _OPAQUE:
                tree.drop(parent, below=n, self_too=False)
            elif base.startswith(_WHITEOUT):
                tree.drop(f"{parent}/{base[4:]}" if parent else base[4:], below=n, self_too=True)
            else:
                old = tree.entries.get(path)
                if old is not None and not (old.info.isdir() and ti.isdir()):
                    tree.drop(path, below=n + 1, self_too=False)
                tree.put(path, _Entry(n, i, ti))
    return tree.entries


def _dir_info(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, 0o755, 0
    return ti


class _AciWriter:
    def __init__(self, out: tarfile.TarFile, layers: list[tarfile.TarFile], tree: dict[str, _Entry]) -> None:
        self.out, self.layers, self.tree = out, layers, tree
        self.written: set[str] = set()
        self.stripped = self.devices = 0

    def parents(self, path: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            p = "/".join(parts[:i])
            if p not in self.written and p not in self.tree:
                self.out.addfile(_dir_info(f"rootfs/{p}"))
                self.written.add(p)

    def entry(self, path: str, e: _Entry) -> None:
        ti = tarfile.TarInfo(f"rootfs/{path}")
        for attr in (
            "type",
            "mode",
            "uid",
            "gid",
            "uname",
            "gname",
            "mtime",
            "size",
            "linkname",
            "pax_headers",
        ):
            setattr(ti, attr, getattr(e.info, attr))
        if ti.ischr() or ti.isblk():
            self.devices += 1
            return
        if ti.mode & 0o6000 and not ti.isdir():
            ti.mode &= ~0o6000
            self.stripped += 1
        self.parents(path)
        src = self.layers[e.layer]
        if ti.islnk():
            target = _norm(e.info.linkname, e.layer)
            t = self.tree.get(target)
            if t is not None and t.layer == e.layer and t.index < e.index and t.info.isreg():
                ti.linkname, ti.size = f"rootfs/{target}", 0
                self.out.addfile(ti)
            else:  # its target did not survive as that file: keep the content as a copy
                ti.type, ti.linkname = tarfile.REGTYPE, ""
                f = src.extractfile(e.info)
                if f is None:
                    raise ImageError(f"layer {e.layer}: hardlink {path!r} has no target")
                ti.size = f.seek(0, io.SEEK_END)
                f.seek(0)
                self.out.addfile(ti, f)
        elif ti.isreg():
            self.out.addfile(ti, src.extractfile(e.info))
        else:
            ti.size = 0
            self.out.addfile(ti)
        self.written.add(path)


def write_aci(out: Path, manifest: ImageManifest, layer_tars: list[Path]) -> None:
    """Write an uncompressed ACI: `manifest`, `rootfs/`, the squashed layers, docker's stdio links."""
    from rktd_units.formats.appc import dump_image_manifest

    data = dump_image_manifest(manifest).encode()
    layers = [tarfile.open(p, "r:") for p in layer_tars]
    try:
        tree = squash(layers)
        with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
            mi = tarfile.TarInfo("manifest")
            mi.size, mi.mode = len(data), 0o644
            tf.addfile(mi, io.BytesIO(data))
            tf.addfile(_dir_info("rootfs"))
            w = _AciWriter(tf, layers, tree)
            order = sorted(tree.items(), key=lambda kv: (kv[1].info.islnk(), kv[0].split("/")))
            for path, e in order:
                w.entry(path, e)
            for path, target in _STDIO_LINKS:
                if path not in tree:
                    w.parents(path)
                    link = tarfile.TarInfo(f"rootfs/{path}")
                    link.type, link.linkname, link.mode = tarfile.SYMTYPE, target, 0o777
                    tf.addfile(link)
    except (tarfile.TarError, KeyError) as e:
        raise ImageError(f"bad layer archive: {e}") from None
    finally:
        for layer in layers:
            layer.close()
    if w.stripped:
        print(
            f"rktd: notice: dropped setuid/setgid bits from {w.stripped} file(s) of the unsigned image",
            file=sys.stderr,
        )
    if w.devices:
        print(f"rktd: notice: dropped {w.devices} device node(s) from the image", file=sys.stderr)
