"""Import of generated ACIs into the store vs `tar -x` of the same archive, in the same run.

    .venv/bin/python3 bench/bench_import.py [--sizes 50,500] [--repeat 3] [--compression none,gz]

Each ACI holds incompressible files of 1 MiB plus many 4 KiB files (10% of the bytes). Runs are
paired (tar, then import, the order alternating) so that a noisy machine moves both; reported are the
median seconds of `tar -xf`, of `tar -xf` + `sync` (the store syncs before it commits), of
`Store.import_aci` (decompression, sha512, checks, extraction, skeleton, syncfs, commit), the medians
of the per-pair ratios in wall-clock and in CPU time, and the bytes written when a second pod uses the
already-imported image (the target is 0).
"""

from __future__ import annotations

import argparse
import os
import random
import resource
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


def timed(fn: Callable[[], object]) -> tuple[float, float]:
    """Wall-clock and CPU seconds (this process and its waited-for children) of fn()."""
    r0, c0 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    fn()
    wall = time.monotonic() - t0
    r1, c1 = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = sum(b.ru_utime + b.ru_stime - a.ru_utime - a.ru_stime for a, b in ((r0, r1), (c0, c1)))
    return wall, cpu


def du(path: Path) -> int:
    out = subprocess.run(["du", "-s", "--block-size=1", str(path)], capture_output=True, check=True).stdout
    return int(out.split()[0])


def bench_one(work: Path, aci: Path, repeat: int) -> dict[str, list[float]]:
    """Paired runs (the order alternates): tar -x (then sync, timed apart) and import, same archive."""
    flags = "-xzf" if aci.suffix == ".gz" else "-xf"
    out: dict[str, list[float]] = {k: [] for k in ("tar", "tar+sync", "import", "tar-cpu", "import-cpu")}
    for n in range(repeat):
        for kind in ("tar", "import") if n % 2 == 0 else ("import", "tar"):
            dest = work / f"{kind}-{n}"
            dest.mkdir()
            if kind == "import":
                wall, cpu = timed(lambda dest=dest: Store(dest).import_aci(aci))  # type: ignore[misc]
                out["import"].append(wall)
                out["import-cpu"].append(cpu)
            else:
                argv = ["tar", flags, str(aci), "-C", str(dest)]
                wall, cpu = timed(lambda argv=argv: subprocess.run(argv, check=True))  # type: ignore[misc]
                out["tar"].append(wall)
                out["tar-cpu"].append(cpu)
                out["tar+sync"].append(wall + timed(os.sync)[0])
            shutil.rmtree(dest)
            os.sync()
    return out


def report(label: str, r: dict[str, list[float]]) -> None:
    med = statistics.median
    pairs = list(zip(r["import"], r["tar"], r["tar+sync"], r["import-cpu"], r["tar-cpu"], strict=True))
    print(
        f"{label:<14} {med(r['tar']):7.2f} {med(r['tar+sync']):9.2f} {med(r['import']):7.2f}"
        f" {med([i / t for i, t, _, _, _ in pairs]):7.2f} {med([i / s for i, _, s, _, _ in pairs]):10.2f}"
        f" {med([ic / tc for _, _, _, ic, tc in pairs]):9.2f}",
        flush=True,
    )


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
        print("seconds are medians; ratios are medians of per-pair ratios (import / tar)")
        cols = (
            ("tar -x", 7),
            ("tar+sync", 9),
            ("import", 7),
            ("ratio", 7),
            ("ratio/sync", 10),
            ("cpu-ratio", 9),
        )
        print(f"{'ACI':<14} " + " ".join(f"{c:>{w}}" for c, w in cols))
        for size in (int(s) for s in args.sizes.split(",")):
            for comp in args.compression.split(","):
                aci = make_aci(work / f"bench-{size}.{'gz' if comp == 'gz' else 'tar'}", size, comp)
                report(f"{size} MiB {comp}", bench_one(work, aci, args.repeat))
                if comp == args.compression.split(",")[0]:
                    grown, same = second_pod_bytes(work, aci)
                    print(f"  second use of the image: {grown} bytes written, same rootfs tree: {same}")
                aci.unlink()


if __name__ == "__main__":
    main()
