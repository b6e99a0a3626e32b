"""The one registry of manifest formats: file suffix -> format -> parser module (imported lazily).

Each parser module provides `load_pod(data: bytes, path: str) -> Pod` and a `dump_pod`:
`dump_pod(pod)` for appc, `dump_pod(pod, name)` for Kubernetes. Nothing else in the project
switches on file suffixes: ask `format_for(path)`. Parser modules are imported only when a file
of their format is read or written, so reading appc JSON never imports yaml.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

from rktd_units.errors import ManifestError, UsageError
from rktd_units.frozen import frozen
from rktd_units.model import ManifestFormat, Pod, PodFile


@frozen
class Format:
    """A manifest format: its file suffixes and the module that parses and writes it."""

    kind: ManifestFormat
    suffixes: tuple[str, ...]
    module: str
    help: str

    def parser(self) -> ModuleType:
        # importlib.import_module() without `import importlib` (half a millisecond at every boot)
        __import__(self.module)
        return sys.modules[self.module]


FORMATS: tuple[Format, ...] = (
    Format(ManifestFormat.APPC, (".json",), "rktd_units.formats.appc", "appc PodManifest (JSON)"),
    Format(
        ManifestFormat.KUBERNETES,
        (".yaml", ".yml"),
        "rktd_units.formats.kube",
        "Kubernetes v1 Pod (YAML)",
    ),
)
_BY_SUFFIX = {suffix: f for f in FORMATS for suffix in f.suffixes}
_BY_KIND = {f.kind: f for f in FORMATS}
SUFFIXES: tuple[str, ...] = tuple(_BY_SUFFIX)


def format_for(path: str | os.PathLike[str]) -> Format | None:
    """The format of a manifest file, by its suffix; None if no format claims it."""
    return _BY_SUFFIX.get(os.path.splitext(os.fspath(path))[1])


def by_kind(kind: ManifestFormat) -> Format:
    return _BY_KIND[kind]


def _module(fmt: Format, path: str) -> ModuleType:
    try:
        return fmt.parser()
    except ImportError as e:
        raise ManifestError(
            path, "", f"{fmt.help} manifests are not supported by this build ({e})"
        ) from None


def loads(data: bytes, path: str, kind: ManifestFormat) -> Pod:
    """Parse manifest bytes of a known format; ManifestError names `path`."""
    fmt = by_kind(kind)
    try:
        pod: Pod = _module(fmt, path).load_pod(data, path)
    except ManifestError as e:
        raise (e if e.path else e.with_path(path)) from None
    return pod


def require_format(path: str) -> Format:
    """The format of a manifest file by its suffix; ManifestError if no format claims it."""
    fmt = format_for(path)
    if fmt is None:
        known = ", ".join(SUFFIXES)
        raise ManifestError(path, "", "not a manifest file name", hint=f"use one of the suffixes {known}")
    return fmt


def load(path: str | os.PathLike[str], name: str) -> PodFile:
    """Read and parse one manifest file into a PodFile named `name`; every problem is a ManifestError.
    No ownership or mode checks: pods to run are read by `podpath`, which makes them."""
    path = os.fspath(path)  # strings, not pathlib: the generator runs at boot (STYLE.md 13)
    require_format(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ManifestError(path, "", f"cannot read: {e.strerror or e}") from None
    return load_bytes(data, path, name)


def load_bytes(data: bytes, path: str, name: str) -> PodFile:
    """Parse the bytes read from the manifest file `path` (its suffix says the format) into a PodFile."""
    fmt = require_format(path)
    module = _module(fmt, path)
    load_named = getattr(module, "load_named", None)
    if load_named is None:
        return PodFile(name, path, fmt.kind, loads(data, path, fmt.kind))
    # A format that names the pod inside the file (Kubernetes metadata.name) must agree with the file name.
    inner, named = load_named(data, path)
    if inner != name:
        raise ManifestError(
            path,
            "metadata.name",
            f"{inner!r} differs from the pod name {name!r} given by the file name",
            hint=f"rename the file to {inner}{os.path.splitext(path)[1]} or set metadata.name: {name}",
        )
    pod: Pod = named
    return PodFile(name, path, fmt.kind, pod)


def dump(pod_file_or_pod: PodFile | Pod, kind: ManifestFormat, *, name: str | None = None) -> str:
    """Render a pod in a format: canonical appc JSON, or Kubernetes Pod YAML (which needs a name)."""
    if isinstance(pod_file_or_pod, PodFile):
        pod, name = pod_file_or_pod.pod, name or pod_file_or_pod.name
    else:
        pod = pod_file_or_pod
    fmt = by_kind(kind)
    try:
        module = fmt.parser()
    except ImportError as e:
        raise UsageError(f"cannot write {fmt.help}: not supported by this build ({e})") from None
    if kind is ManifestFormat.APPC:
        text: str = module.dump_pod(pod)
        return text
    if name is None:
        raise UsageError(f"a pod name is needed to write {fmt.help}")
    try:
        named: str = module.dump_pod(pod, name)
        return named
    except ManifestError as e:  # a pod this format cannot express: name the file it came from
        path = pod_file_or_pod.path if isinstance(pod_file_or_pod, PodFile) else None
        raise (e.with_path(path) if path and not e.path else e) from None
