"""The result of segmenting one image: label map, scores, class names, rendering and saving."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovss.api.visualize import overlay, overlay_bands, palette
from ovss.data.io import write_label_png
from ovss.data.png import save_png
from ovss.utils import atomic_write_text

OUTPUTS = ("label", "overlay", "json")  # what save() can write, in the order it writes them


@dataclasses.dataclass
class SegmentationResult:
    """One segmented image.

    Attributes:
        label_map: (H, W) int64 class index per pixel, at the original image size.
        class_names: K display names; ``label_map`` indexes this list.
        confidence: (H, W) float32 score of the winning class per pixel (model-specific range:
            probabilities in [0, 1] for CAT-Seg/SED, summed mask probabilities for SAN).
        class_scores: (K,) float32 highest score each class reaches anywhere in the image.
        fractions: (K,) float64 fraction of pixels labelled with each class (sums to 1).
        image: (H, W, 3) uint8 RGB input, for rendering.
        scores: (K, H, W) float32 full score map, only when requested (``return_scores=True``).
        model: name of the model that produced it.
        source: where the image came from (a path), recorded in the JSON when set.
        vocabulary: the synonyms of each class (K lists), recorded in the JSON when set.
    """

    label_map: np.ndarray
    class_names: list[str]
    confidence: np.ndarray
    class_scores: np.ndarray
    fractions: np.ndarray
    image: np.ndarray
    scores: np.ndarray | None = None
    model: str = ""
    source: str | None = None
    vocabulary: list[list[str]] | None = None

    def present(self) -> list[tuple[str, float]]:
        """(name, fraction) of the classes that occur, largest first."""
        order = np.argsort(-self.fractions, kind="stable")
        return [(self.class_names[k], float(self.fractions[k])) for k in order if self.fractions[k] > 0]

    def overlay(self, alpha: float = 0.55, legend: bool = True) -> Image.Image:
        """Colour overlay of the label map on the image, with a legend of the classes present."""
        return overlay(self.image, self.label_map, self.class_names, self.fractions, alpha, legend)

    def to_dict(self) -> dict[str, Any]:
        """JSON summary: source, model, size, vocabulary, classes with fractions and peak scores."""
        h, w = self.label_map.shape
        data: dict[str, Any] = {}
        if self.source is not None:
            data["source"] = self.source
        data.update({"model": self.model, "height": int(h), "width": int(w)})
        if self.vocabulary is not None:
            data["vocabulary"] = [list(synonyms) for synonyms in self.vocabulary]
        data["classes"] = [
            {
                "index": k,
                "name": name,
                "fraction": round(float(self.fractions[k]), 6),
                "max_score": round(float(self.class_scores[k]), 6),
            }
            for k, name in enumerate(self.class_names)
        ]
        data["present"] = [name for name, _ in self.present()]
        return data

    @staticmethod
    def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
        """Where :meth:`save` puts each output of ``stem``: label, overlay and json."""
        out = Path(out_dir)
        return {
            "label": out / f"{stem}_label.png",
            "overlay": out / f"{stem}_overlay.png",
            "json": out / f"{stem}.json",
        }

    def save(
        self, out_dir: str | Path, stem: str, outputs: tuple[str, ...] | list[str] = OUTPUTS
    ) -> dict[str, Path]:
        """Write the requested outputs into ``out_dir``, each atomically; returns their paths.

        ``<stem>_label.png``: the label map, an 8-bit palette PNG (pixel value = class index) for
        up to 256 classes, a 16-bit grayscale PNG above 256 classes. ``<stem>_overlay.png``: the
        colour overlay with its legend. ``<stem>.json``: :meth:`to_dict`. All are written band by
        band, so memory stays bounded whatever the image size.
        """
        unknown = [o for o in outputs if o not in OUTPUTS]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; choose from {list(OUTPUTS)}")
        paths = {k: v for k, v in self.output_paths(out_dir, stem).items() if k in outputs}
        k = len(self.class_names)
        if "label" in paths:
            if k <= 256:
                write_label_png(paths["label"], self.label_map, palette(k), bit_depth=8)
            else:
                write_label_png(paths["label"], self.label_map, bit_depth=16)
        if "overlay" in paths:
            width, height, bands = overlay_bands(self.image, self.label_map, self.class_names, self.fractions)
            save_png(paths["overlay"], width, height, bands, "RGB")
        if "json" in paths:
            atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        return paths
