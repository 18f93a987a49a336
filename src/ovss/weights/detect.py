"""Convert stage of the weights pipeline: which checkpoint format a state dict is in, which registered
model it fits, and its conversion into the ovss layout (``to_ovss``).

Model formats are those of the registered family descriptors (``Family.formats``: format -> converter
module with ``detect(sd)``, ``convert(sd)`` and its message title ``TITLE``), each belonging to its
family; a new family's formats are picked up here from its descriptor alone. Registry entries name
one of their family's formats as ``source_format`` (or ``"random"``). CLIP formats are recognised too,
to say that a CLIP file is not a segmentation model.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING

import torch

from ovss.errors import CheckpointMismatchError, OvssError
from ovss.models.family import families, family_title
from ovss.weights.build import check_fits
from ovss.weights.formats import CLIP_FORMAT_NAMES
from ovss.weights.registry import WEIGHTS, WeightSpec

if TYPE_CHECKING:
    from ovss.models.base import ModelConfig

# Human names in messages of the formats no family descriptor lists (a model format's converter module
# defines its own ``TITLE``).
_TITLES = {
    "openai_clip": "an OpenAI CLIP",
    "open_clip": "an open_clip CLIP",
    "hf_clip": "a transformers CLIP",
    "ovss": "an ovss (already converted)",
}


def model_formats() -> dict[str, str]:
    """Model checkpoint format -> family, from the family descriptors (``Family.formats``) in
    :func:`~ovss.models.family.families` order (the detection order; no two formats accept the same
    checkpoint)."""
    return {name: family.name for family in families() for name in family.formats}


def _module(name: str) -> ModuleType:
    for family in families():  # a family's converter module (lazily named by its descriptor)
        if name in family.formats:
            return importlib.import_module(family.formats[name])
    return importlib.import_module(f"ovss.weights.formats.{name}")


def format_title(name: str) -> str:
    """``"an official SAN (detectron2)"`` for ``"san_d2"`` (the name itself when unknown)."""
    if name in _TITLES:
        return _TITLES[name]
    try:
        return getattr(_module(name), "TITLE", name)
    except ImportError:
        return name


def identify(state_dict: Mapping[str, object]) -> str | None:
    """The model format (first) or CLIP format whose ``detect`` accepts ``state_dict``; None if none."""
    for name in (*model_formats(), *CLIP_FORMAT_NAMES):
        if _module(name).detect(state_dict):
            return name
    return None


def names_for_format(source_format: str) -> list[str]:
    """Registry names whose weights come in ``source_format``."""
    return [s.name for s in WEIGHTS if s.source_format == source_format]


def convert_state_dict(source_format: str, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Apply the converter ``ovss.weights.formats.<source_format>.convert``."""
    formats = model_formats()
    if source_format not in formats and source_format not in CLIP_FORMAT_NAMES:
        known = ", ".join([*formats, *CLIP_FORMAT_NAMES])
        raise OvssError(f"unknown checkpoint format {source_format!r}; known: {known}")
    return _module(source_format).convert(state_dict)


def _first_keys(state_dict: Mapping[str, object]) -> str:
    return ", ".join(list(state_dict)[:3])


def detect_format(state_dict: Mapping[str, object], family: str | None = None, what: str = "the file") -> str:
    """Name of the model checkpoint format of ``state_dict`` (of ``family`` when given).

    Raises:
        CheckpointMismatchError: no known layout matches, it is a CLIP checkpoint, or it is a
            checkpoint of another family (the message names what it is and the command that fits).
    """
    found = identify(state_dict)
    formats = model_formats()
    if found is None:
        wanted = f"a {family_title(family)} checkpoint" if family else "a SAN, CAT-Seg or SED checkpoint"
        raise CheckpointMismatchError(
            f"{what} is not {wanted}: no known key layout matches (first keys: {_first_keys(state_dict)}); "
            f"pass a checkpoint in one of: {', '.join(formats)}"
        )
    if found not in formats:
        raise CheckpointMismatchError(
            f"{what} is {format_title(found)} checkpoint (a CLIP model alone), not a segmentation model; "
            f"pass a SAN, CAT-Seg or SED checkpoint"
        )
    if family is not None and formats[found] != family:
        raise other_family_error(found, family, what)
    return found


def other_family_error(
    found: str, wanted: str, what: str, name: str | None = None
) -> CheckpointMismatchError:
    """'FILE is an official SAN checkpoint, not CAT-Seg ...; use --model san-vit-b16'."""
    fits = names_for_format(found)
    target = f" for {name}" if name else ""
    hint = f"use the model name that fits it: {' or '.join(fits)}" if fits else "pass a matching model name"
    return CheckpointMismatchError(
        f"{what} is {format_title(found)} checkpoint (a {family_title(model_formats()[found])} model), not a "
        f"{family_title(wanted)} checkpoint{target}; {hint}"
    )


def fits(config: ModelConfig, state_dict: Mapping[str, torch.Tensor], what: str) -> bool:
    """Whether ``state_dict`` (ovss layout) fits ``config`` exactly (checked on the meta device)."""
    try:
        check_fits(config, state_dict, what)
    except CheckpointMismatchError:
        return False
    return True


def match_variant(state_dict: Mapping[str, torch.Tensor], source_format: str, what: str) -> WeightSpec:
    """The registered entry of ``source_format`` whose architecture fits ``state_dict`` (ovss layout).

    Raises:
        CheckpointMismatchError: it fits none of them.
    """
    candidates = [s for s in WEIGHTS if s.source_format == source_format]
    for spec in candidates:
        if fits(spec.config(), state_dict, what):
            return spec
    names = ", ".join(s.name for s in candidates)
    raise CheckpointMismatchError(
        f"{what} is {format_title(source_format)} checkpoint but fits none of {names}; pass --model NAME "
        f"to see which keys differ"
    )


def other_variant_error(
    spec: WeightSpec,
    tensors: Mapping[str, torch.Tensor],
    what: str,
    file_config: ModelConfig | None = None,
    stored_name: str | None = None,
) -> CheckpointMismatchError | None:
    """Why ``tensors`` (ovss layout; meta tensors will do), which do not fit ``spec``, are not ``spec``'s
    weights: they fit another registered variant of its family (named), or, for an ovss file with its
    own config (``file_config``), they are a model of another architecture (e.g. a training run with
    architecture overrides), used directly rather than converted. None when neither applies."""
    family = family_title(spec.family)
    for other in WEIGHTS:
        if other.family == spec.family and other.name != spec.name and fits(other.config(), tensors, what):
            return CheckpointMismatchError(
                f"{what} holds the weights of {other.name}, another {family} variant, not {spec.name}; "
                f"install it as that model ('ovss convert {other.name} FILE'), or pass a {spec.name} file"
            )
    if file_config is None:
        return None
    named = f" named {stored_name!r}" if stored_name else ""
    return CheckpointMismatchError(
        f"{what} holds a {family} model{named} whose architecture differs from {spec.name}'s "
        f"({config_difference(file_config, spec.config())}), e.g. a training run with architecture "
        "overrides; it carries its own config: use the file itself (--model FILE, or ovss.load(FILE)) "
        "instead of converting it"
    )


def config_difference(a: ModelConfig, b: ModelConfig, limit: int = 4) -> str:
    """``"side_patch_size 8 vs 16, ..."``: the first ``limit`` dotted fields where ``a`` and ``b`` differ."""

    def flat(value: object, prefix: str = "") -> dict[str, object]:
        if isinstance(value, dict):
            out: dict[str, object] = {}
            for k, v in value.items():
                out.update(flat(v, f"{prefix}{k}."))
            return out
        return {prefix[:-1]: value}

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    diffs = [f"{k} {fa.get(k)} vs {fb.get(k)}" for k in {**fa, **fb} if fa.get(k) != fb.get(k)]
    more = f", and {len(diffs) - limit} more" if len(diffs) > limit else ""
    return ", ".join(diffs[:limit]) + more if diffs else "the same config, other tensors"


def to_ovss(
    spec: WeightSpec | None, raw: dict[str, torch.Tensor], what: str
) -> tuple[dict[str, torch.Tensor], str, WeightSpec | None]:
    """(ovss state dict, source format, the registered variant it fits) of an official checkpoint.

    With ``spec`` (the model it is read as) the format must be one of its family (a bare state dict in
    the ovss layout that fits it is taken as is) and the variant returned is ``spec``; without, the
    format and variant are detected.

    Raises:
        CheckpointMismatchError: unknown layout, a CLIP checkpoint, another family or variant, no fit.
    """
    if spec is not None:
        state_dict, source_format = _convert_for(spec, raw, what)
        return state_dict, source_format, spec
    source_format = detect_format(raw, what=what)
    state_dict = convert_state_dict(source_format, raw)
    return state_dict, source_format, match_variant(state_dict, source_format, what)


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
