"""Every ADD has its DEL: 100 setup/teardown cycles and 20 crashed setups cleaned up as gc would
leave no veth, network namespace, IPAM lease, iptables rule or mount behind."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rktd_units import network
from rktd_units.network import PortForward
from tests.test_network import ROOT_DIR, HostState, host_state, leases, needs_net

LAN = {
    "cniVersion": "1.0.0",
    "name": "lan",
    "type": "ptp",
    "ipam": {"type": "host-local", "subnet": "172.16.30.0/24"},
}

# What the cycles rotate through: (nets, forward a port?)
KINDS = [("default", True), ("default-restricted", False), ("none", False), ("default,lan", True)]

CHILD = """
import sys
from pathlib import Path
from rktd_units import network
pod_uuid, pod_dir, local_config, data_dir = sys.argv[1:5]
network.setup(pod_uuid, Path(pod_dir), "default", local_config=Path(local_config), data_dir=Path(data_dir),
              ports=[network.PortForward(int(sys.argv[5]), 80)])
print("done", flush=True)
"""


def _diff(before: HostState, after: HostState) -> dict[str, set[str]]:
    names = ("veths", "netns", "mounts", "rules", "leases")
    return {n: d for n in names if (d := set(getattr(after, n)) ^ set(getattr(before, n)))}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path, Path]:
    local_config, data_dir, pods = tmp_path / "etc", tmp_path / "networks", tmp_path / "pods"
    (local_config / "net.d").mkdir(parents=True)
    (local_config / "net.d" / "10-lan.conf").write_text(json.dumps(LAN))
    pods.mkdir()
    return local_config, data_dir, pods


def _cycle(local_config: Path, data_dir: Path, pods: Path, nets: str, port: bool) -> network.NetResult:
    pod_uuid = str(uuid.uuid4())
    pod_dir = pods / pod_uuid
    pod_dir.mkdir()
    forwards = [PortForward(random.randint(20000, 29999), 80)] if port else []
    res = network.setup(
        pod_uuid, pod_dir, nets, local_config=local_config, data_dir=data_dir, ports=forwards
    )
    assert res.netns_path and os.path.exists(res.netns_path)
    assert len(leases(data_dir)) == len(res.interfaces)
    network.teardown(pod_uuid, pod_dir, local_config=local_config)
    assert not os.path.exists(res.netns_path)
    return res


@needs_net
def test_100_cycles_leave_nothing(dirs: tuple[Path, Path, Path]) -> None:
    local_config, data_dir, pods = dirs
    _cycle(local_config, data_dir, pods, "default", True)  # warm-up: ip creates /run/netns's own mount once
    before = host_state(data_dir)
    started = time.monotonic()
    addresses: set[str] = set()
    for i in range(100):
        nets, port = KINDS[i % len(KINDS)]
        addresses.update(_cycle(local_config, data_dir, pods, nets, port).addresses)
    elapsed = time.monotonic() - started
    after = host_state(data_dir)
    assert after == before, f"left behind after 100 cycles: {_diff(before, after)}"
    assert len(addresses) > 3  # host-local moved on through the range: leases really were taken and freed
    print(f"\n100 setup/teardown cycles: {elapsed:.1f}s ({elapsed * 10:.0f} ms/cycle)")


@needs_net
def test_20_crashed_setups_cleaned_from_pod_dir(dirs: tuple[Path, Path, Path]) -> None:
    local_config, data_dir, pods = dirs
    _cycle(local_config, data_dir, pods, "default", True)
    before = host_state(data_dir)
    rng = random.Random(6)
    # Kill points are fractions of how long one whole setup takes on this machine now, so that the
    # mix of crash points does not depend on the machine's speed or load.
    full = _time_one_child(local_config, data_dir, pods, rng)
    outcomes = {"complete": 0, "partial": 0, "nothing": 0}
    cycles = 0
    # At least 20 crashes; more (at most 60) until both kinds of crash were seen often enough.
    while cycles < 20 or (cycles < 60 and (outcomes["complete"] < 5 or outcomes["partial"] < 3)):
        after_done = cycles % 4 == 3
        outcome = _crash_once(local_config, data_dir, pods, rng, full * 1.5 if after_done else None, full)
        outcomes[outcome] += 1
        cycles += 1
    after = host_state(data_dir)
    assert after == before, f"left behind after crashes {outcomes}: {_diff(before, after)}"
    assert outcomes["complete"] >= 5 and outcomes["partial"] >= 3, outcomes
    print(f"\ncrash cycles: {outcomes}")


def _child(pod_uuid: str, pod_dir: Path, local_config: Path, data_dir: Path, rng: random.Random) -> Any:
    argv = [sys.executable, "-c", CHILD, pod_uuid, str(pod_dir), str(local_config), str(data_dir)]
    argv.append(str(rng.randint(20000, 29999)))
    return subprocess.Popen(argv, cwd=ROOT_DIR, stdout=subprocess.PIPE, start_new_session=True)


def _time_one_child(local_config: Path, data_dir: Path, pods: Path, rng: random.Random) -> float:
    pod_uuid = str(uuid.uuid4())
    pod_dir = pods / pod_uuid
    pod_dir.mkdir()
    start = time.monotonic()
    child = _child(pod_uuid, pod_dir, local_config, data_dir, rng)
    assert child.stdout is not None
    line = child.stdout.readline()  # "done" once setup has finished; the child then waits to be killed
    took = time.monotonic() - start
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    child.communicate(timeout=10)
    assert line.strip() == b"done"
    network.teardown(pod_uuid, pod_dir, local_config=local_config)
    return took


def _crash_once(
    local_config: Path, data_dir: Path, pods: Path, rng: random.Random, delay: float | None, full: float
) -> str:
    """Start a setup, SIGKILL it and every plugin it runs, then tear down from the pod dir as gc would."""
    pod_uuid = str(uuid.uuid4())
    pod_dir = pods / pod_uuid
    pod_dir.mkdir()
    child = _child(pod_uuid, pod_dir, local_config, data_dir, rng)
    time.sleep(delay if delay is not None else rng.uniform(0.1, 0.95) * full)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGKILL)
    out, _ = child.communicate(timeout=10)
    state = network._read_state(pod_dir)
    outcome = "complete" if out.strip() == b"done" else "partial" if state else "nothing"
    # gc: a new process knows nothing but the pod dir.
    network.teardown(pod_uuid, pod_dir, local_config=local_config)
    assert network.status(pod_dir) is None
    return outcome
