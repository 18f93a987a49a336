"""Everything the web demo does, without gradio: model catalogue, request checks, segmentation, legend.

The UI (:mod:`ovss.demo.app`) only wires these functions to widgets, so each behaviour here is tested
directly. Messages raised as :class:`DemoUserError` are shown to a web user as they are: they name the
problem and what to do in the page's terms (never a command-line flag or a server path).
"""

from __future__ import annotations

import dataclasses
import html
import logging
import re
import shutil
import tempfile
import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ovss.demo.catalogue import ModelEntry, inference_modes, model_catalogue, model_options
from ovss.demo.display import (  # noqa: F401  (DISPLAY_SIDE, display_overlay: part of this module's API)
    DEFAULT_OPACITY,
    DISPLAY_SIDE,
    DemoUserError,
    display_options,
    display_overlay,
    display_score_map,
)
from ovss.demo.inputs import DemoLimits, UploadGate, parse_classes, read_upload, upload_path
from ovss.errors import OvssError, VocabularyError

EXAMPLE_CLASSES = "person; car; bus; road; building; sky; tree; grass"
MAX_FEATURE_SESSIONS = 4  # browser sessions whose latest image features are kept (re-query)

log = logging.getLogger("ovss.demo")


def web_message(error: OvssError) -> str:
    """The message of a library error for a web user: a fix that names a command-line flag or an ``ovss``
    command (meant for a terminal user) is cut, leaving the statement of the problem."""
    message = str(error)
    if re.search(r"(^|\s)--[a-z]|'ovss ", message):
        message = message.split(";")[0].strip()
    return message


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
        from ovss.api.requery import ImageCache

        self.device, self.dtype, self.weights = device, dtype, weights
        self.limits = limits or DemoLimits()
        self.gate = gate or UploadGate()
        # The image features of each browser session's latest image (re-query: a request that only
        # changes the classes skips the image stage), stored under the session alone: never shared
        # between users, so a faster answer cannot tell a user that someone else sent the same image.
        # Bounded as the segmenter's cache ($OVSS_IMAGE_CACHE_MB), the latest session's kept in any case.
        self._features = ImageCache(max_items=MAX_FEATURE_SESSIONS, keep_latest=True)
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
            segmenter = self._segmenter_for_request(model)
            default = str(getattr(segmenter.model.config, "inference", ""))
            options = model_options(self._family, fast, topk, inference, default)
            try:
                handle = self._image_features(segmenter, rgb, options, session)
                result = segmenter.predict(handle, vocabulary, **_display_kwargs(display))
            except VocabularyError as e:
                raise DemoUserError(f"the class list is not valid: {web_message(e)}") from None
        orig_name = image.get("orig_name") if isinstance(image, dict) else None
        stem = Path(orig_name).stem if isinstance(orig_name, str) and orig_name else path.stem
        return self._output(result, display, stem)

    def _segmenter_for_request(self, model: str) -> Any:
        """The segmenter of ``model`` (loaded if needed), or the page's line when it cannot be loaded."""
        try:
            return self.segmenter(model)
        except OvssError as e:  # its message is for a terminal user (server paths, commands)
            log.warning("cannot load %s: %s", model, e)
            raise DemoUserError(
                f"the model {model} could not be loaded on this server (the reason is in the server "
                "log); choose another model"
            ) from None

    def _output(self, result: Any, display: Any, stem: str) -> DemoOutput:
        """What the page shows of ``result``: overlay, legend, table, label-map file, score map."""
        colours = result.colours()
        table = [
            [name, round(100 * frac, 2), round(float(result.class_scores[result.class_names.index(name)]), 4)]
            for name, frac in result.present()
        ]
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
        """The image-stage features of ``rgb`` for this request: the session's own last ones when their
        key (:func:`~ovss.api.requery.cache_key`: pixels, model, dtype, options) is this request's, else
        computed now (the session's old ones freed first) and kept for the session."""
        from ovss.api.requery import cache_key

        key = cache_key(rgb, segmenter.identity, segmenter.dtype, options, None)
        kept = self._features.pop((session,)) if session else None
        handle = kept if kept is not None and kept.key == key else segmenter.encode_image(rgb, **options)
        if session:
            self._features.put(handle, key=(session,))  # least recently used sessions beyond the bounds go
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
