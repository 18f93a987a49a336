"""``ovss convert NAME FILE``: convert an official checkpoint you downloaded yourself."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="convert an official checkpoint file (e.g. SED from Google Drive) into the cache",
    )
    p.add_argument("name", help="model name the file belongs to (see 'ovss models')")
    p.add_argument("file", type=Path, help="the official checkpoint (.pth) or an ovss .safetensors")
    p.add_argument("--out", type=Path, default=None, help="write here instead of the cache")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.errors import WeightsNotFoundError
    from ovss.weights.cache import convert_checkpoint
    from ovss.weights.registry import get_weight_spec

    spec = get_weight_spec(args.name)
    if not args.file.is_file():
        raise WeightsNotFoundError(f"checkpoint file {args.file} does not exist; check the path")
    out = convert_checkpoint(spec, args.file, args.out)
    print(f"{spec.name}: {out}")
    return 0
