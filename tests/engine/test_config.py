"""TrainConfig: JSON round trip, overrides and their errors."""

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
