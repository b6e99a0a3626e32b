"""Pod networking: a network namespace per pod, CNI ADD for each network, portmap, resolv.conf/hosts.

stage0 calls `setup()` before it execs stage1 (which joins `NetResult.netns_path` with
`systemd-nspawn --network-namespace-path=`), and `teardown()` on stop and in gc. Everything
`setup()` does is recorded in `<pod_dir>/net/state.json` *before* it is done, so `teardown()`
works from the pod directory alone after any crash: every ADD gets its DEL (CNI DEL is
idempotent), then whatever a killed plugin half-made is swept (`cni.sweep_nat`,
`cni.sweep_leases`), then the namespace goes. A failing `setup()` undoes itself the same way.

Networks, as rkt: `default` (ptp, 172.16.28.0/24, masquerade, default route), `default-restricted`
(ptp, 172.16.29.0/24, no route out), `host` (no namespace), `none` (a namespace with only `lo`),
and any network in `<local-config>/net.d`. Forwarded ports go through the first network with
`ipMasq`, else the last network (rkt's rule), by chaining the `portmap` plugin after it.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import ipaddress
import json
import logging
import os
import re
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rktd_units import cni, netspec
from rktd_units.cni import Dns, Interface, NetConf, PluginError
from rktd_units.errors import CommandError, NetworkError, UsageError
from rktd_units.fsutil import write_atomic
from rktd_units.run import run

log = logging.getLogger("rktd")

NETNS_DIR = Path("/run/netns")
NETNS_PREFIX = "rktd-"
DEFAULT_DATA_DIR = Path("/var/lib/rktd/networks")
STATE_VERSION = 1
_OWN_FILES = ("resolv.conf", "hosts", "state.json")
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*\.?\Z")
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


class NetKind(enum.StrEnum):
    HOST = "host"  # the host's namespace: nothing to create
    NONE = "none"  # a namespace with only lo
    CNI = "cni"  # a namespace with CNI networks


@dataclass(frozen=True)
class PortForward:
    """Forward `host_ip:host_port` on the host to the pod's `container_port`."""

    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str | None = None  # None: every host address, 127.0.0.1 included
    name: str = ""


@dataclass(frozen=True)
class DnsOptions:
    """rkt's `--dns` (IPs, or one of `host`/`none`), `--dns-search`, `--dns-opt`, `--dns-domain`,
    `--hosts-entry` (`IP=HOST`, or `host`)."""

    servers: tuple[str, ...] = ()
    search: tuple[str, ...] = ()
    options: tuple[str, ...] = ()
    domain: str | None = None
    hosts_entries: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        magic = [s for s in self.servers if s in ("host", "none")]
        if magic and len(self.servers) > 1:
            raise UsageError(f"--dns={magic[0]} cannot be combined with other --dns values")
        for s in self.servers:
            if s not in ("host", "none"):
                _check_ip(s, "--dns")
        for name in (*self.search, *((self.domain,) if self.domain else ())):
            if not _HOSTNAME.match(name):
                raise UsageError(f"--dns-search/--dns-domain: {name!r} is not a domain name")
        for opt in self.options:
            if not opt or any(c.isspace() for c in opt):
                raise UsageError(f"--dns-opt: {opt!r} is not a resolver option")
        if "host" in self.hosts_entries and len(self.hosts_entries) > 1:
            raise UsageError("--hosts-entry=host cannot be combined with IP=HOST entries")
        for entry in self.hosts_entries:
            if entry != "host":
                _parse_hosts_entry(entry)

    @property
    def flags_given(self) -> bool:
        return bool(self.servers and self.servers[0] not in ("host", "none")) or bool(
            self.search or self.options or self.domain
        )


@dataclass(frozen=True)
class NetResult:
    """What stage1 needs from the network: where to join, what the pod has, which files to mount.

    `resolv_conf`: bind-mount at /etc/resolv.conf (read-only if `resolv_conf_source == "host"`);
    None means no flag and no CNI result gave DNS: use a volume on /etc/resolv.conf, else the
    image's own file. `hosts`: always written, with the pod's hostname; `app_hosts()` says which
    file each app gets at /etc/hosts by rkt's order (flags, volume, image, this fallback).
    """

    kind: NetKind
    netns_path: str | None
    interfaces: tuple[Interface, ...] = ()
    resolv_conf: Path | None = None
    resolv_conf_source: str | None = None  # "flags", "cni", "host" or None
    hosts: Path | None = None
    hosts_source: str = "fallback"  # "flags", "host" or "fallback"
    hostname: str | None = None

    @property
    def addresses(self) -> tuple[str, ...]:
        return tuple(ip for itf in self.interfaces for ip in itf.ips)


# --- parsing what the user asked for -----------------------------------------------------------


def _check_ip(text: str, what: str) -> str:
    """The address in canonical form. An IPv6 scope (`fe80::1%eth0`) must be an interface name:
    `ipaddress` takes any text after the `%`, a newline included, which would reach resolv.conf."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise UsageError(f"{what}: {text!r} is not an IP address") from None
    scope = getattr(address, "scope_id", None)
    if scope is not None and not (
        0 < len(scope) <= 15 and all(c.isascii() and (c.isalnum() or c in "_.-") for c in scope)
    ):
        raise UsageError(f"{what}: {text!r}: the scope after % must be an interface name")
    return str(address)


def _parse_hosts_entry(entry: str) -> tuple[str, str]:
    ip, sep, host = entry.partition("=")
    if not sep or not _HOSTNAME.match(host):
        raise UsageError(f"--hosts-entry: {entry!r} is not IP=HOSTNAME or host")
    return _check_ip(ip, "--hosts-entry"), host


def parse_nets(nets: str) -> list[tuple[str, str]]:
    """`default`, `host`, `none`, `all` or `NAME[:K=V;K2=V2],...` → [(name, CNI_ARGS)]: the grammar
    the `rktd/net` annotation is checked with (netspec.py)."""
    try:
        return netspec.parse(nets)
    except ValueError as e:
        raise UsageError(f"--net: {e}") from None


def parse_port_flag(text: str) -> tuple[str, str | None, int]:
    """rkt's `--port=NAME:[IP:]PORT` → (name, host IP or None, host port)."""
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise UsageError(f"--port={text}: expected NAME:[IP:]PORT")
    ip = _check_ip(parts[1], f"--port={text}") if len(parts) == 3 else None
    port = parts[-1]
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--port={text}: {port!r} is not a port number")
    return parts[0], ip, int(port)


def _select(nets: str, local_config: Path) -> list[tuple[NetConf, str]]:
    wanted = parse_nets(nets)
    known = cni.load_networks(local_config)
    if wanted[0][0] == "all":  # rkt: every configured network in file order, then the built-in default
        files = [c for c in known.values() if c.source != "built-in"]
        builtin = [known["default"]] if known["default"].source == "built-in" else []
        return [(c, "") for c in files + builtin]
    out = []
    for name, args in wanted:
        conf = known.get(name)
        if conf is None:
            names = ", ".join(sorted(known))
            raise NetworkError(f"no network named {name!r}", hint=f"known: {names}, host, none")
        out.append((conf, args))
    return out


# --- state: written before each step, so teardown can undo it from the pod dir alone --------------


def _state_path(pod_dir: Path) -> Path:
    return pod_dir / "net" / "state.json"


def _write_state(pod_dir: Path, state: dict[str, Any]) -> None:
    path = _state_path(pod_dir)
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    write_atomic(path, json.dumps(state, indent=1, sort_keys=True).encode())


def _read_state(pod_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(_state_path(pod_dir).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise NetworkError(f"{_state_path(pod_dir)}: unreadable network state: {e}") from None
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise NetworkError(f"{_state_path(pod_dir)}: version: unknown network state format")
    return data


# --- namespaces ------------------------------------------------------------------------------------


def netns_name(pod_uuid: str) -> str:
    return NETNS_PREFIX + pod_uuid


def _create_netns(name: str) -> str:
    run(["ip", "netns", "add", name], what=f"creating network namespace {name}")
    run(["ip", "-n", name, "link", "set", "lo", "up"], what=f"bringing up lo in {name}")
    return str(NETNS_DIR / name)


def _delete_netns(name: str) -> None:
    path = NETNS_DIR / name
    if not os.path.lexists(path):
        return
    proc = run(["ip", "netns", "delete", name], check=False, what=f"deleting network namespace {name}")
    if proc.returncode != 0 and os.path.lexists(path):
        # A crash between creating the file and mounting on it leaves a plain file.
        with contextlib.suppress(FileNotFoundError):
            if not os.path.ismount(path):
                path.unlink()
    if os.path.lexists(path):
        raise NetworkError(f"cannot delete network namespace {path}: {proc.stderr.decode().strip()}")


# --- plugin chains ---------------------------------------------------------------------------------


def _port_network(confs: Sequence[NetConf]) -> int:
    """rkt: ports go through the first network with ipMasq, else the last one."""
    for i, c in enumerate(confs):
        if c.ip_masq:
            return i
    return len(confs) - 1


def _chain(conf: NetConf, data_dir: Path, ports: Sequence[PortForward]) -> list[dict[str, Any]]:
    """The plugin configurations to run for one network, with dataDir and port mappings filled in."""
    plugins = [json.loads(json.dumps(p)) for p in conf.plugins]
    for p in plugins:
        ipam = p.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local":
            ipam.setdefault("dataDir", str(data_dir))
    if not ports:
        return plugins
    if not cni.version_at_least(conf.cni_version, (0, 3, 0)):
        raise NetworkError(
            f"{conf.source}: cniVersion: {conf.cni_version} cannot chain portmap for forwarded ports",
            hint="use 0.3.0 or later",
        )
    mappings = [
        {"hostPort": p.host_port, "containerPort": p.container_port, "protocol": p.protocol}
        | ({"hostIP": p.host_ip} if p.host_ip else {})
        for p in ports
    ]
    takers = [p for p in plugins if (p.get("capabilities") or {}).get("portMappings")]
    if not takers:
        portmap = {"cniVersion": conf.cni_version, "name": conf.name, "type": "portmap", "snat": True}
        portmap["capabilities"] = {"portMappings": True}
        plugins.append(portmap)
        takers = [portmap]
    for p in takers:
        p.setdefault("runtimeConfig", {})["portMappings"] = mappings
    return plugins


def _add_network(
    entry: dict[str, Any], netns: str, cni_path: str, save: Callable[[], None]
) -> dict[str, Any]:
    """ADD the chain in order, each plugin getting the previous result; `save` records progress first."""
    prev: dict[str, Any] | None = None
    for i, conf in enumerate(entry["plugins"]):
        cni.find_plugin(str(conf["type"]), cni_path)  # a missing plugin is never started: nothing to DEL
        entry["started"] = i + 1
        save()
        stdin = dict(conf) | ({"prevResult": prev} if prev is not None else {})
        try:
            result = cni.invoke(
                stdin,
                "ADD",
                container_id=entry["container_id"],
                netns=netns,
                ifname=entry["ifname"],
                args=entry["args"],
                cni_path=cni_path,
            )
        except PluginError:
            entry["failed"] = True  # the plugin ran and answered with an error object
            save()
            raise
        prev = result if result is not None else prev
    if prev is None:
        raise NetworkError(f"network {entry['name']!r}: no plugin returned a result")
    return prev


def _del_network(entry: dict[str, Any], netns: str, cni_path: str) -> list[str]:
    """DEL every started plugin of the chain in reverse order; return the failures (all are attempted).

    A DEL that fails is tried once more: plugins delete as they go, so after a crash in the middle
    of an ADD the first DEL can stumble on what the ADD never made (ptp: a masquerade chain) and
    the second finds nothing left to stumble on. A plugin whose ADD answered with an error may
    refuse the DEL for the same reason (a bad configuration): that is logged, not kept as a
    failure, or the pod could never be removed.
    """
    errors = []
    started = entry.get("started", len(entry["plugins"]))
    for i in reversed(range(started)):
        stdin = dict(entry["plugins"][i]) | ({"prevResult": entry["result"]} if entry.get("result") else {})
        for attempt in (1, 2):
            try:
                cni.invoke(
                    stdin,
                    "DEL",
                    container_id=entry["container_id"],
                    netns=netns if netns and os.path.exists(netns) else "",
                    ifname=entry["ifname"],
                    args=entry["args"],
                    cni_path=cni_path,
                )
                break
            except (NetworkError, CommandError) as e:
                if attempt == 1:
                    log.warning("%s; trying again", e)
                elif entry.get("failed") and i == started - 1 and isinstance(e, PluginError):
                    log.warning("%s (its ADD had failed too; nothing to undo)", e)
                else:
                    errors.append(str(e))
    return errors


# --- host ports and the lock around portmap ---------------------------------------------------------


# portmap's chains are the host's, shared by every pod whatever its --dir: so is the lock around them.
PORTMAP_LOCK = Path("/run/rktd/portmap.lock")


@contextlib.contextmanager
def _portmap_lock() -> Iterator[None]:
    PORTMAP_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with open(PORTMAP_LOCK, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def _no_lock() -> Iterator[None]:
    yield


def _check_host_ports(entry: dict[str, Any]) -> None:
    """Refuse a host port that another pod forwards already or that a host process listens on:
    portmap would add a DNAT rule that never matches (or hides the host's service)."""
    mappings = [m for p in entry["plugins"] for m in (p.get("runtimeConfig") or {}).get("portMappings", ())]
    forwarded = cni.forwarded_host_ports(cni.nat_rules())
    for m in mappings:
        proto, port = m["protocol"], m["hostPort"]
        if (proto, port) in forwarded:
            raise NetworkError(f"host port {port}/{proto} is already forwarded to another pod")
        family = socket.AF_INET6 if ":" in (m.get("hostIP") or "") else socket.AF_INET
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        with socket.socket(family, kind) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((m.get("hostIP") or "", port))
            except OSError as e:
                raise NetworkError(f"host port {port}/{proto} is in use on the host: {e.strerror}") from None


def _lease_dirs(entry: dict[str, Any]) -> list[Path]:
    """host-local's lease directories of the started plugins of one network."""
    out = []
    for plugin in entry["plugins"][: entry.get("started", len(entry["plugins"]))]:
        ipam = plugin.get("ipam")
        if isinstance(ipam, dict) and ipam.get("type") == "host-local" and ipam.get("dataDir"):
            out.append(Path(ipam["dataDir"]) / entry["name"])
    return out


# --- resolv.conf and hosts -------------------------------------------------------------------------

_HOSTS_DEFAULTS = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"


def resolv_conf_text(
    servers: Sequence[str], search: Sequence[str], options: Sequence[str], domain: str | None
) -> str:
    lines = ["# Generated by rktd"]
    if search:
        lines.append("search " + " ".join(search))
    lines += [f"nameserver {s}" for s in servers]
    if options:
        lines.append("options " + " ".join(options))
    if domain:
        lines.append(f"domain {domain}")
    return "\n".join(lines) + "\n"


def hosts_with_hostname(text: str, hostname: str | None, address: str) -> str:
    """`text` (an /etc/hosts) plus a line for `hostname` unless it already resolves there."""
    if not hostname:
        return text
    for line in text.splitlines():
        if hostname in line.split("#", 1)[0].split()[1:]:
            return text
    sep = "" if not text or text.endswith("\n") else "\n"
    return f"{text}{sep}{address}\t{hostname}\n"


def _hosts_text(dns: DnsOptions, hostname: str | None, address: str) -> tuple[str, str]:
    if "host" in dns.hosts_entries:
        try:
            base = Path("/etc/hosts").read_text()
        except OSError:
            base = _HOSTS_DEFAULTS
        return hosts_with_hostname(base, hostname, address), "host"
    grouped: dict[str, list[str]] = {}
    for entry in dns.hosts_entries:
        ip, host = _parse_hosts_entry(entry)
        grouped.setdefault(ip, []).append(host)
    text = (
        "# Generated by rktd\n"
        + _HOSTS_DEFAULTS
        + "".join(f"{ip}\t{' '.join(h)}\n" for ip, h in grouped.items())
    )
    return hosts_with_hostname(text, hostname, address), "flags" if grouped else "fallback"


def _write_file(path: Path, text: str) -> Path:
    write_atomic(path, text.encode(), 0o644, durable=False)
    return path


def app_hosts(
    result: NetResult, pod_dir: Path, app: str, rootfs: Path | None, *, volume: bool
) -> Path | None:
    """The file to bind-mount at one app's /etc/hosts, by rkt's precedence, or None (keep the volume).

    `--hosts-entry` flags (or `host`) first; then a volume on /etc/hosts (`volume=True`: None is
    returned); then the image's own /etc/hosts, copied with the pod's hostname added so that it
    always resolves; else the generated fallback. The image's file is used only if it and its
    directory are no symlinks (a symlink could make the host's files readable in the pod).
    """
    if result.hosts is None or result.hosts_source != "fallback":
        return result.hosts
    if volume:
        return None
    image_hosts = _plain_file(rootfs / "etc" / "hosts") if rootfs is not None else None
    if image_hosts is None:
        return result.hosts
    address = result.addresses[0] if result.addresses else "127.0.0.1"
    text = hosts_with_hostname(image_hosts, result.hostname, address)
    return _write_file(pod_dir / "net" / f"hosts-{app}", text)


def _plain_file(path: Path) -> str | None:
    try:
        if path.parent.is_symlink() or not path.parent.is_dir():
            return None
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            return None
        return f.read(1 << 20).decode(errors="replace")


def _dns_files(
    pod_dir: Path, dns: DnsOptions, cni_dns: Dns | None, hostname: str | None, address: str
) -> dict[str, Any]:
    netdir = pod_dir / "net"
    netdir.mkdir(parents=True, exist_ok=True)
    resolv: Path | None = None
    source: str | None = None
    if dns.servers[:1] == ("host",):
        resolv, source = Path("/etc/resolv.conf"), "host"
    elif dns.flags_given:
        servers = () if dns.servers[:1] == ("none",) else dns.servers
        text = resolv_conf_text(servers, dns.search, dns.options, dns.domain)
        resolv, source = _write_file(netdir / "resolv.conf", text), "flags"
    elif cni_dns is not None and cni_dns.nameservers and dns.servers[:1] != ("none",):
        text = resolv_conf_text(cni_dns.nameservers, cni_dns.search, cni_dns.options, cni_dns.domain)
        resolv, source = _write_file(netdir / "resolv.conf", text), "cni"
    hosts_text, hosts_source = _hosts_text(dns, hostname, address)
    hosts = _write_file(netdir / "hosts", hosts_text)
    return {
        "resolv_conf": str(resolv) if resolv else None,
        "resolv_conf_source": source,
        "hosts": str(hosts),
        "hosts_source": hosts_source,
    }


# --- the API stage0 calls --------------------------------------------------------------------------


def _result_from_state(state: dict[str, Any]) -> NetResult:
    files = state.get("files") or {}
    interfaces = tuple(
        cni.interfaces_of(e["result"], e["name"], e["ifname"]) for e in state["networks"] if e.get("result")
    )
    return NetResult(
        kind=NetKind(state["kind"]),
        netns_path=state.get("netns"),
        interfaces=interfaces,
        resolv_conf=Path(files["resolv_conf"]) if files.get("resolv_conf") else None,
        resolv_conf_source=files.get("resolv_conf_source"),
        hosts=Path(files["hosts"]) if files.get("hosts") else None,
        hosts_source=files.get("hosts_source", "fallback"),
        hostname=state.get("hostname"),
    )


def _ports_check(kind: NetKind, ports: Sequence[PortForward]) -> None:
    if ports and kind == NetKind.NONE:
        raise NetworkError("--net=none: ports cannot be forwarded to a pod without a network")
    seen = [(p.host_ip, p.host_port, p.protocol) for p in ports]
    if len(set(seen)) != len(seen):
        raise UsageError("the same host port is forwarded twice")
    for p in ports:
        if p.protocol not in ("tcp", "udp"):
            raise UsageError(f"port {p.name or p.container_port}: protocol {p.protocol!r} is not tcp or udp")
        if not (0 < p.host_port < 65536 and 0 < p.container_port < 65536):
            raise UsageError(f"port {p.name or p.container_port}: port numbers must be 1-65535")


def setup(
    pod_uuid: str,
    pod_dir: Path,
    nets: str,
    *,
    local_config: Path,
    ports: Sequence[PortForward] = (),
    dns: DnsOptions | None = None,
    hostname: str | None = None,
    data_dir: Path = DEFAULT_DATA_DIR,
    cni_path: str = cni.DEFAULT_CNI_PATH,
) -> NetResult:
    """Create the pod's network; on any failure undo everything and raise NetworkError.

    `data_dir` holds host-local's leases (`<data_dir>/<network>/<ip>`) unless a network's own
    configuration names a `dataDir`; `cni_path` is CNI_PATH, where plugins are looked up.
    """
    if not _CONTAINER_ID.match(pod_uuid):
        raise UsageError(f"pod UUID {pod_uuid!r} is not a valid CNI container ID")
    if hostname is not None and not _HOSTNAME.match(hostname):
        raise UsageError(f"hostname {hostname!r} is not a valid host name")
    wanted = parse_nets(nets)
    kind = NetKind(wanted[0][0]) if wanted[0][0] in ("host", "none") else NetKind.CNI
    _ports_check(kind, ports)
    selected = _select(nets, local_config) if kind == NetKind.CNI else []
    # A stale network of this pod (an earlier start that crashed) goes first; without state,
    # teardown still removes a namespace of this pod's name.
    if _read_state(pod_dir) is not None:
        log.info("pod %s: tearing down a stale network before setting it up again", pod_uuid)
    teardown(pod_uuid, pod_dir, local_config=local_config)
    ns = None if kind == NetKind.HOST else netns_name(pod_uuid)
    state: dict[str, Any] = {
        "version": STATE_VERSION,
        "pod_uuid": pod_uuid,
        "kind": kind,
        "netns": str(NETNS_DIR / ns) if ns else None,
        "netns_name": ns,
        "cni_path": cni_path,
        "data_dir": str(data_dir),
        "hostname": hostname,
        "networks": [],
    }
    try:
        _bring_up(state, pod_dir, selected, ports, data_dir)
        result = _result_from_state(state)
        cni_dns = next((d for e in state["networks"] if (d := cni.dns_of(e["result"])).nameservers), None)
        address = result.addresses[0] if result.addresses else "127.0.0.1"
        state["files"] = _dns_files(pod_dir, dns or DnsOptions(), cni_dns, hostname, address)
        _write_state(pod_dir, state)
    except BaseException as e:
        _rollback(pod_uuid, pod_dir, local_config, e)
        raise
    return _result_from_state(state)


def _bring_up(
    state: dict[str, Any],
    pod_dir: Path,
    selected: Sequence[tuple[NetConf, str]],
    ports: Sequence[PortForward],
    data_dir: Path,
) -> None:
    """Namespace, then each network in order as eth0, eth1, …; the state is saved before each step."""
    _write_state(pod_dir, state)
    if state["netns_name"]:
        _create_netns(state["netns_name"])
    port_net = _port_network([c for c, _ in selected]) if ports else -1
    for i, (conf, args) in enumerate(selected):
        entry: dict[str, Any] = {
            "name": conf.name,
            "ifname": f"eth{i}",
            "args": args,
            "container_id": state["pod_uuid"],
            "plugins": _chain(conf, data_dir, ports if i == port_net else ()),
            "portmap": i == port_net,
            "started": 0,
            "result": None,
        }
        state["networks"].append(entry)
        entry["result"] = _add_with_lock(entry, state, pod_dir)
        _write_state(pod_dir, state)


def _add_with_lock(entry: dict[str, Any], state: dict[str, Any], pod_dir: Path) -> dict[str, Any]:
    def save() -> None:
        _write_state(pod_dir, state)

    try:
        if entry["portmap"]:
            with _portmap_lock():
                _check_host_ports(entry)
                return _add_network(entry, state["netns"], state["cni_path"], save)
        return _add_network(entry, state["netns"], state["cni_path"], save)
    except PluginError as e:
        if "no IP addresses available" in e.plugin_msg:
            raise NetworkError(_exhausted(entry), hint=e.plugin_msg) from None
        raise


def _exhausted(entry: dict[str, Any]) -> str:
    ipam: dict[str, Any] = next((p["ipam"] for p in entry["plugins"] if isinstance(p.get("ipam"), dict)), {})
    try:
        count = f"all {cni.ipam_capacity(ipam)} addresses"
    except (NetworkError, ValueError, KeyError):
        count = "every address"
    return f"network {entry['name']!r} is full: {count} are in use by other pods"


def _rollback(pod_uuid: str, pod_dir: Path, local_config: Path, cause: BaseException) -> None:
    try:
        teardown(pod_uuid, pod_dir, local_config=local_config)
    except NetworkError as undo:
        log.error("pod %s: undoing a failed network setup also failed: %s", pod_uuid, undo)
        if isinstance(cause, NetworkError):
            cause.hint = f"{cause.hint + '; ' if cause.hint else ''}cleanup failed, run rktd gc: {undo}"


def teardown(
    pod_uuid: str, pod_dir: Path, *, local_config: Path, cni_path: str = cni.DEFAULT_CNI_PATH
) -> None:
    """Undo `setup()` from `<pod_dir>/net/state.json`: DEL every network (last first), delete the netns.

    Idempotent; safe after a crash at any point of setup. `local_config` is not needed (the state
    holds the exact configurations that were ADDed, as CNI DEL requires) and is accepted for symmetry.
    If a DEL fails, the namespace and the state are kept so that a later teardown can retry.
    Nothing the host runs or deletes is taken from the state as is: plugins come from `cni_path` (the
    configured CNI_PATH, not the state's) by plain names only, and the container ID and namespace
    are this pod's own.
    """
    del local_config
    state = _read_state(pod_dir)
    if state is None:
        with contextlib.suppress(NetworkError):
            _delete_netns(netns_name(pod_uuid))
        return
    if state.get("cni_path") != cni_path:
        log.warning(
            "pod %s: network state names CNI_PATH %r; using %s", pod_uuid, state.get("cni_path"), cni_path
        )
    netns = str(NETNS_DIR / netns_name(pod_uuid)) if state.get("netns") else ""
    errors: list[str] = []
    with _portmap_lock() if any(e.get("portmap") for e in state["networks"]) else _no_lock():
        for entry in reversed(state["networks"]):
            errors += _del_network(entry | {"container_id": pod_uuid}, netns, cni_path)
        if state["networks"] and not errors:
            try:
                cni.sweep_nat(pod_uuid, [e["name"] for e in state["networks"]])
            except NetworkError as e:
                errors.append(str(e))
            for entry in state["networks"]:
                for store in _lease_dirs(entry):
                    cni.sweep_leases(store, pod_uuid)
        if any(e.get("portmap") for e in state["networks"]):
            cni.prune_portmap_chains()
    if errors:
        raise NetworkError(
            f"pod {pod_uuid}: network teardown incomplete: {errors[0]}", hint="rktd gc retries it"
        )
    if state.get("netns_name"):
        _delete_netns(netns_name(pod_uuid))
    for path in (pod_dir / "net").glob("*"):
        if path.name in _OWN_FILES or path.name.startswith(("hosts-", ".")):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
    with contextlib.suppress(OSError):
        (pod_dir / "net").rmdir()  # only if nothing else was put there


def check(pod_dir: Path) -> None:
    """CNI CHECK every network of a running pod (CNI 0.4.0+); raise NetworkError on the first problem."""
    state = _read_state(pod_dir)
    if state is None:
        raise NetworkError(f"{pod_dir}: the pod has no network state")
    for entry in state["networks"]:
        if not entry.get("result"):
            raise NetworkError(f"network {entry['name']!r} was never set up completely")
        for conf in entry["plugins"]:
            if not cni.version_at_least(str(conf["cniVersion"]), (0, 4, 0)):
                continue
            v6 = any(
                ":" in ip for ip in cni.interfaces_of(entry["result"], entry["name"], entry["ifname"]).ips
            )
            if conf["type"] == "portmap" and not v6:
                continue  # portmap 1.1 CHECKs its IPv6 chain even for an IPv4-only pod, and fails
            cni.invoke(
                dict(conf) | {"prevResult": entry["result"]},
                "CHECK",
                container_id=entry["container_id"],
                netns=state["netns"],
                ifname=entry["ifname"],
                args=entry["args"],
                cni_path=state["cni_path"],
            )


def status(pod_dir: Path) -> NetResult | None:
    """The pod's network as recorded by setup (for `rktd status`), or None if it has none."""
    state = _read_state(pod_dir)
    return _result_from_state(state) if state is not None else None
