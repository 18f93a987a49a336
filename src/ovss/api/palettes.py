"""Named colour palettes and the colour of each class, stable per class name across images.

A class's colour depends on its *name*, not on its position in the vocabulary: ``cat`` has the same
colour in every image and in every vocabulary that contains it. The rule (:func:`class_colours`):

1. a palette may fix the colour of known names (``voc``: the 21 PASCAL VOC classes get their VOC
   colours; a JSON object file: the names it lists);
2. any other name picks an entry of the palette's colour table from a hash of the name (sha256 of the
   name in lower case), so the choice never depends on the process, the machine or the vocabulary;
3. when two classes of one vocabulary pick the same entry, the later one (in vocabulary order) takes
   the next entry not yet used, so the classes of one image stay distinguishable (while the table
   has unused entries).

Palettes: ``default`` (the 255 colours of the PASCAL VOC colour map without its black, the colours
ovss always used), ``voc`` (the same table, with the VOC class names at their VOC colours) and
``hues`` (64 saturated colours spaced around the colour wheel by the golden angle), or a JSON file:
a list of colours (the table) or an object ``{"class name": colour}`` (fixed colours; other names
use the default table). A colour is ``[r, g, b]`` (0..255) or ``"#rrggbb"``.
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ovss.errors import ConfigError

PALETTE_NAMES = ("default", "voc", "hues")


@dataclasses.dataclass(frozen=True)
class Palette:
    """A colour table that class names hash into, plus colours fixed for known names.

    Attributes:
        name: the palette's name (or the JSON file it came from).
        table: (N, 3) uint8 colours, N >= 1.
        fixed: lower-case class name -> (r, g, b) for the names with a fixed colour.
    """

    name: str
    table: np.ndarray
    fixed: dict[str, tuple[int, int, int]] = dataclasses.field(default_factory=dict)


def _voc_map(n: int) -> np.ndarray:
    from ovss.data.io import voc_palette

    return voc_palette(n)


def _golden_hues(n: int = 64) -> np.ndarray:
    """n saturated colours: hues stepped by the golden angle, alternating two brightness levels."""
    colours = []
    for i in range(n):
        hue = (i * 0.381966) % 1.0
        value = 0.95 if i % 2 == 0 else 0.75
        colours.append([round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.85, value)])
    return np.asarray(colours, dtype=np.uint8)


@functools.cache  # palettes are constants; class_colours is called per image
def named_palette(name: str) -> Palette:
    """The built-in palette ``name`` (one of :data:`PALETTE_NAMES`)."""
    if name == "default":
        return Palette("default", _voc_map(256)[1:])
    if name == "voc":
        from ovss.data.catalog import get_benchmark

        colours = _voc_map(256)
        names = get_benchmark("voc21").class_names()
        rgb = [(int(r), int(g), int(b)) for r, g, b in colours]
        fixed = {n.lower(): rgb[i] for i, n in enumerate(names)}
        return Palette("voc", colours[1:], fixed)
    if name == "hues":
        return Palette("hues", _golden_hues())
    raise ConfigError(_unknown(name))


def _unknown(spec: str) -> str:
    return (
        f"unknown palette {spec!r}; use one of {', '.join(PALETTE_NAMES)} or a JSON file of colours "
        '(a list like [[230, 25, 75], "#3cb44b"] or an object like {"cat": [230, 25, 75]})'
    )


def _colour(value: object, where: str) -> tuple[int, int, int]:
    """``[r, g, b]`` or ``"#rrggbb"`` -> (r, g, b); ConfigError naming ``where`` otherwise."""
    if isinstance(value, str) and len(value) == 7 and value.startswith("#"):
        try:
            return int(value[1:3], 16), int(value[3:5], 16), int(value[5:7], 16)
        except ValueError:
            pass
    elif (
        isinstance(value, list)
        and len(value) == 3
        and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in value)
    ):
        return value[0], value[1], value[2]
    shown = json.dumps(value)[:40]
    raise ConfigError(f"{where} is {shown}; a colour is [r, g, b] with 0..255 each or '#rrggbb'")


def load_palette_file(path: str | Path) -> Palette:
    """A palette from a JSON file: a list of colours (the table) or ``{"name": colour}``.

    Raises:
        ConfigError: the file is missing, not JSON, empty or holds a malformed colour.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"palette file {path} does not exist; check the path") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read palette file {path}: {getattr(e, 'strerror', None) or e}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"palette file {path} is not valid JSON ({e.msg}, line {e.lineno})") from None
    if isinstance(data, list) and data:
        table = [_colour(c, f"palette file {path}: colour {i}") for i, c in enumerate(data)]
        return Palette(str(path), np.asarray(table, dtype=np.uint8))
    if isinstance(data, dict) and data:
        fixed = {str(k).lower(): _colour(v, f"palette file {path}: {k!r}") for k, v in data.items()}
        return Palette(str(path), named_palette("default").table, fixed)
    raise ConfigError(
        f"palette file {path} holds no colours; write a list of colours or an object of class names"
    )


def get_palette(spec: str | Path | Palette | None = None) -> Palette:
    """A :class:`Palette` from a name (:data:`PALETTE_NAMES`), a JSON file path or a Palette.

    ``None`` is ``default``. A string that is not a palette name is read as a file when it ends with
    ``.json`` or names an existing file.

    Raises:
        ConfigError: an unknown name, or a bad file (one line naming the problem).
    """
    if spec is None:
        return named_palette("default")
    if isinstance(spec, Palette):
        return spec
    text = str(spec)
    if text in PALETTE_NAMES:
        return named_palette(text)
    if text.lower().endswith(".json") or Path(text).is_file():
        return load_palette_file(text)
    raise ConfigError(_unknown(text))


def _hash_index(name: str, n: int) -> int:
    digest = hashlib.sha256(name.lower().encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % n


def class_colours(names: Sequence[str], palette: str | Path | Palette | None = None) -> np.ndarray:
    """(K, 3) uint8 colour of each class name (the rule in this module's docstring).

    Args:
        names: K class display names, in vocabulary order.
        palette: a palette name, a JSON file or a :class:`Palette` (None: ``default``).
    """
    pal = get_palette(palette)
    table = pal.table
    n = len(table)
    used: set[int] = set()
    rows = {tuple(int(c) for c in colour): i for i, colour in enumerate(table)}
    out = np.zeros((len(names), 3), dtype=np.uint8)
    pending = []
    for k, name in enumerate(names):
        fixed = pal.fixed.get(name.lower())
        if fixed is not None:
            out[k] = fixed
            if fixed in rows:  # a hashed name must not take a fixed name's colour
                used.add(rows[fixed])
        else:
            pending.append(k)
    for k in pending:
        start = _hash_index(names[k], n)
        index = next((j % n for j in range(start, start + n) if j % n not in used), start)
        used.add(index)
        out[k] = table[index]
    return out
