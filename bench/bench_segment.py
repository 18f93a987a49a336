"""Image-side cost of each model as users run it: ``Segmenter.predict`` per model x mode x K x dtype.

The Segmenter is built exactly as ``ovss.load(name, dtype=...)`` builds it: the float32 model is cast
once to the compute dtype (``model.to(dtype)``) and fed inputs of that dtype. Text embeddings are random
(the text tower is measured by bench_text.py) and handed to the Segmenter as precomputed; the image is a
random H x W x 3 uint8 photo (default 640 x 853: a 4:3 photo whose short side is already 640). The
timing covers everything ``predict`` does: resize, normalise, pad, the model and the result (argmax,
per-pixel confidence, per-class peak score).

Every case (run, K, dtype) runs in a fresh process, so its peak resident size (VmHWM, model included)
is its own. FLOPs are counted with torch's FlopCounterMode (matmuls, convolutions, attention) on the
first call, which doubles as the warm-up; "% peak" compares GFLOP/s with the 2048^3 matmul throughput
of the same dtype measured in the same process right before the case ("same-run peak"), so it stays
meaningful on a shared machine; the 1-minute load average at the start of the case is reported too,
and "CPU s" is the process CPU time of the timed run (all threads): on an oversubscribed machine it
is closer to the work done than the wall time, though OpenMP threads spin-waiting count in it.
bf16 is measured only on CPUs with native bf16 units (avx512_bf16 / AMX): elsewhere PyTorch emulates
it and it is many times slower than fp32 (``--dtypes bf16`` forces it). The header names the CPU
(model, avx2 / avx512_bf16 / amx flags, and its kind: "native bf16" or "AVX2-only"), and every row
records that kind, so tables and plots keep the two apart. ``--device cuda`` runs the cases on the GPU
(fp32, bf16 and fp16 by default) and reports the timed runs' peak GPU memory
(``torch.cuda.max_memory_allocated``).

``--before SRC`` runs every case twice, interleaved, the second time with the package from another
source tree (e.g. ``git worktree add /tmp/ovss_before <commit>`` then ``--before /tmp/ovss_before/src``);
``--json`` appends the rows to a file and ``--plot`` draws seconds per image against K (bench/plot.py).

    python -m bench.bench_segment                                   # four runs, K = 20 and 150
    python -m bench.bench_segment --runs san-vit-b16 --classes 20 150 847 --before /tmp/ovss_before/src
    python -m bench.bench_segment --runs sed-convnext-b:fast=1 --classes 150 --profile   # top ops
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

DEFAULT_RUNS = [
    "san-vit-b16",
    "catseg-vit-b16:inference=whole",
    "catseg-vit-b16:inference=slide",
    "sed-convnext-b",
]
REPO = Path(__file__).resolve().parents[1]


def parse_run(spec: str) -> tuple[str, dict[str, object]]:
    """``"name:key=value,key=value"`` -> (name, options); integer values become ints."""
    name, _, rest = spec.partition(":")
    options: dict[str, object] = {}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        options[key] = int(value) if value.isdigit() else value
    return name, options


def profile_once(fn, top: int) -> str:
    """Table of the ``top`` ops by self CPU time over one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top)


def _peak_rss_mib() -> float:
    import resource

    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(spec: str, classes: int, dtype: str, args: argparse.Namespace) -> dict[str, object]:
    """Time one case in this process; returns its row."""
    import torch

    import ovss
    from bench.common import (
        count_flops,
        cpu_info,
        matmul_peak,
        random_model,
        random_photo,
        set_random_vocabulary,
        text_for,
    )
    from ovss.api.segmenter import Segmenter
    from ovss.cpu import tune_cpu_allocator

    if args.threads:
        torch.set_num_threads(args.threads)
    tuned = tune_cpu_allocator() if args.tune_malloc else False
    name, options = parse_run(spec)
    start = time.perf_counter()
    model = random_model(name)
    build_s = time.perf_counter() - start
    text = text_for(model, classes)
    seg = Segmenter(model, name=name, dtype=dtype, device=args.device)
    if hasattr(seg, "image_cache"):  # every timed run computes the image stage (no re-query reuse)
        seg.image_cache = type(seg.image_cache)(0)
    set_random_vocabulary(seg, text)
    image = random_photo(args.size)
    gpu = args.device.startswith("cuda")
    half = torch.float16 if gpu else torch.bfloat16  # (fp16 on the CPU: compared with the bf16 peak)
    tdtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": half}[dtype]
    load = os.getloadavg()[0]
    peak = args.peak or matmul_peak(tdtype, device=args.device)

    def run() -> None:
        if args.batch == 1:
            seg.predict(image, **options)
        else:  # one forward over args.batch copies of the photo: throughput per image
            list(seg.predict_batch([image] * args.batch, batch_size=args.batch, **options))

    start, cpu_start = time.perf_counter(), time.process_time()
    flops = count_flops(run)  # doubles as the warm-up run
    first_s, first_cpu = time.perf_counter() - start, time.process_time() - cpu_start
    best, cpu = (first_s, first_cpu) if args.repeat == 0 else (float("inf"), float("inf"))
    if gpu:  # the timed runs' peak (the model and its inputs included)
        torch.cuda.reset_peak_memory_stats(args.device)
    for _ in range(args.repeat):
        start, cpu_start = time.perf_counter(), time.process_time()
        run()
        best = min(best, time.perf_counter() - start)
        cpu = min(cpu, time.process_time() - cpu_start)
    gpu_mib = torch.cuda.max_memory_allocated(args.device) / 2**20 if gpu else float("nan")
    profile = profile_once(run, args.top) if args.profile else None
    h, w = model.preprocess_size(*args.size, **options)
    return {
        "version": args.label,
        "run": spec,
        "K": classes,
        "dtype": dtype,
        "net input": f"{h}x{w}",
        "batch": args.batch,
        "GFLOP": flops / 1e9 / args.batch,
        "s/img": best / args.batch,
        "CPU s": cpu / args.batch,
        "first s": first_s,
        "GFLOP/s": flops / best / 1e9,
        "peak GFLOP/s": peak,
        "% peak": 100 * flops / best / 1e9 / peak,
        "peak RSS MiB": _peak_rss_mib(),
        "peak GPU MiB": gpu_mib,
        "device": args.device,
        "cpu kind": cpu_info()["kind"],
        "load": load,
        "build s": build_s,
        "threads": torch.get_num_threads(),
        "malloc tuned": tuned,
        "ovss": str(Path(ovss.__file__).parent),
        "profile": profile,
    }


def spawn(
    spec: str, classes: int, dtype: str, args: argparse.Namespace, src: str | None, label: str
) -> dict | None:
    """Run one case in a fresh interpreter (with the package from ``src`` when given)."""
    cmd = [sys.executable, "-m", "bench.bench_segment", "--child", spec, str(classes), dtype,
           "--label", label, "--size", *map(str, args.size), "--repeat", str(args.repeat),
           "--top", str(args.top), "--device", args.device]
    for flag, value in (("--threads", args.threads), ("--peak", args.peak), ("--batch", args.batch)):
        if value:
            cmd += [flag, str(value)]
    cmd += ["--profile"] if args.profile else []
    cmd += ["--tune-malloc"] if args.tune_malloc else []
    from bench.common import run_case

    return run_case(cmd, f"{label} {spec} K={classes} {dtype}", src)


TABLE_KEYS = ["version", "run", "K", "dtype", "batch", "net input", "GFLOP", "s/img", "CPU s", "GFLOP/s",
              "% peak", "peak GFLOP/s", "peak RSS MiB", "load"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="name[:option=value,...]")
    parser.add_argument("--classes", type=int, nargs="+", default=[20, 150])
    parser.add_argument("--size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="default: fp32, plus bf16 on CPUs with native bf16 units")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs after the warm-up (best kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (GPU: peak GPU MiB is reported)")
    parser.add_argument("--batch", type=int, default=1, help="images per forward (s/img, GFLOP per image)")
    parser.add_argument("--peak", type=float, help="matmul GFLOP/s of the case's dtype (default: measured)")
    parser.add_argument("--profile", action="store_true", help="print the top ops of one extra run")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--tune-malloc", action="store_true", help="ovss.cpu.tune_cpu_allocator()")
    parser.add_argument("--before", metavar="SRC", help="also run every case with the package in SRC")
    parser.add_argument("--label", default="after", help="version label of this tree's rows")
    parser.add_argument("--json", type=Path, help="append the rows (JSON lines) to this file")
    parser.add_argument("--plot", type=Path, help="PNG of s/img against K from --json's rows")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "K", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from bench.common import emit_result

        emit_result(child(args.child[0], int(args.child[1]), args.child[2], args))
        return
    from bench.common import append_json, device_header, print_table
    from ovss.cpu import native_bf16_cpu

    print(device_header(args.device), flush=True)
    if args.device.startswith("cuda"):
        dtypes = args.dtypes or ["fp32", "bf16", "fp16"]
    else:
        dtypes = args.dtypes or (["fp32", "bf16"] if native_bf16_cpu() else ["fp32"])
    versions = [(None, args.label)] + ([(args.before, "before")] if args.before else [])
    rows = []
    for spec in args.runs:
        for classes in args.classes:
            for dtype in dtypes:
                for src, label in versions:  # interleaved: both versions see the same load
                    row = spawn(spec, classes, dtype, args, src, label)
                    if row is None:
                        continue
                    rows.append(row)
                    print(f"{label} {spec} K={classes} {dtype}: {row['s/img']:.2f} s/img, "
                          f"CPU {row['CPU s']:.2f} s ({row['% peak']:.0f} % of {row['peak GFLOP/s']:.0f} "
                          f"GFLOP/s, load {row['load']:.1f})", flush=True)
                    if row.get("profile"):
                        print(row["profile"], flush=True)
                    append_json(args.json, {k: v for k, v in row.items() if k != "profile"})
    print(f"\n{device_header(args.device)}\n{args.threads} threads; device {args.device}; image "
          f"{args.size[0]}x{args.size[1]}; native bf16: {native_bf16_cpu()}; "
          f"peak = 2048^3 matmul GFLOP/s of the dtype measured in the case's process\n")
    keys = TABLE_KEYS + (["peak GPU MiB"] if args.device.startswith("cuda") else [])
    print_table([{k: r.get(k, float("nan")) for k in keys} for r in rows])
    if args.plot and args.json:
        from bench.plot import plot_seconds

        plot_seconds(args.json, args.plot)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
