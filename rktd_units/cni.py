"""CNI: network configurations (built-in and `<local-config>/net.d`), plugin invocation, results.

This module knows the CNI specification and the reference plugins, and nothing about pods:
`network.py` decides which networks a pod joins and records what must be undone. Plugins are
run as the spec says: the `CNI_*` variables in a clean environment, the plugin's configuration
on stdin, a result or an error object on stdout. The last section cleans up what the reference
plugins (ptp, portmap, host-local) leave when DEL cannot find what a killed ADD half-made.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rktd_units.errors import NetworkError
from rktd_units.names import AC_NAME_RE
from rktd_units.run import DEFAULT_PATH, run

log = logging.getLogger("rktd")

DEFAULT_CNI_PATH = "/usr/lib/cni"
# A configuration without `cniVersion` is run at this version (it allows chaining portmap).
DEFAULT_CNI_VERSION = "0.4.0"
PLUGIN_TIMEOUT = 60.0
CONFIG_SUFFIXES = (".conf", ".conflist", ".json")

# rkt's built-in networks (stage1/net/rootfs/etc/rkt/net.d), at a current CNI version.
BUILTIN_NETWORKS: dict[str, dict[str, Any]] = {
    "default": {
        "cniVersion": "1.0.0",
        "name": "default",
        "type": "ptp",
        "ipMasq": True,
        "ipam": {"type": "host-local", "subnet": "172.16.28.0/24", "routes": [{"dst": "0.0.0.0/0"}]},
    },
    "default-restricted": {
        "cniVersion": "1.0.0",
        "name": "default-restricted",
        "type": "ptp",
        "ipMasq": False,
        "ipam": {"type": "host-local", "subnet": "172.16.29.0/24"},
    },
}


@dataclass(frozen=True)
class NetConf:
    """One network: its name, where it was defined, and its plugin chain (a conflist's `plugins`)."""

    name: str
    source: str  # a file path, or "built-in"
    cni_version: str
    plugins: tuple[dict[str, Any], ...]

    @property
    def ip_masq(self) -> bool:
        return bool(self.plugins and self.plugins[0].get("ipMasq"))


@dataclass(frozen=True)
class Interface:
    """A pod interface as a CNI result reports it."""

    network: str
    ifname: str
    addresses: tuple[str, ...]  # CIDR, e.g. "172.16.28.2/24"
    gateways: tuple[str, ...] = ()
    mac: str | None = None
    host_ifname: str | None = None  # the host end of a veth, for machined and operators

    @property
    def ips(self) -> tuple[str, ...]:
        return tuple(a.split("/", 1)[0] for a in self.addresses)


@dataclass(frozen=True)
class Dns:
    nameservers: tuple[str, ...] = ()
    domain: str | None = None
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


class PluginError(NetworkError):
    """A plugin returned a CNI error object (or failed without one)."""

    def __init__(self, message: str, *, code: int | None = None, plugin_msg: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.plugin_msg = plugin_msg


def _bad(source: str, field: str, message: str) -> NetworkError:
    return NetworkError(f"{source}: {field}: {message}")


def _plugin_list(data: Any, source: str) -> tuple[str, str, tuple[dict[str, Any], ...]]:
    if not isinstance(data, dict):
        raise _bad(source, "(top level)", "not a JSON object")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise _bad(source, "name", "missing or not a string")
    version = data.get("cniVersion", DEFAULT_CNI_VERSION)
    if not isinstance(version, str):
        raise _bad(source, "cniVersion", "not a string")
    raw = data.get("plugins") if "plugins" in data else [data]
    if not isinstance(raw, list) or not raw:
        raise _bad(source, "plugins", "must be a non-empty list of plugin objects")
    plugins = []
    for i, p in enumerate(raw):
        field = f"plugins[{i}].type" if "plugins" in data else "type"
        if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not p["type"]:
            raise _bad(source, field, "missing plugin type")
        if "/" in p["type"] or p["type"].startswith("."):
            raise _bad(source, field, f"plugin type {p['type']!r} is not a plain name")
        conf = {k: v for k, v in p.items() if k not in ("cniVersion", "name")}
        plugins.append({"cniVersion": version, "name": name, **conf})
    return name, version, tuple(plugins)


def parse_netconf(data: Any, source: str) -> NetConf:
    name, version, plugins = _plugin_list(data, source)
    return NetConf(name, source, version, plugins)


def load_networks(local_config: Path) -> dict[str, NetConf]:
    """Built-ins, then `<local_config>/net.d/*.{conf,conflist,json}` in file-name order.

    A file with a built-in's name replaces it; two files naming the same network are an error.
    """
    nets = {name: parse_netconf(conf, "built-in") for name, conf in BUILTIN_NETWORKS.items()}
    from_files: dict[str, str] = {}
    netd = local_config / "net.d"
    try:
        entries = sorted(p for p in netd.iterdir() if p.suffix in CONFIG_SUFFIXES and p.is_file())
    except FileNotFoundError:
        entries = []
    except OSError as e:
        raise NetworkError(f"{netd}: cannot read: {e.strerror}") from None
    for path in entries:
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as e:
            raise _bad(str(path), "(file)", f"not valid JSON: {e}") from None
        conf = parse_netconf(data, str(path))
        if not AC_NAME_RE.match(conf.name):
            # `--net` and the rktd/net annotation take AC Names only, and the name is a directory
            # of host-local's leases: refuse it here rather than ignore the file.
            raise _bad(str(path), "name", f"{conf.name!r} is not an AC Name (a-z, 0-9 and inner '-')")
        if conf.name in ("host", "none", "all"):
            raise _bad(str(path), "name", f"{conf.name!r} is reserved")
        if conf.name in from_files:
            raise _bad(
                str(path), "name", f"network {conf.name!r} is also defined in {from_files[conf.name]}"
            )
        from_files[conf.name] = str(path)
        nets.pop(conf.name, None)  # keep file order after the built-ins it replaces
        nets[conf.name] = conf
    return nets


def find_plugin(plugin_type: str, cni_path: str) -> Path:
    """The plugin executable of a plain `type` in CNI_PATH; never a path (configurations are checked
    when parsed, and a type read back from a pod's network state is checked here again)."""
    if not plugin_type or "/" in plugin_type or plugin_type.startswith("."):
        raise NetworkError(f"CNI plugin type {plugin_type!r} is not a plain name")
    for d in cni_path.split(":"):
        candidate = Path(d) / plugin_type
        if d and os.access(candidate, os.X_OK) and candidate.is_file():
            return candidate
    raise NetworkError(f"CNI plugin {plugin_type!r} not found", hint=f"looked in CNI_PATH={cni_path}")


def invoke(
    conf: Mapping[str, Any],
    command: str,
    *,
    container_id: str,
    netns: str,
    ifname: str,
    args: str = "",
    cni_path: str = DEFAULT_CNI_PATH,
) -> dict[str, Any] | None:
    """Run one plugin; return its parsed result (ADD) or None (DEL, CHECK); raise PluginError."""
    plugin = find_plugin(str(conf["type"]), cni_path)
    env = {
        "PATH": DEFAULT_PATH,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": cni_path,
    }
    what = f"CNI {command} {conf['type']} (network {conf['name']!r}, {ifname})"
    proc = run(
        [plugin], env=env, input=json.dumps(conf).encode(), check=False, timeout=PLUGIN_TIMEOUT, what=what
    )
    out = proc.stdout.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise _plugin_error(what, out, proc.stderr.decode(errors="replace").strip(), proc.returncode)
    if command != "ADD":
        return None
    try:
        result = json.loads(out)
    except ValueError:
        raise PluginError(f"{what}: result is not JSON: {out[:200]!r}") from None
    if not isinstance(result, dict):
        raise PluginError(f"{what}: result is not a JSON object")
    return result


def _plugin_error(what: str, out: str, err: str, status: int) -> PluginError:
    try:
        obj = json.loads(out)
    except ValueError:
        obj = None
    if isinstance(obj, dict) and "msg" in obj:
        msg = str(obj["msg"])
        if obj.get("details"):
            msg += f": {obj['details']}"
        code = obj.get("code")
        return PluginError(f"{what}: {msg}", code=code if isinstance(code, int) else None, plugin_msg=msg)
    detail = (err or out).splitlines()[-1] if (err or out) else f"exit status {status}"
    return PluginError(f"{what}: {detail}", plugin_msg=detail)


def interfaces_of(result: Mapping[str, Any], network: str, ifname: str) -> Interface:
    """The pod interface `ifname` from a result of any CNI version (0.1.0 `ip4` or 0.3.0+ `ips`)."""
    if "ips" in result or "interfaces" in result:
        ifaces = result.get("interfaces") or []
        own = {i for i, it in enumerate(ifaces) if it.get("sandbox") and it.get("name") == ifname}
        mac = next((ifaces[i].get("mac") for i in sorted(own)), None)
        host = next((it.get("name") for it in ifaces if not it.get("sandbox")), None)
        addrs, gws = [], []
        for ip in result.get("ips") or []:
            if "interface" in ip and own and ip["interface"] not in own:
                continue
            addrs.append(str(ip["address"]))
            if ip.get("gateway"):
                gws.append(str(ip["gateway"]))
        return Interface(network, ifname, tuple(addrs), tuple(gws), mac, host)
    addrs, gws = [], []
    for key in ("ip4", "ip6"):
        block = result.get(key)
        if isinstance(block, dict) and block.get("ip"):
            addrs.append(str(block["ip"]))
            if block.get("gateway"):
                gws.append(str(block["gateway"]))
    return Interface(network, ifname, tuple(addrs), tuple(gws))


def dns_of(result: Mapping[str, Any]) -> Dns:
    d = result.get("dns") or {}
    return Dns(
        tuple(d.get("nameservers") or ()),
        d.get("domain") or None,
        tuple(d.get("search") or ()),
        tuple(d.get("options") or ()),
    )


def version_at_least(version: str, minimum: tuple[int, int, int]) -> bool:
    try:
        parts = tuple(int(x) for x in version.split("."))
    except ValueError:
        return False
    return parts >= minimum


# --- host-local address arithmetic -------------------------------------------------------------


def _range_capacity(r: Mapping[str, Any]) -> int:
    net = ipaddress.ip_network(str(r["subnet"]), strict=False)
    if net.num_addresses <= 2:
        first, last = int(net.network_address), int(net.broadcast_address)
    else:
        # host-local: start at network+1; end before the broadcast (IPv4) or at the last address (IPv6).
        first = int(net.network_address) + 1
        last = int(net.broadcast_address) - (1 if net.version == 4 else 0)
    if r.get("rangeStart"):
        first = int(ipaddress.ip_address(str(r["rangeStart"])))
    if r.get("rangeEnd"):
        last = int(ipaddress.ip_address(str(r["rangeEnd"])))
    gateway = (
        int(ipaddress.ip_address(str(r["gateway"]))) if r.get("gateway") else int(net.network_address) + 1
    )
    count = max(0, last - first + 1)
    if first <= gateway <= last:
        count -= 1  # the gateway is never handed out
    return count


def ipam_capacity(ipam: Mapping[str, Any]) -> int:
    """How many pods a host-local IPAM section can address (each pod takes one address per range set)."""
    if ipam.get("type") != "host-local":
        raise NetworkError(f"capacity of IPAM type {ipam.get('type')!r} is not known")
    sets: Sequence[Sequence[Mapping[str, Any]]] = ipam.get("ranges") or [[ipam]]
    return min(sum(_range_capacity(r) for r in rs) for rs in sets)


# --- what the reference plugins leave behind ------------------------------------------------------
# ptp/bridge (ipMasq), portmap and host-local undo their work on DEL only as far as they find it.
# These helpers find the rest: chains named after the network and container, rules that carry
# the container's comment, empty leases; and portmap's per-host chains once nobody uses them.

# portmap creates these once per host and never removes them. When no forwarding is left (the
# DNAT chain is empty and nothing jumps to SETMARK), they are removed in one iptables-restore
# transaction: the kernel refuses to delete a chain that is non-empty or still referenced, and
# then the whole transaction is dropped, so a concurrent user of the chains is never broken.
PORTMAP_CHAINS = ("CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")
_PORTMAP_FLUSHED = ("CNI-HOSTPORT-MASQ", "CNI-HOSTPORT-SETMARK")  # their rules are portmap's fixed ones


def nat_rules() -> list[str]:
    """`iptables-save -t nat`, as lines."""
    return run(["iptables-save", "-t", "nat"], check=False).stdout.decode(errors="replace").splitlines()


def _restore(lines: Sequence[str]) -> tuple[bool, str]:
    script = "\n".join(["*nat", *lines, "COMMIT", ""]).encode()
    proc = run(["iptables-restore", "--noflush", "--wait"], input=script, check=False)
    return proc.returncode == 0, proc.stderr.decode(errors="replace").strip()


def forwarded_host_ports(saved: Sequence[str]) -> set[tuple[str, int]]:
    """(protocol, host port) pairs that portmap forwards now, to any pod."""
    out = set()
    for line in saved:
        m = re.search(r" -p (\w+) .*--dports ([0-9,]+)", line)
        if line.startswith("-A CNI-HOSTPORT-DNAT ") and m:
            out |= {(m.group(1), int(p)) for p in m.group(2).split(",")}
    return out


def prune_portmap_chains() -> bool:
    """Remove portmap's per-host chains if no pod uses them any more; True if they are gone."""
    saved = nat_rules()
    existing = [c for c in PORTMAP_CHAINS if any(line.startswith(f":{c} ") for line in saved)]
    if not existing:
        return True
    # The jumps into them from the built-in chains (an ADD killed half-way may have made only some).
    jumps = [
        line
        for line in saved
        if line.startswith(("-A PREROUTING ", "-A OUTPUT ", "-A POSTROUTING "))
        and line.split(" -j ")[-1].split()[0] in existing
    ]
    lines = [f"-D {j[3:]}" for j in jumps] + [f"-F {c}" for c in existing if c in _PORTMAP_FLUSHED]
    done, _ = _restore(lines + [f"-X {c}" for c in existing])
    log.debug("pruning portmap chains: %s", "done" if done else "still in use")
    return done


def chain_names(network_name: str, container_id: str) -> tuple[str, str]:
    """The nat chains the plugins name after a network and container: ipMasq's and portmap's DNAT."""
    digest = hashlib.sha512(f"{network_name}{container_id}".encode()).hexdigest()
    return f"CNI-{digest[:24]}", f"CNI-DN-{digest[:21]}"


def sweep_nat(container_id: str, network_names: Sequence[str]) -> None:
    """Remove what the plugins left of one container in the nat table: its chains and marked rules.

    ptp removes its masquerade only if DEL still finds the pod's interface (not when the namespace
    was deleted by hand), and an ADD killed half-way leaves a chain that no DEL looks for.
    Everything goes in one iptables-restore transaction.
    """
    saved = nat_rules()
    existing = {line[1:].split()[0] for line in saved if line.startswith(":")}
    ours = {c for n in network_names for c in chain_names(n, container_id)} & existing
    marker = f'id: \\"{container_id}\\"'
    rules = []
    for line in saved:
        if not line.startswith("-A ") or line.split()[1] in ours:
            continue  # chains of ours are flushed whole
        if marker in line or any(f"{j} {c}" in line for c in ours for j in ("-j", "-g")):
            rules.append(line)
    if not rules and not ours:
        return
    lines = (
        [f"-D {r[3:]}" for r in rules]
        + [f"-F {c}" for c in sorted(ours)]
        + [f"-X {c}" for c in sorted(ours)]
    )
    done, err = _restore(lines)
    if not done:
        raise NetworkError(f"cannot remove the nat rules of container {container_id}: {err}")
    log.info(
        "container %s: removed %d chains and %d rules its plugins left", container_id, len(ours), len(rules)
    )


def sweep_leases(store: Path, container_id: str) -> None:
    """Remove host-local leases in `store` (`<dataDir>/<network>`) that no DEL can find.

    host-local creates a lease file and then writes its owner into it; killed in between, it
    leaves an empty file that no DEL matches, and the address is lost for good. Under
    host-local's own lock (`<store>/lock`, flock) an empty lease is certainly such a leftover;
    a lease still naming this container goes too.
    """
    if not store.is_dir():
        return
    with open(store / "lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for lease in store.iterdir():
            with contextlib.suppress(ValueError, OSError):
                ipaddress.ip_address(lease.name)
                owner = lease.read_text().split()[:1]
                if not owner or owner[0] == container_id:
                    lease.unlink()
                    log.info("container %s: removed the stray lease %s", container_id, lease)
