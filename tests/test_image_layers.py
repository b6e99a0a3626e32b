"""appc image dependencies at run time: a pod's rootfs is the overlay of its image over the image's
dependencies (`lowerdir=top:…:bottom`, nothing copied); an image with a pathWhitelist runs on one
rendering of its layers, made once in the store; every layer is held while the pod runs.

Real pods (nspawn and fly) of busybox-static images built here: `example.com/busybox` (the
`rktd` fixture's base image, with two files of its own) and images depending on it by name and labels.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rktd_units.store import Store
from tests.helpers.aci import Entry, image_manifest, make_busybox_aci, tar_bytes
from tests.test_stage1_nspawn import FLAVOURS, IMG, Rktd, app_lines, rktd

__all__ = ["rktd"]  # the fixture, with this module's base image
pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="pods need root"),
    pytest.mark.slow,
]
APP = "example.com/layered"
DEPENDS_ON_BASE = {"dependencies": [{"imageName": IMG, "labels": [{"name": "version", "value": "1.0.0"}]}]}


@pytest.fixture(scope="module")
def busybox_aci(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The base: busybox plus /etc/greeting (the top image overrides it) and /etc/base-only."""
    path = tmp_path_factory.mktemp("aci") / "base.aci"
    return make_busybox_aci(path, extra_files={"etc/greeting": "from base\n", "etc/base-only": "base\n"})


def layered_aci(path: Path, name: str = APP, extra: dict[str, Any] | None = None) -> Path:
    """An image with no busybox of its own: /etc/greeting and /etc/top-only over its dependencies."""
    manifest = image_manifest(name, exec=["/bin/sh"], extra=extra or DEPENDS_ON_BASE)
    entries = [
        Entry("manifest", data=manifest),
        Entry("rootfs", "dir", mode=0o755),
        Entry("rootfs/etc", "dir", mode=0o755),
        Entry("rootfs/etc/greeting", data=b"from top\n"),
        Entry("rootfs/etc/top-only", data=b"top\n"),
    ]
    path.write_bytes(tar_bytes(entries))
    return path


def import_layered(rktd: Rktd, **kwargs: Any) -> Any:
    return Store(rktd.dir).import_aci(layered_aci(rktd.tmp / "layered.aci", **kwargs), trusted=True)


def run_sh(rktd: Rktd, flavour: str, script: str, *app: str, image: str = APP) -> Any:
    net = ("--net=host",) if flavour == "nspawn" else ()
    return rktd(
        "run", f"--stage1={flavour}", *net, image, *app, "--exec=/bin/sh", "--",
        "-c", script,
    )  # fmt: skip


def overlay_lowerdir(rktd: Rktd, uuid: str) -> str:
    """The lowerdir of the app's rootfs overlay, read from the app's own mount table."""
    init = rktd.status(uuid)["pid"]
    children = Path(f"/proc/{init}/task/{init}/children").read_text().split()
    pid = children[0] if children else str(init)  # nspawn: the pod's init's child; fly: the app
    lines = [ln for ln in Path(f"/proc/{pid}/mountinfo").read_text().splitlines() if " overlay " in ln]
    assert lines, "the app's rootfs is an overlay"
    return lines[0].split("lowerdir=")[1].split(",")[0]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_the_rootfs_is_the_image_over_its_dependency(rktd: Rktd, flavour: str) -> None:
    top = import_layered(rktd)
    proc = run_sh(rktd, flavour, "cat /etc/greeting /etc/top-only /etc/base-only; ls /bin/busybox")
    assert proc.returncode == 0, proc.stderr
    assert app_lines(proc.stdout, "layered") == ["from top", "top", "base", "/bin/busybox"]
    assert not (Path(top.path) / "rootfs" / "bin").exists()  # busybox is only the base's
    written = run_sh(rktd, flavour, "echo new > /etc/greeting && cat /etc/greeting")
    assert app_lines(written.stdout, "layered") == ["new"], written.stderr
    assert (Path(top.path) / "rootfs" / "etc" / "greeting").read_text() == "from top\n"
    base = Path(rktd.image.path or "") / "rootfs"
    assert (base / "etc" / "greeting").read_text() == "from base\n"
    ro = run_sh(rktd, flavour, "cat /etc/base-only; touch /etc/x 2>&1 || echo refused", "--readonly-rootfs")
    assert app_lines(ro.stdout, "layered")[0] == "base", ro.stderr
    assert app_lines(ro.stdout, "layered")[-1] == "refused", ro.stdout + ro.stderr


def test_two_pods_share_the_layers(rktd: Rktd, tmp_path: Path) -> None:
    top = import_layered(rktd)
    pods = []
    for i in range(2):
        uuid_file = tmp_path / f"uuid{i}"
        proc = rktd.start(
            "run", "--net=host", f"--uuid-file-save={uuid_file}", APP,
            "--exec=/bin/sh", "--", "-c", "ls -i /bin/busybox /etc/greeting; exec sleep 600",
        )  # fmt: skip
        pods.append((proc, rktd.wait_running(uuid_file, proc)))
    try:
        tops, bases = Path(top.path) / "rootfs", Path(rktd.image.path or "") / "rootfs"
        for proc, uuid in pods:
            assert overlay_lowerdir(rktd, uuid) == f"{tops}:{bases}"  # the top image first
            out = rktd.wait_output(proc, "/etc/greeting")
            inodes = {ln.split()[-1]: int(ln.split()[-2]) for ln in app_lines(out, "layered") if " /" in ln}
            assert inodes == {
                "/bin/busybox": os.stat(bases / "bin" / "busybox").st_ino,
                "/etc/greeting": os.stat(tops / "etc" / "greeting").st_ino,
            }
            pod_dir = rktd.dir / "pods" / "run" / uuid
            size = sum(p.stat().st_size for p in pod_dir.rglob("*") if p.is_file() and not p.is_symlink())
            assert size < 200_000  # nothing of either image was copied into the pod
    finally:
        for proc, uuid in pods:
            assert rktd("stop", uuid).returncode == 0
            proc.communicate(timeout=30)


def test_a_missing_dependency_is_named(rktd: Rktd) -> None:
    Store(rktd.dir).import_aci(
        layered_aci(rktd.tmp / "orphan.aci", extra={"dependencies": [{"imageName": "example.com/nowhere"}]}),
        trusted=True,
    )
    proc = rktd("run", "--net=host", "--pull-policy=never", APP, "--exec=/bin/true")
    assert proc.returncode == 254
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"dependency example.com/nowhere of {APP} is not in the store" in lines[0]


def test_image_gc_keeps_a_running_pods_dependency(rktd: Rktd, tmp_path: Path) -> None:
    import_layered(rktd)
    unused = Store(rktd.dir).import_aci(
        make_busybox_aci(tmp_path / "unused.aci", name="example.com/unused"), trusted=True
    )
    uuid_file = tmp_path / "uuid"
    proc = rktd.start(
        "run", "--net=host", f"--uuid-file-save={uuid_file}", APP,
        "--exec=/bin/sh", "--", "-c", "echo up; exec sleep 600",
    )  # fmt: skip
    uuid = rktd.wait_running(uuid_file, proc)
    try:
        gc = rktd("image", "gc", "--grace-period=0")
        assert gc.returncode == 0, gc.stderr
        assert f"removed {unused.id}" in gc.stdout  # gc did remove what nothing uses
        assert rktd.image.id not in gc.stdout
        assert (Path(rktd.image.path or "") / "rootfs" / "bin" / "busybox").exists()
        # Not only because the pod's config names it: the running pod holds it.
        assert Store(rktd.dir).gc(grace_period=0) == []
        assert (Path(rktd.image.path or "") / "rootfs" / "bin" / "busybox").exists()
    finally:
        assert rktd("stop", uuid).returncode == 0
        proc.communicate(timeout=30)
    assert rktd.image.id in Store(rktd.dir).gc(grace_period=0)  # once the pod has ended, it may go


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_path_whitelist_renders_once(rktd: Rktd, flavour: str) -> None:
    whitelist = ["/bin/busybox", "/bin/sh", "/bin/cat", "/etc/greeting", "/etc/passwd", "/etc/group"]
    import_layered(rktd, extra={**DEPENDS_ON_BASE, "pathWhitelist": whitelist})
    script = "cat /etc/greeting; ls /bin /etc"
    first = run_sh(rktd, flavour, script)
    assert first.returncode == 0, first.stderr
    lines = app_lines(first.stdout, "layered")
    assert lines[0] == "from top"
    assert lines[1:] == ["/bin:", "busybox", "cat", "sh", "", "/etc:", "greeting", "group", "passwd"]
    rendered = sorted((rktd.dir / "cas" / "rendered").iterdir())
    assert len(rendered) == 1 and (rendered[0] / "rootfs" / "bin" / "busybox").is_file()
    inode = (rendered[0] / "rootfs" / "etc" / "greeting").stat().st_ino
    again = run_sh(rktd, flavour, script)
    assert app_lines(again.stdout, "layered") == lines
    assert sorted((rktd.dir / "cas" / "rendered").iterdir()) == rendered
    assert (rendered[0] / "rootfs" / "etc" / "greeting").stat().st_ino == inode  # not rendered again


def test_gc_drops_a_rendering_with_its_layers(rktd: Rktd) -> None:
    top = import_layered(rktd, extra={**DEPENDS_ON_BASE, "pathWhitelist": ["/bin/busybox"]})
    store = Store(rktd.dir)
    rootfs = store.rendered(store.layers(top.id))
    assert sorted(os.listdir(rootfs)) == ["bin"]
    store.remove(top.id)
    assert rootfs.exists()
    store.gc(grace_period=3600)
    assert not rootfs.parent.exists()


# -- a dependency the store lacks is fetched like the image (appc discovery over HTTPS on 127.0.0.1) --

LABELS = {"version": "1.0.0", "os": "linux", "arch": "amd64"}


@dataclass
class Served:
    ca_file: Path
    alice: Any


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """localhost/example/base (signed by alice) and .../unsigned-base, found by appc discovery."""
    if not (shutil.which("gpg") and shutil.which("sqv")):
        pytest.skip("needs gpg and sqv")
    from tests.helpers.gpg import gpg_home
    from tests.helpers.https import Site, make_pki
    from tests.test_fetch_https import _bind, _discovery_page

    d = tmp_path_factory.mktemp("served")
    pki, site = make_pki(d), Site()
    with gpg_home() as gpg:
        alice = gpg.make_key("Alice <alice@example.com>")
        site.add("/keys/alice.asc", alice.armored, ctype="text/plain")
        site.add(
            "/example?ac-discovery=1",
            _discovery_page("localhost/example", "https://localhost/keys/alice.asc"),
        )
        for name, sign in (("base", True), ("unsigned-base", False)):
            aci = make_busybox_aci(d / f"{name}.aci", name=f"localhost/example/{name}", labels=LABELS)
            path = f"/aci/localhost/example/{name}-1.0.0-linux-amd64.aci"
            site.add(path, aci.read_bytes())
            if sign:
                site.add(f"{path}.asc", gpg.sign(alice, aci).read_bytes(), ctype="text/plain")
        for _ in _bind(site, pki, 443):
            yield Served(pki.ca_file, alice)


def _depending_on(rktd: Rktd, name: str) -> None:
    dep = {"imageName": name, "labels": [{"name": "version", "value": "1.0.0"}]}
    import_layered(rktd, extra={"dependencies": [dep]})


def _run_fetching(rktd: Rktd, served: Served, script: str) -> Any:
    from rktd_units.trust import KeyStore, parse_keys

    etc = rktd.tmp / "etc"
    KeyStore(etc, rktd.tmp / "usr").add(parse_keys(served.alice.armored)[0], prefix="localhost/example")
    return rktd(
        f"--local-config={etc}", "run", "--stage1=fly", APP, "--exec=/bin/sh", "--", "-c", script,
        env={"SSL_CERT_FILE": str(served.ca_file)},
    )  # fmt: skip


def test_a_missing_dependency_is_fetched(rktd: Rktd, served: Served) -> None:
    _depending_on(rktd, "localhost/example/base")
    proc = _run_fetching(rktd, served, "cat /etc/top-only; ls /bin/busybox")
    assert proc.returncode == 0, proc.stderr
    assert app_lines(proc.stdout, "layered") == ["top", "/bin/busybox"]
    base = Store(rktd.dir).find("localhost/example/base", {"version": "1.0.0"})
    assert base is not None and base.trusted  # fetched, and its signature verified


def test_a_dependency_that_does_not_verify_is_refused(rktd: Rktd, served: Served) -> None:
    _depending_on(rktd, "localhost/example/unsigned-base")
    proc = _run_fetching(rktd, served, "true")
    assert proc.returncode == 254
    assert f"dependency localhost/example/unsigned-base,version=1.0.0 of {APP}:" in proc.stderr
    assert "signature" in proc.stderr
    assert Store(rktd.dir).find("localhost/example/unsigned-base") is None
