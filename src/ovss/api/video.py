"""Segment a video, frame by frame, streaming: decode -> predict -> encode (never the whole clip in memory).

Outputs of ``<stem>`` (``segment_video``):

* ``<stem>_label.mkv``: the label maps, lossless (FFV1 in Matroska): 8-bit grey frames whose pixel
  value is the class index for up to 256 classes, 16-bit grey above. The vocabulary is embedded
  once, as the container tag ``OVSS_VOCABULARY`` (a JSON list of class names);
  :func:`read_label_video` and :func:`label_video_vocabulary` read them back.
* ``<stem>_overlay.mp4``: the colour overlay (H.264, or MPEG-4 Part 2 where libx264 is missing) with
  the image overlays' colours (``ovss.api.palettes``: stable per class name, or ``palette=``) and
  the class names on their regions; no legend (the colours are listed in the JSON).
* ``<stem>.json``: source, model, frame rate, frames read and segmented, the vocabulary with each
  class's colour, and per class the mean pixel fraction and the number of frames it appears in.

``every=N`` segments frames 0, N, 2N, ...; the outputs run at the source frame rate / N. Decoding and
encoding use PyAV (``pip install 'ovss[video]'``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ovss.errors import ConfigError, ImageReadError, OutputPathError, missing_dependency
from ovss.utils import atomic_write, atomic_write_text

VIDEO_EXTS = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv")
VIDEO_OUTPUTS = ("label", "overlay", "json")
VOCABULARY_TAG = "OVSS_VOCABULARY"  # Matroska tag of the label video holding the class names (JSON)


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file (by its extension)."""
    return Path(path).suffix.lower() in VIDEO_EXTS


def import_av() -> Any:
    """PyAV, or MissingDependencyError naming the ``video`` extra."""
    try:
        import av
    except ImportError:
        raise missing_dependency("PyAV (av)", "video") from None
    return av


def output_paths(out_dir: str | Path, stem: str) -> dict[str, Path]:
    """Where :func:`segment_video` writes the outputs of ``stem``."""
    out = Path(out_dir)
    return {
        "label": out / f"{stem}_label.mkv",
        "overlay": out / f"{stem}_overlay.mp4",
        "json": out / f"{stem}.json",
    }


@dataclasses.dataclass
class VideoSummary:
    """What :func:`segment_video` did."""

    source: str  # the input video
    frames_read: int  # frames decoded
    frames: int  # frames segmented and written (every ``every``-th)
    fps: Fraction  # frame rate of the outputs (source rate / every)
    width: int
    height: int
    paths: dict[str, Path]  # output kind -> file


class _Encoder:
    """One output video stream: frames in, packets muxed; ``label`` = lossless grey FFV1 in Matroska."""

    def __init__(self, av: Any, path: Path, kind: str, fps: Fraction, width: int, height: int,
                 bits: int = 8, tags: dict[str, str] | None = None) -> None:
        self.av, self.kind, self.count = av, kind, 0
        self.container = av.open(str(path), "w", format="matroska" if kind == "label" else "mp4")
        for key, value in (tags or {}).items():
            self.container.metadata[key] = value
        if kind == "label":
            self.format = "gray" if bits == 8 else "gray16le"
            self.stream = self.container.add_stream("ffv1", rate=fps)
            self.stream.pix_fmt = self.format
            self.pad = (0, 0)
        else:
            self.format = "rgb24"
            codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
            self.stream = self.container.add_stream(codec, rate=fps)
            self.stream.pix_fmt = "yuv420p"
            if codec == "libx264":
                self.stream.options = {"crf": "18", "preset": "medium"}
            self.pad = (height % 2, width % 2)  # 4:2:0 needs even sizes: repeat the last row/column
        self.stream.width, self.stream.height = width + self.pad[1], height + self.pad[0]

    def write(self, array: np.ndarray) -> None:
        if any(self.pad):
            array = np.pad(array, ((0, self.pad[0]), (0, self.pad[1]), (0, 0)), mode="edge")
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format=self.format)
        frame.pts = self.count
        self.count += 1
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():  # flush the encoder
            self.container.mux(packet)
        self.container.close()


def _atomic_many(paths: list[Path], write: Callable[[list[Path]], None]) -> None:
    """``write(temporary paths)``, then rename every file into place (``atomic_write`` nested)."""
    if not paths:
        write([])
        return
    atomic_write(paths[0], lambda tmp: _atomic_many(paths[1:], lambda rest: write([tmp, *rest])))


def _open_source(av: Any, source: Path) -> tuple[Any, Any]:
    try:
        container = av.open(str(source))
    except (av.error.FFmpegError, OSError) as e:  # not a video, unreadable, missing
        raise ImageReadError(f"cannot read video {source}: {e}; check the file") from None
    if not container.streams.video:
        container.close()
        raise ImageReadError(f"{source} holds no video stream; pass a video file")
    return container, container.streams.video[0]


def segment_video(
    segmenter: Any,
    source: str | Path,
    out_dir: str | Path,
    stem: str | None = None,
    classes: Any = None,
    every: int = 1,
    outputs: tuple[str, ...] | list[str] = VIDEO_OUTPUTS,
    overwrite: bool = False,
    opacity: float = 0.55,
    palette: Any = None,
    labels: bool = True,
    progress: bool = True,
    **options: Any,
) -> VideoSummary:
    """Segment every ``every``-th frame of ``source``; write the label / overlay videos and the JSON.

    Args:
        segmenter: an :class:`ovss.api.segmenter.Segmenter`.
        source: the video file (any container/codec FFmpeg reads).
        out_dir: output folder; ``stem`` names the outputs (default: the file stem), see
            :func:`output_paths`.
        classes: the vocabulary (embedded once); None keeps the segmenter's current one.
        every: take frames 0, every, 2*every, ... (>= 1).
        outputs: any of ``"label"``, ``"overlay"``, ``"json"``.
        overwrite: replace outputs that exist (default: refuse, one line naming them).
        opacity: opacity of the overlay colours, 0 to 1.
        palette: overlay colours (:func:`ovss.api.palettes.get_palette`: a name or a JSON file; None:
            the default, stable per class name), as for image overlays.
        labels: write each class's name on its largest region in every overlay frame.
        progress: show a progress bar counted in frames.
        options: model options, as in :meth:`Segmenter.predict` (``inference=``, ``fast=``, ``tta=``,
            ``min_score=``: pixels below it are unlabelled, 255 in 8-bit / 65535 in 16-bit label frames).

    Raises:
        ConfigError: ``every`` < 1 or an unknown output. OutputPathError: an output exists.
        ImageReadError: the video cannot be read. MissingDependencyError: PyAV is not installed.
    """
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"every must be an integer >= 1 (take every N-th frame), got {every!r}")
    from ovss.api.palettes import get_palette
    from ovss.api.visualize import check_opacity

    source = Path(source)
    paths = _checked_outputs(out_dir, stem or source.stem, outputs, overwrite)
    draw = {"opacity": check_opacity(opacity), "palette": get_palette(palette), "labels": bool(labels)}
    av = import_av()
    if classes is not None:
        segmenter.set_vocabulary(classes)
    vocab = segmenter.vocabulary
    if vocab is None:
        raise ConfigError("no vocabulary: pass classes, e.g. segment_video(seg, 'clip.mp4', 'out', 'cat')")
    container, stream = _open_source(av, source)
    kinds = [kind for kind in paths if kind != "json"]
    state: dict[str, Any] = {}

    def write(tmps: list[Path]) -> None:
        state.update(_stream(av, segmenter, container, stream, dict(zip(kinds, tmps)), every, draw, progress,
                             options))

    try:
        _atomic_many([paths[kind] for kind in kinds], write)  # all videos appear together, or none
    finally:
        container.close()
    summary = VideoSummary(str(source), state["read"], state["frames"], state["fps"], state["width"],
                           state["height"], paths)
    if "json" in paths:
        report = _report(summary, segmenter, every, state, draw["palette"])
        atomic_write_text(paths["json"], json.dumps(report, indent=2) + "\n")
    return summary


def _checked_outputs(
    out_dir: str | Path, stem: str, outputs: tuple[str, ...] | list[str], overwrite: bool
) -> dict[str, Path]:
    """The paths of the chosen ``outputs`` (:func:`output_paths`), checked: known kinds, and none
    existing unless ``overwrite``."""
    bad = [o for o in outputs if o not in VIDEO_OUTPUTS]
    if bad or not outputs:
        raise ConfigError(f"video outputs {list(outputs)}: choose among {', '.join(VIDEO_OUTPUTS)}")
    paths = {k: p for k, p in output_paths(out_dir, stem).items() if k in outputs}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise OutputPathError(f"{', '.join(existing)} already exist(s); pass --overwrite (overwrite=True) to "
                              "replace, or choose another --out")
    return paths


def _stream(
    av: Any, segmenter: Any, container: Any, stream: Any, tmp: dict[str, Path], every: int,
    draw: dict[str, Any], progress: bool, options: dict[str, Any],
) -> dict[str, Any]:
    """Decode -> predict -> encode, one frame at a time; returns the counts and per-class totals."""
    from tqdm import tqdm

    from ovss.api.visualize import overlay

    vocab = segmenter.vocabulary
    names, k = vocab.names, len(vocab)
    fps = Fraction(stream.average_rate or stream.guessed_rate or 25) / every
    total = stream.frames or 0
    bar = tqdm(total=-(-total // every) if total else None, unit="frame", disable=not progress)
    tags = {"label": {VOCABULARY_TAG: json.dumps(names), "OVSS_MODEL": segmenter.name},
            "overlay": {"comment": f"ovss {segmenter.name}: {'; '.join(names)}"}}
    encoders: dict[str, _Encoder] | None = None  # opened at the first frame (its size)
    bits = 8 if k <= 256 else 16
    fractions, present = np.zeros(k), np.zeros(k, dtype=np.int64)
    read = frames = 0
    width = height = 0
    try:
        for read, frame in enumerate(container.decode(stream), 1):
            if (read - 1) % every:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            if encoders is not None and rgb.shape[:2] != (height, width):
                raise ImageReadError(f"frame {read} is {rgb.shape[1]}x{rgb.shape[0]}, the first one {width}x"
                                     f"{height}; videos whose frame size changes are not supported")
            result = segmenter.predict(rgb, **options)
            if encoders is None:
                height, width = rgb.shape[:2]
                encoders = {kind: _Encoder(av, path, kind, fps, width, height, bits, tags[kind])
                            for kind, path in tmp.items()}
            if "label" in encoders:
                encoders["label"].write(result.label_map.astype(np.uint8 if k <= 256 else np.uint16))
            if "overlay" in encoders:
                shown = overlay(rgb, result.label_map, names, result.fractions, draw["opacity"], legend=False,
                                palette=draw["palette"], labels=draw["labels"])
                encoders["overlay"].write(np.asarray(shown))
            fractions += result.fractions
            present += result.fractions > 0
            frames += 1
            bar.update(1)
    except av.error.FFmpegError as e:
        raise ImageReadError(f"cannot decode frame {read + 1} of the video: {e}; check the file") from None
    finally:
        bar.close()
        for encoder in (encoders or {}).values():
            encoder.close()
    if frames == 0:
        raise ImageReadError("the video has no frame that could be decoded; check the file")
    return {"read": read, "frames": frames, "fps": fps, "width": width, "height": height,
            "fractions": fractions / frames, "present": present}


def _report(
    summary: VideoSummary, segmenter: Any, every: int, state: dict[str, Any], palette: Any
) -> dict[str, Any]:
    from ovss.api.palettes import class_colours

    vocab = segmenter.vocabulary
    colours = class_colours(vocab.names, palette)
    return {
        "source": summary.source,
        "model": segmenter.name,
        "width": summary.width,
        "height": summary.height,
        "fps": float(summary.fps),
        "every": every,
        "frames_read": summary.frames_read,
        "frames": summary.frames,
        "outputs": {k: p.name for k, p in summary.paths.items()},
        "label_encoding": "FFV1 grey, pixel = class index (8-bit up to 256 classes, else 16-bit); "
        "unlabelled (min_score): 255 / 65535",
        "vocabulary": [list(c.synonyms) for c in vocab.classes],
        "classes": [
            {
                "index": i,
                "name": name,
                "colour": [int(v) for v in colours[i]],
                "mean_fraction": round(float(state["fractions"][i]), 6),
                "frames_present": int(state["present"][i]),
            }
            for i, name in enumerate(vocab.names)
        ],
    }


def label_video_vocabulary(path: str | Path) -> list[str]:
    """The class names embedded in a label video written by :func:`segment_video`."""
    av = import_av()
    with av.open(str(path)) as container:
        tags = {key.upper(): value for key, value in container.metadata.items()}
    if VOCABULARY_TAG not in tags:
        raise ImageReadError(f"{path} carries no ovss vocabulary; is it a label video of ovss segment?")
    return list(json.loads(tags[VOCABULARY_TAG]))


def read_label_video(path: str | Path) -> Iterator[np.ndarray]:
    """Yield the (H, W) label maps (uint8 or uint16 class indices) of a label video, in order."""
    av = import_av()
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray()
