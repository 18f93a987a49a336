"""ONNX export: the model's own ``predict`` traced at a fixed image size, text embeddings as an input.

The exported graph takes ``images`` (B, 3, H, W) CLIP-normalised float32 at the size it was exported
with and ``text`` (K, ...) from ``encode_text`` (K dynamic), and returns ``scores`` (B, K, H, W). The text
tower is not exported: embed a vocabulary once with ovss (or export it separately) and feed it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ovss.errors import OvssError, missing_dependency
from ovss.models.base import SegmentationModel
from ovss.utils import atomic_write


class _PredictWrapper(nn.Module):
    """Calls ``model.predict`` with a fixed valid/output size (the export input size)."""

    def __init__(self, model: SegmentationModel, size: tuple[int, int], options: dict[str, Any]) -> None:
        super().__init__()
        self.model = model
        self.size = size
        self.options = options

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        return self.model.predict(images, text, self.size, self.size, **self.options)


def export_onnx(
    model: SegmentationModel,
    text: torch.Tensor,
    path: str | Path,
    size: tuple[int, int] = (640, 640),
    opset: int = 18,
    check: bool = True,
    **options: Any,
) -> dict[str, float]:
    """Export ``model.predict`` to ONNX and (optionally) check it against eager PyTorch.

    Args:
        model: a float32 segmentation model in eval mode.
        text: (K, ...) example text embeddings (from ``model.encode_text``); K stays dynamic.
        path: output ``.onnx`` file (written atomically).
        size: (H, W) input size baked into the graph; must be a multiple of the model's size divisibility.
        opset: ONNX opset.
        check: run the file with onnxruntime on a random image and compare with eager.
        options: model options fixed at export (e.g. ``inference="whole"``).

    Returns:
        ``{"max_abs_err": ..., "rel_err": ...}`` of the onnxruntime check (empty without check).
    """
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise missing_dependency("onnx", "export") from None
    div = max(model.config.size_divisibility, 1)
    if size[0] % div or size[1] % div:
        raise OvssError(f"export size {size} must be a multiple of {div}; e.g. --size {div * 20}")
    wrapper = _PredictWrapper(model.eval(), size, options).eval()
    images = torch.randn(1, 3, *size)
    text = text.detach().float()
    path = Path(path)

    def write(tmp: Path) -> None:
        with torch.no_grad():
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

    atomic_write(path, write)
    if not check:
        return {}
    return check_onnx(wrapper, path, images, text)


def check_onnx(wrapper: nn.Module, path: Path, images: torch.Tensor, text: torch.Tensor) -> dict[str, float]:
    """Compare onnxruntime output of ``path`` with eager ``wrapper`` on the given inputs."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise missing_dependency("onnxruntime", "export") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (ort_out,) = session.run(None, {"images": images.numpy(), "text": text.numpy()})
    with torch.no_grad():
        ref = wrapper(images, text).numpy()
    err = np.abs(ort_out - ref)
    return {
        "max_abs_err": float(err.max()),
        "rel_err": float(np.linalg.norm(ort_out - ref) / np.linalg.norm(ref)),
    }
