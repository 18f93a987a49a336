"""First image: model load, vocabulary and the first (and second) image, timed separately.

A fresh process per model does what ``ovss segment`` does for one photo: read a checkpoint
(random weights written to a temporary ``.safetensors`` first, so the disk read is real), build the
model and load the weights, embed a real class list through the text tower (no cache), then
``predict`` a 640 x 853 photo twice (the first call includes one-off costs: kernel selection, weight
packing, allocator growth).

    python -m bench.bench_first
    python -m bench.bench_first --runs catseg-vit-b16:inference=whole --classes voc20.txt
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_RUNS = ["san-vit-b16", "catseg-vit-b16:inference=whole", "sed-convnext-b"]


def child(spec: str, classes: str, threads: int) -> dict[str, object]:
    import numpy as np
    import torch
    from safetensors.torch import save_file

    import ovss
    from bench.bench_segment import parse_run
    from ovss.api.segmenter import Segmenter
    from ovss.models.build import build_model
    from ovss.weights.read import read_state_dict
    from ovss.weights.registry import get_weight_spec

    torch.set_num_threads(threads)
    name, options = parse_run(spec)
    config = get_weight_spec(name).config()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.safetensors"
        save_file({k: v.contiguous() for k, v in build_model(config).state_dict().items()}, str(path))
        start = time.perf_counter()
        model = build_model(config)
        model.load_state_dict(read_state_dict(path), strict=True)
        seg = Segmenter(model, name=name, dtype="fp32")
        load_s = time.perf_counter() - start
    names = Path(ovss.__file__).parent / "assets" / "classes" / classes
    start = time.perf_counter()
    vocab = seg.set_vocabulary(names)
    vocab_s = time.perf_counter() - start
    image = np.random.default_rng(0).integers(0, 256, (640, 853, 3), dtype=np.uint8)
    times = []
    for _ in range(2):
        start = time.perf_counter()
        seg.predict(image, **options)
        times.append(time.perf_counter() - start)
    return {"run": spec, "classes": f"{classes} ({len(vocab)})", "load s": load_s, "vocabulary s": vocab_s,
            "first image s": times[0], "second image s": times[1],
            "total to first label map s": load_s + vocab_s + times[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS)
    parser.add_argument("--classes", default="voc20.txt", help="a list in ovss/assets/classes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from bench.common import emit_result

        emit_result(child(args.child, args.classes, args.threads))
        return
    from bench.common import print_table, run_child

    rows = []
    for spec in args.runs:
        cmd = [sys.executable, "-m", "bench.bench_first", "--child", spec, "--classes", args.classes,
               "--threads", str(args.threads)]
        row = run_child(cmd, spec)
        if row is None:
            continue
        rows.append(row)
        print(f"{spec}: {rows[-1]['total to first label map s']:.1f} s to the first label map", flush=True)
    print(f"\n{args.threads} threads, fp32, random weights read from a local .safetensors\n")
    print_table(rows)


if __name__ == "__main__":
    main()
