"""Re-query cost: the same image with another vocabulary, as a fraction of a full ``predict``.

Per run (a real-size architecture with random weights, built as bench_segment builds it; text
embeddings precomputed, so neither timing includes the text tower), in one fresh process:

* ``full``: ``Segmenter.predict(image)`` with the image cache off (the whole forward pass);
* ``requery``: ``Segmenter.predict(image)`` again with the image cache on and the image already seen
  (the implicit cache: pixel digest, text stage, reduction);
* ``handle``: ``Segmenter.predict(handle)`` from ``encode_image`` (the explicit API: text stage only).

The three are interleaved (full, requery, handle, full, ...) ``--repeat`` times and the medians
reported, so a shared machine's load hits them alike; ``fraction`` = requery / full in wall time,
``CPU fraction`` the same in process CPU time (with ``--threads 1`` the robust figure on a loaded
machine: no time spent descheduled or spin-waiting).

    python -m bench.bench_requery                                    # K = 20, fp32, the four runs
    python -m bench.bench_requery --runs san-vit-b16 --classes 20 150 --repeat 7

``--before SRC`` also runs every case with the package in another source tree (e.g. ``git archive
<commit> src | tar -x -C /tmp/ovss_before``, then ``--before /tmp/ovss_before/src``), interleaved
with this tree's case; ``--rounds N`` repeats the whole interleaved sequence N times and ends with the
medians over the rounds per case and version.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import sys
import time
from pathlib import Path

from bench.bench_segment import DEFAULT_RUNS, REPO, parse_run


def child(spec: str, classes: int, dtype: str, args: argparse.Namespace) -> dict[str, object]:
    """Time one case in this process; returns its row."""
    import torch

    from bench.common import count_flops, random_model, random_photo, set_random_vocabulary, text_for
    from ovss.api.requery import ImageCache
    from ovss.api.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    name, options = parse_run(spec)
    model = random_model(name)
    seg = Segmenter(model, name=name, dtype=dtype)
    set_random_vocabulary(seg, text_for(model, classes))
    image = random_photo(args.size)
    off, on = ImageCache(0), ImageCache(4096)

    def full() -> None:
        seg.image_cache = off
        seg.predict(image, **options)

    def requery() -> None:
        seg.image_cache = on
        seg.predict(image, **options)

    handle = seg.encode_image(image, **options)  # also fills ``on``: requery() always hits

    def from_handle() -> None:
        seg.predict(handle)

    load = os.getloadavg()[0]
    times: dict[str, list[float]] = {"full": [], "requery": [], "handle": []}
    cpu: dict[str, list[float]] = {"full": [], "requery": [], "handle": []}
    flops_full = count_flops(full)  # the warm-up runs count the FLOPs (FlopCounterMode)
    flops_requery = count_flops(from_handle)
    requery()
    for _ in range(args.repeat):
        for key, fn in (("full", full), ("requery", requery), ("handle", from_handle)):
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            times[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - cpu_start)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "run": spec,
        "K": classes,
        "dtype": dtype,
        "full s": med["full"],
        "requery s": med["requery"],
        "handle s": med["handle"],
        "fraction": med["requery"] / med["full"],
        "full GFLOP": flops_full / 1e9,
        "requery GFLOP": flops_requery / 1e9,
        "FLOP fraction": flops_requery / flops_full,
        "full CPU s": med_cpu["full"],
        "requery CPU s": med_cpu["requery"],
        "CPU fraction": med_cpu["requery"] / med_cpu["full"],
        "handle MiB": handle.nbytes / 2**20,
        "repeat": args.repeat,
        "load": load,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", nargs="+", default=DEFAULT_RUNS, help="name[:option=value,...]")
    parser.add_argument("--classes", type=int, nargs="+", default=[20])
    parser.add_argument("--dtypes", nargs="+", default=["fp32"])
    parser.add_argument("--size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=5, help="interleaved timed rounds (medians kept)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="append the rows (JSON lines) to this file")
    parser.add_argument("--before", metavar="SRC", help="also run every case with the package in SRC")
    parser.add_argument("--rounds", type=int, default=1, help="repeat all cases (interleaved) N times")
    parser.add_argument("--child", nargs=3, metavar=("RUN", "K", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    from bench.common import append_json, emit_result, print_table, run_case

    if args.child:
        emit_result(child(args.child[0], int(args.child[1]), args.child[2], args))
        return
    versions = [("this", str(REPO / "src"))] + ([("before", args.before)] if args.before else [])
    cases = [(spec, k, dtype) for spec in args.runs for k in args.classes for dtype in args.dtypes]
    rows = []
    for _ in range(args.rounds):
        for (spec, classes, dtype), (version, src) in itertools.product(cases, versions):
            cmd = [sys.executable, "-m", "bench.bench_requery", "--child", spec, str(classes), dtype,
                   "--size", *map(str, args.size), "--repeat", str(args.repeat),
                   "--threads", str(args.threads)]
            row = run_case(cmd, f"{spec} K={classes} {dtype} ({version})", src)
            if row is None:
                continue
            row["version"] = version
            rows.append(row)
            print(f"{spec} K={classes} {dtype} ({version}): full {row['full s']:.3f} s, re-query "
                  f"{row['requery s']:.3f} s ({row['fraction']:.3f}; CPU {row['CPU fraction']:.3f})",
                  flush=True)
            append_json(args.json, row)
    print(f"\n{args.threads} threads; image {args.size[0]}x{args.size[1]}; medians of {args.repeat} "
          f"interleaved runs per case; {args.rounds} round(s)\n")
    print_table(rows if args.rounds == 1 else summary(rows))


def summary(rows: list[dict]) -> list[dict[str, object]]:
    """Medians over the rounds, per case and version."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["run"], row["K"], row["dtype"], row["version"]), []).append(row)
    keys = ("full s", "requery s", "fraction", "full CPU s", "requery CPU s", "CPU fraction", "handle MiB")
    return [
        {"run": run, "K": k, "dtype": dtype, "version": version, "rounds": len(group)}
        | {key: statistics.median(float(r[key]) for r in group) for key in keys}
        for (run, k, dtype, version), group in groups.items()
    ]


if __name__ == "__main__":
    main()
