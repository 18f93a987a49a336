"""Web demo over the public API: upload an image, type class names, see the overlay.

Run with ``ovss demo --model san-vit-b16`` (needs ``pip install 'ovss[demo]'``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from PIL import Image

from ovss.errors import OvssError, missing_dependency

EXAMPLE_CLASSES = "person; car; bus; road; building; sky; tree; grass"


class DemoBackend:
    """Loads models on demand (one at a time) and segments for the UI; no gradio here."""

    def __init__(
        self, model: str, device: str = "cpu", dtype: str = "fp32", weights: str | None = None
    ) -> None:
        self.device, self.dtype, self.weights = device, dtype, weights
        self.model_name = model
        self._segmenter: Any = None

    def segmenter(self, model: str | None = None) -> Any:
        from ovss.api.segmenter import load

        model = model or self.model_name
        if self._segmenter is None or model != self.model_name:
            weights = self.weights if model == self.model_name else None
            self._segmenter = load(model, device=self.device, dtype=self.dtype, weights=weights)
            self.model_name = model
        return self._segmenter

    def __call__(
        self, image: np.ndarray | Image.Image | None, classes: str, model: str | None = None, **options: Any
    ) -> tuple[Image.Image, list[list[Any]]]:
        """Overlay image and a table of [class, % of pixels, peak score] rows (classes present)."""
        if image is None:
            raise OvssError("no image: upload or drop an image first")
        result = self.segmenter(model).predict(image, classes, **options)
        rows = [
            [name, round(100 * frac, 2), round(float(result.class_scores[result.class_names.index(name)]), 4)]
            for name, frac in result.present()
        ]
        return result.overlay(), rows


def build_app(backend: DemoBackend, models: list[str]) -> Any:
    """The gradio Blocks UI (gradio is imported here, lazily)."""
    try:
        import gradio as gr
    except ImportError:
        raise missing_dependency("gradio", "demo") from None

    def run(image, classes, model, fast):
        try:
            options = {"fast": True} if fast and model.startswith(("sed", "test-sed")) else {}
            return backend(image, classes, model, **options)
        except OvssError as e:
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="ovss: open-vocabulary segmentation") as app:
        gr.Markdown(
            "# ovss\nUpload an image and list class names (`;` between classes, `,` between synonyms)."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", label="image")
                classes = gr.Textbox(value=EXAMPLE_CLASSES, label="classes")
                model = gr.Dropdown(models, value=backend.model_name, label="model")
                fast = gr.Checkbox(value=False, label="SED fast mode (category early rejection)")
                button = gr.Button("Segment", variant="primary")
            with gr.Column():
                out = gr.Image(type="pil", label="segmentation")
                table = gr.Dataframe(headers=["class", "% pixels", "peak score"], label="classes present")
        button.click(run, [image, classes, model, fast], [out, table])
    return app
