"""``ovss export --model NAME --out model.onnx``: ONNX export with a runtime check."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ovss.cli.common import family_lines, inference_choices

DESCRIPTION = """\
Export a model's score map to ONNX. The graph takes 'images' (1, 3, H, W), CLIP-normalised float32
(float16 with --dtype fp16) at the size fixed here (one image per run), and 'text' (K, ...) text
embeddings from ovss (the text tower is not exported), and returns 'scores' (1, K, H, W); the label
map is their argmax over K.
The vocabulary size K is dynamic: any number of classes runs on the same file. CAT-Seg exports
its whole-image mode unless --inference slide (CAT-Seg v1 also mmseg; its graph takes RGB 0..255,
the model normalises itself); SAN its model's protocol (mmseg for the .mmseg weights,
else d2); SED exports its normal (all-class) inference.
Unless --no-check, the file is run with onnxruntime against eager PyTorch at K = 1, the traced K
and K + 5."""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a model to ONNX (text embeddings are an input; any number of classes)",
        description=DESCRIPTION,
        epilog='example: ovss export --model san-vit-b16 --classes "cat; dog" --size 640 640 --out san.onnx',
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, help="model name or checkpoint path")
    p.add_argument(
        "--weights", default=None, help="local checkpoint file for --model (official or converted)"
    )
    p.add_argument(
        "--classes",
        default="object; background",
        help='example vocabulary used for tracing; K stays dynamic (default: "object; background")',
    )
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=None,
        metavar=("H", "W"),
        help="input size baked into the graph, multiples of the model's padding (32), each side at most "
        "4096 and H x W at most 2048 x 2048 (default: the model's test size, 640 640)",
    )
    p.add_argument(
        "--inference",
        default=None,
        choices=inference_choices(exported=True),
        help="CAT-Seg: the inference protocol baked into the graph (default: whole)",
    )
    p.add_argument(
        "--dtype",
        default="fp32",
        help="dtype of the graph: fp32 or fp16 (half-size file); bf16 is refused, onnxruntime cannot "
        "run it (default: fp32, whatever the CPU)",
    )
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default: 18)")
    p.add_argument("--out", type=Path, required=True, help="output .onnx file (written atomically)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the onnxruntime vs eager comparison (default: check at three vocabulary sizes)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.api.segmenter import load
    from ovss.cli.common import ensure_writable_file
    from ovss.errors import OvssError
    from ovss.export.onnx import check_export_size, check_opset, export_onnx, parse_export_dtype
    from ovss.models.family import families, family_for_config

    ensure_writable_file(args.out)  # before the model loads
    check_opset(args.opset)
    if args.size:
        check_export_size(args.size)
    dtype = parse_export_dtype(args.dtype)
    # Traced in float32 (not ovss.load's "auto", which is bf16 on CPUs with bf16 units), then cast.
    seg = load(args.model, weights=args.weights, dtype="fp32")
    cfg = seg.model.config
    options: dict[str, Any] = {}
    option = family_for_config(cfg).inference
    if option is not None and option.exported:
        if args.inference and args.inference not in option.modes:  # another family's mode
            family = family_for_config(cfg)
            raise OvssError(
                f"--inference {args.inference} does not apply to {args.model} (a {family.title} model); "
                f"use {' or '.join(option.modes)}"
            )
        options["inference"] = args.inference or option.default("export", getattr(cfg, "inference", ""))
    elif args.inference:  # e.g. SAN bakes its config's protocol (d2, or mmseg for the .mmseg weights)
        exported = [f for f in families() if f.inference is not None and f.inference.exported]
        raise OvssError(
            f"--inference is a {family_lines(exported)} option; {args.model} has no inference modes to "
            "export, remove it"
        )
    seg.set_vocabulary(args.classes)
    text = seg.text_embeddings
    assert text is not None  # set_vocabulary computed them
    size = tuple(args.size) if args.size else (cfg.test_resize.size, cfg.test_resize.size)
    report = export_onnx(
        seg.model.to(dtype), text.cpu().to(dtype), args.out, size=size, opset=args.opset,
        check=not args.no_check, **options,
    )
    check = ""
    if report:
        ks = ", ".join(str(k) for k in report["classes"])
        check = (
            f" (onnxruntime vs eager at K = {ks}: max abs err {report['max_abs_err']:.2e}, "
            f"rel err {report['rel_err']:.2e})"
        )
    print(f"wrote {args.out}{check}")
    return 0
