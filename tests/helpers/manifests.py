"""One-app appc pod manifests for tests (acVersion first, as a hand-written file often has it)."""

from __future__ import annotations

import json


def pod_manifest(
    exec_: str = "/bin/true",
    annotations: dict[str, str] | None = None,
    *,
    app: str = "main",
    image: str = "example.com/busybox",
) -> str:
    doc: dict[str, object] = {
        "acVersion": "0.8.11",
        "acKind": "PodManifest",
        "apps": [
            {"name": app, "image": {"name": image}, "app": {"exec": [exec_], "user": "0", "group": "0"}}
        ],
    }
    if annotations:
        doc["annotations"] = [{"name": k, "value": v} for k, v in annotations.items()]
    return json.dumps(doc) + "\n"
