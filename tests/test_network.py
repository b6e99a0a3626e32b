"""Pod networking with the real CNI plugins, real namespaces and real iptables.

A "pod" here is just its network namespace: servers and clients run inside it with
`nsenter --net=PATH`. Traffic goes only to loopback and to namespaces these tests create.
Every test that touches the host checks that it left no veth, namespace, lease, rule or mount.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rktd_units import cni, network
from rktd_units.errors import NetworkError, UsageError
from rktd_units.network import DnsOptions, PortForward

CNI_PATH = Path(cni.DEFAULT_CNI_PATH)
ROOT_DIR = Path(__file__).resolve().parent.parent
BUSYBOX = shutil.which("busybox") or "/bin/busybox"

needs_net = pytest.mark.skipif(
    os.geteuid() != 0 or not (CNI_PATH / "ptp").exists() or not shutil.which("iptables-save"),
    reason="needs root, containernetworking-plugins and iptables",
)


# --- what the host holds: counted before and after ------------------------------------------------


def _lines(argv: list[str]) -> list[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=True).stdout.splitlines()


def iptables_rules() -> set[str]:
    """Rules and user chains of every table, without counters or built-in chain policies."""
    out, table = set(), ""
    for line in _lines(["iptables-save"]):
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A "):
            out.add(f"{table} {line}")
        elif line.startswith(":") and line.split()[1] == "-":
            out.add(f"{table} {line.split()[0]}")
    return out


def leases(data_dir: Path) -> set[str]:
    found = set()
    for f in data_dir.glob("*/*") if data_dir.exists() else ():
        try:
            found.add(f"{f.parent.name}/{ipaddress.ip_address(f.name)}")
        except ValueError:
            continue
    return found


@dataclass(frozen=True)
class HostState:
    veths: frozenset[str]
    netns: frozenset[str]
    mounts: frozenset[str]
    rules: frozenset[str]
    leases: frozenset[str]


def host_state(data_dir: Path) -> HostState:
    veths = {
        line.split(":")[1].strip().split("@")[0]
        for line in _lines(["ip", "-o", "link", "show", "type", "veth"])
    }
    netns = set(os.listdir(network.NETNS_DIR)) if network.NETNS_DIR.exists() else set()
    mounts = {
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if " nsfs " in line or "/netns/" in line.split()[4]
    }
    return HostState(
        frozenset(veths),
        frozenset(netns),
        frozenset(mounts),
        frozenset(iptables_rules()),
        frozenset(leases(data_dir)),
    )


# --- fixtures ----------------------------------------------------------------------------------------


@dataclass
class Env:
    local_config: Path
    data_dir: Path
    root: Path
    pods: list[tuple[str, Path]]

    def conf(self, filename: str, data: Mapping[str, Any]) -> None:
        netd = self.local_config / "net.d"
        netd.mkdir(parents=True, exist_ok=True)
        (netd / filename).write_text(json.dumps(data))

    def setup(self, nets: str = "default", **kw: Any) -> tuple[str, Path, network.NetResult]:
        pod_uuid = str(uuid.uuid4())
        pod_dir = self.root / pod_uuid
        pod_dir.mkdir()
        self.pods.append((pod_uuid, pod_dir))
        res = network.setup(
            pod_uuid,
            pod_dir,
            nets,
            local_config=self.local_config,
            data_dir=self.data_dir,
            **kw,
        )
        return pod_uuid, pod_dir, res

    def teardown(self, pod_uuid: str, pod_dir: Path) -> None:
        network.teardown(pod_uuid, pod_dir, local_config=self.local_config)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    """A private local-config and IPAM dir; asserts the host is as it was when the test ends."""
    e = Env(tmp_path / "etc", tmp_path / "networks", tmp_path / "pods", [])
    e.local_config.mkdir()
    e.root.mkdir()
    before = host_state(e.data_dir)
    try:
        yield e
    finally:
        for pod_uuid, pod_dir in reversed(e.pods):
            e.teardown(pod_uuid, pod_dir)
    after = host_state(e.data_dir)
    assert after == before, f"left behind: {_diff(before, after)}"


def _diff(before: HostState, after: HostState) -> dict[str, set[str]]:
    out = {}
    for name in ("veths", "netns", "mounts", "rules", "leases"):
        extra = set(getattr(after, name)) ^ set(getattr(before, name))
        if extra:
            out[name] = extra
    return out


@pytest.fixture
def httpd(tmp_path: Path) -> Iterator[Callable[[str], str]]:
    """Start busybox httpd on port 80 inside a pod's namespace: `httpd(netns_path) -> token`."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(netns_path: str, port: int = 80) -> str:
        token = uuid.uuid4().hex
        www = tmp_path / f"www-{token}"
        www.mkdir()
        (www / "index.html").write_text(token)
        argv = ["nsenter", f"--net={netns_path}", BUSYBOX, "httpd", "-f", "-p", str(port), "-h", str(www)]
        procs.append(subprocess.Popen(argv, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:  # ready when it listens (checked from inside the pod)
            listening = in_netns(netns_path, "ss", "-Hltn", f"sport = :{port}").stdout
            if listening.strip():
                return token
            time.sleep(0.05)
        raise AssertionError("httpd did not start")

    yield start
    for p in procs:
        p.kill()
        p.wait(timeout=5)


def http_get(host: str, port: int, timeout: float = 5.0) -> str:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.sendall(b"GET /index.html HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data.decode(errors="replace").split("\r\n\r\n", 1)[-1]


def in_netns(netns_path: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["nsenter", f"--net={netns_path}", *argv], capture_output=True, text=True, timeout=20
    )


def free_port() -> int:
    return random.randint(20000, 29999)


# --- unit: arithmetic, parsing, configuration -----------------------------------------------------


def test_default_network_holds_253_pods() -> None:
    default = cni.BUILTIN_NETWORKS["default"]["ipam"]
    assert cni.ipam_capacity(default) == 253  # .2-.254: .0 network, .1 gateway, .255 broadcast
    assert cni.ipam_capacity({"type": "host-local", "subnet": "172.16.31.0/29"}) == 5
    ranged = {
        "type": "host-local",
        "subnet": "10.0.0.0/24",
        "rangeStart": "10.0.0.10",
        "rangeEnd": "10.0.0.19",
    }
    assert cni.ipam_capacity(ranged) == 10  # gateway .1 is outside the range
    two_sets = {"type": "host-local", "ranges": [[{"subnet": "10.0.0.0/29"}], [{"subnet": "10.1.0.0/28"}]]}
    assert cni.ipam_capacity(two_sets) == 5  # a pod takes one address from every set


def test_parse_nets_and_ports() -> None:
    assert network.parse_nets("") == [("default", "")]
    assert network.parse_nets("default,lan:IP=10.1.0.9;X=y") == [("default", ""), ("lan", "IP=10.1.0.9;X=y")]
    for bad in ("host,default", "none,lan", "Bad", "lan:novalue", "lan,lan", "host:K=V"):
        with pytest.raises(UsageError):
            network.parse_nets(bad)
    assert network.parse_port_flag("http:8080") == ("http", None, 8080)
    assert network.parse_port_flag("http:127.0.0.1:8080") == ("http", "127.0.0.1", 8080)
    for bad in ("http", "http:0", "http:70000", "http:localhost:80", ":80"):
        with pytest.raises(UsageError):
            network.parse_port_flag(bad)


def test_dns_options_are_checked() -> None:
    for kw in (
        {"servers": ("host", "1.1.1.1")},
        {"servers": ("dns.example",)},
        {"search": ("bad domain",)},
        {"hosts_entries": ("host", "10.0.0.1=a")},
        {"hosts_entries": ("10.0.0.1",)},
        {"hosts_entries": ("nope=a",)},
    ):
        with pytest.raises(UsageError):
            DnsOptions(**kw)


def test_resolv_conf_and_hosts_text() -> None:
    text = network.resolv_conf_text(("192.0.2.53",), ("a.example", "b.example"), ("ndots:2",), "example")
    assert text.splitlines()[1:] == [
        "search a.example b.example",
        "nameserver 192.0.2.53",
        "options ndots:2",
        "domain example",
    ]
    hosts = "127.0.0.1 localhost\n10.0.0.5 web # mine\n"
    assert network.hosts_with_hostname(hosts, "web", "10.0.0.9") == hosts
    assert network.hosts_with_hostname("127.0.0.1 localhost", "db", "10.0.0.9").endswith("\n10.0.0.9\tdb\n")


def test_net_d_overrides_and_bad_files(tmp_path: Path) -> None:
    netd = tmp_path / "net.d"
    netd.mkdir()
    (netd / "10-lan.conf").write_text(json.dumps({"name": "lan", "type": "bridge"}))
    (netd / "20-default.conflist").write_text(
        json.dumps(
            {"cniVersion": "1.0.0", "name": "default", "plugins": [{"type": "ptp"}, {"type": "tuning"}]}
        )
    )
    nets = cni.load_networks(tmp_path)
    assert list(nets) == ["default-restricted", "lan", "default"]
    assert nets["default"].source.endswith("20-default.conflist")
    assert [p["type"] for p in nets["default"].plugins] == ["ptp", "tuning"]
    assert nets["lan"].cni_version == cni.DEFAULT_CNI_VERSION
    assert [c.name for c, _ in network._select("all", tmp_path)] == ["lan", "default"]
    (netd / "20-default.conflist").unlink()
    assert [c.name for c, _ in network._select("all", tmp_path)] == ["lan", "default"]
    assert network._select("all", tmp_path)[1][0].source == "built-in"
    (netd / "30-dup.conf").write_text(json.dumps({"name": "lan", "type": "ptp"}))
    with pytest.raises(NetworkError, match=r"30-dup\.conf: name: network 'lan' is also defined in .*10-lan"):
        cni.load_networks(tmp_path)
    (netd / "30-dup.conf").write_text("{not json")
    with pytest.raises(NetworkError, match=r"30-dup\.conf: \(file\): not valid JSON"):
        cni.load_networks(tmp_path)
    (netd / "30-dup.conf").write_text(json.dumps({"name": "x"}))
    with pytest.raises(NetworkError, match=r"30-dup\.conf: type: missing plugin type"):
        cni.load_networks(tmp_path)
    for bad in ("../../etc", "LAN", "lan\n", "-lan", "a/b"):
        (netd / "30-dup.conf").write_text(json.dumps({"name": bad, "type": "bridge"}))
        with pytest.raises(NetworkError, match=r"30-dup\.conf: name: .* is not an AC Name"):
            cni.load_networks(tmp_path)


def test_results_of_every_cni_version() -> None:
    new = {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "veth1"}, {"name": "eth0", "mac": "aa:bb", "sandbox": "/run/netns/x"}],
        "ips": [{"interface": 1, "address": "172.16.28.5/24", "gateway": "172.16.28.1"}],
        "dns": {"nameservers": ["192.0.2.53"]},
    }
    itf = cni.interfaces_of(new, "default", "eth0")
    assert (itf.addresses, itf.gateways, itf.mac, itf.host_ifname) == (
        ("172.16.28.5/24",),
        ("172.16.28.1",),
        "aa:bb",
        "veth1",
    )
    old = {"cniVersion": "0.1.0", "ip4": {"ip": "10.1.0.2/16", "gateway": "10.1.0.1"}, "dns": {}}
    assert cni.interfaces_of(old, "lan", "eth1").ips == ("10.1.0.2",)
    assert cni.dns_of(new).nameservers == ("192.0.2.53",)
    assert cni.dns_of(old).nameservers == ()


# --- real networks ---------------------------------------------------------------------------------


@needs_net
def test_pod_to_pod_on_default(env: Env, httpd: Callable[[str], str]) -> None:
    _, _, a = env.setup("default", hostname="a")
    _, _, b = env.setup("default", hostname="b")
    assert a.netns_path and b.netns_path and a.netns_path != b.netns_path
    assert [i.ifname for i in a.interfaces] == ["eth0"]
    ip_a, ip_b = a.addresses[0], b.addresses[0]
    assert ip_a != ip_b
    for ip in (ip_a, ip_b):
        assert ipaddress.ip_address(ip) in ipaddress.ip_network("172.16.28.0/24")
    routes = in_netns(a.netns_path, "ip", "route", "show", "default").stdout
    assert "via 172.16.28.1" in routes
    token = httpd(b.netns_path)
    got = subprocess.run(  # busybox nc as the client, from inside pod a
        ["nsenter", f"--net={a.netns_path}", BUSYBOX, "nc", "-w", "5", ip_b, "80"],
        input=b"GET /index.html HTTP/1.0\r\n\r\n",
        capture_output=True,
        timeout=20,
    )
    assert got.stdout.decode().split("\r\n\r\n", 1)[-1] == token, got
    assert a.hosts is not None and f"{ip_a}\ta" in a.hosts.read_text()


@needs_net
def test_port_forward_from_host_loopback(env: Env, httpd: Callable[[str], str]) -> None:
    port, port_lo = free_port(), free_port() + 10000
    forwards = [PortForward(port, 80, name="http"), PortForward(port_lo, 80, host_ip="127.0.0.1", name="lo")]
    pod_uuid, pod_dir, res = env.setup("default", ports=forwards)
    assert res.netns_path
    token = httpd(res.netns_path)
    assert http_get("127.0.0.1", port) == token
    assert http_get("127.0.0.1", port_lo) == token
    with pytest.raises(NetworkError, match=f"host port {port}/tcp is already forwarded"):
        env.setup("default", ports=[PortForward(port, 80)])
    with socket.socket() as listener:  # a host service on the port: forwarding would hide it
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        with pytest.raises(NetworkError, match=f"host port {busy}/tcp is in use on the host"):
            env.setup("default", ports=[PortForward(busy, 80)])
    assert any(f"--dport {port}" in r for r in iptables_rules())
    env.teardown(pod_uuid, pod_dir)
    assert not any(f"--dport {port}" in r for r in iptables_rules())
    with pytest.raises(OSError):
        http_get("127.0.0.1", port, timeout=1)


@needs_net
def test_restricted_has_no_route_out(env: Env, httpd: Callable[[str], str]) -> None:
    _, _, res = env.setup("default-restricted")
    assert res.netns_path
    ip = res.addresses[0]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network("172.16.29.0/24")
    assert in_netns(res.netns_path, "ip", "route", "show", "default").stdout.strip() == ""
    lookup = in_netns(res.netns_path, "ip", "route", "get", "198.51.100.1")  # a route lookup, no packet
    assert lookup.returncode != 0 and "unreachable" in lookup.stderr
    assert not any("172.16.29" in r and "MASQUERADE" in r for r in iptables_rules())
    token = httpd(res.netns_path)
    assert http_get(ip, 80) == token  # the host still reaches the pod over the veth


@needs_net
def test_none_has_only_loopback(env: Env) -> None:
    _, _, res = env.setup("none", hostname="lonely")
    assert res.kind == "none" and res.netns_path and res.interfaces == ()
    links = in_netns(res.netns_path, "ip", "-o", "link").stdout.splitlines()
    assert [line.split(":")[1].strip() for line in links] == ["lo"]
    assert "UP" in links[0].split(">")[0]
    assert in_netns(res.netns_path, BUSYBOX, "ping", "-c1", "-W2", "127.0.0.1").returncode == 0
    assert res.hosts is not None and "127.0.0.1\tlonely" in res.hosts.read_text()
    with pytest.raises(NetworkError, match="none"):
        env.setup("none", ports=[PortForward(8080, 80)])


@needs_net
def test_host_network_has_no_namespace(env: Env) -> None:
    pod_uuid, pod_dir, res = env.setup("host", ports=[PortForward(8080, 80)])
    assert res.kind == "host" and res.netns_path is None and res.interfaces == ()
    assert network.status(pod_dir) == res
    env.teardown(pod_uuid, pod_dir)
    env.teardown(pod_uuid, pod_dir)  # idempotent
    assert network.status(pod_dir) is None


@needs_net
def test_two_networks_give_eth0_and_eth1_with_cni_args(env: Env) -> None:
    lan = {
        "cniVersion": "1.0.0",
        "name": "lan",
        "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "172.16.30.0/24"},
    }
    env.conf("10-lan.conf", lan)
    _, pod_dir, res = env.setup("default,lan:IP=172.16.30.9")
    assert [(i.network, i.ifname) for i in res.interfaces] == [("default", "eth0"), ("lan", "eth1")]
    assert res.interfaces[1].ips == ("172.16.30.9",)  # host-local honoured CNI_ARGS IP=
    assert res.netns_path
    links = in_netns(res.netns_path, "ip", "-o", "-4", "addr").stdout
    assert "eth0" in links and "eth1" in links and "inet 172.16.30.9/24" in links
    assert network.status(pod_dir) == res


@needs_net
def test_address_exhaustion_refused_and_nothing_half_made(env: Env) -> None:
    tiny = {
        "name": "tiny",
        "type": "ptp",
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "172.16.31.0/29"},
    }
    env.conf("50-tiny.conf", tiny)
    capacity = cni.ipam_capacity(tiny["ipam"])  # type: ignore[arg-type]
    got = {env.setup("tiny")[2].addresses[0] for _ in range(capacity)}
    assert got == {f"172.16.31.{n}" for n in range(2, 7)}
    before = host_state(env.data_dir)
    with pytest.raises(
        NetworkError, match=rf"network 'tiny' is full: all {capacity} addresses are in use"
    ) as ei:
        env.setup("tiny", ports=[PortForward(free_port(), 80)])
    assert "no IP addresses available" in str(ei.value)
    assert host_state(env.data_dir) == before
    assert not (env.pods[-1][1] / "net").exists()


@needs_net
def test_plugin_errors_are_surfaced_and_rolled_back(env: Env) -> None:
    env.conf("10-ghost.conf", {"name": "ghost", "type": "no-such-plugin"})
    env.conf(
        "11-broken.conf",
        {"name": "broken", "type": "ptp", "ipam": {"type": "host-local", "subnet": "banana"}},
    )
    with pytest.raises(NetworkError, match="'no-such-plugin' not found"):
        env.setup("default,ghost")
    with pytest.raises(NetworkError, match=r"CNI ADD ptp \(network 'broken', eth1\): .*banana"):
        env.setup("default,broken")
    with pytest.raises(NetworkError, match="no network named 'missing'"):
        env.setup("missing")


@needs_net
def test_dns_precedence(env: Env) -> None:
    with_dns = {
        "cniVersion": "1.0.0",
        "name": "dnsnet",
        "type": "ptp",
        "ipam": {"type": "host-local", "subnet": "172.16.32.0/24"},
        "dns": {"nameservers": ["172.16.32.53"], "search": ["pods.example"]},
    }
    env.conf("10-dnsnet.conf", with_dns)
    _, _, res = env.setup("dnsnet", hostname="web")
    assert res.resolv_conf_source == "cni" and res.resolv_conf is not None
    assert "nameserver 172.16.32.53" in res.resolv_conf.read_text()
    flags = DnsOptions(servers=("192.0.2.53",), search=("x.example",), domain="x.example")
    _, _, res = env.setup("dnsnet", dns=flags)
    assert res.resolv_conf_source == "flags" and res.resolv_conf is not None
    text = res.resolv_conf.read_text()
    assert "nameserver 192.0.2.53" in text and "172.16.32.53" not in text and "domain x.example" in text
    _, _, res = env.setup("dnsnet", dns=DnsOptions(servers=("none",)))
    assert res.resolv_conf is None and res.resolv_conf_source is None  # volume, then image, decide
    _, _, res = env.setup("none", dns=DnsOptions(servers=("host",), hosts_entries=("host",)), hostname="h1")
    assert res.resolv_conf == Path("/etc/resolv.conf") and res.hosts_source == "host"
    assert res.hosts is not None and "127.0.0.1\th1" in res.hosts.read_text()
    entries = ("198.51.100.0=host1", "198.51.100.1=host2", "198.51.100.0=host3")
    _, _, res = env.setup("none", dns=DnsOptions(hosts_entries=entries), hostname="me")
    assert res.hosts_source == "flags" and res.hosts is not None
    lines = res.hosts.read_text().splitlines()
    assert (
        "198.51.100.0\thost1 host3" in lines and "198.51.100.1\thost2" in lines and "127.0.0.1\tme" in lines
    )


@needs_net
def test_setup_over_stale_state_and_teardown_without_memory(env: Env) -> None:
    pod_uuid, pod_dir, first = env.setup("default")
    again = network.setup(pod_uuid, pod_dir, "default", local_config=env.local_config, data_dir=env.data_dir)
    assert again.netns_path == first.netns_path
    assert len(leases(env.data_dir)) == 1  # the stale lease went before the new one was taken
    env.teardown(pod_uuid, pod_dir)
    assert not (pod_dir / "net").exists() and leases(env.data_dir) == set()


def test_app_hosts_precedence(tmp_path: Path) -> None:
    (tmp_path / "net").mkdir()
    ours = tmp_path / "net" / "hosts"
    ours.write_text("127.0.0.1\tlocalhost\n127.0.0.1\tweb\n")
    fallback = network.NetResult(
        network.NetKind.NONE, None, hosts=ours, hosts_source="fallback", hostname="web"
    )
    rootfs = tmp_path / "rootfs"
    (rootfs / "etc").mkdir(parents=True)
    assert network.app_hosts(fallback, tmp_path, "a", rootfs, volume=False) == ours  # image has none
    assert network.app_hosts(fallback, tmp_path, "a", rootfs, volume=True) is None  # the volume wins
    (rootfs / "etc" / "hosts").write_text("10.9.9.9 image-entry\n")
    copy = network.app_hosts(fallback, tmp_path, "a", rootfs, volume=False)
    assert copy == tmp_path / "net" / "hosts-a"
    assert copy.read_text() == "10.9.9.9 image-entry\n127.0.0.1\tweb\n"  # the image's, plus our name
    (rootfs / "etc" / "hosts").unlink()
    (rootfs / "etc" / "hosts").symlink_to("/etc/shadow")
    assert network.app_hosts(fallback, tmp_path, "b", rootfs, volume=False) == ours  # never follow it
    flags = network.NetResult(network.NetKind.NONE, None, hosts=ours, hosts_source="flags", hostname="web")
    assert network.app_hosts(flags, tmp_path, "a", rootfs, volume=True) == ours  # flags beat volumes
    with pytest.raises(UsageError, match="host name"):
        network.setup("x", tmp_path, "host", local_config=tmp_path, hostname="bad name\n1.2.3.4 evil")


@needs_net
def test_teardown_after_the_namespace_vanished(env: Env) -> None:
    pod_uuid, pod_dir, _ = env.setup("default", ports=[PortForward(free_port(), 80)])
    assert any(pod_uuid in r for r in iptables_rules())
    subprocess.run(["ip", "netns", "delete", network.netns_name(pod_uuid)], check=True)  # by hand
    env.teardown(pod_uuid, pod_dir)  # the lease, the masquerade and the port rules all go
    assert not any(pod_uuid in r for r in iptables_rules())
    assert leases(env.data_dir) == set() and network.status(pod_dir) is None


def test_chain_names_match_the_plugins() -> None:
    # Seen in iptables-save after ptp (ipMasq) and portmap ADD for network "default", container "abc-1".
    assert cni.chain_names("default", "abc-1") == (
        "CNI-faae9bb84ed6b6bf90f93178",
        "CNI-DN-faae9bb84ed6b6bf90f93",
    )


@needs_net
def test_teardown_sweeps_what_killed_plugins_leave(env: Env) -> None:
    """A plugin killed half-way through ADD leaves things its DEL never looks for: an empty
    host-local lease, a masquerade chain without the jump to it. Teardown removes both."""
    pod_uuid, pod_dir, _ = env.setup("default")
    empty_lease = env.data_dir / "default" / "172.16.28.250"
    empty_lease.touch()
    masq, _dnat = cni.chain_names("default", pod_uuid)
    comment = f'name: "default" id: "{pod_uuid}"'
    # As ptp leaves it when killed after its masquerade chain but before the POSTROUTING jump:
    # first DEL the pod's own rules, then recreate the chain alone.
    subprocess.run(["iptables", "-t", "nat", "-F", masq], check=True)
    for r in [
        line for line in iptables_rules() if line.startswith("nat -A POSTROUTING") and pod_uuid in line
    ]:
        source = r.split("-s ")[1].split()[0]
        rule = ["-s", source, "-m", "comment", "--comment", comment, "-j", masq]
        subprocess.run(["iptables", "-t", "nat", "-D", "POSTROUTING", *rule], check=True)
    subprocess.run(
        ["iptables", "-t", "nat", "-A", masq, "-m", "comment", "--comment", comment, "-j", "ACCEPT"],
        check=True,
    )
    assert any(masq in r for r in iptables_rules()) and empty_lease.exists()
    env.teardown(pod_uuid, pod_dir)
    assert not any(masq in r for r in iptables_rules())
    assert not empty_lease.exists() and leases(env.data_dir) == set()


@needs_net
def test_check_finds_a_broken_pod_network(env: Env) -> None:
    _, pod_dir, res = env.setup("default", ports=[PortForward(free_port(), 80)])
    network.check(pod_dir)  # ptp and portmap both agree with what they made
    assert res.netns_path
    in_netns(res.netns_path, "ip", "addr", "flush", "dev", "eth0")
    with pytest.raises(NetworkError, match=r"CNI CHECK ptp \(network 'default', eth0\)"):
        network.check(pod_dir)


@needs_net
def test_udp_port_forward_from_host_loopback(env: Env) -> None:
    port = free_port()
    _, _, res = env.setup("default", ports=[PortForward(port, 53, "udp", name="dns")])
    assert res.netns_path
    receiver = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('', 53));"
        "s.settimeout(10); print(s.recvfrom(100)[0].decode(), flush=True)"
    )
    server = subprocess.Popen(
        ["nsenter", f"--net={res.netns_path}", sys.executable, "-c", receiver], stdout=subprocess.PIPE
    )
    try:
        for _ in range(100):
            if in_netns(res.netns_path, "ss", "-Hlun", "sport = :53").stdout.strip():
                break
            time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.sendto(b"hello-udp", ("127.0.0.1", port))
        out, _ = server.communicate(timeout=15)
    finally:
        server.kill()
        server.wait()
    assert out.decode().strip() == "hello-udp"


@needs_net
def test_host_local_hands_out_exactly_253_default_addresses(tmp_path: Path) -> None:
    """The /24 arithmetic against the real IPAM plugin (host-local alone: no namespace, no veth)."""
    ipam = dict(cni.BUILTIN_NETWORKS["default"]["ipam"], dataDir=str(tmp_path))
    conf = {"cniVersion": "1.0.0", "name": "default", "type": "host-local", "ipam": ipam}
    common = {"netns": "/nonexistent", "ifname": "eth0"}
    got = []
    try:
        for i in range(cni.ipam_capacity(ipam)):
            result = cni.invoke(conf, "ADD", container_id=f"c{i}", **common)
            assert result is not None
            got.append(result["ips"][0]["address"])
        with pytest.raises(cni.PluginError, match="no IP addresses available"):
            cni.invoke(conf, "ADD", container_id="one-too-many", **common)
    finally:
        for i in range(len(got)):
            cni.invoke(conf, "DEL", container_id=f"c{i}", **common)
    assert len(got) == 253
    assert sorted(got, key=lambda a: int(a.split(".")[3].split("/")[0]))[0] == "172.16.28.2/24"
    assert {a.split("/")[0] for a in got} == {f"172.16.28.{n}" for n in range(2, 255)}
    assert leases(tmp_path) == set()
