"""``ovss convert NAME FILE``: install a checkpoint you downloaded yourself as the weights of NAME.

FILE may be the official release file of NAME's model family in any supported layout (detected:
detectron2 SAN/CAT-Seg/SED, mmsegmentation SAN), an ovss .safetensors file, or a bare state dict
already in ovss's layout. It is checked against NAME's architecture and written, with a digest of
its data, to $OVSS_HOME/weights/NAME.safetensors (or --out), which 'ovss segment --model NAME' and
ovss.load("NAME") then use without the network. A file of another model family is refused with the
model name that fits it.

Example (SED, from the Google Drive link in SED's README):

    ovss convert sed-convnext-b ~/Downloads/sed_model_base.pth
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "convert",
        help="install a checkpoint file you downloaded (e.g. SED from Google Drive) as a model's weights",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("name", metavar="NAME", help="model name the file belongs to (see 'ovss models')")
    p.add_argument(
        "file", metavar="FILE", type=Path, help="the official checkpoint (.pth) or an ovss .safetensors"
    )
    p.add_argument(
        "--out",
        default=None,
        help="write here (a file, or a folder to hold NAME.safetensors: an existing folder, or a path "
        "ending in '/', created) instead of the cache (default: $OVSS_HOME/weights/NAME.safetensors)",
    )
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ovss.cli.common import ensure_writable_file
    from ovss.weights.cache import convert_checkpoint
    from ovss.weights.modelfile import check_file
    from ovss.weights.registry import get_weight_spec

    spec = get_weight_spec(args.name)
    check_file(args.file)
    out = None
    if args.out is not None:
        out = Path(args.out).expanduser()
        if args.out.endswith(("/", os.sep)) or out.is_dir():  # a folder, created when missing
            out = out / f"{spec.name}.safetensors"
        ensure_writable_file(out)  # before the conversion
    out = convert_checkpoint(spec, args.file, out)
    print(f"{spec.name}: {out}")
    return 0
