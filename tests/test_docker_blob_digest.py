"""A docker blob is checked against its digest as it is downloaded: the right content is kept, other
content is refused. Served by a plain HTTP server on 127.0.0.1 made here (Debian's docker-registry
stores blobs by digest, so it cannot serve a wrong one)."""

from __future__ import annotations

import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rktd_units.docker import Registry, parse_ref
from rktd_units.errors import ImageError
from rktd_units.fetch import Http

BODY = b"layer bytes " * 10_000


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"{}" if self.path == "/v2/" else BODY
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[Registry]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ref = parse_ref(f"127.0.0.1:{server.server_address[1]}/test/app:1")
        yield Registry(ref, Http(allow_http=True, progress=False))
    finally:
        server.shutdown()
        server.server_close()


def test_a_blob_matching_its_digest_is_kept(registry: Registry, tmp_path: Path) -> None:
    dest = tmp_path / "blob"
    registry.blob("sha256:" + hashlib.sha256(BODY).hexdigest(), dest)
    assert dest.read_bytes() == BODY


def test_a_blob_not_matching_its_digest_is_refused(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="content does not match its digest"):
        registry.blob("sha256:" + hashlib.sha256(b"other").hexdigest(), tmp_path / "blob")
