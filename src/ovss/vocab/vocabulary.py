"""Class lists: parse ``"cat; sofa, couch; wall"``, a JSON list or a text file into a Vocabulary.

Rules (README "Vocabularies"):

* A class, synonyms included, may be at most :data:`MAX_CLASS_TOKENS` CLIP tokens: the text tower
  reads 77 tokens, which hold the start and end tokens and the longest prompt template (9 tokens).
  A longer class is an error (cutting it would give two long names the same embedding).
* Class lists a person writes (a ``--classes`` string, a JSON string, a class file) must not repeat
  a class: two classes whose text is equal ignoring case and spacing are an error (the second could
  never win). Python lists are taken as given (the official ADE-847 list repeats 10 names).
* A string without ``;`` that looks like a file path (``classes.csv``, ``./names``, ``data/x.txt``)
  is read as a file, and is an error when that file does not exist.
* Class files are UTF-8 (a byte-order mark is removed) or UTF-16 with a byte-order mark; other
  encodings (Latin-1, ...) are an error that says to save the file as UTF-8.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ovss.errors import VocabularyError
from ovss.utils import check_regular_file, short_path

CONTEXT_LENGTH = 77  # CLIP text context
MAX_TEMPLATE_TOKENS = 9  # the longest prompt template without its class (ImageNet "a photo of the small {}.")
MAX_CLASS_TOKENS = CONTEXT_LENGTH - 2 - MAX_TEMPLATE_TOKENS  # 66
_FILE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,5}$")


@dataclasses.dataclass(frozen=True)
class ClassName:
    """One class: the text as given and its synonyms (first = display name)."""

    text: str  # verbatim, whitespace-normalised (what "verbatim" models embed)
    synonyms: tuple[str, ...]  # split on commas, stripped, non-empty

    @property
    def name(self) -> str:
        """Display name: the first synonym."""
        return self.synonyms[0]


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """An ordered list of classes; index i of a label map is ``classes[i]``."""

    classes: tuple[ClassName, ...]

    def __post_init__(self) -> None:
        if not self.classes:
            raise VocabularyError(
                'the vocabulary is empty; give at least one class, e.g. --classes "cat; sofa, couch; wall"'
            )

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def names(self) -> list[str]:
        """Display names (first synonym of each class)."""
        return [c.name for c in self.classes]

    def prompts_for(self, policy: str) -> list[list[str]]:
        """Per class, the strings to embed under a synonym ``policy``.

        ``verbatim``: the class text as given (commas included, as SAN's official code does);
        ``first``: the first synonym only (CAT-Seg CVPR); ``mean``: every synonym (their embeddings
        are averaged, as SED does).
        """
        if policy == "verbatim":
            return [[c.text] for c in self.classes]
        if policy == "first":
            return [[c.synonyms[0]] for c in self.classes]
        if policy == "mean":
            return [list(c.synonyms) for c in self.classes]
        raise VocabularyError(f"unknown synonym policy {policy!r}; use 'verbatim', 'first' or 'mean'")

    @classmethod
    def from_names(cls, names: Iterable[str | Sequence[str]], unique: bool = False) -> Vocabulary:
        """Build from class strings (``"sofa, couch"``) or lists of synonyms (``["sofa", "couch"]``).

        Args:
            names: the classes in label order.
            unique: refuse two classes whose text is equal ignoring case (user-written lists).

        Raises:
            VocabularyError: empty or malformed class, a class longer than MAX_CLASS_TOKENS CLIP
                tokens, or (``unique``) a repeated class.
        """
        classes = []
        for i, item in enumerate(names):
            if isinstance(item, str):
                text = " ".join(item.split())
                synonyms = tuple(s.strip() for s in text.split(",") if s.strip())
            elif isinstance(item, Sequence) and all(isinstance(s, str) for s in item):
                synonyms = tuple(" ".join(s.split()) for s in item if s.strip())
                text = ", ".join(synonyms)
            else:
                raise VocabularyError(f"class {i} is {item!r}; expected a string or a list of strings")
            if not synonyms:
                raise VocabularyError(f"class {i} is empty ({item!r}); remove it or give it a name")
            _check_length(i, text)
            classes.append(ClassName(text=text, synonyms=synonyms))
        if unique:
            _check_unique(classes)
        return cls(tuple(classes))


def _check_length(index: int, text: str) -> None:
    if len(text.encode("utf-8")) <= MAX_CLASS_TOKENS:  # a token covers at least one byte
        return
    from ovss.towers.tokenizer import get_tokenizer

    count = len(get_tokenizer().encode(text))
    if count > MAX_CLASS_TOKENS:
        shown = text if len(text) <= 40 else text[:37] + "..."
        raise VocabularyError(
            f"class {index} ({shown!r}) is {count} CLIP tokens long; a class (synonyms included) may have at "
            f"most {MAX_CLASS_TOKENS} (the 77-token context holds the prompt template too); shorten it"
        )


def _check_unique(classes: list[ClassName]) -> None:
    seen: dict[str, int] = {}
    for i, c in enumerate(classes):
        key = c.text.casefold()
        if key in seen:
            j = seen[key]
            same = "the same class" if c.text == classes[j].text else "the same class up to case"
            raise VocabularyError(
                f"classes {j} ({classes[j].text!r}) and {i} ({c.text!r}) are {same}; the second could never "
                "win: remove one (synonyms go in one class: \"sofa, couch\")"
            )
        seen[key] = i


def parse_vocabulary(spec: str | Path | Sequence[str | Sequence[str]] | Vocabulary) -> Vocabulary:
    """Parse a vocabulary from any accepted form.

    Args:
        spec: a Vocabulary; a list of class strings / synonym lists; a path to a ``.json`` file (a list)
            or a text file (one class per line, ``#`` comments and blank lines ignored); or a string with
            ``;`` (or a line break) between classes and ``,`` between synonyms
            (``"cat; sofa, couch; wall"``). A string without ``;`` that names an existing file is read
            as that file.

    Raises:
        VocabularyError: empty vocabulary, empty class, unreadable file or malformed JSON.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, str):
        spec = spec.removeprefix("\ufeff")
    if isinstance(spec, Path) or (isinstance(spec, str) and ";" not in spec and _looks_like_file(spec)):
        return _read_file(Path(spec))
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("[") or (text.startswith("{") and text.endswith("}")):  # {...}: a JSON object
            return Vocabulary.from_names(_load_json_list(text, "the --classes JSON"), unique=True)
        # A line break separates classes as in a file ("$(cat classes.txt)"); it was a space before,
        # which silently made "cat\ndog" one class named "cat dog".
        parts = [p for p in (s.strip() for s in text.replace("\n", ";").split(";")) if p]
        return Vocabulary.from_names(parts, unique=True)
    if isinstance(spec, (bytes, bytearray)):  # a Sequence of ints: "class 0 is 99" otherwise
        raise VocabularyError("cannot read a vocabulary from bytes; decode them first (data.decode('utf-8'))")
    if isinstance(spec, Sequence):
        return Vocabulary.from_names(spec)
    raise VocabularyError(f"cannot read a vocabulary from {type(spec).__name__}; pass a string, list or path")


def _looks_like_file(text: str) -> bool:
    """An existing file, or a string shaped like a path: a file suffix (``.csv``), or a start or end
    that only paths have (``./``, ``../``, ``~/``, ``/``, a trailing ``/``). ``"a/c unit"`` is a class."""
    text = text.strip()
    if not text or "\n" in text or len(text) > 4096:
        return False
    if _exists(Path(text)):
        return True
    return bool(_FILE_SUFFIX.match(Path(text).suffix)) or text.startswith(("./", "../", "~/", "/")) or (
        text.endswith("/")
    )


def _exists(path: Path) -> bool:
    """Whether ``path`` names something on disk; False when the name cannot be a path at all (too long,
    a NUL byte, no permission to look: ``OSError`` / ``ValueError``), so such text is read as classes."""
    try:
        return path.expanduser().exists()
    except (OSError, ValueError, RuntimeError):  # RuntimeError: "~user" of an unknown user
        return False


def _decode(path: Path, data: bytes) -> str:
    """UTF-8 (BOM removed) or UTF-16 with a BOM; anything else is a VocabularyError."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise VocabularyError(f"class file {path} is not valid UTF-16; save it as UTF-8") from None
    if b"\x00" in data:
        raise VocabularyError(
            f"class file {path} holds NUL bytes (UTF-16 without a byte-order mark?); save it as UTF-8"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise VocabularyError(
            f"class file {path} is not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}; Latin-1 or "
            "another legacy encoding?); save it as UTF-8"
        ) from None


def _read_file(path: Path) -> Vocabulary:
    fix = 'pass an existing .txt/.json file (or class names separated by ";")'
    try:
        path = path.expanduser()
    except RuntimeError as e:  # an unknown ~user
        raise VocabularyError(f"cannot read class file {short_path(path)} ({e}); {fix}") from None
    check_regular_file(path, "class file", VocabularyError, VocabularyError, fix)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise VocabularyError(f"cannot read class file {path} ({e.strerror or e}); check its permissions") \
            from None
    text = _decode(path, data)
    if path.suffix.lower() == ".json":
        return Vocabulary.from_names(_load_json_list(text, str(path)), unique=True)
    lines = [line.strip() for line in text.splitlines()]
    return Vocabulary.from_names([line for line in lines if line and not line.startswith("#")], unique=True)


def _load_json_list(text: str, where: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VocabularyError(f"{where} is not valid JSON ({e}); expected a list of class names") from None
    if not isinstance(data, list):
        raise VocabularyError(f"{where} must be a JSON list of class names, got {type(data).__name__}")
    return data
