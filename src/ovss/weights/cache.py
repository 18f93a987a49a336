"""Named weights on disk: hub download, digest check, convert once, and ``load_model``.

- ``fetch_source``: the official checkpoint of a registry entry, from the Hugging Face cache under
  ``$OVSS_HOME/hub`` or downloaded (``HF_ENDPOINT`` honoured; an unreachable endpoint fails at once
  with one line; offline mode, ``OVSS_OFFLINE=1`` or ``HF_HUB_OFFLINE=1``, never touches the network).
- ``convert_checkpoint``: official (or ovss) file -> ``$OVSS_HOME/weights/<name>.safetensors``, a
  self-describing file (:mod:`ovss.weights.modelfile`) carrying a digest of its config and data.
- ``load_model``: registry name, file path, or name + explicit file -> (model, info). Each file is
  opened, checked (header, metadata, shapes on the meta device, integrity) and read exactly once.

The file format lives in :mod:`ovss.weights.modelfile`, format detection in :mod:`ovss.weights.detect`,
the cache folders in :mod:`ovss.weights.home`; their public names are re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ovss.errors import CheckpointMismatchError, DigestMismatchError, UnknownModelError, WeightsNotFoundError
from ovss.utils import atomic_write, sha256_file
from ovss.weights.detect import (  # noqa: F401  (re-exported)
    CLIP_FORMATS,
    MODEL_FORMATS,
    convert_state_dict,
    detect_format,
    fits,
    format_title,
    identify,
    match_variant,
    model_formats,
    other_family_error,
    other_variant_error,
)
from ovss.weights.home import cache_folder, check_file_slot, is_offline, ovss_home
from ovss.weights.modelfile import (  # noqa: F401  (re-exported)
    FORMAT_VERSION,
    ModelFile,
    check_fits,
    check_regular_file,
    looks_like_safetensors,
    open_model_file,
    read_model_file,
    save_model_file,
    stamp_path,
    write_stamp,
)
from ovss.weights.registry import WeightSpec, get_weight_spec, list_weights

_PROBE_TIMEOUT = 10.0  # seconds to wait for the hub to answer the first request


def converted_path(name: str) -> Path:
    """Where the converted weights of registry entry ``name`` live."""
    return ovss_home() / "weights" / f"{name}.safetensors"


def is_available(spec: WeightSpec) -> bool:
    """Whether ``spec`` can be loaded without the network."""
    return spec.source_format == "random" or converted_path(spec.name).is_file()


def say(message: str) -> None:
    """One progress line on stderr (conversion, download)."""
    print(f"ovss: {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------- hub
def hub_page(spec: WeightSpec) -> str:
    """Web page of the hub repository of ``spec`` (Spaces live under ``/spaces/``)."""
    kind = {"model": "", "space": "spaces/", "dataset": "datasets/"}[spec.hub_repo_type]
    return f"https://huggingface.co/{kind}{spec.hub_repo}"


def _endpoint() -> str | None:
    return os.environ.get("HF_ENDPOINT") or None


def fetch_source(spec: WeightSpec, alternative: str = "") -> Path:
    """Path of the source checkpoint of ``spec``, from the hub cache or downloaded (unless offline).

    Args:
        spec: the registry entry.
        alternative: appended to "not available" messages (e.g. how to pass the file directly).

    Raises:
        WeightsNotFoundError: no hub copy, offline and not cached, endpoint unreachable, download failed.
        DigestMismatchError: the file does not have the pinned sha256 (or the hub's content sha256);
            a freshly downloaded bad file is removed from the cache.
    """
    if spec.url is not None:  # a plain URL (download.openmmlab.com), not the Hub
        from ovss.weights.urlfetch import fetch_url

        if not is_offline():
            say(f"fetching {spec.url} for {spec.name} (once; cached)")
        return fetch_url(spec.name, spec.url, spec.sha256)
    if not spec.downloadable:
        raise WeightsNotFoundError(
            f"{spec.name} has no hub copy: download it from {spec.manual_url} and run "
            f"'ovss convert {spec.name} FILE'{alternative}"
        )
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    hub = cache_folder("hub", create=True)
    where = converted_path(spec.name)
    manual = f"{spec.hub_file} from {hub_page(spec)}"
    # already downloaded: a lookup in the cache folder only, no request of any kind
    cached = try_to_load_from_cache(
        spec.hub_repo, spec.hub_file, cache_dir=str(hub), repo_type=spec.hub_repo_type
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
        _remove_stale_partials(hub)
        say(f"downloading {spec.hub_file} for {spec.name} from {hub_page(spec)}")
        try:
            path = Path(
                hf_hub_download(
                    spec.hub_repo, spec.hub_file, repo_type=spec.hub_repo_type, cache_dir=str(hub),
                    endpoint=_endpoint(), etag_timeout=_PROBE_TIMEOUT,
                )
            )
        except Exception as e:  # huggingface_hub raises many unrelated types for network errors
            raise WeightsNotFoundError(
                f"downloading {manual} failed ({_reason(e)}); run 'ovss download {spec.name}' again, or "
                f"fetch the file by hand and run 'ovss convert {spec.name} FILE'"
            ) from None
    _verify_download(path, spec)
    return path


def _remove_stale_partials(hub: Path, age_s: float = 600.0) -> None:
    """Delete ``*.incomplete`` downloads nobody has written to for ``age_s`` (left by killed processes:
    huggingface_hub names them per process and restarts interrupted downloads, so they are never reused)."""
    now = time.time()
    for partial in hub.glob("*/blobs/*.incomplete"):
        with contextlib.suppress(OSError):
            if now - partial.stat().st_mtime > age_s:
                partial.unlink()


def _reason(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0][:160]}" if text else type(error).__name__


def _probe(spec: WeightSpec, manual: str, alternative: str) -> None:
    """One HEAD request without retries: fail in seconds, with one line, when the hub is unreachable."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

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


def _verify_download(path: Path, spec: WeightSpec) -> None:
    """sha256 against the pinned digest, or the hub's own (LFS blobs are named by their sha256)."""
    blob = path.resolve()
    expected = spec.sha256
    if expected is None and len(blob.name) == 64 and all(c in "0123456789abcdef" for c in blob.name):
        expected = blob.name
    try:
        verify_digest(path, expected, spec.name)
    except DigestMismatchError as e:
        blob.unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        raise DigestMismatchError(
            f"{str(e).split('; ')[0]}; the file was removed from the cache: run 'ovss download {spec.name}' "
            f"again, and report it if it happens twice"
        ) from None


def verify_digest(path: Path, expected: str | None, what: str) -> str:
    """sha256 of ``path``; raises DigestMismatchError when ``expected`` is given and differs."""
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise DigestMismatchError(
            f"{path} has sha256 {digest[:16]}..., expected {expected[:16]}... for {what}; the file is not "
            f"used: delete it and download again ('ovss download {what}')"
        )
    return digest


# ----------------------------------------------------------------------------------------- conversion
def convert_checkpoint(spec: WeightSpec, source: Path, out: str | Path | None = None) -> Path:
    """Convert a checkpoint file for ``spec`` into ovss's format (once; atomic; digest recorded).

    ``out``: a file, or a folder (an existing one, or a path ending in "/", created) for NAME.safetensors.

    ``source`` may be in any model format of ``spec``'s family (detected), an ovss ``.safetensors``
    (copied with a fresh name and digest) or a bare state dict already in the ovss layout.

    Raises:
        CheckpointMismatchError: the file is of another family (the message names it and the model
            name that fits), a CLIP checkpoint, or does not fit ``spec``'s architecture.
        WeightsFileError / WeightsNotFoundError: unreadable, corrupt or missing file.
    """
    from ovss.weights.loading import read_state_dict

    source = check_regular_file(Path(source))
    folder = out is not None and str(out).endswith(("/", os.sep))  # "newdir/": a folder, created
    out = Path(out).expanduser() if out is not None else converted_path(spec.name)
    if folder or out.is_dir():
        out = out / f"{spec.name}.safetensors"
    if out == converted_path(spec.name):
        cache_folder("weights", create=True)
        check_file_slot(out)
    digest = verify_digest(source, spec.sha256, spec.name)
    config = spec.config()
    started = time.monotonic()
    source_format, source_digest = spec.source_format, digest
    if looks_like_safetensors(source):
        mf = open_model_file(source)
        if mf.is_ovss:
            stored, family = mf.model_config(legacy_ok=True)  # the architecture comes from spec, not the file
            if family != spec.family:
                raise CheckpointMismatchError(
                    f"{source} holds a {family} model (ovss file), not {spec.name}; pass a {spec.family} file"
                )
            _check_variant(spec, mf.meta_tensors(), source, stored, mf.metadata.get("name"))
            say(f"converting {source.name} into {out} ...")
            mf.verify()
            state_dict = mf.load_tensors()
            source_format = mf.metadata.get("source_format", "ovss")
            source_digest = mf.metadata.get("source_sha256", digest)
        else:
            say(f"converting {source.name} into {out} ...")
            state_dict, source_format = _convert_for(spec, mf.load_tensors(), str(source))
    else:
        say(f"converting {source.name} into {out} ...")
        state_dict, source_format = _convert_for(spec, read_state_dict(source), str(source))
    _check_variant(spec, state_dict, source)
    result = save_model_file(
        out, state_dict, config, spec.family, name=spec.name, source_format=source_format,
        source_sha256=source_digest,
    )  # fmt: skip
    if out == converted_path(spec.name):
        write_stamp(out)
    say(f"converted {spec.name} in {time.monotonic() - started:.1f} s")
    return result


def _check_variant(
    spec: WeightSpec, tensors: dict[str, torch.Tensor], source: Path, stored: Any = None, name: Any = None
) -> None:
    """check_fits against ``spec``; a misfit that is another registered variant, or an ovss file of another
    architecture (``stored``: its config), is said as such instead of listing keys or "crafted"."""
    try:
        check_fits(spec.config(), tensors, f"{source} as {spec.name}")
    except CheckpointMismatchError:
        better = other_variant_error(spec, tensors, str(source), stored, name)
        if better is None:
            raise
        raise better from None


def _convert_for(
    spec: WeightSpec, raw: dict[str, torch.Tensor], what: str
) -> tuple[dict[str, torch.Tensor], str]:
    """(ovss state dict, format) of a raw checkpoint meant for ``spec``, with the format detected."""
    found = identify(raw)
    formats = model_formats()
    if found is None:
        if fits(spec.config(), raw, what):
            return raw, "ovss"  # a bare state dict already in the ovss layout
        if (other := other_variant_error(spec, raw, what)) is not None:
            raise other
        if spec.source_format not in formats:  # a test-* model ("random"): no converter to say why
            detect_format(raw, what=what)  # raises: no known key layout
        return convert_state_dict(spec.source_format, raw), spec.source_format  # its converter says why
    if found not in formats:
        raise CheckpointMismatchError(
            f"{what} is {format_title(found)} checkpoint (a CLIP model alone), not {spec.name}; pass the "
            f"segmentation model's checkpoint"
        )
    if formats[found] != spec.family:
        raise other_family_error(found, spec.family, what, spec.name)
    return convert_state_dict(found, raw), found


# ----------------------------------------------------------------------------------------- loading
def load_model(name_or_path: str | Path, weights: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Build a model with its weights (float32, CPU, eval mode).

    Args:
        name_or_path: a registry name (downloads and converts once), a converted ``.safetensors`` file
            or an official checkpoint file (its format and variant are detected).
        weights: an explicit checkpoint file for the registry name given (official or converted).

    Returns:
        (model, info) where info has name, family, source and digest fields.
    """
    from ovss.models.build import build_model

    name = str(name_or_path)
    if not name.strip():  # Path("") is ".", the current folder: "is a folder" would mislead
        raise UnknownModelError("no model given (an empty name); pass a name 'ovss models' lists or a file")
    path = Path(name)
    registered = name in list_weights()
    if weights is None and not registered and (
        path.suffix in {".pth", ".pt", ".pkl", ".bin", ".safetensors"} or _exists(path) or os.sep in name
    ):
        return _load_path(path, spec=None)
    spec = get_weight_spec(name)
    if weights is not None:
        return _load_path(Path(weights), spec=spec)
    if spec.source_format == "random":
        torch.manual_seed(spec.seed)
        model = build_model(spec.config())
        info = {"name": spec.name, "family": spec.family, "source": "random", "digest": f"random{spec.seed}"}
        return model, info
    target = converted_path(spec.name)
    if not check_file_slot(target):
        alternative = ", or pass the file itself (--weights FILE, or weights= in ovss.load)"
        convert_checkpoint(spec, fetch_source(spec, alternative), target)
    fix = f"delete it and run 'ovss download {spec.name}' (or 'ovss convert {spec.name} FILE')"
    mf = open_model_file(target, fix)
    config, family = mf.model_config()
    mf.check_fits(config)
    mf.verify(stamp=stamp_path(target))
    model = _build(config, mf.load_tensors(), str(target))
    digest = mf.metadata.get("source_sha256", "")
    return model, {"name": spec.name, "family": family, "source": str(target), "digest": digest}


def _exists(path: Path) -> bool:
    """``path.exists()``, False for a name that cannot be a path (too long, a NUL byte: a model name)."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _build(config: Any, state_dict: dict[str, torch.Tensor], what: str) -> Any:
    from ovss.models.build import build_model
    from ovss.weights.loading import load_strict

    model = build_model(config)
    load_strict(model, state_dict, what)
    return model


def _load_path(path: Path, spec: WeightSpec | None) -> tuple[Any, dict[str, Any]]:
    """Load a checkpoint file: an ovss file, a bare ovss-layout state dict or an official checkpoint."""
    from ovss.weights.loading import read_state_dict

    check_regular_file(path)
    name = spec.name if spec else path.stem
    if looks_like_safetensors(path):
        mf = open_model_file(path)
        if mf.is_ovss:
            config, family = mf.model_config()
            if spec is not None and family != spec.family:
                raise CheckpointMismatchError(
                    f"{path} holds a {family} model, not {spec.name}; drop --model or pass a {spec.family} "
                    f"file"
                )
            mf.check_fits(config)
            digest = mf.verify()
            name = mf.metadata.get("name", name) if spec is None else name
            model = _build(config, mf.load_tensors(), str(path))
            return model, {"name": name, "family": family, "source": str(path), "digest": digest}
        raw, digest = mf.load_tensors(), mf.verify()
    else:
        raw, digest = read_state_dict(path), sha256_file(path)
    if spec is not None:
        state_dict, _ = _convert_for(spec, raw, str(path))
        config, family = spec.config(), spec.family
    else:
        source_format = detect_format(raw, what=str(path))
        state_dict = convert_state_dict(source_format, raw)
        matched = match_variant(state_dict, source_format, str(path))
        config, family = matched.config(), matched.family
    model = _build(config, state_dict, str(path))
    return model, {"name": name, "family": family, "source": str(path), "digest": digest}


def describe_cache() -> dict[str, Any]:
    """Summary of what is on disk (for ``ovss models``)."""
    return {"home": str(ovss_home()), "offline": is_offline()}


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically write ``data`` as indented JSON."""
    atomic_write(Path(path), lambda p: p.write_text(json.dumps(data, indent=2) + "\n"))
