"""Benchmark rktd-generator: wall time for 1, 100 and 1000 manifests as ratios to a bare interpreter
start (`python3 -I -c pass`, measured in the same run), the marginal cost per manifest, and the
import profile (`-X importtime`) of the generator.

    .venv/bin/python3 bench/bench_generator.py [--python /usr/bin/python3] [--repeat 15]

The generator starts as the installed generator does (`python3 -IS`: scripts/rktd-launcher writes
site's directories into it; cyclic GC off, os._exit after main), the package importable by a
sys.path entry for the source tree (as dist-packages would be), manifests on disk, output into a
tmpfs directory (/dev/shm; systemd's generator directories are under /run). Wall and CPU
(user+system from wait4) times are medians; CPU time is the steadier one when other jobs share the
machine. Targets (issue #3): 100 manifests within 3x the bare start; at most 1 ms per manifest at
1000.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAUNCH = (
    "import sys; sys.path.insert(0, {root!r}); "
    "import gc, os; gc.disable(); from rktd_units.generator import main; "
    "rc = main(sys.argv[1:]); sys.stdout.flush(); os._exit(rc)"
)


def manifest(i: int) -> str:
    """A realistic pod: two apps, environment, a socket-activated port, a few annotations."""
    apps = [
        {
            "name": "web",
            "image": {"name": "example.com/web", "labels": [{"name": "version", "value": "1.2.3"}]},
            "app": {
                "exec": ["/usr/bin/web", "--port=8080"],
                "user": "0",
                "group": "0",
                "environment": [{"name": "MODE", "value": "production"}],
                "ports": [{"name": "http", "protocol": "tcp", "port": 8080, "socketActivated": True}],
            },
        },
        {"name": "sidecar", "image": {"name": "example.com/sidecar"}},
    ]
    annotations = [
        {"name": "rktd/wanted-by", "value": "multi-user.target"},
        {"name": "rktd/restart", "value": "always"},
        {"name": "rktd/dns", "value": "10.0.0.1 10.0.0.2"},
    ]
    doc = {
        "acKind": "PodManifest",
        "acVersion": "0.8.11",
        "apps": apps,
        "annotations": annotations,
        "ports": [{"name": "http", "hostPort": 10000 + i}],
    }
    return json.dumps(doc, indent=4) + "\n"


def timed(argv: list[str], env: dict[str, str], repeat: int, before: object = None) -> tuple[float, float]:
    """Median wall time and median CPU time (user + system, from wait4) of `repeat` runs, in
    seconds, after one warm-up run. CPU time is robust when other jobs share the machine."""
    walls, cpus = [], []
    for i in range(repeat + 1):
        if callable(before):
            before()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"{argv}: exit {proc.returncode}: {err.decode()[-500:]}")
        if i:
            walls.append(elapsed)
            cpus.append(usage.ru_utime + usage.ru_stime)
    return statistics.median(walls), statistics.median(cpus)


def import_profile(python: str, env: dict[str, str], out: Path, runs: int = 7) -> list[tuple[int, int, str]]:
    """`-X importtime` of the generator with one manifest: per module, the minimum over `runs`."""
    argv = [python, "-IS", "-X", "importtime", "-c", LAUNCH.format(root=str(ROOT)), str(out)]
    best: dict[str, tuple[int, int]] = {}
    for _ in range(runs):
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True)
        for line in proc.stderr.splitlines():
            if line.startswith("import time:") and "|" in line and "self" not in line:
                self_us, cumulative, name = (p.strip() for p in line[len("import time:") :].split("|"))
                old = best.get(name, (1 << 60, 1 << 60))
                best[name] = (min(old[0], int(self_us)), min(old[1], int(cumulative)))
    return [(s, c, name) for name, (s, c) in best.items()]


BREAKDOWN = """
import gc, os, sys, time
sys.path.insert(0, {root!r})
gc.disable()  # as generators/rktd-generator
t0 = time.process_time()
from rktd_units import formats, generator, podpath, units
t1 = time.process_time()
found, _ = podpath.scan_files()
names = frozenset(name for name, _, _ in found)
t2 = time.process_time()
pods = [formats.load(path, name) for name, path, _ in found]
t3 = time.process_time()
outputs = [units.convert(p, names) for p in pods]
t4 = time.process_time()
sink = generator.DirSink(sys.argv[1])
for outs in outputs:
    for o in outs:
        sink(o.path, str(o.unit) if o.unit is not None else None, o.link)
t5 = time.process_time()
n = len(pods)
print(f"  imports {{(t1 - t0) * 1000:.1f}} ms; per manifest: scan {{(t2 - t1) * 1e6 / n:.0f}} us, "
      f"load+parse (formats) {{(t3 - t2) * 1e6 / n:.0f}} us, convert+render+check (units) "
      f"{{(t4 - t3) * 1e6 / n:.0f}} us, write (4 files, fsync) {{(t5 - t4) * 1e6 / n:.0f}} us")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default="/usr/bin/python3", help="interpreter (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sizes", default="1,100,1000")
    args = parser.parse_args()
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else None
    work = Path(tempfile.mkdtemp(prefix="bench-generator-"))
    outdir = Path(tempfile.mkdtemp(prefix="bench-generator-out-", dir=shm))
    try:
        base_env = {"PATH": "/usr/bin:/bin", "SYSTEMD_LOG_TARGET": "console"}
        bare, bare_cpu = timed([args.python, "-I", "-c", "pass"], base_env, args.repeat)
        print(f"interpreter: {args.python}; load average {os.getloadavg()[0]:.1f}")
        print(f"bare start (python3 -I -c pass): wall {bare * 1000:.1f} ms, cpu {bare_cpu * 1000:.1f} ms")
        columns = (
            ("manifests", 9),
            ("wall ms", 8),
            ("x bare", 7),
            ("cpu ms", 8),
            ("x bare", 7),
            ("cpu ms/pod", 11),
        )
        print(" ".join(f"{name:>{width}}" for name, width in columns))
        results = {}
        for n in (int(s) for s in args.sizes.split(",")):
            pods = work / f"pods{n}"
            pods.mkdir(mode=0o755)
            for i in range(n):
                (pods / f"pod{i}.json").write_text(manifest(i))
                (pods / f"pod{i}.json").chmod(0o644)
            env = {**base_env, "RKTD_PODS_PATH": str(pods)}
            out = outdir / f"out{n}"

            def clean(out: Path = out) -> None:
                shutil.rmtree(out, ignore_errors=True)  # systemd hands generators empty directories
                out.mkdir()

            argv = [args.python, "-IS", "-c", LAUNCH.format(root=str(ROOT)), str(out)]
            wall, cpu = timed(argv, env, args.repeat, clean)
            results[n] = (wall, cpu)
            print(
                f"{n:>9} {wall * 1000:>8.1f} {wall / bare:>7.2f} {cpu * 1000:>8.1f} {cpu / bare_cpu:>7.2f}"
                f" {(cpu - bare_cpu) * 1000 / n:>11.3f}"
            )
        if 100 in results and 1000 in results:
            wall_m = (results[1000][0] - results[100][0]) / 900 * 1000
            cpu_m = (results[1000][1] - results[100][1]) / 900 * 1000
            print(f"marginal cost per manifest (100 -> 1000): wall {wall_m:.3f} ms, cpu {cpu_m:.3f} ms")
        if (work / "pods1000").is_dir():
            print("\nin-process CPU breakdown, 1000 manifests:")
            env = {**base_env, "RKTD_PODS_PATH": str(work / "pods1000")}
            shutil.rmtree(outdir / "out1000", ignore_errors=True)
            code = BREAKDOWN.format(root=str(ROOT))
            subprocess.run([args.python, "-IS", "-c", code, str(outdir / "out1000")], env=env, check=True)
        env = {**base_env, "RKTD_PODS_PATH": str(work / "pods1")}
        rows = import_profile(args.python, env, outdir / "imports")
        bare_run = subprocess.run(
            [args.python, "-I", "-X", "importtime", "-c", "pass"], capture_output=True, text=True
        )
        bare = {line.rsplit("|", 1)[1].strip() for line in bare_run.stderr.splitlines() if "|" in line}
        total = sum(r[0] for r in rows)
        print(
            f"\nimports (-X importtime, 1 manifest, per-module min of 7 runs): {total / 1000:.1f} ms"
            f" in {len(rows)} modules; largest:"
        )
        for self_us, cumulative, name in sorted(rows, key=lambda r: -r[1])[:18]:
            print(f"  {cumulative / 1000:7.2f} ms cumulative {self_us / 1000:6.2f} ms self  {name}")
        own = sorted((-self_us, name) for self_us, _, name in rows if name.startswith("rktd_units"))
        print(
            f"  rktd_units modules (self): {-sum(v for v, _ in own) / 1000:.2f} ms: "
            + ", ".join(f"{n.removeprefix('rktd_units.')} {-v / 1000:.2f}" for v, n in own)
        )
        print(f"  modules beyond a bare start: {', '.join(sorted(n for _, _, n in rows if n not in bare))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(outdir, ignore_errors=True)


if __name__ == "__main__":
    main()
