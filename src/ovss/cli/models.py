"""``ovss models``: table of named models (parameters, file size, licence); ``ovss models NAME``: its card."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "models",
        help="list named models and weights (downloaded or not); 'ovss models NAME' prints a model card",
    )
    p.add_argument("name", nargs="?", default=None,
                   help="print this model's card: architecture, origin, digest, preprocessing, inference "
                   "protocol, published mIoU, BibTeX")
    p.add_argument("--all", action="store_true", help="include the tiny test-* models")
    p.add_argument("--json", action="store_true", help="with NAME: the card as JSON (ovss.model_card)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.api.card import cached_file, count_parameters, format_count, format_size, model_card
    from ovss.home import ovss_home
    from ovss.weights.registry import WEIGHTS
    from ovss.weights.resolve import converted_path, is_available

    if args.name is not None:
        card = model_card(args.name)
        print(card.to_json() if args.json else card.render())
        return 0
    if args.json:
        from ovss.errors import ConfigError

        raise ConfigError("--json prints one model card: pass a NAME (e.g. ovss models san-vit-b16 --json)")
    rows = [("name", "family", "params", "weights", "size", "source", "licence")]
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
        size = format_size(cached_file(spec)[1])
        rows.append((spec.name, spec.family, format_count(count_parameters(spec)), state, size, source,
                     spec.license))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"\ncache: {ovss_home()} (converted weights in {converted_path('NAME').parent})")
    print("a model's card (origin, digest, protocol, published mIoU, BibTeX): ovss models NAME")
    return 0
