"""``ovss segment clip.mp4``: the video path of ``ovss segment`` (``ovss.api.video``).

``ovss segment`` hands its arguments here when its inputs are video files: each video gets
``NAME_label.mkv`` (lossless label frames, vocabulary embedded), ``NAME_overlay.mp4`` and
``NAME.json`` (docs/video.md). ``--every N`` takes every N-th frame. Under torchrun the videos are
shared out between the ranks.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_video_arguments(p: argparse.ArgumentParser) -> None:
    """The video-only flags of ``ovss segment``."""
    p.add_argument(
        "--every",
        type=int,
        default=None,
        metavar="N",
        help="videos: segment every N-th frame (frames 0, N, 2N, ...; outputs at the source rate / N); "
        "default 1",
    )


def video_inputs(inputs: list[str] | list[Path]) -> list[Path] | None:
    """The local video files among ``inputs`` when there are any, else None (an image job).

    Raises:
        ConfigError: videos mixed with images, folders or URLs (one kind per run).
    """
    from ovss.api.video import is_video
    from ovss.errors import ConfigError

    def local_video(item: str | Path) -> bool:
        text = str(item)
        return not text.startswith(("http://", "https://")) and not Path(text).is_dir() and is_video(text)

    videos = [Path(item) for item in inputs if local_video(item)]
    if not videos:
        return None
    others = [str(item) for item in inputs if not local_video(item)]
    if others:
        raise ConfigError(
            f"videos and images in one run ({videos[0]} and {others[0]}); segment them in separate runs"
        )
    return videos


def run_video(args: argparse.Namespace, videos: list[Path]) -> int:
    """Segment each video of this rank; print one line per video."""
    from ovss.api.video import VIDEO_OUTPUTS, import_av
    from ovss.cli.common import ensure_writable_dir
    from ovss.cli.segment_inputs import STATE_DIR
    from ovss.cli.segment_runs import OutputLock, on_rank0
    from ovss.distributed import rank_and_world
    from ovss.errors import ConfigError, ImageReadError
    from ovss.vocab.vocabulary import parse_vocabulary

    every = 1 if args.every is None else args.every
    if every < 1:
        raise ConfigError(f"--every must be >= 1 (take every N-th frame), got {every}")
    outputs = tuple(o.strip() for o in args.outputs.split(",") if o.strip())
    if not outputs or any(o not in VIDEO_OUTPUTS for o in outputs):
        raise ConfigError(f"--outputs {args.outputs!r}: for videos choose among {', '.join(VIDEO_OUTPUTS)}")
    from ovss.cli.segment_runs import render_settings

    # taken once per job: a bad --opacity / --palette / --min-score is one line before the model loads
    render = render_settings(args)
    import_av()  # a missing extra fails before the model loads
    for video in videos:
        if not video.is_file():
            raise ImageReadError(f"video {video} does not exist; check the path")
    out = ensure_writable_dir(args.out)
    vocab = parse_vocabulary(args.classes)
    rank, world = rank_and_world()  # ovss segment runs this inside its torchrun session
    # --out belongs to one run at a time (image or video runs alike); rank 0 holds the lock
    lock = on_rank0(lambda: OutputLock(out / STATE_DIR).acquire(out, wait=getattr(args, "wait", False)),
                    rank, world)
    try:
        return _run_videos(args, videos, out, vocab, every, outputs, render, rank, world)
    finally:
        if lock is not None:
            lock.release()


def _run_videos(args: argparse.Namespace, videos: list[Path], out: Path, vocab: Any, every: int,
                outputs: tuple[str, ...], render: dict[str, Any], rank: int, world: int) -> int:
    """Load the model, embed the vocabulary once, segment this rank's share of the videos.

    ``render``: --min-score, --opacity, --palette, --no-labels (:func:`render_settings`, taken once)."""
    from ovss.api.video import segment_video
    from ovss.cli.common import apply_inference_default, load_segmenter
    from ovss.cli.segment_inputs import plan_names
    from ovss.cli.segment_runs import frame_options

    seg = load_segmenter(args)
    apply_inference_default(args, seg.model.config, "segment")  # as for images
    seg.max_pixels = args.max_pixels
    seg.set_vocabulary(vocab)  # embedded once for every frame of every video
    options = frame_options(args, render)  # model options, --tta and --min-score, as for images
    draw = {k: render[k] for k in ("opacity", "palette", "labels") if k in render}
    stems = plan_names([str(v.resolve()) for v in videos], {})  # unique output names
    for i in range(rank, len(videos), world):
        summary = segment_video(seg, videos[i], out, stems[i], every=every, outputs=outputs,
                                overwrite=args.overwrite, progress=True, **draw, **options)
        files = ", ".join(str(p) for p in summary.paths.values())
        print(f"{videos[i]}: {summary.frames} of {summary.frames_read} frame(s) segmented -> {files}")
    return 0
