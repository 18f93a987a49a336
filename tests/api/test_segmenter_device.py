"""Every model family on another device against the CPU in float32 (tiny random models, end to end).

The device is ``$OVSS_TEST_DEVICE`` (default ``cpu``, where the comparison is of two identical runs
and checks only that the path runs); ``bench/gpu_check.sh`` runs this file with ``cuda``. TF32 is
switched off so that the GPU's float32 products are float32.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from ovss.api.segmenter import Segmenter
from ovss.models.build import build_model
from ovss.vocab.vocabulary import Vocabulary
from ovss.weights.registry import get_weight_spec
from tests.conftest import relative_error

DEVICE = os.environ.get("OVSS_TEST_DEVICE", "cpu")
CASES = [
    ("test-san-tiny", {}),
    ("test-san-tiny.mmseg", {}),
    ("test-catseg-tiny", {"inference": "whole"}),
    ("test-catseg-tiny", {"inference": "slide"}),
    ("test-catseg-v1-tiny", {"inference": "slide"}),
    ("test-catseg-v1-tiny.mmseg", {"inference": "mmseg"}),
    ("test-sed-tiny", {}),
]
if DEVICE == "cpu":  # nothing to compare: one model shows the path runs
    CASES = CASES[:1]


@pytest.fixture
def exact_float32():
    """No TF32 in CUDA matrix products and convolutions for the test (restored afterwards)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _segmenter(name: str, device: str) -> Segmenter:
    torch.manual_seed(0)
    model = build_model(get_weight_spec(name).config())
    seg = Segmenter(model, name=name, device=device, dtype="fp32")
    seg.set_vocabulary(Vocabulary.from_names(["cat", "dog", "grass", "sky"]))
    return seg


@pytest.mark.parametrize("name, options", CASES, ids=[f"{n}-{o}" for n, o in CASES])
def test_model_on_device_matches_cpu_in_float32(name: str, options: dict, exact_float32) -> None:
    if DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("OVSS_TEST_DEVICE names cuda but CUDA is not available")
    image = np.random.default_rng(0).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    ref = _segmenter(name, "cpu").predict(image, return_scores=True, **options)
    seg = _segmenter(name, DEVICE)
    assert seg.device.type == torch.device(DEVICE).type
    assert seg.text_embeddings.device.type == seg.device.type
    got = seg.predict(image, return_scores=True, **options)
    assert got.scores.shape == ref.scores.shape == (4, 70, 90)
    assert relative_error(torch.from_numpy(got.scores), torch.from_numpy(ref.scores)) < 1e-5
    clear = np.sort(ref.scores, axis=0)[-1] - np.sort(ref.scores, axis=0)[-2] > 1e-4
    assert np.array_equal(got.label_map[clear], ref.label_map[clear])
