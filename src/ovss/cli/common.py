"""Arguments shared by several subcommands (model selection, device, dtype, model options)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_model_args(p: argparse.ArgumentParser, default: str | None = "san-vit-b16") -> None:
    """--model, --weights, --device, --dtype and the model-specific inference options."""
    p.add_argument("--model", default=default, help=f"model name or checkpoint path (default: {default})")
    p.add_argument(
        "--weights", default=None, help="local checkpoint file for --model (official or converted)"
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument(
        "--dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="compute precision; fp32 is the exact path (default: fp32)",
    )
    p.add_argument(
        "--inference",
        default=None,
        choices=["whole", "slide"],
        help="CAT-Seg: whole-image or the official sliding-window protocol",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="SED: category early rejection (drop classes outside every pixel's top-k)",
    )
    p.add_argument("--topk", type=int, default=None, help="SED: classes kept per pixel with --fast")


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user set, so the library defaults stay the single source of truth."""
    options = {k: getattr(args, k, None) for k in ("inference", "fast", "topk")}
    return {k: v for k, v in options.items() if v is not None}


def load_segmenter(args: argparse.Namespace):
    """Load the model named by the common arguments."""
    from ovss.api.segmenter import load

    return load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)


def ensure_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a writable folder.

    Nothing is created. Raises :class:`~ovss.errors.OutputPathError` with one line naming ``flag``
    when ``path`` is an existing file, lies under a file, or is (or would be created in) a folder
    that cannot be written.
    """
    import os

    from ovss.errors import OutputPathError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is an existing file, not a folder; pass a folder path")
    existing = path
    while not existing.exists():  # the nearest ancestor that exists
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != path and not existing.is_dir():
        raise OutputPathError(f"{flag} {path} cannot be created: {existing} is a file; pass another folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise OutputPathError(f"{flag} {path} {what}; pass a folder you can write to")
    return path
