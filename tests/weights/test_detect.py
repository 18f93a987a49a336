"""weights/detect.py: format detection and the registry formats it knows."""

from __future__ import annotations

import importlib

import pytest

from ovss.models.family import families, get_family
from ovss.weights import detect
from ovss.weights.registry import WEIGHTS
from tests.parity._common import meta_state_dict, read_manifest

# The released checkpoints' key layouts (full-size manifests, meta tensors) and the format of each.
MANIFEST_FORMATS = {
    "manifest_san_vit_b16.json": "san_d2",
    "manifest_san_vit_l14_336.json": "san_d2",
    "manifest_san_mm_vit_b16.json": "san_mmseg",
    "manifest_san_mm_vit_l14_336.json": "san_mmseg",
    "manifest_catseg_vit_b16.json": "catseg_d2",
    "manifest_catseg_vit_l14_336.json": "catseg_d2",
    "manifest_catseg_v1_vit_b16_r101.json": "catseg_v1_d2",
    "manifest_catseg_v1_vit_l14_swinb.json": "catseg_v1_d2",
    "manifest_catseg_mm_vit_b16_r101.json": "catseg_mm",
    "manifest_catseg_mm_vit_l14_swinb.json": "catseg_mm",
    "manifest_sed_convnext_b.json": "sed_d2",
    "manifest_sed_convnext_l.json": "sed_d2",
}


def test_meta_check_helpers_see_registry_formats():
    assert detect.model_formats()["san_d2"] == "san" and detect.model_formats()["catseg_d2"] == "catseg"



def test_model_formats_are_the_family_descriptors_and_cover_the_registry():
    """One place per format: the descriptors give format -> family in families() order; every registry
    entry's source format is one of its own family's."""
    assert list(detect.model_formats().items()) == [(n, f.name) for f in families() for n in f.formats]
    for spec in WEIGHTS:
        known = get_family(spec.family).formats
        assert spec.source_format == "random" or spec.source_format in known, spec.name


@pytest.mark.parametrize(("manifest", "expected"), sorted(MANIFEST_FORMATS.items()))
def test_each_released_layout_is_accepted_by_its_own_format_alone(manifest, expected):
    """Exactly one model format's detect accepts each released layout, so the detection order (the
    descriptors') cannot change which format is found."""
    state_dict = meta_state_dict(read_manifest(manifest))
    accepting = [
        name for family in families() for name, module in family.formats.items()
        if importlib.import_module(module).detect(state_dict)
    ]
    assert accepting == [expected]
    assert detect.identify(state_dict) == detect.detect_format(state_dict) == expected
