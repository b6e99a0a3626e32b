"""Pod start with networks: `rktd run --net=default` vs `--net=none` vs `podman run` on podman's own
default network, in one invocation, on the same busybox rootfs as bench_run.py (whose helpers it uses).

    sudo .venv/bin/python3 bench/bench_pod_net.py [--runs N] [--subnet CIDR] [--json]

Latency is from spawning the command to reading the app's first output line (`echo hi`), median and
min over N runs taken round robin. Also measured, for reference: `podman run --network=none` (so that
podman's own network share shows) and bare `systemd-nspawn --private-network`.

Every rktd pod is removed right after it exits (`rktd rm --uuid-file=…`, timed: the network's
teardown is in it) and `rktd gc` runs at the end; podman runs with `--rm`. Network namespaces, veths,
iptables rules (nat and filter), IPAM leases and mounts are listed after a warm-up round (podman makes
its bridge and chains on first use, as rktd its nat chains) and again at the end: anything added is
printed, and a leftover that names one of this run's pods makes the exit status 1.

The rktd pods use the built-in `default` network's configuration with its subnet replaced
(`<local-config>/net.d/default.conf`, `--subnet`, default 10.231.28.0/24): this host's other pods on
the real 172.16.28.0/24 keep their own leases elsewhere and would collide with the bench's addresses.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bench_run import PODMAN_IMAGE, RKTD, Bench, compile_package, first_line_latency
from rktd_units.cni import BUILTIN_NETWORKS

APP = ("/bin/echo", "hi")


# -- what a pod may leave behind --------------------------------------------------------------------


def _lines(argv: list[str]) -> list[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    return proc.stdout.splitlines() if proc.returncode == 0 else []


def snapshot(data: Path, work: Path) -> dict[str, set[str]]:
    """The host's network namespaces, veths, iptables rules and mounts below `work`, and the leases
    of the bench's IPAM directory."""
    rules = set()
    for table in ("nat", "filter"):
        for line in _lines(["iptables-save", "-t", table]):
            if line.startswith(("-A", "-N", ":")):
                rules.add(f"{table} " + re.sub(r" \[\d+:\d+\]$", "", line))
    leases = {
        str(p.relative_to(data))
        for p in (data / "networks").glob("*/*")
        if p.name != "lock" and not p.name.startswith("last_reserved_ip")
    }
    pods = {str(p.relative_to(data)) for p in (data / "pods").glob("*/*")}
    mounts = {line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()}
    veths = _lines(["ip", "-o", "link", "show", "type", "veth"])
    return {
        "netns": {line.split()[0] for line in _lines(["ip", "netns", "list"]) if line.strip()},
        "veth": {line.split(":")[1].strip().split("@")[0] for line in veths},
        "iptables": rules,
        "leases": leases,
        "pods": pods,
        "mounts": {m for m in mounts if m.startswith(str(work))},
    }


def leftovers(
    before: dict[str, set[str]], after: dict[str, set[str]], uuids: set[str]
) -> dict[str, dict[str, list[str]]]:
    """Per kind: what was added since `before`, split into what names one of `uuids` and the rest."""
    out: dict[str, dict[str, list[str]]] = {}
    for kind in before:
        added = sorted(after[kind] - before[kind])
        ours = [a for a in added if any(u in a or u[:8] in a for u in uuids)]
        if kind in ("leases", "pods", "mounts"):  # in the bench's own directories: all ours
            ours = added
        out[kind] = {"ours": ours, "other": [a for a in added if a not in ours]}
    return out


# -- the runs -----------------------------------------------------------------------------------------


class NetBench:
    def __init__(self, bench: Bench, subnet: str) -> None:
        self.bench = bench
        self.config = bench.work / "etc"
        (self.config / "net.d").mkdir(parents=True)
        conf = copy.deepcopy(BUILTIN_NETWORKS["default"])
        conf["ipam"]["subnet"] = subnet
        (self.config / "net.d" / "default.conf").write_text(json.dumps(conf, indent=1))
        self.uuids: set[str] = set()
        self.teardown_ms: dict[str, list[float]] = {}
        self.errors: list[str] = []
        self.count = 0

    def rktd(self, net: str) -> list[str]:
        self.count += 1
        uuid_file = self.bench.work / f"uuid-{self.count}"
        flags = (f"--uuid-file-save={uuid_file}",)
        return self.bench.rktd("nspawn", *APP, net=net, local_config=self.config, run_flags=flags)

    def rktd_cli(self) -> list[str]:
        return [*RKTD, f"--dir={self.bench.data}", f"--local-config={self.config}"]

    def remove(self, name: str, argv: list[str]) -> None:
        """`rktd rm` the pod that `argv` ran (its UUID file is in its flags), timed."""
        uuid_file = next(a.split("=", 1)[1] for a in argv if a.startswith("--uuid-file-save="))
        try:
            self.uuids.add(Path(uuid_file).read_text().strip())
        except OSError:
            self.errors.append(f"{name}: no UUID file (the pod was not made)")
            return
        t0 = time.perf_counter()
        rm = [*self.rktd_cli(), "rm", f"--uuid-file={uuid_file}"]
        proc = subprocess.run(rm, capture_output=True, text=True)
        self.teardown_ms.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        if proc.returncode != 0:
            self.errors.append(f"{name}: rktd rm: {proc.stderr.strip()}")

    def variants(self) -> dict[str, Any]:
        """name -> a function making a fresh argv (rktd's carry a new UUID file each run)."""
        out: dict[str, Any] = {
            "rktd run --net=default": lambda: self.rktd("default"),
            "rktd run --net=none": lambda: self.rktd("none"),
            "bare nspawn --private-network": lambda: self.bench.nspawn("--private-network", *APP),
        }
        if not self.bench.podman_error:
            image = (PODMAN_IMAGE, *APP)
            out["podman run (default network)"] = lambda: self.bench.podman_run("--rm", *image, network=None)
            out["podman run --network=none"] = lambda: self.bench.podman_run("--rm", *image, network="none")
        return out

    def one(self, name: str, make: Any) -> float:
        argv = make()
        try:
            return first_line_latency(argv)
        finally:
            if name.startswith("rktd"):
                self.remove(name, argv)

    def latency(self, runs: int) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
        variants = self.variants()
        for name, make in variants.items():  # warm caches; podman makes its bridge and chains
            self.one(name, make)
        self.teardown_ms.clear()
        before = snapshot(self.bench.data, self.bench.work)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(runs):  # round robin, so that load from elsewhere hits every variant alike
            for name, make in variants.items():
                samples[name].append(self.one(name, make))
        gc = subprocess.run([*self.rktd_cli(), "gc", "--grace-period=0s"], capture_output=True, text=True)
        if gc.stdout.strip():
            self.errors.append(f"rktd gc still found pods: {gc.stdout.strip()}")
        after = snapshot(self.bench.data, self.bench.work)
        stats = {
            name: {"median_ms": statistics.median(s) * 1000, "min_ms": min(s) * 1000}
            for name, s in samples.items()
        }
        for name, ms in self.teardown_ms.items():
            stats[name]["rm_median_ms"] = statistics.median(ms)
        check = {
            "before": {k: len(v) for k, v in before.items()},
            "after": {k: len(v) for k, v in after.items()},
            "added": leftovers(before, after, self.uuids),
            "pods_run": len(self.uuids),
        }
        return stats, check


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--subnet", default="10.231.28.0/24", help="the bench's `default` network")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench_pod_net: needs root")
    load = os.getloadavg()[0]
    compile_package()
    with tempfile.TemporaryDirectory(prefix="rktd-bench-net-") as d:
        bench = Bench(Path(d))
        bench.setup_podman()
        try:
            net = NetBench(bench, args.subnet)
            stats, check = net.latency(args.runs)
        finally:
            bench.cleanup_podman()
    result = {
        "latency": stats,
        "leaks": check,
        "errors": net.errors,
        "podman_error": bench.podman_error,
        "podman_network_backend": _podman_backend(),
        "loadavg_before": load,
    }
    leaked = any(v["ours"] for v in check["added"].values()) or net.errors
    if args.json:
        print(json.dumps(result, indent=2))
        sys.exit(1 if leaked else 0)
    print(f"time to first output line ({args.runs} runs, load average before: {load:.2f}):")
    for name, v in stats.items():
        rm = f"   rktd rm {v['rm_median_ms']:6.1f} ms" if "rm_median_ms" in v else ""
        print(f"  {name:30} median {v['median_ms']:7.1f} ms   min {v['min_ms']:7.1f} ms{rm}")
    none_ms = stats["rktd run --net=none"]["median_ms"]
    default_ms = stats["rktd run --net=default"]["median_ms"]
    print(f"  rktd default / rktd none       = {default_ms / none_ms:.2f}x (+{default_ms - none_ms:.1f} ms)")
    podman = stats.get("podman run (default network)")
    if podman:
        print(f"  rktd default / podman default  = {default_ms / podman['median_ms']:.2f}x")
        podman_none = stats["podman run --network=none"]["median_ms"]
        print(f"  podman default / podman none   = {podman['median_ms'] / podman_none:.2f}x")
    bare = stats["bare nspawn --private-network"]["median_ms"]
    print(f"  rktd none / bare nspawn        = {none_ms / bare:.2f}x")
    print(f"podman's network backend: {result['podman_network_backend']}")
    print(f"leak check ({check['pods_run']} rktd pods run and removed; counts before -> after):")
    for kind, added in check["added"].items():
        print(f"  {kind:9} {check['before'][kind]:4} -> {check['after'][kind]:4}", end="")
        print(f"   ours left: {len(added['ours'])}   others' (not this bench's): {len(added['other'])}")
        for item in added["ours"]:
            print(f"    LEFT: {item}")
    for err in net.errors:
        print(f"error: {err}")
    if bench.podman_error:
        print(f"podman not measured: {bench.podman_error}")
    sys.exit(1 if leaked else 0)


def _podman_backend() -> str:
    proc = subprocess.run(["podman", "info", "--format", "{{.Host.NetworkBackend}}"], capture_output=True)
    return proc.stdout.decode().strip() or "unknown"


if __name__ == "__main__":
    main()
