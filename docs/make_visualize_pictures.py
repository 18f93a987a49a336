"""Draw the pictures of docs/visualize.md (no model weights needed).

    python docs/make_visualize_pictures.py [../shared/data]

The labelled overlay and the heat-map sheet are drawn from the PASCAL VOC ground-truth label maps of
the sample data (``../shared/data/voc``), not from a model: they show what ovss draws, not how well a
model segments. The heat-map "scores" are the ground-truth masks blurred (a stand-in for a model's).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from ovss.api.heatmaps import heat_sheet, score_range
from ovss.api.visualize import overlay
from ovss.data.io import read_image, read_label

DOCS = Path(__file__).resolve().parent


def main(data: Path) -> None:
    lines = (data / "voc" / "class_names.txt").read_text().splitlines()
    names = [n.replace("_background_", "background") for n in lines]
    pictures = []
    for stem in ("2011_000006", "2011_000025"):
        image = read_image(data / "voc" / f"{stem}.jpg")
        label = read_label(data / "voc" / f"{stem}.png")  # 255: VOC's boundary/ignore = unlabelled
        pictures.append(np.asarray(overlay(image, label, names, opacity=0.55, palette="voc")))
    height = max(p.shape[0] for p in pictures)
    row = np.full((height, sum(p.shape[1] for p in pictures) + 10, 3), 255, np.uint8)
    x = 0
    for p in pictures:
        row[: p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + 10
    Image.fromarray(row).quantize(256).save(DOCS / "visualize_labels.png", optimize=True)

    image = read_image(data / "voc" / "2011_000025.jpg")
    label = read_label(data / "voc" / "2011_000025.png")
    blur = ImageFilter.GaussianBlur(12)
    masks = [Image.fromarray(((label == k) * 255).astype(np.uint8)) for k in range(len(names))]
    scores = np.stack([np.asarray(m.filter(blur)) / 255.0 for m in masks]).astype(np.float32)
    sheet = heat_sheet(scores, image, names, *score_range(scores))
    Image.fromarray(sheet).quantize(256).save(DOCS / "visualize_heatmaps.png", optimize=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else DOCS.parents[1] / "shared" / "data")
