"""Pod start latency and memory: `rktd run` (nspawn, fly) vs bare systemd-nspawn vs `podman run`.

    sudo .venv/bin/python3 bench/bench_run.py [--runs N] [--idle K] [--json]

One invocation, one busybox-static rootfs (built here as an ACI and imported into a temporary store;
bare nspawn gets a copy of that tree plus an empty /usr, which nspawn insists on; podman gets the
same tree through `podman import`). Latency is from spawning the command to reading the app's first
output line (`echo hi`), median and min over N runs. Memory is the PSS (proportional set size, so
shared libraries count once across pods) of every host process of an idle pod (`sleep`): stage1
and its descendants for rktd, conmon and its descendants for podman (podman itself exits).

Podman on a host without CAP_SYS_RESOURCE cannot raise RLIMIT_NOFILE/NPROC to its defaults, so it
runs with `--ulimit` values at or below the current hard limits; on a cgroup v1/v2 hybrid host crun
refuses to run, so podman runs in a private mount namespace with the v2 hierarchy unmounted.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# As installed: Debian's python3 with python3-click, started the way /usr/bin/rktd starts it
# (scripts/rktd-launcher: -IS, with the directories `site` would add listed), the package taken from
# this source tree rather than through the development virtualenv, whose editable-install finder alone
# adds ~15 ms to every start.
HOST_PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
_SITE_DIRS = subprocess.run(
    [HOST_PYTHON, "-I", "-c", "import site; print(repr(site.getsitepackages()))"],
    capture_output=True, text=True, check=True,
).stdout.strip()  # fmt: skip
RKTD = [
    HOST_PYTHON, "-I", "-S", "-c",
    f"import sys; sys.path[:0] = [{str(ROOT)!r}]; sys.path += {_SITE_DIRS}; "
    "from rktd_units.cli import main; main()",
]  # fmt: skip
os.environ["PYTHONPATH"] = str(ROOT)
# An installed package is byte-compiled (dh_python3, meson's python.install_sources): so are the
# sources here (compile_package()), and a module edited meanwhile gets its .pyc rewritten on first
# use rather than being compiled again on every start (~10 ms a module, were it inherited).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
PODMAN_IMAGE = "localhost/rktd-bench-busybox"


def compile_package() -> None:
    import compileall

    compileall.compile_dir(str(ROOT / "rktd_units"), quiet=1)


def first_line_latency(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    elapsed = time.perf_counter() - start
    _, err = proc.communicate(timeout=60)
    if b"hi" not in line:
        raise RuntimeError(f"{' '.join(argv[3:6])}…: unexpected first line {line!r}: {err[-500:]!r}")
    return elapsed


def _podman_prefix() -> list[str]:
    hybrid = os.path.isdir("/sys/fs/cgroup/unified") and os.path.ismount("/sys/fs/cgroup/unified")
    if not hybrid:
        return []
    return [
        "unshare",
        "--mount",
        "--propagation=private",
        "sh",
        "-c",
        'umount /sys/fs/cgroup/unified && exec "$@"',
        "-",
    ]


def _podman_run_flags(network: str | None = "host") -> list[str]:
    """`--ulimit`s within the hard limits, and `--network` (None: podman's default network)."""
    nofile = min(1024, int(subprocess.check_output(["sh", "-c", "ulimit -Hn"]).strip() or 1024))
    net = [f"--network={network}"] if network else []
    return ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", "nproc=1000:1000", *net]


class Bench:
    def __init__(self, work: Path) -> None:
        from rktd_units.store import Store
        from tests.helpers.aci import make_busybox_aci

        self.work = work
        self.data = work / "data"
        aci = make_busybox_aci(work / "busybox.aci")
        info = Store(self.data).import_aci(aci)
        self.rootfs = Store(self.data).rootfs(info.id)
        self.bare = work / "bare"
        shutil.copytree(self.rootfs, self.bare, symlinks=True)
        (self.bare / "usr").mkdir(exist_ok=True)
        self.podman = shutil.which("podman") is not None
        self.podman_error: str | None = None

    # -- commands ------------------------------------------------------------------------------------
    def rktd(
        self, flavour: str, *cmd: str, net: str = "host", local_config: Path | None = None,
        run_flags: tuple[str, ...] = (),
    ) -> list[str]:  # fmt: skip
        nets = [f"--net={net}"] if flavour == "nspawn" else []
        config = [f"--local-config={local_config}"] if local_config else []
        return [*RKTD, f"--dir={self.data}", *config, "run", f"--stage1={flavour}", *nets, *run_flags,
                "example.com/busybox", f"--exec={cmd[0]}", "--", *cmd[1:]]  # fmt: skip

    def nspawn(self, *cmd: str) -> list[str]:
        return ["systemd-nspawn", "--quiet", "--register=no", "--keep-unit", "--console=pipe",
                "--resolv-conf=off", "--timezone=off", "--link-journal=no", f"--directory={self.bare}",
                *cmd]  # fmt: skip

    def podman_run(self, *args: str, network: str | None = "host") -> list[str]:
        return [*_podman_prefix(), "podman", "run", *_podman_run_flags(network), *args]

    def setup_podman(self) -> None:
        if not self.podman:
            self.podman_error = "podman is not installed"
            return
        tar = subprocess.Popen(["tar", "-C", str(self.rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "-", PODMAN_IMAGE], stdin=tar.stdout, capture_output=True)
        tar.wait()
        if imp.returncode != 0:
            self.podman_error = imp.stderr.decode(errors="replace").strip()
            return
        probe = subprocess.run(self.podman_run("--rm", PODMAN_IMAGE, "/bin/echo", "hi"), capture_output=True)
        if probe.returncode != 0:
            self.podman_error = probe.stderr.decode(errors="replace").strip().splitlines()[-1]

    def cleanup_podman(self) -> None:
        if self.podman and not self.podman_error:
            subprocess.run(["podman", "rmi", "-f", PODMAN_IMAGE], capture_output=True)

    # -- latency -------------------------------------------------------------------------------------
    def latency(self, runs: int) -> dict[str, dict[str, float]]:
        variants: dict[str, list[str]] = {
            "rktd run (nspawn)": self.rktd("nspawn", "/bin/echo", "hi"),
            "rktd run (fly)": self.rktd("fly", "/bin/echo", "hi"),
            "bare systemd-nspawn": self.nspawn("/bin/echo", "hi"),
        }
        if not self.podman_error:
            variants["podman run"] = self.podman_run("--rm", PODMAN_IMAGE, "/bin/echo", "hi")
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for argv in variants.values():
            first_line_latency(argv)  # warm caches
        for _ in range(runs):  # round robin, so that load from elsewhere hits every variant alike
            for name, argv in variants.items():
                samples[name].append(first_line_latency(argv))
        out = {
            name: {"median_ms": statistics.median(s) * 1000, "min_ms": min(s) * 1000}
            for name, s in samples.items()
        }
        subprocess.run([*RKTD, f"--dir={self.data}", "gc", "--grace-period=0s"], capture_output=True)
        return out

    # -- memory --------------------------------------------------------------------------------------
    def memory(self, idle: int) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Mean PSS per idle pod, and its split by process name (`comm`)."""
        out: dict[str, float] = {}
        split: dict[str, dict[str, float]] = {}
        for flavour in ("nspawn", "fly"):
            procs = [
                subprocess.Popen(
                    self.rktd(flavour, "/bin/sh", "-c", "echo hi; exec sleep 600"),
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                )
                for _ in range(idle)
            ]
            for p in procs:
                assert p.stdout is not None
                p.stdout.readline()
            out[f"rktd {flavour}"] = statistics.mean(tree_pss(p.pid) for p in procs)
            split[f"rktd {flavour}"] = mean_split([pss_by_comm(p.pid) for p in procs])
            for p in procs:
                p.terminate()
                p.communicate(timeout=60)
        if not self.podman_error:
            ids = []
            for _ in range(idle):
                cid = subprocess.run(self.podman_run("-d", PODMAN_IMAGE, "/bin/sleep", "600"),
                                     capture_output=True, text=True).stdout.strip()  # fmt: skip
                ids.append(cid)
            time.sleep(0.5)
            pids = [
                int(subprocess.check_output(["podman", "inspect", "--format", "{{.State.ConmonPid}}", c]))
                for c in ids
            ]
            out["podman (conmon + app)"] = statistics.mean(tree_pss(pid) for pid in pids)
            split["podman (conmon + app)"] = mean_split([pss_by_comm(pid) for pid in pids])
            subprocess.run(["podman", "rm", "-f", "-t", "0", *ids], capture_output=True)
        subprocess.run([*RKTD, f"--dir={self.data}", "gc", "--grace-period=0s"], capture_output=True)
        return out, split


def descendants(pid: int) -> list[int]:
    out = [pid]
    for p in list(out):
        try:
            for tid in os.listdir(f"/proc/{p}/task"):
                out += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def tree_pss(pid: int) -> float:
    """PSS in MiB of a process and all its descendants."""
    return sum(pss_by_comm(pid).values())


def mean_split(splits: list[dict[str, float]]) -> dict[str, float]:
    names = sorted({n for s in splits for n in s})
    return {n: statistics.mean(s.get(n, 0.0) for s in splits) for n in names}


def pss_by_comm(pid: int) -> dict[str, float]:
    """PSS in MiB of a process and all its descendants, summed by process name."""
    out: dict[str, float] = {}
    todo = [pid]
    seen: set[int] = set()
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            comm = Path(f"/proc/{p}/comm").read_text().strip()
            for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    out[comm] = out.get(comm, 0.0) + int(line.split()[1]) / 1024
            for tid in os.listdir(f"/proc/{p}/task"):
                todo += [int(c) for c in Path(f"/proc/{p}/task/{tid}/children").read_text().split()]
        except OSError:
            continue
    return out


def import_time() -> dict[str, float]:
    """Cumulative import time (ms) of the top-level modules `rktd run` loads, from -X importtime."""
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for label, args in (
            ("run --help", ["run", "--help"]),
            (
                "run (to stage0's resolve)",
                ["--dir", d, "run", "--net=host", "--pull-policy=never", "x.org/y"],
            ),
        ):
            proc = subprocess.run(
                [HOST_PYTHON, "-X", "importtime", *RKTD[1:], *args], capture_output=True, text=True
            )
            total = 0
            for line in proc.stderr.splitlines():
                if line.startswith("import time:") and "|" in line:
                    _, cumulative, name = line.split("|")
                    if not name[1:].startswith(" ") and cumulative.strip().isdigit():
                        total += int(cumulative)
            out[label] = total / 1000
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--idle", type=int, default=3, help="idle pods for the memory measurement")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_run: needs root")
    load = os.getloadavg()[0]
    compile_package()
    with tempfile.TemporaryDirectory(prefix="rktd-bench-") as d:
        bench = Bench(Path(d))
        bench.setup_podman()
        try:
            result: dict[str, Any] = {
                "latency": bench.latency(args.runs),
                "import_ms": import_time(),
                **dict(zip(("idle_pss_mib", "idle_pss_split_mib"), bench.memory(args.idle), strict=True)),
                "podman_error": bench.podman_error,
                "loadavg_before": load,
            }
        finally:
            bench.cleanup_podman()
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"time to first output line ({args.runs} runs, load average before: {load:.2f}):")
    for name, v in result["latency"].items():
        print(f"  {name:24} median {v['median_ms']:7.1f} ms   min {v['min_ms']:7.1f} ms")
    bare = result["latency"]["bare systemd-nspawn"]["median_ms"]
    ours = result["latency"]["rktd run (nspawn)"]["median_ms"]
    print(f"  rktd nspawn / bare nspawn = {ours / bare:.2f}x")
    if "podman run" in result["latency"]:
        print(f"  rktd nspawn / podman      = {ours / result['latency']['podman run']['median_ms']:.2f}x")
    print("python -X importtime, sum of top-level cumulative:")
    for name, ms in result["import_ms"].items():
        print(f"  {name:28} {ms:7.1f} ms")
    print(f"host memory per idle pod (PSS, mean of {args.idle}):")
    for name, mib in result["idle_pss_mib"].items():
        parts = ", ".join(f"{c} {m:.2f}" for c, m in result["idle_pss_split_mib"][name].items())
        print(f"  {name:24} {mib:7.2f} MiB  ({parts})")
    if result["podman_error"]:
        print(f"podman not measured: {result['podman_error']}")


if __name__ == "__main__":
    main()
