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


def test_the_printed_line_and_the_json_entry(tmp_path, caplog):
    import json
    import logging

    log = MetricLogger(tmp_path, enabled=True, tensorboard=False)
    with caplog.at_level(logging.INFO, logger="ovss.train"):
        log.log(20, {"loss": 0.123456, "lr": 2e-4, "count": 3}, progress="20/220", suffix="eta 0:01:05")
        log.log(21, {"loss": 1.0}, echo=False)
    expected = "iter 20/220: loss=0.1235 lr=0.0002 count=3 eta 0:01:05"
    assert [r.getMessage() for r in caplog.records] == [expected]
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"iteration": 20, "loss": 0.123456, "lr": 2e-4, "count": 3}, {"iteration": 21, "loss": 1.0},
    ]
    log.close()


def test_a_fresh_run_starts_a_new_file_and_truncation_keeps_earlier_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"iteration": 1, "loss": 9}\n')
    MetricLogger(tmp_path, enabled=True, tensorboard=False).log(1, {"loss": 2.0}, echo=False)
    assert read_metrics(path) == [{"iteration": 1, "loss": 2.0}]  # the old run's line is gone
    truncate_metrics(tmp_path / "absent.jsonl", 5)  # nothing to truncate: no file created
    assert not (tmp_path / "absent.jsonl").exists()
    path.write_text('{"iteration": 1}\n{"note": "no iteration"}\n{"iteration": 9}\n')
    truncate_metrics(path, 4)
    assert read_metrics(path) == [{"iteration": 1}, {"note": "no iteration"}]  # no iteration counts as 0


def test_wandb_without_the_package_is_one_line(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MissingDependencyError) as info:
        MetricLogger(tmp_path, enabled=True, tensorboard=False, wandb_project="runs")
    assert str(info.value) == "wandb_project='runs' needs wandb: pip install wandb (or unset wandb_project)"
    MetricLogger(tmp_path, enabled=False, wandb_project="runs")  # other ranks never import it
