"""Registry weights published at a plain URL (download.openmmlab.com), not on the Hugging Face Hub.

The file is downloaded once into ``$OVSS_HOME/hub/url/<file name>`` (atomically: an interrupted
download leaves no partial file under that name) and checked before use:

- against ``WeightSpec.sha256`` when the registry pins the full digest;
- otherwise against the digest recorded beside the file (``<file name>.sha256``) on its first
  download; that first download is checked against the hash prefix in the file name: OpenMMLab's
  ``publish_model`` names a release ``<name>-<first 8 hex digits of its sha256>.pth`` (the convention
  ``torch.hub`` checks too).

Offline mode (``OVSS_OFFLINE=1``) never touches the network. Every failure is one line that gives the
URL for a manual download and the ``ovss convert`` command that installs the file.
"""

from __future__ import annotations

import logging
import re
import urllib.error
import urllib.request
from pathlib import Path

from ovss.errors import DigestMismatchError, WeightsNotFoundError
from ovss.home import cache_folder, is_offline
from ovss.utils import atomic_write, atomic_write_text, sha256_file

log = logging.getLogger("ovss.weights.urlfetch")

TIMEOUT_S = 30.0  # seconds without an answer before a download is given up
_HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z0-9]+$")


def name_hash_prefix(url: str) -> str | None:
    """The sha256 prefix in a release file name (``san-vit-b16_20230906-fd0a7684.pth`` -> ``fd0a7684``)."""
    m = _HASH_IN_NAME.search(url.rsplit("/", 1)[-1])
    return m[1] if m else None


def _manual(name: str, url: str) -> str:
    return f"download {url} by hand and run 'ovss convert {name} FILE'"


def _stream(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as f:
        while chunk := response.read(1 << 20):
            f.write(chunk)


def fetch_url(name: str, url: str, sha256: str | None = None) -> tuple[Path, str]:
    """The file at ``url`` for registry entry ``name``, from the cache or downloaded, and its sha256
    (checked; taken once, here).

    Raises:
        WeightsNotFoundError: offline and not cached, or the download failed (the message gives the URL).
        DigestMismatchError: the file is not the published one (it is deleted).
    """
    if not url.startswith(("https://", "http://")):
        raise WeightsNotFoundError(f"{name} has no downloadable URL ({url!r}); {_manual(name, url)}")
    folder = cache_folder("hub", create=True) / "url"
    path = folder / url.rsplit("/", 1)[-1]
    record = path.with_name(path.name + ".sha256")
    if not path.is_file():
        if is_offline():
            raise WeightsNotFoundError(
                f"{name} is not downloaded and offline mode is on (OVSS_OFFLINE=1): run 'ovss download "
                f"{name}' with network access, or {_manual(name, url)}"
            )
        log.debug("downloading %s for %s", url, name)  # resolve logs the progress line
        try:
            atomic_write(path, lambda tmp: _stream(url, tmp))
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", None) or getattr(e, "code", None) or type(e).__name__
            raise WeightsNotFoundError(f"downloading {url} failed ({reason}); {_manual(name, url)}") from None
    digest = sha256_file(path)
    expected = sha256 or (record.read_text().strip() if record.is_file() else None)
    prefix = name_hash_prefix(url)
    wrong_prefix = not expected and prefix is not None and not digest.startswith(prefix)
    if (expected and digest != expected.lower()) or wrong_prefix:
        path.unlink(missing_ok=True)
        record.unlink(missing_ok=True)
        want = expected[:16] if expected else f"{prefix} (the hash in its name)"
        raise DigestMismatchError(
            f"{url} gave a file with sha256 {digest[:16]}..., expected {want}...; it was deleted: run "
            f"'ovss download {name}' again, or {_manual(name, url)}"
        )
    if not record.is_file():
        atomic_write_text(record, digest + "\n")  # later uses check the full digest of the first download
    return path, digest
