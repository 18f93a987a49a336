"""Resolve stage of the weights pipeline: a model name or a file -> a local file.

- ``resolve``: a registry name -> its converted file in ``$OVSS_HOME/weights`` (or, when it is not
  there yet, the downloaded official checkpoint to install there first); a file path -> itself; a
  registry name + an explicit file -> that file, read as that model.
- ``fetch_source``: the official checkpoint of a registry entry, from the Hugging Face cache under
  ``$OVSS_HOME/hub`` or downloaded (``HF_ENDPOINT`` honoured; an unreachable endpoint fails at once
  with one line; offline mode, ``OVSS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, never touches the network),
  or from a plain URL (:mod:`ovss.weights.urlfetch`); its sha256 is checked, and handed on with the
  path (:class:`Fetched`) so the conversion records it without reading the file again.

Progress lines ("downloading ...") go to the ``ovss.weights`` logger; the CLI shows them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import time
from pathlib import Path

from ovss import __version__
from ovss.errors import DigestMismatchError, UnknownModelError, WeightsNotFoundError
from ovss.home import cache_folder, check_file_slot, is_offline, ovss_home
from ovss.utils import sha256_file
from ovss.weights.registry import WeightSpec, get_weight_spec, list_weights

log = logging.getLogger("ovss.weights")

_PROBE_TIMEOUT = 10.0  # seconds to wait for the hub to answer the first request


def converted_path(name: str) -> Path:
    """Where the converted weights of registry entry ``name`` live."""
    return ovss_home() / "weights" / f"{name}.safetensors"


def is_available(spec: WeightSpec) -> bool:
    """Whether ``spec`` can be loaded without the network."""
    return spec.source_format == "random" or converted_path(spec.name).is_file()


# ----------------------------------------------------------------------------------------- hub
def hub_page(spec: WeightSpec) -> str:
    """Web page of the hub repository of ``spec`` (Spaces live under ``/spaces/``)."""
    kind = {"model": "", "space": "spaces/", "dataset": "datasets/"}[spec.hub_repo_type]
    return f"https://huggingface.co/{kind}{spec.hub_repo}"


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


@dataclasses.dataclass(frozen=True)
class Fetched:
    """The official checkpoint of a registry entry, fetched and checked by :func:`fetch_source`.

    Attributes:
        path: the local file (hub cache or ``$OVSS_HOME/hub/url``).
        sha256: its sha256, taken (and checked) while fetching: ``convert_checkpoint(..., sha256=)``
            records it without hashing the file a second time.
    """

    path: Path
    sha256: str


def fetch_source(spec: WeightSpec, alternative: str = "") -> Fetched:
    """The source checkpoint of ``spec`` and its sha256, from the hub cache or downloaded (unless offline).

    Args:
        spec: the registry entry.
        alternative: appended to "not available" messages (e.g. how to pass the file directly).

    Returns:
        the local file and its sha256 (hashed once, here).

    Raises:
        WeightsNotFoundError: no hub copy, offline and not cached, endpoint unreachable, download failed.
        DigestMismatchError: the file does not have the pinned sha256 (or the hub's content sha256);
            a freshly downloaded bad file is removed from the cache.
    """
    if spec.url is not None:  # a plain URL (download.openmmlab.com), not the Hub
        from ovss.weights.urlfetch import fetch_url

        if not is_offline():
            log.info("fetching %s for %s (once; cached)", spec.url, spec.name)
        return Fetched(*fetch_url(spec.name, spec.url, spec.sha256))
    if not spec.downloadable:
        raise WeightsNotFoundError(
            f"{spec.name} has no hub copy: download it from {spec.manual_url} and run "
            f"'ovss convert {spec.name} FILE'{alternative}"
        )
    import huggingface_hub
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    repo, file = spec.hub_repo, spec.hub_file
    assert repo is not None and file is not None  # downloadable without a url

    hub = cache_folder("hub", create=True)
    where = converted_path(spec.name)
    manual = f"{spec.hub_file} from {hub_page(spec)}"
    # already downloaded: a lookup in the cache folder only, no request of any kind
    cached = try_to_load_from_cache(
        repo, file, cache_dir=str(hub), repo_type=spec.hub_repo_type
    )
    path = Path(cached) if isinstance(cached, str) and Path(cached).is_file() else None
    if path is None:
        if is_offline():
            raise WeightsNotFoundError(
                f"{spec.name} is not in the cache ({where}) and offline mode is on (OVSS_OFFLINE=1): run "
                f"'ovss download {spec.name}' with network access, or fetch {manual} and run 'ovss convert "
                f"{spec.name} FILE'{alternative}"
            )
        _probe(spec, manual, alternative)
        _remove_stale_partials(hub, huggingface_hub.__version__)
        log.info("downloading %s for %s from %s", spec.hub_file, spec.name, hub_page(spec))
        try:
            path = Path(
                hf_hub_download(
                    repo, file, repo_type=spec.hub_repo_type, cache_dir=str(hub),
                    endpoint=_endpoint(), etag_timeout=_PROBE_TIMEOUT, library_name="ovss",
                    library_version=__version__,
                )
            )
        except Exception as e:  # huggingface_hub raises many unrelated types for network errors
            raise WeightsNotFoundError(
                f"downloading {manual} failed ({_reason(e)}); run 'ovss download {spec.name}' again, or "
                f"fetch the file by hand and run 'ovss convert {spec.name} FILE'"
            ) from None
    return Fetched(path, _verify_download(path, spec))


# huggingface_hub versions whose private cache layout _remove_stale_partials knows (checked against 2.4):
# a download goes to ``<repo folder>/blobs/<etag>.<8 hex>.incomplete``, a name unique to its process,
# so the partial file of a killed process is never resumed and stays forever. Other versions: untouched.
_PARTIALS_KNOWN = ((2, 4), (2, 99))  # first and last (major, minor)
_PARTIAL_RE = re.compile(r"^[0-9a-f]+\.[0-9a-f]{8}\.incomplete$")


def _remove_stale_partials(hub: Path, hub_version: str, age_s: float = 600.0) -> list[Path]:
    """Delete per-process ``*.incomplete`` downloads nobody has written to for ``age_s`` (left by killed
    processes), for the huggingface_hub versions in :data:`_PARTIALS_KNOWN` only; returns those removed."""
    try:
        version = tuple(int(part) for part in hub_version.split(".")[:2])
    except ValueError:
        return []
    if not _PARTIALS_KNOWN[0] <= version <= _PARTIALS_KNOWN[1]:
        return []
    now, removed = time.time(), []
    for partial in hub.glob("*/blobs/*.incomplete"):
        with contextlib.suppress(OSError):
            if _PARTIAL_RE.match(partial.name) and now - partial.stat().st_mtime > age_s:
                partial.unlink()
                removed.append(partial)
    return removed


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def _probe(spec: WeightSpec, manual: str, alternative: str) -> None:
    """One HEAD request without retries: fail in seconds, with one line, when the hub is unreachable."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    assert spec.hub_repo is not None and spec.hub_file is not None  # called for hub downloads only
    url = hf_hub_url(spec.hub_repo, spec.hub_file, repo_type=spec.hub_repo_type, endpoint=_endpoint())
    try:
        get_hf_file_metadata(url, timeout=_PROBE_TIMEOUT, endpoint=_endpoint())
    except Exception as e:  # connection refused, DNS, timeout, 404, proxy: all end the same way
        status = getattr(getattr(e, "response", None), "status_code", None)
        problem = f"the hub answered {status} for {url}" if status else f"cannot reach {url} ({_reason(e)})"
        raise WeightsNotFoundError(
            f"{spec.name} is not downloaded and {problem}: check the network (or HF_ENDPOINT), set "
            f"OVSS_OFFLINE=1 to work offline, or fetch {manual} and run 'ovss convert {spec.name} "
            f"FILE'{alternative}"
        ) from None


def _verify_download(path: Path, spec: WeightSpec) -> str:
    """The sha256, checked against the pinned digest or the hub's own (LFS blobs are named by it)."""
    blob = path.resolve()
    expected = spec.sha256
    if expected is None and len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name):
        expected = blob.name
    try:
        return verify_digest(path, expected, spec.name)
    except DigestMismatchError as e:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise DigestMismatchError(
            f"{str(e).split('; ')[0]}; the file was removed from the cache: run 'ovss download {spec.name}' "
            f"again, and report it if it happens twice"
        ) from None


def verify_digest(path: Path, expected: str | None, what: str, digest: str | None = None) -> str:
    """sha256 of ``path`` (``digest``: already taken, not hashed again); raises DigestMismatchError when
    ``expected`` is given and differs."""
    digest = sha256_file(path) if digest is None else digest.lower()
    if expected is not None and digest != expected.lower():
        raise DigestMismatchError(
            f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}... for {what}; the file is not "
            f"used: delete it and download again ('ovss download {what}')"
        )
    return digest


# ----------------------------------------------------------------------------------------- resolve
@dataclasses.dataclass(frozen=True)
class Source:
    """What the resolve stage hands on.

    Attributes:
        path: the local file to read (None: a built-in model with random weights, ``spec.seed``).
        spec: the registry entry the file is read as (None: a bare file, its model is detected).
        cache: the converted-weights cache file of ``spec`` when ``path`` is that file, or the file
            ``path`` (a downloaded official checkpoint) is to be installed into first.
        sha256: the sha256 of ``path`` when this stage took it (a fetched official checkpoint), for the
            conversion to record; None otherwise.
    """

    path: Path | None
    spec: WeightSpec | None
    cache: Path | None = None
    sha256: str | None = None

    @property
    def install(self) -> bool:
        """Whether ``path`` is an official checkpoint to convert into ``cache`` before reading."""
        return self.cache is not None and self.path != self.cache


def resolve(name_or_path: str | Path, weights: str | Path | None = None) -> Source:
    """A model name or file (+ an explicit file for a registry name) -> the local file to read.

    Raises:
        UnknownModelError: an empty or unknown name (the message lists close names).
        WeightsNotFoundError / DigestMismatchError: the weights cannot be fetched (see :func:`fetch_source`).
    """
    name = str(name_or_path)
    if not name.strip():  # Path("") is ".", the current folder: "is a folder" would mislead
        raise UnknownModelError("no model given (an empty name); pass a name 'ovss models' lists or a file")
    path = Path(name)
    registered = name in list_weights()
    if weights is None and not registered and (
        path.suffix in {".pth", ".pt", ".pkl", ".bin", ".safetensors"} or _exists(path) or os.sep in name
    ):
        return Source(path, None)
    spec = get_weight_spec(name)
    if weights is not None:
        return Source(Path(weights), spec)
    if spec.source_format == "random":
        return Source(None, spec)
    target = converted_path(spec.name)
    if check_file_slot(target):
        return Source(target, spec, target)
    alternative = ", or pass the file itself (--weights FILE, or weights= in ovss.load)"
    fetched = fetch_source(spec, alternative)
    return Source(fetched.path, spec, target, fetched.sha256)


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name that cannot be a path (too long, a NUL byte: a model name)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False
