"""Video test helpers: a short clip written with PyAV, its frames decoded (tests/api, tests/cli)."""

from __future__ import annotations

import numpy as np
import pytest

av = pytest.importorskip("av")


def _write_clip(path, frames: int = 8, width: int = 64, height: int = 48, fps: int = 12):
    """A short H.264 (else MPEG-4) clip of moving coloured bars over a gradient."""
    codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.zeros((height, width, 3), np.uint8)
            rgb[..., 1] = np.linspace(0, 255, width, dtype=np.uint8)[None, :]
            rgb[:, 8 * i : 8 * i + 12, 0] = 255
            rgb[height // 2 :, :, 2] = 30 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _decoded_frames(path):
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
