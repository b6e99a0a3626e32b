"""Fetching over real HTTPS on 127.0.0.1 (port 443, as appc discovery has no port), with keys and
signatures made by real gpg and verified by real sqv. Every refusal leaves the store unchanged."""

from __future__ import annotations

import errno
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from rktd_units import cli
from rktd_units.errors import ImageError, TrustError
from rktd_units.fetch import HttpError, fetch, fetch_ref
from rktd_units.model import ImageRef, NameValue
from rktd_units.store import Store
from rktd_units.trust import KeyStore, parse_keys
from tests.helpers.aci import make_busybox_aci
from tests.helpers.gpg import Gpg, Key, gpg_home
from tests.helpers.https import Pki, Site, make_pki, serve

pytestmark = pytest.mark.skipif(
    not (shutil.which("gpg") and shutil.which("sqv")), reason="needs gpg and sqv"
)

NAME = "localhost/example/app"
LABELS = {"version": "1.0.0", "os": "linux", "arch": "amd64"}
TEMPLATE = "https://localhost/aci/{name}-{version}-{os}-{arch}.{ext}"


@dataclass
class World:
    site: Site
    pki: Pki
    alice: Key  # signs the images
    mallory: Key  # signs nothing served under a trusted name
    dir: Path


def _discovery_page(prefix: str, keys_url: str) -> bytes:
    return (
        "<!DOCTYPE html><html><head>"
        f'<meta name="ac-discovery" content="{prefix} {TEMPLATE}">'
        f'<meta name="ac-discovery-pubkeys" content="{prefix} {keys_url}">'
        "</head><body></body></html>"
    ).encode()


def _publish(site: Site, gpg: Gpg, key: Key, d: Path, name: str, *, sign: bool = True, **kw: object) -> Path:
    """Build a busybox ACI named `name`, sign it, serve it where TEMPLATE puts it."""
    aci = make_busybox_aci(d / f"{name.replace('/', '_')}.aci", name=name, labels=LABELS, **kw)  # type: ignore[arg-type]
    base = f"/aci/{name}-1.0.0-linux-amd64.aci"
    site.add(base, aci.read_bytes())
    if sign:
        site.add(base + ".asc", gpg.sign(key, aci).read_bytes(), ctype="text/plain")
    return aci


def _bind(site: Site, pki: Pki | None, port: int) -> Iterator[Site]:
    """Serve on a fixed port (443/80: appc discovery URLs carry no port), waiting if it is busy."""
    deadline = time.monotonic() + 15
    while True:
        try:
            ctx = serve(site, pki, port=port)
            ctx.__enter__()
            break
        except PermissionError:
            pytest.skip(f"binding 127.0.0.1:{port} needs root (CI runs as root)")
        except OSError as e:
            if e.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    try:
        yield site
    finally:
        ctx.__exit__(None, None, None)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("https")
    pki = make_pki(d)
    site = Site()
    with gpg_home() as gpg, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SSL_CERT_FILE", str(pki.ca_file))
        alice = gpg.make_key("Alice <alice@example.com>")
        mallory = gpg.make_key("Mallory <mallory@example.com>")
        site.add("/keys/alice.asc", alice.armored, ctype="text/plain")
        site.add(
            "/example?ac-discovery=1",
            _discovery_page("localhost/example", "https://localhost/keys/alice.asc"),
        )
        site.add(
            "/example/app?ac-discovery=1",
            _discovery_page("localhost/example", "https://localhost/keys/alice.asc"),
        )
        _publish(site, gpg, alice, d, NAME)
        _publish(site, gpg, alice, d, f"{NAME}/sub")  # found through the parent page
        _publish(site, gpg, alice, d, "localhost/example/unsigned", sign=False)
        # Tampered: the signature is of different content.
        good = _publish(site, gpg, alice, d, "localhost/example/tampered")
        evil = make_busybox_aci(
            d / "evil.aci", name="localhost/example/tampered", labels=LABELS, exec=["/bin/evil"]
        )
        assert evil.read_bytes() != good.read_bytes()
        site.add("/aci/localhost/example/tampered-1.0.0-linux-amd64.aci", evil.read_bytes())
        # Signed by mallory only.
        _publish(site, gpg, mallory, d, "localhost/example/mallory")
        # Discovery answers with an image of another name.
        liar = make_busybox_aci(d / "liar.aci", name="localhost/example/other", labels=LABELS)
        site.add("/aci/localhost/example/liar-1.0.0-linux-amd64.aci", liar.read_bytes())
        site.add("/aci/localhost/example/liar-1.0.0-linux-amd64.aci.asc", gpg.sign(alice, liar).read_bytes())
        for served in _bind(site, pki, 443):
            yield World(served, pki, alice, mallory, d)


@pytest.fixture
def env(tmp_path: Path, world: World, monkeypatch: pytest.MonkeyPatch) -> tuple[Store, KeyStore]:
    monkeypatch.setenv("SSL_CERT_FILE", str(world.pki.ca_file))
    return Store(tmp_path / "store"), KeyStore(tmp_path / "etc", tmp_path / "usr")


def _trust(keys: KeyStore, key: Key, prefix: str | None) -> None:
    keys.add(parse_keys(key.armored)[0], prefix=prefix, root=prefix is None)


def _snapshot(store: Store) -> list[str]:
    root = store.root
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _refused(
    store: Store, keys: KeyStore, image: str, exc: type[Exception], match: str, **kw: object
) -> str:
    before = _snapshot(store)
    with pytest.raises(exc, match=match) as e:
        fetch(image, store=store, keys=keys, **kw)  # type: ignore[arg-type]
    assert _snapshot(store) == before, "a refused image must leave the store unchanged"
    return str(e.value)


def test_discovered_and_trusted_by_prefix(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    info = fetch(f"{NAME}:1.0.0", store=store, keys=keys)
    assert info.name == NAME and info.label("version") == "1.0.0"
    assert info.trusted and info.source == f"https://localhost/aci/{NAME}-1.0.0-linux-amd64.aci"
    assert [i.id for i in store.list()] == [info.id]
    assert (store.rootfs(info.id) / "bin/busybox").is_file()


def test_parent_path_is_tried(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example/app")
    n = len(world.site.requests)
    info = fetch(f"{NAME}/sub,version=1.0.0", store=store, keys=keys)
    assert info.name == f"{NAME}/sub"
    asked = world.site.requests[n:]
    assert asked[:2] == ["/example/app/sub?ac-discovery=1", "/example/app?ac-discovery=1"]


def test_key_for_another_prefix_is_refused(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/other")
    _trust(keys, world.alice, "localhost/exam")  # a string prefix, not a path component
    msg = _refused(store, keys, f"{NAME}:1.0.0", TrustError, "no key is trusted")
    assert f"rktd trust --prefix={NAME}" in msg


def test_signer_not_trusted_is_refused(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    _refused(store, keys, "localhost/example/mallory:1.0.0", TrustError, "does not verify")


def test_tampered_image_is_refused(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    _refused(store, keys, "localhost/example/tampered:1.0.0", TrustError, "does not verify")


def test_missing_signature_is_refused(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    _refused(store, keys, "localhost/example/unsigned:1.0.0", TrustError, "has no signature")


def test_insecure_image_skips_verification(
    env: tuple[Store, KeyStore], world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    store, keys = env
    info = fetch("localhost/example/unsigned:1.0.0", store=store, keys=keys, insecure=frozenset({"image"}))
    assert info.name == "localhost/example/unsigned" and not info.trusted
    assert "not verifying" in capsys.readouterr().err


def test_discovery_must_return_the_image_asked_for(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    _refused(
        store, keys, "localhost/example/liar:1.0.0", ImageError, "returned image localhost/example/other"
    )


def test_root_key_accepted(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, None)
    info = fetch(f"{NAME}:1.0.0", store=store, keys=keys)
    assert info.name == NAME and info.trusted
    # As stage0 asks: a pod manifest's image reference.
    ref = ImageRef(NAME, labels=(NameValue("version", "1.0.0"),))
    assert fetch_ref(ref, store=store, keys=keys, pull_policy="never").id == info.id
    assert fetch_ref(ImageRef(id=info.id), store=store, keys=keys).id == info.id
    assert fetch_ref(ref, store=store, keys=keys, pull_policy="update").id == info.id


def test_https_url_and_pull_policies(env: tuple[Store, KeyStore], world: World) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    url = f"https://localhost/aci/{NAME}-1.0.0-linux-amd64.aci"
    with pytest.raises(ImageError, match="pull policy is never"):
        fetch(url, store=store, keys=keys, pull_policy="never")
    info = fetch(url, store=store, keys=keys)
    n = len(world.site.requests)
    assert fetch(url, store=store, keys=keys).id == info.id
    assert fetch(f"{NAME}:1.0.0", store=store, keys=keys).id == info.id
    assert fetch(f"{NAME}:1.0.0", store=store, keys=keys, pull_policy="never").id == info.id
    assert len(world.site.requests) == n, "pull policy new: the store's copy is used"
    assert fetch(url, store=store, keys=keys, pull_policy="update").id == info.id
    assert len(world.site.requests) == n + 2, "update downloads the image and its signature again"


def test_tls_needs_a_trusted_ca(
    env: tuple[Store, KeyStore], world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost/example")
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    monkeypatch.setenv("SSL_CERT_DIR", "/nonexistent")
    url = f"https://localhost/aci/{NAME}-1.0.0-linux-amd64.aci"
    msg = _refused(store, keys, url, HttpError, "CERTIFICATE_VERIFY_FAILED|certificate verify failed")
    assert "SSL_CERT_FILE" in msg
    info = fetch(url, store=store, keys=keys, insecure=frozenset({"tls"}))
    assert info.name == NAME and info.trusted


def test_plain_http_needs_the_insecure_option(env: tuple[Store, KeyStore]) -> None:
    store, keys = env
    _refused(store, keys, "http://127.0.0.1:9/x.aci", HttpError, "refusing plain http")


def test_local_file_with_signature(env: tuple[Store, KeyStore], world: World, tmp_path: Path) -> None:
    store, keys = env
    _trust(keys, world.alice, "localhost")
    with gpg_home() as gpg:
        other = gpg.make_key("Other <other@example.com>")
        aci = make_busybox_aci(tmp_path / "local.aci", name="localhost/local", labels=LABELS)
        _refused(store, keys, str(aci), TrustError, "has no signature")
        gpg.sign(other, aci)
        _refused(store, keys, f"file://{aci}", TrustError, "does not verify")
    _trust(keys, other, "localhost/local")
    info = fetch(str(aci), store=store, keys=keys)
    assert info.name == "localhost/local" and info.trusted


def _cli(tmp_path: Path, *args: str) -> tuple[int, str, BaseException | None]:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        runner = CliRunner()
    base = ["--dir", str(tmp_path / "store"), "--local-config", str(tmp_path / "etc")]
    r = runner.invoke(cli.cli, [*base, "--system-config", str(tmp_path / "usr"), *args])
    return r.exit_code, r.stdout, r.exception


def test_cli_trust_by_discovery_then_fetch(
    env: tuple[Store, KeyStore], world: World, tmp_path: Path
) -> None:
    store, _ = env
    code, out, exc = _cli(tmp_path, "trust", "--prefix=localhost/example", "--skip-fingerprint-review")
    assert code == 0, exc
    stored = tmp_path / "etc/trustedkeys/prefix.d/localhost/example" / world.alice.fingerprint
    assert out.strip() == str(stored) and stored.is_file()
    code, out, exc = _cli(tmp_path, "fetch", f"{NAME}:1.0.0")
    assert code == 0, exc
    (info,) = store.list()
    assert out.strip() == info.id and info.id.startswith("sha512-")


def test_plain_http_discovery_needs_the_insecure_option(
    env: tuple[Store, KeyStore], world: World, tmp_path: Path
) -> None:
    store, keys = env
    plain = Site()
    page = _discovery_page("localhost/plain", "http://localhost/keys.asc").replace(b"https:", b"http:")
    plain.add("/plain?ac-discovery=1", page)
    aci = make_busybox_aci(tmp_path / "plain.aci", name="localhost/plain/app", labels=LABELS)
    plain.add("/aci/localhost/plain/app-1.0.0-linux-amd64.aci", aci.read_bytes())
    for served in _bind(plain, None, 80):
        msg = _refused(
            store,
            keys,
            "localhost/plain/app:1.0.0",
            ImageError,
            "discovery found no image",
            insecure=frozenset({"image"}),
        )
        assert "--insecure-options=http" in msg
        assert served.requests == [], "nothing goes over plain http without the option"
        info = fetch(
            "localhost/plain/app:1.0.0", store=store, keys=keys, insecure=frozenset({"image", "http"})
        )
        assert info.name == "localhost/plain/app" and not info.trusted
        assert served.requests[0] == "/plain/app?ac-discovery=1"
        assert "/plain/app?ac-discovery=1" in world.site.requests, "https is tried first"


def test_cli_trust_key_url_with_review(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(world.pki.ca_file))
    code, out, exc = _cli(
        tmp_path, "trust", "--prefix=localhost/example", "https://localhost/keys/alice.asc"
    )
    assert code == 0 and out.strip() == "", "an empty answer is no: nothing trusted"
    assert not (tmp_path / "etc/trustedkeys").exists()
    code, _, exc = _cli(tmp_path, "trust", "--root", "http://localhost/keys/alice.asc")
    assert code != 0 and "refusing plain http" in str(exc)
