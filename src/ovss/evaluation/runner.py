"""Evaluate a Segmenter on a prepared benchmark: sharded across ranks, resumable, both mIoU conventions.

Per rank, the confusion matrix and the indices it covers are checkpointed atomically every
``save_every`` images (``state-rank<r>-of<w>.pt``) and per-image results are appended to
``images-rank<r>.jsonl``; a rerun with the same settings continues where it stopped. Ranks take
images ``r, r + w, r + 2w, ...``; their matrices are summed (all-reduce), so the result equals a
single-process run.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ovss.api.progress import ImageProgress
from ovss.data.catalog import get_benchmark
from ovss.distributed import rank_and_world
from ovss.errors import DatasetError
from ovss.evaluation.metrics import ConfusionMatrix, Convention
from ovss.utils import atomic_write, atomic_write_text

CONVENTIONS: tuple[Convention, ...] = ("detectron2", "mmseg")


def benchmark(name: str, data_root: str | Path, family: str) -> tuple[Any, list[str], int | None]:
    """(dataset, vocabulary, merge_from) of benchmark ``name`` with the class names ``family`` was
    evaluated with officially (its descriptor's ``class_variant``; ``plain`` for an unknown family)."""
    from ovss.data.datasets import BenchmarkDataset
    from ovss.models.family import find_family

    spec = get_benchmark(name)
    data = BenchmarkDataset(spec.name, data_root)
    descriptor = find_family(family)
    variant = descriptor.class_variant if descriptor is not None else "plain"
    return data, spec.class_names(variant), spec.merge_from


def evaluate(
    segmenter: Any,
    data: Any,
    out_dir: str | Path,
    classes: list[str] | None = None,
    merge_from: int | None = None,
    limit: int | None = None,
    save_every: int = 20,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any] | None:
    """Evaluate ``segmenter`` on a dataset (a prepared benchmark or a custom folder).

    Args:
        segmenter: an :class:`ovss.api.segmenter.Segmenter`.
        data: an :class:`ovss.data.datasets.SegmentationDataset` (``benchmark()`` or ``FolderDataset``).
        out_dir: folder for the resumable state and the reports (``<out_dir>/<data.name>/``).
        classes: the vocabulary given to the model (default: ``data.class_names``). It may be longer
            than the ground-truth classes when ``merge_from`` is set.
        merge_from: predicted indices >= this are scored as this one (PAS-20b's background classes).
        limit: evaluate only the first ``limit`` images (quick checks).
        save_every: checkpoint the confusion matrix every this many images per rank.
        options: model inference options (``inference="slide"``, ``fast=True, topk=8``).

    Returns:
        The report dict on rank 0 (None on other ranks): metrics per convention, per-class IoU.
    """
    classes = list(data.class_names if classes is None else classes)
    total = len(data) if limit is None else min(limit, len(data))
    rank, world = rank_and_world()
    folder = Path(out_dir) / data.name
    state_path = folder / f"state-rank{rank}-of{world}.pt"
    fingerprint = _fingerprint(segmenter, data, classes, total, world, options)
    matrix = ConfusionMatrix(data.num_classes, data.ignore_index)
    done = _resume(state_path, fingerprint, matrix, rank)
    todo = [i for i in range(rank, total, world) if i not in done]
    segmenter.set_vocabulary(classes)

    desc = f"{data.name} rank {rank}" if world > 1 else data.name
    bar = _progress(len(todo), len(done), desc, progress and rank == 0)
    log_path = folder / f"images-rank{rank}.jsonl"
    folder.mkdir(parents=True, exist_ok=True)
    passes = ImageProgress(enabled=progress and rank == 0)  # inside one slow image (TTA, slide)
    with open(log_path, "a", encoding="utf-8") as log:
        for n, index in enumerate(todo, 1):
            item = data[index]
            pred, gt = _predicted_label(segmenter, item, merge_from, passes, options), item["label"]
            matrix.update(pred, gt)
            done.add(index)
            log.write(json.dumps(_image_record(index, item["name"], pred, gt, data.ignore_index)) + "\n")
            if n % save_every == 0:
                log.flush()
                _save_state(state_path, fingerprint, matrix, done)
            bar.update(1)
    passes.close()
    bar.close()
    _save_state(state_path, fingerprint, matrix, done)
    matrix.all_reduce()
    if rank != 0:
        return None
    names = list(data.class_names)[: data.num_classes]
    report = build_report(matrix, names, data.name, fingerprint)
    write_report(report, folder)
    from ovss.evaluation.plots import write_eval_plots  # matplotlib only here, and only if installed

    write_eval_plots(report, matrix.matrix, folder)
    return report


def _fingerprint(
    segmenter: Any, data: Any, classes: list[str], total: int, world: int, options: dict[str, Any]
) -> dict[str, Any]:
    """What the results depend on; a resumed evaluation must match it (``_resume``)."""
    return {
        "model": segmenter.name,
        "weights": weights_digest(segmenter),
        "classes": _digest(json.dumps(classes)),
        "data": data_digest(data, total),
        "dataset": data.name,
        "total": total,
        "world": world,
        "options": {k: options[k] for k in sorted(options)},
        "dtype": str(segmenter.dtype),
    }


def _predicted_label(
    segmenter: Any, item: dict[str, Any], merge_from: int | None, passes: Any, options: dict[str, Any]
) -> np.ndarray:
    """The label map predicted for a dataset item (merged classes folded), checked against its label."""
    pred = segmenter.predict(item["image"], progress=passes, **options).label_map
    if merge_from is not None:  # PAS-20b: every extra (background) class scores as one
        pred = np.minimum(pred, merge_from)
    gt = item["label"]
    if pred.shape != gt.shape:
        raise DatasetError(f"{item['name']}: prediction {pred.shape} vs label {gt.shape}; corrupt dataset?")
    return pred


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(total=total + initial, initial=initial, desc=desc, unit="img", disable=not enabled)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def weights_digest(segmenter: Any) -> str:
    """What identifies the weights: the digest they were loaded with, else a hash of the state dict."""
    digest = getattr(segmenter, "digest", "")
    model = getattr(segmenter, "model", None)
    if digest or model is None:
        return digest
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode("utf-8"))
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_digest(data: Any, total: int) -> str:
    """Hash of the first ``total`` (image, label) pairs: resolved paths, sizes and modification times."""
    h = hashlib.sha256()
    for image, label in data.items[:total]:
        for path in (image, label):
            try:
                stat = Path(path).stat()
                facts = f"{Path(path).resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
            except OSError:
                facts = f"{path}|missing"
            h.update(facts.encode("utf-8") + b"\n")
    return h.hexdigest()[:16]


_WHAT = {"model": "model", "weights": "weights", "classes": "class list", "data": "data (files, sizes)",
         "dataset": "dataset", "total": "image count (--limit)", "world": "number of processes",
         "options": "inference options", "dtype": "--dtype"}


def _state_extent(state: dict[str, Any], fingerprint: dict[str, Any], rank: int) -> str:
    """"a finished evaluation (50 images)" or "a partial evaluation (20 of 50 images)" of a saved state."""
    done = len(state.get("done", ()))
    total, world = fingerprint.get("total"), fingerprint.get("world")
    if not isinstance(total, int) or not isinstance(world, int) or world < 1:
        return f"an evaluation ({done} images)"
    own = len(range(rank, total, world))  # this rank's share
    if done >= own:
        return f"a finished evaluation ({total} images)"
    return f"a partial evaluation ({done} of {own} images{' of this process' if world > 1 else ''})"


def _resume(path: Path, fingerprint: dict[str, Any], matrix: ConfusionMatrix, rank: int = 0) -> set[int]:
    if not path.is_file():
        return set()
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != json.dumps(fingerprint, sort_keys=True):
        try:
            old = json.loads(state.get("fingerprint", "{}"))
        except (TypeError, json.JSONDecodeError):
            old = {}
        changed = [_WHAT.get(k, k) for k in fingerprint if old.get(k) != fingerprint[k]] or ["settings"]
        raise DatasetError(
            f"{path.parent} holds {_state_extent(state, old, rank)} made with other {', '.join(changed)}; "
            f"pass another --out, or delete {path.parent} to start over"
        )
    matrix.load_state_dict(state["matrix"])
    return set(state["done"].tolist())


def _save_state(path: Path, fingerprint: dict[str, Any], matrix: ConfusionMatrix, done: set[int]) -> None:
    state = {
        "fingerprint": json.dumps(fingerprint, sort_keys=True),
        "matrix": matrix.state_dict(),
        "done": torch.tensor(sorted(done), dtype=torch.int64),
    }
    atomic_write(path, lambda p: torch.save(state, p))


def _image_record(index: int, name: str, pred: np.ndarray, gt: np.ndarray, ignore: int) -> dict[str, Any]:
    valid = gt != ignore
    correct = int(np.count_nonzero((pred == gt) & valid))
    labelled = int(np.count_nonzero(valid))
    return {
        "index": index,
        "name": name,
        "pixel_acc": correct / labelled if labelled else None,
        "gt_classes": np.unique(gt[valid]).tolist(),
        "pred_classes": np.unique(pred).tolist(),
    }


def build_report(
    matrix: ConfusionMatrix, class_names: list[str], dataset: str, fingerprint: dict[str, Any]
) -> dict[str, Any]:
    """Metrics of both conventions plus the run's settings."""
    report: dict[str, Any] = {
        "dataset": dataset,
        "images": matrix.num_images,
        "settings": fingerprint,
        "class_names": class_names,
    }
    for convention in CONVENTIONS:
        report[convention] = matrix.compute(convention)
    return report


def summary_rows(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, convention) with the four headline metrics."""
    rows = []
    for report in reports:
        for convention in CONVENTIONS:
            m = report[convention]
            rows.append(
                {
                    "dataset": report["dataset"],
                    "convention": convention,
                    "images": report["images"],
                    **{k: round(m[k], 2) for k in ("mIoU", "fwIoU", "mACC", "pACC")},
                }
            )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """Aligned text table of ``rows`` (dicts with equal keys)."""
    if not rows:
        return ""
    keys = list(rows[0])
    cells = [keys] + [[str(r[k]) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def write_report(report: dict[str, Any], folder: Path) -> None:
    """``metrics.json``, ``metrics.csv`` (headline) and ``per_class.csv`` into ``folder`` (atomic)."""
    atomic_write_text(folder / "metrics.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(folder / "metrics.csv", _csv(summary_rows([report])))
    per_class = []
    for k, name in enumerate(report["class_names"]):
        row: dict[str, Any] = {"index": k, "class": name}
        for convention in CONVENTIONS:
            for metric in ("IoU", "ACC"):
                value = report[convention][metric][k]
                row[f"{metric}_{convention}"] = "" if value is None else round(value, 4)
        per_class.append(row)
    atomic_write_text(folder / "per_class.csv", _csv(per_class))


def _csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
