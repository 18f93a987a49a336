"""Image-side cost of each model as users run it: ``Segmenter.predict`` in fp32 and bf16 (random weights).

The Segmenter is built exactly as ``ovss.load(name, dtype=...)`` builds it: the float32 model is cast
once to the compute dtype (``model.to(dtype)``) and fed inputs of that dtype. Text embeddings are random
(the text tower is measured by bench_text.py) and handed to the Segmenter as precomputed; the image is a
random H x W x 3 uint8 photo (default 640 x 853: a 4:3 photo whose short side is already 640). The
timing covers everything ``predict`` does: resize, normalise, pad, the model and the result (argmax,
per-pixel confidence, per-class peak score).

FLOPs are counted with torch's FlopCounterMode (matmuls, convolutions, attention) on the fp32 run; the
fraction of peak compares GFLOP/s with the 2048^3 matmul throughput measured at start-up with the same
threads (``--peak-fp32`` / ``--peak-bf16`` override it), so it stays meaningful on a loaded machine.

    python -m bench.bench_segment                                   # the five default runs, K = 150
    python -m bench.bench_segment --runs san-vit-b16 catseg-vit-b16:inference=slide --repeat 1
    python -m bench.bench_segment --runs sed-convnext-b:fast=1 --profile   # top ops per dtype
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from bench.common import count_flops, print_table, setup_threads
from ovss.api.segmenter import Segmenter, tune_cpu_allocator
from ovss.models.base import SegmentationModel
from ovss.models.build import build_model
from ovss.vocab.vocabulary import Vocabulary
from ovss.weights.registry import get_weight_spec

DEFAULT_RUNS = [
    "san-vit-b16",
    "catseg-vit-b16:inference=whole",
    "catseg-vit-b16:inference=slide",
    "sed-convnext-b",
    "sed-convnext-b:fast=1",
]


def parse_run(spec: str) -> tuple[str, dict[str, object]]:
    """``"name:key=value,key=value"`` -> (name, options); integer values become ints."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = int(value) if value.isdigit() else value
    return name, options


def text_for(model: SegmentationModel, k: int) -> torch.Tensor:
    """Random unit text embeddings in the layout ``encode_text`` returns (probed on one class)."""
    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates

    templates = get_templates(model.config.templates)
    tokens = get_tokenizer()([t.format("thing") for t in templates[:1]]).view(1, 1, -1)
    with torch.inference_mode():
        probe = model.encode_text(tokens)
    if probe.ndim == 3:  # (K, P, E): one row per template
        return F.normalize(torch.randn(k, len(templates), probe.shape[-1]), dim=-1)
    return F.normalize(torch.randn(k, *probe.shape[1:]), dim=-1)


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeat: int = 3) -> float:
    """Best 2048^3 matmul throughput in GFLOP/s for ``dtype`` with the current threads."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def profile_once(fn, top: int) -> str:
    """Table of the ``top`` ops by self CPU time over one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="name[:option=value,...]")
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    parser.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--repeat", type=int, default=2, help="timed runs per case (best is kept)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--peak-fp32", type=float, help="fp32 matmul GFLOP/s (default: measured)")
    parser.add_argument("--peak-bf16", type=float, help="bf16 matmul GFLOP/s (default: measure)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of one extra run")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--tune-malloc", action="store_true", help="ovss.api.segmenter.tune_cpu_allocator()")
    args = parser.parse_args()
    threads = setup_threads(args.threads)
    tuned = tune_cpu_allocator() if args.tune_malloc else False
    fp32 = args.peak_fp32 or matmul_peak(torch.float32)
    bf16 = args.peak_bf16 or matmul_peak(torch.bfloat16)
    peaks = {"fp32": fp32, "bf16": bf16, "fp16": bf16}
    image = np.random.default_rng(0).integers(0, 256, (*args.size, 3), dtype=np.uint8)
    vocab = Vocabulary.from_names([f"class {i}" for i in range(args.classes)])
    rows = []
    for spec in args.runs:
        name, options = parse_run(spec)
        torch.manual_seed(0)
        model = build_model(get_weight_spec(name).config()).requires_grad_(False)  # (FlopCounterMode's
        # module tracker trips over parameters passed as module inputs when they require grad)
        text = text_for(model, args.classes)
        flops = None
        for dtype in args.dtypes:  # fp32 first: the Segmenter casts the model in place
            seg = Segmenter(model, name=name, dtype=dtype)
            seg.set_vocabulary(vocab, embeddings=text)

            def run(seg: Segmenter = seg, options: dict[str, object] = options) -> None:
                seg.predict(image, **options)

            start = time.perf_counter()
            if flops is None:
                flops = count_flops(run)  # doubles as the warm-up run
            else:
                run()
            first = time.perf_counter() - start
            best = first if args.repeat == 0 else float("inf")
            for _ in range(args.repeat):
                start = time.perf_counter()
                run()
                best = min(best, time.perf_counter() - start)
            h, w = model.preprocess_size(*args.size, **options)
            rows.append(
                {
                    "run": spec,
                    "dtype": dtype,
                    "net input": f"{h}x{w}",
                    "K": args.classes,
                    "GFLOP": flops / 1e9,
                    "s/img": best,
                    "GFLOP/s": flops / best / 1e9,
                    "% peak": 100 * flops / best / 1e9 / peaks[dtype],
                }
            )
            print(f"{spec} {dtype}: {best:.2f} s/img", flush=True)
            if args.profile:
                print(profile_once(run, args.top), flush=True)
    print(f"\n{threads} threads; image {args.size[0]}x{args.size[1]}; matmul peaks fp32 {fp32:.0f} / "
          f"bf16 {bf16:.0f} GFLOP/s; glibc malloc tuned: {tuned}\n")
    print_table(rows)


if __name__ == "__main__":
    main()
