"""``ovss train --config NAME_OR_FILE --out DIR [--set k=v ...] [--resume | --overwrite] [--weights W]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

_EPILOG = """\
examples:
  # official SAN ViT-B/16 recipe on one GPU (COCO-Stuff prepared with `ovss prepare coco171`)
  ovss train --config san-vit-b16 --set data.root=/data model.clip_weights=ViT-B-16.pt --out runs/san
  # the same on 8 GPUs
  torchrun --standalone --nproc_per_node=8 -m ovss.cli.main train --config san-vit-b16 \\
      --set data.root=/data model.clip_weights=ViT-B-16.pt --out runs/san
  # continue from the newest checkpoint in runs/san (a new run needs an empty --out, or --overwrite)
  ovss train --config san-vit-b16 --set data.root=/data --out runs/san --resume
  # fine-tune the released SAN on your own images/ + labels/ and a class list
  ovss train --config san-vit-b16-finetune --weights san-vit-b16 \\
      --set data.root=my_data data.classes=my_data/classes.txt --out runs/mine
  # show a recipe as JSON (edit it and pass the file to --config)
  ovss train --config catseg-vit-b16 --print-config
"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ovss.engine.recipes import list_recipes

    p = sub.add_parser(
        "train",
        help="train or fine-tune a model (single process, or under torchrun)",
        description="Iteration-based training with resumable checkpoints. Writes OUT/config.json,\n"
        "OUT/metrics.jsonl, OUT/checkpoints/ and OUT/model_final.safetensors (loadable with ovss.load).\n"
        "A new run needs an empty (or new) --out; --resume continues the run there, --overwrite deletes\n"
        "it first. Data: --set data.root=DIR (and data.classes=FILE for a custom dataset; see\n"
        "docs/training.md). Prints a start line (data, classes, device, iterations), then progress with ETA.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="ovss train [-h] --config NAME_OR_FILE --out DIR [--set KEY=VALUE ...]\n"
        "                  [--resume | --overwrite] [--weights W] [--print-config] [--debug]",
    )
    p.add_argument("--config", required=True, metavar="NAME_OR_FILE",
                   help=f"recipe ({', '.join(list_recipes())}) or a JSON file")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="config overrides, e.g. data.root=/data solver.batch_size=16 (JSON values)")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help="run folder (checkpoints, logs, final model); required except with --print-config")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true",
                      help="continue from the newest checkpoint in --out (printed at the start)")
    mode.add_argument("--overwrite", action="store_true",
                      help="delete the earlier run in --out (its checkpoints, metrics, final model) and "
                      "start over")
    p.add_argument("--weights", default=None,
                   help="initial weights: registry name (san-vit-b16) or checkpoint file (fine-tuning)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config as JSON and exit")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.cli.common import ensure_writable_dir
    from ovss.engine.recipes import load_config
    from ovss.errors import ConfigError

    if args.out is not None and not args.print_config:
        ensure_writable_dir(args.out)  # before any work
    cfg = load_config(args.config)
    if args.weights is not None:
        cfg = cfg.override(f"model.weights={json.dumps(str(args.weights))}")
    cfg = cfg.override(*args.overrides)
    if args.print_config:
        print(cfg.to_json())
        return 0
    if args.out is None:
        raise ConfigError("--out DIR is required: the folder for checkpoints, logs and the final model")
    from ovss.distributed import distributed_session
    from ovss.engine.trainer import train

    with distributed_session(cfg.device):
        result = train(cfg, args.out, resume=args.resume, overwrite=args.overwrite)
    if result["eval"]:
        print("final evaluation: " + ", ".join(f"{k} {v:.2f}" for k, v in result["eval"].items()))
    return 0
