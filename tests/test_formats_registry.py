"""The format registry: a Kubernetes manifest's metadata.name must match its file name."""

from __future__ import annotations

from pathlib import Path

import pytest

from rktd_units import formats
from rktd_units.errors import ManifestError
from rktd_units.model import ManifestFormat

ROOT = Path(__file__).resolve().parent.parent


def test_kube_name_matches_file(tmp_path: Path) -> None:
    src = (ROOT / "examples" / "hello-kube.yaml").read_bytes()
    good = tmp_path / "hello-kube.yaml"
    good.write_bytes(src)
    pf = formats.load(good, "hello-kube")
    assert pf.name == "hello-kube" and pf.format is ManifestFormat.KUBERNETES


def test_kube_name_mismatch_is_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "other.yaml"
    bad.write_bytes((ROOT / "examples" / "hello-kube.yaml").read_bytes())
    with pytest.raises(ManifestError) as info:
        formats.load(bad, "other")
    assert info.value.field == "metadata.name"
    assert str(info.value).startswith(f"{bad}: metadata.name: 'hello-kube' differs")
