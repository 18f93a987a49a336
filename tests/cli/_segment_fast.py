"""Run the tiny model at a 64-pixel short side in segment tests (full-resolution outputs unchanged).

The tiny models keep the official 640-pixel test resize, which makes each image cost seconds on a
loaded CI machine; the batch-job behaviour under test does not depend on it. ``python -m
tests.cli._segment_fast ARGS`` is ``ovss ARGS`` with this setting (used for the kill tests).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ovss.models.base import ResizeConfig

GATE_ENV = "OVSS_TEST_GATE"  # a path: the run (lock taken) writes GATE.waiting and waits for GATE to exist


def patch_load_segmenter(module) -> None:
    """Make ``module.load_segmenter`` (ovss.cli.segment's) return a segmenter at the small size."""
    original = module.load_segmenter

    def load(args):
        gate = os.environ.get(GATE_ENV)
        if gate:  # hold --out (the lock is taken before the model loads) until the test opens the gate
            Path(gate + ".waiting").write_text(str(os.getpid()))
            while not Path(gate).exists():
                time.sleep(0.01)
        seg = original(args)
        seg.model.config.test_resize = ResizeConfig(size=64, max_size=256)
        return seg

    module.load_segmenter = load


if __name__ == "__main__":
    import ovss.cli.segment
    from ovss.cli.main import main

    patch_load_segmenter(ovss.cli.segment)
    sys.exit(main(sys.argv[1:]))
