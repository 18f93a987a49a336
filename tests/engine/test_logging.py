"""Training metrics: metrics.jsonl (truncation on resume, cut lines), the printed line, optional sinks."""

from __future__ import annotations

import pytest

from ovss.engine.logging import MetricLogger, read_metrics, truncate_metrics
from ovss.errors import MissingDependencyError


def test_metrics_log_truncated_on_resume(tmp_path):
    log = MetricLogger(tmp_path, enabled=True, tensorboard=False)
    for it in range(1, 6):
        log.log(it, {"loss": float(it)}, echo=False)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"iteration": 6, "lo')  # cut by a kill
    truncate_metrics(tmp_path / "metrics.jsonl", 3)
    assert [e["iteration"] for e in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    resumed = MetricLogger(tmp_path, enabled=True, tensorboard=False, resume_from=2)
    resumed.log(3, {"loss": 30.0}, echo=False)
    assert [e["loss"] for e in read_metrics(tmp_path / "metrics.jsonl")] == [1.0, 2.0, 30.0]
    MetricLogger(tmp_path, enabled=False).log(9, {"loss": 1.0})  # other ranks write nothing
    assert len(read_metrics(tmp_path / "metrics.jsonl")) == 3


def test_required_tensorboard_without_the_package(tmp_path):
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match=r"ovss\[train\]"):
            MetricLogger(tmp_path, enabled=True, tensorboard=True)
        optional = MetricLogger(tmp_path, enabled=True, tensorboard=None)  # None: used only when installed
        optional.log(1, {"x": 1.0}, echo=False)
    else:
        MetricLogger(tmp_path, enabled=True, tensorboard=True).close()
