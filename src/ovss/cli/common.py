"""Arguments shared by several subcommands (model selection, device, dtype, model options)."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

if TYPE_CHECKING:
    from ovss.api.segmenter import Segmenter

_LITERAL = re.compile(r"``(.+?)``")  # reST inline literals in module docstrings used as descriptions


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that shows each option's default (unless its help already states one, or it has none)
    and prints reST ````literals```` of descriptions as plain text."""

    def _format_text(self, text: str) -> str:
        return super()._format_text(_LITERAL.sub(r"\1", text))

    def _get_help_string(self, action: argparse.Action) -> str:
        text = _LITERAL.sub(r"\1", action.help or "")
        default = action.default
        if (
            "default" in text.lower()
            or default is None
            or default is False
            or default == argparse.SUPPRESS
            or not action.option_strings
            or (isinstance(default, list) and not default)
        ):
            return text
        return f"{text} (default: %(default)s)"


class RawDescriptionDefaultsFormatter(DefaultsFormatter, argparse.RawDescriptionHelpFormatter):
    """:class:`DefaultsFormatter` that keeps the description's and epilog's line breaks."""


class Parser(argparse.ArgumentParser):
    """ArgumentParser whose help shows defaults (the ``ovss`` subcommands are built with it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        formatter = kwargs.get("formatter_class", argparse.HelpFormatter)
        if formatter is argparse.HelpFormatter:
            kwargs["formatter_class"] = DefaultsFormatter
        elif formatter is argparse.RawDescriptionHelpFormatter:
            kwargs["formatter_class"] = RawDescriptionDefaultsFormatter
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        """A usage error as one line, the problem then where the usage is (argparse's own prints the
        whole usage block above it); exit status 2 as argparse's."""
        flat = message.replace("\n", "\\n")  # a value with a line break stays on the line
        self.exit(2, f"{self.prog}: error: {flat}; see {self.prog} --help\n")


def warn(message: str) -> None:
    """One ``ovss: warning: ...`` line on stderr."""
    sys.stderr.write(f"ovss: warning: {message}\n")  # one write: lines of torchrun ranks never interleave
    sys.stderr.flush()


def add_load_args(p: argparse.ArgumentParser, dtype: str = "auto") -> None:
    """--weights, --device and --dtype (default ``dtype``): how the model of --model is loaded."""
    p.add_argument(
        "--weights",
        default=None,
        metavar="FILE",
        help="local checkpoint file for --model (official or converted)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto (default: cpu)")
    p.add_argument(
        "--dtype",
        default=dtype,
        choices=["auto", "fp32", "bf16", "fp16"],
        help="compute precision; fp32 is the exact path, auto is bf16 on GPUs and on CPUs with native "
        f"bf16 units (AVX512-BF16/AMX), else fp32 (default: {dtype})",
    )


def add_model_args(
    p: argparse.ArgumentParser, default: str | None = "san-vit-b16", dtype: str = "auto"
) -> None:
    """--model, --weights, --device, --dtype (default ``dtype``) and the model-specific inference options."""
    p.add_argument("--model", default=default, help=f"model name or checkpoint path (default: {default})")
    add_load_args(p, dtype)
    p.add_argument(
        "--inference",
        default=None,
        choices=inference_choices(),
        help="test protocol. SAN: d2 (MendelXu/SAN's detectron2 protocol: PIL resize, mask logits "
        "resized before the sigmoid) or mmseg (mmsegmentation's: cv2 resize, class scores formed at the "
        "padded size, then resized); default: mmseg for the .mmseg weights, d2 for the others. CAT-Seg: "
        "whole-image or the official sliding-window protocol (CAT-Seg v1 also: mmseg); default: whole for "
        "segment and the web demo (one pass, aspect ratio kept, 4-5x faster than slide), the model's own "
        "for eval (slide, the official evaluation protocol) and for CAT-Seg v1",
    )
    p.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="SED: category early rejection (drop classes outside every pixel's top-k)",
    )
    p.add_argument("--topk", type=int, default=None, help="SED: classes kept per pixel with --fast")


def inference_choices(exported: bool = False) -> list[str]:
    """Every ``--inference`` mode of the registered families (``exported``: of those whose mode
    ``ovss export`` bakes in, ``InferenceOption.exported``), in family order.

    Read from :mod:`ovss.models.family` when a parser is built (not when this module is imported), so
    a family registered before that has its modes accepted; which mode fits which model is checked
    once the model is known (:func:`check_model_options`).
    """
    from ovss.models.family import families

    modes = [
        mode
        for family in families()
        if family.inference is not None and (family.inference.exported or not exported)
        for mode in family.inference.modes
    ]
    return list(dict.fromkeys(modes))


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Only the options the user set, so the library defaults stay the single source of truth.

    Raises:
        ConfigError: ``--topk`` without ``--fast``, or ``--topk`` below 1.
    """
    from ovss.errors import ConfigError

    given = {k: getattr(args, k, None) for k in ("inference", "fast", "topk")}
    options = {k: v for k, v in given.items() if v is not None}
    if "topk" in options and not options.get("fast"):
        raise ConfigError("--topk only applies with --fast (SED's category early rejection); add --fast")
    if "topk" in options and options["topk"] < 1:
        raise ConfigError(f"--topk must be >= 1, got {options['topk']}")
    from ovss.api.tta import tta_option  # --tta flags (segment, eval): predict(tta=...), every family

    tta = tta_option(args)
    return options if tta is None else {**options, "tta": tta}


def check_model_options(args: argparse.Namespace, family: str, model: str) -> None:
    """Refuse, in CLI words, an inference option of another family (``--inference`` with a SED model).

    Which family takes which option, and which ``--inference`` modes, is read from the family
    descriptors (:mod:`ovss.models.family`).

    Raises:
        ConfigError: naming the option, the family it belongs to and the model's family.
    """
    from ovss.errors import ConfigError
    from ovss.models.family import family_title, find_family, option_owners

    options = model_options(args)
    descriptor = find_family(family)
    title = family_title(family)
    mode = options.get("inference")
    modes = descriptor.inference.modes if descriptor is not None and descriptor.inference else ()
    if mode is not None and modes and mode not in modes:
        raise ConfigError(
            f"--inference {mode} does not apply to {model} (a {title} model); use {' or '.join(modes)}"
        )
    for key in options.keys() - {"tta"}:
        if descriptor is None or key not in descriptor.options:
            raise ConfigError(
                f"--{key} applies to {family_lines(option_owners(key))} models only; {model} is a {title} "
                f"model (remove --{key})"
            )


def family_lines(families: Iterable[Any]) -> str:
    """``"SAN and CAT-Seg"``: the titles of ``families`` (descriptors), one name per family line (a
    variant's title starts with its base's: "CAT-Seg v1")."""
    owners = list(dict.fromkeys(f.title.split()[0] for f in families))
    return " and ".join(owners) if len(owners) < 3 else ", ".join(owners[:-1]) + " and " + owners[-1]


def apply_inference_default(args: argparse.Namespace, config: Any, command: str) -> None:
    """Set ``args.inference`` to the model family's default for ``command`` (``Family.inference``)
    when the user gave none and the family states one (else the config's own protocol applies)."""
    from ovss.models.family import family_for_config

    option = family_for_config(config).inference
    if getattr(args, "inference", None) is None and option is not None and command in option.defaults:
        args.inference = option.defaults[command]


def _family_before_loading(model: str) -> str | None:
    """The family of a registry name without loading anything (None for a file path)."""
    try:
        from ovss.weights.registry import get_weight_spec

        return get_weight_spec(model).family
    except Exception:  # not a registry name: known only once the file is read
        return None


def load_segmenter(args: argparse.Namespace) -> Segmenter:
    """Load the model named by the common arguments (inference options checked before and after).

    fp16 on the CPU warns in :class:`~ovss.api.segmenter.Segmenter` (one place for the CLI and the API).
    The image cache is off (:mod:`ovss.api.requery`): the commands never see an image twice.
    """
    from ovss.api.requery import ImageCache
    from ovss.api.segmenter import load
    from ovss.models.build import family_of

    model_options(args)
    family = _family_before_loading(args.model)
    if family is not None:
        check_model_options(args, family, args.model)
    segmenter = load(args.model, device=args.device, dtype=args.dtype, weights=args.weights)
    check_model_options(args, family_of(segmenter.model.config), args.model)
    # segment, video and eval see every image once: no re-query cache, no digest per image
    segmenter.image_cache = ImageCache(0)
    return segmenter


def ensure_writable_dir(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that ``path`` is (or can be created as) a writable folder.

    Nothing is left behind (one empty probe file is created and deleted in the nearest existing
    folder). Raises :class:`~ovss.errors.OutputPathError` with one line naming ``flag``
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
    what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path} {what}; pass a folder you can write to")
    # access() is not the whole story (root, read-only or special file systems such as /proc):
    # create and delete one empty file where the output (or its first missing folder) would go
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(prefix=".ovss-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise OutputPathError(f"{flag} {path} {what} ({reason}); pass a folder you can write to") from None
    return path


def ensure_writable_file(path: str | Path, flag: str = "--out") -> Path:
    """Check, before any work, that the file ``path`` can be written (its folder exists and is
    writable, or can be created). Nothing is created.

    Raises:
        OutputPathError: ``path`` is a folder, or its folder cannot be written or created.
    """
    from ovss.errors import OutputPathError

    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder; pass a file path (e.g. {path / 'model.onnx'})")
    ensure_writable_dir(path.parent if str(path.parent) else Path("."), flag=f"{flag} {path}: the folder")
    return path
