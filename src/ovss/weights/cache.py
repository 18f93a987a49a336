"""Named weights on disk: the weights pipeline, run end to end.

``load_model`` (``ovss.load``, ``ovss segment --model NAME``) runs each stage once, in order:

1. resolve (:mod:`ovss.weights.resolve`): a name or file -> a local file (download and cache);
2. read (:mod:`ovss.weights.read`, :mod:`ovss.weights.modelfile`): the file -> a checked ovss model file
   (header, metadata, digest) or an official state dict;
3. convert (:mod:`ovss.weights.detect`, :mod:`ovss.weights.formats`): official -> ovss layout, the format
   and variant detected;
4. build (:mod:`ovss.weights.build`): config -> module, then a strict load.

``convert_checkpoint`` (``ovss convert``, ``ovss download``, and ``load_model`` the first time a registry
name is used) reads and converts an official (or ovss) file into ``$OVSS_HOME/weights/<name>.safetensors``,
a self-describing file (:mod:`ovss.weights.modelfile`) carrying a digest of its config and data.
Progress lines go to the ``ovss.weights`` logger; the CLI shows them as ``ovss: ...``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch

from ovss.errors import CheckpointMismatchError
from ovss.home import cache_folder, check_file_slot
from ovss.models.build import build_model
from ovss.weights.build import build, check_fits
from ovss.weights.detect import other_variant_error, to_ovss
from ovss.weights.modelfile import (
    DEFAULT_FIX,
    check_file,
    looks_like_safetensors,
    open_model_file,
    save_model_file,
    write_stamp,
)
from ovss.weights.read import CheckedModelFile, read_checkpoint, read_state_dict
from ovss.weights.registry import WeightSpec
from ovss.weights.resolve import converted_path, resolve, verify_digest

log = logging.getLogger("ovss.weights")


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
    source = resolve(name_or_path, weights)
    spec, path = source.spec, source.path
    if path is None:  # a built-in test model: random weights from its seed
        assert spec is not None
        torch.manual_seed(spec.seed)
        model: Any = build_model(spec.config())
        info = {"name": spec.name, "family": spec.family, "source": "random", "digest": f"random{spec.seed}"}
        return model, info
    if source.install:  # first use of a registry name: convert the downloaded file into the cache
        assert spec is not None and source.cache is not None
        path = convert_checkpoint(spec, path, source.cache, sha256=source.sha256)
    cache = source.cache is not None
    fix = DEFAULT_FIX
    if cache and spec is not None:
        fix = f"delete it and run 'ovss download {spec.name}' (or 'ovss convert {spec.name} FILE')"
    family = spec.family if spec is not None and not cache else None  # NAME --weights FILE: FILE is NAME
    read = read_checkpoint(path, fix, cache, family, spec.name if spec else "")
    what, name = str(path), spec.name if spec is not None else path.stem
    if isinstance(read, CheckedModelFile):  # an ovss file: no conversion
        model = build(read.config, read.tensors, what, meta=read.meta)
        digest = read.digest
        if cache:  # the converted-weights cache: the digest of the official release
            digest = read.file.metadata.get("source_sha256", "")
        elif spec is None:
            name = read.file.metadata.get("name", name)
        return model, {"name": name, "family": read.family, "source": what, "digest": digest}
    raw, digest = read
    state_dict, _, variant = to_ovss(spec, raw, what)
    assert variant is not None
    model = build(variant.config(), lambda: state_dict, what)
    return model, {"name": name, "family": variant.family, "source": what, "digest": digest}


# ----------------------------------------------------------------------------------------- conversion
def convert_checkpoint(
    spec: WeightSpec, source: Path, out: str | Path | None = None, sha256: str | None = None
) -> Path:
    """Convert a checkpoint file for ``spec`` into ovss's format (once; atomic; digest recorded).

    ``out``: a file, or a folder (an existing one, or a path ending in "/", created) for NAME.safetensors.
    ``sha256``: the sha256 of ``source`` when the caller has just taken it (a download:
    ``resolve.Fetched``), recorded (and checked against ``spec.sha256``) without hashing the file again;
    None (a file the user names): hashed here.

    ``source`` may be in any model format of ``spec``'s family (detected), an ovss ``.safetensors``
    (copied with a fresh name and digest) or a bare state dict already in the ovss layout.

    Raises:
        CheckpointMismatchError: the file is of another family (the message names it and the model
            name that fits), a CLIP checkpoint, or does not fit ``spec``'s architecture.
        WeightsFileError / WeightsNotFoundError: unreadable, corrupt or missing file.
    """
    source = check_file(Path(source))
    folder = out is not None and str(out).endswith(("/", os.sep))  # "newdir/": a folder, created
    out = Path(out).expanduser() if out is not None else converted_path(spec.name)
    if folder or out.is_dir():
        out = out / f"{spec.name}.safetensors"
    if out == converted_path(spec.name):
        cache_folder("weights", create=True)
        check_file_slot(out)
    digest = verify_digest(source, spec.sha256, spec.name, sha256)
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
            log.info("converting %s into %s ...", source.name, out)
            mf.verify()
            state_dict = mf.load_tensors()
            source_format = mf.metadata.get("source_format", "ovss")
            source_digest = mf.metadata.get("source_sha256", digest)
        else:
            log.info("converting %s into %s ...", source.name, out)
            state_dict, source_format, _ = to_ovss(spec, mf.load_tensors(), str(source))
    else:
        log.info("converting %s into %s ...", source.name, out)
        state_dict, source_format, _ = to_ovss(spec, read_state_dict(source), str(source))
    _check_variant(spec, state_dict, source)
    result = save_model_file(
        out, state_dict, config, spec.family, name=spec.name, source_format=source_format,
        source_sha256=source_digest,
    )  # fmt: skip
    if out == converted_path(spec.name):
        write_stamp(out)
    log.info("converted %s in %.1f s", spec.name, time.monotonic() - started)
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
