"""The real Docker registry (Debian's docker-registry) on 127.0.0.1, and OCI images pushed with skopeo."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import socket
import subprocess
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.helpers.aci import MTIME, Entry

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Registry:
    port: int

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"


@contextmanager
def registry(workdir: Path, auth: TokenAuth | None = None) -> Iterator[Registry]:
    """Start docker-registry on a free loopback port with filesystem storage under `workdir`."""
    port = free_port()
    config = workdir / "registry.yml"
    text = (
        "version: 0.1\n"
        "log:\n  level: error\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {workdir / 'storage'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    if auth is not None:
        text += (
            f"auth:\n  token:\n    realm: {auth.realm}\n    service: {auth.service}\n"
            f"    issuer: {auth.issuer}\n    rootcertbundle: {auth.cert_file}\n"
        )
    config.write_text(text)
    log = open(workdir / "registry.log", "wb")
    proc = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError as e:
                if e.code == 401 and auth is not None:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"docker-registry did not start: {(workdir / 'registry.log').read_text()}"
                )
            time.sleep(0.1)
        yield Registry(port)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def layer_tar(entries: Sequence[Entry]) -> bytes:
    """An image layer (paths relative to /, no manifest): files, dirs, symlinks, hardlinks."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            ti = tarfile.TarInfo(e.path)
            ti.mode, ti.uid, ti.gid, ti.mtime = e.mode, e.uid, e.gid, MTIME
            kinds = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
            ti.type = {**kinds, "hardlink": tarfile.LNKTYPE}[e.kind]
            ti.linkname = e.target
            if e.kind == "file":
                ti.size = len(e.data)
                tf.addfile(ti, io.BytesIO(e.data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs/sha256" / digest).write_bytes(data)
    return f"sha256:{digest}"


def oci_layout(layout: Path, tag: str, layers: Sequence[bytes], config: Mapping[str, Any]) -> Path:
    """Write an OCI image layout holding one image: gzip layers, the given container config."""
    (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    descs = []
    for raw in layers:
        gz = gzip.compress(raw, mtime=0)
        descs.append({"mediaType": OCI_LAYER_GZIP, "digest": _blob(layout, gz), "size": len(gz)})
    cfg = {
        "architecture": "amd64",
        "os": "linux",
        "created": "2024-01-02T03:04:05Z",
        "config": dict(config),
        "rootfs": {
            "type": "layers",
            "diff_ids": [f"sha256:{hashlib.sha256(r).hexdigest()}" for r in layers],
        },
    }
    cfg_bytes = json.dumps(cfg).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": _blob(layout, cfg_bytes), "size": len(cfg_bytes)},
        "layers": descs,
    }
    mbytes = json.dumps(manifest).encode()
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": OCI_MANIFEST,
                "digest": _blob(layout, mbytes),
                "size": len(mbytes),
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (layout / "index.json").write_text(json.dumps(index))
    return layout


def push(layout: Path, tag: str, dest: str, *, fmt: str | None = None) -> None:
    """skopeo copy oci:LAYOUT:TAG docker://DEST (plain http registry); fmt "v2s2" converts to Docker's."""
    argv = ["skopeo", "--insecure-policy", "copy", "--quiet", "--dest-tls-verify=false"]
    if fmt:
        argv += ["--format", fmt]
    proc = subprocess.run(
        [*argv, f"oci:{layout}:{tag}", f"docker://{dest}"], capture_output=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def oci_multiarch(
    layout: Path, tag: str, images: Mapping[str, tuple[Sequence[bytes], Mapping[str, Any]]]
) -> Path:
    """An OCI layout whose `tag` is an index with one image per arch (arch -> layers, config)."""
    descs = []
    for arch, (layers, config) in images.items():
        sub = oci_layout(layout / f".{arch}", tag, layers, config)
        (desc,) = json.loads((sub / "index.json").read_text())["manifests"]
        for blob in (sub / "blobs/sha256").iterdir():
            (layout / "blobs/sha256").mkdir(parents=True, exist_ok=True)
            (layout / "blobs/sha256" / blob.name).write_bytes(blob.read_bytes())
        if arch != "amd64":  # oci_layout writes amd64 configs; rewrite this one's architecture
            descs.append(_retarget(layout, desc, arch))
        else:
            descs.append({**desc, "platform": {"os": "linux", "architecture": arch}})
    index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": descs}).encode()
    top = {"mediaType": OCI_INDEX, "digest": _blob(layout, index), "size": len(index)}
    top["annotations"] = {"org.opencontainers.image.ref.name": tag}
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [top]}))
    return layout


def _retarget(layout: Path, desc: Mapping[str, Any], arch: str) -> dict[str, Any]:
    blobs = layout / "blobs/sha256"
    manifest = json.loads((blobs / desc["digest"].split(":")[1]).read_bytes())
    config = json.loads((blobs / manifest["config"]["digest"].split(":")[1]).read_bytes())
    config["architecture"] = arch
    cfg = json.dumps(config).encode()
    manifest["config"] = {**manifest["config"], "digest": _blob(layout, cfg), "size": len(cfg)}
    mbytes = json.dumps(manifest).encode()
    return {
        "mediaType": OCI_MANIFEST,
        "digest": _blob(layout, mbytes),
        "size": len(mbytes),
        "platform": {"os": "linux", "architecture": arch},
    }


def push_all(layout: Path, tag: str, dest: str) -> None:
    """skopeo copy --all: push an index and every image in it."""
    proc = subprocess.run(
        [
            "skopeo",
            "--insecure-policy",
            "copy",
            "--all",
            "--quiet",
            "--dest-tls-verify=false",
            f"oci:{layout}:{tag}",
            f"docker://{dest}",
        ],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def manifest_type(host: str, repo: str, ref: str) -> str:
    """The Content-Type the registry serves for a manifest (Docker and OCI types accepted)."""
    accept = ", ".join(
        [
            OCI_INDEX,
            OCI_MANIFEST,
            "application/vnd.docker.distribution.manifest.v2+json",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        ]
    )
    req = urllib.request.Request(f"http://{host}/v2/{repo}/manifests/{ref}", headers={"Accept": accept})
    with urllib.request.urlopen(req, timeout=10) as r:
        return str(r.headers.get("Content-Type", "")).split(";")[0]


@dataclass(frozen=True)
class TokenAuth:
    """Docker's token authentication: the registry trusts JWTs signed by this certificate's key."""

    realm: str
    cert_file: Path
    service: str = "rktd-test-registry"
    issuer: str = "rktd-test-issuer"


def token_signer(workdir: Path) -> tuple[Path, Any]:
    """A self-signed P-256 certificate (the registry's root bundle) and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rktd test token signer")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = workdir / "token-signer.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, (key, cert)


def make_token(signer: Any, auth: TokenAuth, repository: str, actions: Sequence[str]) -> str:
    """A registry bearer token (JWT, ES256, the certificate in x5c) granting `actions` on `repository`."""
    import base64
    import secrets

    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    key, cert = signer

    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    der = cert.public_bytes(serialization.Encoding.DER)
    header = {"typ": "JWT", "alg": "ES256", "x5c": [base64.b64encode(der).decode()]}
    now = int(time.time())
    claims = {
        "iss": auth.issuer,
        "sub": "",
        "aud": auth.service,
        "exp": now + 3600,
        "nbf": now - 60,
        "iat": now - 60,
        "jti": secrets.token_hex(8),
        "access": [{"type": "repository", "name": repository, "actions": list(actions)}],
    }
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{b64url(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"
