"""Everything the web demo does, without gradio: model catalogue, request checks, segmentation, legend.

The UI (:mod:`ovss.demo.app`) only wires these functions to widgets, so each behaviour here is tested
directly. Messages raised as :class:`DemoUserError` are shown to a web user as they are: they name the
problem and what to do in the page's terms (never a command-line flag or a server path).
"""

from __future__ import annotations

import dataclasses
import html
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovss.demo.display import (  # noqa: F401  (DISPLAY_SIDE, display_overlay: part of this module's API)
    DEFAULT_OPACITY,
    DISPLAY_SIDE,
    DemoUserError,
    display_options,
    display_overlay,
    display_score_map,
)
from ovss.errors import ImageReadError, ImageTooLargeError, OvssError, VocabularyError

EXAMPLE_CLASSES = "person; car; bus; road; building; sky; tree; grass"
MAX_FEATURE_SESSIONS = 4  # browser sessions whose latest image features are kept (re-query)
MAX_VOCABULARY_CHARS = 100_000  # characters in the class box (independent of the class count)

log = logging.getLogger("ovss.demo")


@dataclasses.dataclass(frozen=True)
class DemoLimits:
    """Per-request limits of the web demo (every request is checked before the model runs).

    Attributes:
        max_pixels: largest image, in pixels (width x height), checked from the file header.
        max_classes: most classes in one vocabulary.
        max_upload_mb: largest upload, in MiB.
        queue_size: requests that may wait in the queue (they run one at a time).
        keep_files_s: uploads and results are deleted from the server this many seconds after they
            were written.
    """

    max_pixels: int = 25_000_000
    max_classes: int = 1000
    max_upload_mb: float = 25.0
    queue_size: int = 20
    keep_files_s: int = 1800

    def __post_init__(self) -> None:
        for name in ("max_pixels", "max_classes", "max_upload_mb", "queue_size", "keep_files_s"):
            if not getattr(self, name) > 0:
                raise OvssError(f"demo limit {name} must be > 0, got {getattr(self, name)}")


# ----------------------------------------------------------------------------------------- models
@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """One model of the catalogue: what the page shows about it and whether it can be chosen."""

    name: str  # registry name or checkpoint path (the dropdown value)
    family: str  # a registered family's name, or "" (unknown until loaded)
    status: str  # "on disk" | "built in, random weights" | "local file" | "not downloaded"
    description: str = ""

    @property
    def usable(self) -> bool:
        """Whether the server can load it without downloading anything."""
        return self.status != "not downloaded"

    @property
    def label(self) -> str:
        """Dropdown label: name (a checkpoint file by its file name) and weights status."""
        name = Path(self.name).name if self.status == "local file" else self.name
        return f"{name} ({self.status})"


def model_catalogue(startup_model: str, startup_family: str = "") -> list[ModelEntry]:
    """Every registered model with its weights status, the model the server was started with first.

    The tiny random ``test-*`` models are listed only when the demo was started with one of them (an
    offline check of the pipeline); their labels are meaningless otherwise.
    """
    from ovss.weights.registry import WEIGHTS
    from ovss.weights.resolve import is_available

    entries: list[ModelEntry] = []
    names = {spec.name for spec in WEIGHTS}
    if startup_model not in names:  # a checkpoint file given to `ovss demo --model FILE`
        entries.append(ModelEntry(startup_model, startup_family, "local file", "checkpoint file"))
    with_tests = startup_model.startswith("test-")
    for spec in WEIGHTS:
        if spec.source_format == "random":
            if not with_tests:
                continue
            status = "built in, random weights"
        elif spec.name == startup_model or is_available(spec):
            status = "on disk"
        else:
            status = "not downloaded"
        entries.append(ModelEntry(spec.name, spec.family, status, spec.description))
    entries.sort(key=lambda e: e.name != startup_model)  # stable: the startup model first
    return entries


def weights_table(entries: list[ModelEntry]) -> str:
    """Markdown table of the catalogue (name, family, weights status, description)."""
    rows = ["| model | family | weights | description |", "|---|---|---|---|"]
    for e in entries:
        rows.append(f"| `{e.name}` | {e.family or '?'} | {e.status} | {e.description} |")
    missing = [e.name for e in entries if not e.usable]
    note = (
        "\n\nModels whose weights are not on this server are not offered; the server's operator adds "
        "them with `ovss download NAME` (or `ovss convert NAME FILE`) and restarts the demo."
        if missing
        else ""
    )
    return "\n".join(rows) + note


def _inference_option(family: str) -> Any:
    """The family's ``inference=`` option descriptor (None: the family has none, or is unknown)."""
    from ovss.models.family import find_family

    descriptor = find_family(family)
    return descriptor.inference if descriptor is not None else None


def inference_choices(family: str, modes: list[str]) -> list[tuple[str, str]]:
    """(label, mode) pairs of the page's inference radio for a model of ``family``."""
    option = _inference_option(family)
    labels = option.labels if option is not None else {}
    return [(labels.get(m, m), m) for m in modes]


def option_visibility(family: str) -> dict[str, bool]:
    """Which per-model widgets apply: ``{"fast": ..., "inference": ...}`` (the families' ``options``):
    ``fast`` is SED's early-rejection group, ``inference`` the inference-protocol radio."""
    from ovss.models.family import find_family

    descriptor = find_family(family)
    options = descriptor.options if descriptor is not None else ()
    return {"fast": "fast" in options, "inference": "inference" in options}


def inference_modes(family: str, model_default: str = "") -> tuple[list[str], str]:
    """The inference modes the page offers for a model, and the one selected at first.

    Read from the family's descriptor (``InferenceOption.demo_modes``): the first selection is
    ``ovss segment``'s default: ``whole`` for CAT-Seg (one pass, aspect ratio kept, 4-5x faster than
    the official ``slide``); the model's own protocol (``model_default``, its config's ``inference``)
    for CAT-Seg v1. CAT-Seg v1 models of the official code offer ``whole`` and ``slide``, those of the
    mmseg port (``model_default == "mmseg"``) their ``mmseg`` protocol and ``whole``. SAN: its config's
    protocol first (``mmseg`` for the ``.mmseg`` weights, else ``d2``), then the other. Families
    without the option: ``([], "")``.
    """
    option = _inference_option(family)
    if option is None:
        return [], ""
    return option.demo_modes(model_default)


def model_options(
    family: str,
    fast: bool = False,
    topk: float | None = None,
    inference: str = "",
    model_default: str = "",
) -> dict:
    """The predict options of the widgets that apply to ``family`` (the others are ignored).

    ``inference`` empty means the first selection of :func:`inference_modes`; ``model_default`` is
    the model config's ``inference`` (SAN and CAT-Seg v1).

    Raises:
        DemoUserError: a SED top-k that is not a whole number >= 1, or an inference mode the model
            does not offer.
    """
    show = option_visibility(family)
    if show["fast"] and fast:
        options: dict[str, Any] = {"fast": True}
        if topk is not None:
            try:
                k = int(topk) if float(topk) == int(topk) else 0
            except (TypeError, ValueError, OverflowError):
                k = 0
            if k < 1:
                raise DemoUserError(f"'classes kept per pixel' must be a whole number >= 1, got {topk!r}")
            options["topk"] = k
        return options
    option = _inference_option(family)
    if show["inference"] and option is not None:
        modes, first = option.demo_modes(model_default)
        # the page's one radio serves every family: a mode of another family sent with this model (a
        # client that fills the hidden radio with "whole", as before SAN had protocols) means its own
        if not inference or inference in option.foreign:
            return {"inference": first}
        if inference not in modes:
            raise DemoUserError(
                f"inference {str(inference)[:40]!r} is not offered for this model; choose one of: "
                f"{', '.join(modes)}"
            )
        return {"inference": inference}
    return {}


def web_message(error: OvssError) -> str:
    """The message of a library error for a web user: a fix that names a command-line flag or an ``ovss``
    command (meant for a terminal user) is cut, leaving the statement of the problem."""
    message = str(error)
    if re.search(r"(^|\s)--[a-z]|'ovss ", message):
        message = message.split(";")[0].strip()
    return message


# ----------------------------------------------------------------------------------------- inputs
def parse_classes(text: str | None, limits: DemoLimits) -> list[list[str]]:
    """Class names typed in the page -> one list of synonyms per class.

    ``;`` separates classes and ``,`` synonyms (``"cat; sofa, couch; wall"``), or a JSON list. The text
    is never read as a file name (a server path stays a class name).
    """
    if text is not None and not isinstance(text, str):
        raise DemoUserError("the class list must be text, e.g. 'cat; sofa, couch; wall'")
    text = (text or "").strip()
    if not text:
        raise DemoUserError("no classes: type class names separated by ';', e.g. 'cat; sofa, couch; wall'")
    if len(text) > MAX_VOCABULARY_CHARS:
        raise DemoUserError(
            f"the class list is {len(text):,} characters long; this demo accepts up to "
            f"{MAX_VOCABULARY_CHARS:,}"
        )
    if text.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise DemoUserError(f"the class list starts with '[' but is not valid JSON ({e.msg})") from None
        if not isinstance(items, list) or not all(
            isinstance(i, str) or (isinstance(i, list) and all(isinstance(s, str) for s in i)) for i in items
        ):
            raise DemoUserError(
                'a JSON class list must hold names or lists of synonyms: ["cat", ["sofa", "couch"]]'
            )
        classes = [[i] if isinstance(i, str) else list(i) for i in items]
    else:
        classes = [part.split(",") for part in text.split(";")]
    classes = [syn for syn in ([s.strip() for s in c if s.strip()] for c in classes) if syn]
    if not classes:
        raise DemoUserError("no classes: type class names separated by ';', e.g. 'cat; sofa, couch; wall'")
    if len(classes) > limits.max_classes:
        raise DemoUserError(
            f"{len(classes):,} classes given; this demo accepts up to {limits.max_classes:,} per request"
        )
    return classes


def upload_path(image: Any) -> Path:
    """The file of an uploaded image (gradio's ``{"path": ...}`` payload or a plain path).

    Only the path is read from the payload (never its ``url``); whether the server may open that file
    is :class:`UploadGate`'s decision.
    """
    if image is None or image == "":
        raise DemoUserError("no image: upload an image (or pick an example) first")
    path = image.get("path") if isinstance(image, dict) else image
    if not isinstance(path, str | Path) or not str(path) or "\x00" in str(path):
        raise DemoUserError("no image: upload an image (or pick an example) first")
    return Path(path)


NOT_UPLOADED = "the image was not uploaded to this page: upload it (or pick an example), then press Segment"


class UploadGate:
    """The server files a web request may name: what this server received as uploads, and its examples.

    A request names its image by a server path (gradio's file payload), so without this check a client
    could have any file the server can read segmented. The check compares the normalised path string
    with the allowed ones *before* touching the file system, so a refusal never tells whether a path
    exists. Uploaded files live in the server's private upload folder under content-hash names that
    gradio returns only to the uploader.

    Args:
        uploaded: returns the paths of the files uploaded to this server (gradio's
            ``Blocks.upload_file_set``); read at each request. The default admits no upload.
        examples: the example photos the page offers (their paths as the page sends them).
    """

    def __init__(
        self, uploaded: Callable[[], Collection[str]] = frozenset, examples: Iterable[str | Path] = ()
    ) -> None:
        self._uploaded = uploaded
        self.examples = {self.key(p) for p in examples}

    @staticmethod
    def key(path: str | Path) -> str:
        """The comparable form of a path: absolute and normalised (``..`` folded), symlinks kept."""
        return os.path.normpath(os.path.abspath(os.fspath(path)))

    def admits(self, path: str | Path) -> bool:
        """Whether a request may read ``path``."""
        key = self.key(path)
        return key in self.examples or key in {self.key(p) for p in self._uploaded()}

    def check(self, path: Path) -> Path:
        """The admitted file to open (normalised), or the page's one-line refusal, the same whether
        ``path`` exists or not."""
        if not self.admits(path):
            log.info("request refused: it names a file that was not uploaded")
            raise DemoUserError(NOT_UPLOADED)
        return Path(self.key(path))


def read_upload(path: Path, limits: DemoLimits) -> np.ndarray:
    """Check an uploaded file (size, then the pixel count from its header) and decode it to RGB.

    Returns:
        (H, W, 3) uint8 RGB (EXIF orientation applied).
    """
    from ovss.data.io import read_image

    try:
        size = path.stat().st_size
    except OSError:
        raise DemoUserError("the uploaded image is no longer on the server; upload it again") from None
    if size > limits.max_upload_mb * 2**20:
        raise DemoUserError(
            f"the upload is {size / 2**20:.1f} MB; this demo accepts files up to {limits.max_upload_mb:g} MB"
        )
    bad = DemoUserError(
        "the upload is not an image this demo can read; use a JPEG, PNG, WebP, TIFF or BMP file"
    )
    try:  # read_image checks the pixel count from the header before decoding anything
        return read_image(path, max_pixels=limits.max_pixels)
    except ImageTooLargeError as exc:
        shown = f"is {exc.size[0]}x{exc.size[1]} pixels" if exc.size else "has far too many pixels"
        raise DemoUserError(
            f"the image {shown}; this demo accepts up to {limits.max_pixels / 1e6:g} million pixels: "
            "downscale it and upload it again"
        ) from None
    except ImageReadError:
        raise bad from None


# ----------------------------------------------------------------------------------------- outputs
def _percent(fraction: float) -> str:
    pct = 100 * float(fraction)
    return f"{pct:.1f} %" if pct >= 0.1 else "&lt;0.1 %"


def legend_html(names: list[str], fractions: np.ndarray, colours: np.ndarray, unlabelled: float = 0.0) -> str:
    """HTML legend of the classes present: colour swatch, name and % of pixels, largest first.

    Classes that cover no pixel are left out; names are HTML-escaped. ``unlabelled`` (the fraction
    left unlabelled by the minimum score) adds a last row "unlabelled" with an empty swatch.
    """
    order = [k for k in np.argsort(-np.asarray(fractions), kind="stable") if fractions[k] > 0]
    if not order and unlabelled <= 0:
        return '<div class="ovss-legend"><p>no class covers any pixel</p></div>'
    rows = []
    for k in order:
        r, g, b = (int(c) for c in colours[k])
        rows.append(
            f'<tr><td><span class="ovss-swatch" style="background: rgb({r}, {g}, {b})"></span></td>'
            f'<td class="ovss-name">{html.escape(names[k])}</td>'
            f'<td class="ovss-pct">{_percent(fractions[k])}</td></tr>'
        )
    if unlabelled > 0:
        rows.append(
            '<tr class="ovss-unlabelled"><td><span class="ovss-swatch"></span></td>'
            f'<td class="ovss-name">unlabelled</td><td class="ovss-pct">{_percent(unlabelled)}</td></tr>'
        )
    return (
        '<div class="ovss-legend"><table><thead><tr><th></th><th>class</th><th>pixels</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


class ResultFiles:
    """A private temporary folder for the label-map downloads; only the newest ``keep`` files stay.

    gradio copies each returned file into its own cache (cleaned by the app's ``delete_cache``), so the
    folder holds a few files at any time and is removed by :meth:`close`.
    """

    def __init__(self, keep: int = 8) -> None:
        self.dir: Path | None = None  # created on the first write
        self._files: deque[Path] = deque()
        self._keep = keep
        self._count = 0

    def write_label_map(
        self, label_map: np.ndarray, stem: str, num_classes: int, colours: np.ndarray | None = None
    ) -> Path:
        """Write the label map as a palette PNG (``colours``: the overlay's; 16-bit grey above 256
        classes or when unlabelled pixels hold 65535)."""
        from ovss.api.visualize import palette
        from ovss.data.io import write_label_png

        if self.dir is None:
            self.dir = Path(tempfile.mkdtemp(prefix="ovss-demo-"))
        self._count += 1
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)[:60] or "image"
        path = self.dir / f"{self._count:06d}" / f"{safe}_label.png"
        if colours is None:
            colours = palette(num_classes)
        write_label_png(path, label_map, colours if num_classes <= 256 else None)
        self._files.append(path)
        while len(self._files) > self._keep:
            shutil.rmtree(self._files.popleft().parent, ignore_errors=True)
        return path

    def close(self) -> None:
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)


@dataclasses.dataclass
class DemoOutput:
    """What one request returns to the page."""

    overlay: Image.Image  # display-size overlay, no legend
    legend: str  # HTML legend
    table: list[list[Any]]  # [class, % pixels, peak score] of the classes present
    label_file: Path  # full-resolution label map PNG (values index the class list; 255 = unlabelled)
    score_map: Image.Image | None = None  # display-size heat map of the chosen class, when one is chosen


# ----------------------------------------------------------------------------------------- backend
class DemoBackend:
    """Loads one model at a time (never downloading) and segments for the UI; no gradio here.

    Args:
        model: registry name or checkpoint file loaded first (may be downloaded at start-up, by the
            command line, never inside a web request).
        device, dtype, weights: as for :func:`ovss.load`.
        limits: per-request limits.
        gate: which server files a request may name (:class:`UploadGate`; the page installs one that
            admits its uploads and examples). The default admits none.
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "auto",
        weights: str | None = None,
        limits: DemoLimits | None = None,
        gate: UploadGate | None = None,
    ) -> None:
        self.device, self.dtype, self.weights = device, dtype, weights
        self.limits = limits or DemoLimits()
        self.gate = gate or UploadGate()
        # The image features of each browser session's latest image (re-query: a request that only
        # changes the classes skips the image stage). Kept per session, never shared between users, so
        # a faster answer cannot tell a user that someone else sent the same image.
        self._features: OrderedDict[str, tuple[str, Any]] = OrderedDict()
        self.startup_model = self.model_name = model
        self._segmenter: Any = None
        self._family = ""
        self._startup_family = ""
        self._lock = threading.Lock()
        self.files = ResultFiles()

    def catalogue(self) -> list[ModelEntry]:
        """The models this server offers or lists (see :func:`model_catalogue`)."""
        return model_catalogue(self.startup_model, self._startup_family)

    def family(self, model: str) -> str:
        """Family of a catalogue model (``""`` when unknown)."""
        for entry in self.catalogue():
            if entry.name == model:
                return entry.family
        return ""

    def model_default_inference(self, model: str) -> str:
        """The ``inference`` of the model's config (``""``: none, or unknown until it is loaded)."""
        if model == self.model_name and self._segmenter is not None:
            return str(getattr(self._segmenter.model.config, "inference", ""))
        from ovss.weights.registry import get_weight_spec

        try:
            return str(getattr(get_weight_spec(model).config(), "inference", ""))
        except OvssError:  # a checkpoint file: known once loaded
            return ""

    def inference_modes(self, model: str) -> tuple[list[str], str]:
        """The inference modes offered for ``model`` and the first selection (:func:`inference_modes`)."""
        return inference_modes(self.family(model), self.model_default_inference(model))

    def segmenter(self, model: str | None = None) -> Any:
        """The loaded segmenter for ``model`` (the startup model by default), loading it if needed."""
        from ovss.api.requery import ImageCache
        from ovss.api.segmenter import load
        from ovss.models.build import family_of

        model = model or self.model_name
        if self._segmenter is None or model != self.model_name:
            self._segmenter = None  # free the old model before loading the next one
            weights = self.weights if model == self.startup_model else None
            self._features.clear()
            self._segmenter = load(model, device=self.device, dtype=self.dtype, weights=weights)
            self._segmenter.image_cache = ImageCache(0)  # features are reused per session (_image_features)
            self.model_name = model
            self._family = family_of(self._segmenter.model.config)
            if model == self.startup_model:
                self._startup_family = self._family
        return self._segmenter

    def _check_offered(self, model: str) -> None:
        entries = {e.name: e for e in self.catalogue()}
        entry = entries.get(model)
        if entry is None:
            offered = ", ".join(n for n, e in entries.items() if e.usable)
            raise DemoUserError(f"model {model!r} is not offered by this server; choose one of: {offered}")
        if not entry.usable:
            raise DemoUserError(
                f"the weights of {model} are not on this server, so it cannot be used here; choose another "
                "model"
            )

    def segment(
        self,
        image: Any,
        classes: str | None,
        model: str | None = None,
        fast: bool = False,
        topk: float | None = None,
        inference: str = "",
        min_score: Any = None,
        opacity: Any = DEFAULT_OPACITY,
        labels: Any = True,
        score_class: Any = "",
        session: str = "",
    ) -> DemoOutput:
        """One web request: check the inputs against the limits, segment, render the outputs.

        ``min_score``, ``opacity``, ``labels`` and ``score_class`` are the display controls
        (:func:`display_options`); their defaults give the page's first rendering. ``session``
        identifies the browser session (gradio's session hash): its latest image's features are
        reused when only the classes or display controls change; ``""`` keeps nothing.
        """
        vocabulary = parse_classes(classes, self.limits)
        display = display_options(vocabulary, min_score, opacity, labels, score_class)
        path = self.gate.check(upload_path(image))
        rgb = read_upload(path, self.limits)
        model = model or self.model_name
        if not isinstance(model, str):
            raise DemoUserError(f"the model must be a name, got {type(model).__name__}")
        if model != self.model_name:
            self._check_offered(model)
        with self._lock:  # one request at a time uses the model (the queue also runs one at a time)
            try:
                segmenter = self.segmenter(model)
            except OvssError as e:  # its message is for a terminal user (server paths, commands)
                log.warning("cannot load %s: %s", model, e)
                raise DemoUserError(
                    f"the model {model} could not be loaded on this server (the reason is in the server "
                    "log); choose another model"
                ) from None
            default = str(getattr(segmenter.model.config, "inference", ""))
            options = model_options(self._family, fast, topk, inference, default)
            try:
                handle = self._image_features(segmenter, rgb, options, session)
                result = segmenter.predict(handle, vocabulary, **_display_kwargs(display))
            except VocabularyError as e:
                raise DemoUserError(f"the class list is not valid: {web_message(e)}") from None
        colours = result.colours()
        table = [
            [name, round(100 * frac, 2), round(float(result.class_scores[result.class_names.index(name)]), 4)]
            for name, frac in result.present()
        ]
        orig_name = image.get("orig_name") if isinstance(image, dict) else None
        stem = Path(orig_name).stem if isinstance(orig_name, str) and orig_name else path.stem
        k = len(result.class_names)
        return DemoOutput(
            overlay=display_overlay(
                result.image, result.label_map, result.class_names, display.opacity, display.labels
            ),
            legend=legend_html(result.class_names, result.fractions, colours, result.unlabelled_fraction),
            table=table,
            label_file=self.files.write_label_map(result.label_map, stem, k, colours),
            score_map=display_score_map(result.image, result.scores[0])
            if result.scores is not None
            else None,
        )

    def _image_features(self, segmenter: Any, rgb: np.ndarray, options: dict[str, Any], session: str) -> Any:
        """The image-stage features of ``rgb`` for this request: the session's own last ones when the
        image, model and options are the same, else computed now (and kept for the session)."""
        from ovss.api.requery import default_image_cache_mb, pixel_digest

        key = json.dumps([self.model_name, pixel_digest(rgb), options], sort_keys=True, default=str)
        kept = self._features.pop(session, None) if session else None
        handle = kept[1] if kept is not None and kept[0] == key else segmenter.encode_image(rgb, **options)
        if session:
            self._features[session] = (key, handle)
            budget = default_image_cache_mb() * 2**20
            while len(self._features) > MAX_FEATURE_SESSIONS or (
                len(self._features) > 1 and sum(h.nbytes for _, h in self._features.values()) > budget
            ):
                self._features.popitem(last=False)  # the least recently used session's features go
        return handle

    def close(self) -> None:
        """Remove the temporary files of this backend."""
        self._features.clear()
        self.files.close()


def _display_kwargs(display: Any) -> dict[str, Any]:
    """The predict arguments of the display controls that are set (the model options stay apart)."""
    kwargs: dict[str, Any] = {}
    if display.score_class is not None:
        kwargs["return_scores"] = [display.score_class]  # that class's map only, not all K
    if display.min_score is not None:
        kwargs["min_score"] = display.min_score
    return kwargs
