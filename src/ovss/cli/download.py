"""``ovss download NAME...``: fetch and convert weights for offline use."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("download", help="download and convert named weights for offline use")
    p.add_argument("names", nargs="+", metavar="NAME", help="model names (see 'ovss models')")
    p.add_argument("--force", action="store_true", help="convert again even if already on disk")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.weights.cache import convert_checkpoint, converted_path, fetch_source
    from ovss.weights.registry import get_weight_spec

    specs = [get_weight_spec(name) for name in args.names]  # fail on a typo before downloading anything
    for spec in specs:
        target = converted_path(spec.name)
        if spec.source_format == "random":
            print(f"{spec.name}: built in (random weights), nothing to download")
            continue
        if target.is_file() and not args.force:
            print(f"{spec.name}: already at {target}")
            continue
        source = fetch_source(spec)
        convert_checkpoint(spec, source, target)
        print(f"{spec.name}: {target}")
    return 0
