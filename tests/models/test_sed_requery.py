"""SED's image stage keeps the decoder's image-guidance terms instead of the skips: the same numbers."""

from __future__ import annotations

import pytest
import torch

from ovss.models.sed import SED, sed_tiny
from tests.models.test_sed import S, _images, _text


@pytest.fixture(scope="module")
def model() -> SED:
    torch.manual_seed(0)
    m = SED(sed_tiny().override(f"image_size={S}")).eval()
    with torch.no_grad():
        for p in m.decoder.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return m


def test_decoder_from_image_terms_equals_the_decoder_from_skips(model: SED) -> None:
    images, text = _images(2, seed=3), _text(24, model, seed=4)
    with torch.no_grad():
        dense, feats = model.encode_image(images)
        skips = [feats[2], feats[1], feats[0]]
        features = model.image_stage(images, (S, S))
        assert "skips" not in features and len(features["terms"]) == 3
        terms = features["terms"]
        assert torch.equal(model.decoder(dense, text, (), aux=False, terms=terms)[0],
                           model.decoder(dense, text, skips, aux=False)[0])
        fast_terms = model.image_stage(images, (S, S), fast=True, topk=2)["terms"]
        for b in range(2):  # CER fast mode, one image at a time
            one = [t[b : b + 1] for t in fast_terms]
            got = model.decoder.forward_fast(dense[b : b + 1], text, (), 2, one)
            ref = model.decoder.forward_fast(dense[b : b + 1], text, [s[b : b + 1] for s in skips], 2)
            assert torch.equal(got[0], ref[0])
            assert all(torch.equal(x, y) for x, y in zip(got[1], ref[1], strict=True))
