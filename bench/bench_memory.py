"""Peak memory of ``Segmenter.predict`` with a large vocabulary: score blocks vs the whole score map.

For K = 847 classes (ADE20K-full) and a 640 x 853 image the (K, H, W) float32 score map alone is
1.85 GB. Models with ``predict_blocks`` hand the map to the Segmenter in blocks of ``block_mb`` and
only the label map and the maxima are kept; ``whole`` wraps the same model so that the Segmenter sees
only ``predict`` (the whole map, as before blocks existed). ``+scores`` asks for the score map too
(``return_scores=True``), which needs the map by definition; ``+disk`` asks for it with
``Segmenter.scores_dir`` set (``ovss segment --outputs scores``): float16 in a memory-mapped temporary
file, whose pages are page cache (counted in the resident size while mapped, but written out and
reclaimable, unlike the anonymous memory of ``+scores``; ``anon MiB`` is the process's anonymous
resident memory with the result alive).

Each case runs in a fresh process (random weights, fp32 unless ``--dtype``); the peak resident set
size (VmHWM) is reset after the model, vocabulary and a warm-up image are set up, so the numbers are
the extra memory of one ``predict`` on top of the loaded model.

    python -m bench.bench_memory                          # san-vit-b16 and catseg-vit-b16 (whole), K=847
    python -m bench.bench_memory --runs sed-convnext-b --classes 171
"""

from __future__ import annotations

import argparse
import inspect
import resource
import sys
import time
from pathlib import Path

DEFAULT_RUNS = ["san-vit-b16", "catseg-vit-b16:inference=whole"]
MODES = ["whole", "blocks", "blocks+scores", "blocks+disk"]


def _status_kb(field: str) -> int | None:
    """A ``/proc/self/status`` field in kB (Linux), None elsewhere."""
    status = Path("/proc/self/status")
    if not status.is_file():
        return None
    for line in status.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


def _reset_peak() -> bool:
    """Reset the process's peak RSS (Linux ``clear_refs`` 5); False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec: str, mode: str, classes: int, size: tuple[int, int], dtype: str, block_mb: float) -> dict:
    """Run one case in this process and return its measurements (MiB, seconds)."""
    import numpy as np

    from bench.bench_segment import parse_run
    from bench.common import random_model, random_photo, set_random_vocabulary, text_for
    from ovss.api.segmenter import Segmenter
    from ovss.models.base import SegmentationModel

    class WholeMap(SegmentationModel):
        """The same model seen through ``predict`` only (no ``predict_blocks``)."""

        def __init__(self, inner: SegmentationModel) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        def preprocess_size(self, height, width, **options):
            return self.inner.preprocess_size(height, width, **options)

        def predict(self, images, text, image_size, output_size, **options):
            return self.inner.predict(images, text, image_size, output_size, **options)

    name, options = parse_run(spec)
    model = random_model(name)
    text = text_for(model, classes)
    extra = {"block_mb": block_mb} if "block_mb" in inspect.signature(Segmenter).parameters else {}
    seg = Segmenter(WholeMap(model) if mode == "whole" else model, dtype=dtype, **extra)
    if hasattr(seg, "image_cache"):  # the image stage's features are not kept between runs
        seg.image_cache = type(seg.image_cache)(0)
    set_random_vocabulary(seg, text)
    image = random_photo(size)
    keep = mode.endswith(("+scores", "+disk"))
    if mode.endswith("+disk"):
        import tempfile

        seg.scores_dir = Path(tempfile.mkdtemp(prefix="ovss-bench-"))
    seg.predict(image, return_scores=keep, **options)  # warm-up: kernels, allocator caches
    base_kb = _status_kb("VmRSS")
    reset = _reset_peak()
    start = time.perf_counter()
    result = seg.predict(image, return_scores=keep, **options)
    seconds = time.perf_counter() - start
    anon_kb = _status_kb("RssAnon")
    peak_kb = _status_kb("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "run": spec,
        "mode": mode,
        "K": classes,
        "output": f"{size[0]}x{size[1]}",
        "before MiB": (base_kb or 0) / 1024,
        "peak MiB": (peak_kb or 0) / 1024,
        "peak - before": ((peak_kb or 0) - (base_kb or 0)) / 1024,
        "anon MiB": (anon_kb or 0) / 1024,
        "s/img": seconds,
        "labels": int(np.unique(result.label_map).size),
        "peak reset": reset,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="name[:option=value,...]")
    parser.add_argument("--modes", nargs="+", default=MODES, choices=MODES)
    parser.add_argument("--classes", type=int, default=847)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    parser.add_argument("--dtype", default="fp32")
    parser.add_argument("--block-mb", type=float, default=32.0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", nargs=2, metavar=("RUN", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        row = child(args.child[0], args.child[1], args.classes, tuple(args.size), args.dtype, args.block_mb)
        from bench.common import emit_result

        emit_result(row)
        return
    from bench.common import print_table, run_child

    rows = []
    for spec in args.runs:
        for mode in args.modes:
            cmd = [sys.executable, "-m", "bench.bench_memory", "--child", spec, mode, "--classes",
                   str(args.classes), "--size", *map(str, args.size), "--dtype", args.dtype,
                   "--block-mb", str(args.block_mb)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            row = run_child(cmd, f"{spec} {mode}")
            if row is None:
                continue
            rows.append(row)
            print(f"{spec} {mode}: peak +{rows[-1]['peak - before']:.0f} MiB", flush=True)
    print(f"\nK = {args.classes}, dtype {args.dtype}, block_mb {args.block_mb}; (K, H, W) float32 map = "
          f"{args.classes * args.size[0] * args.size[1] * 4 / 2**20:.0f} MiB\n")
    print_table(rows)


if __name__ == "__main__":
    main()
