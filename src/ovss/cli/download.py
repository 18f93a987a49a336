"""``ovss download NAME...``: fetch official weights and convert them once, for offline use.

Each NAME (see ``ovss models``) is downloaded from the Hugging Face Hub into $OVSS_HOME/hub (resumed
when interrupted; checked against its sha256), or from its official URL (the .mmseg SAN files, from
download.openmmlab.com: checked against the sha256 prefix in the file name, the full digest recorded
on first download), and converted into $OVSS_HOME/weights/NAME.safetensors, which records a digest of
its config and data. A NAME already converted and intact is skipped; a converted file that fails its
integrity check (or was written by an earlier ovss) is converted again. Weights without a download
(SED, CAT-Seg v1) are downloaded by hand and installed with 'ovss convert NAME FILE'; so is any file
whose download fails (the message gives its URL).

Environment: OVSS_HOME (cache root, default ~/.cache/ovss), HF_ENDPOINT (a Hub mirror),
OVSS_OFFLINE=1 or HF_HUB_OFFLINE=1 (never use the network: only already downloaded files convert).

Example:

    ovss download san-vit-b16 catseg-vit-b16
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="download and convert named weights for offline use",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="model names (see 'ovss models')")
    p.add_argument(
        "--force",
        action="store_true",
        help="convert again even if the converted file is on disk and intact (default: off)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.errors import CheckpointMismatchError, WeightsFileError
    from ovss.home import check_file_slot
    from ovss.weights.cache import convert_checkpoint
    from ovss.weights.modelfile import open_model_file, stamp_path
    from ovss.weights.registry import get_weight_spec
    from ovss.weights.resolve import converted_path, fetch_source

    specs = [get_weight_spec(name) for name in args.names]  # fail on a typo before downloading anything
    for spec in specs:
        target = converted_path(spec.name)
        if spec.source_format == "random":
            print(f"{spec.name}: built in (random weights), nothing to download")
            continue
        if check_file_slot(target) and not args.force:
            try:
                mf = open_model_file(target)
                mf.model_config()
                mf.verify(stamp=stamp_path(target))
            except (WeightsFileError, CheckpointMismatchError) as e:  # damaged, old format, no metadata
                damage = str(e).split("; ")[0]
                line = f"ovss: {spec.name}: the converted file is damaged ({damage}); converting again"
                print(line, file=sys.stderr, flush=True)
            else:
                print(f"{spec.name}: already at {target}")
                continue
        fetched = fetch_source(spec)
        convert_checkpoint(spec, fetched.path, target, sha256=fetched.sha256)
        print(f"{spec.name}: {target}")
    return 0
