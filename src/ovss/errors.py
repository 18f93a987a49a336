"""One exception hierarchy for everything a user can get wrong.

Every message says what failed, shows the offending value and gives the fix.
The CLI prints ``str(error)`` on one line and exits non-zero; tracebacks only under ``--debug``.
"""

from __future__ import annotations


class OvssError(Exception):
    """Base class of every error ovss raises on purpose."""


class ConfigError(OvssError, ValueError):
    """A configuration field or override is invalid (unknown key, bad type, bad value)."""


class UnknownModelError(OvssError, KeyError):
    """A model, weights or config name is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain.
        return str(self.args[0]) if self.args else ""


class WeightsNotFoundError(OvssError, FileNotFoundError):
    """Weights are not on disk and cannot (or may not) be downloaded."""


class DigestMismatchError(OvssError):
    """A downloaded or local file does not have the registered sha256."""


class CheckpointMismatchError(OvssError):
    """A state dict does not fit the model: missing, unexpected or wrongly shaped keys."""


class WeightsFileError(OvssError):
    """A weights file is truncated, corrupt, fails its integrity check, has bad metadata or is not a file."""


class CacheError(OvssError):
    """``$OVSS_HOME`` or one of its folders/files is the wrong kind of object or cannot be created."""


class VocabularyError(OvssError, ValueError):
    """A class list is empty or malformed."""


class ImageReadError(OvssError):
    """A file is missing or is not an image Pillow can decode."""


class ImageTooLargeError(ImageReadError):
    """An image has more pixels than the configured limit (``max_pixels`` / ``$OVSS_MAX_PIXELS``).

    ``size`` is the image's (width, height) when its header could be read, else None.
    """

    def __init__(self, message: str, size: tuple[int, int] | None = None) -> None:
        super().__init__(message)
        self.size = size


class OutputPathError(OvssError):
    """An output path (``--out``) is a file, lies under a file, or cannot be written."""


class DatasetError(OvssError):
    """A dataset folder is missing, incomplete or malformed."""


class MissingDependencyError(OvssError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


def missing_dependency(package: str, extra: str) -> MissingDependencyError:
    """Build the error for an optional dependency that is not installed."""
    return MissingDependencyError(f"{package} is not installed; install it with: pip install 'ovss[{extra}]'")
