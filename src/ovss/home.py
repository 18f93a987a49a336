"""``$OVSS_HOME`` and its folders, checked before use (weights, text embeddings and remote images use them).

Layout under ``$OVSS_HOME`` (default ``~/.cache/ovss``): ``hub/`` (the Hugging Face cache of downloaded
source checkpoints), ``weights/`` (converted ``<name>.safetensors`` files) and ``text/`` (text-embedding
caches). A folder or file of the wrong kind (``OVSS_HOME`` pointing at a file, a cache file that is a
folder, a parent that cannot be created) is reported as one :class:`~ovss.errors.CacheError` naming the
path and the fix, never as a raw ``FileExistsError`` / ``NotADirectoryError``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ovss.errors import CacheError
from ovss.utils import path_kind

_TRUE = {"1", "true", "yes", "on"}


def ovss_home() -> Path:
    """Root of the ovss cache (``$OVSS_HOME`` or ``~/.cache/ovss``)."""
    return Path(os.environ.get("OVSS_HOME", "~/.cache/ovss")).expanduser()


def is_offline() -> bool:
    """True when ``OVSS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set to a true value."""
    return any(os.environ.get(k, "").lower() in _TRUE for k in ("OVSS_OFFLINE", "HF_HUB_OFFLINE"))


def _kind(path: Path) -> str | None:
    """``"folder"``, ``"file"``, ``"special file"`` or None when ``path`` does not exist."""
    kind = path_kind(path, missing=(OSError,))  # a parent that is a file is reported for that parent
    return {"missing": None, "fifo": "special file"}.get(kind, kind)


def _describe(path: Path) -> str:
    home = ovss_home()
    return f"OVSS_HOME={path}" if path == home else str(path)


def check_folder(path: Path, create: bool = False) -> Path:
    """Refuse ``path`` (a cache folder) when it or a parent is not a folder; optionally create it.

    Raises:
        CacheError: one line naming the offending path and the fix (set OVSS_HOME / move the file away).
    """
    path = Path(path)
    for part in (*reversed(path.parents), path):
        kind = _kind(part)
        if kind is None:
            break
        if kind != "folder":
            raise CacheError(
                f"{_describe(part)} is a {kind}, not a folder; move it away or set OVSS_HOME to a folder"
            )
    if create:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CacheError(
                f"cannot create the cache folder {path} ({e.strerror or type(e).__name__}); set OVSS_HOME "
                f"to a writable folder"
            ) from None
    return path


def check_file_slot(path: Path) -> bool:
    """Whether the cache file ``path`` exists (False: absent); its folder is checked too.

    Raises:
        CacheError: ``path`` is a folder or a special file (FIFO, device), or a parent is not a folder.
    """
    path = Path(path)
    check_folder(path.parent)
    kind = _kind(path)
    if kind is None:
        return False
    if kind != "file":
        raise CacheError(f"{path} is a {kind}, expected a file; delete or move it")
    return True


def cache_folder(kind: str, create: bool = False) -> Path:
    """``$OVSS_HOME/<kind>`` (``hub``, ``weights`` or ``text``), checked (and created when asked)."""
    return check_folder(ovss_home() / kind, create=create)
