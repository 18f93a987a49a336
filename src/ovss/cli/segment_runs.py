"""The ``--out`` folder of ``ovss segment``: one run at a time, its settings recorded, its outputs checked.

Everything lives in ``OUT/.ovss-segment/``:

* ``lock``: an advisory ``flock`` held by the run (rank 0 under torchrun) for as long as it lasts.
  The kernel releases it when the process ends, killed or not, so nothing stale is left behind.
  The file holds the holder's pid, host and start time, for the message another run prints.
* ``settings.json``: the settings that determine the outputs (a flat dict, see ``run_settings`` in
  ``ovss.cli.segment``; a new option adds a key). A re-run with other settings stops and names
  what changed, unless ``--overwrite`` (then every output the earlier runs recorded is deleted first).
  Keys in ``FILE_CHOICE_KEYS`` only choose which files are written, not what they hold, so they may
  change between runs (``--outputs label`` first, all outputs later).
* ``done-rank<R>.jsonl``: one line per finished image, with the size and sha256 of each output file;
  a resume recomputes an image whose files are missing, truncated or altered.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import stat
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from ovss.errors import OutputPathError, OvssError

LOCK_NAME = "lock"
SETTINGS_NAME = "settings.json"
FILE_CHOICE_KEYS = frozenset({"outputs"})  # settings that choose files, not their content
T = TypeVar("T")


# ------------------------------------------------------------------------------------------ lock
class OutputLock:
    """An exclusive advisory lock (``flock``) on ``STATE/lock``; :meth:`release` or process exit ends it.

    A run that ends before recording any settings (e.g. the model failed to load) removes the lock
    file and the folders it created, so a failed command leaves nothing behind. Removal happens
    while the lock is held, and a run that gets a lock checks that its file is still the one at
    ``STATE/lock`` (else it locks the new one), so two runs never both hold the folder.
    """

    def __init__(self, state: Path) -> None:
        self.path = state / LOCK_NAME
        self._fd: int | None = None
        self._created: list[Path] = []  # folders this run created for the lock, deepest first

    def acquire(self, out: Path, wait: bool = False) -> OutputLock:
        """Take the lock; when another run holds it, raise one line (or, with ``wait``, block until it ends).

        Raises:
            OutputPathError: ``out`` is in use by another run (and ``wait`` is false), or the lock
                file cannot be opened.
        """
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no advisory locks
            return self
        self._created = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        while True:
            fd = self._open()
            try:
                if not self._lock(fd, fcntl, out, wait) or self._is_current(fd):
                    break
            except BaseException:
                os.close(fd)
                raise
            os.close(fd)  # its last holder removed the file meanwhile: lock the one now in place
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": started}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        self._fd = fd
        return self

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise OutputPathError(
                f"cannot open the lock file {self.path}: {exc.strerror or exc}; move it away or choose "
                "another --out"
            ) from None

    def _lock(self, fd: int, fcntl: Any, out: Path, wait: bool) -> bool:
        """flock ``fd``; False when the file system has no locks (warned, the run goes on unprotected)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            if not wait:
                raise OutputPathError(
                    f"--out {out} is in use by another ovss segment run ({holder}); wait for it to end, "
                    "add --wait to start when it ends, or choose another --out"
                ) from None
            print(f"ovss: waiting for the run using --out {out} to end ({holder})", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            from ovss.cli.common import warn

            warn(f"cannot lock --out {out} ({exc.strerror or exc}); make sure no other run uses it")
            return False
        return True

    def _is_current(self, fd: int) -> bool:
        try:
            here, there = os.fstat(fd), os.stat(self.path)
        except OSError:
            return False
        return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)

    def release(self) -> None:
        """Give the lock back (closing the file releases the flock). The file stays, unless this run
        recorded no settings: then it and the folders the lock created are removed."""
        if self._fd is None:
            return
        if not (self.path.parent / SETTINGS_NAME).exists():  # nothing of this run: leave no trace
            self.path.unlink(missing_ok=True)  # still held: no other run can be using this file
            for folder in self._created:
                try:
                    folder.rmdir()  # only when empty
                except OSError:
                    break
        os.close(self._fd)
        self._fd = None


def _holder(fd: int) -> str:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        return f"pid {int(info['pid'])} on {info['host']}, started {info['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "its process is starting"


def on_rank0(fn: Callable[[], T], rank: int, world: int) -> T | None:
    """Run ``fn`` on rank 0 only; an :class:`OvssError` there is raised on every rank, so no rank
    waits forever for a rank 0 that stopped. Returns ``fn()`` on rank 0, None elsewhere."""
    from ovss.distributed import broadcast_object

    result: T | None = None
    error: OvssError | None = None
    if rank == 0:
        try:
            result = fn()
        except OvssError as exc:
            error = exc
    message = broadcast_object(str(error) if error is not None else None)  # collective
    if rank != 0 and message is not None:
        raise OutputPathError(message)
    if error is not None:
        raise error
    return result


# -------------------------------------------------------------------------------------- settings
def settings_key(settings: dict[str, Any]) -> str:
    """Short hash of the settings that determine the outputs' content (``FILE_CHOICE_KEYS`` left out)."""
    kept = {k: v for k, v in settings.items() if k not in FILE_CHOICE_KEYS}
    blob = json.dumps(kept, sort_keys=True, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def describe_changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """``"classes: 3 -> 2 items, #2 'bus' -> 'b'; dtype: 'fp32' -> 'bf16'"`` for the keys that differ."""
    changes = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, "(not recorded)"), new.get(key, "(not recorded)")
        if key in FILE_CHOICE_KEYS or a == b:
            continue
        if isinstance(a, list) and isinstance(b, list):
            pairs = enumerate(zip(a, b, strict=False))
            first = next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))
            x = _short(a[first]) if first < len(a) else "(none)"
            y = _short(b[first]) if first < len(b) else "(none)"
            sizes = f"{len(a)} -> {len(b)} items, " if len(a) != len(b) else ""
            changes.append(f"{key}: {sizes}#{first + 1} {x} -> {y}")
        else:
            changes.append(f"{key}: {_short(a)} -> {_short(b)}")
    return "; ".join(changes)


def _short(value: Any, limit: int = 50) -> str:
    text = json.dumps(value, ensure_ascii=True) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def prepare_out(out: Path, state: Path, settings: dict[str, Any], overwrite: bool) -> str:
    """Check ``settings`` against those recorded in ``out``, then record them (atomically).

    Returns "fresh" (nothing recorded), "resume" (the same settings) or "replaced" (other settings
    and ``overwrite``: every output of the earlier runs was deleted first).

    Raises:
        OutputPathError: other settings (or unrecorded ones of an older ovss) without ``overwrite``.
    """
    from ovss.utils import atomic_write_text

    state.mkdir(parents=True, exist_ok=True)
    try:
        recorded = _recorded_settings(state)
    except OutputPathError:
        if not overwrite:
            raise
        recorded = {"settings.json": "unreadable"}  # replaced below, with the results it described
    key = settings_key(settings)
    records = [r["key"] for r in iter_records(state)]
    if recorded is None:  # results logged under this key come from other ranks of this run
        records = [k for k in records if k != key]
    status = "fresh"
    if records:  # no image done yet: nothing to mix, whatever the earlier settings were
        changed = describe_changes(recorded, settings) if recorded is not None else ""
        if recorded is not None and not changed:
            status = "resume"
        elif not overwrite:
            what = (
                f"made with other settings ({changed})"
                if recorded is not None
                else "of an older ovss whose settings were not recorded"
            )
            raise OutputPathError(
                f"--out {out} holds results {what}; re-run with the same settings to resume, add --overwrite "
                "to replace those results, or choose another --out"
            )
        else:
            clear_outputs(out, state)
            status = "replaced"
    record = {"settings": settings, "key": key}
    atomic_write_text(state / SETTINGS_NAME, json.dumps(record, indent=2, ensure_ascii=True) + "\n")
    return status


def _recorded_settings(state: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state / SETTINGS_NAME).read_text(encoding="utf-8"))
        return dict(data["settings"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise OutputPathError(
            f"{state / SETTINGS_NAME} is unreadable ({exc}); add --overwrite to replace the results in "
            f"{state.parent}, or choose another --out"
        ) from None


def clear_outputs(out: Path, state: Path) -> int:
    """Delete every output file the done logs of ``state`` record (only inside ``out``), then the logs
    (so a kill half-way leaves logs that still list what is left). Returns the number of files deleted."""
    from ovss.api.result import SegmentationResult

    removed = 0
    folders: set[Path] = set()
    for record in iter_records(state):
        paths = [_inside(out, e.get("path")) for e in _file_entries(record)]
        if not isinstance(record.get("files"), dict):  # a record of an older ovss: its names
            legacy = SegmentationResult.output_paths(out, str(record.get("name", "")))
            paths = [legacy[o] for o in record.get("outputs", ()) if o in legacy]
        for path in paths:
            if path is not None and path.is_file():
                path.unlink()
                removed += 1
                folders.add(path.parent)
    for log in [*state.glob("done-rank*.jsonl"), *state.glob("run-*.json")]:
        log.unlink(missing_ok=True)
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):  # sub-folders of --recursive
        while folder != out and out in folder.parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    return removed


# ------------------------------------------------------------------------------------ done records
def iter_records(state: Path) -> Iterator[dict[str, Any]]:
    """Every done record of the logs in ``state`` (lines cut by a kill, or not ours, are skipped)."""
    for log in sorted(state.glob("done-rank*.jsonl")):
        with open(log, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    record = json.loads(line)
                    str(record["source"]), float(record["t"]), str(record["name"]), str(record["key"])
                except (ValueError, KeyError, TypeError):
                    continue
                yield record


def read_done(state: Path) -> dict[str, dict[str, Any]]:
    """source -> latest done record of every earlier run."""
    latest: dict[str, dict[str, Any]] = {}
    for record in iter_records(state):
        source = record["source"]
        if source not in latest or float(record["t"]) >= float(latest[source]["t"]):
            latest[source] = record
    return latest


def file_entries(out: Path, saved: dict[str, Path | list[Path]]) -> dict[str, list[dict[str, Any]]]:
    """kind -> [{path (relative to out), size, sha256}] of the files just written (read back from disk)."""
    from ovss.utils import sha256_file

    entries: dict[str, list[dict[str, Any]]] = {}
    for kind, paths in saved.items():
        for path in paths if isinstance(paths, list) else [paths]:
            entries.setdefault(kind, []).append(
                {
                    "path": Path(os.path.relpath(path, out)).as_posix(),
                    "size": os.stat(path).st_size,
                    "sha256": sha256_file(path),
                }
            )
    return entries


def outputs_intact(out: Path, record: dict[str, Any], outputs: tuple[str, ...]) -> bool:
    """True when every file of each kind in ``outputs`` that ``record`` lists is in place with its
    recorded size and sha256 (records of an older ovss have no digests: False)."""
    from ovss.utils import sha256_file

    files = record.get("files")
    if not isinstance(files, dict):
        return False
    for kind in outputs:
        entries = files.get(kind)
        if not isinstance(entries, list) or not entries:
            return False
        for entry in entries:
            path = _inside(out, entry.get("path") if isinstance(entry, dict) else None)
            if path is None:
                return False
            try:
                st = path.stat()
            except OSError:
                return False
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.get("size"):
                return False
            if sha256_file(path) != entry.get("sha256"):
                return False
    return True


def _file_entries(record: dict[str, Any]) -> list[dict[str, Any]]:
    files = record.get("files")
    if not isinstance(files, dict):
        return []
    lists = [entries for entries in files.values() if isinstance(entries, list)]
    return [e for entries in lists for e in entries if isinstance(e, dict)]


def _inside(out: Path, relative: Any) -> Path | None:
    """``out / relative`` when that stays inside ``out`` (a crafted log must not reach other files)."""
    if not isinstance(relative, str) or not relative or os.path.isabs(relative):
        return None
    path = out / relative
    if ".." in Path(relative).parts:
        return None
    return path


def render_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The checked rendering options of ``args`` (only those set): min_score, opacity, palette, labels.

    Raises:
        ConfigError: a bad --opacity, --palette or --min-score (before any model loads).
    """
    from ovss.api.palettes import get_palette
    from ovss.api.scores import check_min_score
    from ovss.api.visualize import check_opacity
    from ovss.errors import ConfigError, OvssError

    settings: dict[str, Any] = {}
    numbers = {  # each number option: the library's check and what the flag must be
        "min_score": (check_min_score, "--min-score must be a finite number (e.g. 0.3)"),
        "opacity": (check_opacity, "--opacity must be from 0 (image only) to 1 (colours only)"),
    }
    for name, (check, rule) in numbers.items():
        value = getattr(args, name, None)
        if value is not None:
            try:
                settings[name] = check(value)
            except OvssError:
                raise ConfigError(f"{rule}, got {value}") from None
    if getattr(args, "palette", None) is not None:
        from ovss.api.palettes import PALETTE_NAMES
        from ovss.utils import sha256_file

        get_palette(args.palette)  # a bad name or file: one line now
        settings["palette"] = args.palette
        if args.palette not in PALETTE_NAMES:  # a file: its colours, not its name, decide the overlay
            settings["palette_sha256"] = sha256_file(Path(args.palette))
    if getattr(args, "labels", True) is False:
        settings["labels"] = False
    return settings


def frame_options(args: argparse.Namespace, render: dict[str, Any]) -> dict[str, Any]:
    """The ``predict`` arguments shared by images and video frames: the model options with the --tta
    flags (:func:`~ovss.cli.common.model_options`) and the --min-score of ``render``
    (:func:`render_settings`)."""
    from ovss.cli.common import model_options

    options = model_options(args)
    if "min_score" in render:
        options["min_score"] = render["min_score"]
    return options
