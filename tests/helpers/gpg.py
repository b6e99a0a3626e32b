"""Real GnuPG keys and detached signatures in a private, temporary GNUPGHOME."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Key:
    fingerprint: str  # lower-case hex
    armored: bytes
    binary: bytes


class Gpg:
    """gpg --batch with no passphrase; the home is short-lived and its agent killed on close."""

    def __init__(self, home: Path) -> None:
        self.home = home

    def _gpg(self, *args: str, input: bytes | None = None) -> bytes:
        argv = [
            "gpg",
            "--homedir",
            str(self.home),
            "--batch",
            "--pinentry-mode",
            "loopback",
            "--passphrase",
            "",
        ]
        proc = subprocess.run([*argv, *args], input=input, capture_output=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr.decode(errors="replace")
        return proc.stdout

    def make_key(self, uid: str, algo: str = "ed25519") -> Key:
        self._gpg("--quick-gen-key", uid, algo, "sign", "never")
        out = self._gpg("--list-keys", "--with-colons", uid).decode()
        fpr = next(line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:"))
        return Key(fpr.lower(), self._gpg("--armor", "--export", fpr), self._gpg("--export", fpr))

    def sign(self, key: Key, path: Path, *, armor: bool = True) -> Path:
        sig = path.with_name(path.name + (".asc" if armor else ".sig"))
        sig.unlink(missing_ok=True)
        self._gpg(
            "--local-user",
            key.fingerprint,
            *(["--armor"] if armor else []),
            "--detach-sign",
            "--output",
            str(sig),
            str(path),
        )
        return sig

    def close(self) -> None:
        subprocess.run(
            ["gpgconf", "--homedir", str(self.home), "--kill", "all"],
            capture_output=True,
            timeout=30,
            check=False,
        )


@contextmanager
def gpg_home() -> Iterator[Gpg]:
    # A short path: gpg-agent's socket path must fit in sun_path.
    home = Path(tempfile.mkdtemp(prefix="rktd-gpg-"))
    home.chmod(0o700)
    g = Gpg(home)
    try:
        yield g
    finally:
        g.close()
        shutil.rmtree(home, ignore_errors=True)
