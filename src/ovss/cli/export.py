"""``ovss export --model NAME --classes "..." --out model.onnx``: ONNX export with a runtime check."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (text embeddings are an input)",
        epilog='example: ovss export --model san-vit-b16 --classes "cat; dog" --size 640 640 --out san.onnx',
    )
    p.add_argument("--model", required=True, help="model name or checkpoint path")
    p.add_argument("--weights", default=None, help="local checkpoint file for --model")
    p.add_argument(
        "--classes",
        default="object; background",
        help="example vocabulary used for tracing (K stays dynamic)",
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input size baked into the graph (default: the model's test size)",
    )
    p.add_argument("--opset", type=int, default=18)
    p.add_argument("--out", type=Path, required=True, help="output .onnx file")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.api.segmenter import load
    from ovss.export.onnx import export_onnx

    seg = load(args.model, weights=args.weights)
    seg.set_vocabulary(args.classes)
    cfg = seg.model.config
    size = tuple(args.size) if args.size else (cfg.test_resize.size, cfg.test_resize.size)
    report = export_onnx(
        seg.model, seg.text_embeddings.cpu(), args.out, size=size, opset=args.opset, check=not args.no_check
    )
    print(
        f"wrote {args.out}"
        + (
            f" (onnxruntime vs eager: max abs err {report['max_abs_err']:.2e}, "
            f"rel err {report['rel_err']:.2e})"
            if report
            else ""
        )
    )
    return 0
