"""Manifest in, units out: the pure half of rktd-generator (no I/O; `generator.py` writes).

`convert(podfile, pods)` turns one parsed manifest, plus the names of every pod the generator found
(so that `rktd/after` and `rktd/requires` can name pods, and a dangling name is this manifest's
error), into `Output`s: `pod@NAME.service`, `pod@NAME.socket` for socket-activated ports, and the
`.wants` links. Units are rendered from `templates/*.j2` (compiled to plain Python, see
`templatec.py`), parsed back with `unitfile.parse`, and their ExecStart is checked to read back as
the argv intended: a value that would change the command line is refused, never written.

Decisions:
- ExecStart names the manifest by absolute path and passes what the annotations imply as
  `rktd run` flags (`--stage1=`, `--net=` for nspawn, one `--dns=`/`--dns-search=`/`--dns-opt=`
  per word); the environment, apps and images stay in the manifest, which stage0 reads.
- A pod has a network unless `rktd/net` is `none`: `host` and fly pods too want
  network-online.target, since their apps use the host's network.
- NotifyAccess=main: stage0 execs stage1, so the unit's main process is stage1, which sends
  READY=1 itself (nspawn does); apps in the pod cannot forge the pod's state.
- `rktd run --uuid-file-save=/run/rktd/pod@NAME/uuid` (RuntimeDirectory=rktd/pod@NAME, made by
  systemd before start and removed after stop) and `ExecStopPost=-rktd rm --uuid-file=…` remove
  the pod that just stopped, with its network (rkt's `rm --uuid-file`); `-` so that a failed
  cleanup (e.g. stage0 failed before writing the file) never masks the pod's own result.
- A socket unit gets a `sockets.target.wants` link (generated units cannot be enabled), and its
  service Requires= and is After= it, so a pod started directly still receives its fds.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence

from rktd_units import annotations as rktd_annotations
from rktd_units._compiled_templates import TEMPLATES
from rktd_units.errors import ManifestError, RktdError
from rktd_units.model import ManifestFormat, PodFile, Protocol
from rktd_units.unitfile import (
    Raw,
    UnitFile,
    UnitFileError,
    check_value,
    escape_specifiers,
    exec_line,
    parse,
    quote_word,
    split_exec,
)

TYPE_CHECKING = False  # typing costs a fifth of an interpreter start: only for mypy (STYLE.md 13)
if TYPE_CHECKING:
    from typing import Any

GENERATOR = "rktd-generator"
RKTD = "/usr/bin/rktd"
RUN_DIR = "/run"  # what %t means for the system manager; written out, so the unit has no specifiers
NETWORK_TARGET = "network-online.target"
SOCKETS_TARGET = "sockets.target"
DEFAULT_RESTART = "on-failure"  # appc pods; Kubernetes pods carry restartPolicy as rktd/restart
# The pod's init sends SIGKILL to its apps rktd/stop-timeout seconds after SIGTERM, then runs post-stop
# handlers and nspawn tears down: systemd's own SIGKILL (TimeoutStopSec=) comes this much later.
STOP_MARGIN = 5
# Annotations passed on as `rktd run` flags (rkt's spellings, DESIGN.md), one flag per word.
_WORD_FLAGS = (("--dns", "rktd/dns"), ("--dns-search", "rktd/dns-search"), ("--dns-opt", "rktd/dns-opt"))
_UNIT_SUFFIX = re.compile(r"\.[a-z]+\Z")


class Output:
    """One file to write, relative to the generator's output directory: a unit, or a symlink to
    the unit at `link` (relative to the same directory). (A plain class: cheaper to import.)"""

    __slots__ = ("link", "path", "unit")

    def __init__(self, path: str, unit: UnitFile | None = None, link: str | None = None) -> None:
        self.path, self.unit, self.link = path, unit, link

    def __repr__(self) -> str:
        return f"Output({self.path!r}, unit={self.unit!r}, link={self.link!r})"


# -- Filters: how the templates escape each kind of value ------------------------------------------


def _f_value(value: object) -> str:
    text = escape_specifiers(str(value)) if not isinstance(value, Raw) else str(value)
    check_value(text, "value")
    return text


def _f_units(names: Sequence[str]) -> str:
    return " ".join(_f_value(n) for n in names)


def _f_exec(argv: Sequence[str], prefix: str = "") -> str:
    return exec_line(argv, prefix)


def _f_word(value: str) -> str:
    return quote_word(value, env=False)


FILTERS: dict[str, Callable[..., str]] = {
    "value": _f_value,
    "units": _f_units,
    "exec": _f_exec,
    "word": _f_word,
}


if TYPE_CHECKING:
    Templates = dict[str, Callable[[dict[str, Any], dict[str, Callable[..., str]]], str]]


def render(template: str, context: dict[str, Any], templates: Templates | None = None) -> str:
    return (templates or TEMPLATES)[template](context, FILTERS)


# -- Conversion ------------------------------------------------------------------------------------


def _annotation_prefix(podfile: PodFile) -> str:
    return "metadata.annotations" if podfile.format == ManifestFormat.KUBERNETES else "annotations"


def _fail(podfile: PodFile, field: str, message: str, hint: str | None = None) -> ManifestError:
    return ManifestError(podfile.path, field, message, hint=hint)


def _check_source(podfile: PodFile) -> None:
    if not rktd_annotations.AC_NAME_RE.fullmatch(podfile.name):
        raise _fail(podfile, "(file name)", f"{podfile.name!r} is not a pod name (an AC Name)")
    try:
        check_value(podfile.path, "path")
    except UnitFileError as e:
        raise _fail(podfile, "(file name)", f"cannot be named in a unit: {e.message}", e.hint) from None
    if not podfile.path.startswith("/"):
        raise _fail(podfile, "(file name)", "not an absolute path")


def _word(podfile: PodFile, field: str, word: str) -> str:
    """A command-line word, checked now so that an error names the manifest field it came from."""
    try:
        quote_word(word)
    except UnitFileError as e:
        raise _fail(podfile, field, e.message, e.hint) from None
    return word


def runtime_directory(name: str) -> str:
    """The pod unit's RuntimeDirectory= (under /run): it holds the UUID of the pod it runs."""
    return f"rktd/pod@{name}"


def uuid_file(name: str) -> str:
    return f"{RUN_DIR}/{runtime_directory(name)}/uuid"


def stop_post(name: str) -> list[str]:
    """ExecStopPost: remove the pod that just stopped, with its network (rkt's `rm --uuid-file`)."""
    return [RKTD, "rm", f"--uuid-file={uuid_file(name)}"]


def _exec_start(podfile: PodFile, ann: dict[str, Any], prefix: str) -> list[str]:
    argv = [RKTD, "run", _word(podfile, "(file name)", f"--pod-manifest={podfile.path}")]
    argv.append(f"--uuid-file-save={uuid_file(podfile.name)}")
    argv.append(f"--stage1={ann['rktd/stage1']}")
    if ann["rktd/stage1"] == "nspawn":
        argv.append(_word(podfile, f"{prefix}[rktd/net]", f"--net={ann['rktd/net']}"))
    for flag, key in _WORD_FLAGS:
        argv.extend(_word(podfile, f"{prefix}[{key}]", f"{flag}={v}") for v in ann[key])
    return argv


def _deps(podfile: PodFile, ann: dict[str, Any], key: str, prefix: str, pods: Collection[str]) -> list[str]:
    out = []
    for word in ann[key]:
        if _UNIT_SUFFIX.search(word):
            out.append(word)
            continue
        if word == podfile.name:
            raise _fail(podfile, f"{prefix}[{key}]", f"pod {word!r} names itself")
        if word not in pods:
            hint = "add its manifest, or name a unit such as NAME.service"
            raise _fail(podfile, f"{prefix}[{key}]", f"no pod named {word!r}", hint)
        out.append(f"pod@{word}.service")
    return out


def _unique(*groups: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(u for g in groups for u in g))


def _listen(podfile: PodFile) -> list[tuple[str, str]]:
    """`(ListenStream|ListenDatagram, [hostIP:]hostPort)` per socket-activated port, in app order."""
    pod = podfile.pod
    out: list[tuple[str, str]] = []
    for ra, port, pp in pod.socket_activated_ports():
        field = f"ports[{pod.ports.index(pp)}]"
        if port.count != 1:
            where = f"apps[{pod.apps.index(ra)}].app.ports[{ra.app.ports.index(port) if ra.app else 0}]"
            raise _fail(podfile, f"{where}.count", "a socket-activated port must be a single port")
        if not 0 < pp.host_port < 65536:
            raise _fail(podfile, f"{field}.hostPort", f"{pp.host_port} is not a port number")
        address = str(pp.host_port)
        if pp.host_ip:
            import ipaddress  # only pods that name a host address pay for this import

            try:
                ip = ipaddress.ip_address(pp.host_ip)
            except ValueError:
                raise _fail(podfile, f"{field}.hostIP", f"{pp.host_ip!r} is not an IP address") from None
            if "%" in pp.host_ip:  # a zone is any text to ipaddress: it must not reach ListenStream=
                raise _fail(podfile, f"{field}.hostIP", f"{pp.host_ip!r} is a scoped address: not supported")
            address = f"[{ip}]:{address}" if ip.version == 6 else f"{ip}:{address}"
        key = "ListenStream" if port.protocol == Protocol.TCP else "ListenDatagram"
        if (key, address) in out:
            raise _fail(podfile, f"{field}.hostPort", f"{key}={address} is listed twice")
        out.append((key, address))
    return out


def _service_context(
    podfile: PodFile, ann: dict[str, Any], prefix: str, pods: Collection[str], socket: str | None
) -> dict[str, Any]:
    name = podfile.name
    network = [NETWORK_TARGET] if ann["rktd/net"] != "none" or ann["rktd/stage1"] == "fly" else []
    sockets = [socket] if socket else []
    return {
        "static": False,
        "name": name,
        "description": f"rktd pod {name}",
        "source_path": podfile.path,
        "wants": network,
        "requires": _unique(sockets, _deps(podfile, ann, "rktd/requires", prefix, pods)),
        "after": _unique(network, sockets, _deps(podfile, ann, "rktd/after", prefix, pods)),
        "runtime_directory": runtime_directory(name),
        "exec_start": _exec_start(podfile, ann, prefix),
        "exec_stop_post": stop_post(name),
        "restart": ann["rktd/restart"] or DEFAULT_RESTART,
        "stop_timeout": ann["rktd/stop-timeout"] + STOP_MARGIN,
        "syslog_identifier": f"pod-{name}",
        "log_extra_fields": f"RKTD_POD={name}",
    }


def _checked(path: str, text: str, argv: Sequence[str] | None = None) -> UnitFile:
    """Parse the rendered text back; its ExecStart must read back as `argv` exactly."""
    unit = parse(text, path)
    if argv is not None:
        got = [split_exec(v)[1] for v in unit.get("Service", "ExecStart")]
        if got != [[list(argv)]]:
            raise RktdError(f"{path}: internal error: ExecStart reads back as {got!r}, not {argv!r}")
    return unit


def convert(podfile: PodFile, pods: Collection[str], templates: Templates | None = None) -> list[Output]:
    """The units and links for one pod; ManifestError (with the manifest's path) if it cannot be.
    `templates` replaces the compiled templates (the tests pass jinja2's own rendering)."""
    _check_source(podfile)
    prefix = _annotation_prefix(podfile)
    try:
        ann = rktd_annotations.read({a.name: a.value for a in podfile.pod.annotations}, field_prefix=prefix)
    except ManifestError as e:
        raise e.with_path(podfile.path) from None
    name = podfile.name
    service = f"pod@{name}.service"
    listen = _listen(podfile)
    socket = f"pod@{name}.socket" if listen else None
    context = _service_context(podfile, ann, prefix, pods, socket)
    try:
        text = render("pod.service.j2", context, templates)
        outputs = [Output(service, _checked(service, text, context["exec_start"]))]
        if socket:
            sock = {
                "name": name,
                "description": f"Sockets of rktd pod {name}",
                "source_path": podfile.path,
                "listen": listen,
                "free_bind": any(":" in a for _, a in listen),
                "service": service,
            }
            outputs.append(Output(socket, _checked(socket, render("pod.socket.j2", sock, templates))))
    except UnitFileError as e:  # the checks above should have caught it: refuse rather than write
        raise _fail(podfile, "(unit)", e.message, e.hint) from None
    links = [Output(f"{t}.wants/{service}", link=service) for t in ann["rktd/wanted-by"]]
    if socket:
        links.append(Output(f"{SOCKETS_TARGET}.wants/{socket}", link=socket))
    return outputs + sorted(links, key=lambda o: o.path)


def static_template(templates: Templates | None = None) -> str:
    """The text of the installed template unit `pod@.service`: the same template, with specifiers."""
    defaults = {a.name: a.default for a in rktd_annotations.ANNOTATIONS}
    context = {
        "static": True,
        "name": Raw("%i"),
        "description": Raw("rktd pod %i"),
        "source_path": None,
        "wants": [NETWORK_TARGET],
        "requires": [],
        "after": [NETWORK_TARGET],
        "runtime_directory": Raw(runtime_directory("%i")),
        "exec_start": [RKTD, "run", Raw("--pod-manifest=%i"), Raw(f"--uuid-file-save={uuid_file('%i')}")],
        "exec_stop_post": [RKTD, "rm", Raw(f"--uuid-file={uuid_file('%i')}")],
        "restart": DEFAULT_RESTART,
        "stop_timeout": defaults["rktd/stop-timeout"] + STOP_MARGIN,
        "syslog_identifier": Raw("pod-%i"),
        "log_extra_fields": Raw("RKTD_POD=%i"),
    }
    return render("pod.service.j2", context, templates)
