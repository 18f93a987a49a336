"""Model cards: what a named model is, where it comes from, how it is run and what it scored.

``ovss.model_card(name)`` returns a :class:`ModelCard` (``to_dict()`` / ``to_json()`` / ``render()``);
``ovss models NAME`` prints ``render()``. Everything comes from the weights registry (source,
licence, published mIoU, BibTeX, parameter count) and the architecture config, the file size and
digests from the converted file when it is in the cache. The registry's parameter counts are those of
the models built on the meta device (no weights, no memory; a test keeps them equal); an entry
without one is counted that way when asked.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ovss.models.family import get_family
from ovss.weights.registry import Published, WeightSpec, get_weight_spec
from ovss.weights.resolve import hub_page


@dataclasses.dataclass(frozen=True)
class ModelCard:
    """Everything ``ovss models NAME`` prints, as data."""

    name: str  # registry name
    family: str  # the family's name (ovss.models.family)
    description: str  # one line from the registry
    architecture: list[str]  # model family line, image tower, text tower
    parameters: int  # total parameters (buffers excluded) of the architecture (count_parameters)
    code: str  # paper and official code of the architecture / weights
    weights_origin: str  # hub repo/file, official download URL or page, or "random (seed N)"
    source_format: str  # converter that reads the source checkpoint
    license: str  # licence of the weights
    source_sha256: str | None  # digest of the source checkpoint: pinned, else recorded at conversion
    file: str | None  # converted .safetensors in the cache, None when not downloaded
    file_size: int | None  # its size in bytes
    file_sha256: str | None  # the digest recorded inside the converted file (whole-file content_sha256)
    preprocessing: dict[str, Any]  # resize, normalisation, padding, prompt templates, synonyms
    protocols: dict[str, str]  # how each entry point runs the model (api, segment, eval)
    published: list[Published]  # published mIoU with protocol and source
    citation: str  # BibTeX ("" for the ovss test models)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``published`` as a list of dicts)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def render(self) -> str:
        """The card as text, as ``ovss models NAME`` prints it."""
        return render_card(self)


def count_parameters(spec: WeightSpec) -> int:
    """Parameters of ``spec``'s architecture: the registry's count (``WeightSpec.parameters``, nothing
    built), else :func:`meta_parameter_count` of its config."""
    if spec.parameters is not None:
        return spec.parameters
    return meta_parameter_count(spec.config())


def meta_parameter_count(config: Any) -> int:
    """Parameters (buffers excluded) of the model of ``config``, built on the meta device (no memory, no
    weights; about 0.1 s for a large model, once the model code is imported)."""
    import torch

    from ovss.models.build import build_model

    with torch.device("meta"):
        model = build_model(config)
    return sum(p.numel() for p in model.parameters())


def cached_file(spec: WeightSpec) -> tuple[str | None, int | None, dict[str, str]]:
    """(path, size in bytes, header metadata) of the converted file; (None, None, {}) when not cached.

    The metadata is read from the header only (no tensor data); an unreadable header gives ``{}``.
    """
    from ovss.weights.resolve import converted_path

    path = converted_path(spec.name)
    if spec.source_format == "random" or not path.is_file():
        return None, None, {}
    try:
        from ovss.weights.modelfile import open_model_file

        metadata = dict(open_model_file(path).metadata)
    except Exception:  # an unreadable file still has a size; `ovss models` must not fail on it
        metadata = {}
    return str(path), path.stat().st_size, metadata


def weights_origin(spec: WeightSpec) -> str:
    """Where the weights come from: ``hf:repo/file``, the official URL or page, or random."""
    if spec.source_format == "random":
        return f"random (seed {spec.seed}), built by ovss: segments nothing meaningful"
    if spec.url:  # a direct official download (the mmseg SAN releases)
        return spec.url
    if spec.hub_repo and spec.hub_file:
        return f"{hub_page(spec)}/blob/main/{spec.hub_file}"
    return spec.manual_url or "-"


def _tower(config: Any) -> list[str]:
    clip = config.clip
    if clip.vision is not None:
        v = clip.vision
        image = (f"image tower: CLIP ViT, {v.layers} blocks of width {v.width}, patch {v.patch_size}, "
                 f"pre-trained at {v.image_size} px")
    else:
        c = clip.convnext
        image = (f"image tower: CLIP ConvNeXt, depths {list(c.depths)}, widths {list(c.dims)}, "
                 f"pre-trained at {c.image_size} px")
    t = clip.text
    text = f"text tower: CLIP transformer, {t.layers} blocks of width {t.width}; joint width {clip.embed_dim}"
    guide = []
    if getattr(config, "resnet", None) is not None:
        guide = ["guidance backbone: ResNet-101 (detectron2 layout)"]
    elif getattr(config, "swin", None) is not None:
        guide = ["guidance backbone: Swin-B (detectron2 layout)"]
    return [image, text, *guide]


def _preprocessing(config: Any) -> dict[str, Any]:
    from ovss.vocab.templates import get_templates

    r = config.test_resize
    resize = {
        "short_side": f"short side to {r.size} px (long side at most {r.max_size}), bilinear",
        "fixed": f"to {r.size}x{r.size} px",
        "none": "none at the predictor (the model resizes itself)",
    }[r.mode]
    return {
        "resize": resize,
        "pixel_mean": [round(v, 4) for v in config.pixel_mean],
        "pixel_std": [round(v, 4) for v in config.pixel_std],
        "pad_to_multiple_of": config.size_divisibility,
        "templates": f"{config.templates} ({len(get_templates(config.templates))} prompt template(s))",
        "synonyms": config.synonyms,
    }


def _protocols(config: Any, family: str) -> dict[str, str]:
    """How ``predict``, ``ovss segment`` (also export and the demo) and ``ovss eval`` run the model."""
    whole = "one whole-image pass at the resized size; scores resized back to the original size"
    eval_tail = "fp32, single scale (--tta for ms+flip)"
    descriptor = get_family(family)
    option = descriptor.inference
    if option is not None and option.exported:  # CAT-Seg and CAT-Seg v1
        default = f"inference={config.inference!r}" + (
            " (the official evaluation: sliding window + global view)" if config.inference == "slide" else "")
        where = "ovss segment, ovss export, ovss demo"
        segment = (f"inference={option.defaults['segment']!r} (one pass, 4-5x faster; --inference slide for "
                   "the evaluation protocol)")
        if "segment" not in option.defaults:  # the model keeps its own protocol everywhere (v1)
            where, segment = "ovss segment, ovss demo", f"{default} (--inference {'|'.join(option.modes)})"
        return {"api": f"Segmenter.predict: {default}",
                "segment": f"{where}: {segment}",
                "eval": f"ovss eval: {default}, {eval_tail}"}
    if "fast" in descriptor.options:  # SED
        fast = (f"fast (category early rejection, topk {config.topk})" if config.fast_inference
                else "all classes (--fast --topk 8 for category early rejection)")
        return {"api": f"Segmenter.predict: {whole}; {fast}",
                "segment": f"ovss segment, ovss demo: {whole}; {fast}",
                "eval": f"ovss eval: {whole}; {fast}; {eval_tail}"}
    mode = getattr(config, "inference", None)  # SAN: its test pipeline, when the model offers a choice
    if mode is not None:
        pipeline = "mmsegmentation's" if mode == "mmseg" else "detectron2's (MendelXu/SAN)"
        whole = f"inference={mode!r}, {pipeline} test pipeline; {whole}"
    return {"api": f"Segmenter.predict: {whole}", "segment": f"ovss segment, ovss export, ovss demo: {whole}",
            "eval": f"ovss eval: {whole}; {eval_tail}"}


def model_card(name: str) -> ModelCard:
    """The card of registry entry ``name`` (``ovss.model_card("san-vit-b16")``).

    Raises:
        UnknownModelError: ``name`` is not registered (the message lists the known names).
    """
    spec = get_weight_spec(name)
    config = spec.config()
    file, size, metadata = cached_file(spec)
    return ModelCard(
        name=spec.name,
        family=spec.family,
        description=spec.description,
        architecture=[get_family(spec.family).summary or spec.family, *_tower(config)],
        parameters=count_parameters(spec),
        code=spec.origin,
        weights_origin=weights_origin(spec),
        source_format=spec.source_format,
        license=spec.license,
        source_sha256=spec.sha256 or metadata.get("source_sha256") or None,
        file=file,
        file_size=size,
        file_sha256=metadata.get("content_sha256") or metadata.get("data_sha256"),
        preprocessing=_preprocessing(config),
        protocols=_protocols(config, spec.family),
        published=list(spec.published),
        citation=spec.citation,
    )


def format_size(size: int | None) -> str:
    """``1.2 GB`` / ``630 MB`` / ``-``."""
    if size is None:
        return "-"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def format_count(n: int) -> str:
    """``157.8M`` / ``2.1M``."""
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.1f}M"


def _benchmark_title(name: str) -> str:
    from ovss.data.catalog import get_benchmark
    from ovss.errors import OvssError

    try:
        return get_benchmark(name).display_name
    except OvssError:
        return name


def _published_lines(results: list[Published]) -> list[str]:
    if not results:
        return ["  none recorded (no official evaluation of these weights)"]
    lines: list[str] = []
    sources: dict[tuple[str, str, str], list[Published]] = {}
    for r in results:
        sources.setdefault((r.source, r.protocol, r.note), []).append(r)
    for (source, protocol, note), rows in sources.items():
        lines.append(f"  {source} [{protocol}]" + (f" ({note})" if note else ""))
        lines.extend(f"    {_benchmark_title(r.benchmark):<30} {r.miou:6.2f}" for r in rows)
    return lines


def _source_digest(card: ModelCard) -> str:
    if card.source_format == "random":
        return "- (random weights)"
    return card.source_sha256 or "not pinned (recorded at the first download)"


def render_card(card: ModelCard) -> str:
    """Plain-text card (sections: model, weights, preprocessing, protocols, published mIoU, citation)."""
    where = f"{card.file} ({format_size(card.file_size)})" if card.file else "built in"
    if not card.file and card.source_format != "random":
        where = f"not downloaded (ovss download {card.name})"
    out = [
        f"{card.name}: {card.description}",
        "",
        "architecture:",
        *(f"  {line}" for line in card.architecture),
        f"  parameters: {card.parameters:,} ({format_count(card.parameters)})",
        f"code: {card.code}",
        "weights:",
        f"  origin: {card.weights_origin}",
        f"  source format: {card.source_format}; licence: {card.license}",
        f"  source sha256: {_source_digest(card)}",
        f"  converted file: {where}",
    ]
    if card.file_sha256:
        out.append(f"  converted file sha256: {card.file_sha256}")
    out += ["preprocessing:", *(f"  {k}: {v}" for k, v in card.preprocessing.items())]
    out += ["inference protocol:", *(f"  {v}" for v in card.protocols.values())]
    out += ["published mIoU (%):", *_published_lines(card.published)]
    if card.citation:
        out += ["citation (BibTeX):", card.citation]
    return "\n".join(out)
