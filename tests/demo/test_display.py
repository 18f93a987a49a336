"""The demo's display controls (minimum score, opacity, names on regions, score map), without gradio."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovss.api.heatmaps import heat, score_range
from ovss.data.io import read_label
from ovss.demo.backend import DemoBackend, DemoLimits
from ovss.demo.display import DemoUserError, DisplayOptions, display_options
from tests.conftest import DATA_DIR
from tests.demo.test_backend import photos_gate

VOCAB = [["quokka"], ["grass", "lawn"], ["sky"]]


def test_display_options_defaults_and_checks():
    assert display_options(VOCAB) == DisplayOptions(None, 0.55, True, None)
    assert display_options(VOCAB, "0.25", 0.3, False, "grass") == DisplayOptions(0.25, 0.3, False, 1)
    assert display_options(VOCAB, "", None, True, "SKY").score_class == 2  # case-insensitive
    with pytest.raises(DemoUserError, match=r"^the minimum score must be a number such as 0.3, got 'abc'$"):
        display_options(VOCAB, "abc")
    with pytest.raises(DemoUserError, match=r"^the opacity must be a number from 0 to 1, got '1.5'$"):
        display_options(VOCAB, None, 1.5)
    with pytest.raises(DemoUserError, match=r"^the score-map class 'lawn' is not in the class list"):
        display_options(VOCAB, score_class="lawn")  # synonyms are not display names


@pytest.fixture(scope="module")
def backend():
    b = DemoBackend("test-san-tiny", limits=DemoLimits(max_classes=10), gate=photos_gate(DATA_DIR))
    yield b
    b.close()


def test_min_score_score_map_and_names_in_the_page(backend, data_dir):
    photo = {"path": str(data_dir / "quokka.jpg")}
    classes = "quokka; grass, lawn; sky"
    plain = backend.segment(photo, classes, labels=False)
    named = backend.segment(photo, classes, score_class="sky")
    assert plain.score_map is None and named.score_map.size == plain.overlay.size == (960, 643)

    # Names on the regions: white text with a black outline appears only with labels on.
    def text_pixels(image: Image.Image) -> int:
        pixels = np.asarray(image).astype(int)
        return int((pixels.min(-1) >= 235).sum()) + int((pixels.max(-1) <= 20).sum())

    assert text_pixels(plain.overlay) < text_pixels(named.overlay) - 50
    # The score map: the heat colours of the chosen class's scores over the photo.
    full = backend.segmenter().predict(
        photo["path"], [["quokka"], ["grass", "lawn"], ["sky"]], return_scores=True
    )
    expected = heat(full.scores[2], full.image, *score_range(full.scores[2]))
    assert np.array_equal(np.asarray(named.score_map), expected) and expected.std() > 0
    # A threshold above every score: every pixel unlabelled, photo uncoloured, legend says so.
    none = backend.segment(photo, classes, min_score=1e9, opacity=1.0)
    label = read_label(none.label_file)
    assert np.all(label == 255)
    assert 'class="ovss-name">unlabelled<' in none.legend and "100.0 %" in none.legend
    assert none.table == []
    rgb = np.asarray(Image.open(data_dir / "quokka.jpg").convert("RGB"))
    assert np.abs(np.asarray(none.overlay).astype(int) - rgb).max() <= 1
