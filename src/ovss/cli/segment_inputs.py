"""``ovss segment``'s inputs: files, folders (optionally recursive) and http(s) URLs, and their output names.

Folder rules: ovss's own outputs and label PNGs beside their photos are skipped; a symbolic link
loop is skipped with one warning line; under ``--recursive`` sub-folders are walked (symbolic links
to folders are followed, except back into a folder already on the walk) and an image's output name
keeps its path relative to the folder given (``a/b/x.jpg`` -> ``a/b/x``).
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")
STATE_DIR = ".ovss-segment"  # inside --out: lock, settings.json and the done-rank<r>.jsonl logs
_OWN_SUFFIXES = ("_label.png", "_overlay.png", "_heatmaps.png")
_OWN_HEATMAP = re.compile(r"_heatmap-\d+-[A-Za-z0-9-]*\.png$")  # STEM_heatmap-K-NAME.png (ovss.api.heatmaps)


@dataclass(frozen=True)
class InputImage:
    """One image of the run.

    Attributes:
        src: what ``read_image`` gets: the path as given, or the URL string.
        source: the image's key in the resume log and the JSON: its absolute resolved path, or the URL.
        stem: the output name it asks for before names are made unique: the file stem, the relative
            ``dir/stem`` under ``--recursive``, or the stem of the URL's path.
    """

    src: Path | str
    source: str
    stem: str


def shown(text: object) -> str:
    """``text`` printable on any terminal: bytes of a non-UTF-8 file name become ``\\xNN``."""
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")


def _warn(message: str) -> None:
    from ovss.cli.common import warn

    warn(message)


def _is_label_png(path: Path) -> bool:
    """A single-channel PNG (palette, grey, 16-bit): the layout of label maps."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode in ("P", "L", "1", "I", "I;16", "I;16B", "I;16L")
    except Exception:  # unreadable: not skipped, it will be reported like any bad image
        return False


def _resolved(path: Path) -> str:
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):  # a symbolic link loop given by name: its read fails and is listed
        return os.path.abspath(path)


def _kind(path: Path) -> str:
    """ "dir", "file", "loop" (a symbolic link loop) or "missing" (e.g. a dangling link)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        return "loop" if exc.errno == errno.ELOOP else "missing"
    return "dir" if stat.S_ISDIR(mode) else "file"


def _is_own(folder: Path, out: Path) -> bool:
    """True when ``folder`` is an ovss output folder: it holds the state folder, or lies in --out."""
    real, real_out = Path(_resolved(folder)), Path(_resolved(out))
    return (folder / STATE_DIR).is_dir() or real == real_out or real_out in real.parents


def _folder_images(folder: Path, out: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(images, skipped, sub-folders) of one folder: skips ovss outputs, label PNGs beside their
    photos and (with a warning) symbolic link loops."""
    images: list[Path] = []
    skipped: list[Path] = []
    folders: list[Path] = []
    found: list[Path] = []
    for p in sorted(folder.iterdir()):
        kind = _kind(p)
        if kind == "loop":
            _warn(f"skipped {shown(p)}: a symbolic link loop")
        elif kind == "dir":
            folders.append(p)
        elif p.suffix.lower() in IMAGE_EXTS:
            found.append(p)
    own = _is_own(folder, out)
    stems = {p.stem.casefold() for p in found if p.suffix.lower() != ".png"}
    for p in found:
        is_output = own and (p.name.endswith(_OWN_SUFFIXES) or bool(_OWN_HEATMAP.search(p.name)))
        is_label = p.suffix.lower() == ".png" and p.stem.casefold() in stems and _is_label_png(p)
        (skipped if is_output or is_label else images).append(p)
    return images, skipped, folders


def _walk(root: Path, out: Path, recursive: bool) -> tuple[list[InputImage], list[Path]]:
    """The images of folder ``root`` (and its sub-folders when ``recursive``), with their skipped files."""
    images: list[InputImage] = []
    skipped: list[Path] = []
    stack: list[tuple[Path, str, tuple[str, ...]]] = [(root, "", (_resolved(root),))]
    while stack:
        folder, rel, ancestors = stack.pop()
        found, skip, subfolders = _folder_images(folder, out)
        images += [InputImage(p, _resolved(p), f"{rel}{p.stem}") for p in found]
        skipped += skip
        if not recursive:
            continue
        for sub in reversed(subfolders):  # popped in sorted order
            real = _resolved(sub)
            if sub.name == STATE_DIR:
                continue
            if real in ancestors:
                _warn(f"skipped {shown(sub)}: a symbolic link loop (it leads back to {shown(real)})")
                continue
            stack.append((sub, f"{rel}{sub.name}/", (*ancestors, real)))
    return images, skipped


def collect_inputs(
    paths: list[str] | list[Path], out: Path, recursive: bool = False
) -> tuple[list[InputImage], list[Path]]:
    """Expand folders (their sub-folders too when ``recursive``); keep URLs; drop repeats of the
    same file or URL. Returns (images, skipped files).

    Raises:
        ImageReadError: a path does not exist, a folder holds no images, or a URL is refused
            (another scheme, or offline mode).
    """
    from ovss.data.remote import check_url, url_scheme, url_stem
    from ovss.errors import ImageReadError

    found: list[InputImage] = []
    skipped: list[Path] = []
    for given in paths:
        if url_scheme(given) is not None:
            check_url(str(given))  # another scheme or offline mode: refused now, before the model loads
            found.append(InputImage(str(given), str(given), url_stem(str(given))))
            continue
        path = Path(given)
        if path.is_dir():
            images, skip = _walk(path, out, recursive)
            if not images:
                raise ImageReadError(
                    f"folder {shown(path)} contains no images ({', '.join(IMAGE_EXTS)})"
                    + (f"; {len(skip)} ovss output(s)/label map(s) skipped" if skip else "")
                    + ("" if recursive else "; add --recursive to take the images of its sub-folders")
                )
            found.extend(images)
            skipped.extend(skip)
        elif path.exists() or path.is_symlink():
            found.append(InputImage(path, _resolved(path), path.stem))
        else:
            raise ImageReadError(f"image {shown(path)} does not exist; check the path")
    unique: dict[str, InputImage] = {}
    for image in found:
        unique.setdefault(image.source, image)
    return list(unique.values()), skipped


def plan_names(sources: list[str], pinned: dict[str, str], stems: list[str] | None = None) -> list[str]:
    """Output name per source, unique (case-insensitively) against every name of the run.

    ``pinned`` (source -> name, from earlier runs into the same --out) keeps those names; the other
    sources get their stem (``stems[i]``, default the file stem of the source) when it is free, else
    ``<stem>_<n>`` with the smallest free n. The result depends only on the inputs and ``pinned``,
    so every rank and every re-run agrees.
    """
    wanted = stems if stems is not None else [Path(s).stem for s in sources]
    taken = {name.casefold() for name in pinned.values()}
    names: list[str | None] = [pinned.get(s) for s in sources]
    for i, stem in enumerate(wanted):
        if names[i] is None and stem.casefold() not in taken:
            names[i] = stem
            taken.add(stem.casefold())
    for i, stem in enumerate(wanted):
        if names[i] is None:
            n = 1
            while f"{stem}_{n}".casefold() in taken:
                n += 1
            names[i] = f"{stem}_{n}"
            taken.add(f"{stem}_{n}".casefold())
    return [n for n in names if n is not None]
