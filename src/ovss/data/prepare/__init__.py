"""`ovss prepare`: turn the official benchmark downloads into the layout the catalog describes.

    from ovss.data.prepare import prepare
    report = prepare("ade150", raw=Path("/data/raw"), out=Path("/data/ovss"), workers=8)
    print(report.summary())

``raw`` is the folder holding the extracted official downloads under their usual names
(``ADEChallengeData2016/``, ``ADE20K_2021_17_01/``, ``coco-stuff/``, ``VOCdevkit/VOC2010/``,
``VOCdevkit/VOC2012/``) or one of those folders itself. Outputs go to
``<out>/<name>/images/<split>/<stem>.jpg`` and ``<out>/<name>/labels/<split>/<stem>.png|.tif``
(``BenchmarkSpec.split_dirs``). See docs/datasets.md for the downloads and image counts.

Properties:

* idempotent: every file is written atomically, pairs that already exist are skipped, so a
  second run does nothing and an interrupted run resumes;
* parallel: ``workers`` processes (``workers <= 1`` converts in this process);
* checked: the number of raw images found must equal the catalog count before anything is
  converted (``check_counts=False`` accepts partial or synthetic data; the report still gives
  ``found`` and ``expected``), and every expected output must exist afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ovss.data.catalog import BenchmarkSpec, get_benchmark
from ovss.data.prepare._common import PrepareReport

__all__ = ["PrepareReport", "prepare"]

_Converter = Callable[[BenchmarkSpec, Path, Path, str, int, bool, bool], PrepareReport]


def _converter(name: str) -> _Converter:
    if name == "coco171":
        from ovss.data.prepare.coco import prepare_coco

        return prepare_coco
    if name == "ade150":
        from ovss.data.prepare.ade import prepare_ade150

        return prepare_ade150
    if name == "ade847":
        from ovss.data.prepare.ade import prepare_ade847

        return prepare_ade847
    if name in ("pc59", "pc459"):
        from ovss.data.prepare.pcontext import prepare_pcontext

        return prepare_pcontext
    from ovss.data.prepare.voc import prepare_voc  # voc20, voc20b, voc21

    return prepare_voc


def prepare(
    name: str,
    raw: Path,
    out: Path,
    workers: int = 2,
    progress: bool = True,
    split: str = "val",
    check_counts: bool = True,
) -> PrepareReport:
    """Prepare one benchmark split from its official download.

    Args:
        name: benchmark name or alias (``ovss.data.catalog.BENCHMARKS``).
        raw: folder with the extracted official downloads (see the module docstring).
        out: data root; outputs go to ``out/<name>/{images,labels}/<split>/``.
        workers: conversion processes; ``<= 1`` runs in this process.
        progress: show a tqdm progress bar.
        split: ``"val"`` (the benchmark); ``"train"`` exists for coco171 only.
        check_counts: require the catalog's image count (disable for partial/synthetic data).

    Returns:
        A PrepareReport (counts of written / already present / dropped images).

    Raises:
        DatasetError: unknown name or split, raw files missing (the message names the expected
            path and the download), or a count mismatch.
    """
    spec = get_benchmark(name)
    spec.split_dirs(split)  # validates the split
    convert = _converter(spec.name)
    return convert(spec, Path(raw), Path(out), split, int(workers), bool(progress), bool(check_counts))
