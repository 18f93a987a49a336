"""ovss segment IMAGES... --classes "...": a resumable, shardable batch job over images.

Per image NAME it writes NAME_label.png (the class index of every pixel: an 8-bit palette PNG for
up to 256 classes, a 16-bit grayscale PNG above 256), NAME_overlay.png (colours + legend) and
NAME.json (source path, model, vocabulary, per-class fractions and peak scores); --outputs label
writes the label PNG only (the compact mode for large folders).

A re-run with the same --out skips the images already done with the same model, vocabulary and
options and completes the rest (also after a kill); images that cannot be read are listed at the
end (exit status 1) without stopping the others. Shard over processes or GPUs with torchrun; each
rank takes a disjoint slice of the images:

    torchrun --nproc_per_node 4 -m ovss.cli.main segment photos/ --classes classes.txt \\
        --out labels/ --outputs label --device cuda
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovss.api.tta import add_tta_arguments
from ovss.cli.common import add_model_args, ensure_writable_dir, load_segmenter, model_options

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
OUTPUT_KINDS = ("label", "overlay", "json")
STATE_DIR = ".ovss-segment"  # inside --out: done-rank<r>.jsonl logs and run-<key>.json settings
_OWN_SUFFIXES = ("_label.png", "_overlay.png")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "segment",
        help="segment images or folders with a vocabulary of class names (resumable batch job)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog='example: ovss segment photo.jpg --classes "cat; sofa, couch; wall" --out out/',
    )
    p.add_argument(
        "images",
        nargs="+",
        type=Path,
        help="image files, or folders whose images are taken (not recursive; a folder skips ovss's "
        "own outputs and single-channel label PNGs named like a photo beside them)",
    )
    p.add_argument(
        "--classes",
        required=True,
        help='class names: "cat; sofa, couch; wall" (; between classes, , between synonyms), '
        "a JSON list or a text file with one class per line",
    )
    p.add_argument("--out", type=Path, default=Path("ovss_out"), help="output folder (default: ovss_out)")
    p.add_argument(
        "--outputs",
        default="label,overlay,json",
        help="comma-separated outputs per image among label, overlay, json (default: "
        "label,overlay,json); 'label' alone is the compact mode",
    )
    p.add_argument(
        "--batch-size", type=int, default=1, help="images of one size per forward pass (default: 1)"
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        default=None,
        help="refuse larger images (default: $OVSS_MAX_PIXELS or 100000000; 0 = no limit)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="recompute images already done in --out (default: skip them)",
    )
    add_model_args(p)
    add_tta_arguments(p)
    p.set_defaults(run=run)


# ---------------------------------------------------------------------------------------- inputs
def _is_label_png(path: Path) -> bool:
    """A single-channel PNG (palette, grey, 16-bit): the layout of label maps."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")
    except Exception:  # unreadable: not skipped, it will be reported like any bad image
        return False


def _folder_images(folder: Path, out: Path) -> tuple[list[Path], list[Path]]:
    """(images, skipped) of one folder: skips ovss outputs and label PNGs beside their photos."""
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and not p.is_dir())
    own = (folder / STATE_DIR).is_dir() or folder.resolve() == out.resolve()
    stems = {p.stem.casefold() for p in found if p.suffix.lower() != ".png"}
    images, skipped = [], []
    for p in found:
        is_output = own and p.name.endswith(_OWN_SUFFIXES)
        is_label = p.suffix.lower() == ".png" and p.stem.casefold() in stems and _is_label_png(p)
        (skipped if is_output or is_label else images).append(p)
    return images, skipped


def collect_inputs(paths: list[Path], out: Path) -> tuple[list[Path], list[Path]]:
    """Expand folders; drop repeats of the same file. Returns (images, skipped files).

    Raises:
        ImageReadError: a path does not exist, or a folder holds no images.
    """
    from ovss.errors import ImageReadError

    files: list[Path] = []
    skipped: list[Path] = []
    for path in paths:
        if path.is_dir():
            images, skip = _folder_images(path, out)
            if not images:
                raise ImageReadError(
                    f"folder {path} contains no images ({', '.join(IMAGE_EXTS)})"
                    + (f"; {len(skip)} ovss output(s)/label map(s) skipped" if skip else "")
                )
            files.extend(images)
            skipped.extend(skip)
        elif path.exists() or path.is_symlink():
            files.append(path)
        else:
            raise ImageReadError(f"image {path} does not exist; check the path")
    unique: dict[str, Path] = {}
    for f in files:
        unique.setdefault(str(f.resolve()), f)
    return list(unique.values()), skipped


def plan_names(sources: list[str], pinned: dict[str, str]) -> list[str]:
    """Output name per source, unique (case-insensitively) against every name of the run.

    ``pinned`` (source -> name, from earlier runs into the same --out) keeps those names; the other
    sources get their file stem when it is free, else ``<stem>_<n>`` with the smallest free n.
    The result depends only on the inputs and ``pinned``, so every rank and every re-run agrees.
    """
    taken = {name.casefold() for name in pinned.values()}
    names: list[str | None] = [pinned.get(s) for s in sources]
    for i, source in enumerate(sources):
        stem = Path(source).stem
        if names[i] is None and stem.casefold() not in taken:
            names[i] = stem
            taken.add(stem.casefold())
    for i, source in enumerate(sources):
        if names[i] is None:
            stem, n = Path(source).stem, 1
            while f"{stem}_{n}".casefold() in taken:
                n += 1
            names[i] = f"{stem}_{n}"
            taken.add(names[i].casefold())
    return [n for n in names if n is not None]


# ----------------------------------------------------------------------------------------- state
def _read_done(state: Path) -> dict[str, dict[str, Any]]:
    """source -> latest done record of every earlier run (records of killed writes are skipped)."""
    latest: dict[str, dict[str, Any]] = {}
    for log in sorted(state.glob("done-rank*.jsonl")):
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    source, t = record["source"], float(record["t"])
                    str(record["name"]), str(record["key"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a kill, or not ours
                if source not in latest or t >= float(latest[source]["t"]):
                    latest[source] = record
    return latest


def _run_key(seg: Any, vocab: Any, args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """(short hash, settings) of what determines the results: model, weights, dtype, options, classes."""
    import hashlib

    from ovss.api.segmenter import DTYPE_NAMES

    settings = {
        "model": seg.name,
        "digest": getattr(seg, "digest", ""),
        "dtype": DTYPE_NAMES.get(getattr(seg, "dtype", None), args.dtype),  # "auto" resolved
        "options": model_options(args),
        "tta": str(getattr(args, "tta", None)),  # test-time augmentation changes the results
        "classes": [c.text for c in vocab.classes],
    }
    blob = json.dumps(settings, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16], settings


def _parse_outputs(text: str) -> tuple[str, ...]:
    from ovss.errors import ConfigError

    chosen = [o.strip() for o in text.split(",") if o.strip()]
    bad = [o for o in chosen if o not in OUTPUT_KINDS]
    if bad or not chosen:
        raise ConfigError(
            f"--outputs {text!r}: choose one or more of {', '.join(OUTPUT_KINDS)} separated by commas "
            "(e.g. --outputs label)"
        )
    return tuple(o for o in OUTPUT_KINDS if o in chosen)


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from ovss.api.result import SegmentationResult
    from ovss.data.io import resolve_max_pixels
    from ovss.errors import ConfigError, OutputPathError
    from ovss.evaluation.runner import init_distributed_from_env, rank_and_world
    from ovss.models.build import family_of
    from ovss.utils import atomic_write_text, remove_stale_temp_files
    from ovss.vocab.vocabulary import parse_vocabulary

    outputs = _parse_outputs(args.outputs)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = ensure_writable_dir(args.out)  # before the model loads: a bad --out costs nothing
    state = out / STATE_DIR
    if state.exists() and not state.is_dir():
        raise OutputPathError(f"{state} is a file, but ovss keeps its progress there; move it away")
    resolve_max_pixels(args.max_pixels)  # a bad $OVSS_MAX_PIXELS fails now, not per image
    files, skipped = collect_inputs(args.images, out)
    vocab = parse_vocabulary(args.classes)  # a bad vocabulary fails before the model loads
    init_distributed_from_env()
    rank, world = rank_and_world()
    seg = load_segmenter(args)
    if args.inference is None and family_of(seg.model.config) == "catseg":
        # labelling default: one whole-image pass (the official demo's and yaml's mode, aspect ratio
        # kept, 4-5x faster); slide, the official evaluation protocol, stays ovss eval's default
        args.inference = "whole"
    seg.max_pixels = args.max_pixels
    seg.set_vocabulary(vocab)
    key, settings = _run_key(seg, vocab, args)

    sources = [str(f.resolve()) for f in files]
    if rank == 0:
        state.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(out)
        remove_stale_temp_files(state)
        atomic_write_text(state / f"run-{key}.json", json.dumps(settings, indent=2) + "\n")
    done = _read_done(state) if state.is_dir() else {}
    _barrier()  # every rank has read the same state before anyone writes
    names = plan_names(sources, {s: r["name"] for s, r in done.items()})

    def complete(i: int) -> bool:
        record = done.get(sources[i])
        if args.overwrite or record is None or record["key"] != key:
            return False
        paths = SegmentationResult.output_paths(out, names[i])
        return all(paths[o].is_file() for o in outputs)

    mine = [i for i in range(rank, len(files), world)]
    todo = [i for i in mine if not complete(i)]
    if rank == 0:
        if skipped:
            print(
                f"skipped {len(skipped)} ovss output(s)/label map(s) in the input folder(s), "
                f"e.g. {skipped[0]}"
            )
        if len(todo) < len(mine):
            print(
                f"{len(mine) - len(todo)} of {len(mine)} image(s) already done in {out} with the same model, "
                "vocabulary and options: skipped (--overwrite recomputes them)"
            )
    failures = _segment(seg, vocab, files, sources, names, todo, out, outputs, state, rank, key, args)
    return _report(failures, len(todo), len(mine) - len(todo), out, rank, world)


def _segment(
    seg: Any,
    vocab: Any,
    files: list[Path],
    sources: list[str],
    names: list[str],
    todo: list[int],
    out: Path,
    outputs: tuple[str, ...],
    state: Path,
    rank: int,
    key: str,
    args: argparse.Namespace,
) -> list[tuple[Path, str]]:
    """Segment ``todo`` (indices into files), save each result at once, log it; returns failures."""
    from tqdm import tqdm

    from ovss.data.io import read_image
    from ovss.errors import OutputPathError, OvssError

    synonyms = [list(c.synonyms) for c in vocab.classes]
    failures: list[tuple[Path, str]] = []
    queue: deque[int] = deque()  # indices handed to predict_batch whose results are still due
    options = model_options(args)
    if getattr(args, "tta", None):  # ovss segment --tta (Segmenter.predict's tta=)
        options["tta"] = args.tta
    bar = tqdm(total=len(todo), unit="img", disable=rank != 0 or len(todo) < 2)
    state.mkdir(parents=True, exist_ok=True)
    log = open(state / f"done-rank{rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115

    def fail(i: int, error: Exception) -> None:
        failures.append((files[i], str(error)))
        bar.update(1)

    def finish(i: int, result: Any) -> None:
        result.source = sources[i]
        result.vocabulary = synonyms
        try:
            result.save(out, names[i], outputs)
        except OSError as e:  # disk full, folder removed or made read-only meanwhile: stop, one line
            raise OutputPathError(
                f"cannot write the results of {files[i]} into {out}: {e.strerror or e}; free space or fix "
                "the folder, then re-run the same command to finish"
            ) from None
        record = {"source": sources[i], "name": names[i], "key": key, "outputs": list(outputs)}
        log.write(json.dumps({**record, "t": time.time()}, ensure_ascii=False) + "\n")
        log.flush()  # the image counts as done only once all its outputs are in place
        top = ", ".join(f"{n} {100 * f:.0f}%" for n, f in result.present()[:5])
        tqdm.write(f"{files[i]}: {top}")
        bar.update(1)

    remaining = iter(todo)  # shared by every pass, so a pass resumes where the last one stopped

    def readable() -> Iterator[Any]:
        for i in remaining:
            try:
                rgb = read_image(files[i], args.max_pixels)
            except OvssError as e:  # unreadable: note it and go on
                fail(i, e)
                continue
            queue.append(i)
            yield rgb

    def batches() -> Iterator[Any]:
        return seg.predict_batch(readable(), batch_size=args.batch_size, **options)

    try:
        results = batches()
        while True:
            try:
                result = next(results)
            except StopIteration:
                break
            except OvssError:
                # The model refused an image of the batch in flight (e.g. too elongated): redo the
                # images read but not finished one at a time to tell which, then go on.
                retry = list(queue)
                queue.clear()
                for i in retry:
                    try:
                        single = seg.predict(read_image(files[i], args.max_pixels), **options)
                    except OvssError as e:
                        fail(i, e)
                        continue
                    finish(i, single)
                results = batches()
                continue
            finish(queue.popleft(), result)  # outside the try: a write error stops the job
    finally:
        log.close()
        bar.close()
    return failures


def _report(
    failures: list[tuple[Path, str]], attempted: int, already: int, out: Path, rank: int, world: int
) -> int:
    """Print the failures (every rank its own) and the totals (rank 0); 1 when any image failed."""
    import torch.distributed as dist

    for path, message in failures:
        print(f"ovss: failed: {path}: {message}", file=sys.stderr)
    counts = [(attempted, len(failures), already)]
    if world > 1 and dist.is_available() and dist.is_initialized():
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, counts[0])
        counts = gathered
    total, failed, done = (sum(c[j] for c in counts) for j in range(3))
    if rank == 0:
        print(f"wrote {total - failed} result(s) to {out}" + (f" ({done} already done)" if done else ""))
        if failed:
            print(
                f"ovss: error: {failed} of {total} image(s) could not be segmented (listed above); "
                "fix or remove them and re-run the same command to finish",
                file=sys.stderr,
            )
    return 1 if failed else 0
