"""CAT-Seg v1 training: the tiny recipe learns through the real trainer; the recipe reaches the optimizer."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ovss.engine.build import build_training_model
from ovss.engine.recipes import load_config
from ovss.engine.trainer import train
from ovss.models.build import build_model
from ovss.models.catseg_v1 import catseg_v1_tiny
from ovss.weights.modelfile import save_model_file

from ._synthetic import distinct_text_projection, make_shapes


def test_tiny_catseg_v1_loss_decreases(tmp_path: Path) -> None:
    classes = make_shapes(tmp_path / "data", count=8, size=64)
    cfg = load_config("tiny-catseg-v1").override(
        f"data.root={json.dumps(str(tmp_path / 'data'))}",
        f"data.classes={json.dumps(str(classes))}",
        "eval.period=0",
        "solver.iterations=30",
        "checkpoint_period=30",
        "log_period=5",
    )
    torch.manual_seed(0)
    model, family = build_training_model(cfg.model)
    assert family == "catseg_v1" and type(model).__name__ == "CATSegV1"
    distinct_text_projection(model)
    init = save_model_file(tmp_path / "init.safetensors", model.state_dict(), model.config, family)
    result = train(cfg.override(f"model.weights={json.dumps(str(init))}"), tmp_path / "run")
    assert result["iteration"] == 30
    losses = [
        json.loads(line)["loss"]
        for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
        if '"loss"' in line
    ]
    assert len(losses) >= 4 and losses[-1] < 0.8 * losses[0], losses


def test_the_official_recipe_trains_clip_and_the_backbone_at_a_hundredth_of_the_lr() -> None:
    """The recipe's multipliers reach the optimizer: every CLIP and ResNet parameter of a v1 model at
    lr x 0.01, the aggregator and decoder at the base lr."""
    from ovss.engine.optim import build_optimizer

    solver = load_config("catseg-v1-r101-vit-b16").solver
    model = build_model(catseg_v1_tiny().override("resnet.depths=[1,1,1]"))
    model.freeze()
    names = {id(p): n for n, p in model.named_parameters()}
    lr_of = {names[id(p)]: g["lr"] for g in build_optimizer(model, solver).param_groups for p in g["params"]}
    slow = {n for n, lr in lr_of.items() if math.isclose(lr, 0.01 * solver.lr)}
    assert any(n.startswith("clip.") for n in slow) and any(n.startswith("backbone.") for n in slow)
    for name, lr in lr_of.items():
        low = name.startswith(("clip.", "backbone."))
        assert math.isclose(lr, 0.01 * solver.lr if low else solver.lr), (name, lr)
