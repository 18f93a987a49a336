"""The named training recipes: their numbers against the official configs (specs), lookup errors."""

from __future__ import annotations

import pytest

from ovss.engine.recipes import list_recipes, load_config
from ovss.errors import ConfigError


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


def test_unknown_recipe_suggests_the_closest():
    with pytest.raises(ConfigError, match="did you mean 'san-vit-b16'"):
        load_config("san-vit-b61")


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


OFFICIAL = [n for n in list_recipes() if not n.startswith("tiny-") and not n.endswith("-finetune")]


def test_san_optimiser_follows_the_spec():
    """san.md 2.4: AdamW (betas 0.9/0.999, eps 1e-8), decay 1e-4 but 0 for LayerNorm params and for names
    containing pos_embed / positional_embedding / query_embed / absolute_pos_embed /
    relative_position_bias_table; checkpoint period 5000. san.md 2.1: ColorAugSSD, flip, crop constraint
    1.0, pad 128, ignore 255, COCO-Stuff-171 train."""
    for name in ("san-vit-b16", "san-vit-l14"):
        cfg = load_config(name)
        s = cfg.solver
        assert (s.betas, s.eps, s.weight_decay, s.weight_decay_norm) == ((0.9, 0.999), 1e-8, 1e-4, 0.0)
        assert {"pos_embed", "positional_embedding", "query_embed", "absolute_pos_embed",
                "relative_position_bias_table"} <= set(s.no_decay_keywords)
        assert s.lr_multipliers == {} and cfg.checkpoint_period == 5000
        a = cfg.augment
        assert (a.photometric, a.flip, a.single_category_max_area, a.ignore_index) == (True, True, 1.0, 255)
        assert (cfg.data.benchmark, cfg.data.split, cfg.model.name) == ("coco171", "train", name)


@pytest.mark.parametrize("name", ["catseg-vit-b16", "catseg-vit-l14", "sed-convnext-b", "sed-convnext-l"])
def test_catseg_and_sed_optimiser_follow_the_spec(name):
    """catseg_sed.md 1.5 (CAT-Seg) and 2.9 (SED): AdamW, decay 1e-4 (0 on norm and embedding layers), CLIP at
    x0.01, no warm-up, full-model clip 0.01, ColorAugSSD + flip, crop constraint off, pad 128, COCO-171."""
    cfg = load_config(name)
    s = cfg.solver
    assert (s.weight_decay, s.weight_decay_norm, s.weight_decay_embed) == (1e-4, 0.0, 0.0)
    assert (s.warmup_iters, s.clip_grad_norm, s.lr_multipliers) == (0, 0.01, {"clip": 0.01})
    a = cfg.augment
    assert (a.photometric, a.flip, a.single_category_max_area, a.pad_value) == (True, True, 1.0, 128)
    assert (cfg.data.benchmark, cfg.data.split) == ("coco171", "train")
    assert cfg.eval.period == (5000 if name.startswith("catseg") else 10000)  # 1.5 / 2.9


def test_catseg_v1_recipes_follow_the_spec():
    """catseg_sed.md 1.6: v1 fine-tunes R-101 at lr x0.01 and freezes Swin-B (BACKBONE_MULTIPLIER 0.0);
    the mmseg port uses cross-entropy, a 500-iteration linear warm-up, gives the Swin-B extractor lr_mult
    0.01 and tests with its own slide protocol."""
    from ovss.weights.registry import get_weight_spec

    for name in ("catseg-v1-r101-vit-b16", "catseg-v1-swinb-vit-l14"):
        official, port = load_config(name), load_config(f"{name}.mmseg")
        assert official.solver.lr_multipliers == {"clip": 0.01, "backbone": 0.01}
        assert (official.loss.semantic_loss, official.solver.warmup_iters) == ("bce", 0)
        warmup = (port.solver.warmup_iters, port.solver.warmup_method)
        assert port.loss.semantic_loss == "ce" and warmup == (500, "linear")
        assert port.eval.options == {"inference": "mmseg"} and port.eval.convention == "mmseg"
        assert official.solver.iterations == port.solver.iterations == 80000
    frozen = get_weight_spec("catseg-v1-swinb-vit-l14").config()
    assert frozen.backbone_lr_mult == 0.0  # Swin-B frozen in the official v1
    assert get_weight_spec("catseg-v1-swinb-vit-l14.mmseg").config().backbone_lr_mult == 0.01
    assert get_weight_spec("catseg-v1-r101-vit-b16").config().backbone_lr_mult == 0.01


@pytest.mark.parametrize("name", OFFICIAL)
def test_each_official_recipe_trains_a_registered_model_of_a_trainable_family(name):
    from ovss.models.family import get_family
    from ovss.weights.registry import get_weight_spec

    cfg = load_config(name)
    spec = get_weight_spec(cfg.model.name)
    assert cfg.name == name and cfg.model.name == name and get_family(spec.family).task
    assert cfg.data.class_variant == get_family(spec.family).class_variant  # the names it is evaluated with
    assert cfg.eval.data.benchmark == "coco171" and cfg.eval.data.split == "val"


@pytest.mark.parametrize("name", [n for n in list_recipes() if n.startswith("tiny-")])
def test_tiny_recipes_are_small_random_and_local(name):
    from ovss.weights.registry import get_weight_spec

    cfg = load_config(name)
    family = name.removeprefix("tiny-")
    assert cfg.model.name == f"test-{family}-tiny" and cfg.model.random_init
    assert get_weight_spec(cfg.model.name).source_format == "random"
    assert (cfg.device, cfg.workers, cfg.eval.period, cfg.tensorboard) == ("cpu", 0, 0, False)
    assert cfg.solver.iterations <= 300 and cfg.augment.crop_size == 64


def test_a_config_file_loads_and_a_missing_one_lists_the_recipes(tmp_path):
    path = tmp_path / "mine.json"
    load_config("tiny-sed").override("solver.iterations=7").to_json(path)
    assert load_config(str(path)).solver.iterations == 7
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "zzz.json"))
    message = str(info.value)
    missing = str(tmp_path / "zzz.json")
    assert message.startswith(f"no recipe or config file {missing!r}; recipes: san-vit-b16, ")
    assert "\n" not in message
