"""A Kubernetes pod runs its image's app with the container's settings over it (not instead of it)."""

from __future__ import annotations

import os
from pathlib import Path

from rktd_units.store import Store
from tests.helpers.aci import make_busybox_aci
from tests.test_stage1_nspawn import Rktd, busybox_aci, needs_root, rktd

__all__ = ["busybox_aci", "rktd"]
pytestmark = [needs_root]

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: kubehello
spec:
  restartPolicy: Never
  containers:
  - name: hello
    image: 127.0.0.1:5000/busybox:1.0
    env:
    - name: FOO
      value: from-container
"""


def test_kube_container_env_over_image_exec(rktd: Rktd, tmp_path: Path) -> None:
    # The image (as a docker:// fetch would have named it) carries the exec and its own environment.
    aci = make_busybox_aci(
        tmp_path / "k.aci",
        name="127.0.0.1_5000/busybox",
        labels={"version": "1.0"},
        exec=["/bin/sh", "-c", "echo $FOO $FROM_IMAGE"],
        app={"environment": [{"name": "FROM_IMAGE", "value": "image-env"}]},
    )
    data = rktd.dir
    Store(data).import_aci(aci)
    pods = tmp_path / "pods"
    pods.mkdir(mode=0o755)
    os.chmod(pods, 0o755)
    manifest = pods / "kubehello.yaml"
    manifest.write_text(POD)
    os.chmod(manifest, 0o644)
    proc = rktd("run", "--stage1=fly", f"--pod-manifest={manifest}")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "from-container image-env"
