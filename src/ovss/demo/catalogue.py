"""The demo's model catalogue and per-model widgets: which models a server offers (weights on disk
or not), and which family options (SED's early rejection, the inference protocols) apply to each.

Everything here is read from the registry and the family descriptors (:mod:`ovss.models.family`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ovss.demo.display import DemoUserError


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue: what the page shows about it and whether it can be chosen."""

    name: str  # registry name or checkpoint path (the dropdown value)
    family: str  # a registered family's name, or "" (unknown until loaded)
    status: str  # "on disk" | "built in, random weights" | "local file" | "not downloaded"
    description: str = ""

    @property
    def usable(self) -> bool:
        """Whether the server can load it without downloading anything."""
        return self.status != "not downloaded"

    @property
    def label(self) -> str:
        """Dropdown label: name (a checkpoint file by its file name) and weights status."""
        name = Path(self.name).name if self.status == "local file" else self.name
        return f"{name} ({self.status})"


def model_catalogue(startup_model: str, startup_family: str = "") -> list[ModelEntry]:
    """Every registered model with its weights status, the model the server was started with first.

    The tiny random ``test-*`` models are listed only when the demo was started with one of them (an
    offline check of the pipeline); their labels are meaningless otherwise.
    """
    from ovss.weights.registry import WEIGHTS
    from ovss.weights.resolve import is_available

    entries: list[ModelEntry] = []
    names = {spec.name for spec in WEIGHTS}
    if startup_model not in names:  # a checkpoint file given to `ovss demo --model FILE`
        entries.append(ModelEntry(startup_model, startup_family, "local file", "checkpoint file"))
    with_tests = startup_model.startswith("test-")
    for spec in WEIGHTS:
        if spec.source_format == "random":
            if not with_tests:
                continue
            status = "built in, random weights"
        elif spec.name == startup_model or is_available(spec):
            status = "on disk"
        else:
            status = "not downloaded"
        entries.append(ModelEntry(spec.name, spec.family, status, spec.description))
    entries.sort(key=lambda e: e.name != startup_model)  # stable: the startup model first
    return entries


def weights_table(entries: list[ModelEntry]) -> str:
    """Markdown table of the catalogue (name, family, weights status, description)."""
    rows = ["| model | family | weights | description |", "|---|---|---|---|"]
    for e in entries:
        rows.append(f"| `{e.name}` | {e.family or '?'} | {e.status} | {e.description} |")
    missing = [e.name for e in entries if not e.usable]
    note = (
        "\n\nModels whose weights are not on this server are not offered; the server's operator adds "
        "them with `ovss download NAME` (or `ovss convert NAME FILE`) and restarts the demo."
        if missing
        else ""
    )
    return "\n".join(rows) + note


def _inference_option(family: str) -> Any:
    """The family's ``inference=`` option descriptor (None: the family has none, or is unknown)."""
    from ovss.models.family import find_family

    descriptor = find_family(family)
    return descriptor.inference if descriptor is not None else None


def inference_choices(family: str, modes: list[str]) -> list[tuple[str, str]]:
    """(label, mode) pairs of the page's inference radio for a model of ``family``."""
    option = _inference_option(family)
    labels = option.labels if option is not None else {}
    return [(labels.get(m, m), m) for m in modes]


def option_visibility(family: str) -> dict[str, bool]:
    """Which per-model widgets apply: ``{"fast": ..., "inference": ...}`` (the families' ``options``):
    ``fast`` is SED's early-rejection group, ``inference`` the inference-protocol radio."""
    from ovss.models.family import find_family

    descriptor = find_family(family)
    options = descriptor.options if descriptor is not None else ()
    return {"fast": "fast" in options, "inference": "inference" in options}


def inference_modes(family: str, model_default: str = "") -> tuple[list[str], str]:
    """The inference modes the page offers for a model, and the one selected at first.

    Read from the family's descriptor (``InferenceOption.demo_modes``): the first selection is
    ``ovss segment``'s default: ``whole`` for CAT-Seg (one pass, aspect ratio kept, 4-5x faster than
    the official ``slide``); the model's own protocol (``model_default``, its config's ``inference``)
    for CAT-Seg v1. CAT-Seg v1 models of the official code offer ``whole`` and ``slide``, those of the
    mmseg port (``model_default == "mmseg"``) their ``mmseg`` protocol and ``whole``. SAN: its config's
    protocol first (``mmseg`` for the ``.mmseg`` weights, else ``d2``), then the other. Families
    without the option: ``([], "")``.
    """
    option = _inference_option(family)
    if option is None:
        return [], ""
    return option.demo_modes(model_default)


def model_options(
    family: str,
    fast: bool = False,
    topk: float | None = None,
    inference: str = "",
    model_default: str = "",
) -> dict:
    """The predict options of the widgets that apply to ``family`` (the others are ignored).

    ``inference`` empty means the first selection of :func:`inference_modes`; ``model_default`` is
    the model config's ``inference`` (SAN and CAT-Seg v1).

    Raises:
        DemoUserError: a SED top-k that is not a whole number >= 1, or an inference mode the model
            does not offer.
    """
    show = option_visibility(family)
    if show["fast"] and fast:
        options: dict[str, Any] = {"fast": True}
        if topk is not None:
            try:
                k = int(topk) if float(topk) == int(topk) else 0
            except (TypeError, ValueError, OverflowError):
                k = 0
            if k < 1:
                raise DemoUserError(f"'classes kept per pixel' must be a whole number >= 1, got {topk!r}")
            options["topk"] = k
        return options
    option = _inference_option(family)
    if show["inference"] and option is not None:
        modes, first = option.demo_modes(model_default)
        # the page's one radio serves every family: a mode of another family sent with this model (a
        # client that fills the hidden radio with "whole", as before SAN had protocols) means its own
        if not inference or inference in option.foreign:
            return {"inference": first}
        if inference not in modes:
            raise DemoUserError(
                f"inference {str(inference)[:40]!r} is not offered for this model; choose one of: "
                f"{', '.join(modes)}"
            )
        return {"inference": inference}
    return {}
