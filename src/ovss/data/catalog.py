"""Catalog of the standard open-vocabulary segmentation benchmarks.

One frozen :class:`BenchmarkSpec` per benchmark says what `ovss prepare` writes and what the
evaluator reads: the prepared layout (relative to the data root given to ``ovss prepare --out``),
the number of classes in the ground truth, the ignore label, the expected number of validation
images and the class-name lists shipped in ``ovss/assets/classes``.

Class-name variants (``BenchmarkSpec.class_names(variant)``):

* ``"plain"``  -- one readable name per class (the first synonym of the SAN list, stripped); for
  legends and demos. Always available. ADE-847 has repeated plain names ("bag" three times).
* ``"san"``    -- the list SAN feeds to its templates (``register_*.py`` metadata; WordNet synonym
  lists such as ``"road, route"`` stay one string). Shipped for coco171, ade150, ade847, pc59,
  pc459, voc20.
* ``"catseg"`` -- the CAT-Seg/SED protocol JSONs, verbatim (``"bed "`` keeps its trailing space,
  PC-459 names have their spaces removed, ``voc20b`` has 59 names). Alias ``"sed"``. Shipped for
  coco171, ade150, ade847, pc59, pc459, voc20, voc20b.

A variant that is not shipped for a benchmark falls back to ``"plain"`` (e.g. ``voc21`` has no
official list in either repository); ``BenchmarkSpec.variants`` lists what is shipped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from ovss.errors import DatasetError

VARIANTS = ("plain", "san", "catseg")
"""Class-name variants understood by :meth:`BenchmarkSpec.class_names`."""

_VARIANT_ALIASES = {"sed": "catseg", "cat-seg": "catseg"}


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything ovss needs to know about one prepared benchmark (validation split)."""

    name: str  # registry key: "ade150", "pc459", ...
    display_name: str  # human name with the usual paper abbreviation
    num_classes: int  # ground-truth label ids are 0..num_classes-1 (plus ignore_index)
    ignore_index: int  # label value excluded from scoring: 255 (uint8 PNG) or 65535 (uint16 TIFF)
    image_dir: str  # prepared images, relative to the data root: "<name>/images/val"
    label_dir: str  # prepared label maps, relative to the data root: "<name>/labels/val"
    image_ext: str  # ".jpg"
    label_ext: str  # ".png" (uint8) or ".tif" (uint16)
    num_images: int  # expected number of validation images (one label map each)
    class_file: str  # stem of the class-name files in ovss/assets/classes
    label_dtype: str  # numpy dtype of the label maps: "uint8" | "uint16"
    raw_folder: str  # the official download folder `ovss prepare` reads, relative to --raw
    merge_from: int | None = None  # PAS-20b: predicted indices >= merge_from are scored as merge_from
    variants: tuple[str, ...] = ("plain",)  # class-name variants shipped for this benchmark
    extra_splits: tuple[tuple[str, int], ...] = ()  # other preparable splits and their image counts
    notes: str = ""  # one line on the conversion, shown by `ovss prepare --list`
    aliases: tuple[str, ...] = field(default=(), repr=False)  # other accepted names ("a-847", ...)

    @property
    def splits(self) -> dict[str, int]:
        """Preparable splits and their expected image counts; ``"val"`` is the benchmark."""
        return {"val": self.num_images, **dict(self.extra_splits)}

    def split_dirs(self, split: str = "val") -> tuple[str, str]:
        """(image_dir, label_dir) of ``split``, relative to the data root."""
        if split not in self.splits:
            raise DatasetError(f"{self.name} has no split {split!r}; valid splits: {', '.join(self.splits)}")
        return f"{self.name}/images/{split}", f"{self.name}/labels/{split}"

    def class_names(self, variant: str = "plain") -> list[str]:
        """Class names in label-id order (index = contiguous label id).

        Args:
            variant: "plain", "san" or "catseg" (alias "sed"); see the module docstring. A variant
                not shipped for this benchmark returns the plain list.

        Returns:
            A new list of strings (K entries; K = num_classes, except PAS-20b "catseg": 59).
        """
        key = _VARIANT_ALIASES.get(variant.lower(), variant.lower())
        if key not in VARIANTS:
            raise DatasetError(
                f"unknown class-name variant {variant!r}; valid variants: {', '.join(VARIANTS)}"
            )
        if key not in self.variants:
            key = "plain"
        return list(_load_names(self.class_file, key))


@cache
def _load_names(stem: str, variant: str) -> tuple[str, ...]:
    folder = resources.files("ovss") / "assets" / "classes"
    if variant == "plain":
        text = (folder / f"{stem}.txt").read_text(encoding="utf-8")
        return tuple(line for line in text.split("\n") if line)
    return tuple(json.loads((folder / f"{stem}.{variant}.json").read_text(encoding="utf-8")))


def _spec(
    name: str,
    display_name: str,
    num_classes: int,
    num_images: int,
    raw_folder: str,
    notes: str,
    aliases: tuple[str, ...],
    uint16: bool = False,
    variants: tuple[str, ...] = VARIANTS,
    **kw: Any,
) -> BenchmarkSpec:
    """One benchmark's spec: the prepared layout (``<name>/images/val``, ``<name>/labels/val``),
    label format (uint8 PNG with ignore 255, or uint16 TIFF with ignore 65535) and class file
    follow from ``name`` and ``uint16``; ``kw``: the optional :class:`BenchmarkSpec` fields."""
    return BenchmarkSpec(
        name=name,
        display_name=display_name,
        num_classes=num_classes,
        num_images=num_images,
        raw_folder=raw_folder,
        image_dir=f"{name}/images/val",
        label_dir=f"{name}/labels/val",
        image_ext=".jpg",
        label_ext=".tif" if uint16 else ".png",
        ignore_index=65535 if uint16 else 255,
        label_dtype="uint16" if uint16 else "uint8",
        class_file=name,
        variants=variants,
        notes=notes,
        aliases=aliases,
        **kw,
    )


BENCHMARKS: dict[str, BenchmarkSpec] = {
    s.name: s
    for s in (
        # name, display name, classes, validation images, raw folder (under --raw), notes, aliases
        _spec(
            "coco171", "COCO-Stuff-171", 171, 5000, "coco-stuff",
            "stuffthingmaps 0-based COCO ids (182) -> 171 contiguous ids, others 255",
            ("coco", "cocostuff", "coco-stuff", "coco-stuff-171"),
            extra_splits=(("train", 118287),),
        ),
        _spec(
            "ade150", "ADE20K-150 (A-150)", 150, 2000, "ADEChallengeData2016",
            "ADEChallengeData2016 labels - 1, 0 (other) -> 255",
            ("a-150", "a150", "ade20k", "ade20k-150", "ade-150"),
        ),
        _spec(
            "ade847", "ADE20K-847 (A-847)", 847, 2000, "ADE20K_2021_17_01",
            "ADE20K_2021_17_01 *_seg.png R/10*256+G -> 847 ids, short side > 512 resized to 512",
            ("a-847", "a847", "ade20k-847", "ade20k-full", "ade-847"),
            uint16=True,
        ),
        _spec(
            "pc59", "PASCAL Context-59 (PC-59)", 59, 5104, "VOCdevkit/VOC2010",
            "trainval/*.mat LabelMap -> 59 contiguous ids, background and the rest -> 255",
            ("pc-59", "pascal-context-59", "pascal-context", "pcontext"),
        ),
        _spec(
            "pc459", "PASCAL Context-459 (PC-459)", 459, 5104, "VOCdevkit/VOC2010",
            "trainval/*.mat LabelMap - 1 as uint16 TIFF", ("pc-459", "pascal-context-459", "pcontext-full"),
            uint16=True,
        ),
        _spec(
            "voc20", "PASCAL VOC-20 (PAS-20)", 20, 1449, "VOCdevkit/VOC2012",
            "VOC2012 val, label k -> k-1, background -> 255",
            ("pas-20", "pas20", "voc", "voc2012", "pascal-voc"),
        ),
        _spec(
            "voc20b", "PASCAL VOC-20b (PAS-20b)", 21, 1449, "VOCdevkit/VOC2012",
            "VOC2012 val, label k -> k-1, background -> 20; predictions >= 20 count as background",
            ("pas-20b", "pas20b"),
            merge_from=20,
            variants=("plain", "catseg"),
        ),
        _spec(
            "voc21", "PASCAL VOC-21 (PAS-21)", 21, 1449, "VOCdevkit/VOC2012",
            "VOC2012 val, labels as is: 0 = background, 1..20 objects", ("pas-21", "pas21", "voc-21"),
            variants=("plain",),
        ),
    )
}
"""All benchmarks by name."""

STANDARD = ("ade847", "pc459", "ade150", "pc59", "voc20")
"""The five zero-shot benchmarks of the standard protocol, in the usual table order."""

ALL = tuple(BENCHMARKS)
"""Every benchmark in the catalog (STANDARD plus voc20b, voc21 and the in-domain coco171)."""


def _normalise(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


_LOOKUP = {
    _normalise(alias): spec.name for spec in BENCHMARKS.values() for alias in (spec.name, *spec.aliases)
}


def get_benchmark(name: str) -> BenchmarkSpec:
    """Look a benchmark up by name or alias ("ade847", "A-847", "pas-20", ...).

    Raises:
        DatasetError: the name is unknown; the message lists the valid names.
    """
    key = _LOOKUP.get(_normalise(name))
    if key is None:
        raise DatasetError(f"unknown benchmark {name!r}; valid names: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key]


def list_benchmarks() -> list[str]:
    """Names of every benchmark in the catalog."""
    return list(BENCHMARKS)
