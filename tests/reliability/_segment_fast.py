"""Run the tiny model at a 64-pixel short side in segment tests (full-resolution outputs unchanged).

The tiny models keep the official 640-pixel test resize, which makes each image cost seconds on a
loaded CI machine; the batch-job behaviour under test does not depend on it. ``python -m
tests.reliability._segment_fast ARGS`` is ``ovss ARGS`` with this setting (used for the kill tests).
"""

from __future__ import annotations

import sys

from ovss.models.base import ResizeConfig


def patch_load_segmenter(module) -> None:
    """Make ``module.load_segmenter`` (ovss.cli.segment's) return a segmenter at the small size."""
    original = module.load_segmenter

    def load(args):
        seg = original(args)
        seg.model.config.test_resize = ResizeConfig(size=64, max_size=256)
        return seg

    module.load_segmenter = load


if __name__ == "__main__":
    import ovss.cli.segment
    from ovss.cli.main import main

    patch_load_segmenter(ovss.cli.segment)
    sys.exit(main(sys.argv[1:]))
