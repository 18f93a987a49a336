"""ONNX export: the model's own score map traced at a fixed image size, text embeddings as an input.

The exported graph takes ``images`` (1, 3, H, W) CLIP-normalised float32 (float16 for a float16
model, :func:`export_dtype`) at the size it was exported with (one image per run) and ``text``
(K, ...) from ``encode_text``, and returns ``scores`` (1, K, H, W). The text tower is not
exported: embed a vocabulary once with ovss (or export it separately) and feed it.

The vocabulary size K is a true dynamic axis: the graph is traced through a path whose shapes do
not depend on K. Eager inference streams the score map in blocks sized from K (bands of rows,
chunks of classes) to bound memory; a traced graph would freeze those sizes, so the export asks for
the whole map as one block (:data:`EXPORT_ELEMENTS`), and the models take their tracing branches
(``torch.jit.is_tracing()``): CAT-Seg always selects its top-``min(K, 256)`` classes and pads the
class attention by a traced count (0 at or above the budget), and runs its decoder on all classes at
once; CAT-Seg v1 decodes all classes at once and accumulates its slide / mmseg crops out of place.
The numbers equal eager ``predict`` (to float32 rounding) for every K; :func:`check_onnx` verifies
this at several K (below, at and above the traced one).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ovss.errors import OvssError, missing_dependency
from ovss.layers.resize import assemble_blocks
from ovss.models.base import SegmentationModel
from ovss.utils import atomic_write

# Block budget used while tracing: larger than any score map, so every model yields one block whose
# shape is (B, K, H, W) whatever K (band/chunk sizes computed from K would be frozen into the graph).
EXPORT_ELEMENTS = 1 << 62


class _PredictWrapper(nn.Module):
    """The whole (B, K, H, W) score map in one block, at a fixed valid/output size (the export size)."""

    def __init__(self, model: SegmentationModel, size: tuple[int, int], options: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.options = options

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        size, options = self.size, self.options
        blocks = self.model.predict_blocks(images, text, size, size, EXPORT_ELEMENTS, **options)
        shape = (images.shape[0], text.shape[0], *self.size)
        return assemble_blocks(blocks, shape, images.dtype, images.device)


MIN_OPSET = 14  # scaled_dot_product_attention (all three families) has no export below 14


def check_opset(opset: int) -> int:
    """Refuse an opset the models cannot be exported at (below 14) or torch cannot write (above its
    TorchScript exporter's maximum), before anything is traced: one line, not torch's IR dump."""
    try:
        from torch.onnx import _constants

        top = int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 10**6))
    except ImportError:  # torch moved it: let torch judge the upper end
        top = 10**6
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= top:
        span = f"{MIN_OPSET}..{top}" if top < 10**6 else f">= {MIN_OPSET}"
        raise OvssError(f"ONNX opset {opset!r} is not supported: use {span} (default 18; --opset N)")
    return opset


MAX_EXPORT_SIDE = 4096  # largest side of the export size (the official test sizes are 384..640)
MAX_EXPORT_PIXELS = 2048 * 2048  # largest H x W: tracing holds the whole score map and its activations


def check_export_size(size: Sequence[int]) -> None:
    """OvssError unless ``size`` is two integers (H, W), each in 1..MAX_EXPORT_SIDE, H*W at most
    MAX_EXPORT_PIXELS; checked before the model loads (a 65536 x 65536 trace would allocate ~48 GiB)."""
    if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) for s in size):
        raise OvssError(f"export size {tuple(size)!r} must be two integers H W, e.g. --size 640 640")
    h, w = int(size[0]), int(size[1])
    if not (0 < h <= MAX_EXPORT_SIDE and 0 < w <= MAX_EXPORT_SIDE) or h * w > MAX_EXPORT_PIXELS:
        raise OvssError(
            f"export size {h} {w} is out of range: each side 1..{MAX_EXPORT_SIDE} and H x W at most "
            f"{MAX_EXPORT_PIXELS} ({MAX_EXPORT_PIXELS / 1e6:.1f}M pixels); e.g. --size 640 640"
        )


def suggest_size(size: Sequence[int], div: int) -> str:
    """``"--size H W"`` with each side rounded up to a multiple of ``div`` (for error messages)."""
    h, w = (max(div, -(-int(s) // div) * div) for s in size)
    return f"--size {h} {w}"


# Graph dtypes onnxruntime runs (checked at export by check_onnx). bfloat16 is not among them: ONNX's
# Conv has no bfloat16 type, so onnxruntime refuses to load such a graph.
EXPORT_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def parse_export_dtype(name: str) -> torch.dtype:
    """``"fp32"`` or ``"fp16"`` -> the graph dtype; bf16 (and anything else) refused with one line."""
    key = str(name).lower()
    if key in ("bf16", "bfloat16"):
        raise OvssError(
            "--dtype bf16 cannot be exported: ONNX's Conv has no bfloat16 type, so onnxruntime refuses the "
            "graph; export fp32 (the default) or fp16"
        )
    if key not in EXPORT_DTYPES:
        raise OvssError(f"export dtype {name!r} is not supported; use fp32 (default) or fp16")
    return EXPORT_DTYPES[key]


def export_dtype(model: nn.Module) -> torch.dtype:
    """The dtype the graph is traced in: the model's own (float32 or float16; bfloat16 is refused)."""
    dtype = next(model.parameters()).dtype
    if dtype not in EXPORT_DTYPES.values():
        raise OvssError(
            f"a {str(dtype).removeprefix('torch.')} model cannot be exported to ONNX (onnxruntime runs "
            "float32 and float16 graphs); load it with dtype='fp32' (e.g. ovss.load(name, dtype='fp32'))"
        )
    return dtype


def export_options(model: SegmentationModel, options: dict[str, Any]) -> dict[str, Any]:
    """The model options fixed in the graph; refuses those a fixed graph cannot express.

    SED's category early rejection (``fast=True``) keeps a data-dependent number of classes per
    image, so it is not exportable; the exported SED graph is its normal (all-class) inference.
    """
    options = dict(options)
    if hasattr(model.config, "fast_inference"):  # SED
        if options.get("fast"):
            raise OvssError(
                "SED fast mode (category early rejection) keeps a data-dependent set of classes and "
                "cannot be exported to ONNX; export without --fast (the graph runs all classes)"
            )
        options["fast"] = False
        options.pop("topk", None)
    return options


def _trace(wrapper: nn.Module, images: torch.Tensor, text: torch.Tensor, tmp: Path, opset: int) -> None:
    """Trace ``wrapper`` on the example inputs into the ONNX file ``tmp``, the K axis dynamic."""
    with torch.no_grad(), warnings.catch_warnings():
        # Expected and harmless here: the image size is fixed at export, so the sizes derived from
        # it are constants (TracerWarning); the TorchScript exporter is chosen on purpose
        # (DeprecationWarning); a strided slice is not constant-folded (an optimisation notice).
        # That the K axis stays dynamic is verified by check_onnx at several K, and by the tests.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            wrapper,
            (images, text),
            str(tmp),
            input_names=["images", "text"],
            output_names=["scores"],
            dynamic_axes={"text": {0: "K"}, "scores": {1: "K"}},
            opset_version=opset,
            dynamo=False,
        )


def export_onnx(
    model: SegmentationModel,
    text: torch.Tensor,
    path: str | Path,
    size: tuple[int, int] = (640, 640),
    opset: int = 18,
    check: bool = True,
    check_classes: Sequence[int] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Export the model's score map to ONNX and (optionally) check it against eager PyTorch.

    Args:
        model: a float32 or float16 segmentation model (put in eval mode here); the graph's inputs and
            output take its dtype (:func:`export_dtype`; a bfloat16 model is refused).
        text: (K, ...) example text embeddings (from ``model.encode_text``); K stays dynamic.
        path: output ``.onnx`` file (written atomically).
        size: (H, W) input size baked into the graph; a multiple of the model's size divisibility.
        opset: ONNX opset version.
        check: run the file with onnxruntime and compare with eager at several K (see ``check_onnx``).
        check_classes: the K values checked (default: 1, the traced K and K + 5).
        options: model options fixed at export (e.g. ``inference="whole"``).

    Returns:
        ``{"max_abs_err": ..., "rel_err": ..., "classes": [...]}``: the worst errors over the checked K
        (empty without check).
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise missing_dependency("onnx", "export") from None
    check_opset(opset)
    check_export_size(size)
    dtype = export_dtype(model)
    div = max(model.config.size_divisibility, 1)
    if len(size) != 2 or min(size) <= 0 or size[0] % div or size[1] % div:
        raise OvssError(
            f"export size {tuple(size)} must be two positive multiples of {div} (H W); "
            f"e.g. {suggest_size(size if len(size) == 2 else (640, 640), div)}"
        )
    size = (int(size[0]), int(size[1]))
    wrapper = _PredictWrapper(model.eval(), size, export_options(model, options)).eval()
    images = example_images(model, size).to(dtype)
    text = text.detach().to(dtype).cpu()
    path = Path(path)
    atomic_write(path, lambda tmp: _trace(wrapper, images, text, tmp, opset))
    if not check:
        return {}
    k = text.shape[0]
    classes = list(check_classes) if check_classes is not None else sorted({1, k, k + 5})
    return check_onnx(wrapper, path, images, text, classes)


def example_images(model: SegmentationModel, size: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """(1, 3, H, W) random RGB in 0..255 normalised with the model's ``pixel_mean`` / ``pixel_std``, as
    the predictor feeds it: the input the export traces and checks, on the scale the model expects
    (CAT-Seg v1 normalises inside the network: its input stays on the 0..255 scale)."""
    rgb = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(seed)) * 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (model.config.pixel_mean, model.config.pixel_std))
    return (rgb - mean) / std


def random_text(like: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """(k, ...) random text embeddings in the layout of ``like``, unit norm along the last axis."""
    x = torch.randn(k, *like.shape[1:], generator=torch.Generator().manual_seed(seed))
    return F.normalize(x, dim=-1)


def check_onnx(
    wrapper: nn.Module,
    path: Path,
    images: torch.Tensor,
    text: torch.Tensor,
    classes: Sequence[int] = (),
) -> dict[str, Any]:
    """Compare onnxruntime output of ``path`` with eager ``wrapper``, at the given K and other K.

    Args:
        wrapper: the module that was exported.
        path: the ``.onnx`` file.
        images: (B, 3, H, W) input at the export size.
        text: (K, ...) text embeddings (used for K itself).
        classes: vocabulary sizes to run; sizes other than K use random unit text embeddings.

    Returns:
        the worst ``max_abs_err`` and ``rel_err`` (Frobenius norm of the difference over that of the
        eager map) over the checked sizes, and ``classes``. A wrong output shape raises OvssError.
    """
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_dependency("onnxruntime", "export") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = {"max_abs_err": 0.0, "rel_err": 0.0}
    for k in classes or [text.shape[0]]:
        t = text if k == text.shape[0] else random_text(text, k, seed=k).to(text.dtype)
        (ort_out,) = session.run(None, {"images": images.numpy(), "text": t.numpy()})
        with torch.no_grad():
            ref = wrapper(images, t).numpy()
        if ort_out.shape != ref.shape:
            raise OvssError(
                f"the exported graph gives scores of shape {ort_out.shape} for K={k} classes, eager "
                f"PyTorch {ref.shape}; please report this bug"
            )
        ort_out, ref = ort_out.astype(np.float64), ref.astype(np.float64)  # float16 graphs too
        worst["max_abs_err"] = max(worst["max_abs_err"], float(np.abs(ort_out - ref).max()))
        rel = float(np.linalg.norm(ort_out - ref) / max(np.linalg.norm(ref), 1e-30))
        worst["rel_err"] = max(worst["rel_err"], rel)
    return {**worst, "classes": list(classes or [text.shape[0]])}
