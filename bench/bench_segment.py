"""Image-side cost of each model: seconds per image and GFLOP/s, fp32 vs bf16 (random weights).

Text embeddings are random (the text tower is measured by bench_text.py); the image is a
640 x 853 photo-sized input (short side 640, as the test-time resize gives for a 4:3 photo).

    python bench/bench_segment.py --models san-vit-b16 catseg-vit-b16 sed-convnext-b --classes 150
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from bench.common import count_flops, print_table, setup_threads, timeit
from ovss.models.build import build_model
from ovss.weights.registry import get_weight_spec


def _text_for(model, k: int) -> torch.Tensor:
    """Random unit text embeddings in the layout ``encode_text`` returns (probed on one class)."""
    from ovss.towers.tokenizer import get_tokenizer
    from ovss.vocab.templates import get_templates

    templates = get_templates(model.config.templates)
    tokens = get_tokenizer()([t.format("thing") for t in templates]).view(len(templates), 1, -1)
    probe = model.encode_text(tokens)
    return F.normalize(torch.randn(k, *probe.shape[1:]), dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["san-vit-b16"])
    parser.add_argument("--classes", type=int, default=150)
    parser.add_argument("--size", type=int, nargs=2, default=[640, 853], metavar=("H", "W"))
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--option", action="append", default=[], help="model option key=value, e.g. fast=1")
    args = parser.parse_args()
    threads = setup_threads(args.threads)
    options = {}
    for item in args.option:
        key, _, value = item.partition("=")
        options[key] = int(value) if value.isdigit() else value
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = build_model(get_weight_spec(name).config())
        with torch.inference_mode():
            text = _text_for(model, args.classes)
        h, w = model.preprocess_size(*args.size, **options)
        div = model.config.size_divisibility or 1
        images = torch.randn(1, 3, -(-h // div) * div, -(-w // div) * div)
        for dtype in (torch.float32, torch.bfloat16):

            def run(dtype=dtype) -> None:
                with (
                    torch.inference_mode(),
                    torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
                ):
                    model.predict(images, text, (h, w), tuple(args.size), **options)

            flops = count_flops(run)
            seconds = timeit(run, repeat=args.repeat, warmup=1)
            rows.append(
                {
                    "model": name,
                    "dtype": str(dtype).removeprefix("torch."),
                    "input": f"{h}x{w}",
                    "K": args.classes,
                    "GFLOP": flops / 1e9,
                    "s/img": seconds,
                    "GFLOP/s": flops / seconds / 1e9,
                }
            )
    print(f"{threads} threads, options {options or '-'}\n")
    print_table(rows)


if __name__ == "__main__":
    main()
