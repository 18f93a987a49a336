"""Model cards: ``ovss.model_card`` and ``ovss models [NAME]``."""

from __future__ import annotations

import json

import pytest

import ovss
from ovss.api.card import ModelCard, count_parameters
from ovss.cli.main import main
from ovss.data.catalog import get_benchmark
from ovss.weights.cache import load_model
from ovss.weights.modelfile import save_model_file
from ovss.weights.registry import WEIGHTS, get_weight_spec
from ovss.weights.resolve import converted_path


@pytest.mark.parametrize("name", ["test-san-tiny", "test-sed-tiny", "test-catseg-v1-tiny"])
def test_parameter_count_on_meta_equals_the_real_model(name):
    model, _ = load_model(name)
    assert count_parameters(get_weight_spec(name)) == sum(p.numel() for p in model.parameters())


def test_published_results_are_well_formed_data():
    for spec in WEIGHTS:
        for r in spec.published:
            assert get_benchmark(r.benchmark).name == r.benchmark, (spec.name, r)
            assert r.protocol.split(",")[0] in ("single scale", "ms+flip"), (spec.name, r)
            assert 0 < r.miou < 100 and r.source, (spec.name, r)
        if not spec.name.startswith("test-"):
            assert spec.citation.startswith("@") and spec.citation.rstrip().endswith("}"), spec.name
    assert {r.benchmark for r in get_weight_spec("catseg-vit-l14").published} == {
        "ade847", "pc459", "ade150", "pc59", "voc20", "voc20b"
    }


def test_card_of_a_release_names_origin_protocol_numbers_and_bibtex(tmp_path, monkeypatch):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    card = ovss.model_card("catseg-vit-b16")
    assert isinstance(card, ModelCard)
    assert card.parameters == 154_289_378  # CAT-Seg ViT-B/16 incl. the CLIP towers
    assert card.weights_origin.endswith("spaces/hamacojr/CAT-Seg-weights/blob/main/model_base.pth")
    assert card.file is None and card.file_size is None
    assert "slide" in card.protocols["eval"] and "whole" in card.protocols["segment"]
    a150 = [r for r in card.published if r.benchmark == "ade150"]
    assert [(r.miou, r.protocol) for r in a150] == [(31.8, "single scale")]
    data = json.loads(card.to_json())  # JSON round trip of the same data
    assert data["published"][0] == {"benchmark": "ade847", "miou": 12.0, "protocol": "single scale",
                                    "source": a150[0].source, "note": ""}
    text = card.render()
    for part in ("parameters: 154,289,378", "inference protocol:", "ADE20K-150 (A-150)", "31.80",
                 "[single scale]", "@inproceedings{cho2024catseg", "not downloaded (ovss download"):
        assert part in text, part


def test_mmseg_san_entries_name_their_official_download(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    base = "download.openmmlab.com/mmsegmentation/v0.5/san/"
    urls = {
        "san-vit-b16.mmseg": base + "san-vit-b16_20230906-fd0a7684.pth",
        "san-vit-l14.mmseg": base + "san-vit-l14_20230907-a11e098f.pth",
    }
    for name, url in urls.items():
        assert url in ovss.model_card(name).weights_origin
    card = ovss.model_card("san-vit-l14.mmseg")  # the mmseg README's numbers, both protocols
    assert {(r.benchmark, r.miou, r.protocol) for r in card.published} == {
        ("coco171", 45.78, "single scale"), ("coco171", 43.99, "ms+flip")
    }
    assert "45.78" in card.render() and "[ms+flip]" in card.render()
    assert main(["models"]) == 0  # the table: host/.../file (the card has the whole URL)
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    for name, url in urls.items():
        assert f"download.openmmlab.com/.../{url.rsplit('/', 1)[-1]}" in rows[name]


def test_cached_file_size_and_digest_show_in_table_and_card(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("OVSS_HOME", str(tmp_path))
    model, _ = load_model("test-san-tiny")
    target = converted_path("san-vit-b16")  # any converted file in the slot: the card reads its header
    save_model_file(target, model.state_dict(), model.config, "san", name="san-vit-b16")
    card = ovss.model_card("san-vit-b16")
    assert card.file == str(target) and card.file_size == target.stat().st_size
    from ovss.weights.modelfile import open_model_file

    assert card.file_sha256 == open_model_file(target).metadata["content_sha256"]
    assert len(card.file_sha256) == 64 and card.file_sha256 in card.render()
    assert main(["models"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("san-vit-b16 "))
    size_mb = f"{target.stat().st_size / 1e6:.1f} MB"
    assert "157.8M" in row and "on disk" in row and size_mb in row and "MIT" in row


def test_cli_card_text_json_and_errors(capsys):
    assert main(["models", "test-sed-tiny"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("test-sed-tiny: ") and "none recorded" in out and "random (seed 0)" in out
    assert main(["models", "sed-convnext-b", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    fast = [r for r in data["published"] if r["benchmark"] == "ade150" and "--fast" in r["note"]]
    assert [r["miou"] for r in fast] == [31.6]
    assert main(["models", "san-vit-b17"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("ovss: error: unknown model 'san-vit-b17'") and "\n" not in err
    assert main(["models", "--json"]) == 1
    assert "pass a NAME" in capsys.readouterr().err
