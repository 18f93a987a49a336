"""Time to make a vocabulary ready: ``Segmenter.set_vocabulary`` on real class lists (random weights).

Cases are the issue's workloads: SAN ADE-150 x 14 ViLD templates, SED VOC-20 x 80 ImageNet templates
and SED COCO-171 x 80 (13,680 prompts). Each runs through the production path (tokenizer, the
embedder's class chunks, the model's ``encode_text``, the template mean) with the in-memory cache
empty ("new"), then again with the same vocabulary ("repeated": served from the cache). Schedules:
``shared`` is the tower's current one (each template prefix computed once, then every prompt's tail
against the cached prefix keys/values, in batches of ``TEXT_BATCH`` sorted by tail length);
``batches`` the previous one (no sharing: prompts sorted by length, batches of ``TEXT_BATCH`` each
trimmed to its longest prompt); ``one batch`` the one before (every chunk of classes in one batch,
trimmed to its longest prompt). ``--sample`` times every n-th class only and scales
by the number of prompts (for the large case).

    python -m bench.bench_text                       # the three cases, fp32 (+ bf16 on native-bf16 CPUs)
    python -m bench.bench_text --cases sed-coco171 --sample 4
"""

from __future__ import annotations

import argparse
import time

CASES = {  # name -> (model, class list in ovss/assets/classes)
    "san-ade150": ("san-vit-b16", "ade150.txt"),
    "sed-voc20": ("sed-convnext-b", "voc20.txt"),
    "sed-coco171": ("sed-convnext-b", "coco171.txt"),
}
SCHEDULES = {  # name -> (TEXT_BATCH, MIN_SHARED) of ovss.towers.text; None: the defaults
    "shared": None,
    "batches": (256, float("inf")),
    "one batch": (10**9, float("inf")),
}


def main() -> None:

    import ovss.towers.text as text_module
    from bench.common import count_flops, print_table, random_model, setup_threads
    from ovss.api.segmenter import Segmenter
    from ovss.cpu import native_bf16_cpu
    from ovss.vocab.templates import get_templates

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--dtypes", nargs="+", default=None, help="default: fp32 (+ bf16 with native bf16)")
    parser.add_argument("--sample", type=int, default=1, help="time every n-th class only")
    parser.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    threads = setup_threads(args.threads)
    dtypes = args.dtypes or (["fp32", "bf16"] if native_bf16_cpu() else ["fp32"])
    classes_dir = __import__("pathlib").Path(__import__("ovss").__file__).parent / "assets" / "classes"
    defaults = (text_module.TEXT_BATCH, text_module.MIN_SHARED)
    rows = []
    for case in args.cases:
        name, file = CASES[case]
        names = [ln.strip() for ln in (classes_dir / file).read_text().splitlines() if ln.strip()]
        sample = names[:: args.sample]
        model = random_model(name)
        templates = len(get_templates(model.config.templates))
        for dtype in dtypes:
            for schedule in args.schedules:
                text_module.TEXT_BATCH, text_module.MIN_SHARED = SCHEDULES[schedule] or defaults
                seg = Segmenter(model, name=name, dtype=dtype)
                start = time.perf_counter()
                seg.set_vocabulary(sample)
                new = time.perf_counter() - start
                start = time.perf_counter()
                seg.set_vocabulary(sample)
                repeated = time.perf_counter() - start
                fresh = Segmenter(model, name=name, dtype=dtype)  # FLOPs counted on a separate, untimed run
                flops = count_flops(lambda seg=fresh, sample=sample: seg.set_vocabulary(sample))
                scale = len(names) / len(sample)
                rows.append(
                    {
                        "case": case,
                        "prompts": len(names) * templates,
                        "dtype": dtype,
                        "schedule": schedule,
                        "GFLOP": flops * scale / 1e9,
                        "new s": new * scale,
                        "repeated s": repeated,
                        "GFLOP/s": flops / new / 1e9,
                        "timed classes": len(sample),
                    }
                )
                print(f"{case} {dtype} {schedule}: {new * scale:.1f} s new, {repeated:.3f} s repeated",
                      flush=True)
            model.float()
    text_module.TEXT_BATCH, text_module.MIN_SHARED = defaults
    print(f"\n{threads} threads; random weights; GFLOP counted on a second, untimed run\n")
    print_table(rows)


if __name__ == "__main__":
    main()
