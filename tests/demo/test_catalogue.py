"""The demo's model catalogue and which family options (widgets) apply to each model."""

from __future__ import annotations

import pytest

from ovss.demo import catalogue
from ovss.demo.backend import DemoBackend
from ovss.demo.display import DemoUserError


def test_catalogue_offers_only_models_on_disk(monkeypatch, tmp_path):
    from ovss.weights.resolve import converted_path

    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    entries = {e.name: e for e in catalogue.model_catalogue("test-san-tiny", "san")}
    assert entries["test-sed-tiny"].usable and entries["test-sed-tiny"].status == "built in, random weights"
    assert not entries["san-vit-b16"].usable and entries["san-vit-b16"].status == "not downloaded"
    assert next(iter(entries)) == "test-san-tiny"
    converted_path("san-vit-b16").parent.mkdir(parents=True)
    converted_path("san-vit-b16").write_bytes(b"x")
    real = {e.name: e for e in catalogue.model_catalogue("catseg-vit-b16", "catseg")}
    assert real["san-vit-b16"].usable and real["san-vit-b16"].label == "san-vit-b16 (on disk)"
    assert real["catseg-vit-b16"].usable  # the start-up model was loaded by the command line
    assert not any(n.startswith("test-") for n in real)  # random models only in an offline check
    local = catalogue.model_catalogue("runs/x/model_final.safetensors", "sed")
    assert local[0].label == "model_final.safetensors (local file)"
    assert (local[0].name, local[0].family, local[0].status) == (
        "runs/x/model_final.safetensors",
        "sed",
        "local file",
    )
    table = catalogue.weights_table(list(real.values()))
    assert (
        "| `san-vit-b16` | san | on disk |" in table
        and "| `sed-convnext-b` | sed | not downloaded |" in table
    )
    assert "`ovss download NAME`" in table


def test_options_apply_only_to_their_family():
    assert catalogue.option_visibility("sed") == {"fast": True, "inference": False}
    assert catalogue.option_visibility("catseg") == {"fast": False, "inference": True}
    assert catalogue.option_visibility("san") == {"fast": False, "inference": True}  # the inference radio
    assert catalogue.model_options("sed", True, 4.0, "whole") == {"fast": True, "topk": 4}
    assert catalogue.model_options("sed", False, 4.0, "whole") == {}
    assert catalogue.model_options("san", True, 4.0, "") == {"inference": "d2"}
    assert catalogue.model_options("san", True, 4.0, "", model_default="mmseg") == {"inference": "mmseg"}
    assert catalogue.model_options("catseg", True, 4.0, "whole") == {"inference": "whole"}
    for bad in (0.5, 0, "abc", [3], float("inf")):
        with pytest.raises(
            DemoUserError, match=r"^'classes kept per pixel' must be a whole number >= 1, got"
        ):
            catalogue.model_options("sed", True, bad)
    assert catalogue.model_options("sed", True, "3") == {"fast": True, "topk": 3}


def test_catseg_v1_models_get_their_inference_modes():
    assert catalogue.option_visibility("catseg_v1") == {"fast": False, "inference": True}
    # CAT-Seg: whole first, as `ovss segment`; v1: the model's own protocol first (official / mmseg port)
    assert catalogue.inference_modes("catseg", "slide") == (["whole", "slide"], "whole")
    assert catalogue.inference_modes("catseg_v1", "slide") == (["whole", "slide"], "slide")
    assert catalogue.inference_modes("catseg_v1", "whole") == (["whole", "slide"], "whole")
    assert catalogue.inference_modes("catseg_v1", "mmseg") == (["mmseg", "whole"], "mmseg")
    assert catalogue.inference_modes("sed") == ([], "")
    assert catalogue.inference_modes("san", "mmseg") == (["mmseg", "d2"], "mmseg")
    assert catalogue.inference_modes("san", "d2") == (["d2", "mmseg"], "d2")
    assert catalogue.model_options("san", inference="whole", model_default="mmseg") == {"inference": "mmseg"}
    with pytest.raises(DemoUserError, match="inference 'nope' is not offered"):
        catalogue.model_options("san", inference="nope")
    assert [m for _, m in catalogue.inference_choices("san", ["mmseg", "d2"])] == ["mmseg", "d2"]
    assert catalogue.model_options("catseg", inference="") == {"inference": "whole"}
    assert catalogue.model_options("catseg_v1", inference="", model_default="mmseg") == {"inference": "mmseg"}
    slide = catalogue.model_options("catseg_v1", inference="slide", model_default="slide")
    assert slide == {"inference": "slide"}
    offered = r"^inference 'mmseg' is not offered for this model; choose one of: whole, slide$"
    with pytest.raises(DemoUserError, match=offered):
        catalogue.model_options("catseg", inference="mmseg")
    backend = DemoBackend("test-san-tiny")
    for name, expected in [
        ("test-catseg-tiny", (["whole", "slide"], "whole")),
        ("test-catseg-v1-tiny", (["whole", "slide"], "whole")),
        ("test-catseg-v1-tiny.mmseg", (["mmseg", "whole"], "mmseg")),
        ("catseg-v1-r101-vit-b16", (["whole", "slide"], "slide")),
        ("catseg-v1-swinb-vit-l14.mmseg", (["mmseg", "whole"], "mmseg")),
        ("test-sed-tiny", ([], "")),
        ("test-san-tiny", (["d2", "mmseg"], "d2")),
        ("san-vit-b16.mmseg", (["mmseg", "d2"], "mmseg")),
    ]:
        assert backend.inference_modes(name) == expected, name
