"""ovss: open-vocabulary semantic segmentation (SAN, CAT-Seg, SED) in pure PyTorch.

    import ovss
    seg = ovss.load("san-vit-b16")
    result = seg.predict("photo.jpg", "cat; sofa, couch; wall")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "ModelCard", "SegmentationResult", "Segmenter", "Vocabulary", "__version__", "list_models", "load",
    "model_card",
]

if TYPE_CHECKING:
    from ovss.api.card import ModelCard
    from ovss.api.result import SegmentationResult
    from ovss.api.segmenter import Segmenter, load
    from ovss.vocab.vocabulary import Vocabulary


def list_models(include_test: bool = False) -> list[str]:
    """Names of the registered pretrained models (``test-*`` tiny models with include_test)."""
    from ovss.weights.registry import list_weights

    return list_weights(include_test=include_test)


def model_card(name: str) -> ModelCard:
    """The card of a registered model: architecture, origin, digest, protocol, published mIoU, BibTeX.

    ``ovss.model_card("san-vit-b16").render()`` is what ``ovss models san-vit-b16`` prints;
    ``.to_dict()`` / ``.to_json()`` give the same data as JSON.
    """
    from ovss.api.card import model_card as build_card

    return build_card(name)


def __getattr__(name: str) -> Any:  # lazy: importing ovss does no work and imports no torch
    if name in ("Segmenter", "load"):
        from ovss.api import segmenter

        return getattr(segmenter, name)
    if name == "ModelCard":
        from ovss.api.card import ModelCard

        return ModelCard
    if name == "SegmentationResult":
        from ovss.api.result import SegmentationResult

        return SegmentationResult
    if name == "Vocabulary":
        from ovss.vocab.vocabulary import Vocabulary

        return Vocabulary
    raise AttributeError(f"module 'ovss' has no attribute {name!r}")
