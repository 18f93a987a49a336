"""Text tower cost of embedding a vocabulary: full context vs trimmed context, fp32 vs bf16.

The workload is SED's: K classes x 80 ImageNet templates through the ViT-B/16 CLIP text tower
(random weights; speed does not depend on them). A sample of prompts is timed and the full
vocabulary is extrapolated linearly.

    python bench/bench_text.py --classes 171 --sample 320
"""

from __future__ import annotations

import argparse

import torch

from bench.common import count_flops, print_table, setup_threads, timeit
from ovss.towers.clip import build_clip
from ovss.towers.tokenizer import get_tokenizer
from ovss.vocab.templates import IMAGENET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=171)
    parser.add_argument("--sample", type=int, default=320, help="prompts actually timed")
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = setup_threads(args.threads)

    text = build_clip(args.clip).text.eval()
    names = [f"class name {i}" for i in range(args.classes)]
    prompts = [t.format(c) for c in names for t in IMAGENET]
    tokens = get_tokenizer()(prompts[: args.sample])
    longest = int(tokens.argmax(-1).max()) + 1
    total = len(prompts)
    rows = []
    for label, dtype, trim in [
        ("fp32 full 77", torch.float32, False),
        ("fp32 trimmed", torch.float32, True),
        ("bf16 trimmed", torch.bfloat16, True),
    ]:

        def run(dtype=dtype, trim=trim) -> None:
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                for i in range(0, len(tokens), args.batch):
                    chunk = tokens[i : i + args.batch]
                    if trim:
                        text(chunk)
                    else:  # the untrimmed reference: run all 77 positions
                        text.forward_tokens(chunk)

        flops = count_flops(run)
        seconds = timeit(run, repeat=2, warmup=1)
        rows.append(
            {
                "mode": label,
                "tokens/prompt": longest if trim else 77,
                "GFLOP (sample)": flops / 1e9,
                "s (sample)": seconds,
                f"s ({args.classes}x80)": seconds * total / len(tokens),
                "GFLOP/s": flops / seconds / 1e9,
            }
        )
    print(f"text tower {args.clip}, {threads} threads, {len(tokens)} of {total} prompts timed\n")
    print_table(rows)


if __name__ == "__main__":
    main()
