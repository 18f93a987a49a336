"""What a web request may hand the demo: per-request limits, the class list and the uploaded image.

:class:`UploadGate` decides which server files a request may name (only this server's uploads and
its examples); :func:`read_upload` checks the file's size and pixel count before decoding it;
:func:`parse_classes` never reads the class text as a file name.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ovss.demo.display import DemoUserError
from ovss.errors import ImageReadError, ImageTooLargeError, OvssError

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
