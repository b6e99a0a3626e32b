"""Register an nspawn pod with systemd-machined together with its network interfaces.

systemd-nspawn registers a container that joins an existing network namespace
(`--network-namespace-path=`) without any interface, so `machinectl status` shows no `Iface:`. When
the pod has a CNI network, stage1 runs nspawn with `--register=no` and, just before it execs nspawn,
`spawn()`s a short-lived registrar: a double-forked process (reparented to the service manager, which
reaps it; it stays in the unit's cgroup) that waits for the container's PID 1 to appear under nspawn
and calls `RegisterMachineWithNetwork` with the host-side ends of the pod's interfaces. machined takes
the machine's unit from the leader's cgroup, as it does for nspawn's own `--keep-unit` registration,
and drops the machine when that unit stops.

The registrar runs in parallel with the pod and never harms it: any failure is one line on stderr.
Nothing of it stays resident: it exits as soon as the machine is registered (or after `TIMEOUT`).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from rktd_units.pods import children

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence
    from typing import Any

TIMEOUT = 5.0  # seconds to wait for the container's PID 1
MACHINED = "org.freedesktop.machine1"
MANAGER_PATH = "/org/freedesktop/machine1"
MANAGER = "org.freedesktop.machine1.Manager"
SERVICE = "rktd"


def spawn(nspawn_pid: int, name: str, pod_uuid: str, root: Path, pod_path: Path) -> None:
    """Start the registrar for the nspawn process `nspawn_pid` (this process, about to exec nspawn).

    Returns at once in the caller, once the intermediate child has exited (so nothing is left for
    nspawn, which reaps only its own container, to reap)."""
    try:
        pid = os.fork()
    except OSError as e:  # e.g. the unit's TasksMax: the pod runs, unregistered
        _say(f"not registered with systemd-machined: {e}")
        return
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        _leave_unit_cgroup()
        if os.fork() == 0:
            _detach()
            register(nspawn_pid, name, pod_uuid, root, pod_path)
    except BaseException as e:  # never unwind into the caller's stack in a forked child
        _say(f"not registered with systemd-machined: {e}")
    finally:
        os._exit(0)


def _leave_unit_cgroup() -> None:
    """On a cgroup v2 host, move into the `supervisor` cgroup below our own (the unit's), where
    nspawn --keep-unit puts itself. cgroup v2 gives controllers to the children of a cgroup only
    while it holds no process: left in the unit's cgroup, the registrar would keep nspawn from
    enabling memory and cpu for the pod's `payload`, and the apps' limits would go unenforced."""
    if not os.path.exists("/sys/fs/cgroup/cgroup.controllers"):
        return  # cgroup v1 or hybrid: nothing to give
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            own = next((line[3:].rstrip("\n") for line in f if line.startswith("0::")), None)
        if own is None:
            return
        target = f"/sys/fs/cgroup{own.rstrip('/')}/supervisor"
        os.makedirs(target, exist_ok=True)
        with open(f"{target}/cgroup.procs", "w", encoding="ascii") as f:
            f.write("0")
    except OSError as e:
        _say(f"cgroup v2: cannot leave the unit's cgroup ({e}): the apps' limits may not apply")


def _detach() -> None:
    """Hold nothing of the pod's: no pod lock, no listening socket, no terminal on stdin/stdout."""
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)


def _say(message: str) -> None:
    try:
        os.write(2, f"rktd: {message}\n".encode())
    except OSError:
        pass


def register(nspawn_pid: int, name: str, pod_uuid: str, root: Path, pod_path: Path) -> None:
    leader = wait_leader(nspawn_pid, TIMEOUT)
    if leader is None:
        if os.path.exists(f"/proc/{nspawn_pid}"):  # else nspawn failed, and says why itself
            _say(f"not registered with systemd-machined: no container under pid {nspawn_pid} in {TIMEOUT}s")
        return
    try:
        indices = ifindices(host_ifnames(pod_path))
        call_register(name, bytes.fromhex(pod_uuid.replace("-", "")), leader, str(root), indices)
    except Exception as e:
        _say(f"not registered with systemd-machined: {e}")


def container_leader(nspawn_pid: int) -> int | None:
    """The container's PID 1: a descendant of nspawn that is PID 1 in a PID namespace of its own."""
    todo, seen = [nspawn_pid], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        for child in children(pid):
            if child != nspawn_pid and _is_pid1(child):
                return child
            todo.append(child)
    return None


def wait_leader(nspawn_pid: int, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    step = 0.002
    while True:
        if not os.path.exists(f"/proc/{nspawn_pid}"):
            return None
        leader = container_leader(nspawn_pid)
        if leader is not None or time.monotonic() >= deadline:
            return leader
        time.sleep(step)
        step = min(step * 2, 0.05)


def _is_pid1(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    ids = line.split()[1:]
                    return len(ids) > 1 and ids[-1] == "1"
    except OSError:
        pass
    return False


def host_ifnames(pod_path: Path) -> list[str]:
    """The host-side interfaces of the pod's CNI networks (the host end of each veth)."""
    from rktd_units import network

    result = network.status(pod_path)
    if result is None:
        return []
    return [itf.host_ifname for itf in result.interfaces if itf.host_ifname]


def ifindices(names: Iterable[str]) -> list[int]:
    import socket

    out = []
    for name in names:
        try:
            out.append(socket.if_nametoindex(name))
        except OSError:
            _say(f"systemd-machined: no host interface {name!r}")
    return out


def call_register(name: str, machine_id: bytes, leader: int, root: str, indices: Sequence[int]) -> str:
    """RegisterMachineWithNetwork(name, id, service, class, leader, root_directory, ifindices).

    machined keeps a machine until its unit stops, and a unit that restarts (`Restart=`) keeps
    running: the machine of the unit's previous pod, which nspawn would have unregistered on its
    way out, is unregistered here first (UnregisterMachine leaves processes alone)."""
    from jeepney import DBusAddress, new_method_call
    from jeepney.io.blocking import open_dbus_connection
    from jeepney.wrappers import DBusErrorResponse, unwrap_msg

    manager = DBusAddress(MANAGER_PATH, bus_name=MACHINED, interface=MANAGER)
    with open_dbus_connection(bus="SYSTEM") as conn:

        def call(addr: DBusAddress, method: str, signature: str, args: tuple[Any, ...]) -> Any:
            msg = new_method_call(addr, method, signature, args)
            return unwrap_msg(conn.send_and_get_reply(msg, timeout=10))

        try:
            (path,) = call(manager, "GetMachineByPID", "u", (leader,))
            props = DBusAddress(path, bus_name=MACHINED, interface="org.freedesktop.DBus.Properties")
            ((_, stale),) = call(props, "Get", "ss", (f"{MACHINED}.Machine", "Name"))
        except DBusErrorResponse:
            stale = None  # no machine for the unit: the usual case
        if stale and stale != name:
            call(manager, "UnregisterMachine", "s", (stale,))
        (path,) = call(
            manager,
            "RegisterMachineWithNetwork",
            "sayssusai",
            (name, machine_id, SERVICE, "container", leader, root, list(indices)),
        )
        return str(path)
