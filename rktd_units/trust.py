"""Trusted OpenPGP keys by image-name prefix, and detached-signature checks with Sequoia's `sqv`.

Keys live as rkt kept them: `trustedkeys/root.d/<fingerprint>` (trusted for every image) and
`trustedkeys/prefix.d/<prefix>/<fingerprint>` under the local config (`/etc/rktd`), over the same
layout in the system config (`/usr/lib/rktd`). A file in the local config replaces the system file
of the same name; an empty local file masks it.

A prefix covers an image name by whole path components: `example.com/et` covers `example.com/et`
and `example.com/et/cd`, never `example.com/etcd` (rkt compared raw strings).

Fingerprints: the runtime needs `sqv` but not GnuPG, and `sqv` only verifies. So the fingerprint
of a key is computed here from its primary-key packet, as RFC 4880 §12.2 / RFC 9580 §5.5.4 define
it (v4: SHA-1 over 0x99, a 2-byte length and the packet body; v6: SHA-256 over 0x9B, a 4-byte
length and the body). That is framing and hashing only; every cryptographic check (signature,
expiry, revocation, binding signatures) is left to `sqv`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from rktd_units.errors import TrustError
from rktd_units.fsutil import write_atomic
from rktd_units.names import AC_IDENTIFIER_RE
from rktd_units.run import run

TRUSTED_KEYS = "trustedkeys"
ROOT_D = "root.d"
PREFIX_D = "prefix.d"

AC_IDENTIFIER = AC_IDENTIFIER_RE  # appc AC Identifier (names.py)

_TAG_PUBLIC_KEY = 6
_TAG_USER_ID = 13
_ARMOR_BEGIN = "-----BEGIN PGP PUBLIC KEY BLOCK-----"
_ARMOR_END = "-----END PGP PUBLIC KEY BLOCK-----"


@dataclass(frozen=True)
class PublicKey:
    """One transferable public key (certificate): its primary fingerprint, user IDs and bytes."""

    fingerprint: str  # lower-case hex, as rkt named the files
    user_ids: tuple[str, ...]
    data: bytes  # binary OpenPGP packets of this certificate only


# ---------------------------------------------------------------------------------------------------
# Minimal OpenPGP framing


def dearmor(data: bytes) -> bytes:
    """Binary packets of `data`: returned as is when binary, decoded when ASCII-armored."""
    if not data.lstrip().startswith(b"-----BEGIN PGP"):
        return data
    out = bytearray()
    lines = data.decode("ascii", errors="strict").splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() != _ARMOR_BEGIN:
            i += 1
            continue
        i += 1
        while i < len(lines) and lines[i].strip() and ":" in lines[i]:
            i += 1  # armor headers (Version:, Comment:)
        body: list[str] = []
        while i < len(lines) and lines[i].strip() != _ARMOR_END:
            line = lines[i].strip()
            if line and not (line.startswith("=") and len(line) == 5):
                body.append(line)
            i += 1
        if i >= len(lines):
            raise TrustError("truncated ASCII-armored key: no END line")
        try:
            out += base64.b64decode("".join(body), validate=True)
        except ValueError as e:
            raise TrustError(f"bad ASCII armor in key: {e}") from e
    if not out:
        raise TrustError("no PGP PUBLIC KEY BLOCK in the armored data")
    return bytes(out)


def packets(data: bytes) -> Iterator[tuple[int, int, int, int]]:
    """Yield (tag, header start, body start, body end) for each OpenPGP packet of binary `data`."""
    pos = 0
    while pos < len(data):
        start, first = pos, data[pos]
        if not first & 0x80:
            raise TrustError(f"not an OpenPGP key: bad packet header at byte {pos}")
        if first & 0x40:  # new format
            tag = first & 0x3F
            body, length = _new_length(data, pos + 1)
        else:
            tag, ltype = (first >> 2) & 0x0F, first & 0x03
            if ltype == 3:
                body, length = pos + 1, len(data) - pos - 1
            else:
                n = (1, 2, 4)[ltype]
                body, length = pos + 1 + n, int.from_bytes(data[pos + 1 : pos + 1 + n], "big")
        end = body + length
        if end > len(data):
            raise TrustError("not an OpenPGP key: truncated packet")
        yield tag, start, body, end
        pos = end


def _new_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise TrustError("not an OpenPGP key: truncated packet header")
    o1 = data[pos]
    if o1 < 192:
        return pos + 1, o1
    if o1 < 224:
        if pos + 1 >= len(data):
            raise TrustError("not an OpenPGP key: truncated packet header")
        return pos + 2, ((o1 - 192) << 8) + data[pos + 1] + 192
    if o1 == 255:
        return pos + 5, int.from_bytes(data[pos + 1 : pos + 5], "big")
    raise TrustError("not an OpenPGP key: partial body lengths are not allowed in keys")


def key_fingerprint(body: bytes) -> str:
    """Fingerprint of a public-key packet body (v4 and v6; v5 for completeness)."""
    if not body:
        raise TrustError("empty public-key packet")
    version = body[0]
    if version == 4:
        return hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body, usedforsecurity=False).hexdigest()
    if version == 5:
        return hashlib.sha256(b"\x9a" + len(body).to_bytes(4, "big") + body).hexdigest()
    if version == 6:
        return hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest()
    raise TrustError(f"unsupported OpenPGP key version {version}")


def parse_keys(data: bytes) -> list[PublicKey]:
    """Split armored or binary key material into certificates (one per primary public-key packet)."""
    raw = dearmor(data)
    certs: list[tuple[int, str, list[str]]] = []  # (start offset, fingerprint, user ids)
    for tag, start, body, end in packets(raw):
        if tag == _TAG_PUBLIC_KEY:
            certs.append((start, key_fingerprint(raw[body:end]), []))
        elif tag == _TAG_USER_ID and certs:
            certs[-1][2].append(raw[body:end].decode("utf-8", errors="replace"))
        elif not certs:
            raise TrustError(f"not an OpenPGP public key: first packet has tag {tag}, expected 6")
    if not certs:
        raise TrustError("no OpenPGP public key found")
    out = []
    for i, (start, fpr, uids) in enumerate(certs):
        end = certs[i + 1][0] if i + 1 < len(certs) else len(raw)
        out.append(PublicKey(fpr, tuple(uids), raw[start:end]))
    return out


# ---------------------------------------------------------------------------------------------------
# Prefixes and the key store


def check_prefix(prefix: str) -> str:
    """Validate a trust prefix (an AC Identifier: no empty, `.` or `..` components)."""
    p = prefix.strip().rstrip("/")
    if not AC_IDENTIFIER.match(p):
        raise TrustError(
            f"invalid prefix {prefix!r}",
            hint="a prefix is an image name or its leading path components, e.g. example.com/app",
        )
    return p


def name_prefixes(name: str) -> list[str]:
    """The prefixes that cover `name`, shortest first: a/b/c -> a, a/b, a/b/c."""
    parts = name.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


class KeyStore:
    """Trusted keys under a local config directory over a system one."""

    def __init__(self, local_config: Path | str, system_config: Path | str | None = None) -> None:
        self.local = Path(local_config) / TRUSTED_KEYS
        self.system = Path(system_config) / TRUSTED_KEYS if system_config else None

    def _dirs(self, rel: str) -> list[Path]:
        return [d / rel for d in (self.system, self.local) if d is not None]

    def _merged(self, rel: str) -> dict[str, Path]:
        """fingerprint file name -> path; local over system, empty local files mask."""
        found: dict[str, Path] = {}
        for d in self._dirs(rel):
            try:
                entries = sorted(os.scandir(d), key=lambda e: e.name)
            except (FileNotFoundError, NotADirectoryError):
                continue
            for e in entries:
                if e.name.startswith(".") or not e.is_file(follow_symlinks=True):
                    continue
                found[e.name] = Path(e.path)
        return {n: p for n, p in found.items() if p.stat().st_size > 0}

    def keys_for(self, name: str) -> list[Path]:
        """Key files that apply to image `name`: root keys and keys of every covering prefix."""
        out = list(self._merged(ROOT_D).values())
        for prefix in name_prefixes(name):
            if AC_IDENTIFIER.match(prefix):
                out.extend(self._merged(f"{PREFIX_D}/{prefix}").values())
        return out

    def add(self, key: PublicKey, *, prefix: str | None = None, root: bool = False) -> Path:
        """Store `key` for `prefix` (or as a root key) atomically in the local config; return its path."""
        if root == (prefix is not None):
            raise TrustError("give either a prefix or root, not both or neither")
        rel = ROOT_D if root else f"{PREFIX_D}/{check_prefix(prefix or '')}"
        directory = self.local / rel
        directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        dest = directory / key.fingerprint
        write_atomic(dest, key.data, 0o644)
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
        return dest


# ---------------------------------------------------------------------------------------------------
# Signature verification


def trust_hint(name: str) -> str:
    return f"trust the key with: rktd trust --prefix={name} KEYFILE, or skip with --insecure-options=image"


def verify(name: str, image: Path, signature: Path, keys: KeyStore) -> str:
    """Check the detached `signature` of `image` against exactly the keys trusted for `name`.

    Returns the fingerprint of the key that made the signature; raises TrustError otherwise.
    """
    keyring = keys.keys_for(name)
    if not keyring:
        raise TrustError(f"no key is trusted for image {name}", hint=trust_hint(name))
    argv: list[str] = ["sqv", *(f"--keyring={k}" for k in keyring), "--", str(signature), str(image)]
    proc = run(argv, check=False, timeout=120, what="sqv")
    if proc.returncode != 0:
        detail = " ".join(proc.stderr.decode(errors="replace").split())[-300:] or f"exit {proc.returncode}"
        raise TrustError(
            f"signature of image {name} does not verify with the {len(keyring)} key(s) trusted for it: "
            + detail,
            hint=trust_hint(name),
        )
    out = proc.stdout.decode(errors="replace").split()
    return out[0].lower() if out else ""
