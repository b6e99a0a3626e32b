"""machined is told the pod's interface (issue #6): a pod on the default CNI network, started by
systemd, is registered with the host end of its veth, keeps one machine across `Restart=`, and leaves
no machine registered when it stops."""

from __future__ import annotations

from tests.integration.pods import Pods, app, manifest, wait_for

MANAGER = ("/org/freedesktop/machine1", "org.freedesktop.machine1.Manager")
MACHINE = "org.freedesktop.machine1.Machine"


def host_veth(pods: Pods, unit: str) -> tuple[int, str] | None:
    """(ifindex, name) of the host end of the veth of the pod the unit runs now."""
    uuid = pods.m.run(["cat", f"/run/rktd/{unit.removesuffix('.service')}/uuid"], check=False).stdout.strip()
    if not uuid:
        return None
    for line in pods.m.run(["ip", "-o", "link"]).stdout.splitlines():
        if f"link-netns rktd-{uuid}" in line:
            index, name = line.split(":")[:2]
            return int(index), name.strip().split("@")[0]
    return None


def registered(pods: Pods, unit: str) -> tuple[str, str] | None:
    """(machine name, its NetworkInterfaces as "IDX …") of the unit's machine, once it has some."""
    name = pods.machine_of(unit)
    if not name:
        return None
    busctl = ["busctl", "--system", "org.freedesktop.machine1"]
    path = pods.m.run([busctl[0], "call", *busctl[1:], *MANAGER, "GetMachine", "s", name], check=False)
    if path.returncode != 0:
        return None
    obj = path.stdout.split()[1].strip('"')  # o "/org/freedesktop/machine1/machine/…"
    prop = pods.m.run(
        [busctl[0], "get-property", *busctl[1:], obj, MACHINE, "NetworkInterfaces"], check=False
    )
    # "ai 1 5": the ifindices machined was told
    indices = prop.stdout.split()[2:]
    return (name, " ".join(indices)) if indices else None


def test_machine_has_the_pods_host_interface(pods: Pods) -> None:
    pods.add("ifaced", manifest(app("web", "/bin/sh", "-c", "echo ifaced-up; exec sleep 1000")))
    unit = "pod@ifaced.service"
    pods.m.run(["systemctl", "start", unit], timeout=90)
    pods.wait_active(unit)
    assert wait_for(lambda: registered(pods, unit)), (pods.status(unit), pods.m.run(["machinectl"]).stdout)
    veth = host_veth(pods, unit)
    assert veth, pods.m.run(["ip", "-o", "link"]).stdout
    name, ifaces = registered(pods, unit) or ("", "")
    assert ifaces == str(veth[0])
    status = pods.m.run(["machinectl", "status", "--no-pager", name]).stdout
    assert f"Iface: {veth[1]}" in status, status
    assert "Service: rktd; class container" in status
    assert "not registered" not in pods.m.journal(unit)

    # Restart=on-failure: the unit's next pod has its own veth, and the previous pod's machine is gone
    main = pods.show(unit, "MainPID")
    pods.m.run(["pkill", "-KILL", "-x", "sleep"])
    assert wait_for(lambda: pods.show(unit, "MainPID") not in ("0", main) and pods.active(unit) == "active")
    assert wait_for(lambda: (r := registered(pods, unit)) and r[0] != name), pods.status(unit)
    assert wait_for(lambda: (v := host_veth(pods, unit)) and v != veth)
    new_name, new_ifaces = registered(pods, unit) or ("", "")
    assert new_ifaces == str((host_veth(pods, unit) or (0, ""))[0])
    listed = pods.m.run(["machinectl", "list", "--no-legend", "--no-pager"]).stdout
    assert [line.split()[0] for line in listed.splitlines() if "rktd-ifaced-" in line] == [new_name], listed

    pods.m.run(["systemctl", "stop", unit], timeout=90)
    assert wait_for(
        lambda: "rktd-ifaced-" not in pods.m.run(["machinectl", "list", "--no-legend"]).stdout, 15
    ), pods.m.run(["machinectl", "list"]).stdout
    assert pods.m.run(["ps", "-eo", "stat="]).stdout.count("Z") == 0
