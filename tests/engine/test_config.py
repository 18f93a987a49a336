"""TrainConfig: JSON round trip, overrides and their errors, the official recipe numbers."""

from __future__ import annotations

import json

import pytest

from ovss.engine.config import TrainConfig
from ovss.engine.recipes import list_recipes, load_config
from ovss.errors import ConfigError


@pytest.mark.parametrize("name", list_recipes())
def test_every_recipe_round_trips_through_json(name, tmp_path):
    cfg = load_config(name)
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert load_config(str(path)) == cfg  # a printed recipe is a valid --config FILE


def test_official_recipe_numbers():
    san = load_config("san-vit-b16")
    assert (san.solver.iterations, san.solver.batch_size, san.solver.lr, san.solver.weight_decay) == (
        60000, 32, 1e-4, 1e-4)
    assert (san.solver.schedule, san.solver.poly_power, san.solver.warmup_iters) == ("poly", 0.9, 0)
    assert (san.solver.clip_grad_norm, san.precision, san.eval.period) == (0.01, "fp16", 5000)
    assert san.augment.min_sizes == (320, 384, 448, 512, 576, 640, 704, 768, 832, 896, 960)
    assert (san.augment.max_size, san.augment.crop_size, san.augment.pad_value) == (2560, 640, 128)
    loss = san.loss
    assert (loss.class_weight, loss.mask_weight, loss.dice_weight, loss.void_weight) == (2.0, 5.0, 5.0, 0.1)
    assert (loss.num_points, loss.oversample_ratio, loss.importance_sample_ratio) == (12544, 3.0, 0.75)
    assert load_config("san-vit-l14").model.name == "san-vit-l14"
    for name in ("catseg-vit-b16", "catseg-vit-l14"):
        cat = load_config(name)
        assert (cat.solver.iterations, cat.solver.batch_size, cat.solver.lr, cat.solver.schedule) == (
            80000, 4, 2e-4, "cosine")
        assert cat.solver.lr_multipliers == {"clip": 0.01} and cat.augment.crop_size == 384
        assert (cat.precision, cat.tf32, cat.loss.bce_weights) == ("fp32", True, (1.0,))
    for name in ("sed-convnext-b", "sed-convnext-l"):
        sed = load_config(name)
        assert (sed.solver.iterations, sed.solver.batch_size, sed.solver.lr, sed.solver.schedule) == (
            80000, 4, 2e-4, "cosine")
        assert (sed.augment.min_sizes, sed.augment.max_size, sed.augment.crop_size) == ((768,), 2666, 768)
        assert sed.eval.period == 10000 and sed.loss.bce_weights == (1.0, 1.0, 1.0, 1.0)


def test_finetune_recipe_takes_custom_data():
    cfg = load_config("san-vit-b16-finetune").override("data.root=/my/data", "data.classes=/my/classes.txt")
    assert cfg.model.weights == "san-vit-b16" and cfg.data.benchmark is None
    assert (cfg.data.root, cfg.data.classes) == ("/my/data", "/my/classes.txt")
    assert cfg.solver.lr == 1e-4 and cfg.eval.period == 0


def test_overrides_are_typed():
    cfg = TrainConfig().override(
        "solver.lr=0.5", "augment.min_sizes=[384, 512]", "data.benchmark=null", 'eval.options={"fast": true}',
        "precision=bf16", "model.overrides=[\"side_depth=4\"]",
    )
    assert cfg.solver.lr == 0.5 and cfg.augment.min_sizes == (384, 512) and cfg.data.benchmark is None
    assert cfg.eval.options == {"fast": True} and cfg.precision == "bf16"
    assert cfg.model.overrides == ("side_depth=4",)


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("solver.lrr=1", "unknown config key 'solver.lrr'"),
        ("nope=1", "valid: "),
        ("solver.lr=fast", "expected a number"),
        ("solver.iterations=0", "SolverConfig.iterations must be >= 1"),
        ("precision=fp8", "is not one of"),
        ("augment.single_category_max_area=1.5", "single_category_max_area"),
        ("solver", "not of the form key=value"),
    ],
)
def test_override_errors_name_the_problem(assignment, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        TrainConfig().override(assignment)


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'san-vit-b16'"):
        load_config("san-vit-b61")


def test_unknown_json_key_lists_the_valid_ones(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"solver": {"itterations": 5}}))
    with pytest.raises(ConfigError, match="valid keys"):
        load_config(str(path))


def test_micro_batch_divides_the_batch():
    cfg = load_config("san-vit-b16")
    assert cfg.micro_batch(8) == 4
    assert cfg.override("solver.accumulation=2").micro_batch(8) == 2
    with pytest.raises(ConfigError, match="not divisible by world size 3"):
        cfg.micro_batch(3)
