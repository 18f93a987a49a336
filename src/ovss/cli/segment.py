"""ovss segment IMAGES... --classes "...": a resumable, shardable batch job over images.

Per image NAME it writes NAME_label.png (the class index of every pixel: an 8-bit palette PNG for
up to 256 classes, a 16-bit grayscale PNG above 256), NAME_overlay.png (colours + legend) and
NAME.json (source path, model, vocabulary, per-class fractions and peak scores); --outputs label
writes the label PNG only (the compact mode for large folders). --outputs scores adds
NAME_scores.npz (float16 per-class score maps), --outputs heatmaps one heat-map PNG per class (a
sheet above 16 classes). --min-score S leaves pixels whose best score is below S unlabelled (255).

A re-run with the same --out skips the images already done with the same model, vocabulary and
options whose outputs are intact (size and sha256 logged) and completes the rest (also after a
kill); a re-run with other settings stops and names them (--overwrite replaces the earlier
results); a second run into an --out in use stops at once (--wait: waits). Images that cannot be
read are listed at the end (exit status 1) without stopping the others. Inputs: files, folders
(--recursive: sub-folders too) and http(s) URLs. Shard over processes or GPUs with torchrun; each
rank takes a disjoint slice of the images:

    torchrun --nproc_per_node 4 -m ovss.cli.main segment photos/ --classes classes.txt \\
        --out labels/ --outputs label --device cuda
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ovss.api.tta import add_tta_arguments
from ovss.cli.common import (
    add_model_args,
    apply_inference_default,
    ensure_writable_dir,
    load_segmenter,
    model_options,
)
from ovss.cli.segment_inputs import IMAGE_EXTS, STATE_DIR, InputImage, collect_inputs, plan_names, shown
from ovss.cli.segment_runs import (
    OutputLock,
    file_entries,
    frame_options,
    on_rank0,
    outputs_intact,
    prepare_out,
    read_done,
    render_settings,
    settings_key,
)
from ovss.cli.video import add_video_arguments, run_video, video_inputs

OUTPUT_KINDS = ("label", "overlay", "json", "scores", "heatmaps")
READ_AHEAD = 2  # decoded images a reader thread holds ahead of the model (ovss.cli.pipeline)
WRITE_BEHIND = 2  # results waiting for the writer thread
__all__ = ["IMAGE_EXTS", "OUTPUT_KINDS", "STATE_DIR", "add_parser", "collect_inputs", "plan_names", "run"]


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
        help="image files, http(s) URLs, or folders whose images are taken (a folder skips ovss's "
        "own outputs and single-channel label PNGs named like a photo beside them); or local video "
        "files (.mp4, .mkv, ...: label and overlay videos, docs/video.md)",
    )
    p.add_argument(
        "--recursive",
        action="store_true",
        help="take the images of sub-folders too; outputs keep their relative paths (a/b/x.jpg -> "
        "OUT/a/b/x_label.png)",
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
        help="comma-separated outputs per image among label, overlay, json, scores (float16 .npz of "
        "the per-class score maps), heatmaps (a PNG per class; a sheet above 16 classes) (default: "
        "label,overlay,json); 'label' alone is the compact mode",
    )
    add_render_args(p)
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
        help="recompute images already done in --out (default: skip them); when --out holds results "
        "of other settings, delete those first",
    )
    p.add_argument(
        "--wait",
        action="store_true",
        help="when another run is using --out, wait for it to end (default: stop with an error)",
    )
    add_model_args(p)
    add_tta_arguments(p)
    add_video_arguments(p)
    p.set_defaults(run=run)


def add_render_args(p: argparse.ArgumentParser) -> None:
    """--min-score, --opacity, --palette and --no-labels (docs/visualize.md)."""
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="S",
        help="leave pixels whose best score is below S unlabelled (value 255 in the label PNG, 65535 "
        "above 255 classes; uncoloured in the overlay; 'unlabelled' in the JSON). Scores per family: "
        "CAT-Seg/SED sigmoid probabilities, SAN summed mask probabilities (docs/visualize.md)",
    )
    p.add_argument(
        "--opacity", type=float, default=None, help="opacity of the overlay colours, 0 to 1 (default: 0.55)"
    )
    p.add_argument(
        "--palette",
        default=None,
        metavar="NAME_OR_JSON",
        help="overlay colours: default, voc, hues, or a JSON file of colours (a list, or an object of "
        "class name -> colour); a class keeps its colour across images (default: default)",
    )
    p.add_argument(
        "--no-labels",
        dest="labels",
        action="store_false",
        help="do not write the class names on the overlay's regions (default: they are written)",
    )


# ----------------------------------------------------------------------------------------- state
def _run_key(
    seg: Any, vocab: Any, args: argparse.Namespace, outputs: tuple[str, ...], render: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """(short hash, settings) of what determines the outputs: model, weights, dtype, options, classes
    and ``render`` (:func:`render_settings` of ``args``).

    The settings are recorded in --out (``segment_runs``); an option that changes the outputs adds
    a key here, and a re-run with another value stops and names it.
    """
    from ovss.api.device import DTYPE_NAMES

    settings = {
        "model": seg.name,
        "digest": getattr(seg, "digest", ""),
        # "auto" resolved
        "dtype": DTYPE_NAMES.get(seg.dtype, args.dtype) if hasattr(seg, "dtype") else args.dtype,
        "options": model_options(args),
        "tta": str(getattr(args, "tta", None)),  # test-time augmentation changes the results
        "classes": [c.text for c in vocab.classes],
        "recursive": bool(args.recursive),  # the layout of the output tree
        "outputs": list(outputs),  # which files: may change between runs (FILE_CHOICE_KEYS)
    }
    if render:  # --min-score, --opacity, --palette, --no-labels change the outputs
        settings["render"] = render
    return settings_key(settings), settings


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


# ------------------------------------------------------------------------------------------- run
def run(args: argparse.Namespace) -> int:
    from ovss.distributed import distributed_session

    with distributed_session(args.device):  # torchrun: one group, always left (also on errors)
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from ovss.data.io import resolve_max_pixels
    from ovss.distributed import rank_and_world
    from ovss.errors import ConfigError, OutputPathError
    from ovss.vocab.vocabulary import parse_vocabulary

    videos = video_inputs(args.images)
    if videos is not None:  # ovss segment clip.mp4: its own path (ovss.cli.video)
        return run_video(args, videos)
    if args.every is not None:
        raise ConfigError("--every N applies to videos only (every N-th frame); remove it for images")
    outputs = _parse_outputs(args.outputs)
    # taken once per job (a --palette file is hashed once): a bad --opacity / --palette / --min-score
    # is one line before the model loads
    render = render_settings(args)
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = ensure_writable_dir(args.out)  # before the model loads: a bad --out costs nothing
    state = out / STATE_DIR
    if state.exists() and not state.is_dir():
        raise OutputPathError(f"{state} is a file, but ovss keeps its progress there; move it away")
    resolve_max_pixels(args.max_pixels)  # a bad $OVSS_MAX_PIXELS fails now, not per image
    inputs, skipped = collect_inputs(args.images, out, recursive=args.recursive)
    vocab = parse_vocabulary(args.classes)  # a bad vocabulary fails before the model loads
    rank, world = rank_and_world()
    # --out belongs to one run at a time; rank 0 holds the lock for all ranks of this run
    lock = on_rank0(lambda: OutputLock(state).acquire(out, wait=args.wait), rank, world)
    try:
        return _run_locked(args, inputs, skipped, vocab, outputs, render, out, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(
    args: argparse.Namespace,
    inputs: list[InputImage],
    skipped: list[Path],
    vocab: Any,
    outputs: tuple[str, ...],
    render: dict[str, Any],
    out: Path,
    rank: int,
    world: int,
) -> int:
    from ovss.distributed import barrier
    from ovss.utils import remove_stale_temp_files

    state = out / STATE_DIR
    seg = load_segmenter(args)
    apply_inference_default(args, seg.model.config, "segment")  # CAT-Seg: whole (see models/catseg.py)
    seg.max_pixels = args.max_pixels
    seg.set_vocabulary(vocab)
    key, settings = _run_key(seg, vocab, args, outputs, render)
    status = on_rank0(lambda: prepare_out(out, state, settings, args.overwrite), rank, world)
    if status == "replaced":
        print(f"--overwrite: deleted the results of other settings in {out}")
    done = read_done(state)
    barrier()  # every rank has read the same state before anyone writes
    sources = [x.source for x in inputs]
    names = plan_names(sources, {s: r["name"] for s, r in done.items()}, [x.stem for x in inputs])
    if rank == 0:
        for folder in sorted({(out / n).parent for n in names} | {out}):  # --recursive: sub-folders too
            remove_stale_temp_files(folder)
        remove_stale_temp_files(state)
    mine = [i for i in range(rank, len(inputs), world)]
    todo, damaged = [], 0
    for i in mine:
        record = done.get(sources[i])
        if args.overwrite or record is None or record["key"] != key:
            todo.append(i)
        elif not outputs_intact(out, record, outputs):
            todo.append(i)
            logged = record.get("files")  # not a dict: an older ovss, no digests to check
            damaged += isinstance(logged, dict) and set(outputs) <= set(logged)  # not just new kinds
    _tell_skipped(rank, skipped, len(mine), len(todo), damaged, out)
    failures = _SegmentJob(seg, args, out, outputs, render, key, rank).run(inputs, names, vocab, todo)
    return _report(failures, len(todo), len(mine) - len(todo), out, rank, world)


def _tell_skipped(rank: int, skipped: list[Path], mine: int, todo: int, damaged: int, out: Path) -> None:
    if rank != 0:
        return
    if skipped:
        print(
            f"skipped {len(skipped)} ovss output(s)/label map(s) in the input folder(s), "
            f"e.g. {shown(skipped[0])}"
        )
    if todo < mine:
        print(
            f"{mine - todo} of {mine} image(s) already done in {shown(out)} with the same model, "
            "vocabulary and options: skipped (--overwrite recomputes them)"
        )
    if damaged:
        print(f"{damaged} image(s) done earlier have outputs that are missing, truncated or changed: redone")


def _predict_options(
    seg: Any, args: argparse.Namespace, outputs: tuple[str, ...], out: Path, render: dict[str, Any]
) -> dict[str, Any]:
    """The ``predict`` arguments of the command line: model options, --tta, the --min-score of
    ``render`` (:func:`render_settings`) and, for the scores / heatmaps outputs, ``return_scores`` (the
    maps kept on disk in ``out``, not in RAM)."""
    options = frame_options(args, render)
    if "scores" in outputs or "heatmaps" in outputs:
        options["return_scores"] = True  # the (K, H, W) map of return_scores=True, written class by class
        seg.scores_dir = out  # kept in a nameless float16 temporary file there, not in RAM
    return options


class _SegmentJob:
    """One rank's pass over its images: segment each, save its result at once (on a writer thread)
    and log it with the size and sha256 of every file written; images that cannot be read or that
    the model refuses are collected in ``failures``.

    Args:
        seg: the loaded segmenter (its vocabulary set).
        args: the command line (``--batch-size``, ``--max-pixels`` and the render options).
        out: the output folder; ``outputs``: the kinds of files written per image.
        render: the job's render settings (:func:`render_settings`, taken once).
        key: the settings key recorded with each image (``_run_key``).
        rank: this process's rank (rank 0 shows the progress bars).
    """

    def __init__(
        self,
        seg: Any,
        args: argparse.Namespace,
        out: Path,
        outputs: tuple[str, ...],
        render: dict[str, Any],
        key: str,
        rank: int,
    ) -> None:
        self.seg, self.args, self.out, self.outputs, self.key, self.rank = seg, args, out, outputs, key, rank
        self.options = _predict_options(seg, args, outputs, out, render)
        self.draw = {k: render[k] for k in ("opacity", "palette", "labels") if k in render}
        self.failures: list[tuple[Path | str, str]] = []
        self.queue: deque[int] = deque()  # indices handed to predict_batch whose results are still due

    def run(
        self, inputs: list[InputImage], names: list[str], vocab: Any, todo: list[int]
    ) -> list[tuple[Path | str, str]]:
        """Segment ``todo`` (indices into ``inputs``, saved under ``names``); returns the failures."""
        from tqdm import tqdm

        from ovss.api.progress import ImageProgress
        from ovss.cli.pipeline import WriteBehind, read_ahead
        from ovss.data.io import read_image

        self.files = [x.src for x in inputs]
        self.sources = [x.source for x in inputs]
        self.names = names
        self.synonyms = [list(c.synonyms) for c in vocab.classes]
        self.bar = tqdm(total=len(todo), unit="img", disable=self.rank != 0 or len(todo) < 2)
        self.passes = ImageProgress(enabled=self.rank == 0)  # inside one slow image: TTA passes, blocks
        state = self.out / STATE_DIR
        state.mkdir(parents=True, exist_ok=True)
        self.log = open(state / f"done-rank{self.rank}.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        # decoded by a reader thread, a few images ahead; shared by every pass, so a pass resumes where
        # the last one stopped
        max_pixels = self.args.max_pixels
        remaining = read_ahead(todo, lambda i: read_image(self.files[i], max_pixels), depth=READ_AHEAD)
        writer = WriteBehind(depth=WRITE_BEHIND)  # saves results on a writer thread, in order
        try:
            self._predict_all(remaining, writer)
            writer.close()
        finally:
            writer.close(cancel=True)  # after an error or Ctrl-C: the running write ends, the rest dropped
            remaining.close()
            self.log.close()
            self.passes.close()
            self.bar.close()
        return self.failures

    def _predict_all(self, remaining: Iterator[tuple[int, Any, Exception | None]], writer: Any) -> None:
        """Run the model over ``remaining`` in batches and hand each result to ``writer``."""
        from ovss.errors import OvssError

        results = self._batches(remaining)
        while True:
            try:
                result = next(results)
            except StopIteration:
                return
            except OvssError:
                # The model refused an image of the batch in flight (e.g. too elongated): redo the
                # images read but not finished one at a time to tell which, then go on.
                self._retry_singly(writer)
                results = self._batches(remaining)
                continue
            # a write error stops the job
            writer.submit(functools.partial(self._finish, self.queue.popleft(), result))

    def _batches(self, remaining: Iterator[tuple[int, Any, Exception | None]]) -> Iterator[Any]:
        return self.seg.predict_batch(
            self._readable(remaining), batch_size=self.args.batch_size, progress=self.passes, **self.options
        )

    def _readable(self, remaining: Iterator[tuple[int, Any, Exception | None]]) -> Iterator[Any]:
        """The decoded images of ``remaining``; an unreadable one is noted as a failure and skipped."""
        from ovss.errors import OvssError

        for i, rgb, error in remaining:
            if error is not None:
                if not isinstance(error, OvssError):
                    raise error
                self._fail(i, error)  # unreadable: note it and go on
                continue
            self.queue.append(i)
            yield rgb

    def _retry_singly(self, writer: Any) -> None:
        """Segment the images of the refused batch one at a time; the refused ones become failures."""
        from ovss.data.io import read_image
        from ovss.errors import OvssError

        retry = list(self.queue)
        self.queue.clear()
        for i in retry:
            try:
                rgb = read_image(self.files[i], self.args.max_pixels)
                single = self.seg.predict(rgb, progress=self.passes, **self.options)
            except OvssError as e:
                self._fail(i, e)
                continue
            writer.submit(functools.partial(self._finish, i, single))

    def _fail(self, i: int, error: Exception) -> None:
        self.failures.append((self.files[i], str(error)))
        self.bar.update(1)

    def _finish(self, i: int, result: Any) -> None:
        """Save image ``i``'s result and log it as done (on the writer thread, pipeline.WriteBehind)."""
        from tqdm import tqdm

        from ovss.errors import OutputPathError

        result.source = self.sources[i]
        result.vocabulary = self.synonyms
        try:
            saved = result.save(self.out, self.names[i], self.outputs, **self.draw)
            files_written = file_entries(self.out, saved)  # read back: what is on disk is what is recorded
        except OSError as e:  # disk full, folder removed or made read-only meanwhile: stop, one line
            raise OutputPathError(
                f"cannot write the results of {shown(self.files[i])} into {self.out}: {e.strerror or e}; "
                "free space or fix the folder, then re-run the same command to finish"
            ) from None
        record = {
            "source": self.sources[i],
            "name": self.names[i],
            "key": self.key,
            "outputs": list(self.outputs),
            "files": files_written,
        }
        # ASCII JSON: a non-UTF-8 file name (a lone surrogate in Python) is written as \\udcXX and read back
        self.log.write(json.dumps({**record, "t": time.time()}, ensure_ascii=True) + "\n")
        self.log.flush()  # the image counts as done only once all its outputs are in place
        top = ", ".join(f"{n} {100 * f:.0f}%" for n, f in result.present()[:5])
        tqdm.write(f"{shown(self.files[i])}: {top}")
        self.bar.update(1)


def _report(
    failures: list[tuple[Path | str, str]], attempted: int, already: int, out: Path, rank: int, world: int
) -> int:
    """Print the failures (every rank its own) and the totals (rank 0); 1 when any image failed."""
    from ovss.distributed import all_gather_object

    for path, message in failures:
        print(f"ovss: failed: {shown(path)}: {shown(message)}", file=sys.stderr)
    counts = all_gather_object((attempted, len(failures), already))  # collective
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
