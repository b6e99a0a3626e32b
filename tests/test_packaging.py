"""Packaging: meson installs everything in its place, the man pages are derived from the code and render
cleanly, the Debian package is lintian-clean (no E:/W:), the RPM is rpmlint-clean (no errors); both are
built for the host's architecture and carry the pod's init, a hardened ELF executable."""

from __future__ import annotations

import gzip
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from rktd_units.annotations import ANNOTATIONS
from rktd_units.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
RUNTIME_DEPENDS = (
    "python3-click",
    "python3-jinja2",
    "python3-yaml",
    "python3-systemd",
    "python3-jeepney",
    "sqv",
    "systemd-container",
    "containernetworking-plugins",
    "libseccomp2",  # dlopened by stage1 for seccomp isolators
)
INIT = "usr/libexec/rktd/rktd-init"

pytestmark = pytest.mark.slow


def need(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool, path=SYSTEM_PATH) is None:
            pytest.skip(f"{tool} is not installed (scripts/install-deps installs it)")


def sh(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": os.environ.get("HOME", "/root")}
    proc = subprocess.run(
        argv,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        **kwargs,  # type: ignore[call-overload]
    )
    out = f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{out}"
    return proc  # type: ignore[no-any-return]


def check_init(path: Path, *, hardened: bool) -> None:
    """`path` is a dynamically linked ELF executable that links libseccomp; `hardened`: linked as a
    distribution build links it (PIE, full RELRO: relro and bind-now, a non-executable stack)."""
    assert path.read_bytes()[:4] == b"\x7fELF", path
    need("readelf")
    header = sh(["readelf", "-hW", str(path)]).stdout
    assert re.search(r"^ *Type: +(EXEC|DYN) ", header, re.M), header
    segments = sh(["readelf", "-lW", str(path)]).stdout
    assert re.search(r"^ *INTERP ", segments, re.M), segments  # an executable, not a library
    dynamic = sh(["readelf", "-dW", str(path)]).stdout
    assert "Shared library: [libseccomp.so.2]" in dynamic, dynamic
    if not hardened:
        return
    assert re.search(r"^ *Type: +DYN \(Position-Independent Executable", header, re.M), header
    assert re.search(r"^ *GNU_RELRO ", segments, re.M), segments
    stack = re.search(r"^ *GNU_STACK( +\S+){5} +(\S+) ", segments, re.M)
    assert stack is not None and "E" not in stack.group(2), segments
    assert re.search(r"\(FLAGS\) +BIND_NOW|\(FLAGS_1\) +Flags: .*\bNOW\b", dynamic), dynamic


@pytest.fixture(scope="module")
def destdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need("meson", "ninja", "pkg-config")
    build = tmp_path_factory.mktemp("meson-build")
    dest = tmp_path_factory.mktemp("meson-dest")
    sh(["meson", "setup", "--prefix=/usr", str(build), str(ROOT)])
    sh(["meson", "install", "-C", str(build), f"--destdir={dest}"], cwd=build)
    return dest


def test_meson_installs_everything(destdir: Path) -> None:
    unitdir = sh(["pkg-config", "--variable=systemdsystemunitdir", "systemd"]).stdout.strip()
    gendir = sh(["pkg-config", "--variable=systemdsystemgeneratordir", "systemd"]).stdout.strip()
    for path, executable in [
        ("usr/bin/rktd", True),
        (INIT, True),
        (f"{gendir}/rktd-generator", True),
        (f"{unitdir}/pod@.service", False),
        ("usr/share/man/man1/rktd.1", False),
        ("usr/share/man/man5/rktd.pod.5", False),
        ("usr/share/man/man8/rktd-generator.8", False),
        ("usr/share/bash-completion/completions/rktd", False),
        ("usr/share/zsh/vendor-completions/_rktd", False),
        ("usr/share/fish/vendor_completions.d/rktd.fish", False),
    ]:
        f = destdir / path.lstrip("/")
        assert f.is_file(), path
        assert bool(f.stat().st_mode & 0o111) == executable, path
    assert (destdir / "usr/bin/rktd").read_text().startswith("#!/usr/bin/python3")
    # The kernel passes everything after the interpreter on a #! line as ONE argument ("-I -S" would
    # reach python3 as a single, unknown option): run the launcher's line that way.
    for launcher in (destdir / "usr/bin/rktd", destdir / gendir.lstrip("/") / "rktd-generator"):
        interpreter, _, flags = launcher.read_text().splitlines()[0][2:].partition(" ")
        probe = "import sys; print(sys.flags.isolated, sys.flags.no_site)"
        flags_run = sh([interpreter, flags, "-c", probe])
        assert flags_run.stdout.split() == ["1", "1"], launcher
    # The installed generator is the source's, below the launcher's lines.
    installed_generator = (destdir / gendir.lstrip("/") / "rktd-generator").read_text()
    assert installed_generator.endswith((ROOT / "generators/rktd-generator").read_text().partition("\n")[2])
    check_init(destdir / INIT, hardened=False)
    assert (destdir / unitdir.lstrip("/") / "pod@.service").read_text() == (
        ROOT / "templates/pod@.service"
    ).read_text()
    # The whole package, every module of the source tree.
    site = next(destdir.glob("usr/lib/python3*/*-packages"))
    source = {p.relative_to(ROOT) for p in (ROOT / "rktd_units").rglob("*.py")}
    installed = {p.relative_to(site) for p in (site / "rktd_units").rglob("*.py")}
    assert source == installed
    # The installed command runs from the installed package (not from the source tree).
    run_installed = (
        "import sys, runpy; site, script = sys.argv[1:3]; sys.path.insert(0, site); "
        "sys.argv = [script, '--version']; runpy.run_path(script, run_name='__main__')"
    )
    proc = sh(["/usr/bin/python3", "-I", "-c", run_installed, str(site), str(destdir / "usr/bin/rktd")])
    assert "0.1.0" in proc.stdout
    completion = (destdir / "usr/share/bash-completion/completions/rktd").read_text()
    assert "_RKTD_COMPLETE=bash_complete" in completion


def render(page: Path) -> tuple[str, str]:
    data = page.read_bytes()
    if page.suffix == ".gz":
        data = gzip.decompress(data)
    proc = subprocess.run(
        ["man", "--warnings", "-E", "UTF-8", "-l", "-"],
        input=data,
        capture_output=True,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "MANWIDTH": "100"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode(), proc.stderr.decode()


def test_man_pages(destdir: Path) -> None:
    need("man")
    man = destdir / "usr/share/man"
    pod, warnings = render(man / "man5/rktd.pod.5")
    assert warnings == ""
    for a in ANNOTATIONS:
        assert re.search(rf"^ +{re.escape(a.name)}$", pod, re.M), a.name
        assert a.default_text.split(":")[0] in pod
    assert "appc PodManifest" in pod and "Kubernetes v1 Pod" in pod
    rktd, warnings = render(man / "man1/rktd.1")
    assert warnings == ""
    for name in COMMANDS:
        assert re.search(rf"^ +rktd {re.escape(name)}$", rktd, re.M), name
    assert "--insecure-options" in rktd
    gen, warnings = render(man / "man8/rktd-generator.8")
    assert warnings == "" and "--dry-run" in gen and "systemd.generator(7)" in gen


def test_deb_builds_lintian_clean(tmp_path: Path) -> None:
    need("dpkg-buildpackage", "lintian", "dh", "meson")
    arch = sh(["dpkg", "--print-architecture"]).stdout.strip()
    deb = Path(sh([str(ROOT / "packaging/build-deb"), str(tmp_path)]).stdout.strip().splitlines()[-1])
    assert deb.name == f"rktd-units_0.1.0_{arch}.deb"
    fields = sh(["dpkg-deb", "-f", str(deb), "Architecture", "Depends"]).stdout
    assert f"Architecture: {arch}\n" in fields
    depends = {d.strip().split()[0]: d.strip() for d in fields.split("Depends:", 1)[1].split(",")}
    assert set(RUNTIME_DEPENDS) <= set(depends)
    assert {d for d in depends if not d.startswith("python3")} <= {*RUNTIME_DEPENDS, "libc6"}
    # The init's libraries, versioned by dh_shlibdeps (${shlibs:Depends}).
    assert re.fullmatch(r"libc6 \(>= [\d.]+\)", depends.get("libc6", "")), fields
    assert re.fullmatch(r"libseccomp2 \(>= [\d.]+\)", depends["libseccomp2"]), fields
    control = tmp_path / "control"
    sh(["dpkg-deb", "-e", str(deb), str(control)])
    postinst = (control / "postinst").read_text()
    assert "[ -d /run/systemd/system ]" in postinst and "systemctl daemon-reload" in postinst
    files = sh(["dpkg-deb", "-c", str(deb)]).stdout
    assert re.search(rf"^-rwxr-xr-x root/root .* \./{INIT}$", files, re.M), files
    sh(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")])
    check_init(tmp_path / "root" / INIT, hardened=True)
    for path in (
        "./usr/bin/rktd",
        "./lib/systemd/system-generators/rktd-generator",
        "./lib/systemd/system/pod@.service",
        "./usr/share/man/man5/rktd.pod.5.gz",
        "./usr/lib/python3/dist-packages/rktd_units/cli.py",
    ):
        assert path in files
    changes = next(tmp_path.glob("*.changes"))
    lint = subprocess.run(
        ["lintian", "--fail-on", "none", "--no-tag-display-limit", str(changes)],
        capture_output=True,
        text=True,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8"},
        check=False,
    )
    tags = [line for line in lint.stdout.splitlines() if re.match(r"^[EW]: ", line)]
    assert lint.returncode == 0 and not tags, lint.stdout + lint.stderr


def test_rpm_builds_rpmlint_clean(tmp_path: Path) -> None:
    need("rpmbuild", "rpmlint", "meson", "rpm2cpio", "cpio")
    arch = sh(["rpm", "--eval", "%{_arch}"]).stdout.strip()
    rpm = Path(sh([str(ROOT / "packaging/build-rpm"), str(tmp_path)]).stdout.strip().splitlines()[-1])
    assert rpm.name == f"rktd-units-0.1.0-1.{arch}.rpm"
    assert sh(["rpm", "-qp", "--qf", "%{ARCH}", str(rpm)]).stdout == arch
    scripts = sh(["rpm", "-qp", "--scripts", str(rpm)]).stdout
    assert "[ -d /run/systemd/system ]" in scripts and "systemctl daemon-reload" in scripts
    requires = sh(["rpm", "-qp", "--requires", str(rpm)]).stdout.split()
    for dep in ("python3-click", "python3-jinja2", "python3-systemd", "/usr/bin/sqv", "systemd-container"):
        assert dep in requires
    # The init's libraries, found by rpm's ELF dependency generator.
    assert any(r.startswith("libseccomp.so.2(") for r in requires), requires
    assert any(r.startswith("libc.so.6(") for r in requires), requires
    qf = "[%{FILENAMES} %{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME}\n]"
    modes = sh(["rpm", "-qp", "--qf", qf, str(rpm)]).stdout
    assert f"/{INIT} -rwxr-xr-x root:root" in modes.splitlines(), modes
    root = tmp_path / "root"
    root.mkdir()
    sh(["sh", "-c", 'rpm2cpio "$1" | cpio -idm --quiet', "sh", str(rpm)], cwd=root)
    check_init(root / INIT, hardened=True)
    files = sh(["rpm", "-qlp", str(rpm)]).stdout.splitlines()
    assert "/usr/lib/systemd/system-generators/rktd-generator" in files
    assert "/usr/lib/systemd/system/pod@.service" in files
    assert "/usr/share/man/man5/rktd.pod.5.gz" in files
    lint = subprocess.run(
        ["rpmlint", "-r", str(ROOT / "packaging/rpm/rktd-units.rpmlintrc"), str(rpm)],
        capture_output=True,
        text=True,
        env={"PATH": SYSTEM_PATH, "LANG": "C.UTF-8", "HOME": str(tmp_path)},
        check=False,
    )
    assert lint.returncode == 0 and " 0 errors" in lint.stdout, lint.stdout + lint.stderr
    assert not re.search(r": E: ", lint.stdout), lint.stdout
