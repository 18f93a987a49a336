"""Re-query: the image stage once, any vocabulary after (explicit handles and the implicit cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import ovss
from ovss.api.requery import ImageCache, ImageHandle, View, default_image_cache_mb
from ovss.errors import CacheError, OvssError
from ovss.models.base import ResizeConfig
from ovss.weights.registry import list_weights

TINY = [n for n in list_weights(include_test=True) if n.startswith("test-")]
OPTIONS = {"test-catseg-tiny": {"inference": "whole"}}  # slide has its own tests below
FIRST, SECOND = "cat; sofa, couch; wall", "dog; grass; sky; road"


def _load(name: str, dtype: str = "fp32", cache_mb: float | None = None):
    """A tiny model at a 96 px short side (its protocols that fix their own size keep it)."""
    seg = ovss.load(name, dtype=dtype)
    seg.model.config.test_resize = ResizeConfig(size=96)
    if cache_mb is not None:
        seg.image_cache = ImageCache(cache_mb)
    return seg


def _count_image_stage(seg) -> list[int]:
    calls = [0]
    inner = seg.model.image_stage

    def counted(*args, **kwargs):
        calls[0] += 1
        return inner(*args, **kwargs)

    seg.model.image_stage = counted
    return calls


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, size=(60, 84, 3), dtype=np.uint8)


def _assert_same(a, b) -> None:
    assert a.class_names == b.class_names
    np.testing.assert_array_equal(a.label_map, b.label_map)
    np.testing.assert_array_equal(a.confidence, b.confidence)
    np.testing.assert_array_equal(a.class_scores, b.class_scores)
    np.testing.assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("name", TINY)
def test_handle_finishes_any_vocabulary_bit_for_bit(name, image) -> None:
    options = OPTIONS.get(name, {})
    seg = _load(name, cache_mb=0)
    calls = _count_image_stage(seg)
    handle = seg.encode_image(image, **options)
    assert isinstance(handle, ImageHandle) and calls[0] == 1 and handle.nbytes > image.nbytes
    fresh = _load(name, cache_mb=0)
    fresh.model.load_state_dict(seg.model.state_dict())
    for classes in (FIRST, SECOND):
        ours = seg.predict(handle, classes, return_scores=True)
        _assert_same(ours, fresh.predict(image, classes, return_scores=True, **options))
    assert calls[0] == 1  # the handle never reran the image stage


@pytest.mark.parametrize("name", ["test-san-tiny", "test-sed-tiny"])
def test_handle_in_bf16_matches_a_fresh_bf16_predict(name, image) -> None:
    seg = _load(name, dtype="bf16", cache_mb=0)
    handle = seg.encode_image(image)
    ref = seg.predict(image, SECOND, return_scores=True)
    ours = seg.predict(handle, SECOND, return_scores=True)
    # the same operations in the same order: as close as the bf16 bounds allow, and in fact equal
    assert np.abs(ours.scores - ref.scores).max() <= 1e-2 * np.abs(ref.scores).max()
    np.testing.assert_array_equal(ours.scores, ref.scores)


@pytest.mark.parametrize("name", TINY)
def test_implicit_cache_skips_the_image_stage_for_other_classes(name, image) -> None:
    options = OPTIONS.get(name, {})
    seg = _load(name)
    calls = _count_image_stage(seg)
    seg.predict(image, FIRST, **options)
    second = seg.predict(image.copy(), SECOND, return_scores=True, **options)  # same pixels, new array
    assert calls[0] == 1 and len(seg.image_cache) == 1
    fresh = _load(name, cache_mb=0)
    fresh.model.load_state_dict(seg.model.state_dict())
    _assert_same(second, fresh.predict(image, SECOND, return_scores=True, **options))
    other = image.copy()
    other[0, 0, 0] ^= 1  # one pixel differs: a new image
    seg.predict(other, SECOND, **options)
    assert calls[0] == 2


def test_cache_keys_on_options_and_tta(image) -> None:
    seg = _load("test-catseg-tiny")
    calls = _count_image_stage(seg)
    seg.predict(image, FIRST, inference="whole")
    seg.predict(image, FIRST, inference="slide")
    assert calls[0] == 2
    seg.predict(image, SECOND, inference="slide")
    seg.predict(image, SECOND, inference="whole")
    assert calls[0] == 2
    seg.predict(image, SECOND, inference="whole", tta=[1.0])  # TTA: one pass + its mirror
    assert calls[0] == 4


@pytest.mark.parametrize(("name", "options"), [("test-catseg-tiny", {"inference": "slide"}),
                                               ("test-san-tiny", {})])
def test_slide_and_tta_reuse_their_per_view_features(name, options, image) -> None:
    tta = [0.75, 1.0] if name == "test-san-tiny" else None
    seg = _load(name)
    calls = _count_image_stage(seg)
    seg.predict(image, FIRST, tta=tta, **options)
    first_calls = calls[0]
    assert first_calls == (4 if tta else 1)  # one image stage per TTA view; slide: all views in one
    ours = seg.predict(image, SECOND, tta=tta, return_scores=True, **options)
    assert calls[0] == first_calls
    fresh = _load(name, cache_mb=0)
    fresh.model.load_state_dict(seg.model.state_dict())
    _assert_same(ours, fresh.predict(image, SECOND, tta=tta, return_scores=True, **options))
    if name == "test-catseg-tiny":
        assert seg.image_cache.get(next(iter(seg.image_cache._items))).views[0].features["views"] == 5


def test_a_handle_refuses_other_options_models_and_dtypes(image) -> None:
    seg = _load("test-catseg-tiny", cache_mb=0)
    handle = seg.encode_image(image, inference="whole")
    seg.predict(handle, FIRST, inference="whole")  # its own options: fine
    with pytest.raises(OvssError, match="encode the image again") as err:
        seg.predict(handle, FIRST, inference="slide")
    assert "\n" not in str(err.value)
    with pytest.raises(OvssError, match="encode the image again"):
        seg.predict(handle, FIRST, tta=True)
    other = _load("test-catseg-tiny", cache_mb=0)  # same name, another model instance
    with pytest.raises(OvssError, match="encode_image on the segmenter") as err:
        other.predict(handle, FIRST)
    assert "\n" not in str(err.value)
    with pytest.raises(OvssError, match="encode_image on the segmenter"):
        _load("test-san-tiny").predict(handle, FIRST)


def test_cache_is_an_lru_bounded_in_bytes() -> None:
    def handle(i: int, kib: int) -> ImageHandle:
        features = {"x": torch.zeros(kib * 256)}  # kib KiB of float32
        return ImageHandle(np.zeros((1, 1, 3), np.uint8), (View(False, (1, 1), features),), "m",
                           torch.float32, {}, None, f"d{i}")

    cache = ImageCache(max_mb=10 / 1024)  # 10 KiB
    for i in range(3):
        cache.put(handle(i, 4))
    assert len(cache) == 2 and cache.get(handle(0, 4).key) is None  # the oldest went first
    assert cache.get(handle(1, 4).key) is not None  # now the most recent
    cache.put(handle(3, 4))
    assert cache.get(handle(2, 4).key) is None and cache.get(handle(1, 4).key) is not None
    assert cache.nbytes <= 10 * 1024
    cache.put(handle(4, 11))  # larger than the bound: not kept, nothing evicted for it
    assert len(cache) == 2 and cache.get(handle(4, 11).key) is None
    empty = ImageCache(0)
    empty.put(handle(5, 1))
    assert len(empty) == 0


def _kib_handle(digest: str, kib: int) -> ImageHandle:
    features = {"x": torch.zeros(kib * 256)}  # kib KiB of float32
    return ImageHandle(np.zeros((1, 1, 3), np.uint8), (View(False, (1, 1), features),), "m",
                       torch.float32, {}, None, digest)


def test_cache_under_given_keys_with_a_count_bound_and_the_latest_kept() -> None:
    """What the demo's per-session store uses: a handle under the caller's key (one per key, the new
    one replacing the old), at most ``max_items`` handles, and ``keep_latest``: the last one put stays
    even beyond the byte bound, the older ones go."""
    cache = ImageCache(max_mb=10 / 1024, max_items=2, keep_latest=True)
    cache.put(_kib_handle("a", 1), key=("alice",))
    cache.put(_kib_handle("b", 1), key=("alice",))  # replaces alice's
    assert list(cache) == [("alice",)] and cache.get(("alice",)).digest == "b" and cache.nbytes == 1027
    cache.put(_kib_handle("c", 1), key=("bob",))
    cache.put(_kib_handle("d", 1), key=("carol",))  # a third key: the least recently used goes
    assert list(cache) == [("bob",), ("carol",)]
    assert cache.pop(("bob",)).digest == "c" and cache.pop(("bob",)) is None
    cache.put(_kib_handle("e", 12), key=("dave",))  # alone beyond 10 KiB: kept, the others dropped
    assert list(cache) == [("dave",)] and cache.nbytes == 12 * 1024 + 3
    nothing = ImageCache(0, keep_latest=True)
    for key in "xy":
        nothing.put(_kib_handle(key, 1), key=(key,))
    assert list(nothing) == [("y",)]
    with pytest.raises(CacheError, match="max_items=0"):
        ImageCache(1, max_items=0)


@pytest.mark.parametrize("raw", ["nan", "inf", "-1", "lots", "1e9"])
def test_bad_cache_size_is_one_line(monkeypatch, raw) -> None:
    monkeypatch.setenv("OVSS_IMAGE_CACHE_MB", raw)
    with pytest.raises(CacheError, match="OVSS_IMAGE_CACHE_MB") as err:
        default_image_cache_mb()
    assert "\n" not in str(err.value)
    with pytest.raises(CacheError, match="OVSS_IMAGE_CACHE_MB"):
        _load("test-san-tiny")  # at load, before any image
    if raw != "lots":
        with pytest.raises(CacheError, match="max_mb"):
            ImageCache(float(raw))


def test_cache_size_zero_turns_the_cache_off(monkeypatch, image) -> None:
    monkeypatch.setenv("OVSS_IMAGE_CACHE_MB", "0")
    seg = _load("test-san-tiny")
    calls = _count_image_stage(seg)
    seg.predict(image, FIRST)
    seg.predict(image, SECOND)
    assert calls[0] == 2 and len(seg.image_cache) == 0
    monkeypatch.setenv("OVSS_IMAGE_CACHE_MB", "0.5")
    assert default_image_cache_mb() == 0.5


def test_a_model_without_the_split_keeps_its_inputs_as_features() -> None:
    from ovss.api.segmenter import Segmenter
    from tests.api.test_segmenter import ColourModel, _halves

    seg = Segmenter(ColourModel(ResizeConfig(size=64)))
    img = _halves(45, 70)
    handle = seg.encode_image(img)
    assert set(handle.views[0].features) == {"images"}  # the normalised, padded input batch
    ours = seg.predict(handle, "red; green; blue", return_scores=True)
    _assert_same(ours, Segmenter(ColourModel(ResizeConfig(size=64))).predict(img, "red; green; blue",
                                                                              return_scores=True))
    assert ours.label_map[0, 0] == 0 and ours.label_map[0, -1] == 2
