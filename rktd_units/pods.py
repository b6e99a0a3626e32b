"""Pod directories and their lifecycle, as rkt kept them.

A pod lives in `<dir>/pods/<state>/<uuid>` and changes state by an atomic rename of that
directory. While stage0 prepares a pod and while stage1 runs it, the directory is locked with
flock(2) (stage0 opens the directory, locks it and leaves the descriptor open across exec, so
the lock belongs to stage1, and the kernel drops it when stage1's last process dies). So a pod
in `run` is *running* if its lock is held and *exited* otherwise, read from the kernel rather
than from a pid file that may lie.

    embryo ─► prepare ─► prepared ─► run ─► (exited) ─gc─► exited-garbage ─gc(grace)─► deleted
                 └─(stage0 died)─gc─► garbage ─gc─► deleted
"""

from __future__ import annotations

import enum
import errno
import fcntl
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

from rktd_units.errors import PodError
from rktd_units.fsutil import rmtree, write_atomic

TYPE_CHECKING = False  # typing is imported only for the type checker: it is on every pod start
if TYPE_CHECKING:
    from typing import Any


class State(enum.StrEnum):
    """A pod directory's parent directory under `<dir>/pods`."""

    EMBRYO = "embryo"
    PREPARE = "prepare"
    PREPARED = "prepared"
    RUN = "run"
    EXITED_GARBAGE = "exited-garbage"
    GARBAGE = "garbage"


# Files inside a pod directory (rkt's `pod` is the final pod manifest).
MANIFEST = "pod"
STAGE1_CONFIG = "stage1.json"
PID_FILE = "pid"
STATUS_DIR = "status"  # status/<app>: the app's exit status, written by stage1
CGROUPS_FILE = "cgroups"  # cgroup directories stage1 created, one per line, removed at gc
NETWORK_STATE = "net/state.json"  # written by rktd_units.network.setup(); gc tears the network down

DEFAULT_GRACE = 30 * 60.0
# Pod directories hold the apps' writable layers (a setuid file an app made there is the host's
# too) and their environments: only root may enter them, or list them.
DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_STATUS = 64  # bytes of an exit status file worth reading


class PodDir:
    """One pod directory. `lock_fd` is set while this process holds the pod's lock.

    A plain class rather than a dataclass: `dataclasses` is not imported on a pod's start."""

    # Mutable and compared by value, as the dataclass it was: unhashable.
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, root: Path, uuid: str, state: State, lock_fd: int | None = None) -> None:
        self.root = root  # <dir>/pods
        self.uuid = uuid
        self.state = state
        self.lock_fd = lock_fd

    def __repr__(self) -> str:
        return f"{type(self).__qualname__}(root={self.root!r}, uuid={self.uuid!r}, state={self.state!r})"

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        assert isinstance(other, PodDir)
        return (self.root, self.uuid, self.state, self.lock_fd) == (
            other.root,
            other.uuid,
            other.state,
            other.lock_fd,
        )

    @property
    def path(self) -> Path:
        return self.root / self.state.value / self.uuid

    # -- locking ---------------------------------------------------------------------------------
    def lock(self, *, shared: bool = False, blocking: bool = False) -> None:
        """Take the pod's flock; PodError if another process holds it."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        op = (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB)
        try:
            fcntl.flock(fd, op)
        except BlockingIOError:
            os.close(fd)
            raise PodError(f"pod {self.uuid} is locked by another process") from None
        self.lock_fd = fd

    def unlock(self) -> None:
        if self.lock_fd is not None:
            os.close(self.lock_fd)
            self.lock_fd = None

    def is_locked(self) -> bool:
        """True while some process (stage0 preparing, stage1 running) holds the pod's lock."""
        if self.lock_fd is not None:
            return True
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    # -- transitions -----------------------------------------------------------------------------
    def move(self, to: State) -> None:
        """Atomically rename the pod directory into state `to` (the lock, on the inode, stays)."""
        src = self.path
        dst = self.root / to.value / self.uuid
        dst.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        try:
            os.rename(src, dst)
        except OSError as e:
            raise PodError(f"pod {self.uuid}: cannot move {self.state} -> {to}: {e.strerror}") from None
        self.state = to

    # -- contents --------------------------------------------------------------------------------
    def read_json(self, name: str) -> Any:
        try:
            return json.loads((self.path / name).read_bytes())
        except (OSError, ValueError):
            return None

    def write_atomic(self, name: str, data: bytes, *, durable: bool = True) -> None:
        write_atomic(self.path / name, data, FILE_MODE, durable=durable)

    def config(self) -> dict[str, Any]:
        cfg = self.read_json(STAGE1_CONFIG)
        return cfg if isinstance(cfg, dict) else {}

    def pid(self) -> int | None:
        """stage1's pid, only if that process holds the pod's lock: a pid file that names any other
        process (stale, or not written by stage0) must never get a signal meant for the pod."""
        try:
            pid = int((self.path / PID_FILE).read_text().strip())
            inode = os.stat(self.path).st_ino
        except (OSError, ValueError):
            return None
        return pid if pid > 0 and (pid, inode) in flock_holders() else None

    def app_statuses(self) -> dict[str, int]:
        out: dict[str, int] = {}
        status_dir = self.path / STATUS_DIR
        if status_dir.is_dir():
            for entry in sorted(status_dir.iterdir()):
                try:
                    out[entry.name] = int(read_regular(entry, MAX_STATUS).strip())
                except (OSError, ValueError):
                    continue
        return out

    def display_state(self) -> str:
        """rkt's pod states as `rkt list` showed them."""
        locked = self.is_locked()
        match self.state:
            case State.EMBRYO:
                return "embryo"
            case State.PREPARE:
                return "preparing" if locked else "abort-prepare"
            case State.PREPARED:
                return "prepared"
            case State.RUN:
                return "running" if locked else "exited"
            case State.EXITED_GARBAGE:
                return "exited-garbage"
            case State.GARBAGE:
                return "garbage"

    def created(self) -> float:
        cfg = self.config()
        value = cfg.get("created")
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return self.path.stat().st_ctime
        except OSError:
            return 0.0

    def info(self) -> dict[str, Any]:
        """What `list` and `status` show, as a JSON-able dict."""
        cfg = self.config()
        state = self.display_state()
        apps = [
            {"name": a.get("name"), "image_name": a.get("image_name"), "image_id": a.get("image_id")}
            for a in cfg.get("apps", [])
        ]
        out: dict[str, Any] = {
            "uuid": self.uuid,
            "name": cfg.get("name"),
            "state": state,
            "stage1": cfg.get("stage1"),
            "created": self.created(),
            "apps": apps,
            "networks": cfg.get("net"),
        }
        if state == "running":
            out["pid"] = self.pid()
            out["interfaces"] = self.interfaces()
        statuses = self.app_statuses()
        if statuses:
            out["app_exit_statuses"] = statuses
        return out

    def interfaces(self) -> list[dict[str, Any]]:
        """The pod's network interfaces as set up by CNI (none for host/none networks)."""
        if not (self.path / NETWORK_STATE).exists():
            return []
        from rktd_units import network

        result = network.status(self.path)
        if result is None:
            return []
        return [
            {
                "network": i.network,
                "ifname": i.ifname,
                "addresses": list(i.addresses),
                "host_ifname": i.host_ifname,
            }
            for i in result.interfaces
        ]


def children(pid: int) -> list[int]:
    """The pids of `pid`'s children (of all its threads); none if it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as f:
                out += [int(x) for x in f.read().split()]
        except OSError:
            continue
    return out


def flock_holders() -> set[tuple[int, int]]:
    """(pid, inode) of every flock(2) lock held now, from /proc/locks."""
    out = set()
    try:
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 5 and fields[1] == "FLOCK" and fields[4].isdigit():
                    with_inode = fields[5].rsplit(":", 1)
                    if with_inode[-1].isdigit():
                        out.add((int(fields[4]), int(with_inode[-1])))
    except OSError:
        pass
    return out


def read_regular(path: Path, limit: int) -> str:
    """At most `limit` bytes of a regular file, never following a symlink nor blocking on a FIFO."""
    import stat

    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"{path}: not a regular file")
        data = b""
        while len(data) < limit:
            chunk = os.read(fd, min(limit - len(data), max(st.st_size - len(data), 4096)))
            if not chunk:
                break
            data += chunk
        return data.decode(errors="replace")
    finally:
        os.close(fd)


def new_uuid() -> str:
    """A random (version 4) UUID, without the `uuid` module's import cost on every pod start."""
    b = bytearray(os.urandom(16))
    b[6] = (b[6] & 0x0F) | 0x40
    b[8] = (b[8] & 0x3F) | 0x80
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class Pods:
    """The pod directories under `<dir>/pods`."""

    def __init__(self, data_dir: str | Path) -> None:
        self.root = Path(data_dir) / "pods"

    def create(self, pod_uuid: str | None = None) -> PodDir:
        """A new pod directory in `embryo`, moved to `prepare` and locked by the caller."""
        pod_uuid = pod_uuid or new_uuid()
        embryo = self.root / State.EMBRYO.value
        embryo.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        os.chmod(self.root, DIR_MODE)  # also where an older rktd made it world-readable
        for state in State:
            if (self.root / state.value / pod_uuid).exists():
                raise PodError(f"pod {pod_uuid} already exists")
        pod = PodDir(self.root, pod_uuid, State.EMBRYO)
        os.mkdir(pod.path, DIR_MODE)
        pod.lock()
        pod.move(State.PREPARE)
        return pod

    def all(self) -> Iterator[PodDir]:
        for state in State:
            d = self.root / state.value
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            for name in names:
                if not name.startswith("."):
                    yield PodDir(self.root, name, state)

    def find(self, ref: str) -> PodDir:
        """A pod by UUID, unique UUID prefix, or pod name (the manifest name or `--name`)."""
        ref = ref.strip()
        if not ref:
            raise PodError("empty pod reference")
        pods = list(self.all())
        exact = [p for p in pods if p.uuid == ref]
        if exact:
            return exact[0]
        by_prefix = [p for p in pods if p.uuid.startswith(ref)]
        if len(by_prefix) == 1:
            return by_prefix[0]
        if len(by_prefix) > 1:
            raise PodError(f"pod UUID prefix {ref!r} is ambiguous", hint="give more characters")
        by_name = [p for p in pods if p.config().get("name") == ref]
        if not by_name:
            raise PodError(f"no pod {ref!r}", hint="see `rktd list`")
        # A name may have been run many times: prefer a running pod, then the newest.
        by_name.sort(key=lambda p: (p.display_state() == "running", p.created()))
        return by_name[-1]

    def read_uuid_file(self, path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError as e:
            raise PodError(f"cannot read UUID file {path}: {e.strerror}") from None


# -- garbage collection ----------------------------------------------------------------------------


class GcReport:
    """What `gc()` did: pods marked as garbage, pods removed, and per-pod errors."""

    def __init__(self) -> None:
        self.marked: list[str] = []
        self.removed: list[str] = []
        self.errors: list[str] = []

    def __repr__(self) -> str:
        return f"GcReport(marked={self.marked!r}, removed={self.removed!r}, errors={self.errors!r})"


def gc(pods: Pods, *, grace: float = DEFAULT_GRACE, prepared_expiry: float = 24 * 3600.0) -> GcReport:
    """Mark exited pods as garbage; delete garbage older than `grace`; abandon dead preparations."""
    report = GcReport()
    now = time.time()
    for pod in list(pods.all()):
        try:
            _gc_one(pod, now, grace, prepared_expiry, report)
        except Exception as e:  # one pod's failure (whatever its app left) never stops the others
            report.errors.append(f"{pod.uuid}: {e}")
    return report


def _gc_one(pod: PodDir, now: float, grace: float, expiry: float, report: GcReport) -> None:
    if pod.state in (State.RUN, State.EMBRYO, State.PREPARE) and not pod.is_locked():
        target = State.EXITED_GARBAGE if pod.state == State.RUN else State.GARBAGE
        pod.lock()
        try:
            pod.move(target)
            os.utime(pod.path)  # the grace period counts from marking
        finally:
            pod.unlock()
        report.marked.append(pod.uuid)
    if pod.state == State.PREPARED and now - pod.path.stat().st_mtime > expiry:
        pod.lock()
        try:
            pod.move(State.GARBAGE)
        finally:
            pod.unlock()
        report.marked.append(pod.uuid)
    if pod.state in (State.EXITED_GARBAGE, State.GARBAGE):
        age = time.time() - pod.path.stat().st_mtime
        if pod.state == State.GARBAGE or grace <= 0 or age >= grace:
            remove(pod)
            report.removed.append(pod.uuid)


def remove(pod: PodDir) -> None:
    """Delete a pod that no longer runs: leftover mounts, network, cgroups, then the directory."""
    pod.lock()
    try:
        release_resources(pod)
        rmtree(pod.path)
    finally:
        pod.unlock()


def release_resources(pod: PodDir) -> None:
    """Undo what an abnormally ended stage1 may have left: mounts under the pod dir, CNI, cgroups."""
    _unmount_below(pod.path)
    if (pod.path / NETWORK_STATE).exists():
        from rktd_units import network

        network.teardown(pod.uuid, pod.path, local_config=Path("/etc/rktd"))
    remove_cgroups(pod.path)


def remove_cgroups(pod_path: Path) -> None:
    try:
        lines = (pod_path / CGROUPS_FILE).read_text().splitlines()
    except OSError:
        return
    for line in sorted(lines, key=len, reverse=True):
        cg = Path(line.strip())
        if not _is_pod_cgroup(cg, pod_path.name) or not cg.is_dir():
            continue  # only the pod's own `rktd-<uuid>` cgroups, whatever the file says
        for parent, _, _ in sorted(os.walk(cg), key=lambda w: len(w[0]), reverse=True):
            if parent != os.fspath(cg):
                _rmdir_cgroup(Path(parent))
        _rmdir_cgroup(cg)


def _is_pod_cgroup(path: Path, pod_uuid: str) -> bool:
    return path.is_absolute() and ".." not in path.parts and path.name == f"rktd-{pod_uuid}"


def _rmdir_cgroup(path: Path, wait: float = 3.0) -> None:
    """rmdir a cgroup; a process that just died (and so just dropped the pod lock) may still be
    leaving it for a moment (EBUSY), so retry briefly."""
    deadline = time.monotonic() + wait
    while True:
        try:
            os.rmdir(path)
            return
        except OSError as e:
            if e.errno == errno.ENOENT:
                return
            if e.errno != errno.EBUSY or time.monotonic() > deadline:
                raise PodError(f"cannot remove cgroup {path}: {e.strerror}") from None
        time.sleep(0.02)


def mounts_below(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first (from /proc/self/mountinfo)."""
    prefix = os.fspath(path.resolve())
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            target = line.split()[4].replace("\\040", " ")
            if target == prefix or target.startswith(prefix + "/"):
                out.append(target)
    return sorted(out, key=len, reverse=True)


def _unmount_below(path: Path) -> None:
    from rktd_units.run import run

    for target in mounts_below(path):
        run(["umount", "--lazy", target], check=False)
