"""Bounds on sizes and numbers a user types: one line and a non-zero exit before any big allocation
(TTA scales, export size, the text-cache size, non-finite config numbers, over-long class names)."""

from __future__ import annotations

import dataclasses
import math
import typing

import pytest

from ovss.cli.main import main
from ovss.config import Config
from ovss.errors import CacheError, ConfigError, ImageTooLargeError, OvssError, VocabularyError

from ..conftest import noise_photo


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ------------------------------------------------------------------------------------------------ TTA
BAD_SCALES = {
    "100": "in (0, 4], got 100",
    ",".join(["1"] * 200): "give 1 to 16 ratios",
    "inf": "got inf",
    "1e6": "got 1e+06",
    "0": "got 0",
    "-1": "got -1",
    "nan": "got nan",
}


@pytest.mark.parametrize("scales", list(BAD_SCALES))
def test_bad_tta_scales_are_one_line_before_the_model_loads(scales, tmp_path, capsys, no_model_load):
    photo = noise_photo(tmp_path / "p.png")
    for command in (["segment", str(photo)], ["eval", "--folder", str(tmp_path), "--classes", "a; b"]):
        argv = [*command, "--model", "test-san-tiny", "--tta-scales", scales, "--out", str(tmp_path / "o")]
        if command[0] == "segment":
            argv += ["--classes", "a; b"]
        assert main(argv) == 1
        err = _one_line_error(capsys)
        assert "--tta-scales" in err and BAD_SCALES[scales] in err, err


@pytest.mark.parametrize(
    "scales", [(100.0,), (1.0,) * 200, (math.inf,), (1e6,), (0.0,), (-0.5,), (math.nan,), ("1",), ()]
)
def test_the_api_refuses_the_same_scales(scales):
    from ovss.api.tta import TTAConfig, parse_tta

    with pytest.raises(ConfigError):
        TTAConfig(scales=scales)
    with pytest.raises(ConfigError):
        parse_tta(list(scales))
    with pytest.raises(ConfigError):
        parse_tta({"scales": list(scales)})


def test_the_largest_scales_are_accepted():
    from ovss.api.tta import MAX_SCALE, MAX_SCALES, TTAConfig

    assert TTAConfig(scales=(MAX_SCALE,) * MAX_SCALES).scales == (4.0,) * 16


def test_a_pass_larger_than_the_pixel_bound_stops_before_any_pass(tmp_path, monkeypatch):
    import ovss
    import ovss.api.tta as tta

    seg = ovss.load("test-san-tiny")
    seg.model.config.test_resize = dataclasses.replace(seg.model.config.test_resize, size=64, max_size=256)
    photo = noise_photo(tmp_path / "p.png", 48, 64)  # test size 64 x 85
    calls = []
    original = seg.model.predict_blocks
    monkeypatch.setattr(seg.model, "predict_blocks", lambda *a, **k: calls.append(1) or original(*a, **k))
    monkeypatch.setattr(tta, "MAX_PASS_PIXELS", 128 * 171)
    assert seg.predict(photo, "a; b", tta=[0.5, 2.0]).label_map.shape == (48, 64)  # 128 x 170: fits
    calls.clear()
    with pytest.raises(ImageTooLargeError, match=r"TTA scale 2.5 makes .* 213x160 pixels .*per pass"):
        seg.predict(photo, "a; b", tta=[1.0, 2.5])
    assert calls == []  # refused before the first pass


# --------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("size", [["65536", "65536"], ["4096", "4096"], ["8192", "32"], ["0", "32"]])
def test_export_size_is_bounded_before_the_model_loads(size, tmp_path, capsys, no_model_load):
    out = str(tmp_path / "m.onnx")
    assert main(["export", "--model", "test-san-tiny", "--size", *size, "--out", out]) == 1
    err = _one_line_error(capsys)
    assert "is out of range: each side 1..4096 and H x W at most 4194304" in err, err


def test_export_onnx_checks_the_size_too():
    import torch

    from ovss.export.onnx import check_export_size, export_onnx

    check_export_size((2048, 2048))
    check_export_size((4096, 1024))
    with pytest.raises(OvssError, match="out of range"):
        export_onnx(torch.nn.Identity(), torch.zeros(2, 4), "/nonexistent/m.onnx", size=(65536, 65536))


# ----------------------------------------------------------------------------------------- text cache
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1", "1e12"])
def test_text_cache_size_is_finite_and_bounded(value, monkeypatch, tmp_path, capsys):
    from ovss.vocab.embeddings import TextEmbedder, default_memory_mb

    monkeypatch.setenv("OVSS_TEXT_CACHE_MB", value)
    with pytest.raises(CacheError, match=rf"OVSS_TEXT_CACHE_MB='{value}' is out of range; .*from 0"):
        default_memory_mb()
    photo = noise_photo(tmp_path / "p.png")
    argv = ["segment", str(photo), "--model", "test-san-tiny", "--classes", "a; b", "--out", f"{tmp_path}/o"]
    assert main(argv) == 1
    assert "OVSS_TEXT_CACHE_MB" in _one_line_error(capsys)
    monkeypatch.delenv("OVSS_TEXT_CACHE_MB")
    with pytest.raises(CacheError, match="memory_mb=nan is out of range"):
        TextEmbedder(lambda t: t, "vild", "first", memory_mb=math.nan)


# ---------------------------------------------------------------------------------- finite config numbers
def _all_configs() -> list[Config]:
    import ovss.api.tta
    import ovss.data.augment
    import ovss.engine.config
    import ovss.models.catseg
    import ovss.models.catseg_v1
    import ovss.models.sed
    import ovss.towers.resnet
    import ovss.towers.swin  # noqa: F401  (each registers its Config subclasses)
    from ovss.models.san import SANConfig

    def subclasses(cls: type) -> list[type]:
        return [c for s in cls.__subclasses__() for c in (s, *subclasses(s))]

    instances = []
    for cls in sorted(set(subclasses(Config)), key=lambda c: c.__qualname__):
        if cls.__module__.startswith("tests"):
            continue
        instances.append(SANConfig().clip if cls.__name__ == "ClipConfig" else cls())
    return instances


def _float_fields(config: Config) -> list[str]:
    hints = typing.get_type_hints(type(config))
    return [f.name for f in dataclasses.fields(config) if "float" in str(hints[f.name])]


def _poisoned(value: typing.Any, bad: float) -> typing.Any:
    if isinstance(value, (tuple, list)):
        return type(value)([bad] * max(len(value), 1))
    if isinstance(value, dict):
        return {"backbone": bad}
    return bad


def test_every_float_field_of_every_config_must_be_finite():
    configs = _all_configs()
    names = {type(c).__name__ for c in configs}
    assert {"SolverConfig", "LossConfig", "TTAConfig", "SANConfig", "CATSegV1Config", "ClipConfig"} <= names
    checked = 0
    for config in configs:
        for name in _float_fields(config):
            for bad in (math.nan, math.inf, -math.inf):
                value = _poisoned(getattr(config, name), bad)
                with pytest.raises(ConfigError, match=rf"{type(config).__name__}\.{name} must be a finite"):
                    dataclasses.replace(config, **{name: value})  # the Python API
                data = {**config.to_dict(), name: value}
                with pytest.raises(ConfigError, match="must be a finite number"):
                    type(config).from_dict(data)  # JSON / --set
                checked += 1
    assert checked >= 3 * 40  # every float field of every config was tried


NON_FINITE = ["solver.lr=NaN", "solver.betas=[0.9, Infinity]", "loss.void_weight=-Infinity",
              'solver.lr_multipliers={"backbone": NaN}', "augment.single_category_max_area=NaN"]


@pytest.mark.parametrize("override", NON_FINITE)
def test_train_refuses_non_finite_numbers_in_one_line(override, tmp_path, capsys):
    assert main(["train", "--config", "tiny-san", "--out", str(tmp_path / "r"), "--set", override]) == 1
    assert "must be a finite number" in _one_line_error(capsys)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------- long class names
def test_a_very_long_class_name_is_the_documented_error_not_oserror(tmp_path, capsys):
    import ovss
    from ovss.vocab.vocabulary import parse_vocabulary

    eighty = " ".join(["word"] * 80)
    for spec in (eighty, "x" * 400, "x" * 5000, "a/" * 300 + "b"):
        with pytest.raises(VocabularyError, match=r"CLIP tokens long; .* at most 66"):
            parse_vocabulary(spec)
    photo = noise_photo(tmp_path / "p.png")
    argv = ["segment", str(photo), "--model", "test-san-tiny", "--classes", eighty, "--out", f"{tmp_path}/o"]
    assert main(argv) == 1
    err = _one_line_error(capsys)
    assert "is 80 CLIP tokens long; a class (synonyms included) may have at most 66" in err
    seg = ovss.load("test-san-tiny")
    with pytest.raises(VocabularyError, match="at most 66"):
        seg.predict(photo, "x" * 400)


def test_path_like_names_that_cannot_be_looked_up_are_one_error(tmp_path, monkeypatch):
    from ovss.vocab.vocabulary import parse_vocabulary

    monkeypatch.chdir(tmp_path)
    loop = tmp_path / "loop.txt"
    loop.symlink_to(loop)
    cases = {
        "x" * 400 + ".txt": "File name too long",
        "loop.txt": "Too many levels of symbolic links",
        "a\x00b.txt": "embedded null byte",
        "~no-such-user-ovss/classes.txt": "home directory",
    }
    for spec, reason in cases.items():
        with pytest.raises(VocabularyError, match=rf"^cannot read class file .*{reason}"):
            parse_vocabulary(spec)


def test_a_very_long_model_name_is_an_unknown_model_not_oserror():
    import ovss
    from ovss.errors import UnknownModelError

    with pytest.raises(UnknownModelError, match="unknown model"):
        ovss.load("x" * 400)
