"""Training tasks (per-family loss wiring): normalisation, padding, text, losses by hand."""

from __future__ import annotations

import math

import pytest
import torch

from ovss.engine.config import LossConfig
from ovss.engine.recipes import load_config
from ovss.engine.tasks import CATSegV1Task, build_task
from ovss.errors import ConfigError
from ovss.models.build import build_model
from ovss.models.catseg_v1 import catseg_v1_tiny
from ovss.vocab.vocabulary import Vocabulary


def test_task_normalises_and_pads_like_detectron2(tmp_path):
    from ovss.engine.build import build_training_model
    from ovss.engine.tasks import build_task
    from ovss.vocab.vocabulary import parse_vocabulary

    cfg = load_config("tiny-san")
    model, family = build_training_model(cfg.model)
    task = build_task(family, model, parse_vocabulary("a; b"), cfg.loss)
    x = torch.full((1, 3, 40, 50), 128, dtype=torch.uint8)
    out = task.normalise(x)
    assert out.shape == (1, 3, 64, 64)  # SAN pads to a multiple of 32 with 0
    mean, std = torch.tensor(model.config.pixel_mean), torch.tensor(model.config.pixel_std)
    torch.testing.assert_close(out[0, :, 0, 0], (128 - mean) / std)
    assert out[..., 40:, :].abs().max() == 0 and out[..., :, 50:].abs().max() == 0
    labels = task.pad_labels(torch.zeros(1, 40, 50, dtype=torch.int64))
    assert labels.shape == (1, 64, 64) and (labels[:, 40:] == 255).all() and (labels[:, :40, :50] == 0).all()
    assert task.text.shape == (2, model.config.clip.embed_dim)
    assert task.loss_weights() == {"loss_ce": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def test_catseg_text_is_reencoded_with_gradients_and_unused_q_is_reported():
    from ovss.engine.build import build_training_model
    from ovss.engine.tasks import build_task
    from ovss.engine.trainer import _check_all_used
    from ovss.models.losses import weighted_sum
    from ovss.vocab.vocabulary import parse_vocabulary

    cfg = load_config("tiny-catseg")
    model, family = build_training_model(cfg.model)
    task = build_task(family, model, parse_vocabulary("cat; sofa, couch"), cfg.loss)
    assert task.tokens.shape[:2] == (1, 2)  # one template, two classes
    x, y = torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), torch.randint(0, 2, (1, 64, 64))
    weighted_sum(task.losses(task(x), y), task.loss_weights()).backward()
    assert model.clip.text.transformer.resblocks[0].attn.q_proj_weight.grad is not None
    # the dense last block never uses its trainable q weight: DDP must be told (find_unused_parameters)
    with pytest.raises(ConfigError, match=r"resblocks\.\d+\.attn\.q_proj_weight"):
        _check_all_used(model)
    assert load_config("catseg-vit-b16").find_unused_parameters


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


def _trainable_families() -> list[str]:
    from ovss.models.family import families

    return [f.name for f in families() if f.task]


@pytest.mark.parametrize("family", _trainable_families())
def test_every_family_takes_a_finite_training_step(family):
    """The family's task around its tiny recipe's model: outputs, named loss terms that all have a
    weight, a finite total whose gradients reach trainable parameters only."""
    from ovss.engine.build import build_training_model
    from ovss.models.losses import weighted_sum
    from ovss.vocab.vocabulary import parse_vocabulary

    torch.manual_seed(0)
    recipe = load_config(f"tiny-{family.replace('_', '-')}")
    model, built = build_training_model(recipe.model)
    assert built == family
    model.freeze()
    task = build_task(family, model, parse_vocabulary("cat; dog; sky"), recipe.loss)
    images = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    labels = torch.zeros(1, 64, 64, dtype=torch.int64)
    labels[:, 20:40] = 1
    labels[:, 40:] = 2
    labels[:, :, :8] = 255
    losses = task.losses(task(images), labels)
    assert losses and all(v.ndim == 0 and torch.isfinite(v) for v in losses.values()), losses
    total = weighted_sum(losses, task.loss_weights())
    assert torch.isfinite(total) and total > 0
    total.backward()
    grads = {n: p.grad is not None for n, p in model.named_parameters()}
    assert any(grads[n] for n, _ in model.trainable_parameters())
    assert not any(has for n, has in grads.items() if not model.is_trainable(n))


def _bce_by_hand(logits: list[float], targets: list[float]) -> float:
    """Mean over elements of -[t log s(x) + (1 - t) log(1 - s(x))]."""
    terms = []
    for x, t in zip(logits, targets):
        s = 1 / (1 + math.exp(-x))
        terms.append(-(t * math.log(s) + (1 - t) * math.log(1 - s)))
    return sum(terms) / len(terms)


def test_catseg_and_sed_bce_by_hand():
    """Per-class sigmoid BCE against one-hot labels, ignore pixels all-negative, mean over B*K*H*W."""
    from ovss.engine.tasks import CATSegTask, SEDTask

    labels = torch.tensor([[[0, 1], [255, 1]]])  # (1, 2, 2), K = 2
    logits = torch.tensor([[[[2.0, -1.0], [0.5, 0.0]], [[-3.0, 1.0], [0.0, 4.0]]]])  # (1, 2, 2, 2)
    onehot = [1, 0, 0, 0, 0, 1, 0, 1]  # class 0 then class 1, rows first; the ignore pixel is all 0
    expected = _bce_by_hand(logits.flatten().tolist(), onehot)
    cat = CATSegTask.losses(_Bare(), logits, labels)
    assert list(cat) == ["loss_sem_seg"] and float(cat["loss_sem_seg"]) == pytest.approx(expected, rel=1e-6)
    sed = SEDTask.losses(_Bare(), (logits, [torch.zeros_like(logits)] * 3), labels)
    assert list(sed) == [f"loss_sem_seg_{i}" for i in range(4)]
    assert float(sed["loss_sem_seg_0"]) == pytest.approx(expected, rel=1e-6)
    assert all(float(sed[f"loss_sem_seg_{i}"]) == pytest.approx(math.log(2)) for i in (1, 2, 3))


class _Bare:
    """The state ``Task.losses`` reads (no model needed for the loss maths)."""

    ignore_index = 255

    def pad_labels(self, labels):
        return labels


def test_sed_needs_four_loss_weights():
    from ovss.engine.build import build_training_model
    from ovss.vocab.vocabulary import parse_vocabulary

    recipe = load_config("tiny-sed")
    model, _ = build_training_model(recipe.model)
    with pytest.raises(ConfigError) as info:
        build_task("sed", model, parse_vocabulary("a; b"), LossConfig(bce_weights=(1.0, 1.0, 1.0)))
    assert str(info.value) == "SED needs 4 loss.bce_weights (final, 3 CER heads), got (1.0, 1.0, 1.0)"


def test_unknown_family_and_averaged_synonyms_are_refused_in_one_line():
    from ovss.engine.tasks import prompt_tokens
    from ovss.models.catseg import catseg_tiny
    from ovss.vocab.vocabulary import parse_vocabulary

    model = build_model(catseg_tiny())
    with pytest.raises(ConfigError) as info:
        build_task("segformer", model, parse_vocabulary("a"), LossConfig())
    known = "san, catseg, sed, catseg_v1"
    assert str(info.value) == f"no training task for model family 'segformer'; known: {known}"
    model.config.synonyms = "mean"
    with pytest.raises(ConfigError, match=r"^synonyms='mean' gives several prompts per class, .*'first' or"):
        prompt_tokens(model, parse_vocabulary("sofa, couch; cat"))
    model.config.synonyms = "first"
    tokens = prompt_tokens(model, parse_vocabulary("sofa, couch; cat"))
    assert tokens.shape[:2] == (1, 2)  # CAT-Seg: one template, two classes
