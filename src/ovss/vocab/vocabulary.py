"""Class lists: parse ``"cat; sofa, couch; wall"``, a JSON list or a text file into a Vocabulary."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from ovss.errors import VocabularyError


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
    def from_names(cls, names: Iterable[str | Sequence[str]]) -> Vocabulary:
        """Build from class strings (``"sofa, couch"``) or lists of synonyms (``["sofa", "couch"]``)."""
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
            classes.append(ClassName(text=text, synonyms=synonyms))
        return cls(tuple(classes))


def parse_vocabulary(spec: str | Path | Sequence[str | Sequence[str]] | Vocabulary) -> Vocabulary:
    """Parse a vocabulary from any accepted form.

    Args:
        spec: a Vocabulary; a list of class strings / synonym lists; a path to a ``.json`` file (a list)
            or a text file (one class per line, ``#`` comments and blank lines ignored); or a string with
            ``;`` between classes and ``,`` between synonyms (``"cat; sofa, couch; wall"``). A string
            without ``;`` that names an existing file is read as that file.

    Raises:
        VocabularyError: empty vocabulary, empty class, unreadable file or malformed JSON.
    """
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, Path) or (isinstance(spec, str) and ";" not in spec and _looks_like_file(spec)):
        return _read_file(Path(spec))
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("["):
            return Vocabulary.from_names(_load_json_list(text, "the --classes JSON"))
        parts = [p for p in (s.strip() for s in text.split(";")) if p]
        return Vocabulary.from_names(parts)
    if isinstance(spec, Sequence):
        return Vocabulary.from_names(spec)
    raise VocabularyError(f"cannot read a vocabulary from {type(spec).__name__}; pass a string, list or path")


def _looks_like_file(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    path = Path(text)
    return path.suffix.lower() in {".txt", ".json"} or path.is_file()


def _read_file(path: Path) -> Vocabulary:
    if not path.is_file():
        raise VocabularyError(f"class file {path} does not exist; pass an existing .txt/.json file")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json":
        return Vocabulary.from_names(_load_json_list(text, str(path)))
    lines = [line.strip() for line in text.splitlines()]
    return Vocabulary.from_names([line for line in lines if line and not line.startswith("#")])


def _load_json_list(text: str, where: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise VocabularyError(f"{where} is not valid JSON ({e}); expected a list of class names") from None
    if not isinstance(data, list):
        raise VocabularyError(f"{where} must be a JSON list of class names, got {type(data).__name__}")
    return data
