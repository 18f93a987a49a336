"""``ovss eval`` in tests: the tiny model at a small test size (fast)."""

from __future__ import annotations


def shrink_eval_model(monkeypatch, size: int = 64) -> None:
    """Make ``ovss eval`` run its model at a ``size``-pixel short side (``max_size`` 4x)."""
    import ovss.cli.eval as eval_cli
    from ovss.models.base import ResizeConfig

    original = eval_cli.load_segmenter

    def load(args):
        seg = original(args)
        seg.model.config.test_resize = ResizeConfig(size=size, max_size=4 * size)
        return seg

    monkeypatch.setattr(eval_cli, "load_segmenter", load)
