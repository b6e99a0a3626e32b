"""Import of generated ACIs into the store vs `tar -x` of the same archive, in the same run.

    .venv/bin/python3 bench/bench_import.py [--sizes 50,500] [--repeat 3] [--compression none,gz]

Each ACI holds incompressible files of 1 MiB plus many 4 KiB files (10% of the bytes). Reported:
median and minimum seconds of `tar -xf` (and `tar -xf` + `sync`, since the store syncs before it commits), of
`Store.import_aci` (hash, checks, blob copy, extraction, syncfs, commit), the ratios, and the bytes
written when a second pod uses the already-imported image (the target is 0).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rktd_units.store import Store
from tests.helpers.aci import Entry, image_manifest, write_aci

MiB = 1 << 20


def make_aci(path: Path, megabytes: int, compression: str) -> Path:
    rng = random.Random(megabytes)
    entries = [
        Entry("manifest", data=image_manifest("example.com/bench")),
        Entry("rootfs", "dir", mode=0o755),
    ]
    big = megabytes * 9 // 10
    for d in range(0, big, 100):
        entries.append(Entry(f"rootfs/big{d // 100}", "dir", mode=0o755))
        for i in range(d, min(d + 100, big)):
            entries.append(Entry(f"rootfs/big{d // 100}/blob{i:04d}", data=rng.randbytes(MiB)))
    small = (megabytes - big) * MiB // 4096
    for d in range(0, small, 500):
        entries.append(Entry(f"rootfs/small{d // 500}", "dir", mode=0o755))
        for i in range(d, min(d + 500, small)):
            entries.append(Entry(f"rootfs/small{d // 500}/f{i:05d}", data=rng.randbytes(2048) + bytes(2048)))
    return write_aci(path, entries, compression)


def timed(fn: Callable[[], object]) -> float:
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, check=True).stdout
    return int(out.split()[0])


def bench_one(work: Path, aci: Path, repeat: int) -> dict[str, float]:
    flags = "-xzf" if aci.suffix == ".gz" else "-xf"
    times: dict[str, list[float]] = {"tar": [], "tar+sync": [], "import": []}
    for n in range(repeat):
        for kind in ("tar", "tar+sync", "import"):
            dest = work / f"{kind}-{n}"
            dest.mkdir()
            if kind == "import":
                t = timed(lambda dest=dest: Store(dest).import_aci(aci))  # type: ignore[misc]
            else:
                sync = ["&&", "sync"] if kind == "tar+sync" else []
                cmd = ["sh", "-c", " ".join(["tar", flags, str(aci), "-C", str(dest), *sync])]
                t = timed(lambda cmd=cmd: subprocess.run(cmd, check=True))  # type: ignore[misc]
            times[kind].append(t)
            shutil.rmtree(dest)
            os.sync()
    out = {k: statistics.median(v) for k, v in times.items()}
    out.update({f"{k}-min": min(v) for k, v in times.items()})
    return out


def second_pod_bytes(work: Path, aci: Path) -> tuple[int, bool]:
    """Bytes the store grows by when the image is used again, and whether both uses see one tree."""
    store = Store(work / "reuse")
    first = store.import_aci(aci)
    before = du(store.root)
    again = store.import_aci(aci)  # a second pod's stage0 resolving the same image
    pod1, pod2 = store.rootfs(first.id), store.rootfs(again.id)
    same = pod1 == pod2 and pod1.stat().st_ino == pod2.stat().st_ino
    grown = du(store.root) - before
    shutil.rmtree(store.root)
    return grown, same


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="50,500", help="MiB, comma-separated")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--compression", default="none,gz")
    ap.add_argument("--workdir", default="/var/tmp", help="on the filesystem to measure")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-import-", dir=args.workdir) as tmp:
        work = Path(tmp)
        head = ("tar -x", 8), ("tar+sync", 9), ("import", 8), ("ratio", 6), ("ratio/sync", 10)
        print(f"{'ACI (median of runs)':<20} " + " ".join(f"{h:>{w}}" for h, w in head))
        for size in (int(s) for s in args.sizes.split(",")):
            for comp in args.compression.split(","):
                aci = make_aci(work / f"bench-{size}.{'gz' if comp == 'gz' else 'tar'}", size, comp)
                r = bench_one(work, aci, args.repeat)
                for stat in ("", "-min"):
                    label = f"{size} MiB {comp}" + (" (min)" if stat else "")
                    tar, tsync, imp = r["tar" + stat], r["tar+sync" + stat], r["import" + stat]
                    ratios = f"{imp / tar:6.2f} {imp / tsync:10.2f}"
                    print(f"{label:<20} {tar:8.2f} {tsync:9.2f} {imp:8.2f} {ratios}", flush=True)
                if comp == args.compression.split(",")[0]:
                    grown, same = second_pod_bytes(work, aci)
                    print(f"  second use of the image: {grown} bytes written, same rootfs tree: {same}")
                aci.unlink()


if __name__ == "__main__":
    main()
