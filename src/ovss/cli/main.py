"""``ovss`` command line: one small module per subcommand.

Examples::

    ovss models
    ovss download san-vit-b16
    ovss segment photo.jpg --model san-vit-b16 --classes "cat; sofa, couch; wall" --out out/
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, TextIO

from ovss import __version__
from ovss.errors import OvssError

# (name, module) pairs: each module has add_parser(subparsers) and run(args) -> int.
_COMMANDS = ("models", "download", "convert", "segment", "eval", "prepare", "train", "export", "demo")


_EPILOG = """\
'ovss COMMAND --help' describes each command. Environment:
  OVSS_HOME           weights and text-embedding caches (default: ~/.cache/ovss)
  OVSS_DATA           data root of prepared benchmarks for 'ovss eval' (default: ./datasets)
  OVSS_OFFLINE=1      never touch the network (also HF_HUB_OFFLINE=1); HF_ENDPOINT: a Hub mirror
  OVSS_MAX_PIXELS     largest image accepted (default: 100000000; 0 = no limit)
  OVSS_TEXT_CACHE_MB  in-memory text-embedding cache per model in MiB (default: 256; 0 to 65536)
  OVSS_IMAGE_CACHE_MB in-memory image-feature cache per model in MiB, for re-queries (default: 256;
                      0 = off, to 65536)
"""


def build_parser() -> argparse.ArgumentParser:
    """The root parser with every subcommand registered."""
    import importlib

    from ovss.cli.common import Parser

    parser = Parser(
        prog="ovss",
        description="Open-vocabulary semantic segmentation: SAN, CAT-Seg and SED.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ovss {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for name in _COMMANDS:
        try:
            module = importlib.import_module(f"ovss.cli.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"ovss.cli.{name}":
                raise
            continue  # subcommand not shipped in this build
        module.add_parser(sub)
    helps = {a.dest: a.help for a in sub._choices_actions}
    for name, command in sub.choices.items():
        text = helps.get(name)
        if not command.description and text:  # every command describes itself
            command.description = text[0].upper() + text[1:] + "."
        # --debug is accepted after the subcommand too (``ovss segment ... --debug``)
        command.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                             help="show full tracebacks on errors")
    return parser


_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Print a warning as ``ovss: warning: MESSAGE`` (no file, line or category for CLI users)."""
    text = " ".join(str(message).split())
    _line(f"ovss: warning: {text}", file or sys.stderr)


class _StderrHandler(logging.Handler):
    """Progress lines of the library (``ovss.weights``: downloading, converting) as ``ovss: MESSAGE`` on
    the current ``sys.stderr``, flushed at once."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(f"ovss: {record.getMessage()}", file=sys.stderr, flush=True)
        except Exception:  # a closed stream: like logging.StreamHandler, never fail the command
            self.handleError(record)


class _TrainHandler(logging.Handler):
    """The training lines (``ovss.train``) as ``ovss train`` always showed them: information on the
    current stdout as it is, a warning or error as one ``ovss: warning: ...`` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = " ".join(text.split())  # one line, as warnings.warn's are
                print(f"ovss: {record.levelname.lower()}: {text}", file=sys.stderr, flush=True)
            else:
                print(text, file=sys.stdout, flush=True)
        except BrokenPipeError:  # the reader went away: main's quiet exit 141
            raise
        except Exception:  # logging's own one-time report, never the command's failure
            self.handleError(record)


@contextlib.contextmanager
def _progress_lines() -> Iterator[None]:
    """Show the library's progress lines on the terminal for the duration of a command: ``ovss.weights``
    (downloading, converting) and ``ovss.train`` (training start, metrics, checkpoints)."""
    installed = []
    handlers = {"ovss.weights": _StderrHandler(logging.INFO), "ovss.train": _TrainHandler(logging.INFO)}
    for name, handler in handlers.items():
        logger = logging.getLogger(name)
        installed.append((logger, handler, logger.level))
        logger.addHandler(handler)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for logger, handler, level in installed:
            logger.removeHandler(handler)
            logger.setLevel(level)


def _line(text: str, file: Any = None) -> None:
    """Write one line to ``file`` (stderr) in a single write, so that the lines of processes sharing the
    stream (torchrun ranks) never interleave within a line."""
    out = file or sys.stderr
    out.write(f"{text}\n")
    out.flush()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``ovss`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    if argv is None and args.command in ("segment", "eval", "demo"):  # the `ovss` process itself (not
        # an in-process call): let glibc reuse freed memory, 1.6-1.9x on CAT-Seg/SED (docs/performance.md)
        from ovss.cpu import tune_cpu_allocator

        tune_cpu_allocator()
    try:
        with warnings.catch_warnings(), _progress_lines():
            warnings.showwarning = _one_line_warning
            return int(args.run(args) or 0)
    except OvssError as e:
        if args.debug:
            raise
        # one line even when the message quotes a name holding a line break (shown as \n)
        _line("ovss: error: " + str(e).replace("\r", "\\r").replace("\n", "\\n"))
        return 1
    except KeyboardInterrupt:
        print("ovss: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``ovss models | head``); before OSError, its base
        try:
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except OSError as e:  # disk full / quota / read-only while writing: not a bug of ovss, one line
        if args.debug or e.errno not in _WRITE_ERRNOS:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(
            f"ovss: error: cannot write{where}: {e.strerror}; free space or choose another folder, then "
            "re-run the same command (it continues where it stopped; ovss train: add --resume)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
