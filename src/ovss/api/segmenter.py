"""Segmenter: image + class names -> label map. Owns preprocessing and the vocabulary cache.

Typical use::

    import ovss
    seg = ovss.load("san-vit-b16")                  # downloads and converts once
    result = seg.predict("photo.jpg", "cat; sofa, couch; wall")
    result.save("out", "photo")                       # label PNG, overlay PNG, JSON
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ovss.api.device import parse_device, parse_dtype, warn_fp16_on_cpu
from ovss.api.requery import ImageCache, ImageHandle, View, cache_key, pixel_digest
from ovss.api.result import SegmentationResult, unlabelled_value
from ovss.api.scores import ReducedScores, check_min_score, class_indices, disk_scores, reduce_scores
from ovss.api.tta import TTAConfig, check_pass_sizes, mean_blocks, parse_tta, scaled_size
from ovss.data.io import ImageInput, read_image
from ovss.errors import ImageReadError, OvssError
from ovss.layers.cv2_resize import cv2_resize_linear, mmcv_scale_factor_size
from ovss.models.base import SegmentationModel
from ovss.vocab.embeddings import TextEmbedder
from ovss.vocab.vocabulary import Vocabulary, parse_vocabulary

Progress = Callable[[float, float, str], None]  # progress(done, total, unit), see Segmenter.predict


class Segmenter:
    """Run a segmentation model on images for a vocabulary of class names.

    Args:
        model: a :class:`~ovss.models.base.SegmentationModel` (float32 weights).
        name: model name (for results and the cache key).
        digest: identifies the weights (sha256 of the source checkpoint); keys the text cache.
        device: where to run.
        dtype: compute dtype: float32 is the exact path; bfloat16/float16 cast the weights once and
            run the whole network in that dtype (4x faster matrix products on CPUs with AMX/AVX512-BF16);
            ``auto``: bf16 on GPUs and on CPUs with native bf16 units, else fp32 (:func:`parse_dtype`).
        cache_dir: folder of the on-disk text-embedding cache (None: memory only).
        block_mb: working-set budget (MiB) of the full-resolution scores: models with
            ``predict_blocks`` hand the score map over in blocks of about this size and only the
            label map, the per-pixel and the per-class maxima are kept (plus the map itself when
            ``return_scores=True``); the numbers are those of ``predict``.
        max_pixels: refuse images of more pixels (ImageTooLargeError); None: ``$OVSS_MAX_PIXELS`` or
            ``ovss.data.io.DEFAULT_MAX_PIXELS`` (100 million); 0: no limit.

    Attributes:
        scores_dir: None (default): ``return_scores=True`` keeps the (K, H, W) maps in memory, float32.
            A folder: they go block by block into a float16 memory-mapped temporary file there
            (:func:`disk_scores`; removed once the results are dropped), so the maps of a large image
            never need RAM (``ovss segment --outputs scores,heatmaps`` uses its ``--out``).

    Re-query (``ovss.api.requery``): :meth:`encode_image` keeps an image's image-only features for
    any number of vocabularies, and ``predict`` of an image seen just before (same pixels, options and
    TTA) reuses them from ``image_cache`` (LRU bounded by ``$OVSS_IMAGE_CACHE_MB``, default 256 MiB).
    """

    def __init__(
        self,
        model: SegmentationModel,
        name: str = "",
        digest: str = "",
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype = "fp32",
        cache_dir: str | Path | None = None,
        block_mb: float = 32.0,
        max_pixels: int | None = None,
    ) -> None:
        if not block_mb > 0:
            raise OvssError(f"block_mb must be > 0 (MiB of scores per block), got {block_mb}")
        self.block_mb = float(block_mb)
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        if self.dtype == torch.float16 and self.device.type == "cpu":
            warn_fp16_on_cpu()
        self.model = model.to(self.device, self.dtype).eval()
        self.name = name
        self.digest = digest
        self.max_pixels = max_pixels
        config = model.config
        # Only real checkpoints (a sha256) key the disk cache; random test weights have no stable identity.
        is_sha256 = len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)
        cache_id = f"{digest[:16]}-{str(self.dtype).removeprefix('torch.')}" if is_sha256 else None
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
        self.scores_dir: Path | None = None  # see the class docstring
        self.image_cache = ImageCache()

    @property
    def identity(self) -> str:
        """The model and weights this segmenter runs (image handles are tied to it)."""
        name = self.name or type(self.model).__name__
        return f"{name} (weights {self.digest[:12] or '?'}, #{id(self.model):x})"

    # ------------------------------------------------------------------------------ vocabulary
    def _encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.model.encode_text(tokens.to(self.device)).float()

    def set_vocabulary(
        self,
        classes: str | Path | Sequence[str | Sequence[str]] | Vocabulary,
        embeddings: torch.Tensor | None = None,
    ) -> Vocabulary:
        """Parse ``classes`` and embed them (once per class string; cached in memory and on disk).

        Args:
            classes: ``"cat; sofa, couch; wall"``, a list, a file or a :class:`Vocabulary`.
            embeddings: optional precomputed (K, ...) text embeddings of these K classes in the layout
                the model's ``encode_text`` returns; the text tower is then not run.
        """
        vocab = parse_vocabulary(classes)
        if embeddings is not None:
            if embeddings.shape[0] != len(vocab):
                raise OvssError(
                    f"embeddings have {embeddings.shape[0]} rows for {len(vocab)} classes; pass one row "
                    "per class"
                )
            self._text = embeddings.to(self.device, self.dtype)
            self._vocab = vocab
        elif vocab != self._vocab:
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
        image: ImageInput | ImageHandle,
        classes: str | Path | Sequence[str | Sequence[str]] | Vocabulary | None = None,
        return_scores: bool | Sequence[int] = False,
        tta: bool | TTAConfig | Sequence[float] | None = None,
        progress: Progress | None = None,
        min_score: float | None = None,
        **options: Any,
    ) -> SegmentationResult:
        """Segment one image.

        Args:
            image: path, http(s) URL (a ``str``; byte limit, timeout, refused offline: see
                :mod:`ovss.data.remote`), PIL image, (H, W, 3) uint8 RGB array, or an
                :class:`ImageHandle` from :meth:`encode_image` (then only the text stage runs; options
                and ``tta`` default to the handle's and must equal them when given).
            classes: vocabulary (``"cat; sofa, couch; wall"``, a list, a file); None keeps the last one.
            return_scores: keep the full (K, H, W) score map in the result; a list of class indices
                keeps only those classes' maps ((len, H, W), listed in ``result.score_classes``).
            tta: test-time augmentation: ``True`` (mmseg's ratios 0.5-1.75 + flip, 12 passes), a
                :class:`~ovss.api.tta.TTAConfig` or a list of ratios (with flip); the result is the
                mean of the score maps (``ovss.api.tta``). Costs one forward pass per augmentation.
            progress: called as ``progress(done, total, unit)`` while an image (batch) is segmented,
                for progress bars: with ``tta`` after each forward pass (unit ``"pass"``, total = the
                number of augmentations), else as blocks of the score map are done (unit ``"%"``,
                total 100; CAT-Seg's slide: class by class). Called on the calling thread.
            options: model options: CAT-Seg ``inference="slide"`` (its default: the official evaluation
                protocol, 5 passes) or ``"whole"`` (one pass, 4-5x faster; ``ovss segment``'s default);
                SED ``fast=True, topk=8``.
            min_score: pixels whose best score is below it are unlabelled: they hold 255 in
                ``label_map`` (65535 above 255 classes, :func:`~ovss.api.result.unlabelled_value`),
                stay uncoloured in the overlay and are counted in ``result.unlabelled_fraction``.
                Scores are per family (docs/visualize.md): CAT-Seg / SED sigmoid probabilities,
                SAN mask probabilities summed over its queries. None: every pixel is labelled.
        """
        results = self.predict_batch(
            [image],
            classes,
            return_scores=return_scores,
            tta=tta,
            progress=progress,
            min_score=min_score,
            **options,
        )
        return next(iter(results))

    def predict_batch(
        self,
        images: Iterable[ImageInput | ImageHandle],
        classes: str | Path | Sequence[str | Sequence[str]] | Vocabulary | None = None,
        batch_size: int = 1,
        return_scores: bool | Sequence[int] = False,
        tta: bool | TTAConfig | Sequence[float] | None = None,
        progress: Progress | None = None,
        min_score: float | None = None,
        **options: Any,
    ) -> Iterator[SegmentationResult]:
        """Segment many images with one vocabulary (embedded once); yields results in order.

        Consecutive images of the same size are run as one batch (up to ``batch_size``). ``tta``,
        ``progress`` (reported per batch), ``return_scores`` and ``min_score`` as in :meth:`predict`.
        Items may be :class:`ImageHandle` s (as in :meth:`predict`); one image at a time
        (``batch_size=1``) uses the implicit image cache.
        """
        aug = parse_tta(tta)
        min_score = check_min_score(min_score)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise OvssError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if classes is not None:
            self.set_vocabulary(classes)
        if self._vocab is None:
            raise OvssError("no vocabulary: pass classes, e.g. predict(image, 'cat; dog; grass')")
        pending: list[tuple[np.ndarray, torch.Tensor, tuple[int, int]]] = []
        for image in images:
            if isinstance(image, ImageHandle):
                if pending:
                    yield from self._run(pending, return_scores, aug, progress, min_score, **options)
                    pending = []
                opts, handle_tta = image.settings(self.identity, self.dtype, options, aug)
                yield from self._finish(
                    image.views, [image.image], return_scores, handle_tta, progress, min_score, opts
                )
                continue
            rgb = read_image(image, self.max_pixels)
            tensor, size = self._preprocess(rgb, **options)
            same = pending and rgb.shape == pending[0][0].shape and size == pending[0][2]
            if pending and (not same or len(pending) >= batch_size):
                yield from self._run(pending, return_scores, aug, progress, min_score, **options)
                pending = []
            pending.append((rgb, tensor, size))
        if pending:
            yield from self._run(pending, return_scores, aug, progress, min_score, **options)

    def _preprocess(self, rgb: np.ndarray, **options: Any) -> tuple[torch.Tensor, tuple[int, int]]:
        """Resize (PIL bilinear on uint8, as detectron2's ResizeShortestEdge) -> (3, h, w) float 0..255."""
        h0, w0 = rgb.shape[:2]
        h, w = self.model.preprocess_size(h0, w0, **options)
        if h < 1 or w < 1:  # an extreme aspect ratio: the short side would round to 0 pixels
            raise ImageReadError(
                f"the image is {w0}x{h0} pixels (aspect ratio {max(h0, w0) / min(h0, w0):.0f}:1), too "
                f"elongated for {self.name or 'this model'}: it would be resized to {w}x{h}; crop it "
                "into pieces closer to square"
            )
        return self._resize(rgb, (h, w), self.model.input_protocol(**options) == "mmseg"), (h, w)

    @staticmethod
    def _resize(rgb: np.ndarray, size: tuple[int, int], cv2: bool) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, h, w) float 0..255: PIL bilinear (detectron2) or cv2-exact (mmseg)."""
        if tuple(size) == tuple(rgb.shape[:2]):
            return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float()
        if cv2:
            pixels = rgb if rgb.flags.writeable else rgb.copy()  # torch warns on read-only arrays
            return cv2_resize_linear(torch.from_numpy(pixels).permute(2, 0, 1), size)
        small = np.array(Image.fromarray(rgb).resize((size[1], size[0]), Image.Resampling.BILINEAR))
        return torch.from_numpy(small).permute(2, 0, 1).float()

    @torch.inference_mode()
    def encode_image(
        self, image: ImageInput, tta: bool | TTAConfig | Sequence[float] | None = None, **options: Any
    ) -> ImageHandle:
        """Run the image-only stage of the model once: ``predict(handle, classes)`` then finishes any
        vocabulary from it, with the numbers of ``predict(image, classes, tta=tta, **options)``.

        Args:
            image, tta, options: as for :meth:`predict`.

        Returns:
            an :class:`~ovss.api.requery.ImageHandle` (its ``nbytes``: memory held); it also enters the
            implicit cache, so ``predict(image, ...)`` with the same options reuses it.
        """
        aug = parse_tta(tta)
        rgb = read_image(image, self.max_pixels)
        tensor, size = self._preprocess(rgb, **options)
        handle = self._encode([(rgb, tensor, size)], aug, options, None, pixel_digest(rgb))
        self.image_cache.put(handle)
        return handle

    def _encode(
        self,
        items: list[tuple[np.ndarray, torch.Tensor, tuple[int, int]]],
        tta: TTAConfig | None,
        options: dict[str, Any],
        progress: Progress | None,
        digest: str = "",
    ) -> ImageHandle:
        """The image stage of a batch (one view, or one per TTA augmentation, reported to ``progress``
        as passes) as a handle; ``digest``: :func:`pixel_digest` of a single image (a handle without
        one is never cached)."""
        if tta is None:
            size = items[0][2]
            batch = self._normalise([t for _, t, _ in items], size)
            views: tuple[View, ...] = (View(False, size, self.model.image_stage(batch, size, **options)),)
        else:
            mmseg = self.model.input_protocol(**options) == "mmseg"
            check_pass_sizes(items[0][0].shape[:2] if mmseg else items[0][2], tta)  # mmseg: x original
            report = progress or (lambda done, total, unit: None)
            report(0, len(tta.augmentations), "pass")
            views = ()
            for scale, flip in tta.augmentations:
                batch, size = self._augmented_batch(items, scale, flip, options)
                views += (View(flip, size, self.model.image_stage(batch, size, **options)),)
                report(len(views), len(tta.augmentations), "pass")
        return ImageHandle(items[0][0], views, self.identity, self.dtype, dict(options), tta, digest)

    @torch.inference_mode()
    def _run(
        self,
        items: list[tuple[np.ndarray, torch.Tensor, tuple[int, int]]],
        return_scores: bool | Sequence[int],
        tta: TTAConfig | None = None,
        progress: Progress | None = None,
        min_score: float | None = None,
        **options: Any,
    ) -> Iterator[SegmentationResult]:
        if len(items) > 1 or self.image_cache.max_bytes <= 0:
            views = self._encode(items, tta, options, progress).views
        else:  # one image: the implicit cache (the same image with other classes skips the image stage)
            key = cache_key(items[0][0], self.identity, self.dtype, options, tta)
            handle = self.image_cache.get(key)
            if handle is None:
                handle = self._encode(items, tta, options, progress, digest=key[0])
                self.image_cache.put(handle)
            elif progress is not None and tta is not None:
                for done in range(len(handle.views) + 1):
                    progress(done, len(handle.views), "pass")
            views = handle.views
        images = [rgb for rgb, _, _ in items]
        yield from self._finish(views, images, return_scores, tta, progress, min_score, options)

    @torch.inference_mode()
    def _finish(
        self,
        views: Sequence[View],
        images: list[np.ndarray],
        return_scores: bool | Sequence[int],
        tta: TTAConfig | None,
        progress: Progress | None,
        min_score: float | None,
        options: dict[str, Any],
    ) -> Iterator[SegmentationResult]:
        """The text stage of every view, the mean over TTA views, the reduction and the results
        (``progress`` without TTA: percent of the map, as its blocks come)."""
        assert self._vocab is not None and self._text is not None  # predict_batch checked
        out_size = tuple(images[0].shape[:2])  # a batch holds images of one original size
        shape = (len(images), len(self._vocab), *out_size)
        max_elements = max(1, int(self.block_mb * 2**20) // 4)
        streams = [
            (v.flip, self.model.text_stage(v.features, self._text, v.size, out_size, max_elements, **options))
            for v in views
        ]
        mmseg = tta is not None and self.model.input_protocol(**options) == "mmseg"
        blocks = mean_blocks(streams, softmax=mmseg)  # mmseg's SegTTAModel: the mean of the softmaxes
        if progress is not None and tta is None:
            blocks = _report_blocks(blocks, shape, progress)
        keep = return_scores if isinstance(return_scores, bool) else class_indices(return_scores, shape[1])
        disk = disk_scores(shape, self.scores_dir) if keep is True and self.scores_dir is not None else None
        reduced = reduce_scores(blocks, shape, keep if disk is None else False, self.device, out=disk)
        for i, rgb in enumerate(images):
            kept = disk[i] if disk is not None else None
            if reduced.scores is not None:
                kept = reduced.scores[i].cpu().numpy()
            yield self._to_result(rgb, reduced, i, min_score, None if isinstance(keep, bool) else keep, kept)

    def _normalise(self, tensors: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        """(3, h, w) float 0..255 images -> (B, 3, H, W) normalised, in the compute dtype, padded."""
        h, w = size
        batch = torch.stack(tensors).to(self.device)
        batch = ((batch - self._mean) / self._std).to(self.dtype)
        div = self.model.config.size_divisibility
        if div > 1:
            batch = F.pad(batch, (0, (-w) % div, 0, (-h) % div))
        return batch

    def _augmented_batch(
        self,
        items: list[tuple[np.ndarray, torch.Tensor, tuple[int, int]]],
        scale: float,
        flip: bool,
        options: dict[str, Any],
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """The model input of one TTA augmentation (mirrored when ``flip``; :func:`mean_blocks` undoes it).

        The image is resized from the original to ``scale`` x the model's test size (PIL bilinear, as
        the normal path) and the map comes at the original size, as the normal path's. mmseg protocol
        (``input_protocol``): ``scale`` x the ORIGINAL size (mmseg's ``tta_pipeline``), cv2-exact.
        """
        mmseg = self.model.input_protocol(**options) == "mmseg"
        h0, w0 = items[0][0].shape[:2]
        size = mmcv_scale_factor_size(h0, w0, scale) if mmseg else scaled_size(items[0][2], scale)
        tensors = []
        for rgb, tensor, _ in items:
            if size != tensor.shape[-2:]:
                tensor = self._resize(rgb, size, mmseg)
            tensors.append(tensor.flip(-1) if flip else tensor)
        return self._normalise(tensors, size), size

    def _to_result(
        self,
        rgb: np.ndarray,
        reduced: ReducedScores,
        i: int,
        min_score: float | None = None,
        score_classes: list[int] | None = None,
        scores: np.ndarray | None = None,
    ) -> SegmentationResult:
        assert self._vocab is not None
        label_map = reduced.labels[i].cpu().numpy().astype(np.int64, copy=False)
        confidence = reduced.confidence[i].cpu().numpy().astype(np.float32, copy=False)
        k = reduced.class_scores.shape[1]
        unlabelled = 0.0
        if min_score is not None:
            value = unlabelled_value(k)
            below = confidence < min_score
            label_map[below] = value
            unlabelled = float(np.count_nonzero(below)) / max(label_map.size, 1)
        counts = np.bincount(label_map.ravel(), minlength=k)[:k]
        return SegmentationResult(
            label_map=label_map,
            class_names=self._vocab.names,
            confidence=confidence,
            class_scores=reduced.class_scores[i].cpu().numpy().astype(np.float32, copy=False),
            fractions=counts / max(label_map.size, 1),
            image=rgb,
            scores=scores,
            model=self.name,
            min_score=min_score,
            unlabelled_fraction=unlabelled,
            score_classes=score_classes,
        )


def _report_blocks(
    blocks: Iterator[tuple[int, int, torch.Tensor]], shape: tuple[int, ...], progress: Progress
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """``blocks`` unchanged, calling ``progress(percent, 100, "%")`` as they cover the map."""
    total, done = float(np.prod(shape)), 0
    progress(0, 100, "%")
    for item in blocks:
        yield item
        done += item[2].numel()
        progress(round(100 * done / total, 1), 100, "%")


def load(
    name_or_path: str | Path,
    device: str | torch.device | None = "cpu",
    dtype: str | torch.dtype = "auto",
    weights: str | Path | None = None,
) -> Segmenter:
    """Load a model by registry name or checkpoint path and wrap it in a :class:`Segmenter`.

    Args:
        name_or_path: registry name (``ovss models`` lists them; downloaded and converted once), a
            converted ``.safetensors`` file, or an official checkpoint file (format auto-detected).
        device: ``cpu``, ``cuda``, ``cuda:N`` or ``auto``.
        dtype: ``auto`` (default: bf16 on GPUs and on CPUs with native bf16 units, where it is
            several times faster, its scores stay within ~1 % of fp32 and labels change only where two
            classes score within that error; fp32 elsewhere),
            ``fp32`` (exact: what ``ovss eval`` uses by default), ``bf16`` or ``fp16`` (for GPUs: on
            the CPU it is ~3x slower than fp32, and a ``UserWarning`` says so once).
        weights: an explicit checkpoint file for the registry name (official or converted).
    """
    from ovss.home import ovss_home
    from ovss.weights.cache import load_model

    model, info = load_model(name_or_path, weights=weights)
    return Segmenter(
        model,
        name=info["name"],
        digest=info["digest"],
        device=device,
        dtype=dtype,
        cache_dir=ovss_home() / "text",
    )
