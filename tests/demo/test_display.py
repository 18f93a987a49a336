"""The demo's display controls (minimum score, opacity, names on regions, score map), without gradio."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ovss.api.heatmaps import heat, score_range
from ovss.data.io import read_label
from ovss.demo.backend import DemoBackend
from ovss.demo.display import DemoUserError, DisplayOptions, display_options
from ovss.demo.inputs import DemoLimits
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


def test_page_controls_and_the_demo_min_score_option(capsys, no_model_load):
    pytest.importorskip("gradio", reason="gradio not installed (pip install 'ovss[demo]')")
    from ovss.cli.main import main
    from ovss.demo.app import build_app, score_class_list

    def controls(app) -> dict:
        props = [c["props"] for c in app.get_config_file()["components"] if "props" in c]
        return {p.get("elem_id"): p for p in props if str(p.get("elem_id", "")).startswith("ovss-")}

    first = controls(build_app(DemoBackend("test-san-tiny")))
    assert first["ovss-min-score"]["value"] == "" and first["ovss-opacity"]["value"] == 0.55
    assert first["ovss-labels"]["value"] is True and first["ovss-score-class"]["value"] == ""
    assert (
        controls(build_app(DemoBackend("test-san-tiny"), min_score=0.25))["ovss-min-score"]["value"] == "0.25"
    )
    assert score_class_list("cat; sofa, couch; cat") == [("(none)", ""), ("cat", "cat"), ("sofa", "sofa")]
    assert score_class_list("") == [("(none)", "")]
    assert main(["demo", "--model", "test-san-tiny", "--min-score", "nan"]) == 1
    assert capsys.readouterr().err == "ovss: error: --min-score must be a finite number (e.g. 0.3), got nan\n"
