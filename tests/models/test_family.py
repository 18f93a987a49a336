"""A model family is one descriptor: a toy family registered inside this test (its config, model,
training task, converter and registry entry all live here) goes through ``ovss.load``, ``segment``,
``eval --folder``, ``train``, ``export`` and the demo backend without any other module knowing it."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ovss.models.base import ModelConfig, ResizeConfig, SegmentationModel

OFFICIAL = "toyseg_official"  # the toy's "official" checkpoint format (converter: this module)
NAME = "test-toyseg-tiny"
TOY_MODES = ("fine", "coarse")  # the toy's inference modes (when registered with the option)


@dataclasses.dataclass(kw_only=True)
class ToyConfig(ModelConfig):
    """A few layers: token embedding (text), strided conv + 1x1 conv (image)."""

    embed_dim: int = 16
    vocab_size: int = 49408
    templates: str = "catseg"
    synonyms: str = "first"  # type: ignore[assignment]
    test_resize: ResizeConfig = dataclasses.field(default_factory=lambda: ResizeConfig(size=32, max_size=64))
    size_divisibility: int = 8


class ToyModel(SegmentationModel):
    def __init__(self, config: ToyConfig) -> None:
        super().__init__()
        self.config = config
        e = config.embed_dim
        self.token_embedding = nn.Embedding(config.vocab_size, e)
        self.backbone = nn.Conv2d(3, e, kernel_size=4, stride=4)
        self.head = nn.Conv2d(e, e, kernel_size=1)
        self.freeze()

    def is_trainable(self, name: str) -> bool:
        return name.startswith(("backbone.", "head."))

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        emb = self.token_embedding(tokens).mean(dim=2).mean(dim=0)  # (P, K, L) -> (K, E)
        return F.normalize(emb, dim=-1)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        feats = F.normalize(self.head(F.relu(self.backbone(images))), dim=1)
        return 10.0 * torch.einsum("bchw,kc->bkhw", feats, text.to(feats.dtype))

    def predict(self, images, text, image_size, output_size, **options: Any) -> torch.Tensor:
        mode = options.pop("inference", "fine")  # coarse: the logits averaged over 2 x 2 cells
        if options or mode not in TOY_MODES:
            raise ValueError(f"the toy model takes no options but inference, got {sorted(options)}, {mode!r}")
        logits = self.forward(images, text)
        if mode == "coarse":
            logits = F.interpolate(F.avg_pool2d(logits, 2), size=logits.shape[-2:], mode="nearest")
        h, w = image_size
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear")[..., :h, :w]
        return F.interpolate(logits, size=output_size, mode="bilinear").sigmoid()


# -- the toy's converter (this module is its ``formats`` entry): official keys carry a "net." prefix
def detect(state_dict) -> bool:
    return "net.token_embedding.weight" in state_dict


def convert(state_dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("net."): v for k, v in state_dict.items()}


def _toy_task() -> type:
    from ovss.engine.tasks import Task, frozen_text
    from ovss.models.losses import semantic_bce_loss

    class ToyTask(Task):
        def __init__(self, model, vocabulary, loss, ignore_index: int = 255) -> None:
            super().__init__(model, loss, ignore_index)
            self.register_buffer("text", frozen_text(model, vocabulary), persistent=False)

        def text_input(self) -> torch.Tensor:
            return self.text

        def losses(self, outputs, labels):
            return {"loss_toy": semantic_bce_loss(outputs, self.pad_labels(labels), self.ignore_index)}

        def loss_weights(self) -> dict[str, float]:
            return {"loss_toy": 1.0}

    return ToyTask


@pytest.fixture
def toy_family(monkeypatch):
    """Register the toy family and one registry entry for it, for this test only."""
    return _register_toy(monkeypatch)


@pytest.fixture
def toy_family_with_modes(monkeypatch):
    """The toy family with an ``inference=`` option of its own modes (none of them another family's)."""
    from ovss.models.family import InferenceOption

    option = InferenceOption(modes=TOY_MODES, defaults={"segment": "coarse", "export": "coarse"})
    return _register_toy(monkeypatch, options=("inference",), inference=option)


def _register_toy(monkeypatch, **descriptor_fields: Any):
    import ovss.api.segmenter  # the modules that bind WEIGHTS, imported before it is patched
    import ovss.cli.main  # noqa: F401  # (one imported during the patch would keep the toy entry)
    from ovss.models import family as family_mod
    from ovss.weights import registry

    family_mod.families()  # the built-ins first
    monkeypatch.setattr(family_mod, "_REGISTRY", dict(family_mod._REGISTRY))
    descriptor = family_mod.register_family(family_mod.Family(
        name="toyseg", title="ToySeg", config_class=ToyConfig, model_class=ToyModel, task=_toy_task,
        summary="ToySeg: a test family", formats={OFFICIAL: __name__}, **descriptor_fields,
    ))
    spec = registry.WeightSpec(
        name=NAME, family="toyseg", config=ToyConfig, source_format=OFFICIAL, description="toy",
        license="MIT", origin="this test",
    )
    weights = (*registry.WEIGHTS, spec)
    for module in [m for n, m in sys.modules.items() if n.startswith("ovss.")]:
        if getattr(module, "WEIGHTS", None) is registry.WEIGHTS:
            monkeypatch.setattr(module, "WEIGHTS", weights)
    monkeypatch.setitem(registry._BY_NAME, NAME, spec)
    return descriptor


def _official_checkpoint(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = ToyModel(ToyConfig())
    torch.save({f"net.{k}": v for k, v in model.state_dict().items()}, path)
    return path


def _images(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
    return folder


def test_toy_family_loads_segments_and_exports_through_the_public_paths(toy_family, tmp_path):
    import ovss
    from ovss.cli.main import main
    from ovss.models.build import family_of
    from ovss.weights.modelfile import save_model_file

    assert toy_family.resolve_task().__name__ == "ToyTask"
    official = _official_checkpoint(tmp_path / "toy.pth")
    seg = ovss.load(NAME, weights=official, dtype="fp32")  # detected as the toy format, converted
    assert type(seg.model) is ToyModel and family_of(seg.model.config) == "toyseg"
    expected = ToyModel(ToyConfig())
    expected.load_state_dict(convert(torch.load(official)))
    for key, value in expected.state_dict().items():
        assert torch.equal(seg.model.state_dict()[key], value), key
    file = save_model_file(tmp_path / "toy.safetensors", seg.model.state_dict(), seg.model.config, "toyseg")
    seg = ovss.load(str(file), dtype="fp32")  # an ovss file of the toy family
    result = seg.predict(np.zeros((40, 56, 3), np.uint8), ["cat", "wall"])
    assert result.label_map.shape == (40, 56)

    images = _images(tmp_path / "images")
    out = tmp_path / "out"
    argv = ["segment", str(images), "--model", str(file), "--classes", "cat; wall", "--out", str(out)]
    assert main(argv) == 0
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert [p for p in written if p.startswith("im0")], written

    labels = tmp_path / "labels"
    labels.mkdir()
    for p in images.iterdir():
        Image.fromarray(np.zeros((40, 56), np.uint8)).save(labels / p.name)
    folder = tmp_path / "bench"
    (folder).mkdir()
    (folder / "images").symlink_to(images)
    (folder / "labels").symlink_to(labels)
    eval_out = tmp_path / "eval"
    argv = ["eval", "--model", str(file), "--folder", str(folder), "--classes", "cat; wall"]
    argv += ["--out", str(eval_out)]
    assert main(argv) == 0
    assert any("mIoU" in p.read_text() for p in eval_out.rglob("*.json"))

    onnx = tmp_path / "toy.onnx"
    argv = ["export", "--model", str(file), "--classes", "cat; wall", "--size", "32", "32"]
    argv += ["--out", str(onnx)]
    assert main(argv) == 0 and onnx.stat().st_size > 0
    assert main([*argv[:-2], "--inference", "whole", "--out", str(onnx)]) != 0  # the toy takes no options


def test_toy_inference_modes_pass_through_the_cli(toy_family_with_modes, tmp_path, capsys):
    """--inference accepts the modes of the families registered when the parser is built: the toy's
    own modes reach its model in segment (its default too) and export; another family's mode is
    refused in one line naming the toy's, an unknown one by argparse."""
    import onnx

    from ovss.cli.main import main
    from tests.conftest import segment_max_scores

    official = _official_checkpoint(tmp_path / "toy.pth")
    photo = _images(tmp_path / "images", count=1) / "im0.png"
    base = [str(photo), "--model", NAME, "--weights", str(official), "--classes", "cat; wall"]
    fine = segment_max_scores([*base, "--inference", "fine"], tmp_path / "fine", "im0")
    coarse = segment_max_scores([*base, "--inference", "coarse"], tmp_path / "coarse", "im0")
    assert fine != coarse
    assert segment_max_scores(base, tmp_path / "default", "im0") == coarse  # the descriptor's default
    capsys.readouterr()

    assert main(["segment", *base, "--inference", "whole", "--out", str(tmp_path / "whole")]) == 1
    refusal = f"ovss: error: --inference {{}} does not apply to {NAME} (a ToySeg model); use fine or coarse"
    assert capsys.readouterr().err.strip() == refusal.format("whole")
    with pytest.raises(SystemExit):
        main(["segment", *base, "--inference", "bogus", "--out", str(tmp_path / "bogus")])
    assert "invalid choice: 'bogus'" in capsys.readouterr().err

    export = ["export", "--model", NAME, "--weights", str(official), "--classes", "cat; wall"]
    export += ["--size", "32", "32"]
    ops = {}
    for mode in TOY_MODES:
        path = tmp_path / f"{mode}.onnx"
        assert main([*export, "--inference", mode, "--out", str(path)]) == 0
        ops[mode] = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "AveragePool" in ops["coarse"] and "AveragePool" not in ops["fine"]
    assert main([*export, "--inference", "slide", "--out", str(tmp_path / "slide.onnx")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == refusal.format("slide")
    san = ["export", "--model", "test-san-tiny", "--inference", "fine", "--out", str(tmp_path / "san.onnx")]
    assert main(san) == 1  # SAN bakes its own protocol; the families whose exports take one are named
    assert "ovss: error: --inference is a CAT-Seg and ToySeg option;" in capsys.readouterr().err


def test_the_inference_option_parser_reads_the_family_descriptor(toy_family_with_modes):
    """SegmentationModel's inference= parser (SAN's and CAT-Seg's) takes a family's title and modes
    from its descriptor: the toy's own modes pass, others are refused naming them."""
    from ovss.errors import ConfigError

    model = ToyModel(ToyConfig())
    assert model.label == "ToySeg" and model.inference_modes == TOY_MODES
    options = {"inference": "coarse"}
    assert model._mode(options) == "coarse" and options == {}
    with pytest.raises(ConfigError) as err:
        model._mode({"inference": "whole"})
    assert str(err.value) == "ToySeg inference='whole' is not one of ['fine', 'coarse']"
    with pytest.raises(ConfigError) as err:
        model._mode({"inference": "fine", "tiles": 2})
    assert str(err.value) == "unknown ToySeg option(s) ['tiles']; the only one is inference= (fine or coarse)"


def test_a_family_format_is_detected_through_its_descriptor_alone(monkeypatch):
    """A format named only by a family descriptor (no registry entry) is detected, converted and said
    to belong to that family."""
    from ovss.errors import CheckpointMismatchError
    from ovss.models import family as family_mod
    from ovss.weights import detect

    family_mod.families()  # the built-ins first
    monkeypatch.setattr(family_mod, "_REGISTRY", dict(family_mod._REGISTRY))
    family_mod.register_family(family_mod.Family(
        name="toyseg", title="ToySeg", config_class=ToyConfig, model_class=ToyModel,
        formats={OFFICIAL: __name__},
    ))
    # no registry entry of the toy family, whatever earlier tests of this process left behind
    monkeypatch.setattr(detect, "WEIGHTS", tuple(s for s in detect.WEIGHTS if s.family != "toyseg"))
    torch.manual_seed(0)
    ovss_layout = ToyModel(ToyConfig()).state_dict()
    official = {f"net.{k}": v for k, v in ovss_layout.items()}
    assert detect.model_formats()[OFFICIAL] == "toyseg"
    assert detect.identify(official) == detect.detect_format(official, family="toyseg") == OFFICIAL
    assert detect.convert_state_dict(OFFICIAL, official).keys() == ovss_layout.keys()
    with pytest.raises(CheckpointMismatchError) as err:
        detect.detect_format(official, family="san", what="toy.pth")
    assert str(err.value) == (
        f"toy.pth is {OFFICIAL} checkpoint (a ToySeg model), not a SAN checkpoint; pass a matching model name"
    )


def test_toy_family_trains_and_serves_in_the_demo(toy_family, tmp_path):
    from ovss.demo.backend import DemoBackend
    from ovss.demo.catalogue import inference_modes, option_visibility
    from ovss.demo.inputs import UploadGate
    from ovss.engine.recipes import load_config
    from ovss.engine.trainer import train
    from ovss.weights.cache import load_model

    images = _images(tmp_path / "data" / "images", count=4)
    (tmp_path / "data" / "labels").mkdir()
    for p in images.iterdir():
        label = np.zeros((40, 56), np.uint8)
        label[:, 28:] = 1
        Image.fromarray(label).save(tmp_path / "data" / "labels" / p.name)
    classes = tmp_path / "data" / "classes.txt"
    classes.write_text("cat\nwall\n")
    cfg = load_config("tiny-sed").override(
        'name="tiny-toyseg"', f'model.name="{NAME}"', "model.overrides=[]", "solver.iterations=2",
        "solver.batch_size=2", "eval.period=0", "checkpoint_period=2", "loss.bce_weights=[1.0]",
        f"data.root={json.dumps(str(tmp_path / 'data'))}", f"data.classes={json.dumps(str(classes))}",
    )
    result = train(cfg, tmp_path / "run")
    assert result["iteration"] == 2
    model, info = load_model(result["model"])
    assert type(model) is ToyModel and info["family"] == "toyseg"
    assert {n for n, _ in model.trainable_parameters()} == {
        "backbone.weight", "backbone.bias", "head.weight", "head.bias"}

    assert option_visibility("toyseg") == {"fast": False, "inference": False}
    assert inference_modes("toyseg") == ([], "")
    photo = next(images.iterdir())
    backend = DemoBackend(str(result["model"]), dtype="fp32", gate=UploadGate(examples=[photo]))
    output = backend.segment(str(photo), "cat; wall")
    assert backend.family(str(result["model"])) == "toyseg"
    labels = np.asarray(Image.open(output.label_file))
    assert labels.shape == (40, 56) and set(np.unique(labels)) <= {0, 1, 255}
    # the widgets of other families' options are ignored for it (the toy model refuses any option)
    other = backend.segment(str(photo), "cat; wall", fast=True, topk=3, inference="whole")
    assert np.array_equal(np.asarray(Image.open(other.label_file)), labels)


def test_every_family_has_one_training_contract():
    """freeze() returns the model, trainable_parameters() is the list of is_trainable's parameters."""
    from ovss.models.build import build_model
    from ovss.models.family import families
    from ovss.weights.registry import WEIGHTS

    for family in families():
        spec = next(s for s in WEIGHTS if s.family == family.name and s.source_format == "random")
        model = build_model(spec.config())
        for param in model.parameters():
            param.requires_grad_(True)
        assert model.freeze() is model, family.name
        pairs = model.trainable_parameters()
        assert isinstance(pairs, list) and pairs, family.name
        names = {n for n, _ in pairs}
        assert names == {n for n, p in model.named_parameters() if p.requires_grad}, family.name
        assert names == {n for n, _ in model.named_parameters() if model.is_trainable(n)}, family.name
        assert len(names) < len(list(model.parameters())), family.name  # something stays frozen


@pytest.mark.parametrize(
    ("name", "computed", "other"),
    [
        ("test-san-tiny", "d2", "mmseg"),
        ("test-catseg-tiny", "whole", "slide"),
        ("test-catseg-v1-tiny", "whole", "slide"),
    ],
)
def test_image_features_finish_only_with_their_own_inference_mode(name, computed, other):
    """The shared stage check: features of one inference mode are never finished with another."""
    import ovss
    from ovss.errors import ConfigError

    model = ovss.load(name, dtype="fp32").model
    images = torch.zeros(1, 3, 64, 64)
    features = model.image_stage(images, (64, 64), inference=computed)
    text = torch.zeros(2, 1, 8)
    with pytest.raises(ConfigError, match=rf"image features of inference='{computed}' cannot finish "
                       rf"inference='{other}'; compute them with the same options$"):
        next(model.text_stage(features, text, (64, 64), (64, 64), inference=other))


def test_sed_image_features_finish_only_with_their_own_fast_setting():
    """SED's image terms are batched per image under category early rejection: the stage check
    covers its ``fast=`` as it covers the other families' ``inference=``."""
    import ovss
    from ovss.errors import ConfigError

    model = ovss.load("test-sed-tiny", dtype="fp32").model
    images = torch.zeros(2, 3, 64, 64)
    features = model.image_stage(images, (64, 64), fast=True)
    from ovss.vocab.templates import get_templates

    text = torch.zeros(2, len(get_templates(model.config.templates)), model.config.clip.embed_dim)
    with pytest.raises(ConfigError, match=r"^SED image features of fast=True cannot finish fast=False; "):
        next(model.text_stage(features, text, (64, 64), (64, 64), fast=False))
    next(model.text_stage(features, text, (64, 64), (64, 64), fast=True))  # its own setting finishes
