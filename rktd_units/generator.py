"""`rktd-generator`: the systemd generator (systemd.generator(7)) that makes pod manifests services.

    rktd-generator NORMAL [EARLY LATE]
    rktd-generator --dry-run
    rktd-generator --help

Two passes (STYLE.md rule 4): `podpath.scan()` indexes every pod name, then each manifest is
loaded and converted (`units.convert`) on its own; a bad manifest is logged as one line,
`PATH: field.path: message (hint)`, gets no units, and the run exits 1 at the end. Every other
manifest is still generated. Units go to NORMAL, so that units in /etc/systemd/system and drop-ins
(`systemctl edit pod@NAME`) still override them, and they override the installed template
pod@.service for the names they cover.

Generators run early at boot and at every daemon-reload: this module imports only what it uses
(no click, no jinja2: the templates are compiled, see templatec.py; yaml only when a YAML manifest
exists), reads only manifest files, and writes each file atomically (a temporary name in the same
directory, fsync, rename), so two concurrent runs never leave a torn unit.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

from rktd_units.errors import RktdError

PROG = "rktd-generator"
LOG_DAEMON = 3 << 3
LEVELS = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5, "info": 6, "debug": 7}
ERR, INFO, DEBUG = 3, 6, 7
_MESSAGE_MAX = 2000  # characters of one message (a value quoted in an error may be huge)
_KMSG_MAX = 900  # bytes of message per kmsg record (the kernel allows a little over 1000)
EXIT_USAGE = 2


class Log:
    """systemd's generator logging: /dev/kmsg as `rktd-generator[PID]: …`, stderr if kmsg cannot be
    written; `SYSTEMD_LOG_LEVEL` (a name or 0-7) and `SYSTEMD_LOG_TARGET` (`console`, `kmsg`, `auto`)
    as every systemd tool reads them."""

    def __init__(self, *, console: bool = False) -> None:
        raw = os.environ.get("SYSTEMD_LOG_LEVEL", "info").strip().lower()
        self.level = LEVELS.get(raw, int(raw) if raw.isdigit() and int(raw) < 8 else INFO)
        target = os.environ.get("SYSTEMD_LOG_TARGET", "auto")
        self.kmsg: int | None = None
        if not console and target in ("auto", "kmsg", "journal-or-kmsg"):
            try:
                self.kmsg = os.open("/dev/kmsg", os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
            except OSError:
                self.kmsg = None
        self.prefix = f"{PROG}[{os.getpid()}]: "

    def __call__(self, level: int, message: str) -> None:
        if level > self.level:
            return
        message = message if len(message) <= _MESSAGE_MAX else message[:_MESSAGE_MAX] + "..."
        text = self.prefix + "".join(c if " " <= c != "\x7f" else f"\\x{ord(c):02x}" for c in message)
        data = text.encode(errors="backslashreplace")
        if self.kmsg is not None:
            try:
                os.write(self.kmsg, b"<%d>" % (LOG_DAEMON | level) + data[:_KMSG_MAX] + b"\n")
                return
            except OSError:
                pass
        sys.stderr.write(data.decode(errors="replace") + "\n")
        sys.stderr.flush()


# -- Sinks: where the outputs go ------------------------------------------------------------------


def _write_atomic(path: str, data: bytes | None, link: str | None) -> None:
    """Put a file (or a symlink to `link`) at `path` by renaming a complete temporary over it."""
    tmp = os.path.join(os.path.dirname(path), f".#{os.path.basename(path)}.{os.getpid()}")
    for attempt in (1, 2):
        try:
            if link is not None:
                os.symlink(link, tmp)
            else:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
                try:
                    os.write(fd, data or b"")  # one write: unit files are far below any short-write size
                    os.fsync(fd)
                finally:
                    os.close(fd)
            break
        except FileExistsError:
            if attempt == 2:
                raise
            os.unlink(tmp)  # left by a crashed run that had our pid
    try:
        os.rename(tmp, path)
    except OSError:
        os.unlink(tmp)
        raise


class DirSink:
    """Writes into the generator's output directory."""

    def __init__(self, directory: str) -> None:
        self.directory = os.path.abspath(directory)
        self.made: set[str] = set()

    def __call__(self, path: str, text: str | None, link: str | None) -> None:
        full = os.path.join(self.directory, path)
        parent = os.path.dirname(full)
        if parent not in self.made:
            os.makedirs(parent, mode=0o755, exist_ok=True)
            self.made.add(parent)
        target = os.path.join(self.directory, link) if link is not None else None
        _write_atomic(full, text.encode() if text is not None else None, target)


class PrintSink:
    """--dry-run: every file as a `# path` line and its content; symlinks as `# path -> target`."""

    def __init__(self) -> None:
        self.first = True

    def __call__(self, path: str, text: str | None, link: str | None) -> None:
        out = [] if self.first else ["\n"]
        self.first = False
        out.append(f"# {path} -> {link}\n" if link is not None else f"# {path}\n{text}")
        sys.stdout.write("".join(out))


Sink = Callable[[str, str | None, str | None], None]


# -- The run --------------------------------------------------------------------------------------


def _describe(error: Exception, path: str) -> str:
    from rktd_units.errors import ManifestError

    if isinstance(error, ManifestError):
        return str(error if error.path else error.with_path(path))
    if isinstance(error, RktdError):
        return f"{path}: {error}"
    return f"{path}: internal error: {type(error).__name__}: {error}"


def generate(sink: Sink, log: Log) -> int:
    """Both passes over the manifest path; the number of manifests (or files) that failed."""
    from rktd_units import formats, podpath, units

    # Paths as strings (no pathlib at boot); each manifest's bytes as read from the file StrictModes
    # checked: it is never opened again by path (which another file could have replaced by then).
    found, errors = podpath.scan_data()
    failed = len(errors)
    for error in errors:
        log(ERR, str(error))
    names = frozenset(name for name, _, _, _ in found)
    for name, path, _, data in found:
        try:
            podfile = formats.load_bytes(data, path, name)
            if not os.path.isabs(podfile.path):  # a relative $RKTD_PODS_PATH entry
                from dataclasses import replace

                podfile = replace(podfile, path=os.path.abspath(podfile.path))
            outputs = units.convert(podfile, names)
        except Exception as e:  # one bad manifest (or a bug) never costs the others their units
            log(ERR, _describe(e, path))
            failed += 1
            continue
        for out in outputs:  # the whole pod converted: only now is anything written
            sink(out.path, str(out.unit) if out.unit is not None else None, out.link)
            log(DEBUG, f"{name}: wrote {out.path}" + (f" -> {out.link}" if out.link else ""))
    log(DEBUG, f"{len(found)} manifests, {failed} failed")
    return failed


def usage() -> str:
    from rktd_units import annotations, podpath

    dirs = " > ".join(str(d) for d in podpath.search_path())
    rows = "\n".join(f"  {a.name:<18} {a.help} (default: {a.default_text})" for a in annotations.ANNOTATIONS)
    return f"""\
usage: {PROG} NORMAL [EARLY LATE]
       {PROG} --dry-run
       {PROG} --help

The systemd generator of rktd-units: every pod manifest NAME.json (appc) or NAME.yaml
(Kubernetes) in {dirs}
(or ${podpath.ENV_PATH}) becomes pod@NAME.service in NORMAL, plus pod@NAME.socket for
socket-activated ports and TARGET.wants/ links for rktd/wanted-by. A bad manifest is logged
(to /dev/kmsg, or stderr) and skipped; the exit status is then 1.

  --dry-run  print every file that would be written, as a "# PATH" line and its content
  --help     show this text

Pod annotations read here:
{rows}
"""


def _parse_args(args: Sequence[str]) -> tuple[bool, str | None]:
    """(dry run, output directory); raises UsageError."""
    from rktd_units.errors import UsageError

    options = [a for a in args if a.startswith("-")]
    dirs = [a for a in args if not a.startswith("-")]
    unknown = [o for o in options if o != "--dry-run"]
    if unknown:
        raise UsageError(f"unknown option {unknown[0]}", hint=f"see {PROG} --help")
    dry_run = bool(options)
    if dry_run and not dirs:
        return True, None
    if len(dirs) not in (1, 3):
        raise UsageError("expected NORMAL [EARLY LATE] output directories", hint=f"see {PROG} --help")
    return dry_run, dirs[0]


def main(argv: Sequence[str] | None = None) -> int:
    """The one boundary: exit 0 if every manifest converted (or there are none), 1 if any failed."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--help" in args or "-h" in args:
        sys.stdout.write(usage())
        return 0
    try:
        dry_run, directory = _parse_args(args)
    except RktdError as e:
        sys.stderr.write(f"{PROG}: {e}\n")
        return EXIT_USAGE
    log = Log(console=dry_run)
    sink: Sink = PrintSink() if dry_run else DirSink(directory or ".")
    try:
        failed = generate(sink, log)
    except (RktdError, OSError) as e:
        log(ERR, f"{e}")
        return 1
    if dry_run:
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
