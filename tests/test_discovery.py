"""appc discovery: the shared meta-tag vectors parse and render as spec/discovery.md says."""

from __future__ import annotations

import pytest

from rktd_units.appc_discovery import (
    AppRef,
    Endpoint,
    MetaTag,
    endpoints_from,
    parse_app,
    parse_meta,
    render_template,
)
from rktd_units.errors import ImageError
from tests.conftest import VECTORS

TPL = "https://storage.example.com/{name}-{version}-{os}-{arch}.{ext}"
TPL_V = "https://storage.example.com/{name}-{version}.{ext}"
KEYS = MetaTag("ac-discovery-pubkeys", "example.com", "https://example.com/pubkeys.gpg")

EXPECTED_TAGS = {
    "discovery-meta01.html": [MetaTag("ac-discovery", "example.com", TPL), KEYS],
    "discovery-meta02.html": [MetaTag("ac-discovery", "example.com", TPL)],
    "discovery-meta03.html": [KEYS],
    "discovery-meta04.html": [
        MetaTag("ac-discovery", "example.com", TPL.replace("//storage", "//another.storage")),
        KEYS,
    ],
    "discovery-meta05.html": [
        MetaTag("ac-discovery", "example.com", TPL),
        MetaTag("ac-discovery", "example.com", TPL_V),
        KEYS,
    ],
    "discovery-meta06.html": [
        MetaTag("ac-discovery", "example.com", TPL),
        MetaTag("ac-discovery", "example.com", TPL_V),
        MetaTag("ac-discovery", "example.com", TPL.replace("https:", "hdfs:")),
        KEYS,
    ],
}

APP = AppRef("example.com/myapp", (("arch", "amd64"), ("os", "linux"), ("version", "1.0.0")))
FULL = "example.com/myapp-1.0.0-linux-amd64"


def _ep(base: str) -> Endpoint:
    return Endpoint(f"{base}.aci", f"{base}.aci.asc")


# What each vector yields for APP: the best-matching templates (3 labels beat 1) and the key URLs.
EXPECTED_ENDPOINTS = {
    "discovery-meta01.html": (
        [_ep(f"https://storage.example.com/{FULL}")],
        ["https://example.com/pubkeys.gpg"],
    ),
    "discovery-meta02.html": ([_ep(f"https://storage.example.com/{FULL}")], []),
    "discovery-meta03.html": ([], ["https://example.com/pubkeys.gpg"]),
    "discovery-meta04.html": (
        [_ep(f"https://another.storage.example.com/{FULL}")],
        ["https://example.com/pubkeys.gpg"],
    ),
    "discovery-meta05.html": (
        [_ep(f"https://storage.example.com/{FULL}")],
        ["https://example.com/pubkeys.gpg"],
    ),
    "discovery-meta06.html": (
        [_ep(f"https://storage.example.com/{FULL}"), _ep(f"hdfs://storage.example.com/{FULL}")],
        ["https://example.com/pubkeys.gpg"],
    ),
}


def test_every_vector_is_covered() -> None:
    assert sorted(p.name for p in VECTORS.glob("discovery-meta0*.html")) == sorted(EXPECTED_TAGS)


@pytest.mark.parametrize("name", sorted(EXPECTED_TAGS))
def test_vector_tags(name: str) -> None:
    assert parse_meta((VECTORS / name).read_text()) == EXPECTED_TAGS[name]


@pytest.mark.parametrize("name", sorted(EXPECTED_ENDPOINTS))
def test_vector_endpoints(name: str) -> None:
    eps = endpoints_from(parse_meta((VECTORS / name).read_text()), APP)
    acis, keys = EXPECTED_ENDPOINTS[name]
    assert list(eps.acis) == acis
    assert list(eps.keys) == keys


def test_best_match_without_os_arch() -> None:
    """Only {version} known: the four-placeholder template cannot render, the short one can."""
    tags = parse_meta((VECTORS / "discovery-meta05.html").read_text())
    eps = endpoints_from(tags, AppRef("example.com/myapp", (("version", "2.0"),)))
    assert eps.acis == (_ep("https://storage.example.com/example.com/myapp-2.0"),)
    assert endpoints_from(tags, AppRef("example.com/myapp")).acis == ()


def test_prefix_must_match() -> None:
    tags = parse_meta((VECTORS / "discovery-meta01.html").read_text())
    eps = endpoints_from(tags, AppRef("other.org/myapp", APP.labels))
    assert eps.acis == () and eps.keys == ()


def test_template_rules() -> None:
    assert render_template("https://x/{name}.{ext}", "a/b", {}) == (_ep("https://x/a/b"), 0)
    assert render_template("https://x/{name}-{version}", "a", {"version": "1"}) is None, "no {ext}"
    assert render_template("https://x/{name}-{foo}.{ext}", "a", {"version": "1"}) is None
    # a label called "name" never replaces {name}
    assert render_template("https://x/{name}.{ext}", "a", {"name": "zzz"}) == (_ep("https://x/a"), 0)


def test_meta_parsing_details() -> None:
    doc = """<html><head>
    <meta name="ac-discovery" content="  example.com   https://s/{name}.{ext}  "/>
    <META NAME="ac-discovery" CONTENT="example.com https://t/{name}.{ext}">
    <meta name="ac-discovery" content="example.com">
    <meta name="description" content="example.com https://u/{name}.{ext}">
    <meta name="ac-discovery" content="example.com https://v/{name}.{ext}?a=1&amp;b=2">
    </head></html>"""
    assert parse_meta(doc) == [
        MetaTag("ac-discovery", "example.com", "https://s/{name}.{ext}"),
        MetaTag("ac-discovery", "example.com", "https://t/{name}.{ext}"),
        MetaTag("ac-discovery", "example.com", "https://v/{name}.{ext}?a=1&b=2"),
    ]


def test_parse_app() -> None:
    assert parse_app("example.com/app:1.0,os=linux") == AppRef(
        "example.com/app", (("os", "linux"), ("version", "1.0"))
    )
    assert parse_app("example.com/app") == AppRef("example.com/app")
    full = parse_app("example.com/app,arch=aarch64").with_defaults()
    assert full.label("arch") == "aarch64" and full.label("os") == "linux"
    for bad in ("Example.com/app", "example.com/app:", "example.com/app,os", "a,os=x,os=y", "a:1,version=2"):
        with pytest.raises(ImageError):
            parse_app(bad)


def test_app_string_round_trip() -> None:
    for text in ("example.com/app", "example.com/app:1.0", "example.com/app:1.0,arch=amd64,os=linux"):
        assert str(parse_app(text)) == text
