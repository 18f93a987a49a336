"""The gradio page of ``ovss demo``: widgets wired to :mod:`ovss.demo.backend` (gradio imported lazily).

Run with ``ovss demo --model san-vit-b16`` (needs ``pip install 'ovss[demo]'``). The page's one API
endpoint is ``/segment`` (see README, "Web demo", for a ``gradio_client`` example).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ovss.demo.backend import DEFAULT_OPACITY, EXAMPLE_CLASSES, DemoBackend, DemoUserError, web_message
from ovss.demo.catalogue import inference_choices, option_visibility, weights_table
from ovss.demo.inputs import DemoLimits, UploadGate
from ovss.errors import OvssError, missing_dependency

log = logging.getLogger("ovss.demo")

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".webp")
EXAMPLE_VOCABULARIES = {"quokka": "quokka; grass; rock, stone; sky; tree"}
VOC_VOCABULARY = "person; bottle; chair; sofa, couch; bus; car; road; building; wall; floor; sky; tree"
MAX_EXAMPLES = 8
MAX_SCORE_CHOICES = 200  # classes listed in the score-map dropdown (any class can be typed)

CSS = """
.ovss-legend { max-height: 520px; overflow-y: auto; font-size: 0.95rem; }
.ovss-legend table { border-collapse: collapse; width: 100%; }
.ovss-legend th { text-align: left; font-weight: 600; padding: 2px 6px; }
.ovss-legend td { padding: 3px 6px; vertical-align: middle; }
.ovss-legend th, .ovss-legend td { border: none !important; background: none !important; }
.ovss-legend tbody tr { border-top: 1px solid var(--border-color-primary); }
.ovss-legend .ovss-pct { text-align: right; white-space: nowrap; font-variant-numeric: tabular-nums; }
.ovss-legend .ovss-name { overflow-wrap: break-word; }
#ovss-legend { min-width: min(200px, 100%) !important; }
.ovss-swatch { display: inline-block; width: 1.1em; height: 1.1em; border: 1px solid #444;
               border-radius: 3px; vertical-align: middle; }
"""


def import_gradio() -> Any:
    """``import gradio``, or the one-line error naming the extra to install."""
    try:
        import gradio
    except ImportError:
        raise missing_dependency("gradio", "demo") from None
    return gradio


def check_port(host: str, port: int) -> None:
    """Refuse a port that is out of range or already in use on ``host`` (before any model is loaded)."""
    if not 1 <= port <= 65535:
        raise OvssError(f"--port must be between 1 and 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        raise OvssError(
            f"cannot resolve --host {host!r}; use an address such as 127.0.0.1 or 0.0.0.0"
        ) from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: TIME_WAIT is no conflict
        try:
            s.bind(address)
        except OSError as e:
            raise OvssError(
                f"cannot serve on {host}:{port}: {e.strerror or e} (another server is using it?); choose "
                "another port with --port N"
            ) from None


def default_examples_dir() -> Path | None:
    """The sample photos of the project (``../shared/data`` beside the repository), when present."""
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def find_examples(folder: Path | None) -> list[list[str]]:
    """``[photo path, class list]`` rows for the photos (.jpg/.jpeg/.webp) in ``folder`` and its
    sub-folders (label PNGs are not photos); ``[]`` when the folder is None or missing."""
    if folder is None or not folder.is_dir():
        return []
    photos = sorted(
        p
        for p in [*folder.iterdir(), *folder.glob("*/*")]
        if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES
    )
    return [[str(p), EXAMPLE_VOCABULARIES.get(p.stem.lower(), VOC_VOCABULARY)] for p in photos[:MAX_EXAMPLES]]


def _duration(seconds: int) -> str:
    return f"{seconds // 60} minutes" if seconds >= 120 else f"{seconds} seconds"


def _on_model(backend: DemoBackend, gr: Any) -> Any:
    """The model dropdown's handler: show the options of the chosen model's family."""

    def on_model(model: str, sed_fast: bool) -> tuple[Any, Any, Any]:
        show = option_visibility(backend.family(model))
        choices, first = backend.inference_modes(model)
        return (
            gr.update(visible=show["fast"]),
            gr.update(visible=show["fast"] and bool(sed_fast)),  # top-k only matters in fast mode
            gr.update(
                visible=show["inference"],
                choices=inference_choices(backend.family(model), choices or ["whole"]),
                value=first or "whole",
            ),
        )

    return on_model


def _segment_handler(backend: DemoBackend, gr: Any) -> Any:
    """The ``/segment`` handler: the backend's result, or one error message for the page."""

    def segment(
        image,
        classes,
        model,
        sed_fast,
        sed_topk,
        catseg_inference,
        min_score=None,
        opacity=DEFAULT_OPACITY,
        labels=True,
        score_class="",
        request=None,
    ):
        try:
            out = backend.segment(
                image,
                classes,
                model,
                bool(sed_fast),
                sed_topk,
                catseg_inference or "",
                min_score=min_score,
                opacity=opacity,
                labels=labels,
                score_class=score_class or "",
                session=str(getattr(request, "session_hash", None) or ""),
            )
        except DemoUserError as e:
            log.info("request refused: %s", e)
            raise gr.Error(str(e), print_exception=False) from None
        except OvssError as e:
            log.info("request failed: %s", e)
            raise gr.Error(web_message(e), print_exception=False) from None
        except Exception:
            log.exception("internal error while segmenting")
            raise gr.Error(
                "internal error while segmenting (details are in the server log)", print_exception=False
            ) from None
        return out.overlay, out.legend, str(out.label_file), out.table, out.score_map

    segment.__annotations__ = {"request": gr.Request}  # gradio passes the request (its session hash)
    return segment


def _input_column(gr: Any, backend: DemoBackend, offered: list, min_score: float | None) -> SimpleNamespace:
    """The left column: image, classes, model and its options, display controls, the button."""
    visible = option_visibility(backend.family(backend.model_name))
    modes, first_mode = backend.inference_modes(backend.model_name)
    image = gr.Image(
        type="filepath",
        label="image",
        sources=["upload", "clipboard"],
        height=360,
        elem_id="ovss-image",
    )
    classes = gr.Textbox(
        value=EXAMPLE_CLASSES,
        label="classes",
        info="';' between classes, ',' between synonyms: cat; sofa, couch; wall",
        lines=2,
        elem_id="ovss-classes",
    )
    model = gr.Dropdown(
        offered,
        value=backend.model_name,
        label="model",
        info="weights status in brackets",
        elem_id="ovss-model",
    )
    fast = gr.Checkbox(
        value=False,
        label="SED fast mode (category early rejection)",
        visible=visible["fast"],
        elem_id="ovss-sed-fast",
    )
    topk = gr.Number(
        value=8,
        precision=0,
        minimum=1,
        label="SED fast mode: classes kept per pixel",
        visible=False,
        elem_id="ovss-sed-topk",
    )
    inference = gr.Radio(
        inference_choices(backend.family(backend.model_name), modes or ["whole"]),
        value=first_mode or "whole",
        label="inference protocol (SAN, CAT-Seg)",
        visible=visible["inference"],
    )
    display = display_controls(gr, min_score)
    button = gr.Button("Segment", variant="primary", elem_id="ovss-segment")
    return SimpleNamespace(image=image, classes=classes, model=model, fast=fast, topk=topk,
                           inference=inference, display=display, button=button)


def _output_column(gr: Any) -> SimpleNamespace:
    """The right column: overlay and legend, label-map file, class table, score map."""
    with gr.Row():
        overlay = gr.Image(
            type="pil",
            format="png",
            label="segmentation",
            interactive=False,
            scale=2,
            min_width=320,  # narrower screens put the legend below the image
            elem_id="ovss-overlay",
        )
        legend = gr.HTML(label="legend", elem_id="ovss-legend", min_width=220, scale=1)
    label_file = gr.File(
        label="label map (PNG)",
        interactive=False,
        elem_id="ovss-label-file",
    )
    table = gr.Dataframe(
        headers=["class", "% pixels", "peak score"],
        label="classes present",
        interactive=False,
        elem_id="ovss-table",
    )
    score_map = gr.Image(
        type="pil",
        format="png",
        label="score map of the chosen class (black 0, pale yellow 1)",
        interactive=False,
        visible=False,
        elem_id="ovss-score-map",
    )
    score_state = gr.State(None)  # not part of the /segment API (State is not exposed)
    return SimpleNamespace(overlay=overlay, legend=legend, label_file=label_file, table=table,
                           score_map=score_map, score_state=score_state)


def _limits_text(limits: DemoLimits) -> str:
    return (
        f"Limits per request: images up to {limits.max_pixels / 1e6:g} million pixels and "
        f"{limits.max_upload_mb:g} MB, up to {limits.max_classes:,} classes; requests run one at a time "
        f"(at most {limits.queue_size} waiting). Uploads and results are deleted from the server after "
        f"{_duration(limits.keep_files_s)}. The label map PNG is full size; its pixel value is the index "
        "of the class in your list (0 = the first). API: `/segment` (see *Use via API* below)."
    )


def _wire(gr: Any, backend: DemoBackend, inputs: SimpleNamespace, outputs: SimpleNamespace) -> None:
    """The page's events; ``/segment`` is the only API endpoint."""
    inputs.model.change(
        _on_model(backend, gr), [inputs.model, inputs.fast], [inputs.fast, inputs.topk, inputs.inference],
        api_name=False,
    )
    inputs.fast.change(lambda on: gr.update(visible=bool(on)), [inputs.fast], [inputs.topk], api_name=False)
    # The legend (HTML) shows no error state: clear it in the browser first, so that a failed request
    # never leaves the legend of the previous image beside the error.
    score_class = inputs.display[3]
    inputs.classes.change(
        score_class_choices, [inputs.classes, score_class], [score_class], api_name=False, queue=False
    )
    inputs.button.click(None, None, [outputs.legend], js="() => ''", api_name=False, queue=False).then(
        _segment_handler(backend, gr),
        [inputs.image, inputs.classes, inputs.model, inputs.fast, inputs.topk, inputs.inference,
         *inputs.display],
        [outputs.overlay, outputs.legend, outputs.label_file, outputs.table, outputs.score_state],
        api_name="segment",
        preprocess=False,  # the backend checks and decodes the upload itself (clear errors, limits)
        concurrency_limit=1,
    ).then(show_score_map, [outputs.score_state], [outputs.score_map], api_name=False, queue=False)


def build_app(
    backend: DemoBackend, examples: list[list[str]] | None = None, min_score: float | None = None
) -> Any:
    """The gradio Blocks page. Call :func:`launch` to serve it with the demo's limits.

    ``min_score``: the first value of the page's minimum score (None: empty, every pixel labelled).
    """
    gr = import_gradio()
    catalogue = backend.catalogue()
    offered = [(e.label, e.name) for e in catalogue if e.usable]
    limits = backend.limits
    with gr.Blocks(
        title="ovss: open-vocabulary segmentation",
        analytics_enabled=False,
        delete_cache=(max(1, min(300, limits.keep_files_s // 4)), limits.keep_files_s),
    ) as app:
        gr.Markdown(
            "# ovss: open-vocabulary semantic segmentation\n"
            "Upload an image, list the classes to find (`;` between classes, `,` between synonyms) and "
            "press **Segment**."
        )
        with gr.Row():
            with gr.Column(scale=2):
                inputs = _input_column(gr, backend, offered, min_score)
            with gr.Column(scale=3):
                outputs = _output_column(gr)
        example_photos: list[str] = []
        if examples:
            shown = gr.Examples(examples, inputs=[inputs.image, inputs.classes],
                                label="examples (click one, then Segment)")
            example_photos = _example_paths(shown)
        with gr.Accordion("models and weights on this server", open=False):
            gr.Markdown(weights_table(catalogue))
        gr.Markdown(_limits_text(limits))
        _wire(gr, backend, inputs, outputs)
    app.queue(default_concurrency_limit=1, max_size=limits.queue_size)
    # A request may name only the files this server received as uploads, and the example photos.
    backend.gate = UploadGate(lambda: app.upload_file_set, example_photos)
    return app


def _example_paths(examples: Any) -> list[str]:
    """The server paths the page sends for its example photos (gradio's copies in its cache)."""
    paths = []
    for sample in examples.dataset.samples:
        photo = sample[0] if sample else None
        path = photo.get("path") if isinstance(photo, dict) else photo
        if isinstance(path, str):
            paths.append(path)
    return paths


def private_upload_dir() -> Path | None:
    """Give this server its own gradio upload folder (``GRADIO_TEMP_DIR``), unless the user chose one.

    gradio serves every file of its upload folder to whoever knows the name, and its default
    (``/tmp/gradio``) is shared by every gradio app of the machine. Call before :func:`build_app`;
    returns the folder created (to remove at exit), or None when ``GRADIO_TEMP_DIR`` was set.
    """
    import os
    import tempfile

    if os.environ.get("GRADIO_TEMP_DIR"):
        return None
    folder = Path(tempfile.mkdtemp(prefix="ovss-demo-uploads-"))  # mode 0700
    os.environ["GRADIO_TEMP_DIR"] = str(folder)
    return folder


def display_controls(gr: Any, min_score: float | None = None) -> list[Any]:
    """The display controls, in ``/segment``'s input order: minimum score (``min_score`` at first),
    opacity, names on the regions, score-map class (each optional in the API, with these defaults)."""
    with gr.Row():
        threshold = gr.Textbox(  # a Number box cannot be empty, and 0 is a threshold like any other
            value="" if min_score is None else f"{min_score:g}",
            label="minimum score",
            placeholder="e.g. 0.3",
            info="pixels whose best score is below it stay unlabelled; empty: label every pixel",
            elem_id="ovss-min-score",
        )
        opacity = gr.Slider(
            0.0, 1.0, value=DEFAULT_OPACITY, step=0.05, label="overlay opacity", elem_id="ovss-opacity"
        )
    labels = gr.Checkbox(value=True, label="class names on the regions", elem_id="ovss-labels")
    score_class = gr.Dropdown(
        choices=score_class_list(EXAMPLE_CLASSES),
        value="",
        label="score map of class",
        info="shows the scores of one class as a heat map below the results",
        allow_custom_value=True,
        elem_id="ovss-score-class",
    )
    return [threshold, opacity, labels, score_class]


def score_class_list(text: str | None) -> list[tuple[str, str]]:
    """Dropdown choices for the score map: "(none)" and the display names typed so far."""
    from ovss.demo.inputs import DemoLimits, parse_classes

    try:
        classes = parse_classes(text, DemoLimits(max_classes=2**31))
    except DemoUserError:  # not a valid list (yet): the request will say why
        classes = []
    names = list(dict.fromkeys(c[0] for c in classes))[:MAX_SCORE_CHOICES]
    return [("(none)", ""), *((n, n) for n in names)]


def score_class_choices(text: str | None, current: str | None) -> Any:
    """New dropdown choices after the class list changed (keeps the choice when still listed)."""
    import gradio as gr

    choices = score_class_list(text)
    keep = current if current in {value for _, value in choices} else ""
    return gr.update(choices=choices, value=keep)


def show_score_map(image: Any) -> Any:
    """The score-map image (shown only when a class was chosen)."""
    import gradio as gr

    return gr.update(value=image, visible=image is not None)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def launch(
    app: Any,
    backend: DemoBackend,
    host: str,
    port: int,
    share: bool = False,
    say: Callable[[str], None] = log.info,
) -> None:
    """Serve ``app`` until Ctrl+C (blocking); a port taken meanwhile is one clear error.

    ``say`` receives the lines for the person who started the server (address, public link,
    stopped); ``ovss demo`` prints them, the default logs them to ``ovss.demo``.
    """
    gr = import_gradio()
    theme = gr.themes.Default(  # system fonts: the page loads nothing from outside the server
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"]
    )
    try:
        app.launch(
            server_name=host,
            server_port=port,
            share=share,
            max_file_size=int(backend.limits.max_upload_mb * 2**20),
            theme=theme,
            css=CSS,
            ssr_mode=False,
            footer_links=["api"],
            quiet=True,  # gradio's start-up hints are for its Python API; ours follow
            prevent_thread_lock=True,
        )
    except OSError as e:
        backend.close()
        raise OvssError(f"cannot serve on {host}:{port}: {e}; choose another port with --port N") from None
    say(f"serving {backend.model_name} on {app.local_url} (Ctrl+C stops)")
    if share and getattr(app, "share_url", None):
        say(f"public link {app.share_url}")
    if threading.current_thread() is threading.main_thread():  # `kill` stops it as Ctrl+C does
        signal.signal(signal.SIGTERM, _interrupt)
    try:
        while app.is_running:
            time.sleep(0.2)
    except KeyboardInterrupt:
        say("stopped")
    finally:
        app.close()
        backend.close()
