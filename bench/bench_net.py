"""Pod network setup and teardown times with the real CNI plugins: `none` vs `default` (± a port).

    sudo .venv/bin/python3 -m bench.bench_net [--runs N] [--json PATH]

Each run creates a pod network in a private IPAM dir and tears it down; the medians and 90th
percentiles of setup, teardown and their sum are printed per kind, in milliseconds. Traffic: none
(namespaces, veths and iptables rules only). The comparison with podman's pod start belongs to
the stage0 benchmark, which uses this module's numbers as its network share.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rktd_units import network
from rktd_units.network import PortForward

KINDS: dict[str, tuple[str, bool]] = {
    "none": ("none", False),
    "default": ("default", False),
    "default+port": ("default", True),
}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(nets: str, port: bool, runs: int, root: Path) -> dict[str, list[float]]:
    local_config, data_dir = root / "etc", root / "networks"
    local_config.mkdir(exist_ok=True)
    times: dict[str, list[float]] = {"setup": [], "teardown": [], "total": []}
    for i in range(runs + 1):  # the first run warms caches and creates the nat table: not counted
        pod_uuid = str(uuid.uuid4())
        pod_dir = root / pod_uuid
        pod_dir.mkdir()
        ports = [PortForward(30000 + i % 1000, 80)] if port else []
        t0 = time.perf_counter()
        network.setup(pod_uuid, pod_dir, nets, local_config=local_config, data_dir=data_dir, ports=ports)
        t1 = time.perf_counter()
        network.teardown(pod_uuid, pod_dir, local_config=local_config)
        t2 = time.perf_counter()
        pod_dir.rmdir()
        if i:
            times["setup"].append((t1 - t0) * 1000)
            times["teardown"].append((t2 - t1) * 1000)
            times["total"].append((t2 - t0) * 1000)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--json", type=Path, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="rktd-bench-net-") as tmp:
        for name, (nets, port) in KINDS.items():
            results[name] = measure(nets, port, args.runs, Path(tmp))
    heads = "".join(f"{h:>18}" for h in ("setup ms", "teardown ms", "total ms"))
    print(f"{'network':<14}{heads}   (median / p90, {args.runs} runs)")
    for name, times in results.items():
        cells = "".join(
            f"{statistics.median(times[k]):>10.1f} / {_pct(times[k], 0.9):>5.1f}"
            for k in ("setup", "teardown", "total")
        )
        print(f"{name:<14}{cells}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
