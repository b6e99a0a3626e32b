"""docker:// against the real docker-registry on 127.0.0.1: images built from busybox-static, pushed with
skopeo (Docker schema 2 and OCI), fetched, squashed with whiteouts and mapped like docker2aci."""

from __future__ import annotations

import json
import os
import shutil
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rktd_units.appc_discovery import host_arch
from rktd_units.docker import parse_ref, sanitize_identifier
from rktd_units.errors import ImageError, TrustError
from rktd_units.fetch import fetch
from rktd_units.model import MountPoint, NameValue, Port, Protocol
from rktd_units.store import Store
from rktd_units.trust import KeyStore
from tests.helpers.aci import APPLETS, BUSYBOX, Entry
from tests.helpers.https import Site, serve
from tests.helpers.registry import (
    Registry,
    TokenAuth,
    layer_tar,
    make_token,
    manifest_type,
    oci_layout,
    oci_multiarch,
    push,
    push_all,
    registry,
    token_signer,
)

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo") and BUSYBOX.exists()),
    reason="needs docker-registry, skopeo and busybox-static",
)

INSECURE = frozenset({"image", "http"})
CONFIG = {
    "Entrypoint": ["/bin/busybox"],
    "Cmd": ["sh", "-c", "echo hello"],
    "Env": ["PATH=/bin", "GREETING=a=b"],
    "User": "1000:1001",
    "WorkingDir": "/srv",
    "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
    "Volumes": {"/data": {}},
    "Labels": {"org.example.team": "core"},
}


def _base_layer() -> bytes:
    entries = [Entry(d, "dir", mode=0o755) for d in ("bin", "etc", "srv", "opt", "opt/old", "keep")]
    entries.append(Entry("bin/busybox", data=BUSYBOX.read_bytes(), mode=0o755))
    entries += [Entry(f"bin/{a}", "symlink", target="busybox") for a in APPLETS]
    entries += [
        Entry("etc/passwd", data=b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001::/srv:/bin/sh\n"),
        Entry("etc/motd", data=b"old motd\n"),
        Entry("etc/hostname", data=b"first\n"),
        Entry("opt/old/a", data=b"a\n"),
        Entry("opt/old/b", data=b"b\n"),
        Entry("keep/orig", data=b"linked content\n"),
        Entry("keep/link", "hardlink", target="keep/orig"),
        Entry("keep/same", "hardlink", target="keep/orig"),
    ]
    return layer_tar(entries)


def _top_layer() -> bytes:
    return layer_tar(
        [
            Entry("etc", "dir", mode=0o755),
            Entry("etc/.wh.motd"),
            Entry("etc/hostname", data=b"second\n"),
            Entry("opt/old", "dir", mode=0o750),
            Entry("opt/old/.wh..wh..opq"),
            Entry("opt/old/c", data=b"c\n"),
            Entry("keep/.wh.orig"),
            Entry("bin/suid", data=b"#!/bin/sh\n", mode=0o4755),
        ]
    )


@dataclass
class Pushed:
    reg: Registry
    single: str  # docker:// reference, one layer, Docker schema 2
    layered: str  # two layers with whiteouts, OCI
    multi: str  # an OCI index: amd64 and arm64


@pytest.fixture(scope="module")
def pushed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pushed]:
    d = tmp_path_factory.mktemp("registry")
    with registry(d) as reg:
        one = oci_layout(d / "one", "1.0", [_base_layer()], CONFIG)
        push(one, "1.0", f"{reg.host}/test/busybox:1.0", fmt="v2s2")
        two = oci_layout(d / "two", "2.0", [_base_layer(), _top_layer()], {"Cmd": ["/bin/sh"]})
        push(two, "2.0", f"{reg.host}/test/layered:2.0")
        arm = layer_tar([Entry("arch", data=b"arm64\n")])
        amd = layer_tar([Entry("arch", data=b"amd64\n")])
        images = {"arm64": ([arm], {"Cmd": ["/arm"]}), "amd64": ([amd], {"Cmd": ["/amd"]})}
        push_all(oci_multiarch(d / "multi", "3.0", images), "3.0", f"{reg.host}/test/multi:3.0")
        yield Pushed(
            reg,
            f"docker://{reg.host}/test/busybox:1.0",
            f"docker://{reg.host}/test/layered:2.0",
            f"docker://{reg.host}/test/multi:3.0",
        )


@pytest.fixture
def env(tmp_path: Path) -> tuple[Store, KeyStore]:
    return Store(tmp_path / "store"), KeyStore(tmp_path / "etc", tmp_path / "usr")


def test_parse_ref() -> None:
    r = parse_ref("docker://busybox")
    assert (r.registry, r.repository, r.tag, r.aci_name) == (
        "registry-1.docker.io",
        "library/busybox",
        "latest",
        "registry-1.docker.io/library/busybox",
    )
    r = parse_ref("docker://127.0.0.1:5000/team/app:v1.2")
    assert (r.registry, r.repository, r.tag, r.aci_name) == (
        "127.0.0.1:5000",
        "team/app",
        "v1.2",
        "127.0.0.1_5000/team/app",
    )
    r = parse_ref("docker://localhost/app@sha256:" + "a" * 64)
    assert (r.registry, r.repository, r.tag, r.reference) == ("localhost", "app", None, "sha256:" + "a" * 64)
    assert parse_ref("docker://quay.io/coreos/etcd").repository == "coreos/etcd"
    assert parse_ref("docker://user/app").registry == "registry-1.docker.io"
    for bad in ("docker://UPPER/case", "docker://x@sha256:zz", "docker://a:b:c"):
        with pytest.raises(ImageError):
            parse_ref(bad)
    assert sanitize_identifier("Reg:5000/A b") == "reg_5000/a_b"


def test_schema2_image_is_mapped(env: tuple[Store, KeyStore], pushed: Pushed) -> None:
    store, keys = env
    docker_v2 = "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest_type(pushed.reg.host, "test/busybox", "1.0") == docker_v2
    info = fetch(pushed.single, store=store, keys=keys, insecure=INSECURE)
    m = info.manifest
    assert m.name == f"127.0.0.1_{pushed.reg.port}/test/busybox"
    assert {(lab.name, lab.value) for lab in m.labels} == {
        ("version", "1.0"),
        ("os", "linux"),
        ("arch", "amd64"),
    }
    app = m.app
    assert app is not None
    assert app.exec == ("/bin/busybox", "sh", "-c", "echo hello")
    assert (app.user, app.group, app.working_directory) == ("1000", "1001", "/srv")
    assert app.environment == (NameValue("PATH", "/bin"), NameValue("GREETING", "a=b"))
    assert app.ports == (Port("53-udp", Protocol.UDP, 53), Port("80-tcp", Protocol.TCP, 80))
    assert app.mount_points == (MountPoint("volume-data", "/data"),)
    assert m.annotation("org.example.team") == "core"
    assert m.annotation("appc.io/docker/repository") == "test/busybox"
    assert json.loads(m.annotation("appc.io/docker/entrypoint") or "") == ["/bin/busybox"]
    assert (m.annotation("created"), m.annotation("appc.io/docker/tag")) == ("2024-01-02T03:04:05Z", "1.0")
    root = store.rootfs(info.id)
    assert (root / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.readlink(root / "bin/sh") == "busybox"
    assert os.readlink(root / "dev/stdin") == "/proc/self/fd/0"
    # Pull policy new: found by name and tag without the registry.
    assert fetch(pushed.single, store=store, keys=keys).id == info.id


def test_layers_and_whiteouts(
    env: tuple[Store, KeyStore], pushed: Pushed, capsys: pytest.CaptureFixture[str]
) -> None:
    store, keys = env
    info = fetch(pushed.layered, store=store, keys=keys, insecure=INSECURE)
    assert info.manifest.app is not None and info.manifest.app.exec == ("/bin/sh",)
    assert (info.manifest.app.user, info.manifest.app.group) == ("0", "0")
    root = store.rootfs(info.id)
    assert not (root / "etc/motd").exists(), ".wh.motd hides the lower layer's file"
    assert (root / "etc/hostname").read_text() == "second\n"
    assert (root / "etc/passwd").is_file(), "a whiteout hides only its own name"
    assert sorted(os.listdir(root / "opt/old")) == ["c"], "an opaque directory hides the lower content"
    assert (root / "opt/old").stat().st_mode & 0o777 == 0o750
    assert not (root / "keep/orig").exists()
    link, same = root / "keep/link", root / "keep/same"
    assert link.read_text() == same.read_text() == "linked content\n", (
        "links outlive their whited-out target"
    )
    assert (root / "bin/suid").stat().st_mode & 0o7777 == 0o755
    assert "setuid" in capsys.readouterr().err


def test_index_picks_this_platform(env: tuple[Store, KeyStore], pushed: Pushed) -> None:
    store, keys = env
    oci_index = "application/vnd.oci.image.index.v1+json"
    assert manifest_type(pushed.reg.host, "test/multi", "3.0") == oci_index
    assert (
        manifest_type(pushed.reg.host, "test/layered", "2.0") == "application/vnd.oci.image.manifest.v1+json"
    )
    info = fetch(pushed.multi, store=store, keys=keys, insecure=INSECURE)
    arch = "arm64" if host_arch() == "aarch64" else "amd64"
    assert info.manifest.app is not None and info.manifest.app.exec == (f"/{arch[:3]}",)
    assert (store.rootfs(info.id) / "arch").read_text() == f"{arch}\n"


def test_refusals_leave_the_store_unchanged(env: tuple[Store, KeyStore], pushed: Pushed) -> None:
    store, keys = env
    with pytest.raises(TrustError, match="--insecure-options=image"):
        fetch(pushed.single, store=store, keys=keys, insecure=frozenset({"http"}))
    with pytest.raises(ImageError, match="insecure-options=http"):
        fetch(pushed.single, store=store, keys=keys, insecure=frozenset({"image"}))
    with pytest.raises(ImageError, match="no such image"):
        fetch(f"docker://{pushed.reg.host}/test/absent:1", store=store, keys=keys, insecure=INSECURE)
    with pytest.raises(ImageError, match="never"):
        fetch(pushed.single, store=store, keys=keys, insecure=INSECURE, pull_policy="never")
    assert not store.root.exists() or store.list() == []


def test_cli_fetch_prints_the_id(pushed: Pushed, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from rktd_units import cli

    args = ["--dir", str(tmp_path / "store"), "--local-config", str(tmp_path / "etc")]
    args += ["--insecure-options=image,http", "fetch", pushed.single]
    r = CliRunner().invoke(cli.cli, args)
    assert r.exit_code == 0, r.exception
    (info,) = Store(tmp_path / "store").list()
    assert r.stdout.splitlines()[-1] == info.id and info.source == pushed.single


def test_bearer_token_auth(tmp_path: Path) -> None:
    """A registry with Docker's token auth: 401, anonymous token from the realm, retry with it."""
    with registry(tmp_path) as reg:
        push(
            oci_layout(tmp_path / "one", "1.0", [_base_layer()], CONFIG),
            "1.0",
            f"{reg.host}/test/busybox:1.0",
        )
    cert, signer = token_signer(tmp_path)
    tokens = Site()
    with serve(tokens, None) as served:
        auth = TokenAuth(served.url("/token"), cert)

        def issue(path: str) -> tuple[int, bytes, str] | None:
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
            if not path.startswith("/token?") or query.get("service") != [auth.service]:
                return None
            _, repo, actions = query["scope"][0].split(":")
            token = make_token(signer, auth, repo, actions.split(","))
            return 200, json.dumps({"token": token, "expires_in": 3600}).encode(), "application/json"

        tokens.dynamic = issue
        with registry(tmp_path, auth) as reg:
            store, keys = Store(tmp_path / "store"), KeyStore(tmp_path / "etc")
            info = fetch(f"docker://{reg.host}/test/busybox:1.0", store=store, keys=keys, insecure=INSECURE)
            assert info.manifest.app is not None and info.manifest.app.user == "1000"
            scopes = [
                urllib.parse.parse_qs(urllib.parse.urlsplit(p).query)["scope"] for p in tokens.requests
            ]
            assert scopes == [["repository:test/busybox:pull"]], "one token, asked for the pull scope"
            tokens.dynamic = lambda path: (200, b'{"nothing": 1}', "application/json")
            with pytest.raises(ImageError, match="no token"):
                fetch(
                    f"docker://{reg.host}/test/busybox:1.0",
                    store=Store(tmp_path / "s2"),
                    keys=keys,
                    insecure=INSECURE,
                )


def _squash(*layers: list[Entry]) -> dict[str, str]:
    import io
    import tarfile

    from rktd_units.docker import squash

    tars = [tarfile.open(fileobj=io.BytesIO(layer_tar(entries))) for entries in layers]
    return {p: "dir" if e.info.isdir() else f"{e.layer}" for p, e in squash(tars).items()}


def test_squash_rules() -> None:
    lower = [Entry("d", "dir"), Entry("d/x", data=b"x"), Entry("d/sub", "dir"), Entry("d/sub/y"), Entry("f")]
    # A whited-out directory takes its whole subtree; a file over a directory replaces the subtree.
    assert _squash(lower, [Entry(".wh.d"), Entry("g")]) == {"f": "0", "g": "1"}
    assert _squash(lower, [Entry("d/sub", data=b"now a file")]) == {
        "d": "dir",
        "d/x": "0",
        "d/sub": "1",
        "f": "0",
    }
    # A directory over a file; an opaque directory keeps what its own layer puts in it.
    assert _squash(lower, [Entry("f", "dir"), Entry("f/z")]) == {
        "d": "dir",
        "d/x": "0",
        "d/sub": "dir",
        "d/sub/y": "0",
        "f": "dir",
        "f/z": "1",
    }
    assert _squash(lower, [Entry("d/new"), Entry("d/.wh..wh..opq")]) == {"d": "dir", "d/new": "1", "f": "0"}
    # Whiteouts never touch their own layer, and a whiteout of nothing is harmless.
    assert (
        _squash(lower, [Entry("d/.wh.x"), Entry("d/x", data=b"again"), Entry(".wh.nothing")])["d/x"] == "1"
    )
    with pytest.raises(ImageError, match=r"\.\."):
        _squash([Entry("../escape")])
