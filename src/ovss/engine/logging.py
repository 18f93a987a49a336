"""Training metrics: ``metrics.jsonl`` always, TensorBoard and Weights & Biases optionally.

Only rank 0 writes. One JSON object per logged iteration (``{"iteration": N, "loss": ...}``) is
appended to ``OUT/metrics.jsonl``; on resume, entries after the checkpoint's iteration are dropped
first (:func:`truncate_metrics`) so the file reads as one uninterrupted run. TensorBoard
(``torch.utils.tensorboard``, needs the ``tensorboard`` package: ``pip install 'ovss[train]'``) and
wandb are imported only when used.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from ovss.errors import MissingDependencyError, missing_dependency
from ovss.utils import atomic_write_text

_log = logging.getLogger("ovss.train")


def truncate_metrics(path: Path, last_iteration: int) -> None:
    """Drop the entries of ``path`` whose iteration is > ``last_iteration`` (atomic rewrite)."""
    path = Path(path)
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a kill
            continue
        if int(entry.get("iteration", 0)) <= last_iteration:
            kept.append(line)
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Every complete entry of a ``metrics.jsonl`` file, in order."""
    out = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class MetricLogger:
    """Writes scalars to the enabled sinks (all no-ops on ranks other than 0).

    Args:
        out_dir: run folder (``metrics.jsonl`` and ``tensorboard/`` go there).
        enabled: True on rank 0.
        tensorboard: None = use it when installed, True = require it, False = off.
        wandb_project: project name, or None for no wandb.
        config: the run configuration (stored in wandb).
        resume_from: last iteration already logged by a previous process (resume), or None.
    """

    def __init__(
        self,
        out_dir: Path,
        enabled: bool,
        tensorboard: bool | None = None,
        wandb_project: str | None = None,
        config: dict[str, Any] | None = None,
        resume_from: int | None = None,
    ) -> None:
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        if resume_from is not None:
            truncate_metrics(self.path, resume_from)
        elif self.path.exists():
            self.path.unlink()
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise missing_dependency("tensorboard", "train") from None
            else:
                self._tb = SummaryWriter(str(Path(out_dir) / "tensorboard"), purge_step=resume_from)
        if wandb_project:
            try:
                import wandb
            except ImportError:
                raise MissingDependencyError(
                    f"wandb_project={wandb_project!r} needs wandb: pip install wandb (or unset wandb_project)"
                ) from None
            self._wandb = wandb.init(project=wandb_project, config=config or {}, dir=str(out_dir))

    def log(
        self,
        iteration: int,
        values: dict[str, float],
        echo: bool = True,
        progress: str = "",
        suffix: str = "",
    ) -> None:
        """Record ``values`` (floats) at ``iteration`` (completed iterations).

        ``progress`` replaces the iteration in the printed line (``"20/220"``); ``suffix`` is printed
        after the values (``"eta 0:01:05"``); neither goes to the metric sinks.
        """
        if not self.enabled:
            return
        entry = {"iteration": iteration, **values}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")
        if echo:
            shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
            tail = f" {suffix}" if suffix else ""
            _log.info("iter %s: %s%s", progress or iteration, shown, tail)
        if self._tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(key, value, iteration)
        if self._wandb is not None:
            self._wandb.log(values, step=iteration)

    def close(self) -> None:
        """Flush and close the sinks."""
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
