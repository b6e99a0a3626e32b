"""One way to run subprocesses: argv lists, clean environment, stdin from /dev/null, clear failures."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from rktd_units.errors import CommandError

log = logging.getLogger("rktd")

# What a child may inherit when the caller passes no environment of its own.
_KEEP_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SYSTEMD_LOG_LEVEL", "NOTIFY_SOCKET")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: os.environ[k] for k in _KEEP_ENV if k in os.environ}
    env.setdefault("PATH", DEFAULT_PATH)
    if extra:
        env.update(extra)
    return env


def run(
    argv: Sequence[str | os.PathLike[str]],
    *,
    env: Mapping[str, str] | None = None,
    input: bytes | None = None,
    check: bool = True,
    capture: bool = True,
    timeout: float | None = None,
    what: str | None = None,
    **kwargs: Any,
) -> subprocess.CompletedProcess[bytes]:
    """Run argv; raise CommandError naming the command (or `what`) and its stderr on failure."""
    args = [os.fspath(a) for a in argv]
    log.debug("+ %s", shlex.join(args))
    try:
        proc = subprocess.run(
            args,
            env=clean_env() if env is None else dict(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            timeout=timeout,
            check=False,
            **kwargs,
        )
    except FileNotFoundError as e:
        raise CommandError(f"{what or args[0]}: command not found", hint=f"install {args[0]}") from e
    except subprocess.TimeoutExpired as e:
        raise CommandError(f"{what or args[0]}: timed out after {timeout}s") from e
    if check and proc.returncode != 0:
        err = (proc.stderr or b"").decode(errors="replace").strip().splitlines()
        detail = err[-1] if err else f"exit status {proc.returncode}"
        raise CommandError(f"{what or shlex.join(args)}: {detail}")
    return proc
