"""stage0's command line: the `IMAGE [flags] [-- args] --- IMAGE2` tail, volumes, mounts, image
references, prepare/run-prepared/list/status/rm through the real CLI, exit codes, lean imports."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rktd_units.cli_pods import parse_images, parse_mount, parse_volume
from rktd_units.errors import PodError, UsageError
from rktd_units.model import Mount, NameValue, VolumeKind
from rktd_units.stage0 import _image_ref, parse_quantity, resolve_user
from tests.test_stage1_nspawn import IMG, Rktd, busybox_aci, needs_nspawn, needs_root, rktd

__all__ = ["busybox_aci", "rktd"]


def test_parse_images_tail() -> None:
    a, b = parse_images(
        [
            "example.com/a", "--exec=/bin/x", "--name", "first", "--environment=A=1", "--environment=B=2",
            "--mount", "volume=v,target=/v", "--readonly-rootfs", "--", "-c", "--not-a-flag",
            "---", "example.com/b:1.0", "--user=7", "--cap-retain=CAP_CHOWN,CAP_KILL",
        ]
    )  # fmt: skip
    assert a.image == "example.com/a" and a.exec == "/bin/x" and a.name == "first"
    assert a.environment == (NameValue("A", "1"), NameValue("B", "2"))
    assert a.mounts == (Mount("v", "/v"),)
    assert a.readonly_rootfs is True
    assert a.args == ("-c", "--not-a-flag")
    assert b.image == "example.com/b:1.0" and b.user == "7" and b.args is None
    assert b.cap_retain == ("CAP_CHOWN", "CAP_KILL")


@pytest.mark.parametrize(
    ("tail", "message"),
    [
        (["img", "--bogus=1"], "unknown per-app flag"),
        (["--net=host"], "pod-wide flags go before"),
        (["img", "---", "---", "img2"], "empty image"),
        (["img", "--exec"], "needs a value"),
    ],
)
def test_parse_images_errors(tail: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse_images(tail)


def test_parse_volume_and_mount() -> None:
    v = parse_volume("data,kind=host,source=/srv,readOnly=true")
    assert (v.name, v.kind, v.source, v.read_only) == ("data", VolumeKind.HOST, "/srv", True)
    e = parse_volume("tmp,kind=empty,mode=0700,uid=1,gid=2")
    assert (e.kind, e.mode, e.uid, e.gid) == (VolumeKind.EMPTY, "0700", 1, 2)
    for bad in ("data,kind=host", "data,kind=weird", "data,kind=empty,colour=red", ",kind=empty"):
        with pytest.raises(UsageError):
            parse_volume(bad)
    assert parse_mount("volume=data,target=/data") == Mount("data", "/data")
    with pytest.raises(UsageError):
        parse_mount("volume=data")


def test_image_references() -> None:
    ref = _image_ref("example.com/app:1.2,arch=amd64")
    assert ref.name == "example.com/app"
    assert set(ref.labels) == {NameValue("version", "1.2"), NameValue("arch", "amd64")}
    assert _image_ref("sha512-abc").id == "sha512-abc"
    assert _image_ref("./local.aci").name == "./local.aci" and not _image_ref("./local.aci").labels
    assert _image_ref("docker://busybox:latest").labels == ()


def test_quantities() -> None:
    assert parse_quantity("64M") == 64_000_000
    assert parse_quantity("1Gi") == 2**30
    assert parse_quantity("500m", millis=True) == 500
    assert parse_quantity("2", millis=True) == 2000
    with pytest.raises(UsageError):
        parse_quantity("lots")


def test_resolve_user_from_the_image(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n")
    assert resolve_user(tmp_path, "web") == (33, "/var/www")
    assert resolve_user(tmp_path, "0") == (0, "/root")
    with pytest.raises(PodError, match="not found"):
        resolve_user(tmp_path, "nobody-here")


# -- through the real CLI ------------------------------------------------------------------------------


@needs_root
def test_errors_exit_254(rktd: Rktd) -> None:
    nothing = rktd("run", "--net=host")
    assert nothing.returncode == 254 and "nothing to run" in nothing.stderr
    missing = rktd("run", "--net=host", "--pull-policy=never", "example.com/absent")
    assert missing.returncode == 254 and "not in the store" in missing.stderr
    both = rktd("run", "--pod-manifest=/nonexistent/x.json", IMG)
    assert both.returncode == 254 and "exclude each other" in both.stderr
    fly_multi = rktd("run", "--stage1=fly", IMG, "---", IMG)
    assert fly_multi.returncode == 254 and "exactly one app" in fly_multi.stderr
    bad_name = rktd("run", "--net=host", IMG, "--name=../../etc")
    assert bad_name.returncode == 254 and "not an AC Name" in bad_name.stderr
    no_exec = rktd("status", "nothere")
    assert no_exec.returncode == 254 and "no pod" in no_exec.stderr


@needs_root
@needs_nspawn
def test_prepare_run_prepared_status_list_rm(rktd: Rktd) -> None:
    prep = rktd(
        "prepare", "--net=host", "--name=batch", IMG, "--exec=/bin/sh", "--", "-c", "echo ran; exit 7"
    )
    assert prep.returncode == 0, prep.stderr
    uuid = prep.stdout.strip()
    assert rktd.status(uuid)["state"] == "prepared"
    manifest = json.loads((rktd.dir / "pods" / "prepared" / uuid / "pod").read_text())
    assert manifest["apps"][0]["image"]["id"] == rktd.image.id  # pinned by ID, as rkt's `pod` file
    assert manifest["apps"][0]["app"]["exec"] == ["/bin/sh"]  # the image's app; stage1.json has the override
    ran = rktd("run-prepared", uuid[:8])
    assert ran.returncode == 7 and "app[busybox]: ran" in ran.stdout, ran.stderr
    status = rktd.status("batch")  # by pod name
    assert status["uuid"] == uuid and status["state"] == "exited"
    assert status["app_exit_statuses"] == {"busybox": 7}
    text = rktd("status", uuid).stdout
    assert "state=exited" in text and "app-busybox=7" in text
    again = rktd("run-prepared", uuid)
    assert again.returncode == 254 and "not prepared" in again.stderr
    table = rktd("list").stdout.splitlines()
    assert table[0].split()[:3] == ["UUID", "NAME", "APP"] and uuid[:8] in table[1] and "exited" in table[1]
    assert rktd("rm", uuid).returncode == 0
    assert json.loads(rktd("list", "--format=json").stdout) == []


@needs_root
def test_uuid_file_and_app_names(rktd: Rktd, tmp_path: Path) -> None:
    uuid_file = tmp_path / "uuid"
    proc = rktd(
        "prepare", "--net=host", f"--uuid-file-save={uuid_file}", IMG, "---", IMG, "---", IMG, "--name=x"
    )
    assert proc.returncode == 0, proc.stderr
    uuid = uuid_file.read_text().strip()
    assert uuid == proc.stdout.strip()
    apps = [a["name"] for a in rktd.status(uuid)["apps"]]
    assert apps == ["busybox", "busybox-2", "x"]
    assert rktd("rm", f"--uuid-file={uuid_file}").returncode == 0
    assert not (rktd.dir / "pods" / "prepared" / uuid).exists()


@needs_root
def test_rm_of_several_pods_reports_each_failure_and_goes_on(rktd: Rktd) -> None:
    uuids = [rktd("prepare", "--net=host", IMG).stdout.strip() for _ in range(2)]
    proc = rktd("rm", uuids[0], "no-such-pod", uuids[1])
    assert proc.returncode == 254
    assert proc.stdout.split() == uuids  # both removed, in order, despite the bad name between them
    assert len(proc.stderr.splitlines()) == 1 and "no-such-pod" in proc.stderr
    assert json.loads(rktd("list", "--format=json").stdout) == []


def test_run_path_imports_stay_lean(tmp_path: Path) -> None:
    """`rktd run` is on every pod start: it must not import the fetcher, networking, jinja2 or yaml."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "from rktd_units.cli import main; main()",
         f"--dir={tmp_path}", "run", "--net=host", "--pull-policy=never", "example.com/absent"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 254
    modules = {line.split("|")[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line}
    assert "rktd_units.stage0" in modules
    for heavy in ("rktd_units.fetch", "rktd_units.network", "jinja2", "yaml", "cryptography", "http.client"):
        assert heavy not in modules


@needs_root
@needs_nspawn
@pytest.mark.skipif(shutil.which("script") is None, reason="script(1) absent")
def test_interactive_gets_a_terminal(rktd: Rktd) -> None:
    argv = rktd.argv("run", "--interactive", "--net=host", IMG, "--exec=/bin/sh", "--", "-c", "tty; exit 4")
    proc = subprocess.run(
        ["script", "-qec", shlex.join(argv), "/dev/null"],
        capture_output=True, text=True, timeout=60, env=rktd.env({"TERM": "xterm"}),
    )  # fmt: skip
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "/dev/pts/" in proc.stdout  # the app's stdin is the pod's console, not a pipe


@needs_root
@needs_nspawn
def test_run_an_aci_file_through_the_fetcher(rktd: Rktd, tmp_path: Path) -> None:
    from tests.helpers.aci import make_busybox_aci

    aci = make_busybox_aci(tmp_path / "other.aci", name="example.com/other")
    unsigned = rktd("run", "--net=host", str(aci))
    assert unsigned.returncode == 254 and "signature" in unsigned.stderr.lower(), unsigned.stderr
    proc = subprocess.run(
        [*rktd.argv("run", "--net=host", str(aci), "--exec=/bin/echo", "--", "fetched")[:3],
         f"--dir={rktd.dir}", "--insecure-options=image",
         "run", "--net=host", str(aci), "--exec=/bin/echo", "--", "fetched"],
        capture_output=True, text=True, timeout=60, env=rktd.env(),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "app[other]: fetched" in proc.stdout
    listing = json.loads(rktd("list", "--format=json").stdout)
    assert [a["image_name"] for p in listing for a in p["apps"]] == ["example.com/other"]
