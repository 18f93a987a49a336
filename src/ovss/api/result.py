"""The result of segmenting one image: label map, scores, class names, rendering and saving."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovss.api.visualize import overlay, palette
from ovss.data.io import write_label_png
from ovss.utils import atomic_write, atomic_write_text


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
    """

    label_map: np.ndarray
    class_names: list[str]
    confidence: np.ndarray
    class_scores: np.ndarray
    fractions: np.ndarray
    image: np.ndarray
    scores: np.ndarray | None = None
    model: str = ""

    def present(self) -> list[tuple[str, float]]:
        """(name, fraction) of the classes that occur, largest first."""
        order = np.argsort(-self.fractions, kind="stable")
        return [(self.class_names[k], float(self.fractions[k])) for k in order if self.fractions[k] > 0]

    def overlay(self, alpha: float = 0.55, legend: bool = True) -> Image.Image:
        """Colour overlay of the label map on the image, with a legend of the classes present."""
        return overlay(self.image, self.label_map, self.class_names, self.fractions, alpha, legend)

    def to_dict(self) -> dict[str, Any]:
        """JSON summary: size, classes with fractions and peak scores, the model name."""
        h, w = self.label_map.shape
        return {
            "model": self.model,
            "height": int(h),
            "width": int(w),
            "classes": [
                {
                    "index": k,
                    "name": name,
                    "fraction": round(float(self.fractions[k]), 6),
                    "max_score": round(float(self.class_scores[k]), 6),
                }
                for k, name in enumerate(self.class_names)
            ],
            "present": [name for name, _ in self.present()],
        }

    def save(self, out_dir: str | Path, stem: str) -> dict[str, Path]:
        """Write ``<stem>_label.png`` (palette; 16-bit grey when K > 256), ``<stem>_overlay.png`` and
        ``<stem>.json`` into ``out_dir`` (atomically); returns the paths."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {
            "label": out / f"{stem}_label.png",
            "overlay": out / f"{stem}_overlay.png",
            "json": out / f"{stem}.json",
        }
        k = len(self.class_names)
        write_label_png(paths["label"], self.label_map, palette(k) if k <= 256 else None)
        rendered = self.overlay()
        atomic_write(paths["overlay"], lambda p: rendered.save(p, format="PNG"))
        atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        return paths
