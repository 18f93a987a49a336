"""``ovss models``: table of named models and whether their weights are on disk."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list named models and weights (downloaded or not)")
    p.add_argument("--all", action="store_true", help="include the tiny test-* models")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.weights.cache import converted_path, is_available, ovss_home
    from ovss.weights.registry import WEIGHTS

    rows = [("name", "family", "weights", "source", "licence")]
    for spec in WEIGHTS:
        if spec.name.startswith("test-") and not args.all:
            continue
        state = "random" if spec.source_format == "random" else ("on disk" if is_available(spec) else "-")
        if spec.url is not None:  # host/.../file: the full URL is in the error messages and docs
            host = spec.url.split("://", 1)[-1].split("/", 1)[0]
            source = f"{host}/.../{spec.url.rsplit('/', 1)[-1]}"
        elif spec.downloadable:
            space = "spaces/" if spec.hub_repo_type == "space" else ""  # a Space's files live under /spaces/
            source = f"hf:{space}{spec.hub_repo}/{spec.hub_file}"
        else:
            source = "manual download" if spec.source_format != "random" else "built in"
        rows.append((spec.name, spec.family, state, source, spec.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\ncache: {ovss_home()} (converted weights in {converted_path('NAME').parent})")
    return 0
