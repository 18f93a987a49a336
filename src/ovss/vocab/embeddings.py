"""Text embeddings of a vocabulary, computed once and cached in memory and on disk.

The cache key of one prompt string is (weights id, template set, compute dtype, string): a repeated
vocabulary, or a new vocabulary sharing classes with an old one, costs nothing for the shared classes.

Memory: the in-memory cache is an LRU bounded in bytes (``memory_mb``, default ``$OVSS_TEXT_CACHE_MB``
or 256 MiB), so a long-running process (the demo) does not grow with every class string it has seen;
the strings of the vocabulary being embedded are always kept until its embeddings are returned.

Disk: one safetensors file per (weights id, template set) under the cache folder, holding at most what
the memory cache holds. Its metadata records the cache id and the template strings it was made for,
the shape and a sha256 of every entry; a file that fails any check (unreadable, other id or templates,
wrong dtype or shape, non-finite values, checksum) is ignored with one warning and recomputed, never
used. A cache folder or file of the wrong kind is a :class:`~ovss.errors.CacheError`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

from ovss.errors import CacheError
from ovss.utils import atomic_write
from ovss.vocab.templates import get_templates
from ovss.vocab.vocabulary import Vocabulary

Encoder = Callable[[torch.Tensor], torch.Tensor]  # tokens (P, K, L) -> (K, ...) normalised

CACHE_VERSION = "2"
DEFAULT_MEMORY_MB = 256.0
MAX_MEMORY_MB = 65536.0  # 64 GiB: a bound for $OVSS_TEXT_CACHE_MB / memory_mb (NaN and infinity refused)
_log = logging.getLogger("ovss")


def _string_key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def default_memory_mb() -> float:
    """``$OVSS_TEXT_CACHE_MB`` (MiB of cached embeddings per model) or 256."""
    raw = os.environ.get("OVSS_TEXT_CACHE_MB", "")
    try:
        value = float(raw) if raw else DEFAULT_MEMORY_MB
    except ValueError:
        raise CacheError(f"OVSS_TEXT_CACHE_MB={raw!r} is not a number; set MiB to keep, e.g. 256") from None
    return check_memory_mb(value, f"OVSS_TEXT_CACHE_MB={raw!r}")


def check_memory_mb(value: float, what: str) -> float:
    """``value`` when it is a finite number of MiB in [0, MAX_MEMORY_MB], else CacheError naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CacheError(f"{what} is not a number; set the MiB of text embeddings to keep, e.g. 256")
    if not 0 <= value <= MAX_MEMORY_MB:  # NaN fails the comparison too
        raise CacheError(
            f"{what} is out of range; set the MiB of text embeddings to keep, from 0 (no cache) to "
            f"{MAX_MEMORY_MB:g}, e.g. 256"
        )
    return float(value)


def _checksum(entries: Mapping[str, torch.Tensor]) -> str:
    """sha256 over (key, dtype, shape, bytes) of every entry, in key order."""
    h = hashlib.sha256()
    for key in sorted(entries):
        t = entries[key].contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TextEmbedder:
    """Embed vocabularies with a model's ``encode_text``, caching per prompt string.

    Args:
        encode: the model's ``encode_text``: tokens (P, K, L) int64 -> (K, ...) float, normalised along
            the last axis.
        templates: template set name (``ovss.vocab.templates``).
        synonyms: synonym policy of the model: ``verbatim`` | ``first`` | ``mean``.
        cache_id: identifies the weights and compute dtype (e.g. ``"<sha256[:16]>-float32"``); None
            disables the disk cache.
        cache_dir: folder of the disk cache (one safetensors file per cache_id and template set).
        tokenize: tokenizer ``(list[str]) -> (N, 77) int64``; defaults to the CLIP BPE tokenizer.
        chunk: classes encoded per call (bounds memory: chunk x P prompts at once).
        memory_mb: bound of the in-memory (and on-disk) cache in MiB; None: ``default_memory_mb()``.
    """

    def __init__(
        self,
        encode: Encoder,
        templates: str,
        synonyms: str,
        cache_id: str | None = None,
        cache_dir: Path | None = None,
        tokenize: Callable[[list[str]], torch.Tensor] | None = None,
        chunk: int = 32,
        memory_mb: float | None = None,
    ) -> None:
        self.encode = encode
        self.templates = get_templates(templates)
        self.template_set = templates
        self.synonyms = synonyms
        self.chunk = chunk
        self.cache_id = cache_id
        self._tokenize = tokenize
        if memory_mb is not None:
            check_memory_mb(memory_mb, f"memory_mb={memory_mb!r}")
        mb = default_memory_mb() if memory_mb is None else float(memory_mb)
        self.memory_limit = int(mb * (1 << 20))
        self._memory: OrderedDict[str, torch.Tensor] = OrderedDict()  # oldest first
        self._bytes = 0
        self._disk_path = (
            Path(cache_dir) / f"{cache_id}-{templates}.safetensors" if cache_id and cache_dir else None
        )
        self._disk_loaded = False
        self._templates_sha = hashlib.sha256("\n".join(self.templates).encode()).hexdigest()
        self.computed = 0  # number of prompt strings actually encoded (for tests and logs)

    @property
    def memory_bytes(self) -> int:
        """Bytes of embeddings held in memory now."""
        return self._bytes

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        if self._tokenize is None:
            from ovss.towers.tokenizer import get_tokenizer

            self._tokenize = get_tokenizer()
        return self._tokenize(texts)

    @torch.no_grad()
    def __call__(self, vocabulary: Vocabulary) -> torch.Tensor:
        """Embeddings (K, ...) float32 on CPU, one row per class, normalised along the last axis."""
        per_class = vocabulary.prompts_for(self.synonyms)
        self._load_disk()
        wanted = list(dict.fromkeys(s for strings in per_class for s in strings))
        found = {s: self._memory[_string_key(s)] for s in wanted if _string_key(s) in self._memory}
        missing = sorted(s for s in wanted if s not in found)
        new: dict[str, torch.Tensor] = {}
        for start in range(0, len(missing), self.chunk):
            new.update(self._encode_strings(missing[start : start + self.chunk]))
        if new and found and any(t.shape != next(iter(new.values())).shape for t in found.values()):
            _log.warning("ovss: cached text embeddings have another shape than the model's; recomputing")
            self._clear()
            found, new, missing = {}, {}, sorted(wanted)
            for start in range(0, len(missing), self.chunk):
                new.update(self._encode_strings(missing[start : start + self.chunk]))
        got = {**found, **new}
        rows = []
        for strings in per_class:
            emb = torch.stack([got[s] for s in strings]).mean(0)
            if len(strings) > 1:  # average of unit vectors: re-normalise (SED's synonym rule)
                emb = emb / emb.norm(dim=-1, keepdim=True)
            rows.append(emb)
        for s in found:
            self._memory.move_to_end(_string_key(s))
        for s, emb in new.items():
            self._put(_string_key(s), emb)
        self._evict()
        if new:
            self._save_disk()
        return torch.stack(rows)

    def _encode_strings(self, strings: list[str]) -> dict[str, torch.Tensor]:
        if not strings:
            return {}
        prompts = [t.format(s) for t in self.templates for s in strings]
        tokens = self.tokenize(prompts).view(len(self.templates), len(strings), -1)
        out = self.encode(tokens).float().cpu()
        self.computed += len(strings)
        return {s: emb.contiguous().clone() for s, emb in zip(strings, out)}

    # ------------------------------------------------------------------------------ memory
    def _put(self, key: str, emb: torch.Tensor) -> None:
        old = self._memory.pop(key, None)
        if old is not None:
            self._bytes -= old.nbytes
        self._memory[key] = emb
        self._bytes += emb.nbytes

    def _evict(self) -> None:
        while self._memory and self._bytes > self.memory_limit:
            _, emb = self._memory.popitem(last=False)
            self._bytes -= emb.nbytes

    def _clear(self) -> None:
        self._memory.clear()
        self._bytes = 0

    # ------------------------------------------------------------------------------ disk
    def _check_slot(self) -> bool:
        """Whether the disk cache file exists; CacheError when it or its folder is of the wrong kind."""
        from ovss.home import check_file_slot

        assert self._disk_path is not None
        return check_file_slot(self._disk_path)

    def _load_disk(self) -> None:
        if self._disk_loaded or self._disk_path is None:
            return
        self._disk_loaded = True
        if not self._check_slot():
            return
        try:
            entries = self._read_valid()
        except ValueError as e:
            _log.warning(f"ovss: ignoring the text-embedding cache {self._disk_path} ({e}); it is recomputed")
            return
        for key, emb in entries.items():
            self._put(key, emb)
        self._evict()

    def _read_valid(self) -> dict[str, torch.Tensor]:
        """Entries of the disk cache after every check; ValueError naming the first failed check."""
        from safetensors import safe_open

        assert self._disk_path is not None
        try:
            with safe_open(str(self._disk_path), framework="pt") as f:
                meta = f.metadata() or {}
                entries = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
        except Exception as e:  # safetensors raises its own error type for unreadable files
            raise ValueError(f"unreadable: {type(e).__name__}") from None
        expected = {
            "ovss_text_cache": CACHE_VERSION,
            "cache_id": self.cache_id,
            "template_set": self.template_set,
            "templates_sha256": self._templates_sha,
        }
        for field, value in expected.items():
            if meta.get(field) != value:
                raise ValueError(f"made for {field}={meta.get(field)!r}, not {value!r}")
        try:
            shape = tuple(json.loads(meta.get("shape", "null")))
        except (TypeError, ValueError):
            raise ValueError("no valid shape recorded") from None
        for key, emb in entries.items():
            if emb.dtype != torch.float32 or tuple(emb.shape) != shape:
                got = f"{emb.dtype} {tuple(emb.shape)}"
                raise ValueError(f"entry {key[:8]} is {got}, expected torch.float32 {shape}")
            if not bool(torch.isfinite(emb).all()):
                raise ValueError(f"entry {key[:8]} has non-finite values")
        if meta.get("checksum") != _checksum(entries):
            raise ValueError("checksum mismatch")
        return entries

    def _save_disk(self) -> None:
        if self._disk_path is None or not self._memory:
            return
        from safetensors.torch import save_file

        from ovss.home import check_folder

        tensors = dict(self._memory)
        metadata = {
            "ovss_text_cache": CACHE_VERSION,
            "cache_id": str(self.cache_id),
            "template_set": self.template_set,
            "templates_sha256": self._templates_sha,
            "shape": json.dumps(list(next(iter(tensors.values())).shape)),
            "checksum": _checksum(tensors),
        }
        try:
            self._check_slot()
            check_folder(self._disk_path.parent, create=True)
            atomic_write(self._disk_path, lambda p: save_file(tensors, str(p), metadata=metadata))
        except (OSError, CacheError) as e:  # a cache that cannot be written is not an error of the run
            _log.warning(f"ovss: cannot write the text-embedding cache {self._disk_path} ({e}); not cached")
            self._disk_path = None
