"""The result of segmenting one image: label map, scores, class names, rendering and saving."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovss.api.heatmaps import heatmap_paths, write_heatmaps, write_scores_npz
from ovss.api.palettes import Palette, class_colours
from ovss.api.visualize import check_opacity, overlay, overlay_bands
from ovss.data.io import write_label_png
from ovss.data.png import save_png
from ovss.errors import ConfigError
from ovss.utils import atomic_write_text

OUTPUTS = ("label", "overlay", "json")  # what save() writes by default, in the order it writes them
KINDS = (*OUTPUTS, "scores", "heatmaps")  # everything save() can write (the last two need scores)
DEFAULT_OPACITY = 0.55


def unlabelled_value(num_classes: int) -> int:
    """The label value of unlabelled pixels (``min_score``): 255 for up to 255 classes, else 65535
    (the label PNG is then 16-bit).

    Raises:
        ConfigError: more than 65535 classes (no value is left for "unlabelled").
    """
    if num_classes <= 255:
        return 255
    if num_classes <= 65535:
        return 65535
    raise ConfigError(f"{num_classes} classes leave no label value for unlabelled pixels; drop min_score")


@dataclasses.dataclass
class SegmentationResult:
    """One segmented image.

    Attributes:
        label_map: (H, W) int64 class index per pixel, at the original image size.
        class_names: K display names; ``label_map`` indexes this list.
        confidence: (H, W) float32 score of the winning class per pixel (model-specific range:
            probabilities in [0, 1] for CAT-Seg/SED, summed mask probabilities for SAN).
        class_scores: (K,) float32 highest score each class reaches anywhere in the image.
        fractions: (K,) float64 fraction of pixels labelled with each class (sums to 1, or to
            1 - ``unlabelled_fraction``).
        image: (H, W, 3) uint8 RGB input, for rendering.
        scores: (K, H, W) float32 full score map, only when requested (``return_scores=True``);
            (len(score_classes), H, W) when only some classes were asked for.
        model: name of the model that produced it.
        source: where the image came from (a path), recorded in the JSON when set.
        vocabulary: the synonyms of each class (K lists), recorded in the JSON when set.
        min_score: the threshold of ``predict(min_score=...)``: pixels whose best score is below it
            hold :func:`unlabelled_value` (255, or 65535 above 255 classes) in ``label_map``; None:
            every pixel is labelled.
        unlabelled_fraction: fraction of the pixels left unlabelled by ``min_score``.
        score_classes: the class indices of ``scores`` when not all classes were kept (None: all).
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
    min_score: float | None = None
    unlabelled_fraction: float = 0.0
    score_classes: list[int] | None = None

    @property
    def unlabelled_value(self) -> int | None:
        """The ``label_map`` value of unlabelled pixels (None without ``min_score``)."""
        return None if self.min_score is None else unlabelled_value(len(self.class_names))

    def colours(self, palette: str | Path | Palette | None = None) -> np.ndarray:
        """(K, 3) uint8 colour of each class (stable per class name, :mod:`ovss.api.palettes`)."""
        return class_colours(self.class_names, palette)

    def present(self) -> list[tuple[str, float]]:
        """(name, fraction) of the classes that occur, largest first."""
        order = np.argsort(-self.fractions, kind="stable")
        return [(self.class_names[k], float(self.fractions[k])) for k in order if self.fractions[k] > 0]

    def overlay(
        self,
        opacity: float = DEFAULT_OPACITY,
        legend: bool = True,
        palette: str | Path | Palette | None = None,
        labels: bool = True,
    ) -> Image.Image:
        """Colour overlay of the label map on the image (:func:`ovss.api.visualize.overlay`).

        Args:
            opacity: of the colours, 0 (image only) to 1 (colours only).
            legend: a legend of the classes present (and the unlabelled fraction) at the right.
            palette: ``default``, ``voc``, ``hues``, a JSON file of colours or a Palette.
            labels: write the class names on their largest regions.
        """
        return overlay(
            self.image,
            self.label_map,
            self.class_names,
            self.fractions,
            opacity,
            legend,
            palette=palette,
            labels=labels,
        )

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
        if self.min_score is not None:
            data["unlabelled"] = {
                "value": self.unlabelled_value,
                "min_score": self.min_score,
                "fraction": round(float(self.unlabelled_fraction), 6),
            }
        return data

    @staticmethod
    def output_paths(out_dir: str | Path, stem: str, class_names: list[str] | None = None) -> dict[str, Path]:
        """Where :meth:`save` puts each output of ``stem``: label, overlay, json, scores and (given
        the class names) heatmaps, the last heat-map file written (:func:`heatmap_paths`)."""
        out = Path(out_dir)
        paths = {
            "label": out / f"{stem}_label.png",
            "overlay": out / f"{stem}_overlay.png",
            "json": out / f"{stem}.json",
            "scores": out / f"{stem}_scores.npz",
        }
        if class_names is not None:
            paths["heatmaps"] = heatmap_paths(out, stem, class_names)[-1]
        return paths

    def save(
        self,
        out_dir: str | Path,
        stem: str,
        outputs: tuple[str, ...] | list[str] = OUTPUTS,
        opacity: float = DEFAULT_OPACITY,
        palette: str | Path | Palette | None = None,
        labels: bool = True,
    ) -> dict[str, Path | list[Path]]:
        """Write the requested outputs into ``out_dir``, each atomically; returns their paths (a list
        of files for ``heatmaps``, one per class or the sheet).

        ``<stem>_label.png``: the label map, an 8-bit palette PNG (pixel value = class index; the
        palette holds the overlay's colours) for up to 256 classes, a 16-bit grayscale PNG above
        256 classes; with ``min_score``, unlabelled pixels hold 255 (8-bit, up to 255 classes) or
        65535 (16-bit, more classes). ``<stem>_overlay.png``: the colour overlay with names and
        legend (``opacity``, ``palette``, ``labels`` as :meth:`overlay`). ``<stem>.json``:
        :meth:`to_dict`. ``<stem>_scores.npz`` and the heat maps (:mod:`ovss.api.heatmaps`) need
        ``scores`` (``predict(..., return_scores=True)``). All are written band by band (or class
        by class), so memory stays bounded whatever the image size.
        """
        unknown = [o for o in outputs if o not in KINDS]
        if unknown:
            raise ValueError(f"unknown output(s) {unknown}; choose from {list(KINDS)}")
        opacity = check_opacity(opacity)
        colours = class_colours(self.class_names, palette)  # a bad palette fails before any write
        needs_scores = [o for o in outputs if o in ("scores", "heatmaps")]
        if needs_scores and (self.scores is None or self.score_classes is not None):
            raise ValueError(f"{needs_scores} need the whole score map: predict(..., return_scores=True)")
        files = {k: v for k, v in self.output_paths(out_dir, stem, self.class_names).items() if k in outputs}
        return self._write(files, out_dir, stem, colours, opacity, palette, labels)

    def _write(
        self,
        paths: dict[str, Path],
        out_dir: str | Path,
        stem: str,
        colours: np.ndarray,
        opacity: float,
        palette: str | Path | Palette | None,
        labels: bool,
    ) -> dict[str, Path | list[Path]]:
        written: dict[str, Path | list[Path]] = dict(paths)
        if "label" in paths:
            self._save_label(paths["label"], colours)
        if "overlay" in paths:
            width, height, bands = overlay_bands(
                self.image,
                self.label_map,
                self.class_names,
                self.fractions,
                opacity,
                palette=palette,
                labels=labels,
            )
            save_png(paths["overlay"], width, height, bands, "RGB")
        if "json" in paths:
            atomic_write_text(paths["json"], json.dumps(self.to_dict(), indent=2) + "\n")
        if "scores" in paths and self.scores is not None:
            write_scores_npz(paths["scores"], self.scores, self.class_names)
        if "heatmaps" in paths and self.scores is not None:
            written["heatmaps"] = write_heatmaps(out_dir, stem, self.scores, self.image, self.class_names)
        return written

    def _save_label(self, path: Path, colours: np.ndarray) -> None:
        k = len(self.class_names)
        value = self.unlabelled_value
        if k <= 256 and (value is None or value == 255):
            write_label_png(path, self.label_map, colours, bit_depth=8)
        else:
            write_label_png(path, self.label_map, bit_depth=16)
