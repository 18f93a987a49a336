"""``ovss segment`` over a folder: wall time per image against ``Segmenter.predict`` of the same model.

Per run (a real-size architecture with random weights, as bench_segment builds it), in one fresh
process: a folder of ``--photos`` JPEG photos (853 x 640 crops and mirrors of ../shared/data/quokka.jpg,
or noise when it is missing) is segmented by the real CLI code (``ovss segment DIR --classes <K names>
--out OUT``, all three outputs) with the model swapped in; the time is that of the job itself (read,
model, write; not the model load or the vocabulary). Interleaved with it, rounds of:

* ``predict``: ``Segmenter.predict`` of one decoded 640 x 853 photo (what bench_segment times);
* ``serial``: the same folder job with the read-ahead and write-behind replaced by in-line reading
  and writing (the code before ``ovss.cli.pipeline``).

``folder / model`` divides a job's wall time by the time its main thread spent in the model and the
reduction (``Segmenter._run``) during that same job: the cost of reading and writing that is not
hidden, measured under the same load (on a shared machine the load moves between the rounds).

    python -m bench.bench_folder                         # SAN and CAT-Seg whole, K = 20, fp32
    python -m bench.bench_folder --runs sed-convnext-b --rounds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_segment import REPO, parse_run

PHOTO = REPO.parent / "shared" / "data" / "quokka.jpg"
DEFAULT_RUNS = ["san-vit-b16", "catseg-vit-b16:inference=whole", "sed-convnext-b"]


def make_photos(folder: Path, n: int) -> None:
    """``n`` 853 x 640 JPEG photos: crops (and mirrors) of the quokka photo, or noise without it."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    base = Image.open(PHOTO).convert("RGB").resize((1000, 700)) if PHOTO.is_file() else None
    for i in range(n):
        if base is None:
            img = Image.fromarray(rng.integers(0, 256, (640, 853, 3), dtype=np.uint8))
        else:
            x, y = int(rng.integers(0, 1000 - 853)), int(rng.integers(0, 700 - 640))
            img = base.crop((x, y, x + 853, y + 640))
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img
        img.save(folder / f"photo_{i:02d}.jpg", quality=90)


class _Serial:
    """WriteBehind's interface, run in the caller's thread (the code before the pipeline)."""

    def __init__(self, depth: int = 0) -> None:
        pass

    def submit(self, job) -> None:
        job()

    def close(self, cancel: bool = False) -> None:
        pass


def _read_inline(keys, read, depth: int = 0):
    for key in keys:
        try:
            yield key, read(key), None
        except Exception as e:
            yield key, None, e


def child(spec: str, classes: int, dtype: str, args: argparse.Namespace) -> dict[str, object]:
    """Time one case in this process; returns its row."""
    import numpy as np
    import torch
    from PIL import Image

    import ovss.cli.pipeline as pipeline
    import ovss.cli.segment as segment_cli
    from bench.common import random_model
    from ovss.api.requery import ImageCache
    from ovss.api.segmenter import Segmenter
    from ovss.cli.main import main

    torch.set_num_threads(args.threads)
    name, options = parse_run(spec)
    seg = Segmenter(random_model(name), name=name, dtype=dtype)
    segment_cli.load_segmenter = lambda _args: seg  # the CLI runs this model (random weights)
    timed: dict[str, list[float]] = {"predict": [], "folder": [], "serial": []}
    real_segment = segment_cli._segment

    def timed_segment(*a, **k):
        start = time.perf_counter()
        try:
            return real_segment(*a, **k)
        finally:
            timed[mode].append(time.perf_counter() - start)

    segment_cli._segment = timed_segment
    # per job: seconds inside Segmenter._run (model + reduction); "predict" rounds are not jobs
    model_s: dict[str, list[float]] = {"folder": [], "serial": [], "predict": [0.0]}
    real_run = Segmenter._run

    def timed_run(self, *a, **k):
        it = real_run(self, *a, **k)
        while True:
            start = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                model_s[mode][-1] += time.perf_counter() - start
                return
            model_s[mode][-1] += time.perf_counter() - start
            yield item

    Segmenter._run = timed_run
    real_read, real_writer = pipeline.read_ahead, pipeline.WriteBehind
    tmp = Path(tempfile.mkdtemp(prefix="ovss_bench_folder_"))
    make_photos(tmp / "in", args.photos)
    photo = np.asarray(Image.open(tmp / "in" / "photo_00.jpg").convert("RGB"))
    names = "; ".join(f"class {i}" for i in range(classes))
    opts = [f"--inference={options['inference']}"] if "inference" in options else []
    seg.set_vocabulary(names)
    mode = "predict"
    seg.predict(photo, **options)  # warm-up (first-call costs), outside every timing
    for r in range(args.rounds):
        for mode in ("folder", "serial", "predict"):
            if mode == "predict":
                seg.image_cache = ImageCache(0)
                for _ in range(2):
                    start = time.perf_counter()
                    seg.predict(photo, **options)
                    timed["predict"].append(time.perf_counter() - start)
                continue
            serial = mode == "serial"  # ovss.cli.segment imports these at each run
            pipeline.read_ahead = _read_inline if serial else real_read
            pipeline.WriteBehind = _Serial if serial else real_writer
            model_s[mode].append(0.0)
            out = tmp / f"out_{mode}_{r}"
            code = main(["segment", str(tmp / "in"), "--model", name, "--classes", names, "--out", str(out),
                         "--dtype", dtype, *opts])
            if code:
                raise SystemExit(f"ovss segment failed with exit status {code}")
    shutil.rmtree(tmp, ignore_errors=True)
    per = {k: statistics.median(v) / (args.photos if k != "predict" else 1) for k, v in timed.items()}
    return {
        "run": spec, "K": classes, "dtype": dtype, "photos": args.photos,
        "predict s": per["predict"], "folder s/img": per["folder"], "serial s/img": per["serial"],
        "folder / predict": per["folder"] / per["predict"],
        "serial / predict": per["serial"] / per["predict"],
        "folder / model": statistics.median(a / b for a, b in zip(timed["folder"], model_s["folder"])),
        "serial / model": statistics.median(a / b for a, b in zip(timed["serial"], model_s["serial"])),
        "rounds": args.rounds, "load": os.getloadavg()[0], "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="name[:option=value,...]")
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (medians kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="append the rows (JSON lines) to this file")
    parser.add_argument("--child", nargs=1, metavar="RUN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bench.common import append_json, emit_result, print_table, run_case

    if args.child:
        emit_result(child(args.child[0], args.classes, args.dtype, args))
        return
    rows = []
    for spec in args.runs:
        cmd = [sys.executable, "-m", "bench.bench_folder", "--child", spec, "--classes", str(args.classes),
               "--dtype", args.dtype, "--photos", str(args.photos), "--rounds", str(args.rounds),
               "--threads", str(args.threads)]
        row = run_case(cmd, spec, str(REPO / "src"))
        if row is None:
            continue
        rows.append(row)
        print(f"{spec}: folder {row['folder s/img']:.3f} s/img = {row['folder / predict']:.3f} x predict "
              f"({row['predict s']:.3f} s), {row['folder / model']:.3f} x its model time; serial "
              f"{row['serial / predict']:.3f} x predict, {row['serial / model']:.3f} x", flush=True)
        append_json(args.json, row)
    print(f"\n{args.threads} threads; K = {args.classes}; {args.dtype}; medians of {args.rounds} "
          "interleaved rounds\n")
    print_table(rows)


if __name__ == "__main__":
    main()
