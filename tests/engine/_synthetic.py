"""A tiny synthetic segmentation dataset: coloured shapes on a noisy background, with their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("background", "red square", "green disc", "blue bar")
COLOURS = {1: (220, 40, 40), 2: (40, 200, 60), 3: (50, 70, 230)}


def make_shapes(root: Path, count: int = 8, size: int = 64, seed: int = 0) -> Path:
    """Write ``root/images/*.png``, ``root/labels/*.png`` and ``root/classes.txt``; returns the class file.

    Every image has a dark noisy background (class 0) and one large shape of each other class:
    a square (1), a disc (2) and a bar (3), at random places; later shapes overwrite earlier ones.
    """
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[:size, :size]
    for i in range(count):
        label = np.zeros((size, size), dtype=np.uint8)
        s = size // 3
        y, x = rng.integers(0, size - s, 2)
        label[y : y + s, x : x + s] = 1
        cy, cx = rng.integers(s // 2, size - s // 2, 2)
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= (s // 2) ** 2] = 2
        y = rng.integers(0, size - s // 2)
        label[y : y + s // 2, size // 8 : size - size // 8] = 3
        image = rng.integers(0, 60, (size, size, 3)).astype(np.uint8)
        for cls, colour in COLOURS.items():
            noise = rng.integers(-20, 21, (size, size, 3))
            shade = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            image[label == cls] = shade[label == cls]
        Image.fromarray(image).save(root / "images" / f"img{i:03d}.png")
        Image.fromarray(label).save(root / "labels" / f"img{i:03d}.png")
    classes = root / "classes.txt"
    classes.write_text("\n".join(CLASSES) + "\n")
    return classes


def distinct_text_projection(model, class_names: tuple[str, ...] = CLASSES, seed: int = 0) -> None:
    """Make a random tiny text tower give well separated class embeddings (in place).

    Random tiny text towers map every prompt to nearly the same vector (cosine ~0.95), unlike a
    pretrained CLIP, so nothing could tell the classes apart. This solves for the text projection
    that sends every template x class prompt to an orthonormal per-class target (least squares):
    the tower stays a plain CLIP text tower, only its ``text_projection`` values change.
    """
    import torch

    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates

    text = model.clip.text
    width, dim = text.text_projection.shape
    templates = get_templates(model.config.templates)
    tokens = get_tokenizer()([t.format(name) for t in templates for name in class_names])
    g = torch.Generator().manual_seed(seed)
    targets = torch.linalg.qr(torch.randn(dim, len(class_names), generator=g))[0].T  # (K, E) orthonormal
    with torch.no_grad():
        saved = text.text_projection.clone()
        text.text_projection.copy_(torch.eye(width, dim))
        features = text(tokens)[:, :width]  # (P*K, width) before the projection
        wanted = targets.repeat(len(templates), 1)
        solution = torch.linalg.lstsq(features.double(), wanted.double()).solution.float()
        text.text_projection.copy_(solution if torch.isfinite(solution).all() else saved)
