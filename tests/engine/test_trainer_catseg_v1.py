"""CAT-Seg v1 training: the tiny recipe learns through the real trainer; the mmseg recipe option."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ovss.engine.build import build_training_model
from ovss.engine.config import LossConfig
from ovss.engine.recipes import load_config
from ovss.engine.tasks import CATSegV1Task, build_task
from ovss.engine.trainer import train
from ovss.models.build import build_model
from ovss.models.catseg_v1 import catseg_v1_tiny
from ovss.vocab.vocabulary import Vocabulary
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


def _flat(section: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in section.items():
        if isinstance(value, dict) and key not in ("lr_multipliers", "options"):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_the_mmseg_recipe_is_the_official_one_with_only_the_ports_differences() -> None:
    """The mmseg port's recipe changes the loss, the warm-up, the batch split and the evaluation
    convention of the official v1 recipe, and nothing else (spec: catseg_sed.md section 1.6)."""
    official = _flat(load_config("catseg-v1-r101-vit-b16").to_dict())
    mm = _flat(load_config("catseg-v1-r101-vit-b16.mmseg").to_dict())
    changed = {key for key in official.keys() | mm.keys() if official.get(key) != mm.get(key)}
    assert changed - {"name", "model.name"} == {  # the names carry the ".mmseg" suffix
        "loss.semantic_loss", "solver.warmup_iters", "solver.warmup_factor", "solver.batch_size",
        "eval.options", "eval.convention",
    }, changed


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


def test_mmseg_cross_entropy_option_by_hand() -> None:
    torch.manual_seed(0)
    model = build_model(catseg_v1_tiny().override("resnet.depths=[1,1,1]"))
    vocab = Vocabulary.from_names(["a", "b", "c"])
    task = build_task("catseg_v1", model, vocab, LossConfig(bce_weights=(1.0,), semantic_loss="ce"))
    assert isinstance(task, CATSegV1Task) and task.text.shape == (3, 80, 32)
    labels = torch.full((1, 8, 8), 255, dtype=torch.long)
    labels[0, :4] = 1
    zeros = torch.zeros(1, 3, 4, 4)  # uniform softmax: -log(1/3) on every counted pixel
    assert math.isclose(float(task.losses(zeros, labels)["loss_sem_seg"]), math.log(3), rel_tol=1e-6)
    logits = torch.zeros(1, 3, 8, 8)
    logits[:, 1] = 100.0  # right everywhere it counts; the ignored half must not count
    assert float(task.losses(logits, labels)["loss_sem_seg"]) < 1e-6
