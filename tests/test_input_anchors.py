"""Values that end up in files read line by line (resolv.conf, hosts) or in image names must not
carry a newline: `$` in a regex matches before a trailing newline, and `ipaddress` accepts any text
as an IPv6 scope. Each case here was accepted before the fix."""

from __future__ import annotations

import pytest

from rktd_units.docker import parse_ref
from rktd_units.errors import ImageError, UsageError
from rktd_units.network import DnsOptions, _parse_hosts_entry


@pytest.mark.parametrize(
    "ref",
    ["busybox\n", "busybox:latest\n", "example.com/app:1.0\n", "busybox@sha256:" + "0" * 64 + "\n"],
)
def test_docker_reference_with_trailing_newline_is_refused(ref: str) -> None:
    with pytest.raises(ImageError):
        parse_ref(ref)


def test_docker_reference_without_newline_still_parses() -> None:
    assert parse_ref("example.com/app:1.0").tag == "1.0"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"search": ("example.com\nnameserver 203.0.113.9",)},
        {"search": ("example.com\n",)},
        {"domain": "example.com\n"},
        {"servers": ("fe80::1%eth0\nnameserver 203.0.113.9",)},
        {"servers": ("fe80::1%a b",)},
    ],
)
def test_dns_values_cannot_inject_lines(kwargs: dict[str, object]) -> None:
    with pytest.raises(UsageError):
        DnsOptions(**kwargs)  # type: ignore[arg-type]


def test_scoped_nameserver_with_interface_name_is_kept() -> None:
    assert DnsOptions(servers=("fe80::1%eth0",)).servers == ("fe80::1%eth0",)


@pytest.mark.parametrize("entry", ["192.0.2.1=web\n", "192.0.2.1=web\n192.0.2.2 evil"])
def test_hosts_entry_with_newline_is_refused(entry: str) -> None:
    with pytest.raises(UsageError):
        _parse_hosts_entry(entry)
