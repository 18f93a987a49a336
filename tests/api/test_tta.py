"""Test-time augmentation: the mean of the official score maps of the augmented images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ovss
from ovss.api.tta import MMSEG_RATIOS, TTAConfig, mean_blocks, parse_scales, parse_tta, scaled_size
from ovss.errors import ConfigError
from ovss.models.base import ResizeConfig
from tests.conftest import noise_photo, segment_max_scores

MODELS = [("test-san-tiny", {}), ("test-catseg-tiny", {"inference": "whole"}), ("test-sed-tiny", {})]


def _load(name: str):
    """A tiny model resized to a 96 px short side (not 640): keeps the multi-scale passes cheap."""
    seg = ovss.load(name)
    seg.model.config.test_resize = ResizeConfig(size=96)
    return seg


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(45, 70, 3), dtype=np.uint8)


def _hand_scores(seg, rgb: np.ndarray, scale: float, flip: bool, **options) -> np.ndarray:
    """One augmentation computed by hand: PIL resize, mirror, normalise, pad, the model's predict."""
    h, w = seg.model.preprocess_size(*rgb.shape[:2], **options)
    sh, sw = scaled_size((h, w), scale)
    x = np.array(Image.fromarray(rgb).resize((sw, sh), Image.BILINEAR))
    x = torch.from_numpy(x[:, ::-1].copy() if flip else x).permute(2, 0, 1)[None].float()
    cfg = seg.model.config
    x = (x - torch.tensor(cfg.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(cfg.pixel_std).view(1, 3, 1, 1)
    div = max(cfg.size_divisibility, 1)
    x = F.pad(x, (0, (-sw) % div, 0, (-sh) % div))
    with torch.no_grad():
        scores = seg.model.predict(x, seg.text_embeddings, (sh, sw), rgb.shape[:2], **options)[0]
    return (scores.flip(-1) if flip else scores).numpy()


@pytest.mark.parametrize(("name", "options"), MODELS, ids=[m[0] for m in MODELS])
def test_single_unflipped_scale_is_plain_predict(name, options, image):
    seg = _load(name)
    plain = seg.predict(image, "cat; grass; sky", return_scores=True, **options)
    tta = seg.predict(image, return_scores=True, tta=TTAConfig(scales=(1.0,), flip=False), **options)
    np.testing.assert_array_equal(tta.scores, plain.scores)
    np.testing.assert_array_equal(tta.label_map, plain.label_map)
    np.testing.assert_array_equal(tta.confidence, plain.confidence)


@pytest.mark.parametrize(("name", "options"), MODELS, ids=[m[0] for m in MODELS])
def test_tta_is_the_mean_of_the_augmented_score_maps(name, options, image):
    seg = _load(name)
    seg.set_vocabulary("cat; grass; sky; road")
    cfg = TTAConfig(scales=(0.5, 1.5), flip=True)
    got = seg.predict(image, return_scores=True, tta=cfg, **options)
    parts = [_hand_scores(seg, image, s, f, **options) for s, f in cfg.augmentations]
    expected = np.mean(parts, axis=0)
    assert len(parts) == 4 and got.scores.shape == (4, 45, 70)
    np.testing.assert_allclose(got.scores, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got.label_map, got.scores.argmax(0))
    # the flipped passes really differ (a mirrored image is not a no-op), so the test can fail
    assert np.abs(parts[0] - parts[1]).max() > 1e-4


def test_flip_of_a_mirrored_pair_is_symmetric(image):
    """Flip TTA of an image equals flip TTA of its mirror image, mirrored (hand-free symmetry check)."""
    seg = _load("test-san-tiny")
    seg.set_vocabulary("cat; grass; sky")
    cfg = TTAConfig(scales=(1.0,), flip=True)
    a = seg.predict(image, return_scores=True, tta=cfg).scores
    b = seg.predict(np.ascontiguousarray(image[:, ::-1]), return_scores=True, tta=cfg).scores
    np.testing.assert_allclose(a, b[..., ::-1], rtol=1e-5, atol=1e-6)


def test_batches_and_small_blocks_give_the_same_tta(image):
    seg = _load("test-san-tiny")
    seg.set_vocabulary("cat; grass; sky")
    cfg = TTAConfig(scales=(0.75, 1.25), flip=True)
    one = [seg.predict(im, return_scores=True, tta=cfg).scores for im in (image, image[::-1].copy())]
    small = ovss.Segmenter(seg.model, block_mb=0.01)  # many bands of rows per augmentation
    small.set_vocabulary("cat; grass; sky")
    batch = list(small.predict_batch([image, image[::-1].copy()], batch_size=2, return_scores=True, tta=cfg))
    for r, ref in zip(batch, one):
        np.testing.assert_allclose(r.scores, ref, rtol=1e-5, atol=1e-6)


def test_mean_blocks_streams_in_lockstep():
    """Bounded memory: one block of every augmentation at a time, never whole maps."""
    log: list[tuple[int, int]] = []

    def stream(i: int):
        for r0 in range(0, 6, 2):
            log.append((i, r0))
            yield 0, r0, torch.full((1, 2, 2, 3), float(i + r0))

    out = []
    for _, r0, block in mean_blocks([(False, stream(0)), (True, stream(1)), (False, stream(2))]):
        out.append((r0, block))
        assert len(log) == 3 * len(out)  # each stream has produced exactly the blocks consumed so far
    assert [r0 for r0, _ in out] == [0, 2, 4]
    assert all(torch.equal(b, torch.full((1, 2, 2, 3), 1.0 + r0)) for r0, b in out)  # mean of r0+0,1,2


def test_softmax_mean_never_depends_on_the_band_size():
    """mmseg TTA's per-class softmax: bands of 8 rows (channels-first and channels-last views) give the
    one band's numbers bit for bit (a softmax over a whole band rounds by where the band ends)."""
    gen = torch.Generator().manual_seed(0)
    maps = [torch.randn(2, 7, 24, 37, generator=gen) for _ in range(2)]  # 24 x 37: not whole vectors

    def stream(m: torch.Tensor, rows: int, channels_last: bool):
        for r0 in range(0, m.shape[2], rows):
            band = m[:, :, r0 : r0 + rows]
            last = band.permute(2, 0, 3, 1).contiguous().permute(1, 3, 0, 2)  # a channels-last view
            yield 0, r0, last if channels_last else band.clone()

    def mean(rows: int, channels_last: bool = False) -> torch.Tensor:
        streams = [(i == 1, stream(m, rows, channels_last)) for i, m in enumerate(maps)]
        return torch.cat([b for _, _, b in mean_blocks(streams, softmax=True)], dim=2)

    whole = mean(24)
    torch.testing.assert_close(whole, (maps[0].softmax(1) + maps[1].flip(-1).softmax(1)) / 2)
    for rows, channels_last in ((8, False), (16, False), (8, True)):
        assert torch.equal(mean(rows, channels_last), whole), (rows, channels_last)


def test_mmseg_tta_never_depends_on_the_block_size():
    image = np.random.default_rng(0).integers(0, 256, size=(61, 83, 3), dtype=np.uint8)  # W0 = 83: ragged
    scores = []
    for block_mb in (32, 0.01):
        seg = ovss.Segmenter(ovss.load("test-san-tiny.mmseg").model, block_mb=block_mb)
        seg.set_vocabulary("cat; grass; sky; road; tree")
        scores.append(seg.predict(image, return_scores=True, tta=TTAConfig(scales=(0.75, 1.25))).scores)
    np.testing.assert_array_equal(scores[0], scores[1])


def test_mean_blocks_unflips():
    block = torch.arange(6.0).view(1, 1, 2, 3)
    ((_, _, out),) = mean_blocks([(True, iter([(0, 0, block)]))])
    assert torch.equal(out, block.flip(-1))
    ((_, _, out),) = mean_blocks([(True, iter([(0, 0, block)])), (False, iter([(0, 0, block)]))])
    assert torch.equal(out, (block + block.flip(-1)) / 2)


def test_tta_options_and_errors():
    assert parse_tta(True) == TTAConfig()
    assert TTAConfig().scales == MMSEG_RATIOS == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert len(TTAConfig().augmentations) == 12
    assert parse_tta(None) is None and parse_tta(False) is None
    assert parse_tta([1, 2]) == TTAConfig(scales=(1.0, 2.0), flip=True)
    assert parse_tta({"scales": [0.5], "flip": False}) == TTAConfig(scales=(0.5,), flip=False)
    assert TTAConfig.from_json(TTAConfig(scales=(0.5, 1.0)).to_json()) == TTAConfig(scales=(0.5, 1.0))
    assert parse_scales("0.5, 1,1.5") == (0.5, 1.0, 1.5)
    with pytest.raises(ConfigError, match=r"TTA scales must be ratios of the test size in \(0, 4\]"):
        TTAConfig(scales=(0.0, 1.0))
    message = "--tta-scales takes comma-separated ratios like 0.5,1,1.5, got 'x'$"
    with pytest.raises(ConfigError, match=message):
        parse_scales("x")
    with pytest.raises(ConfigError, match="tta must be True, a TTAConfig or a list of scales"):
        parse_tta("yes")


# ------------------------------------------------------------------------------------------------ CLI
def test_segment_cli_tta_flags(tmp_path, capsys):
    from ovss.cli.main import main

    photo = noise_photo(tmp_path / "photo.png", 40, 60, seed=1)
    base = ["segment", str(photo), "--model", "test-san-tiny", "--classes", "cat; grass; sky"]

    def max_scores(out: str, *flags: str) -> list[float]:
        return segment_max_scores([*base[1:], *flags], tmp_path / out)

    plain = max_scores("plain")
    assert max_scores("one", "--tta-scales", "1", "--no-tta-flip") == plain  # the plain prediction
    assert max_scores("tta", "--tta-scales", "0.5,1") != plain  # the flags reach predict
    assert main([*base, "--tta-scales", "0,1", "--out", str(tmp_path / "bad")]) == 1
    assert "--tta-scales must be ratios of the test size in (0, 4]" in capsys.readouterr().err


def test_eval_cli_tta_flags_and_default_out():
    from ovss.cli.eval import default_out
    from ovss.cli.main import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", "--dataset", "voc20", "--tta"])
    assert default_out(args).name == "san-vit-b16-tta"
    args = parser.parse_args(["eval", "--dataset", "voc20", "--tta-scales", "0.5,1", "--no-tta-flip"])
    assert default_out(args).name == "san-vit-b16-tta-s0.5_1.0-noflip"
    for command in ("segment", "eval"):
        help_text = " ".join(parser._subparsers._group_actions[0].choices[command].format_help().split())
        assert "--tta " in help_text and "mmseg's ratios 0.5,0.75,1,1.25,1.5,1.75" in help_text
