"""Segmenter: image + class names -> label map. Owns preprocessing and the vocabulary cache.

Typical use::

    import ovss
    seg = ovss.load("san-vit-b16")                  # downloads and converts once
    result = seg.predict("photo.jpg", "cat; sofa, couch; wall")
    result.save("out", "photo")                       # label PNG, overlay PNG, JSON
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovss.api.result import SegmentationResult
from ovss.data.io import ImageInput, read_image
from ovss.errors import OvssError
from ovss.models.base import SegmentationModel
from ovss.vocab.embeddings import TextEmbedder
from ovss.vocab.vocabulary import Vocabulary, parse_vocabulary

DTYPES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"fp32" | "bf16" | "fp16"`` (or a torch dtype) -> torch dtype."""
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[str(dtype).lower()]
    except KeyError:
        raise OvssError(f"unknown dtype {dtype!r}; use fp32, bf16 or fp16") from None


def parse_device(device: str | torch.device | None) -> torch.device:
    """``None``/"auto" -> cuda when available else cpu; otherwise the device named."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise OvssError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OvssError(f"device {device!r} requested but CUDA is not available; use --device cpu")
    return dev


class Segmenter:
    """Run a segmentation model on images for a vocabulary of class names.

    Args:
        model: a :class:`~ovss.models.base.SegmentationModel` (float32 weights).
        name: model name (for results and the cache key).
        digest: identifies the weights (sha256 of the source checkpoint); keys the text cache.
        device: where to run.
        dtype: compute dtype: float32 is the exact path; bfloat16/float16 cast the weights once and
            run the whole network in that dtype (4x faster matrix products on CPUs with AMX/AVX512-BF16).
        cache_dir: folder of the on-disk text-embedding cache (None: memory only).
    """

    def __init__(
        self,
        model: SegmentationModel,
        name: str = "",
        digest: str = "",
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype = "fp32",
        cache_dir: str | Path | None = None,
    ) -> None:
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype)
        self.model = model.to(self.device, self.dtype).eval()
        self.name = name
        config = model.config
        cache_id = f"{digest[:16]}-{str(self.dtype).removeprefix('torch.')}" if digest else None
        self.embedder = TextEmbedder(
            self._encode_text,
            config.templates,
            config.synonyms,
            cache_id=cache_id,
            cache_dir=Path(cache_dir) if cache_dir else None,
        )
        mean = torch.tensor(config.pixel_mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(config.pixel_std, dtype=torch.float32).view(1, 3, 1, 1)
        self._mean, self._std = mean.to(self.device), std.to(self.device)
        self._vocab: Vocabulary | None = None
        self._text: torch.Tensor | None = None

    # ------------------------------------------------------------------------------ vocabulary
    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encode_text(tokens.to(self.device)).float()

    def set_vocabulary(self, classes: str | Path | Sequence[str | Sequence[str]] | Vocabulary) -> Vocabulary:
        """Parse ``classes`` and embed them (once per class string; cached in memory and on disk)."""
        vocab = parse_vocabulary(classes)
        if vocab != self._vocab:
            self._text = self.embedder(vocab).to(self.device, self.dtype)
            self._vocab = vocab
        return vocab

    @property
    def text_embeddings(self) -> torch.Tensor | None:
        """(K, ...) embeddings of the current vocabulary (None before ``set_vocabulary``)."""
        return self._text

    @property
    def vocabulary(self) -> Vocabulary | None:
        """The current vocabulary (None before the first ``set_vocabulary``/``predict``)."""
        return self._vocab

    # ------------------------------------------------------------------------------ prediction
    def predict(
        self,
        image: ImageInput,
        classes: str | Path | Sequence[str | Sequence[str]] | Vocabulary | None = None,
        return_scores: bool = False,
        **options: Any,
    ) -> SegmentationResult:
        """Segment one image.

        Args:
            image: path, PIL image or (H, W, 3) uint8 RGB array.
            classes: vocabulary (``"cat; sofa, couch; wall"``, a list, a file); None keeps the last one.
            return_scores: keep the full (K, H, W) score map in the result.
            options: model options (CAT-Seg ``inference="slide"``; SED ``fast=True, topk=8``).
        """
        return next(iter(self.predict_batch([image], classes, return_scores=return_scores, **options)))

    def predict_batch(
        self,
        images: Iterable[ImageInput],
        classes: str | Path | Sequence[str | Sequence[str]] | Vocabulary | None = None,
        batch_size: int = 1,
        return_scores: bool = False,
        **options: Any,
    ) -> Iterator[SegmentationResult]:
        """Segment many images with one vocabulary (embedded once); yields results in order.

        Consecutive images of the same size are run as one batch (up to ``batch_size``).
        """
        if classes is not None:
            self.set_vocabulary(classes)
        if self._vocab is None:
            raise OvssError("no vocabulary: pass classes, e.g. predict(image, 'cat; dog; grass')")
        pending: list[tuple[np.ndarray, torch.Tensor, tuple[int, int]]] = []
        for image in images:
            rgb = read_image(image)
            tensor, size = self._preprocess(rgb, **options)
            same = pending and rgb.shape == pending[0][0].shape and size == pending[0][2]
            if pending and (not same or len(pending) >= batch_size):
                yield from self._run(pending, return_scores, **options)
                pending = []
            pending.append((rgb, tensor, size))
        if pending:
            yield from self._run(pending, return_scores, **options)

    def _preprocess(self, rgb: np.ndarray, **options: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize (PIL bilinear on uint8, as detectron2's ResizeShortestEdge) -> (3, h, w) float 0..255."""
        h0, w0 = rgb.shape[:2]
        h, w = self.model.preprocess_size(h0, w0, **options)
        if (h, w) != (h0, w0):
            rgb = np.array(Image.fromarray(rgb).resize((w, h), Image.BILINEAR))
        return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float(), (h, w)

    @torch.inference_mode()
    def _run(
        self,
        items: list[tuple[np.ndarray, torch.Tensor, tuple[int, int]]],
        return_scores: bool,
        **options: Any,
    ) -> Iterator[SegmentationResult]:
        h, w = items[0][2]
        batch = torch.stack([t for _, t, _ in items]).to(self.device)
        batch = ((batch - self._mean) / self._std).to(self.dtype)
        div = self.model.config.size_divisibility
        if div > 1:
            batch = F.pad(batch, (0, (-w) % div, 0, (-h) % div))
        out_size = items[0][0].shape[:2]  # a batch holds images of one original size
        scores = self.model.predict(batch, self._text, (h, w), out_size, **options)
        for i, (rgb, _, _) in enumerate(items):
            yield self._to_result(rgb, scores[i].float(), return_scores)

    def _to_result(self, rgb: np.ndarray, scores: torch.Tensor, return_scores: bool) -> SegmentationResult:
        assert self._vocab is not None
        confidence, labels = scores.max(dim=0)
        k = scores.shape[0]
        label_map = labels.cpu().numpy().astype(np.int64)
        counts = np.bincount(label_map.ravel(), minlength=k)
        return SegmentationResult(
            label_map=label_map,
            class_names=self._vocab.names,
            confidence=confidence.cpu().numpy().astype(np.float32),
            class_scores=scores.flatten(1).amax(dim=1).cpu().numpy().astype(np.float32),
            fractions=counts / max(label_map.size, 1),
            image=rgb,
            scores=scores.cpu().numpy() if return_scores else None,
            model=self.name,
        )


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "fp32",
    weights: str | Path | None = None,
) -> Segmenter:
    """Load a model by registry name or checkpoint path and wrap it in a :class:`Segmenter`.

    Args:
        name_or_path: registry name (``ovss models`` lists them; downloaded and converted once), a
            converted ``.safetensors`` file, or an official checkpoint file (format auto-detected).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: ``fp32`` (exact), ``bf16`` or ``fp16``.
        weights: an explicit checkpoint file for the registry name (official or converted).
    """
    from ovss.weights.cache import load_model, ovss_home

    model, info = load_model(name_or_path, weights=weights)
    return Segmenter(
        model,
        name=info["name"],
        digest=info["digest"],
        device=device,
        dtype=dtype,
        cache_dir=ovss_home() / "text",
    )
