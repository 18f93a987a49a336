"""Text tower cost of embedding a vocabulary: mask vs is_causal, full vs trimmed context, fp32 vs bf16.

The workload is SED's: K classes x 80 ImageNet templates through the ViT-B/16 CLIP text tower
(random weights; speed does not depend on them). A sample of prompts is timed and the full
vocabulary is extrapolated linearly. bf16 is run the way the Segmenter runs it (a copy of the tower
cast to bfloat16 once, no autocast).

    python -m bench.bench_text --classes 171 --sample 320
"""

from __future__ import annotations

import argparse
import copy

import torch

from bench.common import count_flops, print_table, setup_threads, timeit
from ovss.towers.clip import build_clip
from ovss.towers.text import causal_mask
from ovss.towers.tokenizer import get_tokenizer
from ovss.vocab.templates import IMAGENET


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default="ViT-B-16")
    parser.add_argument("--classes", type=int, default=171)
    parser.add_argument("--sample", type=int, default=320, help="prompts actually timed")
    parser.add_argument("--batch", type=int, default=160)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    threads = setup_threads(args.threads)

    text = build_clip(args.clip).text.eval()
    text16 = copy.deepcopy(text).to(torch.bfloat16)  # as the Segmenter runs bf16: weights cast once
    names = [f"class name {i}" for i in range(args.classes)]
    prompts = [t.format(c) for c in names for t in IMAGENET]
    tokens = get_tokenizer()(prompts[: args.sample])
    longest = int(tokens.argmax(-1).max()) + 1
    total = len(prompts)

    def masked(chunk: torch.Tensor) -> None:  # the pre-SDPA-causal path: an additive -inf mask, 77 tokens
        x = text.token_embedding(chunk) + text.positional_embedding
        text.ln_final(text.transformer(x, attn_mask=causal_mask(chunk.shape[1], x)))

    modes = [
        ("fp32 77, -inf mask", masked, 77),
        ("fp32 77, is_causal", text.forward_tokens, 77),
        ("fp32 trimmed", text, longest),
        ("bf16 trimmed", text16, longest),
    ]
    rows = []
    for label, fn, length in modes:

        def run(fn=fn) -> None:
            with torch.inference_mode():
                for i in range(0, len(tokens), args.batch):
                    fn(tokens[i : i + args.batch])

        flops = count_flops(run)
        seconds = timeit(run, repeat=args.repeat, warmup=1)
        rows.append(
            {
                "mode": label,
                "tokens/prompt": length,
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
