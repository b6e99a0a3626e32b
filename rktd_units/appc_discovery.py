"""appc image discovery (spec/discovery.md): image strings, meta tags, templates, the parent walk.

`example.com/app:1.0,os=linux` names an image by AC Identifier and labels. Its discovery URL is
`https://example.com/app?ac-discovery=1`; the HTML there holds

    <meta name="ac-discovery" content="PREFIX URL-TEMPLATE">
    <meta name="ac-discovery-pubkeys" content="PREFIX URL">

A tag applies when PREFIX is a prefix of the image name. Templates are filled with `{name}` and
the image's labels (`{version}`, `{os}`, `{arch}`, ...) and `{ext}` = `aci` or `aci.asc`; a
template with a placeholder left over is skipped, and only the best-matching templates (the most
labels substituted) are kept. When a discovery URL answers an error or has no usable
`ac-discovery` tag, the parent path is tried, up to the host.

Network access is through a `get(url) -> bytes` callable, so this module does only the parsing
and the walk (fetch.py provides the HTTPS transport).
"""

from __future__ import annotations

import html.parser
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from rktd_units.errors import ImageError
from rktd_units.names import AC_IDENTIFIER_RE

AC_IDENTIFIER = AC_IDENTIFIER_RE  # appc AC Identifier (names.py); fetch.py imports it from here
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
MAX_DISCOVERY_HTML = 1 << 20

# Python's machine names -> appc arch labels (spec/OS-SPEC.md).
_APPC_ARCH = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "i386": "i386",
    "i686": "i386",
    "aarch64": "aarch64",
    "arm64": "aarch64",
    "armv7l": "armv7l",
    "armv6l": "armv6l",
    "ppc64le": "ppc64le",
    "ppc64": "ppc64",
    "s390x": "s390x",
}


def host_arch() -> str:
    machine = platform.machine().lower()
    return _APPC_ARCH.get(machine, machine)


@dataclass(frozen=True)
class AppRef:
    """An image asked for by name and labels (an appc `App` in discovery terms)."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()

    def label(self, key: str) -> str | None:
        return dict(self.labels).get(key)

    def with_defaults(self) -> AppRef:
        """Add os and arch labels of this host when absent, as rkt did."""
        have = dict(self.labels)
        have.setdefault("os", "linux")
        have.setdefault("arch", host_arch())
        return AppRef(self.name, tuple(sorted(have.items())))

    def __str__(self) -> str:
        version = self.label("version")
        extra = "".join(f",{k}={v}" for k, v in self.labels if k != "version")
        return f"{self.name}{':' + version if version else ''}{extra}"


def parse_app(text: str) -> AppRef:
    """Parse `NAME[:VERSION][,LABEL=VALUE]...` (appc's image string)."""
    head, *rest = text.split(",")
    name, colon, version = head.partition(":")
    if not AC_IDENTIFIER.match(name):
        raise ImageError(
            f"invalid image name {name!r}",
            hint="an image name is lower-case, like example.com/app:1.0,os=linux",
        )
    labels: dict[str, str] = {}
    if colon:
        if not version:
            raise ImageError(f"empty version in image {text!r}")
        labels["version"] = version
    for item in rest:
        key, eq, value = item.partition("=")
        if not eq or not AC_IDENTIFIER.match(key) or not value:
            raise ImageError(f"invalid label {item!r} in image {text!r}", hint="labels are name=value")
        if key in labels:
            raise ImageError(f"label {key!r} given twice in image {text!r}")
        labels[key] = value
    return AppRef(name, tuple(sorted(labels.items())))


@dataclass(frozen=True)
class MetaTag:
    name: str  # ac-discovery or ac-discovery-pubkeys (any ac-* is kept)
    prefix: str
    uri: str


class _MetaParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[MetaTag] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag != "meta":
            return
        a = {k: v or "" for k, v in attrs}
        name, content = a.get("name", ""), a.get("content", "").strip()
        parts = content.split(None, 1)
        if name.startswith("ac-") and len(parts) == 2 and parts[1].strip():
            self.tags.append(MetaTag(name, parts[0], parts[1].strip()))

    handle_startendtag = handle_starttag


def parse_meta(document: str) -> list[MetaTag]:
    """The `ac-*` meta tags of an HTML document, in document order."""
    p = _MetaParser()
    p.feed(document)
    p.close()
    return p.tags


@dataclass(frozen=True)
class Endpoint:
    aci: str
    asc: str


@dataclass(frozen=True)
class Endpoints:
    acis: tuple[Endpoint, ...] = ()
    keys: tuple[str, ...] = ()


def render_template(template: str, name: str, labels: Mapping[str, str]) -> tuple[Endpoint, int] | None:
    """Fill one ac-discovery template; None when a placeholder other than {ext} stays unfilled."""
    if "{ext}" not in template:
        return None
    out, used = template.replace("{name}", name), 0
    for key, value in labels.items():
        if key == "name" or f"{{{key}}}" not in out:
            continue
        out, used = out.replace(f"{{{key}}}", value), used + 1
    if any(m != "{ext}" for m in _PLACEHOLDER.findall(out)):
        return None
    return Endpoint(out.replace("{ext}", "aci"), out.replace("{ext}", "aci.asc")), used


def endpoints_from(tags: list[MetaTag], app: AppRef) -> Endpoints:
    """Apply the tags whose prefix matches `app.name`: best-matching templates and all key URLs."""
    labels = dict(app.labels)
    rendered: list[tuple[Endpoint, int]] = []
    keys: list[str] = []
    for t in tags:
        if not app.name.startswith(t.prefix):
            continue
        if t.name == "ac-discovery":
            r = render_template(t.uri, app.name, labels)
            if r is not None:
                rendered.append(r)
        elif t.name == "ac-discovery-pubkeys":
            keys.append(t.uri)
    best = max((n for _, n in rendered), default=0)
    return Endpoints(tuple(e for e, n in rendered if n == best), tuple(keys))


Getter = Callable[[str], bytes]


def discovery_urls(prefix: str, allow_http: bool) -> list[str]:
    urls = [f"https://{prefix}?ac-discovery=1"]
    if allow_http:
        urls.append(f"http://{prefix}?ac-discovery=1")
    return urls


def discover(app: AppRef, get: Getter, *, allow_http: bool = False, want: str = "aci") -> Endpoints:
    """Walk from `app.name` up to its host until discovery yields image endpoints (or keys)."""
    if want not in ("aci", "keys"):
        raise ValueError(want)
    parts = app.name.split("/")
    failures: list[str] = []
    for end in range(len(parts), 0, -1):
        prefix = "/".join(parts[:end])
        for url in discovery_urls(prefix, allow_http):
            try:
                body = get(url)
            except ImageError as e:
                failures.append(f"{url}: {e.message}")
                continue
            eps = endpoints_from(parse_meta(body.decode("utf-8", errors="replace")), app)
            if eps.acis if want == "aci" else eps.keys:
                return eps
            failures.append(f"{url}: no usable ac-discovery{'-pubkeys' if want == 'keys' else ''} tag")
            break
    what = "image" if want == "aci" else "public keys"
    hint = "check the name and labels" + ("" if allow_http else "; plain http needs --insecure-options=http")
    raise ImageError(f"discovery found no {what} for {app}: " + "; ".join(failures), hint=hint)
