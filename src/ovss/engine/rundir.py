"""The training run folder: refuse to mix two runs, replace one on request, clear a killed run's junk.

A run folder ``OUT`` holds what :func:`ovss.engine.trainer.train` writes: ``config.json``,
``metrics.jsonl``, ``checkpoints/iter_<N>.pt``, ``model_final.safetensors`` and optionally
``curves.png``, ``tensorboard/`` and ``wandb/``. Starting a new run in a folder that is not empty
would delete the old metrics while the old checkpoints stay (a later ``--resume`` then continues
the old run), so:

* a fresh start needs an empty (or missing) folder;
* ``resume=True`` continues the newest checkpoint there;
* ``overwrite=True`` deletes the previous run's files (only those ovss writes) and starts over.

Temporary files of ovss's own atomic writes (``.<name>.<pid>-<hex>.tmp``) whose writer is gone (a
kill during a write) are removed on every start and resume (:func:`ovss.utils.remove_stale_temp_files`).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ovss.errors import ConfigError
from ovss.utils import remove_stale_temp_files as _remove_stale_in

# What a training run writes into OUT (files and folders).
RUN_FILES = ("config.json", "metrics.jsonl", "model_final.safetensors", "curves.png")
RUN_DIRS = ("checkpoints", "tensorboard", "wandb")


def check_run_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Raise :class:`ConfigError` unless ``out_dir`` may be used as asked (nothing is changed).

    Raises:
        ConfigError: both ``resume`` and ``overwrite``; or a fresh start in a non-empty folder.
    """
    if resume and overwrite:
        raise ConfigError("--resume continues the run in --out and --overwrite replaces it; pass only one")
    if resume or overwrite or not out_dir.is_dir():
        return
    entries = sorted(p.name for p in out_dir.iterdir())
    if entries:
        shown = ", ".join(entries[:4]) + (", ..." if len(entries) > 4 else "")
        raise ConfigError(
            f"--out {out_dir} is not empty ({shown}); pass --resume to continue that run, --overwrite to "
            "replace it, or another --out"
        )


def clear_run(out_dir: Path) -> list[str]:
    """Delete the files of an earlier run in ``out_dir`` (only those ovss writes); returns their names."""
    removed = []
    for name in RUN_FILES:
        path = out_dir / name
        if path.is_file() or path.is_symlink():
            path.unlink()
            removed.append(name)
    for name in RUN_DIRS:
        path = out_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
            removed.append(name + "/")
    return removed + remove_stale_temp_files(out_dir)


def remove_stale_temp_files(out_dir: Path) -> list[str]:
    """Delete the temporary files a killed write left in ``out_dir`` and ``out_dir/checkpoints``.

    Only ovss's own temporary names whose writing process is gone are touched (see
    :func:`ovss.utils.is_stale_temp_file`). Returns the removed names (relative to ``out_dir``).
    """
    removed = [*_remove_stale_in(out_dir), *_remove_stale_in(out_dir / "checkpoints")]
    return sorted(str(path.relative_to(out_dir)) for path in removed)
