"""Small helpers shared across the package (atomic file writes, stale temp files, hashing, and the
file-system guard: what kind of thing a path is, and refusing anything but a regular file)."""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from ovss.errors import OvssError

# Temporary files of atomic_write: ".<target name>.<pid>-<8 hex>.tmp" beside the target. The pid lets
# remove_stale_temp_files tell a file of a live writer from the leftover of a killed one.
_TMP_RE = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp$")
_LEGACY_TMP_RE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")  # mkstemp names of ovss <= 0.x
_LEGACY_TMP_AGE_S = 3600.0


def atomic_write(path: Path, write: Callable[[Path], object]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never a half-written file (a killed process
    leaves at most its temporary file, which :func:`remove_stale_temp_files` recognises). The file
    is created with mode ``0o666`` minus the process umask, like ``open(path, "w")`` would.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        except FileExistsError:
            continue
        mode = os.fstat(fd).st_mode & 0o777  # 0o666 minus the umask
        os.close(fd)
        break
    try:
        write(tmp)
        if os.stat(tmp).st_mode & 0o777 != mode:  # a writer that re-created the file (safetensors: 0600)
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's process) or unknown: keep the file
    return True


def is_stale_temp_file(path: Path) -> bool:
    """True for a temporary file of :func:`atomic_write` whose writer is gone.

    Names with a pid count as stale when no process of that pid exists on this machine; the older
    names without a pid when they are more than an hour old.
    """
    name = Path(path).name
    match = _TMP_RE.match(name)
    if match:
        return not _pid_alive(int(match["pid"]))
    if _LEGACY_TMP_RE.match(name):
        try:
            return time.time() - Path(path).stat().st_mtime > _LEGACY_TMP_AGE_S
        except OSError:
            return False
    return False


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the leftovers of killed :func:`atomic_write` calls in ``folder`` (not recursive).

    Only files named like ovss's own temporary files whose writer process is gone are removed
    (see :func:`is_stale_temp_file`); anything else is left alone. Returns the removed paths.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if entry.name.endswith(".tmp") and entry.is_file() and is_stale_temp_file(entry):
            try:
                entry.unlink()
                removed.append(entry)
            except FileNotFoundError:
                pass
    return removed


def atomic_write_text(path: Path, text: str) -> Path:
    """Atomically write ``text`` (UTF-8) to ``path``."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def short_list(items: list[str], show: int = 8) -> str:
    """First ``show`` items joined, then ``... (+N more)`` (keys in one-line error messages)."""
    head = ", ".join(items[:show])
    return head if len(items) <= show else f"{head}, ... (+{len(items) - show} more)"


def is_tracing() -> bool:
    """True under tracing / ONNX export / torch.compile, where shapes must not depend on data."""
    import torch

    is_exporting = getattr(torch.compiler, "is_exporting", lambda: False)  # torch >= 2.5
    return bool(
        torch.jit.is_tracing()
        or torch.onnx.is_in_onnx_export()
        or torch.compiler.is_compiling()
        or is_exporting()
    )


_MISSING = (FileNotFoundError, NotADirectoryError)


def path_kind(path: Path, missing: tuple[type[OSError], ...] = _MISSING) -> str:
    """``"missing"``, ``"folder"``, ``"file"``, ``"fifo"`` or ``"special file"`` (device, socket).

    Args:
        path: the path (``os.stat`` follows symlinks).
        missing: the ``os.stat`` errors that mean "it does not exist".

    Raises:
        OSError: any other ``os.stat`` error (permissions, a name too long); ValueError: a NUL byte.
    """
    try:
        mode = os.stat(path).st_mode
    except missing:
        return "missing"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISREG(mode):
        return "file"
    return "fifo" if stat.S_ISFIFO(mode) else "special file"


def check_regular_file(
    path: Path, what: str, missing_error: type[OvssError], error: type[OvssError], fix: str = ""
) -> Path:
    """Refuse a missing path, a folder or a special file (a FIFO would block ``open`` forever), in one
    line: ``what`` and the path, the problem, then ``fix`` (by default one per problem: check the
    path, its permissions, pass the file inside the folder, pass a file).

    Raises:
        missing_error: the path does not exist (or a part of it is not a folder).
        error: it cannot be inspected (permissions, a name too long, a NUL byte), is a folder or is
            not a regular file.
    """
    path = Path(path)
    try:
        kind = path_kind(path)
    except (OSError, ValueError) as e:
        reason = getattr(e, "strerror", None) or e
        fixed = fix or ("pass a real file name" if isinstance(e, ValueError) else "check its permissions")
        raise error(f"cannot read {what} {short_path(path)} ({reason}); {fixed}") from None
    shown = short_path(path)
    if kind == "missing":
        where = "" if path.is_absolute() else f" (relative to {Path.cwd()})"
        raise missing_error(f"{what} {shown} does not exist; {fix or 'check the path' + where}")
    if kind == "folder":
        raise error(f"{what} {shown} is a folder, expected a file; {fix or 'pass the file inside it'}")
    if kind == "fifo":
        default = "pass a file (save the stream to a file first)"
        raise error(f"{what} {shown} is not a regular file (a named pipe); {fix or default}")
    if kind != "file":
        raise error(f"{what} {shown} is not a regular file (a device or socket); {fix or 'pass a file'}")
    return path


def short_path(path: Path, limit: int = 120) -> str:
    """``path`` for a message line: control characters escaped (a NUL byte shows as ``\\x00``),
    shortened in the middle beyond ``limit`` characters (the start and the name stay)."""
    text = str(path)
    if not text.isprintable():
        text = text.encode("unicode_escape").decode("ascii")
    if len(text) <= limit:
        return text
    keep = (limit - 3) // 2
    return f"{text[:keep]}...{text[-keep:]}"
