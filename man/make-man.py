#!/usr/bin/python3
"""Build-time generator for the man pages and shell completions, derived from the code itself.

rktd(1) comes from the click command tree (every verb in `rktd_units.cli.COMMANDS`, its options and
help), rktd.pod(5) from the annotation table (`rktd_units.annotations.ANNOTATIONS`) and the manifest
formats, so neither can drift from what the code reads. Run by meson; also by hand:

    PYTHONPATH=. man/make-man.py --page rktd.pod.5 OUT
    PYTHONPATH=. man/make-man.py --completion bash OUT
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rktd_units import __version__, annotations, seccomp_groups
from rktd_units.cli import INSECURE_OPTIONS, cli

MANUAL = "rktd-units"


def esc(text: str) -> str:
    """Escape text for roff: backslashes, hyphens, and control characters at the start of a line."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.splitlines() or [""]:
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def bold(text: str) -> str:
    return f"\\fB{esc(text)}\\fR"


def italic(text: str) -> str:
    return f"\\fI{esc(text)}\\fR"


def paragraphs(text: str) -> list[str]:
    """Split a docstring into paragraphs, each joined into one line (roff fills them)."""
    out, cur = [], []
    for line in click.unstyle(text or "").splitlines():
        if line.strip():
            cur.append(line.strip())
        elif cur:
            out.append(" ".join(cur))
            cur = []
    if cur:
        out.append(" ".join(cur))
    return [p for p in out if p != "\b"]


def header(name: str, section: str, version: str) -> list[str]:
    epoch = int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    date = time.strftime("%Y-%m-%d", time.gmtime(epoch)) if epoch else ""
    return [f'.TH "{name.upper()}" "{section}" "{date}" "{MANUAL} {version}" "{MANUAL}"']


def section(title: str) -> list[str]:
    return [f".SH {title.upper()}"]


def text(*paras: str) -> list[str]:
    out = []
    for p in paras:
        out += [".PP", esc(p)]
    return out


def tagged(tag: str, body: Iterable[str]) -> list[str]:
    return [".TP", tag, *(esc(p) for p in body)]


def example(*lines: str) -> list[str]:
    return [".PP", ".RS 4", ".nf", *(esc(line) for line in lines), ".fi", ".RE"]


# -- rktd(1) ---------------------------------------------------------------------------------------


def metavar(param: click.Parameter, ctx: click.Context) -> str:
    try:
        return param.make_metavar(ctx)  # type: ignore[call-arg]  # click >= 8.2
    except TypeError:
        return param.make_metavar()  # type: ignore[call-arg]  # click 8.1 (Debian 12)


def option_tag(param: click.Parameter, ctx: click.Context) -> str:
    assert isinstance(param, click.Option)
    names = ", ".join(bold(o) for o in [*param.opts, *param.secondary_opts])
    if not param.is_flag and not param.count:
        names += " " + italic(metavar(param, ctx))
    return names


def option_help(param: click.Option) -> list[str]:
    body = paragraphs(param.help or "")
    default = param.default
    if param.show_default and default not in (None, "", (), False) and not callable(default):
        shown = default if isinstance(default, str) else " ".join(map(str, default))  # type: ignore[call-overload]
        body.append(f"Default: {shown}.")
    return body or [""]


def command_lines(path: list[str], cmd: click.Command, ctx: click.Context) -> list[str]:
    out: list[str] = []
    usage = " ".join(cmd.collect_usage_pieces(ctx))
    out += [".SS " + esc(" ".join(path)), ".PP", f"{bold(' '.join(path))} {esc(usage)}"]
    out += text(*paragraphs(cmd.help or cmd.short_help or ""))
    options = [p for p in cmd.params if isinstance(p, click.Option) and not p.hidden]
    for p in options:
        out += tagged(option_tag(p, ctx), option_help(p))
    if isinstance(cmd, click.Group):
        for sub_name in cmd.list_commands(ctx):
            sub = cmd.get_command(ctx, sub_name)
            if sub is None or sub.hidden:
                continue
            sub_ctx = click.Context(sub, info_name=sub_name, parent=ctx)
            out += command_lines([*path, sub_name], sub, sub_ctx)
    return out


def page_rktd(version: str) -> list[str]:
    ctx = click.Context(cli, info_name="rktd")
    out = header("rktd", "1", version)
    out += [*section("name"), "rktd \\- run rkt\\-style pods as systemd services (stage0, operator verbs)"]
    usage = f"{bold('rktd')} [{italic('GLOBAL OPTIONS')}] {italic('COMMAND')} ..."
    out += [*section("synopsis"), ".PP", usage]
    out += section("description")
    out += text(*paragraphs(cli.help or ""))
    out += text(
        "Pods are usually started by systemd: rktd-generator(8) turns each manifest in /etc/rktd/pods "
        'into a pod@NAME.service whose ExecStart runs "rktd run" (stage0), which prepares the pod and '
        'hands over to stage1 (systemd-nspawn, or the chroot "fly" flavour). The other verbs inspect '
        "and manage images, trust and pods.",
    )
    out += section("global options")
    for p in cli.params:
        if isinstance(p, click.Option) and not p.hidden:
            out += tagged(option_tag(p, ctx), option_help(p))
    out += tagged(bold("-h") + ", " + bold("--help"), ["Show the help of rktd or of a command."])
    out += insecure_section()
    out += section("commands")
    names = cli.list_commands(ctx)
    for name in names:
        cmd = cli.get_command(ctx, name)
        if cmd is None:
            raise SystemExit(f"make-man: command {name!r} in rktd_units.cli.COMMANDS cannot be loaded")
        if cmd.hidden:
            continue
        out += command_lines(["rktd", name], cmd, click.Context(cmd, info_name=name, parent=ctx))
    out += section("exit status")
    out += text(
        "0 on success; 254 when rktd itself fails (as rkt's stage0); 1 for invalid manifests; otherwise "
        "a pod's exit status is that of its failing app.",
    )
    out += section("environment")
    out += tagged(
        bold("RKTD_PODS_PATH"), ["Colon-separated manifest directories replacing the default list."]
    )
    out += tagged(bold("RKTD_DEBUG"), ["Set to 1 to log commands and show tracebacks, as --debug."])
    out += section("files")
    out += tagged(bold("/etc/rktd/"), ["Local configuration: pods/, net.d/ (CNI networks), trustedkeys/."])
    out += tagged(bold("/var/lib/rktd/"), ["The image store and pod state."])
    out += section("see also")
    out += [".PP", "rktd\\-generator(8), rktd.pod(5), systemd\\-nspawn(1), machinectl(1), systemctl(1)"]
    return out


# -- rktd-generator(8) -----------------------------------------------------------------------------


# What each --insecure-options value skips (make-man fails when rktd_units.cli.INSECURE_OPTIONS changes
# and this table does not).
INSECURE_HELP = {
    "none": "Skip nothing (the default).",
    "image": "Fetch, import and run images without a verified signature.",
    "tls": "Do not verify TLS certificates when fetching images and keys.",
    "http": "Allow plain http:// for images, signatures and discovery.",
    "pubkey": "Allow public keys to be fetched over plain http:// (rkt's meaning).",
    "capabilities": "Apps keep the container's whole capability set instead of the default set.",
    "paths": "Leave /proc/sys and /sys writable in the pod (systemd-nspawn with "
    "SYSTEMD_NSPAWN_API_VFS_WRITABLE=1, and /sys bound read-write into each app's root); what "
    "systemd-nspawn makes inaccessible, /proc/kcore and the like, stays so.",
    "seccomp": "Install no system call filter: neither systemd-nspawn's nor the apps' seccomp isolators.",
    "ondisk": "Accepted for rkt's command lines; rkt re-hashed an image's tree on every start, rktd "
    "checks an image once, when it is imported, so there is nothing to skip.",
    "all": "Every one of the above.",
}


def insecure_section() -> list[str]:
    if set(INSECURE_HELP) != set(INSECURE_OPTIONS):
        raise SystemExit(f"make-man: INSECURE_HELP does not match INSECURE_OPTIONS {INSECURE_OPTIONS}")
    out = section("insecure options")
    out += text('"--insecure-options" takes a comma-separated list of:')
    for name in INSECURE_OPTIONS:
        out += tagged(bold(name), [INSECURE_HELP[name]])
    return out


def page_generator(version: str) -> list[str]:
    out = header("rktd-generator", "8", version)
    out += [*section("name"), "rktd\\-generator \\- systemd generator turning pod manifests into units"]
    out += section("synopsis")
    out += [
        ".PP",
        f"{bold('/lib/systemd/system-generators/rktd-generator')} {italic('NORMAL')} "
        f"[{italic('EARLY')} {italic('LATE')}]",
    ]
    out += [".PP", f"{bold('rktd-generator')} {bold('--dry-run')}"]
    out += section("description")
    out += text(
        'rktd-generator is run by systemd at boot and on every "systemctl daemon-reload", as described '
        "in systemd.generator(7). It reads every pod manifest on the search path (see rktd.pod(5)) and "
        "writes, for each valid one named NAME, into the NORMAL directory:",
    )
    out += tagged(
        bold("pod@NAME.service"),
        [
            'A complete service whose ExecStart runs "rktd run" for the manifest, with Restart=, '
            "TimeoutStopSec=, ordering and dependencies derived from the pod's annotations.",
        ],
    )
    out += tagged(
        bold("pod@NAME.socket"),
        [
            "When an app port is socket-activated: one socket unit listening on each mapped host port.",
        ],
    )
    out += tagged(
        bold("TARGET.wants/pod@NAME.service"),
        [
            "For each target in the annotation rktd/wanted-by, so that the pod starts with that target.",
        ],
    )
    out += text(
        "It reads only manifest files: never the image store (/var may not be mounted yet), D-Bus or "
        "the network. Each file is written atomically, and the same manifests always produce the same "
        "files.",
        "The static template pod@.service, installed with the package, runs any manifest by name, so "
        '"systemctl start pod@NAME" also works for a manifest added after the last reload.',
        'Drop-ins made with "systemctl edit pod@NAME" apply on top of the generated unit.',
    )
    out += section("options")
    out += tagged(
        bold("--dry-run"),
        [
            'Print every file that would be written, each as a "# path" line followed by its content, '
            "and write nothing.",
        ],
    )
    out += section("diagnostics")
    out += text(
        'Messages go to the kernel log (/dev/kmsg) as "rktd-generator[PID]: ...", or to standard '
        "error when that cannot be opened; SYSTEMD_LOG_LEVEL sets the level. A bad manifest is reported "
        'as "PATH: field.path: message" and gets no units; every other manifest is still generated, '
        'and the exit status is 1. Read the messages with "journalctl -k -b".',
    )
    out += section("see also")
    out += [".PP", "rktd(1), rktd.pod(5), systemd.generator(7), systemd.unit(5), systemctl(1)"]
    return out


# -- rktd.pod(5) -----------------------------------------------------------------------------------

APPC_EXAMPLE = """{
  "acKind": "PodManifest",
  "acVersion": "0.8.11",
  "apps": [
    {
      "name": "hello",
      "image": {"name": "example.com/busybox"},
      "app": {"exec": ["/bin/sh", "-c", "echo hello; sleep 3600"], "user": "0", "group": "0"}
    }
  ],
  "annotations": [{"name": "rktd/wanted-by", "value": "multi-user.target"}]
}"""

KUBE_EXAMPLE = """apiVersion: v1
kind: Pod
metadata:
  name: hello
  annotations:
    rktd/wanted-by: multi-user.target
spec:
  restartPolicy: OnFailure
  containers:
    - name: hello
      image: docker://busybox
      command: ["/bin/sh", "-c", "echo hello; sleep 3600"]"""


def seccomp_section() -> list[str]:
    """The seccomp isolators' set syntax, with the syscall groups from rktd_units/seccomp_groups.py."""
    out = section("seccomp isolators")
    out += text(
        'An app\'s "os/linux/seccomp-remove-set" blocks the system calls of its "set" (each fails with '
        '"errno", EPERM by default); "os/linux/seccomp-retain-set" blocks all others (they fail with '
        '"errno", or kill the app with SIGSYS without one). An entry is a system call name, a group, or '
        'either negated with a leading "-" (a rktd extension): the set is the union of the plain entries '
        'less the negated ones, in any order, so ["@docker/default-whitelist", "-mkdir"] retains that '
        "group but mkdir. A name this host's libseccomp does not know is an error, but is skipped inside "
        "a group (groups list the calls of every architecture). The groups are:",
    )
    out += [".PP", ", ".join(bold(g) for g in seccomp_groups.KNOWN) + "."]
    out += text(
        '"@appc.io/all" in a retain set, or "@appc.io/empty" in a remove set, means no filter of the '
        'app\'s own (the appc spec: it masks the rest of the set); a remove set of "@appc.io/all" less '
        "some calls retains just those. The @rkt/ and @docker/ groups are rkt's lists (Docker 1.12's "
        "default profile), the @systemd/ groups systemd 252's (@systemd/default-whitelist is systemd's "
        '@default). The nspawn stage1 also keeps systemd-nspawn\'s own filter; "--insecure-options=seccomp" '
        "drops both.",
    )
    return out


def page_pod(version: str) -> list[str]:
    out = header("rktd.pod", "5", version)
    out += [*section("name"), "rktd.pod \\- pod manifests run by rktd\\-units as pod@NAME.service"]
    out += section("synopsis")
    out += [
        ".PP",
        "/etc/rktd/pods/NAME.json, /etc/rktd/pods/NAME.yaml, /etc/rktd/pods/NAME.yml",
        ".br",
        "/run/rktd/pods/NAME.{json,yaml,yml}",
        ".br",
        "/usr/lib/rktd/pods/NAME.{json,yaml,yml}",
    ]
    out += section("description")
    out += text(
        "Each file describes one pod: one or more apps sharing network and IPC, each running from its "
        "own image. NAME, the file name without its suffix, is the pod's name (an appc AC Name: "
        "lower-case letters, digits and single dashes) and the instance of pod@NAME.service.",
        "Directories are searched in the order above, as systemd searches unit directories: the first "
        "file for a NAME wins. An empty file, or a symbolic link to /dev/null, masks a pod of the same "
        "name in a later directory. The environment variable RKTD_PODS_PATH (colon-separated) "
        'replaces the list. After changing manifests run "systemctl daemon-reload"; "rktd '
        'validate" checks them without touching systemd.',
    )
    out += section("formats")
    out += text("The suffix selects the format; both describe the same pod model.")
    out += tagged(
        bold("NAME.json") + " \\(em appc PodManifest",
        [
            'An appc PodManifest (spec 0.8.11): "acKind": "PodManifest", "apps" (name, image by name, '
            "ID or labels, app with exec, user, group, environment, ports, mountPoints, isolators), "
            '"volumes" (host or empty), "ports" (mapping app ports to host ports) and "annotations" '
            "(a list of name/value objects). An image name may also be a docker:// reference.",
        ],
    )
    out += tagged(
        bold("NAME.yaml") + ", " + bold("NAME.yml") + " \\(em Kubernetes v1 Pod",
        [
            "A Kubernetes v1 Pod (apiVersion: v1, kind: Pod): spec.containers become apps (image, "
            "command and args, env, ports, volumeMounts, resources as isolators), spec.volumes hostPath and "
            "emptyDir become volumes, spec.restartPolicy gives Restart= (Always: always, OnFailure: "
            "on-failure, Never: no), and metadata.annotations carries the annotations below. Any pod can "
            'be exported back as Pod YAML with "rktd export-kube".',
        ],
    )
    out += seccomp_section()
    out += section("annotations")
    out += text(
        'Annotations whose name starts with "rktd/" configure the pod\'s units; an unknown rktd/ '
        "annotation or a bad value makes the manifest invalid. All are optional:",
    )
    for a in annotations.ANNOTATIONS:
        out += tagged(bold(a.name), [a.help + ".", f"Default: {a.default_text}."])
    out += text(
        'Anything else a unit can say belongs in an ordinary drop-in: "systemctl edit pod@NAME".',
    )
    out += section("socket activation")
    out += text(
        'An app port with "socketActivated": true, mapped by the pod\'s "ports" to a hostPort, gives a '
        "pod@NAME.socket listening on [hostIP:]hostPort (ListenStream= for tcp, ListenDatagram= for "
        "udp). The pod starts on the first connection and the app receives the sockets as LISTEN_FDS.",
    )
    out += section("examples")
    out += text("/etc/rktd/pods/hello.json:")
    out += example(*APPC_EXAMPLE.splitlines())
    out += text("/etc/rktd/pods/hello.yaml, the same pod as a Kubernetes Pod:")
    out += example(*KUBE_EXAMPLE.splitlines())
    out += text("Then:")
    out += example("systemctl daemon-reload", "systemctl start pod@hello", "journalctl -u pod@hello")
    out += section("see also")
    out += [".PP", "rktd(1), rktd\\-generator(8), systemd.service(5), systemd.socket(5)"]
    return out


PAGES = {"rktd.1": page_rktd, "rktd-generator.8": page_generator, "rktd.pod.5": page_pod}


def completion(shell: str) -> str:
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    if cls is None:
        raise SystemExit(f"make-man: click has no completion for {shell!r}")
    return cls(cli, {}, "rktd", "_RKTD_COMPLETE").source()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--page", choices=sorted(PAGES))
    what.add_argument("--completion", choices=["bash", "zsh", "fish"])
    parser.add_argument("--version", default=__version__)
    parser.add_argument("output", type=Path)
    args = parser.parse_args()
    if args.page:
        content = "\n".join(PAGES[args.page](args.version)) + "\n"
    else:
        content = completion(args.completion)
    args.output.write_text(content)
    return 0


if __name__ == "__main__":
    sys.exit(main())
