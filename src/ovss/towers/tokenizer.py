"""CLIP's byte-level BPE tokenizer (the OpenAI / open_clip ``SimpleTokenizer`` behaviour).

The vocabulary has 49,408 entries, in this order: the 256 byte symbols, the same 256 symbols
with the end-of-word marker ``</w>``, one entry per merge (48,894 merges, read from the
``bpe_simple_vocab_16e6.txt.gz`` file shipped in ``ovss/assets``), then the start token
``<start_of_text>`` (49406) and the end token ``<end_of_text>`` (49407).

Text goes through the same steps as the official tokenizer, in this order: ``ftfy.fix_text``,
``html.unescape`` applied twice (entities escaped twice, such as ``&amp;lt;``, come out in full),
strip, every whitespace run collapsed to one space, lower-case. It is then split into
pre-tokens with the CLIP regular expression, each pre-token is mapped byte-wise to printable
unicode symbols and merged with BPE (cached per pre-token, so the repeated words of many
prompt templates cost one merge each).

Example:
    >>> tokens = tokenize(["a photo of a cat.", "a photo of a dog."])   # (2, 77) int64
    >>> tokens[0, :8].tolist()
    [49406, 320, 1125, 539, 320, 2368, 269, 49407]
"""

from __future__ import annotations

import functools
import gzip
import html
import itertools
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ovss.errors import ConfigError, VocabularyError, WeightsNotFoundError

if TYPE_CHECKING:
    import regex

__all__ = ["DEFAULT_BPE_PATH", "Tokenizer", "bytes_to_unicode", "get_tokenizer", "tokenize"]

#: The merges file shipped with ovss (package data).
DEFAULT_BPE_PATH = Path(__file__).resolve().parents[1] / "assets" / "bpe_simple_vocab_16e6.txt.gz"

# The special tokens as open_clip spells them (open_clip 2.16 tokenizer.py:84); OpenAI CLIP
# spells them "<|startoftext|>" / "<|endoftext|>" with the same ids. The spelling only matters
# for text that contains it literally: it then encodes to the special id.
_SOT = "<start_of_text>"
_EOT = "<end_of_text>"
_END_OF_WORD = "</w>"
# The merges file has one "version" header line, then 262,144 merges by rank; CLIP uses the
# first 49152 - 256 - 2 = 48894 of them, so 256 + 256 + 48894 + 2 = 49408 tokens in all.
_NUM_MERGES = 49152 - 256 - 2

# Pre-tokenisation: the two special tokens, English contractions, runs of letters, single
# digits, runs of anything that is neither space, letter nor digit. Matched case-insensitively
# (only the contractions are affected; the text is already lower-case).
_PRETOKEN_PATTERN = f"{_SOT}|{_EOT}" + r"|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"
# Whitespace runs are collapsed with the ``regex`` module's ``\s``, as in the official code.
_WHITESPACE_PATTERN = r"\s+"


def bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable-unicode-character map of GPT-2 / CLIP BPE.

    The 188 printable Latin-1 bytes (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) map to
    themselves; the other 68 bytes (controls, space, NBSP, soft hyphen) map, in byte order, to
    ``chr(256)``, ``chr(257)``, ... so that no BPE symbol is whitespace or a control character.

    Returns:
        dict of all 256 byte values to one-character strings; its iteration order (the
        printable bytes, then the others, each in byte order) is the order of token ids 0..255.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    # Insertion order matters: it is the order of the first 256 vocabulary entries.
    mapping = {byte: chr(byte) for byte in printable}
    others = [byte for byte in range(256) if byte not in mapping]
    mapping.update({byte: chr(256 + n) for n, byte in enumerate(others)})
    return mapping


@functools.lru_cache(maxsize=1)
def _byte_map() -> dict[int, str]:
    return bytes_to_unicode()  # shared by every Tokenizer; never mutated


def _clean(text: str, fix_text: Callable[[str], str], whitespace: regex.Pattern[str]) -> str:
    """The official text normalisation: ftfy, html unescape twice, strip, collapse, lower."""
    text = fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return whitespace.sub(" ", text).strip().lower()


class Tokenizer:
    """CLIP byte-level BPE tokenizer; the vocabulary is read on first use, not at construction.

    Args:
        bpe_path: gzip'd merges file (the CLIP ``bpe_simple_vocab_16e6.txt.gz`` format);
            default: the copy shipped in ``ovss/assets``.

    Instances are safe to share between threads (loading is locked; the BPE cache is a dict
    whose entries are deterministic, so concurrent fills are harmless).
    """

    sot_token_id = 49406  #: id of the start token ``<start_of_text>``
    eot_token_id = 49407  #: id of the end token ``<end_of_text>``
    vocab_size = 49408  #: number of token ids

    def __init__(self, bpe_path: str | Path | None = None) -> None:
        self.bpe_path = Path(bpe_path) if bpe_path is not None else DEFAULT_BPE_PATH
        self._lock = threading.Lock()
        self._loaded = False

    # ------------------------------------------------------------------ loading

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        with self._lock:
            if not self._loaded:
                self._load()
                self._loaded = True

    def _load(self) -> None:
        # Imported here so that importing ovss does not pay for ftfy / regex compilation.
        import ftfy
        import regex

        if not self.bpe_path.is_file():
            raise WeightsNotFoundError(
                f"CLIP BPE vocabulary not found at {self.bpe_path}; pass bpe_path= the "
                "bpe_simple_vocab_16e6.txt.gz file, or reinstall ovss (it ships in ovss/assets)"
            )
        with gzip.open(self.bpe_path, "rt", encoding="utf-8") as fh:
            lines = fh.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
        if len(merges) != _NUM_MERGES or any(len(m) != 2 for m in merges):
            raise WeightsNotFoundError(
                f"{self.bpe_path} is not a CLIP BPE merges file (expected a header line and at least "
                f"{_NUM_MERGES} 'a b' merge lines); use bpe_simple_vocab_16e6.txt.gz"
            )

        byte_symbols = list(_byte_map().values())
        vocab = byte_symbols + [s + _END_OF_WORD for s in byte_symbols]
        vocab += ["".join(m) for m in merges]
        vocab += [_SOT, _EOT]
        self.encoder: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.decoder: dict[int, str] = dict(enumerate(vocab))
        if len(self.encoder) != self.vocab_size or self.encoder[_EOT] != self.eot_token_id:
            raise WeightsNotFoundError(
                f"{self.bpe_path} gives {len(self.encoder)} distinct tokens, not {self.vocab_size}; "
                "use the CLIP bpe_simple_vocab_16e6.txt.gz file"
            )
        self.merge_ranks: dict[tuple[str, str], int] = {(m[0], m[1]): r for r, m in enumerate(merges)}
        self.byte_encoder = _byte_map()
        self.byte_decoder = {ch: b for b, ch in self.byte_encoder.items()}
        self._fix_text = ftfy.fix_text
        self._pattern = regex.compile(_PRETOKEN_PATTERN, regex.IGNORECASE)
        self._whitespace = regex.compile(_WHITESPACE_PATTERN)
        # Pre-token -> space-separated BPE symbols. The special tokens are whole symbols, so a
        # literal "<end_of_text>" in the text encodes to its special id (as the official one).
        self._cache: dict[str, str] = {_SOT: _SOT, _EOT: _EOT}
        # Raw pre-token -> its ids (skips the byte map and the symbol lookups for repeated words).
        self._piece_ids: dict[str, list[int]] = {}

    # ---------------------------------------------------------------------- BPE

    def _bpe(self, token: str) -> str:
        """Merge one byte-mapped pre-token; returns its BPE symbols separated by spaces."""
        cached = self._cache.get(token)
        if cached is not None:
            return cached
        # The last symbol carries the end-of-word marker, so word-final pieces differ.
        symbols = [*token[:-1], token[-1] + _END_OF_WORD]
        ranks = self.merge_ranks
        while len(symbols) > 1:
            # Lowest-ranked adjacent pair present in the merge table.
            best_rank, best_pair = None, None
            for pair in itertools.pairwise(symbols):
                rank = ranks.get(pair)
                if rank is not None and (best_rank is None or rank < best_rank):
                    best_rank, best_pair = rank, pair
            if best_pair is None:
                break
            first, second = best_pair
            merged: list[str] = []
            i = 0
            # Merge every non-overlapping occurrence, scanning left to right.
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == first and symbols[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        result = " ".join(symbols)
        self._cache[token] = result
        return result

    # ---------------------------------------------------------------- public API

    def encode(self, text: str) -> list[int]:
        """Token ids of one string, without the start/end tokens and without truncation.

        Args:
            text: any string; it is cleaned and lower-cased first.

        Returns:
            list of ids in [0, 49408).

        Raises:
            VocabularyError: ``text`` is not a string.
        """
        if not isinstance(text, str):
            raise VocabularyError(
                f"the tokenizer takes strings, got {type(text).__name__} {text!r:.60}; pass str"
            )
        self._ensure_loaded()
        piece_ids = self._piece_ids
        ids: list[int] = []
        for piece in self._pattern.findall(_clean(text, self._fix_text, self._whitespace)):
            cached = piece_ids.get(piece)
            if cached is None:
                mapped = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
                cached = piece_ids[piece] = [self.encoder[sym] for sym in self._bpe(mapped).split(" ")]
            ids.extend(cached)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The text of a list of ids (the inverse of :meth:`encode` up to cleaning).

        Words are separated by single spaces (punctuation comes out as its own word, e.g.
        ``"a cat ."``) and no trailing space is kept. Every id is decoded, special ones
        included: to decode a row of :meth:`__call__`, slice it between the start and end tokens.
        Invalid UTF-8 byte sequences decode to U+FFFD.

        Args:
            ids: ints in [0, 49408); a 1-D tensor is accepted.

        Raises:
            VocabularyError: an id is out of range.
        """
        self._ensure_loaded()
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        try:
            symbols = "".join(self.decoder[int(i)] for i in ids)
        except KeyError as err:
            raise VocabularyError(
                f"token id {err.args[0]} is not in the CLIP vocabulary; ids must be in [0, {self.vocab_size})"
            ) from None
        # Special tokens are outside the byte map: keep them verbatim.
        out = bytearray()
        for ch in symbols:
            byte = self.byte_decoder.get(ch)
            out.extend(ch.encode("utf-8") if byte is None else (byte,))
        text = out.decode("utf-8", errors="replace").replace(_END_OF_WORD, " ")
        return text.strip(" ")

    def __call__(self, texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
        """Tokenise strings into fixed-length rows, as the official ``tokenize``.

        Each row is ``[sot, ids..., eot]`` padded with zeros. A row longer than
        ``context_length`` is cut to ``context_length`` tokens and its last kept position is
        replaced by the end token, so every row contains exactly one ``eot``.

        Args:
            texts: one string or a sequence of N strings.
            context_length: row length (CLIP text towers use 77).

        Returns:
            (N, context_length) int64 (N = 1 for a single string).

        Raises:
            VocabularyError: ``texts`` is not a string or a sequence of strings.
            ConfigError: ``context_length`` < 2.
        """
        if isinstance(context_length, bool) or not isinstance(context_length, int) or context_length < 2:
            raise ConfigError(
                f"context_length must be an int >= 2 (room for the start and end tokens), "
                f"got {context_length!r}; CLIP uses 77"
            )
        if isinstance(texts, str):
            texts = [texts]
        elif not isinstance(texts, Sequence):
            raise VocabularyError(
                f"texts must be a string or a sequence of strings, got {type(texts).__name__}; "
                "pass e.g. ['a photo of a cat.']"
            )
        rows: list[list[int]] = []
        for text in texts:
            ids = [self.sot_token_id, *self.encode(text), self.eot_token_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.eot_token_id
            rows.append(ids + [0] * (context_length - len(ids)))
        return torch.tensor(rows, dtype=torch.long).reshape(len(rows), context_length)


@functools.lru_cache(maxsize=1)
def get_tokenizer() -> Tokenizer:
    """The shared default :class:`Tokenizer` (its vocabulary is loaded on first use)."""
    return Tokenizer()


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.Tensor:
    """Tokenise with the shared tokenizer: (N, context_length) int64, see :meth:`Tokenizer.__call__`."""
    return get_tokenizer()(texts, context_length=context_length)
