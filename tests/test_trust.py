"""Trust: fingerprints of real GnuPG keys, the key store layout and masks, prefix matching by path
component, and detached signatures checked by the real sqv."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from rktd_units import cli
from rktd_units.errors import TrustError
from rktd_units.trust import KeyStore, check_prefix, name_prefixes, parse_keys, verify
from tests.helpers.gpg import Gpg, Key, gpg_home

pytestmark = pytest.mark.skipif(
    not (shutil.which("gpg") and shutil.which("sqv")), reason="needs gpg and sqv"
)


@pytest.fixture(scope="module")
def gpg() -> Iterator[Gpg]:
    with gpg_home() as g:
        yield g


@pytest.fixture(scope="module")
def alice(gpg: Gpg) -> Key:
    return gpg.make_key("Alice <alice@example.com>")


@pytest.fixture(scope="module")
def bob(gpg: Gpg) -> Key:
    return gpg.make_key("Bob <bob@example.com>")


def test_fingerprint_matches_gnupg(alice: Key, gpg: Gpg) -> None:
    rsa = gpg.make_key("Rsa <rsa@example.com>", algo="rsa2048")
    for key in (alice, rsa):
        (armored,) = parse_keys(key.armored)
        (binary,) = parse_keys(key.binary)
        assert armored.fingerprint == binary.fingerprint == key.fingerprint
        assert armored.data == binary.data == key.binary
    assert parse_keys(alice.armored)[0].user_ids == ("Alice <alice@example.com>",)


def test_keyring_splits_into_certificates(alice: Key, bob: Key) -> None:
    keys = parse_keys(alice.binary + bob.binary)
    assert [k.fingerprint for k in keys] == [alice.fingerprint, bob.fingerprint]
    assert [k.data for k in keys] == [alice.binary, bob.binary]
    keys = parse_keys(alice.armored + b"\n" + bob.armored)
    assert [k.fingerprint for k in keys] == [alice.fingerprint, bob.fingerprint]


@pytest.mark.parametrize(
    "data",
    [b"", b"hello world", b"\x88\x05abc", b"-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n!!!\n"],
    ids=["empty", "text", "truncated", "bad-armor"],
)
def test_garbage_is_not_a_key(data: bytes) -> None:
    with pytest.raises(TrustError):
        parse_keys(data)


def test_prefixes_by_component() -> None:
    assert name_prefixes("example.com/et/cd") == ["example.com", "example.com/et", "example.com/et/cd"]
    assert check_prefix("example.com/app/") == "example.com/app"
    for bad in ("../etc", "Example.com", "a//b", "/abs", "a/./b", ""):
        with pytest.raises(TrustError):
            check_prefix(bad)


def _stores(tmp_path: Path) -> KeyStore:
    return KeyStore(tmp_path / "etc", tmp_path / "usr")


def test_layout_and_component_matching(tmp_path: Path, alice: Key, bob: Key) -> None:
    ks = _stores(tmp_path)
    (a,) = parse_keys(alice.armored)
    (b,) = parse_keys(bob.armored)
    pa = ks.add(a, prefix="example.com/et")
    pb = ks.add(b, root=True)
    assert pa == tmp_path / "etc/trustedkeys/prefix.d/example.com/et" / alice.fingerprint
    assert pb == tmp_path / "etc/trustedkeys/root.d" / bob.fingerprint
    assert parse_keys(pa.read_bytes())[0].fingerprint == alice.fingerprint
    assert pa.stat().st_mode & 0o777 == 0o644
    assert sorted(ks.keys_for("example.com/et")) == sorted([pa, pb])
    assert sorted(ks.keys_for("example.com/et/cd")) == sorted([pa, pb])
    assert ks.keys_for("example.com/etcd") == [pb]
    assert ks.keys_for("other.org/x") == [pb]
    assert not list(pa.parent.glob(".key-*")), "no temporary file left behind"


def test_local_masks_and_overrides_system(tmp_path: Path, alice: Key, bob: Key) -> None:
    (a,) = parse_keys(alice.armored)
    system = KeyStore(tmp_path / "usr")
    sys_path = system.add(a, prefix="example.com")
    ks = _stores(tmp_path)
    assert ks.keys_for("example.com/app") == [sys_path]
    local = tmp_path / "etc/trustedkeys/prefix.d/example.com" / alice.fingerprint
    local.parent.mkdir(parents=True)
    local.write_bytes(b"")
    assert ks.keys_for("example.com/app") == [], "an empty local file masks the system key"
    local.write_bytes(alice.binary)
    assert ks.keys_for("example.com/app") == [local], "a local file replaces the system one"


def test_signature_verifies_only_with_the_right_keys(tmp_path: Path, gpg: Gpg, alice: Key, bob: Key) -> None:
    image = tmp_path / "app.aci"
    image.write_bytes(b"pretend this is an ACI\n" * 100)
    asc = gpg.sign(alice, image)
    sig = gpg.sign(alice, image, armor=False)
    ks = _stores(tmp_path)
    with pytest.raises(TrustError, match="no key is trusted") as e:
        verify("example.com/app", image, asc, ks)
    assert "rktd trust --prefix=example.com/app" in str(e.value)
    ks.add(parse_keys(bob.armored)[0], prefix="example.com/app")
    ks.add(parse_keys(alice.armored)[0], prefix="example.com/other")
    with pytest.raises(TrustError, match="does not verify"):
        verify("example.com/app", image, asc, ks)
    ks.add(parse_keys(alice.armored)[0], prefix="example.com/app")
    assert verify("example.com/app", image, asc, ks) == alice.fingerprint
    assert verify("example.com/app/sub", image, sig, ks) == alice.fingerprint
    with pytest.raises(TrustError):
        verify("example.com/apples", image, asc, ks)
    image.write_bytes(image.read_bytes() + b"x")
    with pytest.raises(TrustError, match="does not verify"):
        verify("example.com/app", image, asc, ks)


def _run(args: list[str], tmp_path: Path, input: str | None = None) -> tuple[int, str, BaseException | None]:
    base = ["--local-config", str(tmp_path / "etc"), "--system-config", str(tmp_path / "usr")]
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:  # click >= 8.2 keeps them apart already
        runner = CliRunner()
    r = runner.invoke(cli.cli, [*base, *args], input=input)
    return r.exit_code, r.stdout, r.exception


def test_cli_trust(tmp_path: Path, alice: Key, bob: Key) -> None:
    kf = tmp_path / "alice.asc"
    kf.write_bytes(alice.armored)
    code, out, exc = _run(
        ["trust", "--prefix=example.com/app", "--skip-fingerprint-review", str(kf)], tmp_path
    )
    assert code == 0, exc
    want = tmp_path / "etc/trustedkeys/prefix.d/example.com/app" / alice.fingerprint
    assert out.strip() == str(want) and want.is_file()

    bf = tmp_path / "bob.gpg"
    bf.write_bytes(bob.binary)
    code, out, exc = _run(["trust", "--root", str(bf)], tmp_path, input="n\n")
    assert code == 0 and "trustedkeys" not in out and not (tmp_path / "etc/trustedkeys/root.d").exists()
    code, out, exc = _run(["trust", "--root", str(bf)], tmp_path, input="y\n")
    assert code == 0, exc
    assert (tmp_path / "etc/trustedkeys/root.d" / bob.fingerprint).is_file()

    code, out, exc = _run(["trust", str(bf)], tmp_path)
    assert code != 0 and "--prefix" in str(exc)
    code, out, exc = _run(["trust", "--prefix=../etc", "--skip-fingerprint-review", str(bf)], tmp_path)
    assert isinstance(exc, TrustError)
    assert [p.name for p in (tmp_path / "etc/trustedkeys/prefix.d").iterdir()] == ["example.com"]
    assert not (tmp_path / "etc/trustedkeys/etc").exists()
