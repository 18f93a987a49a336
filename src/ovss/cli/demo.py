"""``ovss demo``: the gradio web demo (``pip install 'ovss[demo]'``)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path

from ovss.cli.common import add_load_args

DESCRIPTION = """\
Serve a web page (gradio) where a user uploads an image, types class names and gets the colour
overlay, a legend, a table of the classes present and the label map PNG. The model named by --model
is loaded (downloaded and converted first if needed) before the server starts; the page offers it
and every other model whose weights are already on disk: nothing is ever downloaded inside a web
request. Requests are queued and run one at a time; each is checked against the limits below.
The page's API endpoint is /segment (gradio_client; see the README, "Web demo").
"""


# (flag, DemoLimits field, type, metavar, help) of the per-request limits.
LIMIT_OPTIONS = (
    ("--max-pixels", "max_pixels", int, "N", "largest image accepted, width x height pixels"),
    ("--max-classes", "max_classes", int, "N", "most classes in one request"),
    ("--max-upload-mb", "max_upload_mb", float, "MB", "largest upload accepted, in MiB"),
    ("--queue-size", "queue_size", int, "N", "requests that may wait while one runs; more are refused"),
    (
        "--keep-files",
        "keep_files_s",
        int,
        "SECONDS",
        "uploads and results are deleted from the server after this long",
    ),
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    from ovss.demo.inputs import DemoLimits

    limits = DemoLimits()
    p = sub.add_parser(
        "demo", help="web demo (gradio): upload an image, type class names", description=DESCRIPTION
    )
    p.add_argument(
        "--model",
        default="san-vit-b16",
        metavar="NAME_OR_FILE",
        help="model loaded first: registry name or checkpoint file (default: %(default)s)",
    )
    add_load_args(p)
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve on; 0.0.0.0 for every interface (default: %(default)s)",
    )
    p.add_argument("--port", type=int, default=7860, help="TCP port to serve on (default: %(default)s)")
    p.add_argument("--share", action="store_true", help="also create a public gradio.live link")
    p.add_argument(
        "--examples",
        default=None,
        metavar="DIR",
        help="folder of example photos (.jpg/.jpeg/.webp) shown under the form, or 'none' (default: "
        "../shared/data beside the repository, when it exists)",
    )
    p.add_argument(
        "--min-score",
        type=float,
        default=None,
        metavar="S",
        help="the page's minimum score at start: pixels whose best score is below S stay unlabelled "
        "(the user can change or clear it; default: empty, every pixel labelled)",
    )
    for flag, field, kind, metavar, what in LIMIT_OPTIONS:
        p.add_argument(
            flag,
            dest=field,
            type=kind,
            default=getattr(limits, field),
            metavar=metavar,
            help=f"{what} (default: %(default)s)",
        )
    p.set_defaults(run=run)


def examples_from(option: str | None) -> list[list[str]]:
    """The example rows for the --examples option (a missing folder is an error, the default is not)."""
    from ovss.demo.app import default_examples_dir, find_examples
    from ovss.errors import OvssError

    if option is None:
        return find_examples(default_examples_dir())
    if option.lower() == "none":
        return []
    folder = Path(option)
    if not folder.is_dir():
        raise OvssError(f"--examples {option}: no such folder; pass a folder of photos, or 'none'")
    return find_examples(folder)


def _say(text: str) -> None:
    print(f"ovss demo: {text}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import shutil

    from ovss.demo.app import build_app, check_port, import_gradio, launch, private_upload_dir
    from ovss.demo.backend import DemoBackend
    from ovss.demo.inputs import DemoLimits
    from ovss.errors import OvssError

    import_gradio()  # a missing gradio is reported before the (slow) model load
    for flag, field, _, _, _ in LIMIT_OPTIONS:
        if not getattr(args, field) > 0:
            raise OvssError(f"{flag} must be > 0, got {getattr(args, field)}")
    limits = DemoLimits(**{field: getattr(args, field) for _, field, _, _, _ in LIMIT_OPTIONS})
    examples = examples_from(args.examples)
    if args.min_score is not None and not math.isfinite(args.min_score):
        raise OvssError(f"--min-score must be a finite number (e.g. 0.3), got {args.min_score}")
    check_port(args.host, args.port)  # so is a port already in use
    if not logging.getLogger("ovss.demo").handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s ovss.demo: %(message)s", "%H:%M:%S"))
        logging.getLogger("ovss.demo").addHandler(handler)
        logging.getLogger("ovss.demo").setLevel(logging.INFO)
    backend = DemoBackend(
        args.model, device=args.device, dtype=args.dtype, weights=args.weights, limits=limits
    )
    print(f"ovss demo: loading {args.model} ...", file=sys.stderr, flush=True)
    backend.segmenter()  # load now: a bad name or missing weights fails before the server starts
    uploads = private_upload_dir()
    try:
        app = build_app(backend, examples, min_score=args.min_score)
        launch(app, backend, args.host, args.port, share=args.share, say=_say)
    finally:
        if uploads is not None:
            shutil.rmtree(uploads, ignore_errors=True)
    return 0
