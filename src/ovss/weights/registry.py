"""Named pretrained weights, as data.

Each :class:`WeightSpec` says where a checkpoint comes from (hub repo and file, or a page to download
it by hand), its sha256 when pinned, its source format (which converter reads it), its licence and
origin, and which architecture config it fits. Names are ``family-backbone[.tag]``; the first tag is the
default. ``test-*`` entries are tiny random models built through the same code path, for tests and
offline demos.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ovss.errors import UnknownModelError

if TYPE_CHECKING:
    from ovss.models.base import ModelConfig


def _config(family: str, builder: str) -> Callable[[], ModelConfig]:
    """Lazy ``ovss.models.<family>.<builder>()`` (the model modules are imported on first use)."""

    def build() -> ModelConfig:
        return getattr(importlib.import_module(f"ovss.models.{family}"), builder)()

    return build


@dataclasses.dataclass(frozen=True)
class Published:
    """One published mIoU of a set of weights (shown on its model card, ``ovss models NAME``)."""

    benchmark: str  # benchmark name of ovss.data.catalog: "ade847", "pc459", "ade150", "pc59", "voc20", ...
    miou: float  # mIoU in percent, as published
    protocol: str = "single scale"  # "single scale" | "ms+flip" (multi-scale + flip test-time augmentation)
    source: str = ""  # where it is published: paper table, official README, official log
    note: str = ""  # anything needed to read the number (options, known discrepancies)


def published(
    source: str, protocol: str = "single scale", note: str = "", **miou: float
) -> tuple[Published, ...]:
    """Published results of one source as data: ``published("README", ade150=31.8, pc59=57.5)``."""
    return tuple(Published(b, v, protocol, source, note) for b, v in miou.items())


@dataclasses.dataclass(frozen=True)
class WeightSpec:
    """One named set of weights and the architecture it fits."""

    name: str  # registry name, e.g. "san-vit-b16" or "san-vit-b16.mmseg"
    family: str  # "san" | "catseg" | "sed"
    config: Callable[[], ModelConfig]  # builds the architecture config
    source_format: str  # converter in ovss.weights.formats ("san_d2", ...) or "random"
    description: str
    license: str
    origin: str  # code / paper of the weights
    hub_repo: str | None = None  # Hugging Face repo id
    hub_file: str | None = None  # file inside the repo
    hub_repo_type: str = "model"  # "model" | "space" | "dataset"
    manual_url: str | None = None  # where to download by hand when there is no hub copy
    url: str | None = None  # direct download URL when the weights are not on the hub (ovss.weights.urlfetch)
    sha256: str | None = None  # pinned digest of the source file (None: recorded on first download)
    seed: int = 0  # for "random" weights
    published: tuple[Published, ...] = ()  # published mIoU per benchmark and protocol (model card)
    citation: str = ""  # BibTeX of the paper to cite for these weights
    # parameters of the architecture (buffers excluded; ``ovss models``), as the model built from
    # ``config`` on the meta device has them (tests/weights/test_registry.py checks every entry); None:
    # counted when asked (``ovss.api.card.count_parameters``). A copy with another config resets it.
    parameters: int | None = None

    @property
    def downloadable(self) -> bool:
        return self.url is not None or (self.hub_repo is not None and self.hub_file is not None)


_SAN_ORIGIN = "Xu et al., Side Adapter Network, CVPR 2023; github.com/MendelXu/SAN"
_CATSEG_ORIGIN = "Cho et al., CAT-Seg, CVPR 2024; github.com/KU-CVLAB/CAT-Seg"
_CATSEG_V1_ORIGIN = "Cho et al., CAT-Seg arXiv 2303.11797 v1; github.com/cvlab-kaist/CAT-Seg before b0e9438"
_CATSEG_V1_PAGE = "https://github.com/cvlab-kaist/CAT-Seg/tree/af4fa0bc2bb6ad89f1606dcae08161cb0f5bc356#pretrained-models"
_CATSEG_MM_PAGE = (
    "https://github.com/open-mmlab/mmsegmentation/tree/main/projects/CAT-Seg (its README links are "
    "placeholders; use a checkpoint you trained with the port)"
)
_SAN_MM_URL = "https://download.openmmlab.com/mmsegmentation/v0.5/san/"
_SAN_MM_README = "mmsegmentation configs/san/README.md (COCO-Stuff164k table), mmseg IoUMetric"
_SAN_MM_NOTE = "mmseg test protocol (--inference mmseg, the default of the .mmseg weights)"
_SAN_MM_TTA = "mmseg test protocol with --tta: mmseg's ratios of the original image, mean of softmaxes"
_SED_ORIGIN = "Xie et al., SED, CVPR 2024; github.com/xb534/SED"
_SED_PAGE = "https://github.com/xb534/SED#models (Google Drive links in the README)"

_SAN_BIB = """@inproceedings{xu2023san,
  title     = {Side Adapter Network for Open-Vocabulary Semantic Segmentation},
  author    = {Xu, Mengde and Zhang, Zheng and Wei, Fangyun and Hu, Han and Bai, Xiang},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""
_CATSEG_BIB = """@inproceedings{cho2024catseg,
  title     = {CAT-Seg: Cost Aggregation for Open-Vocabulary Semantic Segmentation},
  author    = {Cho, Seokju and Shin, Heeseong and Hong, Sunghwan and Arnab, Anurag and Seo, Paul Hongsuck
               and Kim, Seungryong},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""
_CATSEG_V1_BIB = """@article{cho2023catseg,
  title   = {CAT-Seg: Cost Aggregation for Open-Vocabulary Semantic Segmentation},
  author  = {Cho, Seokju and Shin, Heeseong and Hong, Sunghwan and An, Seungjun and Lee, Seungjun
             and Arnab, Anurag and Seo, Paul Hongsuck and Kim, Seungryong},
  journal = {arXiv preprint arXiv:2303.11797 (v1)},
  year    = {2023}
}"""
_SED_BIB = """@inproceedings{xie2024sed,
  title     = {SED: A Simple Encoder-Decoder for Open-Vocabulary Semantic Segmentation},
  author    = {Xie, Bin and Cao, Jiale and Xie, Jin and Khan, Fahad Shahbaz and Pang, Yanwei},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2024}
}"""

# Published mIoU (%), zero-shot cross-dataset after training on COCO-Stuff-171 (in-domain: coco171).
_SAN_PAPER = "SAN paper (CVPR 2023), main results table"
_SAN_LOG = "official evaluation log of the released weights (MendelXu/SAN), detectron2 mIoU convention"
_PC459 = "the paper's PC-459 is lower than the log's, likely the older detectron2 mIoU averaging"
_SAN_B16_RESULTS = published(
    _SAN_PAPER, ade847=10.1, pc459=12.6, ade150=27.5, pc59=53.8, voc20=94.0
) + published(
    _SAN_LOG, coco171=41.93, ade847=10.21, ade150=27.56, pc59=54.07, voc20=93.95
) + published(_SAN_LOG, note=_PC459, pc459=16.71)
_SAN_L14_RESULTS = published(
    _SAN_PAPER, ade847=12.4, pc459=15.7, ade150=32.1, pc59=57.7, voc20=94.6, coco171=45.8
) + published(
    _SAN_LOG, coco171=45.57, ade847=12.96, ade150=31.93, pc59=57.53, voc20=95.18
) + published(_SAN_LOG, note=_PC459, pc459=20.83)
_CATSEG_SRC = "CAT-Seg paper (CVPR 2024) = official README (KU-CVLAB/CAT-Seg); sliding-window inference"
_CATSEG_V1_SRC = "CAT-Seg arXiv v1, main table"
_CATSEG_V1_FIX = "official README (A-847 after the 2023-03-29 fix of classes 640-846)"
_SED_SRC = "official README (xb534/SED)"
_SED_FAST = "with category early rejection: --fast --topk 8 (the paper's headline rows)"

_CATSEG_B16_RESULTS = published(
    _CATSEG_SRC, ade847=12.0, pc459=19.0, ade150=31.8, pc59=57.5, voc20=94.6, voc20b=77.3
)
_CATSEG_L14_RESULTS = published(
    _CATSEG_SRC, ade847=16.0, pc459=23.8, ade150=37.9, pc59=63.3, voc20=97.0, voc20b=82.5
)
_CATSEG_V1_B16_RESULTS = published(
    _CATSEG_V1_SRC, ade847=8.4, pc459=16.6, ade150=27.2, pc59=57.5, voc20=93.7, voc20b=78.3
) + published(_CATSEG_V1_FIX, ade847=8.9)
_CATSEG_V1_L14_RESULTS = published(
    _CATSEG_V1_SRC, ade847=10.8, pc459=20.4, ade150=31.5, pc59=62.0, voc20=96.6, voc20b=81.8
) + published(_CATSEG_V1_FIX, ade847=11.4)
_SED_B_RESULTS = published(
    _SED_SRC, ade847=11.2, pc459=18.6, ade150=31.8, pc59=57.7, voc20=94.4
) + published(_SED_SRC, note=_SED_FAST, ade847=11.4, pc459=18.6, ade150=31.6, pc59=57.3, voc20=94.4)
_SED_L_RESULTS = published(
    _SED_SRC, ade847=13.7, pc459=22.1, ade150=35.3, pc59=60.9, voc20=96.1
) + published(_SED_SRC, note=_SED_FAST, ade847=13.9, pc459=22.6, ade150=35.2, pc59=60.6, voc20=96.1)


def _release(family: str, **shared: Any) -> Callable[..., WeightSpec]:
    """The maker of one release's specs: ``family`` and the fields all its weights share (source
    format, licence, origin, citation, where to get them); each spec adds its name, config builder
    (a function of ``ovss.models.<family>``), description and own fields."""

    def spec(name: str, builder: str, description: str, **fields: Any) -> WeightSpec:
        config = _config(family, builder)
        fields = {**shared, **fields}
        return WeightSpec(name=name, family=family, config=config, description=description, **fields)

    return spec


def _san_mm(file: str, miou: float, miou_tta: float) -> dict[str, Any]:
    """An mmsegmentation SAN checkpoint: where it is (a page and the direct URL, the sha256 prefix in
    the file name, see urlfetch) and its published COCO-Stuff mIoU, single scale and ms+flip."""
    return {
        "manual_url": _SAN_MM_URL + file,
        "url": _SAN_MM_URL + file,
        "published": published(_SAN_MM_README, note=_SAN_MM_NOTE, coco171=miou)
        + published(_SAN_MM_README, "ms+flip", _SAN_MM_TTA, coco171=miou_tta),
    }


_san = _release("san", source_format="san_d2", license="MIT", origin=_SAN_ORIGIN, citation=_SAN_BIB)
_san_mmseg = _release(
    "san", source_format="san_mmseg", license="Apache-2.0", citation=_SAN_BIB,
    origin=_SAN_ORIGIN + "; open-mmlab/mmsegmentation configs/san",
)
_catseg = _release(
    "catseg", source_format="catseg_d2", license="MIT", origin=_CATSEG_ORIGIN, citation=_CATSEG_BIB,
    hub_repo="hamacojr/CAT-Seg-weights", hub_repo_type="space",
)
_catseg_v1 = _release(
    "catseg_v1", source_format="catseg_v1_d2", license="MIT", origin=_CATSEG_V1_ORIGIN,
    citation=_CATSEG_V1_BIB, manual_url=_CATSEG_V1_PAGE,
)
_catseg_mm = _release(
    "catseg_v1", source_format="catseg_mm", license="Apache-2.0", citation=_CATSEG_V1_BIB,
    origin=_CATSEG_V1_ORIGIN + "; open-mmlab/mmsegmentation projects/CAT-Seg", manual_url=_CATSEG_MM_PAGE,
)
_sed = _release(
    "sed", source_format="sed_d2", license="Apache-2.0", origin=_SED_ORIGIN, citation=_SED_BIB,
    manual_url=_SED_PAGE,
)
_COCO = "trained on COCO-Stuff-171"
_BY_HAND = "COCO-Stuff-171 (download by hand)"
_COCO_BY_HAND = f"{_COCO} (download by hand)"
_OWN = "(own keys; mmseg test protocol)"
_RENAMED = "(renamed keys; mmseg test protocol)"
_TINY = "for tests and offline demos"


def _tiny(family: str, name: str, builder: str, description: str, parameters: int) -> WeightSpec:
    """A tiny random model of ``family`` for tests and offline demos (built through the same code path)."""
    make = _release(family, source_format="random", license="Apache-2.0", origin="ovss")
    return make(name, builder, description, parameters=parameters)


WEIGHTS: tuple[WeightSpec, ...] = (
    _san(
        "san-vit-b16", "san_vit_b16", f"SAN, CLIP ViT-B/16, {_COCO} (official release)",
        hub_repo="Mendel192/san", hub_file="san_vit_b_16.pth", published=_SAN_B16_RESULTS,
        parameters=157_840_307,
    ),
    _san(
        "san-vit-l14", "san_vit_l14", f"SAN, CLIP ViT-L/14@336, {_COCO} (official release)",
        hub_repo="Mendel192/san", hub_file="san_vit_large_14.pth", published=_SAN_L14_RESULTS,
        parameters=436_674_995,
    ),
    _san_mmseg(
        "san-vit-b16.mmseg", "san_vit_b16_mmseg", f"SAN ViT-B/16 as released by mmsegmentation {_RENAMED}",
        **_san_mm("san-vit-b16_20230906-fd0a7684.pth", 41.93, 41.77),
        parameters=157_840_307,
    ),
    _san_mmseg(
        "san-vit-l14.mmseg", "san_vit_l14_mmseg", f"SAN ViT-L/14 as released by mmsegmentation {_RENAMED}",
        **_san_mm("san-vit-l14_20230907-a11e098f.pth", 45.78, 43.99),
        parameters=436_674_995,
    ),
    _catseg(
        "catseg-vit-b16", "catseg_vit_b16", f"CAT-Seg (CVPR 2024), CLIP ViT-B/16, {_COCO}",
        hub_file="model_base.pth", published=_CATSEG_B16_RESULTS,
        parameters=154_289_378,
    ),
    _catseg(
        "catseg-vit-l14", "catseg_vit_l14", f"CAT-Seg (CVPR 2024), CLIP ViT-L/14@336, {_COCO}",
        hub_file="model_large.pth", published=_CATSEG_L14_RESULTS,
        parameters=433_726_946,
    ),
    _catseg_v1(
        "catseg-v1-r101-vit-b16", "catseg_v1_r101_vit_b16",
        f"CAT-Seg arXiv-v1: CLIP ViT-B/16 + ResNet-101, {_BY_HAND}", published=_CATSEG_V1_B16_RESULTS,
        parameters=180_559_266,
    ),
    _catseg_mm(
        "catseg-v1-r101-vit-b16.mmseg", "catseg_v1_r101_vit_b16_mmseg",
        f"CAT-Seg v1 R-101 & ViT-B as ported by mmsegmentation {_OWN}",
        parameters=180_642_082,
    ),
    _catseg_v1(
        "catseg-v1-swinb-vit-l14", "catseg_v1_swinb_vit_l14",
        f"CAT-Seg arXiv-v1: CLIP ViT-L/14@336 + Swin-B, {_BY_HAND}", published=_CATSEG_V1_L14_RESULTS,
        parameters=490_331_674,
    ),
    _catseg_mm(
        "catseg-v1-swinb-vit-l14.mmseg", "catseg_v1_swinb_vit_l14_mmseg",
        f"CAT-Seg v1 Swin-B & ViT-L as ported by mmsegmentation {_OWN}",
        parameters=490_331_674,
    ),
    _sed(
        "sed-convnext-b", "sed_convnext_b", f"SED, ConvNeXt-B CLIP, {_COCO_BY_HAND}",
        published=_SED_B_RESULTS, parameters=180_761_741,
    ),
    _sed(
        "sed-convnext-l", "sed_convnext_l", f"SED, ConvNeXt-L CLIP, {_COCO_BY_HAND}",
        published=_SED_L_RESULTS, parameters=353_245_773,
    ),
    _tiny(
        "san", "test-san-tiny", "san_tiny", f"tiny random SAN {_TINY} (segments nothing meaningful)",
        2_092_019,
    ),
    _tiny(
        "san", "test-san-tiny.mmseg", "san_tiny_mmseg",
        "tiny random SAN with mmsegmentation's test protocol (as the .mmseg weights)", 2_092_019,
    ),
    _tiny("catseg", "test-catseg-tiny", "catseg_tiny", f"tiny random CAT-Seg {_TINY}", 2_467_698),
    _tiny(
        "catseg_v1", "test-catseg-v1-tiny", "catseg_v1_tiny",
        f"tiny random CAT-Seg v1 (R-101 depth, small widths) {_TINY}", 3_028_130,
    ),
    _tiny(
        "catseg_v1", "test-catseg-v1-tiny.mmseg", "catseg_v1_tiny_mmseg",
        "tiny random CAT-Seg v1 with the mmseg port's structure and test protocol", 2_736_034,
    ),
    _tiny("sed", "test-sed-tiny", "sed_tiny", f"tiny random SED {_TINY}", 1_256_245),
)

_BY_NAME = {spec.name: spec for spec in WEIGHTS}


def list_weights(include_test: bool = True) -> list[str]:
    """Registered weight names, in registry order."""
    return [s.name for s in WEIGHTS if include_test or not s.name.startswith("test-")]


def get_weight_spec(name: str) -> WeightSpec:
    """The spec registered as ``name`` (a bare family-backbone name picks its first tag).

    Raises:
        UnknownModelError: with the list of known names and the closest match.
    """
    if name in _BY_NAME:
        return _BY_NAME[name]
    close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise UnknownModelError(
        f"unknown model {name!r}{hint}; known: {', '.join(_BY_NAME)} (or pass a checkpoint path)"
    )
