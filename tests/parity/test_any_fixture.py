"""The parity harnesses take fixtures that vary from the shipped ones (synthetic variations of them).

A copy of a shipped fixture is edited the way other official-code fixtures differ: a recorded tensor
left out (a sliding-window fixture has no ``clip_input``), descriptive config keys removed or added,
a needed hyper-parameter missing, a recorded tensor corrupted. The harness must compare what is
recorded, skip what is not, name a missing needed key, and still fail on a mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import needs, parity_dir
from tests.parity import test_catseg_parity as catseg_harness
from tests.parity._common import TOL, read_array, recorded_tensors, reference_outputs


def _variant(tmp_path: Path, name: str, edit_config, edit_outputs=None) -> Path:
    """A copy of fixture ``name`` with config.json / outputs.safetensors edited (big files linked)."""
    src = parity_dir() / name
    needs(src / "config.json")
    dst = tmp_path / name
    dst.mkdir()
    for f in src.iterdir():
        if f.name not in ("config.json", "outputs.safetensors"):
            (dst / f.name).symlink_to(f)
    cfg = json.loads((src / "config.json").read_text())
    edit_config(cfg)
    (dst / "config.json").write_text(json.dumps(cfg))
    outputs = load_file(str(src / "outputs.safetensors"))
    if edit_outputs is not None:
        edit_outputs(outputs)
    save_file(outputs, str(dst / "outputs.safetensors"))
    return dst


def test_catseg_fixture_without_clip_input_and_other_descriptive_keys(tmp_path: Path) -> None:
    def edit(cfg: dict) -> None:
        del cfg["tensors"]["clip_input"]
        for key in ("deviations_from_official_structure", "sem_seg_argmax_histogram", "init"):
            cfg.pop(key, None)
        cfg["clip"].pop("dense last block", None)
        cfg["aggregator"].pop("upsample1", None)
        cfg["notes from a newer generator"] = {"anything": [1, 2, 3]}

    folder = _variant(tmp_path, "catseg_a", edit, lambda out: out.pop("clip_input"))
    errors = catseg_harness.check_fixture(folder)
    assert "clip_input" not in errors and "sem_seg" in errors and "agg.layer1.out" in errors
    assert max(errors.values()) <= TOL


def test_catseg_fixture_missing_a_needed_key_is_named(tmp_path: Path) -> None:
    folder = _variant(tmp_path, "catseg_a", lambda cfg: cfg["aggregator"].pop("NUM_HEADS"))
    with pytest.raises(pytest.fail.Exception, match=r"catseg_a/config.json: missing needed key 'NUM_HEADS'"):
        catseg_harness.check_fixture(folder)


def test_catseg_recorded_tensor_that_differs_still_fails(tmp_path: Path) -> None:
    def corrupt(out: dict) -> None:
        out["agg.layer0.out"] = out["agg.layer0.out"] * 1.001

    folder = _variant(tmp_path, "catseg_a", lambda cfg: None, corrupt)
    errors = catseg_harness.check_fixture(folder)
    assert errors["agg.layer0.out"] > TOL
    assert all(e <= TOL for n, e in errors.items() if n != "agg.layer0.out")


def test_catseg_recorded_but_unmappable_tensor_fails(tmp_path: Path) -> None:
    def edit(cfg: dict) -> None:
        cfg["tensors"]["agg.something_new"] = {"shape": [1], "desc": "x", "file": "outputs.safetensors"}

    folder = _variant(
        tmp_path, "catseg_a", edit, lambda out: out.__setitem__("agg.something_new", torch.ones(1))
    )
    with pytest.raises(pytest.fail.Exception, match="agg.something_new"):
        catseg_harness.check_fixture(folder)


def test_catseg_valid_size_comes_from_the_config(tmp_path: Path) -> None:
    folder = _variant(tmp_path, "catseg_a", lambda cfg: cfg["input"].__setitem__("input_hw", [100, 120]))
    with pytest.raises(AssertionError, match="input_hw"):
        catseg_harness.check_fixture(folder)


def test_san_unfused_clip_records_come_from_the_tower() -> None:
    from tests.parity.test_san_parity import load_fixture_model, run_with_intermediates

    folder = parity_dir() / "san_a"
    needs(folder / "config.json")
    model, _ = load_fixture_model(folder)
    original, calls = model.clip_features, []

    def keeps_only_the_split(images):  # the harness's own call sees a model that keeps record 3 only
        records, grid = original(images)
        calls.append(1)
        return ({3: records[3]} if len(calls) == 1 else records), grid

    model.clip_features = keeps_only_the_split
    images, tokens = read_array(folder, "input.npy"), read_array(folder, "tokens.npy")
    ref = reference_outputs(folder)
    got = run_with_intermediates(model, images, tokens, (8, 8), clip_records=(0, 1, 2, 3))
    for i in range(4):
        torch.testing.assert_close(got[f"clip.feat.{i}"], ref[f"clip.feat.{i}"], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(got[f"clip.cls.{i}"], ref[f"clip.cls.{i}"], rtol=1e-4, atol=1e-5)
    assert len(calls) >= 2  # the harness asked the model for its records, the tower for the rest


@pytest.fixture(autouse=True)
def _fresh_harness_cache():
    catseg_harness._CACHE.clear()
    yield
    catseg_harness._CACHE.clear()


def test_catseg_fixture_with_more_classes_than_the_budget(tmp_path: Path) -> None:
    """12 classes > a class budget of 8 (``pad_len``; 256 officially, smaller keeps this fast): the
    harness records the kept classes, the full cost volume and the truncation, and puts our kept
    classes in the fixture's (here: shuffled) order before comparing. The references are our own
    numbers re-ordered, so this checks the harness, not the model."""
    import numpy as np

    from ovss.towers.tokenizer import get_tokenizer

    names = [f"thing number {i}" for i in range(12)]
    tokens = get_tokenizer()([f"A photo of a {n} in the scene" for n in names]).numpy()

    def edit(cfg: dict) -> None:
        cfg["class_names"] = names
        cfg["aggregator"]["pad_len"] = 8
        cfg["tensors"] = {}

    folder = _variant(tmp_path, "catseg_a", edit, lambda out: out.clear())
    (folder / "tokens.npy").unlink()
    np.save(folder / "tokens.npy", tokens)
    ours = catseg_harness.run_fixture(folder)["ours"]
    assert ours["agg.cost_volume_full"].shape[2] == 12 and ours["agg.cost_volume"].shape[2] == 8
    assert ours["agg.decoder1.out"].shape[0] == 8 and ours["agg.out.logits"].shape[1] == 12
    assert int((ours["agg.out.logits"][0, :, 0, 0] == -100).sum()) == 4  # the dropped classes
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(0))
    refs = {
        "agg.cost_volume_full": ours["agg.cost_volume_full"],
        "agg.trunc.class_scores": ours["agg.trunc.class_scores"],  # official order: not permuted
        "agg.trunc.classes": ours["agg.trunc.classes"][:, perm],
        "agg.cost_volume": ours["agg.cost_volume"][:, :, perm],
        "agg.text_guidance_proj": ours["agg.text_guidance_proj"][:, perm],
        "agg.layer1.out": ours["agg.layer1.out"][:, :, perm],
        "agg.decoder2.out": ours["agg.decoder2.out"][perm],
        "agg.out.logits": ours["agg.out.logits"],
        "sem_seg": ours["sem_seg"],
    }
    save_file({k: v.contiguous() for k, v in refs.items()}, str(folder / "outputs.safetensors"))
    cfg = json.loads((folder / "config.json").read_text())
    cfg["tensors"] = {
        k: {"shape": list(v.shape), "desc": "", "file": "outputs.safetensors"} for k, v in refs.items()
    }
    (folder / "config.json").write_text(json.dumps(cfg))
    run = catseg_harness._CACHE[folder]  # same model run; only what the fixture records changed
    run["cfg"], run["refs"] = cfg, recorded_tensors(folder, cfg)
    catseg_harness._to_official_class_order(run["ours"], run["refs"])
    errors = catseg_harness.check_fixture(folder)
    assert set(errors) == set(refs) and max(errors.values()) <= 1e-6, errors


# ------------------------------------------------------------------ CAT-Seg v1 / mmseg: Swin and synonyms
SWIN_D2 = {
    "type": "cat_seg D2SwinTransformer (MODEL.BACKBONE.NAME D2SwinTransformer)", "EMBED_DIM": 16,
    "DEPTHS": [2, 2, 6, 2], "NUM_HEADS": [2, 4, 8, 16], "WINDOW_SIZE": 6, "PATCH_SIZE": 4, "MLP_RATIO": 4.0,
    "PRETRAIN_IMG_SIZE": 384, "OUT_FEATURES": ["res2", "res3", "res4"], "SOLVER.BACKBONE_MULTIPLIER": 0.0,
}
SWIN_MM = {
    "type": "mmseg SwinTransformer", "embed_dims": 16, "depths": [2, 2, 6, 2], "num_heads": [2, 4, 8, 16],
    "window_size": 6, "patch_size": 4, "mlp_ratio": 4, "pretrain_img_size": 384, "out_indices": [0, 1, 2],
    "lr_mult": 0.01,
}


@pytest.mark.parametrize(("name", "section", "swin"), [("catsegv1_a", "backbone", SWIN_D2),
                                                       ("catsegmm_a", "feature_extractor", SWIN_MM)])
def test_catsegv1_fixture_with_a_swin_backbone_builds_it(name, section, swin) -> None:
    """A Swin-guided v1 / mmseg fixture's config gives a Swin trunk with its keys (stages up to res4),
    and the backbone multiplier decides what trains, as for the ResNet fixtures."""
    from ovss.models.catseg_v1 import CATSegV1
    from tests.parity.test_catsegv1_parity import fixture_config, read_config

    folder = parity_dir() / name
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} not found")
    cfg = read_config(folder)
    cfg[section] = swin
    config = fixture_config(cfg, f"{name}/config.json")
    assert config.resnet is None and config.backbone_lr_mult == (0.0 if section == "backbone" else 0.01)
    s = config.swin
    assert (s.embed_dim, s.depths, s.heads, s.window, s.patch_size) == (16, (2, 2, 6), (2, 4, 8), 6, 4)
    model = CATSegV1(config)
    frozen = all(not p.requires_grad for p in model.backbone.parameters())
    assert frozen == (config.backbone_lr_mult == 0)
    del swin["WINDOW_SIZE" if section == "backbone" else "window_size"]
    with pytest.raises(pytest.fail.Exception, match="missing needed key 'WINDOW_SIZE'|'window_size'"):
        fixture_config(cfg, f"{name}/config.json")


def test_catsegv1_synonym_token_rows_give_the_embedders_classes() -> None:
    """``token_rows`` with n_synonyms > 1 (for each template one row per synonym) give the class
    embedding the vocabulary embedder makes for "sofa, couch" (synonyms averaged per template)."""
    from ovss.api.segmenter import Segmenter
    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates
    from tests.parity.test_catsegv1_parity import _run, text_from_token_rows

    folder = parity_dir() / "catsegv1_a"
    if not (folder / "config.json").is_file():
        pytest.skip(f"{folder} not found")
    model = _run(folder)["model"]
    classes = [["sofa", "couch"], ["chair"], ["tv", "monitor", "screen"]]
    strings, rows = [], []
    for names in classes:
        rows.append([len(strings), 80 * len(names), len(names)])
        strings += [t.format(n) for t in get_templates("imagenet") for n in names]
    with torch.no_grad():
        ours = text_from_token_rows(model, get_tokenizer()(strings), rows)
    seg = Segmenter(model)
    seg.set_vocabulary("sofa, couch; chair; tv, monitor, screen")
    assert ours.shape == seg.text_embeddings.shape == (3, 80, model.config.clip.embed_dim)
    torch.testing.assert_close(ours, seg.text_embeddings, rtol=1e-5, atol=1e-6)
    sofa = [t.format("sofa") for t in get_templates("imagenet")]
    with torch.no_grad():
        alone = text_from_token_rows(model, get_tokenizer()(sofa), [[0, 80, 1]])
    assert not torch.allclose(ours[0], alone[0], atol=1e-3)  # the synonym really counts
