"""``ovss demo``: the gradio web demo (``pip install 'ovss[demo]'``)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="web demo (gradio): upload an image, type class names")
    p.add_argument("--model", default="san-vit-b16", help="model loaded first (default: san-vit-b16)")
    p.add_argument("--weights", default=None, help="local checkpoint file for --model")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--share", action="store_true", help="create a public gradio link")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.demo.app import DemoBackend, build_app
    from ovss.weights.registry import list_weights

    backend = DemoBackend(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    models = list_weights(include_test=True)
    if args.model not in models:
        models.insert(0, args.model)
    backend.segmenter()  # load now: a bad name or missing weights fails before the server starts
    build_app(backend, models).launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0
