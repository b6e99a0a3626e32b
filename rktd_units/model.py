"""The pod model: frozen dataclasses that every manifest format parses into.

Field names follow the appc PodManifest (spec 0.8.11) in snake_case; the appc and
Kubernetes parsers (`rktd_units.formats`) convert to and from this model, the generator
and stage0 read only this model.
"""

from __future__ import annotations

import enum

from rktd_units.frozen import field, frozen

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class Protocol(enum.StrEnum):
    TCP = "tcp"
    UDP = "udp"


class VolumeKind(enum.StrEnum):
    HOST = "host"
    EMPTY = "empty"


class ManifestFormat(enum.StrEnum):
    APPC = "appc"
    KUBERNETES = "kubernetes"


@frozen
class NameValue:
    """appc Label, Annotation or environment variable."""

    name: str
    value: str


@frozen
class Isolator:
    """An appc isolator; `value` is the JSON value, already checked for its name's shape."""

    name: str
    value: Any


@frozen
class Port:
    """A port an app listens on (appc `app.ports[]`)."""

    name: str
    protocol: Protocol
    port: int
    count: int = 1
    socket_activated: bool = False


@frozen
class MountPoint:
    """Where an app expects a volume (appc `app.mountPoints[]`)."""

    name: str
    path: str
    read_only: bool = False


@frozen
class EventHandler:
    """A command run before the app starts or after it stops (appc `app.eventHandlers[]`)."""

    name: str  # "pre-start" or "post-stop"
    exec: tuple[str, ...]


@frozen
class App:
    """appc App: what runs, as whom, with what."""

    exec: tuple[str, ...] = ()
    user: str = "0"
    group: str = "0"
    supplementary_gids: tuple[int, ...] = ()
    working_directory: str | None = None
    environment: tuple[NameValue, ...] = ()
    mount_points: tuple[MountPoint, ...] = ()
    ports: tuple[Port, ...] = ()
    isolators: tuple[Isolator, ...] = ()
    event_handlers: tuple[EventHandler, ...] = ()
    user_annotations: tuple[NameValue, ...] = ()  # appc `userAnnotations` (free-form, never interpreted)
    user_labels: tuple[NameValue, ...] = ()


@frozen
class ImageRef:
    """Which image an app runs. `name` is an AC Identifier, or a `docker://` reference (rktd extension)."""

    name: str | None = None
    id: str | None = None
    labels: tuple[NameValue, ...] = ()

    @property
    def is_docker(self) -> bool:
        return bool(self.name and self.name.startswith("docker://"))


@frozen
class Volume:
    """A pod volume (appc `volumes[]`): a host directory or an empty one."""

    name: str
    kind: VolumeKind
    source: str | None = None  # host volumes only
    read_only: bool | None = None
    recursive: bool | None = None
    mode: str | None = None  # empty volumes: octal string, default "0755"
    uid: int | None = None
    gid: int | None = None


@frozen
class Mount:
    """Mount a pod volume into an app at `path` (appc `apps[].mounts[]`)."""

    volume: str
    path: str
    app_volume: Volume | None = None


@frozen
class RuntimeApp:
    """One app of a pod (appc `apps[]`): its name, image, and what overrides the image's app."""

    name: str
    image: ImageRef
    app: App | None = None
    read_only_rootfs: bool = False
    mounts: tuple[Mount, ...] = ()
    annotations: tuple[NameValue, ...] = ()


@frozen
class PodPort:
    """Maps an app port (by name) to a host port."""

    name: str
    host_port: int
    host_ip: str | None = None


@frozen
class Pod:
    """An appc PodManifest."""

    apps: tuple[RuntimeApp, ...] = ()
    volumes: tuple[Volume, ...] = ()
    isolators: tuple[Isolator, ...] = ()
    annotations: tuple[NameValue, ...] = ()
    ports: tuple[PodPort, ...] = ()
    user_annotations: tuple[NameValue, ...] = ()
    user_labels: tuple[NameValue, ...] = ()
    ac_version: str = "0.8.11"

    def annotation(self, name: str) -> str | None:
        for a in self.annotations:
            if a.name == name:
                return a.value
        return None

    def app_named(self, name: str) -> RuntimeApp | None:
        for a in self.apps:
            if a.name == name:
                return a
        return None

    def socket_activated_ports(self) -> list[tuple[RuntimeApp, Port, PodPort]]:
        """Socket-activated app ports that a pod port maps to the host, in app declaration order."""
        by_name = {p.name: p for p in self.ports}
        out = []
        for ra in self.apps:
            for port in ra.app.ports if ra.app else ():
                if port.socket_activated and port.name in by_name:
                    out.append((ra, port, by_name[port.name]))
        return out


@frozen
class PodFile:
    """A pod manifest as found on disk: the pod's name (the file stem), its file and format."""

    name: str
    path: str
    format: ManifestFormat
    pod: Pod = field(default_factory=Pod)


@frozen
class Dependency:
    """appc image dependency."""

    image_name: str
    image_id: str | None = None
    labels: tuple[NameValue, ...] = ()
    size: int | None = None


@frozen
class ImageManifest:
    """An appc ImageManifest (the `manifest` file of an ACI)."""

    name: str
    labels: tuple[NameValue, ...] = ()
    app: App | None = None
    annotations: tuple[NameValue, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    path_whitelist: tuple[str, ...] = ()
    ac_version: str = "0.8.11"

    def label(self, name: str) -> str | None:
        for lab in self.labels:
            if lab.name == name:
                return lab.value
        return None

    def annotation(self, name: str) -> str | None:
        for a in self.annotations:
            if a.name == name:
                return a.value
        return None
