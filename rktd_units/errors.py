"""Typed errors. The library raises these; `main()` turns them into one line and an exit code."""

from __future__ import annotations

# rkt's stage0 exits 254 on its own errors; the pod's exit status is the failing app's otherwise.
EXIT_STAGE0 = 254


class RktdError(Exception):
    """Base of every error the project raises on purpose."""

    exit_code: int = EXIT_STAGE0

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class ManifestError(RktdError):
    """A manifest is wrong: `PATH: field.path: message (hint)`."""

    exit_code = 1

    def __init__(self, path: str | None, field: str, message: str, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.path = path
        self.field = field

    def with_path(self, path: str) -> ManifestError:
        return ManifestError(path, self.field, self.message, hint=self.hint)

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        if self.hint:
            text += f" ({self.hint})"
        return f"{self.path}: {text}" if self.path else text


class UsageError(RktdError):
    """Bad command-line use."""


class ImageError(RktdError):
    """An image cannot be fetched, read, verified or extracted."""


class TrustError(ImageError):
    """A signature or key does not verify or is not trusted."""


class StoreError(RktdError):
    """The image store is inconsistent or cannot be written."""


class PodError(RktdError):
    """A pod cannot be prepared, run, found or changed."""


class NetworkError(RktdError):
    """A network cannot be set up or torn down."""


class CommandError(RktdError):
    """An external command failed."""
